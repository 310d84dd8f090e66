"""One way into the metadata database, for SQLite and PostgreSQL alike.

Every query runs on adbapi's thread pool, never on the reactor thread. Queries
are written once, with ``?`` placeholders; the PostgreSQL dialect rewrites them
for psycopg (Synapse ``storage/database.py`` does the same).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from s3orch.store import migrations

log = Logger()

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]

# A PostgreSQL transaction that lost a deadlock or a serialisation check is
# retried this many times in all; the function it runs must be repeatable.
_ATTEMPTS = 3
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


@functools.lru_cache(maxsize=1024)
def _to_pyformat(sql: str) -> str:
    """Rewrite ``?`` placeholders as psycopg's ``%s``, escaping literal ``%``.

    SQL handed to ``Cursor.execute`` must not contain ``?`` anywhere but in
    placeholders (no ``?`` inside string literals or comments).
    """
    return sql.replace("%", "%%").replace("?", "%s")


class Cursor:
    """A DB-API cursor inside one transaction that takes ``?`` placeholders in every dialect."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect: Dialect = dialect

    def _sql(self, sql: str) -> str:
        return _to_pyformat(sql) if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        # psycopg treats % specially only when parameters are given, so always give them.
        self._cursor.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._cursor.executemany(self._sql(sql), [tuple(row) for row in rows])

    def fetchone(self) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE (without RETURNING)."""
        count: int = self._cursor.rowcount
        return count


def _sqlite_setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")


def _sqlite_reader_setup(conn: sqlite3.Connection) -> None:
    _sqlite_setup(conn)
    conn.execute("PRAGMA query_only = ON")


def _retryable(error: BaseException) -> bool:
    return getattr(error, "sqlstate", None) in _RETRYABLE_SQLSTATES


class Database:
    """An adbapi connection pool that runs functions of a cursor as transactions."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: Dialect,
        read_pool: adbapi.ConnectionPool | None = None,
    ) -> None:
        self._pool = pool
        self._read_pool = read_pool or pool
        self.dialect: Dialect = dialect

    @classmethod
    def sqlite(cls, path: str, *, reactor: IReactorCore | None = None) -> Database:
        """Open (creating if needed) the SQLite file at ``path``.

        One writing connection on one thread: SQLite has a single writer anyway,
        and adbapi closes connections from the reactor thread, hence
        ``check_same_thread=False``. ``isolation_level=None`` hands transaction
        control to ``run``, which opens each one with ``BEGIN IMMEDIATE``. Read-only
        transactions of a file database go to two reading connections of their own:
        in WAL mode readers never wait for the writer, so a long write (a batch of
        a background job, a checkpoint) does not hold up a GET.
        """
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        kwargs: dict[str, Any] = {
            "check_same_thread": False,
            "isolation_level": None,
            "cp_min": 1,
            "cp_max": 1,
            "cp_openfun": _sqlite_setup,
            "cp_name": "s3orch-sqlite",
        }
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        pool = adbapi.ConnectionPool("sqlite3", path, **kwargs)
        if path == ":memory:":
            return cls(pool, "sqlite")
        readers = dict(
            kwargs, cp_max=2, cp_openfun=_sqlite_reader_setup, cp_name="s3orch-sqlite-read"
        )
        return cls(pool, "sqlite", adbapi.ConnectionPool("sqlite3", path, **readers))

    @classmethod
    def postgres(
        cls,
        conninfo: str,
        min_conn: int = 1,
        max_conn: int = 10,
        *,
        reactor: IReactorCore | None = None,
    ) -> Database:
        """Connect to PostgreSQL with psycopg 3; connections open lazily on the pool's threads."""
        kwargs: dict[str, Any] = {
            "autocommit": False,
            "cp_min": min_conn,
            "cp_max": max_conn,
            "cp_reconnect": True,
            "cp_name": "s3orch-postgres",
        }
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        pool = adbapi.ConnectionPool("psycopg", conninfo, **kwargs)
        return cls(pool, "postgres")

    def _interaction(self, txn: adbapi.Transaction, fn: Callable[[Cursor], T], readonly: bool) -> T:
        # Runs on a pool thread; adbapi commits when this returns and rolls back if it raises.
        if self.dialect == "sqlite":
            # Take the write lock up front: a deferred transaction that reads and
            # then writes can fail with SQLITE_BUSY instead of waiting.
            txn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
        return fn(Cursor(txn, self.dialect))

    async def run(self, desc: str, fn: Callable[[Cursor], T], *, readonly: bool = False) -> T:
        """Run ``fn`` in one transaction on a pool thread and return its result.

        ``fn`` is plain synchronous SQL. The transaction commits when ``fn``
        returns and rolls back if it raises. On PostgreSQL a transaction that
        loses a deadlock or serialisation check is run again, so ``fn`` must
        not have side effects outside the database. ``readonly`` lets SQLite
        start a read transaction that does not take the write lock.
        """
        attempt = 1
        while True:
            try:
                pool = self._read_pool if readonly else self._pool
                result: T = await pool.runInteraction(self._interaction, fn, readonly)
                return result
            except Exception as e:
                if attempt < _ATTEMPTS and _retryable(e):
                    log.info(
                        "retrying {desc} after {sqlstate} (attempt {attempt})",
                        desc=desc,
                        sqlstate=getattr(e, "sqlstate", None),
                        attempt=attempt,
                    )
                    attempt += 1
                    continue
                raise

    async def migrate(self) -> int:
        """Apply pending schema migrations and return the schema version."""
        steps = migrations.load(self.dialect)
        return await self.run("migrate", functools.partial(migrations.apply, steps=steps))

    def close(self) -> None:
        """Stop the pools' threads and close their connections."""
        self._pool.close()
        if self._read_pool is not self._pool:
            self._read_pool.close()
