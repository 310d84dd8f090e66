"""Where every object version lives, and what each backend holds.

Every PUT writes to a new storage key, reserved first (a pending ``upload``
row), so bytes on a backend are always accounted for: by a committed copy, or
by a pending row until they are deleted. A backend's counters change in the
same transaction as the rows they count, and a write that would exceed a
backend's limit is refused by a conditional UPDATE, never by read-then-write.

Writers of one (bucket, key) are serialised: PostgreSQL takes a transaction
advisory lock on a hash of the name; SQLite's ``BEGIN IMMEDIATE`` already
admits one writer at a time. Backend rows are updated in name order, so two
transactions never wait on each other's counters in a cycle.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from attrs import define

from s3orch.crypto.keys import WrappedKey
from s3orch.store.db import Cursor, Database
from s3orch.store.records import (
    BackendUsage,
    NoSpace,
    ObjectVersion,
    PendingDeletion,
    Precondition,
    Sealing,
    Segment,
    StoredCopy,
)

_MICROS = 1_000_000
_BACKOFF_BASE = 60
_BACKOFF_MAX = 86_400
_MAX_ERROR_CHARS = 1000


class UnknownBackend(LookupError):
    """The backend is not in the database (``sync_backends`` has not named it)."""


class VersionChanged(Exception):
    """The version to rewrite is no longer the current version of its key."""


class ReservationLost(Exception):
    """A copy to commit has no pending upload row any more (expired, abandoned or never made)."""


def _micros(seconds: float) -> int:
    return round(seconds * _MICROS)


def _seconds(micros: int) -> float:
    return micros / _MICROS


def _json(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


def key_lock_id(bucket: str, key: str) -> int:
    """The signed 64-bit advisory lock id that serialises writers of (bucket, key)."""
    digest = hashlib.blake2b(
        bucket.encode() + b"\0" + key.encode(), digest_size=8, person=b"s3orch-object"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``, in code
    point order; ``None`` if there is none (empty prefix, or only U+10FFFF).

    Surrogates cannot occur in UTF-8 keys, so U+D7FF is followed by U+E000.
    """
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point <= 0x10FFFF:
            if 0xD800 <= point <= 0xDFFF:
                point = 0xE000
            return "".join(chars) + chr(point)
    return None


def deletion_backoff(attempts: int) -> float:
    """Seconds to wait before retrying a deletion that has now failed ``attempts`` times."""
    if attempts >= 11:  # 60 * 2**11 is already past the cap
        return float(_BACKOFF_MAX)
    return float(min(_BACKOFF_BASE * 2**attempts, _BACKOFF_MAX))


@define
class _Delta:
    """Changes to one backend's counters within one transaction."""

    used: int = 0
    pending: int = 0
    count: int = 0
    # Net new bytes (used + pending) this transaction puts on the backend; when
    # positive they must fit under the limit.
    growth: int = 0


def _apply(cur: Cursor, deltas: Mapping[str, _Delta], now: int) -> None:
    for name in sorted(deltas):
        delta = deltas[name]
        cur.execute(
            "UPDATE backends SET bytes_used = bytes_used + ?, bytes_pending = bytes_pending + ?,"
            " object_count = object_count + ?, updated_at = ?"
            " WHERE name = ? AND (? <= 0 OR bytes_limit = 0"
            " OR bytes_used + bytes_pending + ? <= bytes_limit)",
            (delta.used, delta.pending, delta.count, now, name, delta.growth, delta.growth),
        )
        if cur.rowcount != 1:
            raise NoSpace(f"backend {name!r} has no room for {delta.growth} more bytes")


def _lock_object(cur: Cursor, bucket: str, key: str) -> None:
    if cur.dialect == "postgres":
        cur.execute("SELECT pg_advisory_xact_lock(?)", (key_lock_id(bucket, key),))


def _remove_version(
    cur: Cursor, bucket: str, key: str, now: int, deltas: dict[str, _Delta]
) -> list[PendingDeletion]:
    """Delete the current version of (bucket, key), turning its copies into pending deletions."""
    cur.execute("SELECT version_id FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    row = cur.fetchone()
    if row is None:
        return []
    version_id = row[0]
    displaced = _drop_copies(cur, version_id, now, deltas)
    cur.execute("DELETE FROM objects WHERE version_id = ?", (version_id,))
    return displaced


def _claim(cur: Cursor, copy: StoredCopy, deltas: dict[str, _Delta]) -> None:
    """Turn ``copy``'s pending upload row into committed bytes (the copy row is the caller's)."""
    cur.execute(
        "DELETE FROM pending WHERE storage_key = ? AND state = 'upload' RETURNING backend, size",
        (copy.storage_key,),
    )
    rows = cur.fetchall()
    if not rows:
        raise ReservationLost(copy.storage_key)
    backend, reserved = rows[0]
    if backend != copy.backend:
        raise ValueError(f"{copy.storage_key!r} was reserved on {backend!r}, not {copy.backend!r}")
    delta = deltas.setdefault(backend, _Delta())
    delta.pending -= int(reserved)
    delta.used += copy.stored_size
    delta.count += 1
    delta.growth += copy.stored_size - int(reserved)


def _drop_copies(
    cur: Cursor, version_id: str, now: int, deltas: dict[str, _Delta]
) -> list[PendingDeletion]:
    """Delete a version's copy rows; their bytes become pending deletions, returned."""
    cur.execute(
        "DELETE FROM copies WHERE version_id = ? RETURNING backend, storage_key, stored_size",
        (version_id,),
    )
    removed = sorted(cur.fetchall())
    cur.executemany(
        "INSERT INTO pending (storage_key, backend, size, state, created_at, attempts,"
        " next_attempt, last_error) VALUES (?, ?, ?, 'delete', ?, 0, ?, NULL)",
        [(storage_key, backend, size, now, now) for backend, storage_key, size in removed],
    )
    displaced = []
    for backend, storage_key, size in removed:
        delta = deltas.setdefault(backend, _Delta())
        delta.used -= size
        delta.count -= 1
        delta.pending += size
        displaced.append(PendingDeletion(backend, storage_key, size, 0, None))
    return displaced


def commit_version(
    cur: Cursor, version: ObjectVersion, at: int, precondition: Precondition | None = None
) -> list[PendingDeletion]:
    """Make ``version`` current inside the caller's transaction; see ``MetadataStore.commit``.

    Shared with completing a multipart upload, whose bytes are committed exactly
    like a PUT's. ``at`` is in microseconds.
    """
    _lock_object(cur, version.bucket, version.key)
    if precondition is not None:
        _check_precondition(cur, version.bucket, version.key, precondition)
    deltas: dict[str, _Delta] = {}
    for copy in sorted(version.copies, key=lambda c: c.storage_key):
        _claim(cur, copy, deltas)
    displaced = _remove_version(cur, version.bucket, version.key, at, deltas)
    cur.execute(
        f"INSERT INTO objects (bucket, key, version_id, size, etag, content_type,"
        f" metadata, headers, created_at, {_SEALING_NAMES})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            version.bucket,
            version.key,
            version.version_id,
            version.size,
            version.etag,
            version.content_type,
            _json(version.metadata),
            _json(version.headers),
            _micros(version.created_at),
            *sealing_values(version.sealing),
        ),
    )
    cur.executemany(
        "INSERT INTO copies (version_id, backend, storage_key, stored_size) VALUES (?, ?, ?, ?)",
        [(version.version_id, c.backend, c.storage_key, c.stored_size) for c in version.copies],
    )
    _apply(cur, deltas, at)
    return displaced


def _check_precondition(cur: Cursor, bucket: str, key: str, precondition: Precondition) -> None:
    """Raise PreconditionFailed unless the current version is as the write requires.

    Runs under the object's lock, so nothing can change between check and commit.
    """
    cur.execute("SELECT etag FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    row = cur.fetchone()
    precondition.check(row[0] if row is not None else None)


_OBJECT_COLUMNS = (
    "o.bucket, o.key, o.version_id, o.size, o.etag, o.content_type, o.metadata, o.headers,"
    " o.created_at"
)

# How an encrypted version is sealed; all NULL for a plaintext one.
_SEALING_NAMES = (
    "enc_scheme, enc_key_id, enc_fingerprint, enc_wrapped, enc_chunk_size, enc_header, enc_segments"
)
_SEALING_COLUMNS = ", ".join("o." + name.strip() for name in _SEALING_NAMES.split(","))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sealing_values(sealing: Sealing | None) -> tuple[object, ...]:
    """The seven ``enc_*`` column values for ``sealing`` (shared with multipart uploads)."""
    if sealing is None:
        return (None,) * 7
    wrapped = sealing.wrapped
    segments = None
    if sealing.segments:
        segments = json.dumps(
            [[s.part_number, s.plain_size, s.stored_size] for s in sealing.segments],
            separators=(",", ":"),
        )
    return (
        sealing.scheme,
        wrapped.key_id,
        wrapped.fingerprint,
        _b64(wrapped.blob),
        sealing.chunk_size,
        _b64(sealing.header),
        segments,
    )


def sealing_from(row: tuple[Any, ...]) -> Sealing | None:
    """The Sealing in seven ``enc_*`` column values, None for a plaintext version."""
    scheme, key_id, fingerprint, wrapped, chunk_size, header, segments = row
    if scheme is None:
        return None
    return Sealing(
        scheme=scheme,
        wrapped=WrappedKey(key_id, fingerprint, base64.b64decode(wrapped)),
        chunk_size=int(chunk_size or 0),
        header=base64.b64decode(header or ""),
        segments=tuple(Segment(int(n), int(p), int(s)) for n, p, s in json.loads(segments))
        if segments
        else (),
    )


def _version(
    row: tuple[Any, ...], copies: tuple[StoredCopy, ...] = (), sealing: Sealing | None = None
) -> ObjectVersion:
    bucket, key, version_id, size, etag, content_type, metadata, headers, created_at = row[:9]
    return ObjectVersion(
        bucket=bucket,
        key=key,
        version_id=version_id,
        size=int(size),
        etag=etag,
        content_type=content_type,
        created_at=_seconds(int(created_at)),
        metadata=json.loads(metadata),
        headers=json.loads(headers),
        copies=copies,
        sealing=sealing,
    )


# The columns _deletion reads from a pending row.
_DELETION_COLUMNS = "backend, storage_key, size, attempts, multipart_id"


def _deletion(row: tuple[Any, ...]) -> PendingDeletion:
    backend, storage_key, size, attempts, multipart_id = row
    return PendingDeletion(backend, storage_key, int(size), int(attempts), multipart_id)


@define
class MetadataStore:
    """Object versions, their copies, pending bytes and backend counters, kept consistent."""

    _db: Database

    async def sync_backends(self, limits: Mapping[str, int]) -> None:
        """Add backends the database lacks and set every named backend's limit from config."""
        for name, limit in limits.items():
            if limit < 0:
                raise ValueError(f"backend {name!r}: negative limit {limit}")

        def txn(cur: Cursor) -> None:
            cur.executemany(
                "INSERT INTO backends (name, bytes_limit) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET bytes_limit = excluded.bytes_limit",
                sorted(limits.items()),
            )

        await self._db.run("sync_backends", txn)

    async def usage(self) -> list[BackendUsage]:
        """Every backend's counters, by name."""

        def txn(cur: Cursor) -> list[BackendUsage]:
            cur.execute(
                "SELECT name, bytes_used, bytes_pending, bytes_limit, object_count"
                " FROM backends ORDER BY name"
            )
            return [
                BackendUsage(name, int(used), int(pending), int(limit), int(count))
                for name, used, pending, limit, count in cur.fetchall()
            ]

        return await self._db.run("usage", txn, readonly=True)

    async def reserve(self, backend: str, storage_key: str, size: int, now: float) -> None:
        """Record an upload about to start and count its bytes as pending.

        Raises ``NoSpace`` (changing nothing) if the backend has no room, and
        ``UnknownBackend`` if it is not in the database.
        """
        if size < 0:
            raise ValueError(f"negative size {size}")
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            cur.execute(
                "UPDATE backends SET bytes_pending = bytes_pending + ?, updated_at = ?"
                " WHERE name = ?"
                " AND (bytes_limit = 0 OR bytes_used + bytes_pending + ? <= bytes_limit)",
                (size, at, backend, size),
            )
            if cur.rowcount != 1:
                cur.execute("SELECT 1 FROM backends WHERE name = ?", (backend,))
                if cur.fetchone() is None:
                    raise UnknownBackend(backend)
                raise NoSpace(f"backend {backend!r} has no room for {size} bytes")
            cur.execute(
                "INSERT INTO pending (storage_key, backend, size, state, created_at, attempts,"
                " next_attempt, last_error) VALUES (?, ?, ?, 'upload', ?, 0, ?, NULL)",
                (storage_key, backend, size, at, at),
            )

        await self._db.run("reserve", txn)

    async def commit(
        self, version: ObjectVersion, now: float, precondition: Precondition | None = None
    ) -> list[PendingDeletion]:
        """Make ``version`` the current version of its (bucket, key), in one transaction.

        Each copy's pending upload row becomes a copy row. The version it
        replaces, if any, is removed and its copies become pending deletions,
        which are returned for the caller to delete now. Raises
        ``ReservationLost`` if a copy's upload row is gone, and ``NoSpace`` if
        a copy is larger than its reservation and the excess does not fit;
        either way nothing changes. A version must have at least one copy.
        With a ``precondition`` that does not hold, raises PreconditionFailed
        and changes nothing.
        """
        if not version.copies:
            raise ValueError(f"{version.bucket}/{version.key}: a version needs a copy")
        at = _micros(now)

        def txn(cur: Cursor) -> list[PendingDeletion]:
            return commit_version(cur, version, at, precondition)

        return await self._db.run("commit", txn)

    async def abandon(self, storage_key: str, now: float) -> PendingDeletion | None:
        """Turn a failed upload's reservation into a pending deletion, due now.

        Its bytes stay pending until ``forget``. Returns the deletion (also if
        it was already one), or ``None`` if there is no pending row.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> PendingDeletion | None:
            cur.execute(
                "UPDATE pending SET state = 'delete', next_attempt = ?"
                " WHERE storage_key = ? AND state = 'upload'",
                (at, storage_key),
            )
            cur.execute(
                f"SELECT {_DELETION_COLUMNS} FROM pending"
                " WHERE storage_key = ? AND state = 'delete'",
                (storage_key,),
            )
            row = cur.fetchone()
            return None if row is None else _deletion(row)

        return await self._db.run("abandon", txn)

    async def forget(self, storage_key: str) -> None:
        """Drop a pending row and its pending bytes: the bytes are gone from the backend."""

        def txn(cur: Cursor) -> None:
            cur.execute(
                "DELETE FROM pending WHERE storage_key = ? RETURNING backend, size",
                (storage_key,),
            )
            for backend, size in cur.fetchall():
                cur.execute(
                    "UPDATE backends SET bytes_pending = bytes_pending - ? WHERE name = ?",
                    (size, backend),
                )

        await self._db.run("forget", txn)

    async def deletion_failed(self, storage_key: str, error: str, now: float) -> None:
        """Record a failed deletion and push its next attempt back exponentially.

        After the n-th failure the next attempt is ``min(60 * 2**n, 86400)``
        seconds away. A row that is not a pending deletion is left alone.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> None:
            cur.execute(
                "UPDATE pending SET attempts = attempts + 1, last_error = ?"
                " WHERE storage_key = ? AND state = 'delete' RETURNING attempts",
                (error[:_MAX_ERROR_CHARS], storage_key),
            )
            rows = cur.fetchall()
            if rows:
                delay = _micros(deletion_backoff(int(rows[0][0])))
                cur.execute(
                    "UPDATE pending SET next_attempt = ? WHERE storage_key = ?",
                    (at + delay, storage_key),
                )

        await self._db.run("deletion_failed", txn)

    async def due_deletions(self, now: float, limit: int) -> list[PendingDeletion]:
        """Pending deletions whose next attempt is due, most overdue first."""
        at = _micros(now)

        def txn(cur: Cursor) -> list[PendingDeletion]:
            cur.execute(
                f"SELECT {_DELETION_COLUMNS} FROM pending"
                " WHERE state = 'delete' AND next_attempt <= ?"
                " ORDER BY next_attempt, storage_key LIMIT ?",
                (at, limit),
            )
            return [_deletion(row) for row in cur.fetchall()]

        return await self._db.run("due_deletions", txn, readonly=True)

    async def expire_uploads(self, older_than: float) -> int:
        """Turn uploads reserved before ``older_than`` into pending deletions, due at once.

        For crash recovery: an upload that old will never be committed. Returns
        how many there were. Multipart uploads (rows with a ``multipart_id``)
        legitimately live for hours and are left to ``MultipartStore``.
        """
        before = _micros(older_than)

        def txn(cur: Cursor) -> int:
            cur.execute(
                "UPDATE pending SET state = 'delete', next_attempt = created_at"
                " WHERE state = 'upload' AND created_at < ? AND multipart_id IS NULL",
                (before,),
            )
            return cur.rowcount

        return await self._db.run("expire_uploads", txn)

    async def get(self, bucket: str, key: str) -> ObjectVersion | None:
        """The current version of (bucket, key) with its copies (by backend name), if any."""

        def txn(cur: Cursor) -> ObjectVersion | None:
            # One statement, so PostgreSQL reads the version and its copies from one snapshot.
            cur.execute(
                f"SELECT {_OBJECT_COLUMNS}, {_SEALING_COLUMNS},"
                " c.backend, c.storage_key, c.stored_size"
                " FROM objects o LEFT JOIN copies c ON c.version_id = o.version_id"
                " WHERE o.bucket = ? AND o.key = ? ORDER BY c.backend",
                (bucket, key),
            )
            rows = cur.fetchall()
            if not rows:
                return None
            copies = tuple(
                StoredCopy(row[16], row[17], int(row[18])) for row in rows if row[16] is not None
            )
            return _version(rows[0], copies, sealing_from(rows[0][9:16]))

        return await self._db.run("get", txn, readonly=True)

    async def delete(self, bucket: str, key: str, now: float) -> list[PendingDeletion]:
        """Remove the current version of (bucket, key); its copies become pending deletions.

        Returns them for the caller to delete now; ``[]`` if there was no version.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> list[PendingDeletion]:
            _lock_object(cur, bucket, key)
            deltas: dict[str, _Delta] = {}
            displaced = _remove_version(cur, bucket, key, at, deltas)
            _apply(cur, deltas, at)
            return displaced

        return await self._db.run("delete", txn)

    async def rewrite(
        self, version: ObjectVersion, copy: StoredCopy, sealing: Sealing | None, now: float
    ) -> list[PendingDeletion]:
        """Give ``version`` new bytes: ``copy`` (reserved) replaces its copies, ``sealing``
        its sealing, in one transaction; the old copies become pending deletions, returned.

        Raises VersionChanged, changing nothing, unless ``version`` is still the current
        version of its key: a write that raced with the rewrite always wins.
        """
        at = _micros(now)

        def txn(cur: Cursor) -> list[PendingDeletion]:
            _lock_object(cur, version.bucket, version.key)
            cur.execute(
                "SELECT version_id FROM objects WHERE bucket = ? AND key = ?",
                (version.bucket, version.key),
            )
            row = cur.fetchone()
            if row is None or row[0] != version.version_id:
                raise VersionChanged(version.key)
            deltas: dict[str, _Delta] = {}
            _claim(cur, copy, deltas)
            displaced = _drop_copies(cur, version.version_id, at, deltas)
            cur.execute(
                "INSERT INTO copies (version_id, backend, storage_key, stored_size)"
                " VALUES (?, ?, ?, ?)",
                (version.version_id, copy.backend, copy.storage_key, copy.stored_size),
            )
            columns = ", ".join(f"{n.strip()} = ?" for n in _SEALING_NAMES.split(","))
            cur.execute(
                f"UPDATE objects SET {columns} WHERE version_id = ?",
                (*sealing_values(sealing), version.version_id),
            )
            _apply(cur, deltas, at)
            return displaced

        return await self._db.run("rewrite", txn)

    async def versions_after(
        self, after: str, limit: int, sealed: bool
    ) -> builtins.list[tuple[str, str, str]]:
        """(version_id, bucket, key) of up to ``limit`` current versions after ``after`` in
        version_id order, sealed ones or plaintext ones."""
        test = "IS NOT NULL" if sealed else "IS NULL"

        def txn(cur: Cursor) -> builtins.list[tuple[str, str, str]]:
            cur.execute(
                f"SELECT version_id, bucket, key FROM objects WHERE enc_scheme {test}"
                " AND version_id > ? ORDER BY version_id LIMIT ?",
                (after, limit),
            )
            return [(v, b, k) for v, b, k in cur.fetchall()]

        return await self._db.run("versions_after", txn, readonly=True)

    async def count_versions(self, sealed: bool) -> int:
        test = "IS NOT NULL" if sealed else "IS NULL"

        def txn(cur: Cursor) -> int:
            cur.execute(f"SELECT COUNT(*) FROM objects WHERE enc_scheme {test}")
            row = cur.fetchone()
            return int(row[0]) if row is not None else 0

        return await self._db.run("count_versions", txn, readonly=True)

    async def dek_counts(self) -> dict[tuple[str, str], int]:
        """How many data keys (versions and multipart uploads) each master key wraps,
        by (key id recorded when wrapped, fingerprint)."""

        def txn(cur: Cursor) -> dict[tuple[str, str], int]:
            counts: dict[tuple[str, str], int] = {}
            for table in ("objects", "multipart_uploads"):
                cur.execute(
                    f"SELECT enc_key_id, enc_fingerprint, COUNT(*) FROM {table}"
                    " WHERE enc_fingerprint IS NOT NULL GROUP BY enc_key_id, enc_fingerprint"
                )
                for key_id, fingerprint, count in cur.fetchall():
                    name = (key_id, fingerprint)
                    counts[name] = counts.get(name, 0) + int(count)
            return counts

        return await self._db.run("dek_counts", txn, readonly=True)

    async def check_counters(self) -> builtins.list[str]:
        """Describe every backend whose counters differ from the sums of its rows."""

        def txn(cur: Cursor) -> builtins.list[str]:
            # One statement: one snapshot on PostgreSQL.
            cur.execute(
                "SELECT b.name, b.bytes_used, b.object_count, b.bytes_pending,"
                " (SELECT COALESCE(SUM(c.stored_size), 0) FROM copies c WHERE c.backend = b.name),"
                " (SELECT COUNT(*) FROM copies c WHERE c.backend = b.name),"
                " (SELECT COALESCE(SUM(p.size), 0) FROM pending p WHERE p.backend = b.name)"
                " FROM backends b ORDER BY b.name"
            )
            problems = []
            for name, used, count, pending, sum_used, sum_count, sum_pending in cur.fetchall():
                for what, counter, actual in (
                    ("bytes_used", used, sum_used),
                    ("object_count", count, sum_count),
                    ("bytes_pending", pending, sum_pending),
                ):
                    if int(counter) != int(actual):
                        problems.append(
                            f"backend {name!r}: {what} is {int(counter)}, its rows sum to"
                            f" {int(actual)}"
                        )
            return problems

        return await self._db.run("check_counters", txn, readonly=True)

    async def list(
        self, bucket: str, prefix: str, start_after: str, limit: int
    ) -> builtins.list[ObjectVersion]:
        """Versions in ``bucket`` whose key starts with ``prefix`` and sorts after
        ``start_after``, in UTF-8 byte order, at most ``limit``; copies are left out.

        The prefix becomes a key range, so the primary key index serves it and
        LIKE metacharacters in keys mean nothing.
        """
        upper = prefix_successor(prefix)

        def txn(cur: Cursor) -> builtins.list[ObjectVersion]:
            sql = (
                f"SELECT {_OBJECT_COLUMNS} FROM objects o"
                " WHERE o.bucket = ? AND o.key > ? AND o.key >= ?"
            )
            params: builtins.list[object] = [bucket, start_after, prefix]
            if upper is not None:
                sql += " AND o.key < ?"
                params.append(upper)
            sql += " ORDER BY o.key LIMIT ?"
            params.append(limit)
            cur.execute(sql, params)
            return [_version(row) for row in cur.fetchall()]

        return await self._db.run("list", txn, readonly=True)
