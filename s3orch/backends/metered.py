"""An IBackend that counts and times every call it passes on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from s3orch import metrics
from s3orch.backends.interface import BackendNotFound, BackendObject, BackendRead, IBackend

T = TypeVar("T")


@implementer(IBackend)
class MeteredBackend:
    def __init__(self, backend: IBackend, clock: IReactorTime) -> None:
        self.backend = backend
        self.name: str = backend.name
        self.clock = clock

    async def _measure(self, operation: str, call: Awaitable[T]) -> T:
        started = self.clock.seconds()
        status = "error"
        try:
            result = await call
            status = "success"
            return result
        except BackendNotFound:
            status = "not_found"
            raise
        finally:
            metrics.backend_requests_total.labels(operation, self.name, status).inc()
            metrics.backend_duration_seconds.labels(operation, self.name).observe(
                self.clock.seconds() - started
            )

    async def put(self, key: str, body: AsyncIterator[bytes], length: int) -> None:
        await self._measure("put", self.backend.put(key, body, length))
        metrics.backend_bytes_total.labels("put", self.name).inc(length)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> BackendRead:
        read = await self._measure("get", self.backend.get(key, start, end))
        metrics.backend_bytes_total.labels("get", self.name).inc(read.length)
        return read

    async def head(self, key: str) -> BackendObject | None:
        return await self._measure("head", self.backend.head(key))

    async def delete(self, key: str) -> None:
        await self._measure("delete", self.backend.delete(key))

    def list(self, prefix: str = "") -> AsyncIterator[BackendObject]:
        metrics.backend_requests_total.labels("list", self.name, "started").inc()
        return self.backend.list(prefix)

    async def create_multipart(self, key: str) -> str:
        return await self._measure("create_multipart", self.backend.create_multipart(key))

    async def upload_part(
        self, key: str, handle: str, part_number: int, body: AsyncIterator[bytes], length: int
    ) -> str:
        etag = await self._measure(
            "upload_part", self.backend.upload_part(key, handle, part_number, body, length)
        )
        metrics.backend_bytes_total.labels("upload_part", self.name).inc(length)
        return etag

    async def complete_multipart(
        self, key: str, handle: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        await self._measure(
            "complete_multipart", self.backend.complete_multipart(key, handle, parts)
        )

    async def abort_multipart(self, key: str, handle: str) -> None:
        await self._measure("abort_multipart", self.backend.abort_multipart(key, handle))
