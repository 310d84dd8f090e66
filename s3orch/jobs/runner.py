"""Runs background jobs one batch at a time, with their state in the database.

A job is a kind (what to do: rotate DEKs, encrypt existing objects...) and its
params. The runner asks the kind for one batch at a time, persists the cursor
and counts after each batch, and gives the reactor back before the next one,
so requests keep being served while a job goes through millions of rows
(Synapse ``background_updates.py``). A process that stops or dies leaves the
job ``running`` in the database; the next runner to start (or, on a shared
PostgreSQL, any runner once the lease has lapsed) resumes it from its cursor.

A batch that raises is retried after a pause, a few times; then the job ends
``failed`` with the error kept in ``last_errors``. Nothing a kind does can end
a job without a status and a log line.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface

from s3orch import metrics
from s3orch.jobs.records import BatchResult
from s3orch.store.jobs import CANCELLED, COMPLETE, FAILED, Job, JobStore, LeaseLost, UnknownJob

log = Logger()

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 500
DEFAULT_LEASE = 60.0
DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0)
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_STOP_TIMEOUT = 30.0
PROGRESS_LOG_INTERVAL = 10.0


class IJobKind(Interface):
    """One kind of background job. Both methods run on the reactor: do DB work
    through the Database and long computations in bounded pieces."""

    async def count(params: Mapping[str, Any]) -> int:
        """How many items the job has to go through, for progress reports.

        Called once when the job starts (again if a job is resumed that was
        never counted). An estimate is fine: a complete job's total is raised
        to what it went through.
        """

    async def batch(params: Mapping[str, Any], cursor: str | None, limit: int) -> BatchResult:
        """Go through up to ``limit`` items after ``cursor`` (None: from the start).

        Must be safe to run again from the same cursor: a process that dies
        after a batch and before its progress is persisted leaves it to be
        run again. Per-item failures are counted in the result; raising means
        the batch as a whole failed and is retried.
        """


class UnknownJobKind(ValueError):
    """No job kind is registered under that name."""


class RunnerNotRunning(RuntimeError):
    """The runner has not started yet (database not migrated) or is stopping."""


class _Interrupted(Exception):
    """The runner is stopping: leave the job for whoever runs next."""


class _Cancelled(Exception):
    """A cancellation was requested: end the job as cancelled."""


class _Failed(Exception):
    """The job cannot go on: end it as failed with this message."""


@define
class _Local:
    """A job this process is running now."""

    job: Job
    cancel: bool = False
    lost: bool = False
    drive: Deferred[None] | None = None
    pause: Deferred[None] | None = None
    watchers: list[Deferred[Job | None]] = field(factory=list)

    def wake(self) -> None:
        """Cut a pause between retries short, to act on a cancel or stop at once."""
        if self.pause is not None and not self.pause.called:
            self.pause.cancel()


def default_owner() -> str:
    """A name for this process, unique across restarts: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class JobRunner(Service):
    """Starts, resumes, cancels and waits for jobs; one per process.

    Jobs left running by a previous process are resumed when the service
    starts, so add it to the service tree once the database is migrated.
    ``start`` refuses (RunnerNotRunning) until then.
    """

    name = "jobs"

    def __init__(
        self,
        store: JobStore,
        kinds: Mapping[str, IJobKind],
        clock: IReactorTime,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lease: float = DEFAULT_LEASE,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        owner: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.clock = clock
        self.batch_size = batch_size
        self.lease = lease
        self.retry_delays = tuple(retry_delays)
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.owner = owner or default_owner()
        self._kinds: dict[str, IJobKind] = dict(kinds)
        self._local: dict[str, _Local] = {}
        self._loop: LoopingCall | None = None
        self._tending: Deferred[None] | None = None
        self._startup: Deferred[None] | None = None
        self._startup_waiters: list[Deferred[None]] = []
        self._stopping = True

    def register(self, name: str, kind: IJobKind) -> None:
        """Add a job kind; jobs of kinds not registered are left to other processes."""
        self._kinds[name] = kind

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._kinds)

    # -- service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        self._startup = Deferred.fromCoroutine(self._run_startup())
        self._loop = LoopingCall(self._tend_once)
        self._loop.clock = self.clock
        self._loop.start(self.lease / 3, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def started(self) -> None:
        """Return once the jobs left running at startup have been taken up."""
        if self._startup is not None and not self._startup.called:
            done: Deferred[None] = Deferred()
            self._startup_waiters.append(done)
            await done

    async def _stop(self) -> None:
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for pending in (self._startup, self._tending):
            if pending is not None and not pending.called:
                await pending
        locals_ = list(self._local.values())
        for local in locals_:
            local.wake()
        # Each job stops at its next batch boundary; one stuck in a batch is cut off.
        timer = self.clock.callLater(self.stop_timeout, self._interrupt, locals_)
        try:
            for local in locals_:
                if local.drive is not None:
                    await local.drive
        finally:
            if timer.active():
                timer.cancel()

    def _interrupt(self, locals_: list[_Local]) -> None:
        for local in locals_:
            if local.drive is not None and not local.drive.called:
                log.warn(
                    "job {job_id} ({kind}) did not reach a batch boundary in {timeout} s;"
                    " interrupting it",
                    job_id=local.job.id,
                    kind=local.job.kind,
                    timeout=self.stop_timeout,
                )
                local.drive.cancel()

    async def _guarded(self, work: Callable[[], Awaitable[object]]) -> None:
        try:
            await work()
        except Exception:
            log.failure("job runner housekeeping failed; it will run again")

    def _tend_once(self) -> Deferred[None]:
        self._tending = Deferred.fromCoroutine(self._guarded(self._tend))
        return self._tending

    async def _run_startup(self) -> None:
        await self._guarded(self._resume_left_over)
        waiters, self._startup_waiters = self._startup_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _resume_left_over(self) -> None:
        # A SQLite file has one process: every running job is a previous run's.
        resumed = await self._claim(any_owner=not self.store.shared)
        if resumed:
            log.info("resuming {count} job(s) left running", count=len(resumed))

    async def _tend(self) -> None:
        """Renew the leases of our jobs; take up jobs whose process went away."""
        now = self.clock.seconds()
        mine = [job_id for job_id, local in self._local.items() if not local.lost]
        held = await self.store.renew(self.owner, mine, now + self.lease)
        for job_id in mine:
            local = self._local.get(job_id)
            if job_id not in held and local is not None:
                log.warn(
                    "job {job_id} ({kind}) is no longer ours to run; stopping it here",
                    job_id=job_id,
                    kind=local.job.kind,
                )
                local.lost = True
                local.wake()
        if not self._stopping:
            await self._claim(any_owner=False)

    async def _claim(self, *, any_owner: bool) -> list[Job]:
        now = self.clock.seconds()
        claimed = await self.store.claim(
            self.owner, self.kinds, now, now + self.lease, any_owner=any_owner
        )
        taken = []
        for job in claimed:
            if job.id in self._local:
                continue
            if self._stopping:
                await self.store.release(job.id, self.owner)
                continue
            log.info(
                "resuming job {job_id} ({kind}) at {processed} processed, cursor {cursor}",
                job_id=job.id,
                kind=job.kind,
                processed=job.processed,
                cursor=job.cursor,
            )
            self._launch(job)
            taken.append(job)
        return taken

    # -- public operations ---------------------------------------------------

    async def start(self, kind: str, params: Mapping[str, Any], lock_key: str | None = None) -> Job:
        """Start a job and return it as started; it runs in the background.

        If a running job already holds ``lock_key`` (here or in another
        process), no job is started and that job is returned: its ``kind`` and
        ``params`` are what it was started with. Wait on it with ``wait``.
        """
        if kind not in self._kinds:
            raise UnknownJobKind(kind)
        if self._stopping:
            raise RunnerNotRunning("the job runner is not running")
        now = self.clock.seconds()
        job, created = await self.store.create(
            kind, params, lock_key, self.owner, now, now + self.lease
        )
        if created:
            log.info(
                "started job {job_id} ({kind}), lock {lock_key}",
                job_id=job.id,
                kind=kind,
                lock_key=lock_key,
            )
            if self._stopping:
                await self.store.release(job.id, self.owner)  # the next process runs it
            else:
                self._launch(job)
        else:
            log.info(
                "job {job_id} ({kind}) already holds lock {lock_key}; not starting another",
                job_id=job.id,
                kind=job.kind,
                lock_key=lock_key,
            )
            if job.id not in self._local and (job.owner is None or job.lease_until < now):
                await self._claim(any_owner=False)
        return job

    async def get(self, job_id: str) -> Job:
        """The job as stored now; raises UnknownJob."""
        job = await self.store.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    async def recent(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, optionally only those with ``status``."""
        return await self.store.recent(status, limit)

    async def wait(self, job_id: str) -> Job:
        """Return the job once it has ended, wherever it runs.

        Cancelling the wait leaves the job running.
        """
        while True:
            local = self._local.get(job_id)
            if local is not None:
                ended = await self._watch(local)
                if ended is not None:
                    return ended
                continue
            job = await self.get(job_id)
            if not job.running:
                return job
            if job_id not in self._local:
                # Another process runs it (or it waits to be resumed).
                await deferLater(self.clock, self.poll_interval)

    async def cancel(self, job_id: str) -> Job:
        """Stop the job at its next batch boundary; it ends ``cancelled``.

        Returns the job as it ended if this process runs it, or if nobody
        held it. If another process runs it, returns it still running with
        ``cancel_requested``: that process stops it after its current batch.
        Raises UnknownJob, or JobFinished if it had already ended.
        """
        local = self._local.get(job_id)
        if local is not None:
            # Stop at the very next boundary, even one reached while the request is written.
            local.cancel = True
        job = await self.store.request_cancel(job_id, self.clock.seconds())
        if local is not None:
            log.info("cancelling job {job_id} ({kind})", job_id=job_id, kind=job.kind)
            local.wake()
            return await self.wait(job_id)
        if job.running:
            log.info(
                "cancel of job {job_id} ({kind}) requested; {owner} will stop it",
                job_id=job_id,
                kind=job.kind,
                owner=job.owner,
            )
        else:
            log.info(
                "cancelled job {job_id} ({kind}), which nobody was running",
                job_id=job_id,
                kind=job.kind,
            )
        return job

    # -- running one job -----------------------------------------------------

    def _launch(self, job: Job) -> None:
        local = _Local(job)
        self._local[job.id] = local
        metrics.jobs_running.labels(job.kind).inc()
        local.drive = Deferred.fromCoroutine(self._drive(local))

    def _watch(self, local: _Local) -> Deferred[Job | None]:
        def forget(d: Deferred[Job | None]) -> None:
            if d in local.watchers:
                local.watchers.remove(d)

        watcher: Deferred[Job | None] = Deferred(forget)
        local.watchers.append(watcher)
        return watcher

    async def _drive(self, local: _Local) -> None:
        job = local.job
        ended: Job | None = None
        try:
            ended = await self._work(local)
        except LeaseLost:
            log.warn(
                "job {job_id} ({kind}) was taken over or ended elsewhere; stopped running it here",
                job_id=job.id,
                kind=job.kind,
            )
        except (_Interrupted, CancelledError):
            log.info("job {job_id} ({kind}) paused; it will resume", job_id=job.id, kind=job.kind)
            try:
                await self.store.release(job.id, self.owner)
            except Exception:
                log.failure("could not release job {job_id}; its lease will lapse", job_id=job.id)
        except Exception:
            # The database failed us while recording; the lease lapses and the job resumes.
            log.failure(
                "job {job_id} ({kind}) stopped on an error; it resumes once its lease lapses",
                job_id=job.id,
                kind=job.kind,
            )
        finally:
            del self._local[job.id]
            metrics.jobs_running.labels(job.kind).dec()
            watchers, local.watchers = local.watchers, []
            for watcher in watchers:
                watcher.callback(ended)

    async def _work(self, local: _Local) -> Job:
        try:
            return await self._batches(local)
        except _Cancelled:
            return await self._end(local, CANCELLED)
        except _Failed as e:
            return await self._end(local, FAILED, [str(e)])

    async def _batches(self, local: _Local) -> Job:
        job = local.job
        kind = self._kinds[job.kind]
        total = job.total
        if total is None:
            total = await self._attempt(local, "count", partial(kind.count, job.params))
            await self.store.set_total(job.id, self.owner, total, self.clock.seconds())
        cursor = job.cursor
        processed, failed = job.processed, job.failed
        logged = self.clock.seconds()
        while True:
            self._check(local)
            at = cursor
            result = await self._attempt(
                local, "batch", partial(kind.batch, job.params, at, self.batch_size)
            )
            if (
                not result.done
                and result.next_cursor == at
                and not result.processed + result.failed
            ):
                raise _Failed(f"a batch at cursor {at!r} made no progress")
            now = self.clock.seconds()
            cancel_requested = await self.store.record_batch(
                job.id,
                self.owner,
                cursor=result.next_cursor,
                processed=result.processed,
                failed=result.failed,
                errors=result.errors,
                now=now,
                lease_until=now + self.lease,
            )
            metrics.job_items_total.labels(job.kind, "success").inc(result.processed)
            metrics.job_items_total.labels(job.kind, "error").inc(result.failed)
            processed += result.processed
            failed += result.failed
            cursor = result.next_cursor
            if now - logged >= PROGRESS_LOG_INTERVAL:
                logged = now
                log.info(
                    "job {job_id} ({kind}): {processed} processed, {failed} failed of {total}",
                    job_id=job.id,
                    kind=job.kind,
                    processed=processed,
                    failed=failed,
                    total=total,
                )
            if result.done:
                return await self._end(local, COMPLETE)
            if cancel_requested:
                local.cancel = True
            # Give the reactor a turn before the next batch.
            await deferLater(self.clock, 0)

    def _check(self, local: _Local) -> None:
        if local.lost:
            raise LeaseLost(local.job.id)
        if local.cancel:
            raise _Cancelled()
        if self._stopping:
            raise _Interrupted()

    async def _attempt(self, local: _Local, what: str, call: Callable[[], Awaitable[T]]) -> T:
        job = local.job
        attempts = len(self.retry_delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except CancelledError:
                raise
            except Exception as e:
                metrics.job_batch_errors_total.labels(job.kind).inc()
                message = f"{what} failed: {_describe(e)}"
                if attempt == attempts:
                    log.failure(
                        "job {job_id} ({kind}): {what} failed {attempts} times; the job fails",
                        Failure(),
                        job_id=job.id,
                        kind=job.kind,
                        what=what,
                        attempts=attempts,
                    )
                    raise _Failed(f"{message} (attempt {attempt} of {attempts})") from e
                delay = self.retry_delays[attempt - 1]
                log.failure(
                    "job {job_id} ({kind}): {what} failed; retrying in {delay} s",
                    Failure(),
                    LogLevel.warn,
                    job_id=job.id,
                    kind=job.kind,
                    what=what,
                    delay=delay,
                )
                now = self.clock.seconds()
                if await self.store.note_errors(
                    job.id,
                    self.owner,
                    [f"{message} (attempt {attempt} of {attempts}; retrying)"],
                    now,
                    now + self.lease,
                ):
                    local.cancel = True
                self._check(local)
                await self._pause(local, delay)
                self._check(local)
        raise AssertionError("unreachable")

    async def _pause(self, local: _Local, delay: float) -> None:
        pause: Deferred[None] = deferLater(self.clock, delay)
        local.pause = pause
        try:
            await pause
        except CancelledError:
            pass  # woken early by a cancel, a stop or a lost lease
        finally:
            local.pause = None

    async def _end(self, local: _Local, status: str, errors: Sequence[str] = ()) -> Job:
        job = local.job
        ended = await self.store.finish(job.id, self.owner, status, self.clock.seconds(), errors)
        metrics.jobs_finished_total.labels(job.kind, status).inc()
        log.info(
            "job {job_id} ({kind}) {status}: {processed} processed, {failed} failed of {total}",
            job_id=ended.id,
            kind=ended.kind,
            status=status,
            processed=ended.processed,
            failed=ended.failed,
            total=ended.total,
        )
        return ended
