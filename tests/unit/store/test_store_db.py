"""Database (adbapi wrapper) and migrations, run against SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet.interfaces import IReactorCore

from s3orch.store import migrations
from s3orch.store.db import Cursor, Database
from s3orch.store.migrations import Migration, SchemaTooNew

if TYPE_CHECKING:
    from conftest import DatabaseSpec


def scalar(sql: str, params: tuple[object, ...] = ()) -> Callable[[Cursor], object]:
    """A transaction function returning the first column of the first row."""

    def txn(cur: Cursor) -> object:
        cur.execute(sql, params)
        row = cur.fetchone()
        return None if row is None else row[0]

    return txn


@pytest_twisted.ensureDeferred
async def test_migrate_twice_is_idempotent(database_spec: DatabaseSpec) -> None:
    """A second migrate, from the same pool or a new one, applies nothing and reports the same version."""
    db = database_spec.open()
    latest = len(migrations.load(db.dialect))
    assert await db.migrate() == latest
    assert await db.migrate() == latest
    assert await database_spec.open().migrate() == latest
    assert await db.run("count", scalar("SELECT COUNT(*) FROM schema_version")) == latest


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(db: Database) -> None:
    """migrate refuses a database whose schema is newer than this code."""
    await db.run(
        "bump",
        lambda cur: cur.execute(
            "INSERT INTO schema_version (version, name) VALUES (?, ?)", (999, "future")
        ),
    )
    with pytest.raises(SchemaTooNew):
        await db.migrate()


@pytest_twisted.ensureDeferred
async def test_failed_migration_changes_nothing(database_spec: DatabaseSpec) -> None:
    """A migration that fails half way leaves neither its tables nor its version behind."""
    db = database_spec.open()
    steps = (
        Migration(1, "good", ("CREATE TABLE t1 (x INTEGER)",)),
        Migration(2, "bad", ("CREATE TABLE t2 (x INTEGER)", "THIS IS NOT SQL")),
    )
    with pytest.raises(Exception):  # noqa: B017 - the driver's syntax error
        await db.run("migrate", lambda cur: migrations.apply(cur, steps))
    assert await db.run("check", lambda cur: migrations.apply(cur, steps[:1])) == 1
    assert await db.run("count", scalar("SELECT COUNT(*) FROM t1")) == 0
    with pytest.raises(Exception):  # noqa: B017 - no such table
        await db.run("t2", scalar("SELECT COUNT(*) FROM t2"))


@pytest_twisted.ensureDeferred
async def test_run_commits_on_return_and_rolls_back_on_error(db: Database) -> None:
    """run commits what fn did when it returns and undoes it when it raises."""

    def insert_then_fail(cur: Cursor) -> None:
        cur.execute("INSERT INTO backends (name) VALUES (?)", ("rolled-back",))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.run("fail", insert_then_fail)
    await db.run("ok", lambda cur: cur.execute("INSERT INTO backends (name) VALUES (?)", ("kept",)))
    assert await db.run("names", scalar("SELECT name FROM backends")) == "kept"
    assert await db.run("count", scalar("SELECT COUNT(*) FROM backends")) == 1


@pytest_twisted.ensureDeferred
async def test_placeholders_and_percent_literals(db: Database) -> None:
    """The same SQL text with ? placeholders and a literal % runs in both dialects."""
    assert await db.run("pct", scalar("SELECT 'a%' || ? || '%%'", ("b",))) == "a%b%%"
    assert await db.run("like", scalar("SELECT COUNT(*) WHERE 'x%y' LIKE ?", ("x%",))) == 1


@pytest_twisted.ensureDeferred
async def test_readonly_run_sees_committed_rows(db: Database) -> None:
    """A read-only run reads what earlier transactions committed."""
    await db.run("ok", lambda cur: cur.execute("INSERT INTO backends (name) VALUES (?)", ("b",)))
    assert await db.run("read", scalar("SELECT COUNT(*) FROM backends"), readonly=True) == 1


@pytest_twisted.ensureDeferred
async def test_key_column_compares_bytes(db: Database) -> None:
    """objects.key compares in code point order, not by a locale's collation."""

    def txn(cur: Cursor) -> list[str]:
        for i, key in enumerate(["b", "B", "é", "a", "\U0001f600", "\uffff"]):
            cur.execute(
                "INSERT INTO objects (bucket, key, version_id, size, etag, content_type,"
                " metadata, headers, created_at) VALUES ('x', ?, ?, 0, '', '', '{}', '{}', 0)",
                (key, f"v{i}"),
            )
        cur.execute("SELECT key FROM objects WHERE key > ? ORDER BY key", ("B",))
        return [row[0] for row in cur.fetchall()]

    assert await db.run("order", txn) == ["a", "b", "é", "\uffff", "\U0001f600"]


@pytest_twisted.ensureDeferred
async def test_sqlite_file_and_pragmas(tmp_path: os.PathLike[str], reactor: IReactorCore) -> None:
    """Database.sqlite creates the parent directory and sets WAL, foreign keys, NORMAL sync."""
    path = os.path.join(tmp_path, "a", "b", "meta.sqlite3")
    db = Database.sqlite(path, reactor=reactor)
    try:
        assert await db.migrate() == len(migrations.load("sqlite"))
        assert await db.run("wal", scalar("PRAGMA journal_mode")) == "wal"
        assert await db.run("fk", scalar("PRAGMA foreign_keys")) == 1
        assert await db.run("sync", scalar("PRAGMA synchronous")) == 1  # NORMAL
        assert await db.run("busy", scalar("PRAGMA busy_timeout")) == 5000
    finally:
        db.close()
    assert os.path.exists(path)
