"""The keyring's seal record and wrap counts in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred
from zope.interface.verify import verifyObject

from s3orch.crypto.keyring import Sealed
from s3orch.crypto.seal import ISealStore, Seal, SealState, StaleState
from s3orch.store.db import Database
from s3orch.store.seal import DatabaseSealStore, WrapCounts

if TYPE_CHECKING:
    from conftest import DatabaseSpec

T0 = 1_800_000_000.0


def store_of(db: Database) -> DatabaseSealStore:
    return DatabaseSealStore(db, time.time)


async def initialized(db: Database) -> tuple[SealState, list[bytes]]:
    """A keyring initialized (3 shares, threshold 2) in ``db``: its stored state and shares."""
    store = store_of(db)
    result = await Seal(store).init(T0, 3, 2)
    state = await store.load()
    assert state is not None
    return state, list(result.keys)


async def unsealed(db: Database, shares: list[bytes]) -> Seal:
    seal = Seal(store_of(db))
    for share in shares:
        await seal.submit(share)
    assert not seal.sealed
    return seal


@pytest_twisted.ensureDeferred
async def test_empty_database_has_no_seal(db: Database) -> None:
    """Before init there is no stored state; the store is an ISealStore."""
    store = store_of(db)
    assert verifyObject(ISealStore, store)
    assert await store.load() is None


@pytest_twisted.ensureDeferred
async def test_state_round_trips(db: Database) -> None:
    """What init stores loads back equal."""
    state, _ = await initialized(db)
    assert state.generation == 1
    assert await store_of(db).load() == state


@pytest_twisted.ensureDeferred
async def test_compare_and_swap(db: Database) -> None:
    """replace succeeds only from the stored generation; a second first write is refused."""
    state, _ = await initialized(db)
    store = store_of(db)
    with pytest.raises(StaleState):
        await store.replace(None, state)
    newer = SealState.from_bytes(state.to_bytes().replace(b'"generation":1', b'"generation":2'))
    with pytest.raises(StaleState):
        await store.replace(5, newer)
    await store.replace(1, newer)
    loaded = await store.load()
    assert loaded is not None and loaded.generation == 2
    with pytest.raises(StaleState):
        await store.replace(1, newer)


@pytest_twisted.ensureDeferred
async def test_racing_writers_from_two_pools_one_wins(database_spec: DatabaseSpec) -> None:
    """Two pools replacing the same generation at once: exactly one write lands."""
    first = database_spec.open()
    await first.migrate()
    state, _ = await initialized(first)
    second = database_spec.open()
    newer = SealState.from_bytes(state.to_bytes().replace(b'"generation":1', b'"generation":2'))
    results = await DeferredList(
        [
            ensureDeferred(store_of(pool).replace(1, newer))
            for pool in (first, second, first, second)
        ],
        consumeErrors=True,
    )
    outcomes = [ok or failure.check(StaleState) for ok, failure in results]
    assert sum(1 for ok, _ in results if ok) == 1
    assert all(outcomes)


@pytest_twisted.ensureDeferred
async def test_rotation_on_one_instance_reaches_another(database_spec: DatabaseSpec) -> None:
    """Two instances on one database: after a refresh one wraps with the other's new term."""
    first = database_spec.open()
    await first.migrate()
    _, shares = await initialized(first)
    a = await unsealed(first, shares[:2])
    b = await unsealed(database_spec.open(), shares[1:])
    await a.rotate(T0 + 60)
    assert b.keys.primary_id == "keyring-1"
    assert await b.refresh() is True
    assert b.keys.primary_id == "keyring-2"
    # A DEK wrapped by b opens on a, and the other way round.
    dek = b"\x07" * 32
    assert await a.keys.unwrap(await b.keys.wrap(dek)) == dek
    assert await b.keys.unwrap(await a.keys.wrap(dek)) == dek


@pytest_twisted.ensureDeferred
async def test_restart_comes_up_sealed(db: Database) -> None:
    """A new Seal over the stored state is sealed until unsealed; keys then refuse."""
    await initialized(db)
    seal = Seal(store_of(db))
    await seal.refresh()
    assert seal.sealed and seal.status().initialized
    with pytest.raises(Sealed):
        await seal.keys.wrap(b"\x01" * 32)


@pytest_twisted.ensureDeferred
async def test_wrap_counts_are_summed_across_pools(database_spec: DatabaseSpec) -> None:
    """Counts added from two pools add up per term; every call returns all totals."""
    first = database_spec.open()
    await first.migrate()
    second = database_spec.open()
    assert await WrapCounts(first).add({}) == {}
    assert await WrapCounts(first).add({1: 5, 2: 0}) == {1: 5}
    assert await WrapCounts(second).add({1: 2, 2: 3}) == {1: 7, 2: 3}
    results = await DeferredList(
        [ensureDeferred(WrapCounts(pool).add({2: 1})) for pool in (first, second) * 5],
        consumeErrors=True,
    )
    assert all(ok for ok, _ in results)
    assert await WrapCounts(second).add({}) == {1: 7, 2: 13}
