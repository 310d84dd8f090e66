"""Wrapped data keys as the key rotation job sees them: found by key, replaced by compare-and-swap.

A DEK lives in an object version's row or in a multipart upload's row. The job walks both
tables in a stable order (keyset pagination) and replaces a wrapping only if it is still the
one the job read: a client write or delete in between (a new version, a completed upload) is
never reverted, and a DEK rotated by someone else meanwhile is left as it is.

On SQLite the walk follows the rowid, the order rows sit in the file, so that a batch's
updates dirty a few neighbouring pages of the table and of its key index (schema 006) rather
than a page per DEK. New rows get higher rowids, and any row written after the job started
carries a DEK of the primary key. Only a VACUUM renumbers rowids (these tables have no INTEGER
PRIMARY KEY), so the cursor also names the last row it passed: if that row has moved, the walk
starts over, and DEKs re-wrapped already are no longer selected. PostgreSQL has no stable
physical order; it walks version ids.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from attrs import define, frozen
from twisted.logger import Logger

from s3orch.crypto.keys import WrappedKey
from s3orch.store.db import Cursor, Database, Dialect

log = Logger()

# The tables in the order the job visits them, their rows' ids, and the column each is walked
# by per dialect. A cursor is "<table index>:<last walked value>", and on SQLite
# ":<id of that row>" after it.
_TABLES = ("objects", "multipart_uploads")
_IDS = ("version_id", "upload_id")
_WALK_COLUMNS: dict[Dialect, tuple[str, ...]] = {"sqlite": ("rowid", "rowid"), "postgres": _IDS}


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
    row_id: str | int  # the row's walk column (an int rowid on SQLite)
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
            for table in _TABLES:
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
        dialect = self._db.dialect
        columns = _WALK_COLUMNS[dialect]
        table_index, after, anchor = _parse_cursor(cursor, dialect)

        def txn(cur: Cursor) -> tuple[list[StoredDek], str | None]:
            found: list[StoredDek] = []
            index, last = table_index, after
            if anchor and _moved(cur, index, last, anchor):
                log.warn("rowids changed during a key rotation (VACUUM?): walking again")
                index, last = 0, _start(dialect)
            last_id = anchor
            while index < len(_TABLES) and len(found) < limit:
                table, column = _TABLES[index], columns[index]
                cur.execute(
                    f"SELECT {column}, {_IDS[index]}, enc_key_id, enc_fingerprint, enc_wrapped"
                    f" FROM {table} WHERE {where} AND {column} > ? ORDER BY {column} LIMIT ?",
                    [*params, last, limit - len(found)],
                )
                rows = cur.fetchall()
                for row_id, _, key_id, fingerprint, blob in rows:
                    wrapped = WrappedKey(key_id, fingerprint, base64.b64decode(blob))
                    found.append(StoredDek(index, row_id, wrapped))
                if rows:
                    last_id = rows[-1][1]
                if len(found) < limit:
                    index, last = index + 1, _start(dialect)
                else:
                    last = found[-1].row_id
            if index >= len(_TABLES):
                return found, None
            if dialect == "sqlite" and last:
                return found, f"{index}:{last}:{last_id}"
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

        columns = _WALK_COLUMNS[self._db.dialect]

        def txn(cur: Cursor) -> int:
            replaced = 0
            for index, rows in sorted(by_table.items()):
                table, column = _TABLES[index], columns[index]
                if cur.dialect == "postgres":
                    # One statement per batch: psycopg's per-row work for executemany runs
                    # in Python, holding the GIL that the reactor thread needs.
                    cur.execute(
                        f"UPDATE {table} AS t SET enc_key_id = v.key_id,"
                        " enc_fingerprint = v.fingerprint, enc_wrapped = v.wrapped"
                        " FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[],"
                        " ?::text[]) AS v(key_id, fingerprint, wrapped, id, old_fingerprint,"
                        f" old_wrapped) WHERE t.{column} = v.id"
                        " AND t.enc_fingerprint = v.old_fingerprint"
                        " AND t.enc_wrapped = v.old_wrapped",
                        [list(values) for values in zip(*rows, strict=True)],
                    )
                else:
                    cur.executemany(
                        f"UPDATE {table} SET enc_key_id = ?, enc_fingerprint = ?, enc_wrapped = ?"
                        f" WHERE {column} = ? AND enc_fingerprint = ? AND enc_wrapped = ?",
                        rows,
                    )
                replaced += max(cur.rowcount, 0)
            return replaced

        return await self._db.run("replace_deks", txn)


def _start(dialect: Dialect) -> str | int:
    """A walk position before every row."""
    return 0 if dialect == "sqlite" else ""


def _parse_cursor(cursor: str | None, dialect: Dialect) -> tuple[int, str | int, str]:
    """(table index, last walked value, id of the row it belongs to: SQLite only)."""
    if not cursor:
        return 0, _start(dialect), ""
    index, _, last = cursor.partition(":")
    if dialect == "postgres":
        return int(index), last, ""
    rowid, _, anchor = last.partition(":")
    try:
        return int(index), int(rowid), anchor
    except ValueError:
        # A cursor of an s3orch before schema 006 (a version id): walk that table again
        # from its start; the DEKs re-wrapped already are no longer selected.
        return int(index), 0, ""


def _moved(cur: Cursor, index: int, rowid: str | int, row_id: str) -> bool:
    """Whether the row ``row_id`` of table ``index`` is no longer at ``rowid``
    (a row deleted since cannot tell, and counts as not moved)."""
    cur.execute(f"SELECT rowid FROM {_TABLES[index]} WHERE {_IDS[index]} = ?", (row_id,))
    row = cur.fetchone()
    return row is not None and row[0] != rowid
