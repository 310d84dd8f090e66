"""The orchestration core: where objects go, where they are, and keeping the two in step.

HTTP-free: the S3 layer calls it with keys, streams and sizes. Every write goes
to a fresh storage key, so concurrent writers never share backend bytes; the
metadata commit decides which version is current, and displaced copies are
deleted (or queued for deletion) so the backends always match the database.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from s3orch import metrics
from s3orch.backends.interface import BackendError, BackendNotFound, BackendRead, IBackend
from s3orch.objects import routing
from s3orch.objects.errors import (
    BadDigest,
    IncompleteBody,
    InsufficientStorage,
    NoSuchObject,
    Unavailable,
)
from s3orch.objects.listing import ListPage, list_page
from s3orch.objects.sealing import Encryption
from s3orch.store.objects import MetadataStore, VersionChanged
from s3orch.store.records import (
    BackendUsage,
    NoSpace,
    ObjectVersion,
    PendingDeletion,
    Precondition,
    StoredCopy,
)
from s3orch.streams import ByteSource, empty, primed, read_ahead

log = Logger()


def new_storage_key() -> str:
    """A backend key no other write will ever use; it reveals nothing of the client's key."""
    return "o/" + uuid.uuid4().hex


@define
class Orchestrator:
    store: MetadataStore
    backends: Mapping[str, IBackend]  # in configured order
    strategy: str
    clock: IReactorTime
    encryption: Encryption = field(factory=Encryption)
    storage_key: Callable[[], str] = field(default=new_storage_key)

    async def usage(self) -> list[BackendUsage]:
        """Current counters of every configured backend, also published as gauges."""
        rows = await self.store.usage()
        for row in rows:
            metrics.quota_bytes_used.labels(row.backend).set(row.bytes_used)
            metrics.quota_bytes_limit.labels(row.backend).set(row.bytes_limit)
            metrics.quota_bytes_pending.labels(row.backend).set(row.bytes_pending)
            metrics.objects_count.labels(row.backend).set(row.object_count)
        return rows

    async def reserve(self, size: int) -> StoredCopy:
        """Claim room for ``size`` bytes on the best backend that has it."""
        storage_key = self.storage_key()
        order = list(self.backends)
        for backend in routing.candidates(order, await self.usage(), self.strategy, size):
            try:
                await self.store.reserve(backend, storage_key, size, self.clock.seconds())
            except NoSpace:
                continue
            return StoredCopy(backend, storage_key, size)
        raise InsufficientStorage(f"no backend has room for {size} bytes")

    async def put(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
        content_md5: bytes | None = None,
        body_md5: Callable[[], bytes | None] | None = None,
        body_headers: Callable[[], Mapping[str, str]] | None = None,
        precondition: Precondition | None = None,
    ) -> ObjectVersion:
        """Store a new current version of ``bucket/key``; return it once committed.

        ``content_md5`` is the digest the client claims; ``body_md5``, if
        given, returns the body's real MD5 once the body has been read (the
        caller hashed it already, so it is not hashed twice). ``body_headers``
        returns headers to store that are known only once the body is read
        (a verified checksum). Raises
        InsufficientStorage before reading any byte if nothing has room,
        BadDigest or IncompleteBody if the body is wrong (nothing is stored).
        A ``precondition`` is checked before any byte moves and again,
        atomically, at commit (PreconditionFailed; nothing is stored).
        """
        digest = Digest(size, content_md5, body_md5)
        if precondition is not None:
            await self._check(bucket, key, precondition)
        sealed = await self.encryption.seal_object(size) if self.encryption.seals else None
        stored = sealed.stored_size if sealed is not None else size
        copy = await self.reserve(stored)
        try:
            stream = digest.pass_through(body)
            if sealed is not None:
                stream = sealed.stream(stream)
            await self.backends[copy.backend].put(copy.storage_key, stream, stored)
            version = ObjectVersion(
                bucket=bucket,
                key=key,
                version_id=uuid.uuid4().hex,
                size=size,
                etag=digest.etag,
                content_type=content_type,
                created_at=self.clock.seconds(),
                metadata=dict(metadata),
                headers={**headers, **(body_headers() if body_headers else {})},
                copies=(copy,),
                sealing=sealed.sealing if sealed is not None else None,
            )
            displaced = await self.store.commit(version, self.clock.seconds(), precondition)
        except BaseException:
            await self._abandon(copy)
            raise
        await self.remove(displaced)
        return version

    async def rewrite(self, version: ObjectVersion, seal: bool) -> bool:
        """Store ``version``'s bytes again, sealed (``seal``) or in plaintext, under a new
        storage key, then swap them in; the old bytes are deleted after the swap.

        The new bytes (and their DEK) are committed in one transaction, and only if
        ``version`` is still current: returns False, changing nothing, if a client wrote or
        deleted the key meanwhile. Clients see the same object throughout.
        """
        size = version.size
        sealed = await self.encryption.seal_object(size) if seal else None
        stored = sealed.stored_size if sealed is not None else size
        copy = await self.reserve(stored)
        try:
            body: AsyncIterator[bytes] = empty()
            if size:
                body = (await self.open(version)).body
            if sealed is not None:
                body = sealed.stream(body)
            await self.backends[copy.backend].put(copy.storage_key, body, stored)
            sealing = sealed.sealing if sealed is not None else None
            displaced = await self.store.rewrite(version, copy, sealing, self.clock.seconds())
        except VersionChanged:
            await self._abandon(copy)
            return False
        except BaseException:
            await self._abandon(copy)
            if await self._replaced(version):
                return False  # its bytes were deleted by the write that replaced it
            raise
        await self.remove(displaced)
        return True

    async def _replaced(self, version: ObjectVersion) -> bool:
        """Whether ``version`` is no longer the current version of its key."""
        try:
            current = await self.store.get(version.bucket, version.key)
        except Exception:
            return False
        return current is None or current.version_id != version.version_id

    async def _check(self, bucket: str, key: str, precondition: Precondition) -> None:
        current = await self.store.get(bucket, key)
        precondition.check(current.etag if current is not None else None)

    async def head(self, bucket: str, key: str) -> ObjectVersion:
        """The current version of ``bucket/key``, or NoSuchObject."""
        version = await self.store.get(bucket, key)
        if version is None:
            raise NoSuchObject(key)
        return version

    async def open(
        self, version: ObjectVersion, start: int = 0, end: int | None = None
    ) -> BackendRead:
        """Open bytes ``start..end`` (inclusive) of ``version`` as the client sees them.

        A sealed version is decrypted on the way; its first block is read and
        authenticated before this returns, so damage found there is an error
        the caller can still answer with.
        """
        if version.sealing is None:
            return await self._read(version, start, end)
        end = version.size - 1 if end is None else end

        async def fetch(first: int, last: int) -> ByteSource:
            return (await self._read(version, first, last)).body

        body = await primed(read_ahead(self.encryption.open(version, fetch, start, end)))
        return BackendRead(start, end - start + 1, version.size, body)

    async def _read(self, version: ObjectVersion, start: int, end: int | None) -> BackendRead:
        """Stored bytes ``start..end`` of ``version`` from the first copy that answers."""
        failures: list[str] = []
        for copy in version.copies:
            # Up to the last byte is the same as to the end, which backends serve without a
            # Range header (some, moto among them, serve that much faster).
            last = None if end == copy.stored_size - 1 else end
            try:
                return await self.backends[copy.backend].get(copy.storage_key, start, last)
            except KeyError:
                failures.append(f"{copy.backend}: not configured")
            except BackendNotFound:
                failures.append(f"{copy.backend}: missing")
            except BackendError as e:
                failures.append(f"{copy.backend}: {e}")
        log.error(
            "no readable copy of {bucket}/{key}: {failures}",
            bucket=version.bucket,
            key=version.key,
            failures="; ".join(failures),
        )
        raise Unavailable(version.key)

    async def delete(self, bucket: str, key: str) -> None:
        """Remove ``bucket/key`` if it exists (deleting a missing key succeeds)."""
        await self.remove(await self.store.delete(bucket, key, self.clock.seconds()))

    async def list(
        self, bucket: str, prefix: str, delimiter: str, start_after: str, max_keys: int
    ) -> ListPage:
        """One page of ``bucket``'s keys, rolled up at ``delimiter``."""

        async def fetch(after: str, limit: int) -> list[ObjectVersion]:
            return await self.store.list(bucket, prefix, after, limit)

        return await list_page(fetch, prefix, delimiter, start_after, max_keys)

    async def remove(self, deletions: Sequence[PendingDeletion]) -> None:
        """Delete copies no version refers to; failures stay queued for the cleanup loop."""
        for pending in deletions:
            await self._delete_pending(pending)

    async def run_cleanup(self, upload_timeout: float, batch: int = 100) -> int:
        """Retry queued deletions and reclaim uploads a crash abandoned; returns deletions done."""
        now = self.clock.seconds()
        expired = await self.store.expire_uploads(now - upload_timeout)
        if expired:
            log.warn("reclaiming {count} abandoned uploads", count=expired)
        due = await self.store.due_deletions(now, batch)
        done = 0
        for pending in due:
            done += await self._delete_pending(pending)
        return done

    async def _abandon(self, copy: StoredCopy) -> None:
        try:
            pending = await self.store.abandon(copy.storage_key, self.clock.seconds())
        except Exception:
            log.failure("could not mark {storage_key} abandoned", storage_key=copy.storage_key)
            return
        # No row means nothing was counted, but the bytes may still be there.
        await self._delete_pending(
            pending or PendingDeletion(copy.backend, copy.storage_key, copy.stored_size, 0)
        )

    async def _delete_pending(self, pending: PendingDeletion) -> int:
        backend, storage_key = pending.backend, pending.storage_key
        try:
            if pending.multipart_id is not None:
                await self.backends[backend].abort_multipart(storage_key, pending.multipart_id)
            await self.backends[backend].delete(storage_key)
        except Exception as e:
            metrics.cleanup_deletions_total.labels("error").inc()
            log.warn(
                "deleting {storage_key} on {backend} failed, will retry: {error}",
                storage_key=storage_key,
                backend=backend,
                error=str(e),
            )
            try:
                await self.store.deletion_failed(storage_key, str(e)[:500], self.clock.seconds())
            except Exception:
                log.failure(
                    "could not record failed deletion of {storage_key}", storage_key=storage_key
                )
            return 0
        await self.store.forget(storage_key)
        metrics.cleanup_deletions_total.labels("success").inc()
        return 1


class Digest:
    """Hashes a body on its way through and checks it before the last byte leaves.

    Holding back the final chunk until the length and Content-MD5 check out
    means a backend never receives a complete wrong object.
    """

    def __init__(
        self,
        size: int,
        content_md5: bytes | None,
        body_md5: Callable[[], bytes | None] | None,
    ) -> None:
        self.size = size
        self.content_md5 = content_md5
        self.body_md5 = body_md5
        self.md5 = None if body_md5 else hashlib.md5(usedforsecurity=False)
        self.etag = ""

    async def pass_through(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in body:
            if not chunk:
                continue
            seen += len(chunk)
            if seen > self.size:
                raise IncompleteBody(f"body longer than the declared {self.size} bytes")
            if self.md5 is not None:
                self.md5.update(chunk)
            if seen == self.size:
                self._finish()
            yield chunk
        if seen != self.size:
            raise IncompleteBody(f"body ended after {seen} of {self.size} bytes")
        if self.size == 0:
            self._finish()

    def _finish(self) -> None:
        digest = self.md5.digest() if self.md5 is not None else None
        if self.body_md5 is not None:
            digest = self.body_md5()
        if digest is None:
            raise RuntimeError("the body's MD5 was promised but is not known")
        self._check(digest)

    def _check(self, digest: bytes) -> None:
        if self.content_md5 is not None and digest != self.content_md5:
            raise BadDigest("the Content-MD5 you specified did not match what we received")
        self.etag = digest.hex()
