"""Counters under concurrency and random operation sequences, against SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet.defer import Deferred, gatherResults

from s3orch.store.db import Cursor, Database
from s3orch.store.objects import MetadataStore, ReservationLost
from s3orch.store.records import (
    BackendUsage,
    NoSpace,
    ObjectVersion,
    PendingDeletion,
    StoredCopy,
)

T = TypeVar("T")
NOW = 1_700_000_000.0


def start(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Start a coroutine now and return its Deferred."""
    return Deferred.fromCoroutine(coroutine)


async def pending_rows(db: Database) -> dict[str, tuple[str, int, str]]:
    """Every pending row: storage_key -> (backend, size, state)."""

    def txn(cur: Cursor) -> dict[str, tuple[str, int, str]]:
        cur.execute("SELECT storage_key, backend, size, state FROM pending")
        return {row[0]: (row[1], int(row[2]), row[3]) for row in cur.fetchall()}

    return await db.run("test pending rows", txn)


def version_of(key: str, version_id: str, copies: list[StoredCopy]) -> ObjectVersion:
    """A version of ``key`` in bucket 'bkt' with the given copies."""
    return ObjectVersion(
        bucket="bkt",
        key=key,
        version_id=version_id,
        size=1,
        etag="e",
        content_type="t",
        created_at=NOW,
        copies=tuple(copies),
    )


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_of_one_key(store: MetadataStore, db: Database) -> None:
    """20 concurrent commits of one key leave one version; every other copy is pending deletion."""
    backends = ["b1", "b2", "b3"]
    await store.sync_backends(dict.fromkeys(backends, 0))
    versions = []
    for i in range(20):
        chosen = backends[i % 3 :] + backends[: i % 3]
        copies = [StoredCopy(b, f"v{i}@{b}", 100 + i) for b in chosen[: 1 + i % 2]]
        for c in copies:
            await store.reserve(c.backend, c.storage_key, c.stored_size, NOW)
        versions.append(version_of("same", f"v{i}", copies))

    results = await gatherResults([start(store.commit(v, NOW)) for v in versions])

    current = await store.get("bkt", "same")
    assert current is not None
    (winner,) = [v for v in versions if v.version_id == current.version_id]
    assert set(current.copies) == set(winner.copies)
    losers = {c for v in versions if v is not winner for c in v.copies}
    displaced = [d for result in results for d in result]
    assert sorted(d.storage_key for d in displaced) == sorted(c.storage_key for c in losers)
    assert await pending_rows(db) == {
        c.storage_key: (c.backend, c.stored_size, "delete") for c in losers
    }
    assert await store.usage() == [
        BackendUsage(
            b,
            sum(c.stored_size for c in winner.copies if c.backend == b),
            sum(c.stored_size for c in losers if c.backend == b),
            0,
            sum(1 for c in winner.copies if c.backend == b),
        )
        for b in backends
    ]
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_and_deletes_of_one_key(
    store: MetadataStore, db: Database
) -> None:
    """Interleaved commits and deletes of one key lose no copy and keep counters exact."""
    await store.sync_backends({"b1": 0, "b2": 0})
    versions = []
    for i in range(12):
        copy = StoredCopy(f"b{1 + i % 2}", f"v{i}", 10 + i)
        await store.reserve(copy.backend, copy.storage_key, copy.stored_size, NOW)
        versions.append(version_of("k", f"v{i}", [copy]))
    calls = []
    for v in versions:
        calls.append(start(store.commit(v, NOW)))
        calls.append(start(store.delete("bkt", "k", NOW)))
    await gatherResults(calls)

    current = await store.get("bkt", "k")
    live = set() if current is None else {c.storage_key for c in current.copies}
    rows = await pending_rows(db)
    assert set(rows) | live == {v.version_id for v in versions}
    assert not set(rows) & live
    assert all(state == "delete" for _, _, state in rows.values())
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_reservations_never_exceed_limit(store: MetadataStore) -> None:
    """Concurrent reservations on a nearly full backend admit exactly as many as fit."""
    await store.sync_backends({"b1": 95})

    async def attempt(i: int) -> bool:
        try:
            await store.reserve("b1", f"k{i}", 10, NOW)
        except NoSpace:
            return False
        return True

    admitted = await gatherResults([start(attempt(i)) for i in range(20)])
    assert admitted.count(True) == 9
    assert await store.usage() == [BackendUsage("b1", 0, 90, 95, 0)]


@define
class Model:
    """What the store should hold, computed independently of it."""

    limits: dict[str, int]
    # storage_key -> (backend, size, state, created_at)
    pending: dict[str, tuple[str, int, str, float]] = field(factory=dict)
    # storage_key -> (backend, stored_size) for committed copies
    copies: dict[str, tuple[str, int]] = field(factory=dict)
    # key -> (version_id, storage keys of its copies)
    objects: dict[str, tuple[str, list[str]]] = field(factory=dict)

    def used(self, backend: str) -> int:
        return sum(size for b, size in self.copies.values() if b == backend)

    def count(self, backend: str) -> int:
        return sum(1 for b, _ in self.copies.values() if b == backend)

    def pending_bytes(self, backend: str) -> int:
        return sum(size for b, size, _, _ in self.pending.values() if b == backend)

    def fits(self, backend: str, growth: int) -> bool:
        limit = self.limits[backend]
        total = self.used(backend) + self.pending_bytes(backend) + growth
        return growth <= 0 or limit == 0 or total <= limit

    def remove(self, key: str, now: float) -> list[PendingDeletion]:
        if key not in self.objects:
            return []
        _, storage_keys = self.objects.pop(key)
        displaced = []
        for sk in storage_keys:
            backend, size = self.copies.pop(sk)
            self.pending[sk] = (backend, size, "delete", now)
            displaced.append(PendingDeletion(backend, sk, size, 0))
        return displaced

    def usage(self) -> list[BackendUsage]:
        return [
            BackendUsage(b, self.used(b), self.pending_bytes(b), limit, self.count(b))
            for b, limit in sorted(self.limits.items())
        ]


async def random_step(
    rng: random.Random, store: MetadataStore, model: Model, step: int, now: float
) -> str:
    """Do one random operation on the store and the model, checking what the store answers.

    Returns what happened, so the test can show that every path was taken.
    """
    uploads = sorted(sk for sk, row in model.pending.items() if row[2] == "upload")
    deletions = sorted(sk for sk, row in model.pending.items() if row[2] == "delete")
    backends = sorted(model.limits)
    op = rng.choices(
        ["reserve", "commit", "abandon", "forget", "delete", "failed", "expire", "lost"],
        weights=[30, 25, 6, 12, 8, 5, 2, 2],
    )[0]
    if op == "reserve":
        backend, size, sk = rng.choice(backends), rng.randint(0, 60), f"s{step}"
        if model.fits(backend, size):
            await store.reserve(backend, sk, size, now)
            model.pending[sk] = (backend, size, "upload", now)
            return "reserved"
        with pytest.raises(NoSpace):
            await store.reserve(backend, sk, size, now)
        return "reserve refused"
    elif op == "commit" and uploads:
        chosen: dict[str, str] = {}
        for sk in rng.sample(uploads, min(len(uploads), rng.randint(1, 3))):
            chosen.setdefault(model.pending[sk][0], sk)
        copies = [
            StoredCopy(b, sk, max(0, model.pending[sk][1] + rng.randint(-5, 5)))
            for b, sk in chosen.items()
        ]
        key = f"k{rng.randint(0, 4)}"
        growth: dict[str, int] = {}
        for c in copies:
            growth[c.backend] = (
                growth.get(c.backend, 0) + c.stored_size - model.pending[c.storage_key][1]
            )
        version = version_of(key, f"v{step}", copies)
        if not all(model.fits(b, g) for b, g in growth.items()):
            with pytest.raises(NoSpace):
                await store.commit(version, now)
            return "commit refused"
        displaced = await store.commit(version, now)
        for c in copies:
            del model.pending[c.storage_key]
            model.copies[c.storage_key] = (c.backend, c.stored_size)
        expected = model.remove(key, now)
        model.objects[key] = (version.version_id, [c.storage_key for c in copies])
        assert sorted(displaced, key=lambda d: d.storage_key) == sorted(
            expected, key=lambda d: d.storage_key
        )
        return "replaced" if displaced else "committed"
    elif op == "lost":
        sk = rng.choice(deletions) if deletions else "no-such-key"
        backend = model.pending[sk][0] if deletions else backends[0]
        with pytest.raises(ReservationLost):
            await store.commit(version_of("k0", f"v{step}", [StoredCopy(backend, sk, 1)]), now)
        return "lost"
    elif op == "abandon" and uploads:
        sk = rng.choice(uploads)
        backend, size, _, created = model.pending[sk]
        assert await store.abandon(sk, now) == PendingDeletion(backend, sk, size, 0)
        model.pending[sk] = (backend, size, "delete", created)
        return "abandoned"
    elif op == "forget" and model.pending:
        sk = rng.choice(sorted(model.pending))
        await store.forget(sk)
        del model.pending[sk]
        return "forgotten"
    elif op == "delete":
        key = f"k{rng.randint(0, 4)}"
        displaced = await store.delete("bkt", key, now)
        expected = model.remove(key, now)
        assert sorted(displaced, key=lambda d: d.storage_key) == sorted(
            expected, key=lambda d: d.storage_key
        )
        return "deleted" if displaced else "delete absent"
    elif op == "failed" and deletions:
        await store.deletion_failed(rng.choice(deletions), "boom", now)
        return "failed"
    elif op == "expire":
        cutoff = now - 20
        expired = [sk for sk in uploads if model.pending[sk][3] < cutoff]
        assert await store.expire_uploads(cutoff) == len(expired)
        for sk in expired:
            backend, size, _, created = model.pending[sk]
            model.pending[sk] = (backend, size, "delete", created)
        return "expired"
    return "skipped"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_random_operations_keep_counters_exact(
    seed: int, store: MetadataStore, db: Database
) -> None:
    """Random reserve/commit/abandon/forget/delete sequences leave counters equal to the row sums."""
    rng = random.Random(seed)
    limits = {"b1": 250, "b2": 0, "b3": 100}
    await store.sync_backends(limits)
    model = Model(limits)
    now = NOW
    outcomes: Counter[str] = Counter()
    for step in range(200):
        now += 1
        outcomes[await random_step(rng, store, model, step, now)] += 1
        if step % 25 == 0:
            assert await store.usage() == model.usage()
    for outcome in ("reserved", "reserve refused", "committed", "replaced", "forgotten"):
        assert outcomes[outcome] > 0, outcomes
    assert await store.check_counters() == []
    assert await store.usage() == model.usage()
    rows = await pending_rows(db)
    assert rows == {sk: (b, size, state) for sk, (b, size, state, _) in model.pending.items()}
    for key, (version_id, storage_keys) in model.objects.items():
        current = await store.get("bkt", key)
        assert current is not None and current.version_id == version_id
        assert sorted(c.storage_key for c in current.copies) == sorted(storage_keys)
    listed = await store.list("bkt", "", "", 100)
    assert [v.key for v in listed] == sorted(model.objects)
