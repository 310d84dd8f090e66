"""JobRunner over a job kind on an in-memory list, against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import deferLater

from s3orch.jobs.runner import IJobKind, JobRunner, RunnerNotRunning, UnknownJobKind
from s3orch.metrics import REGISTRY
from s3orch.store.db import Database
from s3orch.store.jobs import CANCELLED, COMPLETE, FAILED, RUNNING, JobFinished, JobStore
from tests.unit.jobs.list_kind import ListKind, ShiftedClock
from tests.unit.store.conftest import DatabaseSpec

LEASE = 60.0
MakeRunner = Callable[..., JobRunner]


@pytest_twisted.async_yield_fixture
async def make_runner(
    db: Database, database_spec: DatabaseSpec, reactor: IReactorCore
) -> AsyncIterator[MakeRunner]:
    """Starts runners: the first on the migrated pool, later ones on pools of their own
    (as other processes would); every runner still running is stopped at teardown."""
    made: list[JobRunner] = []

    def make(
        kinds: Mapping[str, IJobKind],
        *,
        clock: IReactorTime | None = None,
        start: bool = True,
        **options: Any,
    ) -> JobRunner:
        options.setdefault("batch_size", 100)
        options.setdefault("lease", LEASE)
        options.setdefault("retry_delays", (0.0, 0.0))
        options.setdefault("poll_interval", 0.01)
        pool = db if not made else database_spec.open()
        runner = JobRunner(
            JobStore(pool), kinds, clock or reactor, owner=f"runner-{len(made)}", **options
        )
        made.append(runner)
        if start:
            runner.startService()
        return runner

    yield make
    for runner in made:
        if runner.running:
            await runner.stopService()


def items(kind: str, status: str) -> float:
    """The current value of s3o_job_items_total for one kind and status."""
    return REGISTRY.get_sample_value("s3o_job_items_total", {"kind": kind, "status": status}) or 0.0


def start(coroutine: Any) -> Deferred[Any]:
    """Run a coroutine in the background and return its Deferred."""
    return Deferred.fromCoroutine(coroutine)


@pytest_twisted.ensureDeferred
async def test_job_runs_to_completion_with_counts(make_runner: MakeRunner) -> None:
    """A job goes through every item once, in batches, with counts, errors and metrics."""
    kind = ListKind(1234, frozenset({5, 500}))
    runner = make_runner({"progress": kind})
    success, error = items("progress", "success"), items("progress", "error")
    job = await runner.start("progress", {"p": 1})
    assert job.status == RUNNING
    ended = await runner.wait(job.id)
    assert ended.status == COMPLETE
    assert (ended.processed, ended.failed, ended.total) == (1232, 2, 1234)
    assert ended.last_errors == ("item 5 failed", "item 500 failed")
    assert ended.cursor == "1234" and ended.finished is not None and ended.owner is None
    assert kind.done == [i for i in range(1234) if i not in (5, 500)]
    assert len(kind.starts) == 13 and kind.counts == 1
    assert items("progress", "success") - success == 1232
    assert items("progress", "error") - error == 2
    assert await runner.wait(job.id) == ended


@pytest_twisted.ensureDeferred
async def test_lock_key_joins_the_running_job(make_runner: MakeRunner) -> None:
    """Starting a job whose lock_key a running job holds returns that job; afterwards a new
    one starts."""
    kind = ListKind(300)
    entered, gate = kind.hold(100)
    runner = make_runner({"list": kind})
    first = await runner.start("list", {}, "key-1")
    await entered
    again = await runner.start("list", {"other": True}, "key-1")
    assert again.id == first.id and again.params == {}
    gate.callback(None)
    assert (await runner.wait(first.id)).status == COMPLETE
    second = await runner.start("list", {}, "key-1")
    assert second.id != first.id
    assert (await runner.wait(second.id)).processed == 300


@pytest_twisted.ensureDeferred
async def test_resume_after_crash(make_runner: MakeRunner, reactor: IReactorCore) -> None:
    """After a process dies mid-job, another resumes from the persisted cursor; the dead
    process's late batch is not counted."""
    first_kind, second_kind = ListKind(500), ListKind(500)
    entered, gate = first_kind.hold(200)
    crashed = make_runner({"list": first_kind})
    job = await crashed.start("list", {})
    await entered  # batches 0-99 and 100-199 are persisted; 200-299 hangs: the "crash"
    later = make_runner({"list": second_kind}, clock=ShiftedClock(reactor, 2 * LEASE))
    await later.started()
    ended = await later.wait(job.id)
    assert (ended.status, ended.processed, ended.total) == (COMPLETE, 500, 500)
    assert first_kind.done == list(range(200))
    assert second_kind.done == list(range(200, 500))
    assert second_kind.starts[0] == "200" and second_kind.counts == 0
    gate.callback(None)  # the stalled process wakes up and finds its lease gone
    await crashed.stopService()
    stored = await later.get(job.id)
    assert (stored.status, stored.processed, stored.owner) == (COMPLETE, 500, None)


@pytest_twisted.ensureDeferred
async def test_graceful_stop_hands_the_job_over(make_runner: MakeRunner) -> None:
    """Stopping a runner ends its batch, persists it and releases the job, which the next
    runner takes up at once."""
    first_kind, second_kind = ListKind(500), ListKind(500)
    entered, gate = first_kind.hold(200)
    stopping = make_runner({"list": first_kind})
    job = await stopping.start("list", {})
    await entered
    stopped = stopping.stopService()
    gate.callback(None)
    await stopped
    left = await stopping.get(job.id)
    assert (left.status, left.cursor, left.processed, left.owner) == (RUNNING, "300", 300, None)
    with pytest.raises(RunnerNotRunning):
        await stopping.start("list", {})
    successor = make_runner({"list": second_kind})
    await successor.started()
    ended = await successor.wait(job.id)
    assert (ended.status, ended.processed) == (COMPLETE, 500)
    assert first_kind.done == list(range(300))
    assert second_kind.done == list(range(300, 500))


@pytest_twisted.ensureDeferred
async def test_stop_interrupts_a_stuck_batch(make_runner: MakeRunner) -> None:
    """A batch that does not finish within stop_timeout is cut off; the job is released at
    its last persisted cursor."""
    kind = ListKind(500)
    entered, _never = kind.hold(200)
    runner = make_runner({"list": kind}, stop_timeout=0.01)
    job = await runner.start("list", {})
    await entered
    await runner.stopService()
    left = await runner.get(job.id)
    assert (left.status, left.cursor, left.processed, left.owner) == (RUNNING, "200", 200, None)


@pytest_twisted.ensureDeferred
async def test_cancel_stops_at_the_batch_boundary(make_runner: MakeRunner) -> None:
    """Cancel lets the current batch finish, then ends the job cancelled and frees its lock."""
    kind = ListKind(1000)
    entered, gate = kind.hold(200)
    runner = make_runner({"list": kind})
    job = await runner.start("list", {}, "lock")
    await entered
    cancelling = start(runner.cancel(job.id))
    gate.callback(None)
    ended = await cancelling
    assert (ended.status, ended.processed, ended.cursor) == (CANCELLED, 300, "300")
    assert ended.cancel_requested and ended.finished is not None
    assert kind.done == list(range(300))
    with pytest.raises(JobFinished):
        await runner.cancel(job.id)
    assert (await runner.start("list", {}, "lock")).id != job.id


@pytest_twisted.ensureDeferred
async def test_cancel_from_another_process(make_runner: MakeRunner) -> None:
    """A cancel requested through another process stops the job after its current batch."""
    kind = ListKind(1000)
    entered, gate = kind.hold(200)
    runner = make_runner({"list": kind})
    # Not started: a started runner on a SQLite file would take every job over.
    other = make_runner({"list": ListKind(1000)}, start=False)
    job = await runner.start("list", {})
    await entered
    requested = await other.cancel(job.id)
    assert (requested.status, requested.cancel_requested) == (RUNNING, True)
    waiting = start(other.wait(job.id))
    gate.callback(None)
    ended = await waiting
    assert (ended.status, ended.processed) == (CANCELLED, 300)


@pytest_twisted.ensureDeferred
async def test_failing_batch_is_retried_then_fails_the_job(make_runner: MakeRunner) -> None:
    """A batch that keeps raising is tried 1 + len(retry_delays) times; the job ends failed
    with every attempt's error kept."""
    kind = ListKind(500)
    kind.raise_next = 1_000_000
    runner = make_runner({"broken": kind})
    ended = await runner.wait((await runner.start("broken", {})).id)
    assert ended.status == FAILED
    assert len(kind.starts) == 3 and ended.processed == 0
    assert len(ended.last_errors) == 3
    assert "RuntimeError: flaky at 0" in ended.last_errors[0] and "retrying" in ended.last_errors[0]
    assert ended.last_errors[-1] == "batch failed: RuntimeError: flaky at 0 (attempt 3 of 3)"


@pytest_twisted.ensureDeferred
async def test_flaky_batch_recovers(make_runner: MakeRunner) -> None:
    """A batch that raises fewer times than the retries allow does not stop the job."""
    kind = ListKind(250)
    kind.raise_next = 2
    runner = make_runner({"flaky": kind})
    ended = await runner.wait((await runner.start("flaky", {})).id)
    assert (ended.status, ended.processed) == (COMPLETE, 250)
    assert kind.done == list(range(250))
    assert len(ended.last_errors) == 2


@pytest_twisted.ensureDeferred
async def test_failing_count_fails_the_job(make_runner: MakeRunner) -> None:
    """A kind that cannot count fails the job after the retries, with the error kept."""
    kind = ListKind(10)
    kind.count_raises = True
    runner = make_runner({"uncountable": kind})
    ended = await runner.wait((await runner.start("uncountable", {})).id)
    assert ended.status == FAILED and kind.counts == 3 and kind.starts == []
    assert ended.last_errors[-1].startswith("count failed: RuntimeError: cannot count")


@pytest_twisted.ensureDeferred
async def test_start_refusals(make_runner: MakeRunner) -> None:
    """start refuses an unknown kind, and any job before the runner has started."""
    runner = make_runner({"list": ListKind(1)}, start=False)
    with pytest.raises(RunnerNotRunning):
        await runner.start("list", {})
    runner.startService()
    with pytest.raises(UnknownJobKind):
        await runner.start("nope", {})


@pytest_twisted.ensureDeferred
async def test_leases_are_renewed_and_a_lost_job_is_not_written(
    make_runner: MakeRunner, reactor: IReactorCore
) -> None:
    """The runner renews its leases while a batch runs; a job taken over meanwhile gets no
    more writes from it."""
    kind = ListKind(500)
    entered, gate = kind.hold(100)
    runner = make_runner({"list": kind}, lease=0.3)
    job = await runner.start("list", {})
    await entered
    before = (await runner.get(job.id)).lease_until
    await deferLater(reactor, 0.25)
    renewed = await runner.get(job.id)
    assert renewed.lease_until > before and renewed.owner == runner.owner
    (taken,) = await runner.store.claim("thief", ["list"], reactor.seconds(), 1e12, any_owner=True)
    assert taken.id == job.id
    await deferLater(reactor, 0.25)  # the runner's next renewal fails
    gate.callback(None)
    await runner.stopService()
    stored = await runner.get(job.id)
    assert (stored.owner, stored.processed, stored.cursor) == ("thief", 100, "100")
    assert kind.done == list(range(200))
