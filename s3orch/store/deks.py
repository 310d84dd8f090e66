"""Wrapped data keys as the key rotation job sees them: found by key, replaced by compare-and-swap.

A DEK lives in an object version's row or in a multipart upload's row. The job walks both
tables in primary-key order (keyset pagination) and replaces a wrapping only if it is still the
one the job read: a client write or delete in between (a new version, a completed upload) is
never reverted, and a DEK rotated by someone else meanwhile is left as it is.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from attrs import define, frozen

from s3orch.crypto.keys import WrappedKey
from s3orch.store.db import Cursor, Database

# (table, id column) in the order the job visits them; a cursor is "<table index>:<last id>".
_TABLES = (("objects", "version_id"), ("multipart_uploads", "upload_id"))


@frozen
class KeySelection:
    """The DEKs of one master key: recorded under ``key_id`` when wrapped, or wrapped by a key
    with one of ``fingerprints``; never those already wrapped by ``exclude`` (the primary)."""

    key_id: str
    fingerprints: tuple[str, ...]
    exclude: str

    def where(self) -> tuple[str, list[object]]:
        marks = ", ".join("?" for _ in self.fingerprints)
        by_fingerprint = f" OR enc_fingerprint IN ({marks})" if self.fingerprints else ""
        sql = (
            f"enc_fingerprint IS NOT NULL AND enc_fingerprint <> ?"
            f" AND (enc_key_id = ?{by_fingerprint})"
        )
        return sql, [self.exclude, self.key_id, *self.fingerprints]


@frozen
class StoredDek:
    """One wrapped DEK and where it is kept."""

    table: int  # index into _TABLES
    row_id: str
    wrapped: WrappedKey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@define
class DekStore:
    _db: Database

    async def count(self, selection: KeySelection) -> int:
        where, params = selection.where()

        def txn(cur: Cursor) -> int:
            total = 0
            for table, _ in _TABLES:
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)
                row = cur.fetchone()
                total += int(row[0]) if row is not None else 0
            return total

        return await self._db.run("count_deks", txn, readonly=True)

    async def page(
        self, selection: KeySelection, cursor: str | None, limit: int
    ) -> tuple[list[StoredDek], str | None]:
        """Up to ``limit`` selected DEKs after ``cursor``, and the cursor after them
        (None once both tables are exhausted)."""
        where, params = selection.where()
        table_index, after = _parse_cursor(cursor)

        def txn(cur: Cursor) -> tuple[list[StoredDek], str | None]:
            found: list[StoredDek] = []
            index, last = table_index, after
            while index < len(_TABLES) and len(found) < limit:
                table, column = _TABLES[index]
                cur.execute(
                    f"SELECT {column}, enc_key_id, enc_fingerprint, enc_wrapped FROM {table}"
                    f" WHERE {where} AND {column} > ? ORDER BY {column} LIMIT ?",
                    [*params, last, limit - len(found)],
                )
                rows = cur.fetchall()
                for row_id, key_id, fingerprint, blob in rows:
                    wrapped = WrappedKey(key_id, fingerprint, base64.b64decode(blob))
                    found.append(StoredDek(index, row_id, wrapped))
                if len(found) < limit:
                    index, last = index + 1, ""
                else:
                    last = found[-1].row_id
            if index >= len(_TABLES):
                return found, None
            return found, f"{index}:{last}"

        return await self._db.run("page_deks", txn, readonly=True)

    async def replace(self, changes: Sequence[tuple[StoredDek, WrappedKey]]) -> int:
        """Store each new wrapping where its DEK still has the wrapping that was read;
        returns how many were replaced (the others changed or went away meanwhile)."""

        by_table: dict[int, list[tuple[object, ...]]] = {}
        for dek, new in changes:
            by_table.setdefault(dek.table, []).append(
                (
                    new.key_id,
                    new.fingerprint,
                    _b64(new.blob),
                    dek.row_id,
                    dek.wrapped.fingerprint,
                    _b64(dek.wrapped.blob),
                )
            )

        def txn(cur: Cursor) -> int:
            replaced = 0
            for index, rows in sorted(by_table.items()):
                table, column = _TABLES[index]
                cur.executemany(
                    f"UPDATE {table} SET enc_key_id = ?, enc_fingerprint = ?, enc_wrapped = ?"
                    f" WHERE {column} = ? AND enc_fingerprint = ? AND enc_wrapped = ?",
                    rows,
                )
                replaced += max(cur.rowcount, 0)
            return replaced

        return await self._db.run("replace_deks", txn)


def _parse_cursor(cursor: str | None) -> tuple[int, str]:
    if not cursor:
        return 0, ""
    index, _, last = cursor.partition(":")
    return int(index), last
