"""A multipart upload of thousands of parts: nothing in the design caps the part count or size."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from s3orch.backends.local import LocalBackend
from s3orch.objects.multipart import MultipartUploads
from s3orch.objects.orchestrator import Orchestrator
from s3orch.store.db import Database
from s3orch.store.multipart import MultipartStore
from s3orch.store.objects import MetadataStore

PARTS = 2500


@pytest.fixture
def io_pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=4, name="many-parts-io")
    pool.start()
    yield pool
    pool.stop()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest_twisted.ensureDeferred
async def test_thousands_of_parts_complete(
    tmp_path: Path, reactor: Any, io_pool: ThreadPool
) -> None:
    """2,500 parts upload, list in pages, complete with AWS's ETag, and read back in order."""
    db = Database.sqlite(str(tmp_path / "meta.db"))
    try:
        await db.migrate()
        store = MetadataStore(db)
        await store.sync_backends({"local": 0})
        backend = LocalBackend("local", tmp_path / "b", reactor, io_pool)
        objects = Orchestrator(store, {"local": backend}, "pack", reactor)
        uploads = MultipartUploads(objects, MultipartStore(db), lambda bucket: 0, min_part_size=1)
        upload = await uploads.create("b", "huge", "application/octet-stream", {}, {})
        bodies = [number.to_bytes(4, "big") * 8 for number in range(1, PARTS + 1)]
        etags = []
        for number, body in enumerate(bodies, start=1):
            part = await uploads.upload_part(
                "b", "huge", upload.upload_id, number, _one(body), len(body)
            )
            etags.append((number, part.etag))
        page = await uploads.store.list_parts(upload.upload_id, 1000, 1000)
        assert [p.part_number for p in page] == list(range(1001, 2001))
        version = await uploads.complete("b", "huge", upload.upload_id, etags)
        combined = hashlib.md5(b"".join(hashlib.md5(b).digest() for b in bodies)).hexdigest()
        assert version.etag == f"{combined}-{PARTS}"
        assert version.size == sum(map(len, bodies))
        read = await objects.open(version)
        got = b"".join([chunk async for chunk in read.body])
        assert got == b"".join(bodies)
        assert await store.check_counters() == []
    finally:
        db.close()
