"""Multipart uploads in progress, and the bytes their parts hold on a backend.

Every part of an upload goes into one storage key on one backend, so
completing moves no bytes: it commits that key exactly as a PUT commits its
copy (``objects.commit_version``). Until then the upload's bytes are a pending
``upload`` row keyed by the storage key, which grows as parts are reserved and
shrinks as failed or replaced parts give theirs back, in the same transaction
as the backend's ``bytes_pending``. In-flight parts therefore count against
the backend's limit like any upload.

The row carries the backend's multipart handle (``multipart_id``), which keeps
it out of ``expire_uploads`` and tells whoever deletes its bytes to abort the
backend upload. Abandoned uploads are found by ``stale_uploads`` and aborted.

Transactions on one upload are serialised by locking its row (PostgreSQL
``FOR UPDATE``; SQLite admits one writer anyway) before the object-key lock
and the pending and backend rows, the same order everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from attrs import define, evolve

from s3orch.crypto.keys import WrappedKey
from s3orch.store.db import Cursor, Database
from s3orch.store.objects import (
    _DELETION_COLUMNS,
    ReservationLost,
    UnknownBackend,
    _apply,
    _deletion,
    _Delta,
    _json,
    _micros,
    _seconds,
    commit_version,
    prefix_successor,
)
from s3orch.store.records import (
    SENC2_PARTS,
    ObjectVersion,
    Part,
    PendingDeletion,
    Sealing,
    TooManyUploads,
    Upload,
)


class UploadNotFound(KeyError):
    """The multipart upload does not exist (never created, completed or aborted)."""


def _bucket_lock_id(bucket: str) -> int:
    """The advisory lock id that serialises creating uploads in one bucket."""
    digest = hashlib.blake2b(bucket.encode(), digest_size=8, person=b"s3orch-uploads").digest()
    return int.from_bytes(digest, "big", signed=True)


_UPLOAD_COLUMNS = (
    "upload_id, bucket, key, backend, storage_key, backend_upload_id, content_type,"
    " metadata, headers, created_at, enc_key_id, enc_fingerprint, enc_wrapped, enc_chunk_size"
)

_PART_COLUMNS = "part_number, etag, size, created_at, backend_etag, stored_size"


def _upload_sealing(upload: Upload) -> tuple[object, ...]:
    sealing = upload.sealing
    if sealing is None:
        return (None,) * 4
    wrapped = sealing.wrapped
    blob = base64.b64encode(wrapped.blob).decode("ascii")
    return (wrapped.key_id, wrapped.fingerprint, blob, sealing.chunk_size)


def _upload(row: tuple[Any, ...]) -> Upload:
    (
        upload_id,
        bucket,
        key,
        backend,
        storage_key,
        backend_upload_id,
        content_type,
        metadata,
        headers,
        created_at,
        *encryption,
    ) = row
    key_id, fingerprint, blob, chunk_size = encryption
    sealing = None
    if key_id is not None:
        wrapped = WrappedKey(key_id, fingerprint, base64.b64decode(blob))
        sealing = Sealing(SENC2_PARTS, wrapped, int(chunk_size))
    return Upload(
        upload_id=upload_id,
        bucket=bucket,
        key=key,
        backend=backend,
        storage_key=storage_key,
        backend_upload_id=backend_upload_id,
        content_type=content_type,
        created_at=_seconds(int(created_at)),
        metadata=json.loads(metadata),
        headers=json.loads(headers),
        sealing=sealing,
    )


def _part(row: tuple[Any, ...]) -> Part:
    part_number, etag, size, created_at, backend_etag, stored_size = row
    stored = int(size) if stored_size is None else int(stored_size)
    return Part(int(part_number), etag, int(size), _seconds(int(created_at)), backend_etag, stored)


def _lock_upload(cur: Cursor, upload_id: str) -> Upload | None:
    """Read the upload's row, locking it against other writers of the upload until commit."""
    sql = f"SELECT {_UPLOAD_COLUMNS} FROM multipart_uploads WHERE upload_id = ?"
    if cur.dialect == "postgres":
        sql += " FOR UPDATE"
    cur.execute(sql, (upload_id,))
    row = cur.fetchone()
    return None if row is None else _upload(row)


def _resize(cur: Cursor, upload: Upload, change: int, at: int) -> None:
    """Grow (``change > 0``, only if it fits) or shrink the upload's reservation."""
    cur.execute(
        "UPDATE pending SET size = size + ?"
        " WHERE storage_key = ? AND state = 'upload' AND size + ? >= 0",
        (change, upload.storage_key, change),
    )
    if cur.rowcount != 1:
        cur.execute(
            "SELECT size FROM pending WHERE storage_key = ? AND state = 'upload'",
            (upload.storage_key,),
        )
        row = cur.fetchone()
        if row is None:
            raise ReservationLost(upload.storage_key)
        raise ValueError(f"upload {upload.upload_id!r} has only {int(row[0])} bytes reserved")
    _apply(cur, {upload.backend: _Delta(pending=change, growth=max(change, 0))}, at)


@define
class MultipartStore:
    """Multipart uploads, their parts, and the pending bytes they hold, kept consistent."""

    _db: Database

    async def create_upload(self, upload: Upload, max_uploads: int, now: float) -> None:
        """Record a new upload and an empty reservation for its storage key.

        Raises ``TooManyUploads`` if ``max_uploads > 0`` and the bucket already
        has that many, and ``UnknownBackend``; either way nothing changes.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            if cur.dialect == "postgres":
                # Two creates must not both see room for one more.
                cur.execute("SELECT pg_advisory_xact_lock(?)", (_bucket_lock_id(upload.bucket),))
            if max_uploads > 0:
                cur.execute(
                    "SELECT COUNT(*) FROM multipart_uploads WHERE bucket = ?", (upload.bucket,)
                )
                row = cur.fetchone()
                if row is not None and int(row[0]) >= max_uploads:
                    raise TooManyUploads(
                        f"bucket {upload.bucket!r} has {int(row[0])} uploads in progress"
                    )
            cur.execute("SELECT 1 FROM backends WHERE name = ?", (upload.backend,))
            if cur.fetchone() is None:
                raise UnknownBackend(upload.backend)
            cur.execute(
                f"INSERT INTO multipart_uploads ({_UPLOAD_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    upload.upload_id,
                    upload.bucket,
                    upload.key,
                    upload.backend,
                    upload.storage_key,
                    upload.backend_upload_id,
                    upload.content_type,
                    _json(upload.metadata),
                    _json(upload.headers),
                    _micros(upload.created_at),
                    *_upload_sealing(upload),
                ),
            )
            cur.execute(
                "INSERT INTO pending (storage_key, backend, size, state, created_at, attempts,"
                " next_attempt, last_error, multipart_id)"
                " VALUES (?, ?, 0, 'upload', ?, 0, ?, NULL, ?)",
                (upload.storage_key, upload.backend, at, at, upload.backend_upload_id),
            )

        await self._db.run("create_upload", txn)

    async def get_upload(self, upload_id: str) -> Upload | None:
        """The upload, if it is still in progress."""

        def txn(cur: Cursor) -> Upload | None:
            cur.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM multipart_uploads WHERE upload_id = ?",
                (upload_id,),
            )
            row = cur.fetchone()
            return None if row is None else _upload(row)

        return await self._db.run("get_upload", txn, readonly=True)

    async def reserve_part(self, upload_id: str, size: int, now: float) -> None:
        """Count ``size`` more bytes against the upload's backend before a part is sent.

        Raises ``NoSpace`` if they do not fit under the backend's limit and
        ``UploadNotFound`` if the upload is gone; either way nothing changes.
        """
        if size < 0:
            raise ValueError(f"negative size {size}")
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            upload = _lock_upload(cur, upload_id)
            if upload is None:
                raise UploadNotFound(upload_id)
            _resize(cur, upload, size, at)

        await self._db.run("reserve_part", txn)

    async def release_part(self, upload_id: str, size: int, now: float) -> None:
        """Give back the ``size`` bytes reserved for a part that was not stored.

        Nothing to do if the upload is gone: completing released its whole
        reservation, and aborting keeps it pending until the bytes are deleted.
        """
        if size < 0:
            raise ValueError(f"negative size {size}")
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            upload = _lock_upload(cur, upload_id)
            if upload is not None:
                _resize(cur, upload, -size, at)

        await self._db.run("release_part", txn)

    async def record_part(self, upload_id: str, part: Part, now: float) -> None:
        """Record a stored part, whose ``part.stored_size`` bytes ``reserve_part`` counted.

        A part with the same number is replaced on the backend too, so its
        bytes are given back. Raises ``UploadNotFound`` if the upload is gone.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            upload = _lock_upload(cur, upload_id)
            if upload is None:
                raise UploadNotFound(upload_id)
            cur.execute(
                "SELECT COALESCE(stored_size, size) FROM multipart_parts"
                " WHERE upload_id = ? AND part_number = ?",
                (upload_id, part.part_number),
            )
            old = cur.fetchone()
            cur.execute(
                f"INSERT INTO multipart_parts (upload_id, {_PART_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (upload_id, part_number) DO UPDATE SET etag = excluded.etag,"
                " size = excluded.size, created_at = excluded.created_at,"
                " backend_etag = excluded.backend_etag, stored_size = excluded.stored_size",
                (
                    upload_id,
                    part.part_number,
                    part.etag,
                    part.size,
                    _micros(part.created_at),
                    part.backend_etag,
                    part.stored_size,
                ),
            )
            if old is not None and int(old[0]) > 0:
                _resize(cur, upload, -int(old[0]), at)

        await self._db.run("record_part", txn)

    async def list_parts(self, upload_id: str, after: int, limit: int) -> list[Part]:
        """At most ``limit`` parts numbered above ``after``, ascending; ``[]`` for no upload."""

        def txn(cur: Cursor) -> list[Part]:
            cur.execute(
                f"SELECT {_PART_COLUMNS} FROM multipart_parts"
                " WHERE upload_id = ? AND part_number > ? ORDER BY part_number LIMIT ?",
                (upload_id, after, limit),
            )
            return [_part(row) for row in cur.fetchall()]

        return await self._db.run("list_parts", txn, readonly=True)

    async def all_parts(self, upload_id: str) -> dict[int, Part]:
        """Every part of the upload, by number."""

        def txn(cur: Cursor) -> dict[int, Part]:
            cur.execute(
                f"SELECT {_PART_COLUMNS} FROM multipart_parts WHERE upload_id = ?"
                " ORDER BY part_number",
                (upload_id,),
            )
            return {part.part_number: part for part in map(_part, cur.fetchall())}

        return await self._db.run("all_parts", txn, readonly=True)

    async def list_uploads(
        self, bucket: str, prefix: str, key_marker: str, upload_id_marker: str, limit: int
    ) -> list[Upload]:
        """At most ``limit`` uploads in ``bucket`` whose key starts with ``prefix``, in S3 order.

        S3 orders by key (byte order), then by initiation (here ``created_at``,
        then ``upload_id``). With only ``key_marker``, listing resumes at keys
        after it; with both markers, at the marker upload's successors of that
        key. ``upload_id_marker`` alone is ignored, as S3 does. If the marker
        upload is gone (aborted between pages), every upload of ``key_marker``
        is listed again rather than any being skipped.
        """
        upper = prefix_successor(prefix)

        def txn(cur: Cursor) -> list[Upload]:
            sql = f"SELECT {_UPLOAD_COLUMNS} FROM multipart_uploads WHERE bucket = ? AND key >= ?"
            params: list[object] = [bucket, prefix]
            if upper is not None:
                sql += " AND key < ?"
                params.append(upper)
            if key_marker and upload_id_marker:
                cur.execute(
                    "SELECT created_at FROM multipart_uploads"
                    " WHERE upload_id = ? AND bucket = ? AND key = ?",
                    (upload_id_marker, bucket, key_marker),
                )
                marker = cur.fetchone()
                if marker is None:
                    sql += " AND key >= ?"
                    params.append(key_marker)
                else:
                    sql += " AND (key, created_at, upload_id) > (?, ?, ?)"
                    params += [key_marker, int(marker[0]), upload_id_marker]
            else:
                sql += " AND key > ?"
                params.append(key_marker)
            sql += " ORDER BY key, created_at, upload_id LIMIT ?"
            params.append(limit)
            cur.execute(sql, params)
            return [_upload(row) for row in cur.fetchall()]

        return await self._db.run("list_uploads", txn, readonly=True)

    async def complete_upload(
        self,
        upload_id: str,
        version: ObjectVersion,
        now: float,
        read_as: WrappedKey | None = None,
    ) -> list[PendingDeletion]:
        """Remove the upload and commit ``version`` from its bytes, in one transaction.

        ``version`` has one copy: the upload's storage key on its backend,
        ``stored_size`` the sum of the parts chosen. The whole reservation
        (parts not chosen included: the backend drops them) leaves
        ``bytes_pending`` and the stored size joins ``bytes_used``, exactly as
        ``MetadataStore.commit``; the displaced previous version's copies are
        returned as pending deletions. Raises ``UploadNotFound`` if the upload
        is gone or belongs to another bucket or key; nothing changes then.

        A sealed version keeps the DEK wrapping it carries only if the upload's is still
        ``read_as`` (the one it was made from); otherwise a rotation re-wrapped the upload's
        DEK meanwhile, and that wrapping is committed instead.
        """
        if len(version.copies) != 1:
            raise ValueError(f"upload {upload_id!r}: a completed upload has exactly one copy")
        (copy,) = version.copies
        at = _micros(now)

        def txn(cur: Cursor) -> list[PendingDeletion]:
            upload = _lock_upload(cur, upload_id)
            if upload is None or (upload.bucket, upload.key) != (version.bucket, version.key):
                raise UploadNotFound(upload_id)
            if (copy.backend, copy.storage_key) != (upload.backend, upload.storage_key):
                raise ValueError(
                    f"upload {upload_id!r} is stored at {upload.storage_key!r} on"
                    f" {upload.backend!r}, not {copy.storage_key!r} on {copy.backend!r}"
                )
            cur.execute("DELETE FROM multipart_parts WHERE upload_id = ?", (upload_id,))
            cur.execute("DELETE FROM multipart_uploads WHERE upload_id = ?", (upload_id,))
            committed = version
            stored = upload.sealing.wrapped if upload.sealing is not None else None
            if version.sealing is not None and stored is not None and stored != read_as:
                sealing = evolve(version.sealing, wrapped=stored)
                committed = evolve(version, sealing=sealing)
            return commit_version(cur, committed, at)

        return await self._db.run("complete_upload", txn)

    async def abort_upload(self, upload_id: str, now: float) -> PendingDeletion | None:
        """Remove the upload; its reservation becomes a pending deletion, due now.

        The bytes stay pending until the backend upload is aborted and
        ``MetadataStore.forget`` is called. Returns the deletion (with
        ``multipart_id``), or ``None`` if the upload did not exist.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> PendingDeletion | None:
            upload = _lock_upload(cur, upload_id)
            if upload is None:
                return None
            cur.execute("DELETE FROM multipart_parts WHERE upload_id = ?", (upload_id,))
            cur.execute("DELETE FROM multipart_uploads WHERE upload_id = ?", (upload_id,))
            cur.execute(
                "UPDATE pending SET state = 'delete', next_attempt = ?"
                " WHERE storage_key = ? AND state = 'upload'",
                (at, upload.storage_key),
            )
            cur.execute(
                f"SELECT {_DELETION_COLUMNS} FROM pending"
                " WHERE storage_key = ? AND state = 'delete'",
                (upload.storage_key,),
            )
            row = cur.fetchone()
            if row is not None:
                return _deletion(row)
            # The reservation was dropped behind our back: still have the
            # backend upload aborted, with no bytes counted.
            cur.execute(
                "INSERT INTO pending (storage_key, backend, size, state, created_at, attempts,"
                " next_attempt, last_error, multipart_id)"
                " VALUES (?, ?, 0, 'delete', ?, 0, ?, NULL, ?)",
                (upload.storage_key, upload.backend, at, at, upload.backend_upload_id),
            )
            return PendingDeletion(
                upload.backend, upload.storage_key, 0, 0, upload.backend_upload_id
            )

        return await self._db.run("abort_upload", txn)

    async def stale_uploads(self, older_than: float, limit: int) -> list[Upload]:
        """At most ``limit`` uploads created before ``older_than``, oldest first."""
        before = _micros(older_than)

        def txn(cur: Cursor) -> list[Upload]:
            cur.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM multipart_uploads WHERE created_at < ?"
                " ORDER BY created_at, upload_id LIMIT ?",
                (before, limit),
            )
            return [_upload(row) for row in cur.fetchall()]

        return await self._db.run("stale_uploads", txn, readonly=True)

    async def count_uploads(self, bucket: str) -> int:
        """How many uploads ``bucket`` has in progress."""

        def txn(cur: Cursor) -> int:
            cur.execute("SELECT COUNT(*) FROM multipart_uploads WHERE bucket = ?", (bucket,))
            row = cur.fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.run("count_uploads", txn, readonly=True)
