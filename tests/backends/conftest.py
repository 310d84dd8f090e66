"""Backends under test: a LocalBackend in a temp dir and an S3Backend on a real moto server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from s3orch.backends.interface import IBackend
from s3orch.backends.local import LocalBackend
from s3orch.backends.s3 import S3Backend, make_connection_pool, make_http_client
from s3orch.testing.moto_server import MotoServer


@pytest.fixture(scope="session")
def io_pool() -> Iterator[ThreadPool]:
    """The named thread pool LocalBackends do their file I/O in."""
    pool = ThreadPool(minthreads=1, maxthreads=4, name="test-local-io")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    """The directory a LocalBackend owns (inside tmp_path, so escapes would show)."""
    return tmp_path / "root"


@pytest.fixture
def local_backend(local_root: Path, reactor: object, io_pool: ThreadPool) -> LocalBackend:
    """A LocalBackend on an empty directory."""
    return LocalBackend("local", local_root, reactor, io_pool)  # type: ignore[arg-type]


def new_s3_backend(server: MotoServer, reactor: object, **kwargs: object) -> Iterator[S3Backend]:
    """An S3Backend on a fresh bucket of ``server``, its connection pool closed afterwards."""
    bucket = server.make_bucket("t-" + secrets.token_hex(8))
    pool = make_connection_pool(reactor)
    yield S3Backend(
        "s3",
        server.endpoint,
        bucket,
        server.region,
        server.access_key,
        server.secret_key,
        True,
        make_http_client(reactor, pool),
        reactor,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def s3_backend(moto_server: MotoServer, reactor: object) -> Iterator[S3Backend]:
    """An S3Backend on a fresh bucket; tiny list pages so every listing paginates."""
    yield from new_s3_backend(moto_server, reactor, list_page_size=3)


@pytest.fixture
def s3_crc32_backend(moto_server: MotoServer, reactor: object) -> Iterator[S3Backend]:
    """An S3Backend that sends every body with a trailing CRC32 (``checksum: crc32``)."""
    yield from new_s3_backend(moto_server, reactor, list_page_size=3, checksum=True)


@pytest.fixture(params=["local", "s3", "s3_crc32"])
def backend(request: pytest.FixtureRequest) -> IBackend:
    """Each backend implementation in turn, for the contract suite."""
    backend: IBackend = request.getfixturevalue(f"{request.param}_backend")
    return backend
