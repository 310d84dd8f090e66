"""Fixtures that run every store test against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
import pytest_twisted
from attrs import define, field
from psycopg import sql
from psycopg.conninfo import make_conninfo
from twisted.internet.interfaces import IReactorCore

from s3orch.store.db import Database
from s3orch.store.objects import MetadataStore

POSTGRES = os.environ.get(
    "S3ORCH_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


@define
class DatabaseSpec:
    """Opens pools on one test database; every pool opened is closed at teardown."""

    kind: str
    _factory: Callable[[], Database]
    _opened: list[Database] = field(factory=list)

    def open(self) -> Database:
        database = self._factory()
        self._opened.append(database)
        return database

    def close_all(self) -> None:
        for database in self._opened:
            database.close()
        self._opened.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_spec(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], reactor: IReactorCore
) -> Iterator[DatabaseSpec]:
    """A fresh empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        path = os.path.join(tmp_path, "meta", "s3orch.sqlite3")
        spec = DatabaseSpec("sqlite", lambda: Database.sqlite(path, reactor=reactor))
        try:
            yield spec
        finally:
            spec.close_all()
        return
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conninfo = make_conninfo(POSTGRES, options=f"-csearch_path={schema}")
    spec = DatabaseSpec("postgres", lambda: Database.postgres(conninfo, reactor=reactor))
    try:
        yield spec
    finally:
        spec.close_all()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest_twisted.async_fixture
async def db(database_spec: DatabaseSpec) -> Database:
    """A migrated database."""
    database = database_spec.open()
    await database.migrate()
    return database


@pytest.fixture
def store(db: Database) -> MetadataStore:
    """A metadata store on the migrated database."""
    return MetadataStore(db)
