"""Background jobs as rows: their progress, and which process runs each one.

A running job is held by one process at a time through a lease (``owner``,
``lease_until``). Every write a runner makes to its job names the owner, so a
process whose lease was taken over (it stalled, or was presumed dead) gets
``LeaseLost`` instead of overwriting the new owner's progress. A lapsed lease
is taken with one conditional UPDATE: on PostgreSQL the row lock makes two
processes that try at once agree on one winner.

``lock_key`` is unique among running jobs (a partial unique index), so "only
one rotation of key X at a time" holds across every process sharing the
database. Starting a job whose lock_key is taken returns the running job.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from attrs import frozen

from s3orch.store.db import Cursor, Database

RUNNING: Final = "running"
COMPLETE: Final = "complete"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
STATUSES: Final = (RUNNING, COMPLETE, FAILED, CANCELLED)

# How many of the most recent error messages a job keeps, and how long each may be.
KEPT_ERRORS: Final = 10
MAX_ERROR_CHARS: Final = 1000

_MICROS = 1_000_000
_COLUMNS = (
    "id, kind, params, status, lock_key, processed, failed, total, cursor, last_errors,"
    " cancel_requested, owner, lease_until, started, finished, updated"
)


class UnknownJob(LookupError):
    """No job has that id."""


class JobFinished(Exception):
    """The job has already ended; ``job`` is how it ended."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is already {job.status}")
        self.job = job


class LeaseLost(Exception):
    """The job is no longer this owner's to run: its lease was taken, or it was ended."""


@frozen
class Job:
    """One background job as stored. Times are seconds since the epoch (from the clock)."""

    id: str
    kind: str
    params: dict[str, Any]
    status: str
    lock_key: str | None
    processed: int
    failed: int
    total: int | None  # None until counted
    cursor: str | None
    last_errors: tuple[str, ...]
    cancel_requested: bool
    owner: str | None
    lease_until: float
    started: float
    finished: float | None
    updated: float

    @property
    def running(self) -> bool:
        return self.status == RUNNING


def _micros(seconds: float) -> int:
    return round(seconds * _MICROS)


def _seconds(micros: int) -> float:
    return micros / _MICROS


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        params=json.loads(row[2]),
        status=row[3],
        lock_key=row[4],
        processed=int(row[5]),
        failed=int(row[6]),
        total=None if row[7] is None else int(row[7]),
        cursor=row[8],
        last_errors=tuple(json.loads(row[9])),
        cancel_requested=bool(row[10]),
        owner=row[11],
        lease_until=_seconds(int(row[12])),
        started=_seconds(int(row[13])),
        finished=None if row[14] is None else _seconds(int(row[14])),
        updated=_seconds(int(row[15])),
    )


def _merge_errors(kept: str, new: Sequence[str]) -> str:
    errors = [*json.loads(kept), *(e[:MAX_ERROR_CHARS] for e in new)]
    return json.dumps(errors[-KEPT_ERRORS:])


def _held(cur: Cursor, job_id: str, owner: str) -> tuple[Any, ...]:
    """The running job's (last_errors, cancel_requested), locked; LeaseLost unless ``owner``
    holds it."""
    cur.execute(
        "SELECT last_errors, cancel_requested FROM jobs"
        " WHERE id = ? AND owner = ? AND status = 'running'" + _for_update(cur),
        (job_id, owner),
    )
    row = cur.fetchone()
    if row is None:
        raise LeaseLost(job_id)
    return tuple(row)


def _for_update(cur: Cursor) -> str:
    # SQLite's BEGIN IMMEDIATE already holds the only write lock.
    return " FOR UPDATE" if cur.dialect == "postgres" else ""


def _select(cur: Cursor, job_id: str) -> Job | None:
    cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    row = cur.fetchone()
    return None if row is None else _job(row)


class JobStore:
    """The ``jobs`` table. ``now`` arguments are seconds from the injected clock."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def shared(self) -> bool:
        """Whether several processes may share this database (PostgreSQL).

        A SQLite file belongs to one process, so at startup every job still
        marked running was left by a process that is gone, whatever its lease says.
        """
        return self.db.dialect == "postgres"

    async def create(
        self,
        kind: str,
        params: Mapping[str, Any],
        lock_key: str | None,
        owner: str,
        now: float,
        lease_until: float,
    ) -> tuple[Job, bool]:
        """Insert a running job held by ``owner``; return it and True.

        If a running job already holds ``lock_key``, insert nothing and return
        that job and False.
        """
        encoded = json.dumps(dict(params), sort_keys=True, separators=(",", ":"))

        def txn(cur: Cursor) -> tuple[Job, bool]:
            # The running job we collided with may end between the two statements:
            # then the next INSERT succeeds.
            for _ in range(3):
                job_id = secrets.token_hex(8)
                cur.execute(
                    f"INSERT INTO jobs ({_COLUMNS}) VALUES"
                    " (?, ?, ?, 'running', ?, 0, 0, NULL, NULL, '[]', 0, ?, ?, ?, NULL, ?)"
                    " ON CONFLICT (lock_key) WHERE status = 'running' DO NOTHING",
                    (
                        job_id,
                        kind,
                        encoded,
                        lock_key,
                        owner,
                        _micros(lease_until),
                        _micros(now),
                        _micros(now),
                    ),
                )
                if cur.rowcount == 1:
                    created = _select(cur, job_id)
                    assert created is not None
                    return created, True
                cur.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE lock_key = ? AND status = 'running'",
                    (lock_key,),
                )
                row = cur.fetchone()
                if row is not None:
                    return _job(row), False
            raise RuntimeError(f"could not create a job for lock {lock_key!r}")

        return await self.db.run("create job", txn)

    async def get(self, job_id: str) -> Job | None:
        """The job with that id, or None."""
        return await self.db.run("get job", lambda cur: _select(cur, job_id), readonly=True)

    async def recent(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, optionally only those with ``status``."""

        def txn(cur: Cursor) -> list[Job]:
            if status is None:
                cur.execute(
                    f"SELECT {_COLUMNS} FROM jobs ORDER BY started DESC, id DESC LIMIT ?",
                    (limit,),
                )
            else:
                cur.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE status = ?"
                    " ORDER BY started DESC, id DESC LIMIT ?",
                    (status, limit),
                )
            return [_job(row) for row in cur.fetchall()]

        return await self.db.run("list jobs", txn, readonly=True)

    async def set_total(self, job_id: str, owner: str, total: int, now: float) -> None:
        """Record how many items the job has to go through."""

        def txn(cur: Cursor) -> None:
            cur.execute(
                "UPDATE jobs SET total = ?, updated = ?"
                " WHERE id = ? AND owner = ? AND status = 'running'",
                (total, _micros(now), job_id, owner),
            )
            if cur.rowcount != 1:
                raise LeaseLost(job_id)

        await self.db.run("set job total", txn)

    async def record_batch(
        self,
        job_id: str,
        owner: str,
        *,
        cursor: str | None,
        processed: int,
        failed: int,
        errors: Sequence[str],
        now: float,
        lease_until: float,
    ) -> bool:
        """Add a batch's counts, keep its errors, move the cursor and renew the lease.

        Returns whether a cancellation has been requested. Raises LeaseLost if
        ``owner`` no longer holds the job.
        """

        def txn(cur: Cursor) -> bool:
            row = _held(cur, job_id, owner)
            kept = _merge_errors(row[0], errors) if errors else row[0]
            cur.execute(
                "UPDATE jobs SET cursor = ?, processed = processed + ?, failed = failed + ?,"
                " last_errors = ?, lease_until = ?, updated = ? WHERE id = ?",
                (cursor, processed, failed, kept, _micros(lease_until), _micros(now), job_id),
            )
            return bool(row[1])

        return await self.db.run("record job batch", txn)

    async def note_errors(
        self, job_id: str, owner: str, errors: Sequence[str], now: float, lease_until: float
    ) -> bool:
        """Keep ``errors`` (a batch that raised and will be retried) and renew the lease.

        Returns whether a cancellation has been requested. Raises LeaseLost if
        ``owner`` no longer holds the job.
        """

        def txn(cur: Cursor) -> bool:
            row = _held(cur, job_id, owner)
            cur.execute(
                "UPDATE jobs SET last_errors = ?, lease_until = ?, updated = ? WHERE id = ?",
                (_merge_errors(row[0], errors), _micros(lease_until), _micros(now), job_id),
            )
            return bool(row[1])

        return await self.db.run("note job errors", txn)

    async def finish(
        self, job_id: str, owner: str, status: str, now: float, errors: Sequence[str] = ()
    ) -> Job:
        """End the job with ``status`` and free its lease and lock_key; return it as ended.

        A complete job's total is raised to what it went through, if more
        items appeared while it ran.
        """
        if status not in (COMPLETE, FAILED, CANCELLED):
            raise ValueError(f"a job cannot end as {status!r}")

        def txn(cur: Cursor) -> Job:
            cur.execute(
                "SELECT last_errors FROM jobs"
                " WHERE id = ? AND owner = ? AND status = 'running'" + _for_update(cur),
                (job_id, owner),
            )
            row = cur.fetchone()
            if row is None:
                raise LeaseLost(job_id)
            kept = _merge_errors(row[0], errors) if errors else row[0]
            total = (
                "CASE WHEN total IS NULL OR total < processed + failed"
                " THEN processed + failed ELSE total END"
                if status == COMPLETE
                else "total"
            )
            cur.execute(
                f"UPDATE jobs SET status = ?, total = {total}, last_errors = ?, finished = ?,"
                " updated = ?, owner = NULL, lease_until = 0 WHERE id = ?",
                (status, kept, _micros(now), _micros(now), job_id),
            )
            ended = _select(cur, job_id)
            assert ended is not None
            return ended

        return await self.db.run("finish job", txn)

    async def release(self, job_id: str, owner: str) -> None:
        """Give up a running job so that another process may take it at once."""

        def txn(cur: Cursor) -> None:
            cur.execute(
                "UPDATE jobs SET owner = NULL, lease_until = 0"
                " WHERE id = ? AND owner = ? AND status = 'running'",
                (job_id, owner),
            )

        await self.db.run("release job", txn)

    async def renew(
        self, owner: str, job_ids: Collection[str], lease_until: float
    ) -> frozenset[str]:
        """Extend the leases ``owner`` holds on ``job_ids``; return the ids still held."""

        def txn(cur: Cursor) -> frozenset[str]:
            held: set[str] = set()
            for job_id in sorted(job_ids):
                cur.execute(
                    "UPDATE jobs SET lease_until = ?"
                    " WHERE id = ? AND owner = ? AND status = 'running'",
                    (_micros(lease_until), job_id, owner),
                )
                if cur.rowcount == 1:
                    held.add(job_id)
            return frozenset(held)

        if not job_ids:
            return frozenset()
        return await self.db.run("renew job leases", txn)

    async def claim(
        self,
        owner: str,
        kinds: Collection[str],
        now: float,
        lease_until: float,
        *,
        any_owner: bool = False,
    ) -> list[Job]:
        """Take every running job of ``kinds`` that nobody holds (released, or lease
        lapsed), or with ``any_owner`` every running one not already ``owner``'s.

        Returns the jobs taken, oldest first.
        """

        def txn(cur: Cursor) -> list[Job]:
            marks = ", ".join("?" for _ in kinds)
            cur.execute(
                f"UPDATE jobs SET owner = ?, lease_until = ?"
                f" WHERE status = 'running' AND kind IN ({marks})"
                " AND (owner IS NULL OR lease_until < ? OR (? = 1 AND owner <> ?))"
                f" RETURNING {_COLUMNS}",
                (owner, _micros(lease_until), *kinds, _micros(now), int(any_owner), owner),
            )
            return sorted((_job(row) for row in cur.fetchall()), key=lambda j: (j.started, j.id))

        if not kinds:
            return []
        return await self.db.run("claim jobs", txn)

    async def request_cancel(self, job_id: str, now: float) -> Job:
        """Ask the job to stop at its next batch boundary; return it.

        A job that nobody holds is cancelled here and now. Raises UnknownJob,
        or JobFinished if it has already ended.
        """

        def txn(cur: Cursor) -> Job:
            cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?" + _for_update(cur), (job_id,))
            row = cur.fetchone()
            if row is None:
                raise UnknownJob(job_id)
            job = _job(row)
            if not job.running:
                raise JobFinished(job)
            if job.owner is None or job.lease_until < now:
                cur.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished = ?,"
                    " updated = ?, owner = NULL, lease_until = 0 WHERE id = ?",
                    (_micros(now), _micros(now), job_id),
                )
            else:
                cur.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated = ? WHERE id = ?",
                    (_micros(now), job_id),
                )
            changed = _select(cur, job_id)
            assert changed is not None
            return changed

        return await self.db.run("cancel job", txn)
