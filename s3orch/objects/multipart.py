"""Multipart uploads: parts go straight into one storage key on one backend.

Every part is written into the backend's own multipart upload (or, on a
local backend, a staging area assembled in place), so Complete moves no
bytes through s3orch and objects are not capped at a single PUT's size.
Parts in flight count against the backend's quota from the moment they are
reserved; abandoned uploads are aborted after ``max_age``.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from attrs import define, evolve
from twisted.logger import Logger

from s3orch.objects import routing
from s3orch.objects.errors import InsufficientStorage, ObjectError
from s3orch.objects.orchestrator import Digest, Orchestrator
from s3orch.store.multipart import MultipartStore, UploadNotFound
from s3orch.store.records import NoSpace, ObjectVersion, Part, Segment, StoredCopy, Upload

log = Logger()

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10_000


class NoSuchUpload(ObjectError):
    """No upload with that id exists for that bucket and key."""


class InvalidPart(ObjectError):
    """A listed part was not uploaded, or its ETag does not match."""


class InvalidPartOrder(ObjectError):
    """The parts of a Complete are not in ascending order."""


class UploadNotSealed(ObjectError):
    """A plaintext upload (begun while encryption was off) cannot take parts now that it is on."""


class EntityTooSmall(ObjectError):
    """A part other than the last is smaller than 5 MiB."""


@define
class MultipartUploads:
    objects: Orchestrator
    store: MultipartStore
    max_uploads_per_bucket: Callable[[str], int]
    new_upload_id: Callable[[], str] = lambda: secrets.token_urlsafe(48)
    min_part_size: int = MIN_PART_SIZE  # AWS's rule; smaller only in tests

    def _now(self) -> float:
        return self.objects.clock.seconds()

    async def create(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> Upload:
        """Start an upload on the backend routing picks for a new object."""
        usage = await self.objects.usage()
        chosen = routing.candidates(list(self.objects.backends), usage, self.objects.strategy, 0)
        if not chosen:
            raise InsufficientStorage("no backend has room for a new upload")
        backend = chosen[0]
        encryption = self.objects.encryption
        sealing = await encryption.upload_sealing() if encryption.seals else None
        storage_key = self.objects.storage_key()
        handle = await self.objects.backends[backend].create_multipart(storage_key)
        upload = Upload(
            upload_id=self.new_upload_id(),
            bucket=bucket,
            key=key,
            backend=backend,
            storage_key=storage_key,
            backend_upload_id=handle,
            content_type=content_type,
            created_at=self._now(),
            metadata=dict(metadata),
            headers=dict(headers),
            sealing=sealing,
        )
        try:
            limit = self.max_uploads_per_bucket(bucket)
            await self.store.create_upload(upload, limit, self._now())
        except BaseException:
            await self.objects.backends[backend].abort_multipart(storage_key, handle)
            raise
        return upload

    async def find(self, bucket: str, key: str, upload_id: str) -> Upload:
        """The upload, only if it belongs to this bucket and key (never another tenant's)."""
        upload = await self.store.get_upload(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise NoSuchUpload(upload_id)
        return upload

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        body: AsyncIterator[bytes],
        size: int,
        content_md5: bytes | None = None,
        body_md5: Callable[[], bytes | None] | None = None,
    ) -> Part:
        """Store one part; its bytes count against the quota before the first is sent.

        In an encrypted upload the part is sealed on its way, as a stream of its own.
        """
        upload = await self.find(bucket, key, upload_id)
        digest = Digest(size, content_md5, body_md5)
        sealed = None
        if upload.sealing is not None:
            sealed = await self.objects.encryption.seal_part(upload.sealing, part_number, size)
        elif self.objects.encryption.seals:
            # Its parts would reach the backend in plaintext while encryption is on.
            raise UploadNotSealed(upload_id)
        stored = sealed.stored_size if sealed is not None else size
        try:
            await self.store.reserve_part(upload_id, stored, self._now())
        except NoSpace:
            raise InsufficientStorage(f"no room for a {stored}-byte part") from None
        except UploadNotFound:
            raise NoSuchUpload(upload_id) from None
        backend = self.objects.backends[upload.backend]
        stream = digest.pass_through(body)
        if sealed is not None:
            stream = sealed.stream(stream)
        try:
            backend_etag = await backend.upload_part(
                upload.storage_key, upload.backend_upload_id, part_number, stream, stored
            )
        except BaseException:
            await self._release(upload_id, stored)
            raise
        part = Part(part_number, digest.etag, size, self._now(), backend_etag, stored)
        try:
            await self.store.record_part(upload_id, part, self._now())
        except UploadNotFound:
            # Aborted meanwhile: the abort's deletion covers these bytes too.
            raise NoSuchUpload(upload_id) from None
        return part

    async def _release(self, upload_id: str, size: int) -> None:
        with contextlib.suppress(UploadNotFound):
            await self.store.release_part(upload_id, size, self._now())

    async def complete(
        self, bucket: str, key: str, upload_id: str, requested: Sequence[tuple[int, str]]
    ) -> ObjectVersion:
        """Assemble the listed parts into the current version of ``bucket/key``.

        The ETag is AWS's: the MD5 of the parts' binary MD5s, then ``-N``.
        """
        upload = await self.find(bucket, key, upload_id)
        uploaded = await self.store.all_parts(upload_id)
        chosen = _choose_parts(uploaded, requested, self.min_part_size)
        combined = hashlib.md5(
            b"".join(bytes.fromhex(p.etag) for p in chosen), usedforsecurity=False
        )
        size = sum(p.size for p in chosen)
        stored = sum(p.stored_size for p in chosen)
        sealing = None
        read_as = None
        if upload.sealing is not None:
            segments = tuple(Segment(p.part_number, p.size, p.stored_size) for p in chosen)
            # The new version's DEK is wrapped by today's primary key, so that a rotation
            # which has already gone past the objects it walks cannot miss it.
            read_as = upload.sealing.wrapped
            wrapped = await self.objects.encryption.by_primary(read_as)
            sealing = evolve(upload.sealing, wrapped=wrapped, segments=segments)
        await self.objects.backends[upload.backend].complete_multipart(
            upload.storage_key,
            upload.backend_upload_id,
            [(p.part_number, p.backend_etag) for p in chosen],
        )
        version = ObjectVersion(
            bucket=bucket,
            key=key,
            version_id=uuid.uuid4().hex,
            size=size,
            etag=f"{combined.hexdigest()}-{len(chosen)}",
            content_type=upload.content_type,
            created_at=self._now(),
            metadata=dict(upload.metadata),
            headers=dict(upload.headers),
            copies=(StoredCopy(upload.backend, upload.storage_key, stored),),
            sealing=sealing,
        )
        try:
            displaced = await self.store.complete_upload(upload_id, version, self._now(), read_as)
        except UploadNotFound:
            # Aborted while completing: the abort's deletion removes the assembled bytes.
            raise NoSuchUpload(upload_id) from None
        await self.objects.remove(displaced)
        return version

    async def abort(self, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts."""
        await self.find(bucket, key, upload_id)
        deletion = await self.store.abort_upload(upload_id, self._now())
        if deletion is None:
            raise NoSuchUpload(upload_id)
        await self.objects.remove([deletion])

    async def abort_stale(self, max_age: float, batch: int = 100) -> int:
        """Abort uploads started more than ``max_age`` seconds ago; returns how many."""
        stale = await self.store.stale_uploads(self._now() - max_age, batch)
        aborted = 0
        for upload in stale:
            deletion = await self.store.abort_upload(upload.upload_id, self._now())
            if deletion is not None:
                await self.objects.remove([deletion])
                aborted += 1
        if aborted:
            log.info("aborted {count} stale multipart uploads", count=aborted)
        return aborted


def _choose_parts(
    uploaded: Mapping[int, Part], requested: Sequence[tuple[int, str]], min_size: int
) -> list[Part]:
    chosen: list[Part] = []
    previous = 0
    for number, etag in requested:
        if number <= previous:
            raise InvalidPartOrder("the list of parts was not in ascending order")
        previous = number
        part = uploaded.get(number)
        if part is None or part.etag != etag.strip().strip('"').lower():
            raise InvalidPart(f"part {number} was not found or its ETag does not match")
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < min_size:
            raise EntityTooSmall(f"part {part.part_number} is smaller than the 5 MiB minimum")
    return chosen
