"""JobStore: job rows, leases and lock keys, against SQLite and PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from s3orch.store.db import Cursor, Database
from s3orch.store.jobs import (
    CANCELLED,
    COMPLETE,
    FAILED,
    KEPT_ERRORS,
    MAX_ERROR_CHARS,
    RUNNING,
    JobFinished,
    JobStore,
    LeaseLost,
    UnknownJob,
)

if TYPE_CHECKING:
    from conftest import DatabaseSpec

NOW = 1_700_000_000.0
LEASE = 60.0


@pytest.fixture
def jobs(db: Database) -> JobStore:
    """A job store on the migrated database."""
    return JobStore(db)


@pytest_twisted.ensureDeferred
async def test_create_and_get(jobs: JobStore) -> None:
    """A created job is running, held by its creator, uncounted, and reads back as created."""
    job, created = await jobs.create("rotate", {"old_key_id": "config-0"}, "k", "a", NOW, NOW + 60)
    assert created
    assert (job.kind, job.status, job.lock_key, job.owner) == ("rotate", RUNNING, "k", "a")
    assert job.params == {"old_key_id": "config-0"}
    assert (job.processed, job.failed, job.total, job.cursor) == (0, 0, None, None)
    assert (job.started, job.finished, job.lease_until) == (NOW, None, NOW + 60)
    assert job.last_errors == ()
    assert await jobs.get(job.id) == job
    assert await jobs.get("nope") is None


@pytest_twisted.ensureDeferred
async def test_lock_key_joins_the_running_job(jobs: JobStore) -> None:
    """A second job with a running job's lock_key is not created; the running one is returned."""
    first, _ = await jobs.create("rotate", {"n": 1}, "key-a", "a", NOW, NOW + LEASE)
    again, created = await jobs.create("rotate", {"n": 2}, "key-a", "b", NOW + 1, NOW + LEASE)
    assert not created
    assert again == first
    other, created_other = await jobs.create("rotate", {}, "key-b", "a", NOW, NOW + LEASE)
    assert created_other and other.id != first.id
    unlocked = [await jobs.create("rotate", {}, None, "a", NOW, NOW + LEASE) for _ in range(2)]
    assert all(created for _, created in unlocked)
    await jobs.finish(first.id, "a", COMPLETE, NOW + 2)
    after, created_after = await jobs.create("rotate", {}, "key-a", "a", NOW + 3, NOW + LEASE)
    assert created_after and after.id != first.id


@pytest_twisted.ensureDeferred
async def test_lock_key_is_unique_in_the_database(jobs: JobStore, db: Database) -> None:
    """The database itself refuses a second running row with one lock_key."""
    await jobs.create("rotate", {}, "key-a", "a", NOW, NOW + LEASE)

    def insert(cur: Cursor) -> None:
        cur.execute(
            "INSERT INTO jobs (id, kind, params, status, lock_key, started, updated)"
            " VALUES ('x', 'rotate', '{}', 'running', 'key-a', 0, 0)"
        )

    with pytest.raises(Exception, match=r"(?i)unique"):
        await db.run("duplicate", insert)


@pytest_twisted.ensureDeferred
async def test_concurrent_creates_make_one_job(database_spec: DatabaseSpec) -> None:
    """Processes that start one lock_key at once all end up with the same single job."""
    stores = [JobStore(database_spec.open()) for _ in range(4)]
    await stores[0].db.migrate()
    results = await gatherResults(
        [
            Deferred.fromCoroutine(s.create("rotate", {}, "k", f"p{i}", NOW, NOW + LEASE))
            for i, s in enumerate(stores)
        ]
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


@pytest_twisted.ensureDeferred
async def test_recent_is_newest_first_and_filters(jobs: JobStore) -> None:
    """recent lists newest first, honours the limit and the status filter."""
    ids = []
    for i in range(5):
        job, _ = await jobs.create("k", {"i": i}, None, "a", NOW + i, NOW + LEASE)
        ids.append(job.id)
    await jobs.finish(ids[1], "a", FAILED, NOW + 10, ["boom"])
    assert [j.id for j in await jobs.recent()] == ids[::-1]
    assert [j.id for j in await jobs.recent(limit=2)] == [ids[4], ids[3]]
    assert [j.id for j in await jobs.recent(RUNNING)] == [ids[4], ids[3], ids[2], ids[0]]
    (failed,) = await jobs.recent(FAILED)
    assert failed.id == ids[1] and failed.last_errors == ("boom",)
    assert await jobs.recent(CANCELLED) == []


@pytest_twisted.ensureDeferred
async def test_progress_survives_reopening(jobs: JobStore, database_spec: DatabaseSpec) -> None:
    """Cursor, counts and the last errors are persisted after each batch, capped and truncated."""
    job, _ = await jobs.create("k", {}, None, "a", NOW, NOW + LEASE)
    await jobs.set_total(job.id, "a", 1000, NOW)
    for i in range(3):
        errors = [f"error {i}-{n}" for n in range(5)]
        assert not await jobs.record_batch(
            job.id,
            "a",
            cursor=f"c{i}",
            processed=100,
            failed=5,
            errors=errors,
            now=NOW + i,
            lease_until=NOW + i + LEASE,
        )
    await jobs.note_errors(job.id, "a", ["x" * (MAX_ERROR_CHARS + 50)], NOW + 5, NOW + 65)
    reopened = await JobStore(database_spec.open()).get(job.id)
    assert reopened is not None
    assert (reopened.cursor, reopened.processed, reopened.failed) == ("c2", 300, 15)
    assert reopened.total == 1000
    assert len(reopened.last_errors) == KEPT_ERRORS
    assert reopened.last_errors[0] == "error 1-1"
    assert reopened.last_errors[-1] == "x" * MAX_ERROR_CHARS
    assert (reopened.lease_until, reopened.updated) == (NOW + 65, NOW + 5)


@pytest_twisted.ensureDeferred
async def test_lease_is_exclusive_between_processes(database_spec: DatabaseSpec) -> None:
    """Another process cannot take a held job; once the lease lapses it can, and the old
    holder's writes are refused."""
    a = JobStore(database_spec.open())
    await a.db.migrate()
    b = JobStore(database_spec.open())
    job, _ = await a.create("k", {}, None, "a", NOW, NOW + LEASE)
    assert await b.claim("b", ["k"], NOW + LEASE - 1, NOW + 2 * LEASE) == []
    assert await a.renew("a", [job.id], NOW + 2 * LEASE) == {job.id}
    assert await b.claim("b", ["k"], NOW + LEASE + 1, NOW + 3 * LEASE) == []
    (taken,) = await b.claim("b", ["k"], NOW + 2 * LEASE + 1, NOW + 3 * LEASE)
    assert (taken.id, taken.owner) == (job.id, "b")
    with pytest.raises(LeaseLost):
        await a.record_batch(
            job.id, "a", cursor="x", processed=1, failed=0, errors=(), now=NOW, lease_until=NOW
        )
    with pytest.raises(LeaseLost):
        await a.finish(job.id, "a", COMPLETE, NOW)
    assert await a.renew("a", [job.id], NOW + 4 * LEASE) == frozenset()
    ended = await b.finish(job.id, "b", COMPLETE, NOW + 3)
    assert (ended.status, ended.owner, ended.cursor) == (COMPLETE, None, None)


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_have_one_winner(database_spec: DatabaseSpec) -> None:
    """Several processes claiming a lapsed job at once: exactly one gets it."""
    stores = [JobStore(database_spec.open()) for _ in range(5)]
    await stores[0].db.migrate()
    job, _ = await stores[0].create("k", {}, None, "dead", NOW, NOW + LEASE)
    results = await gatherResults(
        [
            Deferred.fromCoroutine(s.claim(f"p{i}", ["k"], NOW + 2 * LEASE, NOW + 3 * LEASE))
            for i, s in enumerate(stores)
        ]
    )
    winners = [i for i, claimed in enumerate(results) if claimed]
    assert len(winners) == 1
    stored = await stores[0].get(job.id)
    assert stored is not None and stored.owner == f"p{winners[0]}"


@pytest_twisted.ensureDeferred
async def test_release_and_claim_rules(jobs: JobStore) -> None:
    """A released job is claimable at once; any_owner takes held jobs; other kinds are left."""
    held, _ = await jobs.create("k", {}, None, "a", NOW, NOW + LEASE)
    other_kind, _ = await jobs.create("other", {}, None, "gone", NOW, NOW)
    assert await jobs.claim("b", ["k"], NOW, NOW + LEASE) == []
    await jobs.release(held.id, "a")
    (taken,) = await jobs.claim("b", ["k"], NOW, NOW + LEASE)
    assert taken.id == held.id
    (forced,) = await jobs.claim("c", ["k"], NOW, NOW + LEASE, any_owner=True)
    assert (forced.id, forced.owner) == (held.id, "c")
    assert await jobs.claim("c", ["k"], NOW, NOW + LEASE, any_owner=True) == []
    assert await jobs.claim("c", [], NOW + 10, NOW + LEASE) == []
    stored = await jobs.get(other_kind.id)
    assert stored is not None and stored.owner == "gone"


@pytest_twisted.ensureDeferred
async def test_request_cancel(jobs: JobStore) -> None:
    """Cancel marks a held job, ends an unheld one at once, and refuses ended or unknown jobs."""
    held, _ = await jobs.create("k", {}, "l1", "a", NOW, NOW + LEASE)
    marked = await jobs.request_cancel(held.id, NOW + 1)
    assert (marked.status, marked.cancel_requested) == (RUNNING, True)
    assert await jobs.record_batch(
        held.id, "a", cursor="c", processed=1, failed=0, errors=(), now=NOW, lease_until=NOW + 60
    )
    orphan, _ = await jobs.create("k", {}, "l2", "dead", NOW, NOW + LEASE)
    ended = await jobs.request_cancel(orphan.id, NOW + LEASE + 1)
    assert (ended.status, ended.finished, ended.owner) == (CANCELLED, NOW + LEASE + 1, None)
    with pytest.raises(JobFinished) as info:
        await jobs.request_cancel(orphan.id, NOW + LEASE + 2)
    assert info.value.job.status == CANCELLED
    with pytest.raises(UnknownJob):
        await jobs.request_cancel("nope", NOW)
    _, created = await jobs.create("k", {}, "l2", "a", NOW, NOW + LEASE)
    assert created


@pytest_twisted.ensureDeferred
async def test_finish_sets_total_for_complete_only(jobs: JobStore) -> None:
    """A complete job's total is at least what it went through; a failed job keeps its total."""
    done, _ = await jobs.create("k", {}, None, "a", NOW, NOW + LEASE)
    await jobs.set_total(done.id, "a", 5, NOW)
    await jobs.record_batch(
        done.id, "a", cursor="c", processed=6, failed=1, errors=(), now=NOW, lease_until=NOW + 60
    )
    ended = await jobs.finish(done.id, "a", COMPLETE, NOW + 1)
    assert (ended.total, ended.finished, ended.lease_until) == (7, NOW + 1, 0.0)
    broken, _ = await jobs.create("k", {}, None, "a", NOW, NOW + LEASE)
    failed = await jobs.finish(broken.id, "a", FAILED, NOW + 1, ["it broke"])
    assert (failed.total, failed.last_errors) == (None, ("it broke",))
    with pytest.raises(ValueError):
        await jobs.finish(broken.id, "a", RUNNING, NOW)
