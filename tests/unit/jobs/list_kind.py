"""A job kind over the integers 0..size-1, for tests: the cursor is the next index."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from s3orch.jobs.records import BatchResult
from s3orch.jobs.runner import IJobKind


@implementer(IJobKind)
class ListKind:
    """Records what it did; batches can be held at a start index, or made to raise."""

    def __init__(self, size: int, fail_items: frozenset[int] = frozenset()) -> None:
        self.size = size
        self.fail_items = fail_items
        self.done: list[int] = []
        self.starts: list[str | None] = []
        self.counts = 0
        self.raise_next = 0
        self.count_raises = False
        self._held: dict[int, tuple[Deferred[None], Deferred[None]]] = {}

    def hold(self, start: int) -> tuple[Deferred[None], Deferred[None]]:
        """Hold the batch starting at ``start``: (entered, gate). The batch fires
        ``entered`` when it begins and goes on once ``gate`` fires."""
        held: tuple[Deferred[None], Deferred[None]] = (Deferred(), Deferred())
        self._held[start] = held
        return held

    async def count(self, params: Mapping[str, Any]) -> int:
        self.counts += 1
        if self.count_raises:
            raise RuntimeError("cannot count")
        return self.size

    async def batch(self, params: Mapping[str, Any], cursor: str | None, limit: int) -> BatchResult:
        start = int(cursor) if cursor else 0
        self.starts.append(cursor)
        held = self._held.pop(start, None)
        if held is not None:
            entered, gate = held
            entered.callback(None)
            await gate
        if self.raise_next:
            self.raise_next -= 1
            raise RuntimeError(f"flaky at {start}")
        end = min(start + limit, self.size)
        processed = failed = 0
        errors = []
        for item in range(start, end):
            if item in self.fail_items:
                failed += 1
                errors.append(f"item {item} failed")
            else:
                self.done.append(item)
                processed += 1
        return BatchResult(str(end), processed, failed, tuple(errors), done=end >= self.size)


@implementer(IReactorTime)
class ShiftedClock:
    """The reactor's timers, with ``seconds()`` ``offset`` seconds ahead: another
    process's view of time, far enough on that earlier leases have lapsed."""

    def __init__(self, reactor: IReactorTime, offset: float) -> None:
        self.reactor = reactor
        self.offset = offset

    def seconds(self) -> float:
        return self.reactor.seconds() + self.offset

    def callLater(self, delay: float, callable: Any, *args: object, **kwargs: object) -> Any:
        return self.reactor.callLater(delay, callable, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return self.reactor.getDelayedCalls()
