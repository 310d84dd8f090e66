"""Byte sources for tests: a body whose every chunk the test hands over explicitly."""

from __future__ import annotations

from twisted.internet.defer import Deferred


class ScriptedSource:
    """A source whose every chunk the test hands over explicitly."""

    def __init__(self) -> None:
        self.pulls = 0
        self.pending: Deferred[bytes] | None = None
        self.closed = False

    def __aiter__(self) -> ScriptedSource:
        return self

    async def __anext__(self) -> bytes:
        self.pulls += 1
        self.pending = Deferred()
        return await self.pending

    async def aclose(self) -> None:
        self.closed = True

    def give(self, data: bytes) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None, "nobody is pulling"
        pending.callback(data)

    def end(self) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None, "nobody is pulling"
        pending.errback(StopAsyncIteration())
