"""``checksum: crc32`` against a server that checks trailing checksums: s3orch itself.

moto takes aws-chunked trailers but never checks them, so the checks that matter here (a
damaged body is refused, a multipart upload created with CRC32 completes with its parts'
values) run against a real s3orch, which verifies them as AWS does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from s3orch.backends import trailer
from s3orch.backends.interface import BackendError, BackendNotFound
from s3orch.backends.s3 import S3Backend, make_connection_pool, make_http_client
from s3orch.testing.s3orch_process import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    S3OrchProcess,
    local_config,
)
from tests.backends.sources import MiB, chunks_of


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3OrchProcess]:
    workdir = tmp_path_factory.mktemp("checking-server")
    server = S3OrchProcess(workdir, local_config(workdir))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def crc_backend(checking_server: S3OrchProcess, reactor: Any) -> Iterator[S3Backend]:
    pool = make_connection_pool(reactor)
    yield S3Backend(
        "checked",
        checking_server.endpoint,
        "test",
        "us-east-1",
        DEMO_ACCESS_KEY,
        DEMO_SECRET_KEY,
        True,
        make_http_client(reactor, pool),
        reactor,
        checksum=True,
    )
    pytest_twisted.blockon(pool.closeCachedConnections())


async def read(backend: S3Backend, key: str) -> bytes:
    opened = await backend.get(key)
    return b"".join([chunk async for chunk in opened.body])


async def test_put_and_multipart_with_crc32_are_accepted(crc_backend: S3Backend) -> None:
    """Objects and parts sent with trailing CRC32s are stored, and an upload created with
    CRC32 completes with each part's value."""
    key = "crc/" + secrets.token_hex(4)
    data = secrets.token_bytes(trailer.CHUNK_SIZE + 4321)  # two chunks
    await crc_backend.put(key, chunks_of(data, MiB), len(data))
    assert await read(crc_backend, key) == data

    handle = await crc_backend.create_multipart(key + "/mp")
    assert handle.startswith("crc32:")
    first, last = secrets.token_bytes(5 * MiB), b"tail"
    parts = [
        (1, await crc_backend.upload_part(key + "/mp", handle, 1, chunks_of(first, MiB), 5 * MiB)),
        (2, await crc_backend.upload_part(key + "/mp", handle, 2, chunks_of(last), len(last))),
    ]
    assert all(len(receipt.split(" ")) == 2 for _, receipt in parts)
    await crc_backend.complete_multipart(key + "/mp", handle, parts)
    assert await read(crc_backend, key + "/mp") == first + last


async def test_a_body_damaged_on_the_way_is_refused(
    crc_backend: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the bytes that arrive do not have the CRC32 sent after them, the server refuses
    them (BadDigest) and stores nothing, for a PUT and for a part."""
    honest = trailer.encode_crc32
    monkeypatch.setattr(trailer, "encode_crc32", lambda crc: honest(crc ^ 1))
    key = "damaged/" + secrets.token_hex(4)
    with pytest.raises(BackendError, match="BadDigest"):
        await crc_backend.put(key, chunks_of(b"some bytes"), 10)
    with pytest.raises(BackendNotFound):
        await crc_backend.get(key)
    handle = await crc_backend.create_multipart(key)
    with pytest.raises(BackendError, match="BadDigest"):
        await crc_backend.upload_part(key, handle, 1, chunks_of(b"part"), 4)
    await crc_backend.abort_multipart(key, handle)
