"""MeteredBackend: every call, multipart ones included, is passed on and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from s3orch import metrics
from s3orch.backends.interface import BackendError, BackendObject, BackendRead, IBackend
from s3orch.backends.metered import MeteredBackend
from tests.backends.sources import chunks_of


@implementer(IBackend)
class RecordingBackend:
    """Answers multipart calls from memory; fails Complete when told to."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.fail_complete = False

    async def put(self, key: str, body: AsyncIterator[bytes], length: int) -> None:
        raise NotImplementedError

    async def get(self, key: str, start: int = 0, end: int | None = None) -> BackendRead:
        raise NotImplementedError

    async def head(self, key: str) -> BackendObject | None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> AsyncIterator[BackendObject]:
        raise NotImplementedError

    async def create_multipart(self, key: str) -> str:
        self.calls.append(("create", key))
        return "handle"

    async def upload_part(
        self, key: str, handle: str, part_number: int, body: AsyncIterator[bytes], length: int
    ) -> str:
        data = b"".join([chunk async for chunk in body])
        self.calls.append(("part", key, handle, part_number, data, length))
        return "etag"

    async def complete_multipart(
        self, key: str, handle: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        self.calls.append(("complete", key, handle, list(parts)))
        if self.fail_complete:
            raise BackendError("no")

    async def abort_multipart(self, key: str, handle: str) -> None:
        self.calls.append(("abort", key, handle))


def count(operation: str, status: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "s3o_backend_requests_total",
        {"operation": operation, "backend": "recording", "status": status},
    )
    return value or 0.0


def run(coroutine: object) -> object:
    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)  # type: ignore[arg-type]
    assert results, "did not finish synchronously"
    return results[0]


def test_multipart_calls_are_passed_on_and_counted() -> None:
    """create/upload_part/complete/abort reach the backend and count under their own names."""
    inner = RecordingBackend()
    metered = MeteredBackend(inner, Clock())
    verifyObject(IBackend, metered)
    operations = ["create_multipart", "upload_part", "complete_multipart", "abort_multipart"]
    before = {op: count(op, "success") for op in operations}
    failed_before = count("complete_multipart", "error")
    assert run(metered.create_multipart("k")) == "handle"
    assert run(metered.upload_part("k", "handle", 3, chunks_of(b"abc"), 3)) == "etag"
    assert run(metered.complete_multipart("k", "handle", [(3, "etag")])) is None
    assert run(metered.abort_multipart("k", "handle")) is None
    inner.fail_complete = True
    failure = run(metered.complete_multipart("k", "handle", [(3, "etag")]))
    with pytest.raises(BackendError):
        failure.raiseException()  # type: ignore[attr-defined]
    assert inner.calls[:4] == [
        ("create", "k"),
        ("part", "k", "handle", 3, b"abc", 3),
        ("complete", "k", "handle", [(3, "etag")]),
        ("abort", "k", "handle"),
    ]
    assert {op: count(op, "success") - before[op] for op in operations} == dict.fromkeys(
        operations, 1.0
    )
    assert count("complete_multipart", "error") == failed_before + 1
