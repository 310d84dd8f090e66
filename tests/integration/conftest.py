"""Real processes for integration tests: s3orch servers in front of real S3 backends."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from s3orch.testing.s3orch_process import (
    S3OrchProcess,
    local_config,
)
from tests.integration.helpers import boto_client

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


@contextlib.contextmanager
def new_postgres_database(prefix: str) -> Iterator[dict[str, Any]]:
    """A new PostgreSQL database (its ``database`` config section), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "driver": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "database": name,
            "user": "postgres",
            "sslmode": "disable",
        }
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database for one test session, dropped afterwards."""
    with new_postgres_database("s3orch_it") as database:
        yield database


@pytest.fixture
def fresh_postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with new_postgres_database("s3orch_test") as database:
        yield database


def s3_backends_config(
    moto_server: Any, count: int = 2, quota: int = 0, checksum: str = "none"
) -> list[dict[str, Any]]:
    backends = []
    for i in range(count):
        bucket = f"backend{i + 1}-{secrets.token_hex(3)}"
        moto_server.make_bucket(bucket)
        backends.append(
            {
                "name": f"s3-{i + 1}",
                "type": "s3",
                "endpoint": moto_server.endpoint,
                "region": moto_server.region,
                "bucket": bucket,
                "access_key_id": moto_server.access_key,
                "secret_access_key": moto_server.secret_key,
                "force_path_style": True,
                "quota_bytes": quota,
                "checksum": checksum,
            }
        )
    return backends


@pytest.fixture(
    scope="module",
    params=[
        "local-sqlite",
        "local-sqlite-encrypted",
        "s3-sqlite-encrypted",
        pytest.param("s3-postgres", marks=pytest.mark.postgres),
    ],
)
def s3orch(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3OrchProcess]:
    """A running s3orch for the S3 API suite, once per backend kind, metadata database,
    and with encryption off and on. The encrypted S3 backends send trailing CRC32s."""
    workdir = tmp_path_factory.mktemp(request.param)
    encrypted = request.param.endswith("encrypted")
    config = local_config(workdir, encrypted=encrypted)
    if request.param.startswith("s3"):
        config["backends"] = s3_backends_config(
            request.getfixturevalue("moto_server"), checksum="crc32" if encrypted else "none"
        )
    if "postgres" in request.param:
        config["database"] = request.getfixturevalue("postgres_database")
    server = S3OrchProcess(workdir, config)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3OrchProcess]:
    """One s3orch on local backends and SQLite, encrypting as the default configuration
    does, for a whole module (modules may override it)."""
    workdir = tmp_path_factory.mktemp("server")
    process = S3OrchProcess(workdir, local_config(workdir, encrypted=True))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def s3(s3orch: S3OrchProcess) -> Any:
    """A boto3 client for bucket ``test`` on the suite's server."""
    return boto_client(s3orch.endpoint)


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return "k/" + secrets.token_hex(6)


def make_local_server(workdir: Path, **kwargs: Any) -> S3OrchProcess:
    server = S3OrchProcess(workdir, local_config(workdir, **kwargs))
    server.start()
    return server
