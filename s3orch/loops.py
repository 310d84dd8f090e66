"""Background loops that never die from an exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class PeriodicService(Service):
    """Runs ``work`` every ``interval`` seconds; a failing run is logged and the loop goes on."""

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[object]],
        clock: IReactorTime,
        now: bool = True,
    ) -> None:
        self.setName(name)
        self.interval = interval
        self.work = work
        self.clock = clock
        self.now = now
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._run_once)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=self.now)

    async def _guarded(self) -> None:
        try:
            await self.work()
        except Exception:
            log.failure("background loop {name} failed; it will run again", name=self.name)

    def _run_once(self) -> Deferred[None]:
        self._running = Deferred.fromCoroutine(self._guarded())
        return self._running

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running, self._running = self._running, None
        if running is not None and not running.called:
            return running
        return None
