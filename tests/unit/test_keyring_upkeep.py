"""KeyringUpkeep: auto-unseal, following other instances, wrap counts, automatic rotation."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock

from s3orch import metrics
from s3orch.crypto.keyring import MIN_MAX_OPERATIONS, REASON_MAX_OPERATIONS, RotationConfig
from s3orch.crypto.keys import LocalKeys
from s3orch.crypto.seal import MemorySealStore, Seal
from s3orch.keyring_upkeep import KeyringUpkeep
from s3orch.store.db import Database
from s3orch.store.seal import WrapCounts

T0 = 1_800_000_000.0
AUTO_KEY = LocalKeys([("config-0", bytes([5]) * 32)])


@pytest_twisted.async_yield_fixture
async def counts(reactor: IReactorCore, tmp_path: os.PathLike[str]) -> AsyncIterator[WrapCounts]:
    """Wrap counts in a fresh SQLite database."""
    db = Database.sqlite(os.path.join(tmp_path, "meta.db"), reactor=reactor)
    await db.migrate()
    yield WrapCounts(db)
    db.close()


def clock() -> Clock:
    c = Clock()
    c.advance(T0)
    return c


async def shamir_seal(store: MemorySealStore) -> tuple[Seal, list[bytes]]:
    """A Seal over ``store`` initialized with 3 shares, threshold 2 (still sealed)."""
    seal = Seal(store)
    result = await seal.init(T0, 3, 2)
    return seal, list(result.keys)


@pytest_twisted.ensureDeferred
async def test_auto_unseal_at_start_and_not_after_an_explicit_seal(counts: WrapCounts) -> None:
    """With auto-unseal, sync unseals after a start; once sealed on purpose it stays sealed."""
    store = MemorySealStore()
    await Seal(store, AUTO_KEY).init(T0)
    seal = Seal(store, AUTO_KEY)
    unsealed_calls: list[bool] = []

    async def on_unsealed() -> None:
        unsealed_calls.append(True)

    upkeep = KeyringUpkeep(seal, counts, clock(), on_unsealed=on_unsealed)
    await upkeep.start()
    assert not seal.sealed
    assert metrics.seal_sealed._value.get() == 0
    assert unsealed_calls == [True]
    seal.seal()
    await upkeep.sync()
    assert seal.sealed
    assert metrics.seal_sealed._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_auto_unseal_waits_for_init(counts: WrapCounts) -> None:
    """Before init, auto-unseal does nothing; after init elsewhere it unseals."""
    store = MemorySealStore()
    seal = Seal(store, AUTO_KEY)
    upkeep = KeyringUpkeep(seal, counts, clock())
    await upkeep.start()
    assert seal.sealed and not seal.status().initialized
    await Seal(store, AUTO_KEY).init(T0)
    await upkeep.sync()
    assert not seal.sealed


@pytest_twisted.ensureDeferred
async def test_configured_rotation_is_stored_at_unseal(counts: WrapCounts) -> None:
    """The file's rotation policy is written into the keyring once it is unsealed."""
    store = MemorySealStore()
    seal, shares = await shamir_seal(store)
    policy = RotationConfig(2_000_000, 48 * 3600.0, True)
    upkeep = KeyringUpkeep(seal, counts, clock(), rotation=policy)
    await upkeep.start()
    assert seal.sealed
    for share in shares[:2]:
        await seal.submit(share)
    await upkeep.noticed()
    assert seal.keys.keyring.rotation == policy
    writes = store.writes
    await upkeep.noticed()
    await upkeep.apply_rotation()
    assert store.writes == writes  # unchanged policy: nothing written again


@pytest_twisted.ensureDeferred
async def test_counts_are_shared_and_rotation_happens_when_due(counts: WrapCounts) -> None:
    """Wraps from two instances add up; past max_operations the next upkeep rotates."""
    store = MemorySealStore()
    _, shares = await shamir_seal(store)
    a, b = Seal(store), Seal(store)
    for seal in (a, b):
        for share in shares[1:]:
            await seal.submit(share)
    ua, ub = (KeyringUpkeep(seal, counts, clock()) for seal in (a, b))
    for _ in range(3):
        await a.keys.wrap(os.urandom(32))
    await b.keys.wrap(os.urandom(32))
    await ua.upkeep()
    await ub.upkeep()
    await ua.flush()
    assert a.key_status().encryptions == b.key_status().encryptions == 4
    await a.set_rotation_config(RotationConfig(MIN_MAX_OPERATIONS), T0)
    await counts.add({1: MIN_MAX_OPERATIONS})
    await ua.flush()
    assert a.keys.rotation_reason(T0) == REASON_MAX_OPERATIONS
    await ua.upkeep()
    assert a.keys.primary_id == "keyring-2"
    await ub.sync()
    assert b.keys.primary_id == "keyring-2"
    assert metrics.keyring_active_term._value.get() == 2


@pytest_twisted.ensureDeferred
async def test_a_decrypt_only_keyring_is_never_rotated(counts: WrapCounts) -> None:
    """wraps=False: counts past the limit do not rotate the keyring."""
    store = MemorySealStore()
    seal, shares = await shamir_seal(store)
    for share in shares[:2]:
        await seal.submit(share)
    upkeep = KeyringUpkeep(seal, counts, clock(), wraps=False)
    await seal.set_rotation_config(RotationConfig(MIN_MAX_OPERATIONS), T0)
    await counts.add({1: MIN_MAX_OPERATIONS})
    await upkeep.upkeep()
    assert seal.keys.primary_id == "keyring-1"


@pytest_twisted.ensureDeferred
async def test_failed_flush_keeps_the_counts(counts: WrapCounts) -> None:
    """Counts that could not be stored are kept for the next flush."""
    store = MemorySealStore()
    seal, shares = await shamir_seal(store)
    for share in shares[:2]:
        await seal.submit(share)
    await seal.keys.wrap(os.urandom(32))

    class Broken(WrapCounts):
        async def add(self, counts: object) -> dict[int, int]:  # type: ignore[override]
            raise OSError("database down")

    broken = KeyringUpkeep(seal, Broken(None), clock())  # type: ignore[arg-type]
    with pytest.raises(OSError):
        await broken.flush()
    await KeyringUpkeep(seal, counts, clock()).flush()
    assert await counts.add({}) == {1: 1}
