"""Tests for s3orch.crypto.seal: init, unseal, seal, rotate and rekey, as Vault behaves."""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from s3orch.crypto.keyring import (
    MIN_MAX_OPERATIONS,
    REASON_INTERVAL,
    REASON_MAX_OPERATIONS,
    Keyring,
    KeyringCorrupt,
    RotationConfig,
    Sealed,
)
from s3orch.crypto.keys import LocalKeys, UnknownKey, WrappedKey
from s3orch.crypto.seal import (
    AUTO,
    ROOT_LINK_LIFETIME,
    SHAMIR,
    AlreadyInitialized,
    InvalidShare,
    ISealStore,
    MemorySealStore,
    NotInitialized,
    RekeyError,
    Seal,
    SealConfigError,
    SealError,
    SealState,
    StaleState,
    UnsealFailed,
    decode_share,
    validate_seal_config,
)

T = TypeVar("T")

T0 = 1_800_000_000.0
DAY = 24 * 3600.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (the memory store) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


def initialized(shares: int = 5, threshold: int = 3) -> tuple[MemorySealStore, list[bytes]]:
    """A store initialized with Shamir shares, and the shares."""
    store = MemorySealStore()
    result = run(Seal(store).init(T0, shares, threshold))
    return store, list(result.keys)


def unsealed(store: MemorySealStore, shares: list[bytes]) -> Seal:
    """A fresh instance over ``store``, unsealed with ``shares``."""
    seal = Seal(store)
    for share in shares:
        run(seal.submit(share))
    assert not seal.sealed
    return seal


def wrong_share(like: bytes) -> bytes:
    """A share of the right length with an unused x-coordinate (random y values)."""
    return os.urandom(len(like) - 1) + bytes([like[-1] ^ 0xFF or 1])


def leaks(text: str, secrets: list[bytes]) -> bool:
    """Whether ``text`` shows any of ``secrets`` in hex, base64 or repr form."""
    return any(
        form in text
        for secret in secrets
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret))
    )


class GatedStore(MemorySealStore):
    """A memory store whose next load or replace waits for a Deferred the test fires."""

    def __init__(self, state: SealState | None = None) -> None:
        super().__init__(state)
        self.gate: Deferred[None] | None = None
        self.replace_gate: Deferred[None] | None = None
        self.fail_with: Exception | None = None

    async def load(self) -> SealState | None:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate
        return await super().load()

    async def replace(self, expected_generation: int | None, state: SealState) -> None:
        if self.replace_gate is not None:
            gate, self.replace_gate = self.replace_gate, None
            await gate
        if self.fail_with is not None:
            raise self.fail_with
        await super().replace(expected_generation, state)


# -- configuration and share text -------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "threshold", "message"),
    [
        (5, 1, "threshold must be greater than one for multiple shares"),
        (256, 3, "shares must be less than 256"),
        (3, 5, "threshold cannot be larger than shares"),
        (0, 0, "shares must be at least one"),
        (3, 0, "threshold must be at least one"),
    ],
)
def test_seal_config_validation_is_vaults(shares: int, threshold: int, message: str) -> None:
    """Bad share counts get Vault's sys/init messages."""
    with pytest.raises(SealConfigError, match=f"^invalid seal configuration: {message}$"):
        validate_seal_config(shares, threshold)


@pytest.mark.parametrize(("shares", "threshold"), [(1, 1), (2, 2), (5, 3), (255, 255), (255, 2)])
def test_seal_config_bounds_are_accepted(shares: int, threshold: int) -> None:
    """1/1 and anything with 2 <= threshold <= shares <= 255 is valid."""
    validate_seal_config(shares, threshold)


def test_decode_share_takes_hex_or_base64() -> None:
    """Shares are accepted as hex (tried first, as Vault) or standard base64."""
    share = os.urandom(33)
    assert decode_share(share.hex()) == share
    assert decode_share(" " + share.hex().upper() + "\n") == share
    assert decode_share(base64.b64encode(share).decode()) == share
    with pytest.raises(InvalidShare, match="key must be a valid hex or base64 string"):
        decode_share("not a share!")


# -- the stored state -------------------------------------------------------------------------


def test_memory_store_is_a_seal_store_with_compare_and_swap() -> None:
    """replace succeeds only against the expected generation (None: empty store)."""
    store, _ = initialized()
    assert verifyObject(ISealStore, store)
    state = store.state
    assert state is not None
    with pytest.raises(StaleState):
        run(store.replace(None, state))
    with pytest.raises(StaleState):
        run(store.replace(2, state))
    run(store.replace(1, evolve(state, generation=2)))
    assert store.state is not None and store.state.generation == 2


def test_seal_state_round_trips_through_bytes() -> None:
    """to_bytes/from_bytes preserve every field."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    run(seal.rotate(T0))
    state = store.state
    assert state is not None
    assert SealState.from_bytes(state.to_bytes()) == state
    linked = evolve(state, root_link=b"x" * 60, root_link_expires=T0 + 1)
    assert SealState.from_bytes(linked.to_bytes()) == linked


@pytest.mark.parametrize("data", [b"", b"{}", b'{"format":2}', b"[1]", b'{"format":1}'])
def test_malformed_seal_state_is_a_seal_error(data: bytes) -> None:
    """A damaged record is a SealError, not a crash."""
    with pytest.raises(SealError, match="malformed"):
        SealState.from_bytes(data)


# -- init -------------------------------------------------------------------------------------


def test_init_returns_shares_once_and_stays_sealed() -> None:
    """init hands out 5 shares of 33 bytes, stores generation 1, and stays sealed."""
    store = MemorySealStore()
    seal = Seal(store)
    assert seal.status().initialized is False
    result = run(seal.init(T0, 5, 3))
    assert len(result.keys) == 5 and all(len(k) == 33 for k in result.keys)
    assert (result.shares, result.threshold) == (5, 3)
    status = seal.status()
    assert status.initialized and status.sealed
    assert (status.shares, status.threshold, status.progress, status.generation) == (5, 3, 0, 1)
    assert status.seal_type == SHAMIR
    state = store.state
    assert state is not None and state.generation == 1
    stored = state.to_bytes()
    assert not any(share[:-1] in stored for share in result.keys)
    assert not leaks(stored.decode(), list(result.keys))


def test_second_init_is_refused() -> None:
    """A store that holds a state cannot be initialized again, by any instance."""
    store, _ = initialized()
    with pytest.raises(AlreadyInitialized, match="s3orch is already initialized"):
        run(Seal(store).init(T0, 3, 2))


def test_bad_init_stores_nothing() -> None:
    """Invalid share counts are refused before anything is written."""
    store = MemorySealStore()
    with pytest.raises(SealConfigError, match="threshold must be greater than one"):
        run(Seal(store).init(T0, 5, 1))
    with pytest.raises(SealConfigError, match="required"):
        run(Seal(store).init(T0))
    assert store.state is None and store.writes == 0


def test_concurrent_init_elsewhere_is_already_initialized() -> None:
    """If another instance's init lands while ours is being written, ours is refused."""
    store = GatedStore()
    gate: Deferred[None] = Deferred()
    store.replace_gate = gate
    failures: list[Any] = []
    Deferred.fromCoroutine(Seal(store).init(T0, 3, 2)).addErrback(failures.append)
    theirs = run(Seal(store).init(T0, 3, 2))
    gate.callback(None)
    assert len(failures) == 1 and failures[0].check(AlreadyInitialized)
    assert store.writes == 1
    unsealed(store, list(theirs.keys[:2]))


def test_one_share_of_one_is_the_raw_unseal_key() -> None:
    """init 1/1 returns one 32-byte key, and that key alone unseals."""
    store = MemorySealStore()
    result = run(Seal(store).init(T0, 1, 1))
    assert len(result.keys) == 1 and len(result.keys[0]) == 32
    seal = Seal(store)
    status = run(seal.submit(result.keys[0]))
    assert not status.sealed


# -- unseal -----------------------------------------------------------------------------------


def test_unseal_progress_then_unsealed() -> None:
    """Shares below the threshold show progress and a nonce; the threshold unseals."""
    store, shares = initialized()
    seal = Seal(store)
    first = run(seal.submit(shares[0]))
    assert first.sealed and first.progress == 1 and first.nonce
    second = run(seal.submit(shares[3]))
    assert second.progress == 2 and second.nonce == first.nonce
    done = run(seal.submit(shares[4]))
    assert not done.sealed and done.progress == 0 and done.nonce == ""
    assert seal.key_status().term == 1


def test_any_three_of_five_unseal() -> None:
    """Every 3-subset of the 5 shares, in any order, unseals a fresh instance."""
    store, shares = initialized()
    for chosen in itertools.combinations(shares, 3):
        unsealed(store, list(reversed(chosen)))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), shares=st.integers(min_value=1, max_value=7))
def test_any_threshold_of_any_config_unseals(data: st.DataObject, shares: int) -> None:
    """For any valid shares/threshold, a threshold-sized subset in any order unseals."""
    threshold = 1 if shares == 1 else data.draw(st.integers(min_value=2, max_value=shares))
    store, keys = initialized(shares, threshold)
    order = data.draw(st.permutations(keys))
    seal = Seal(store)
    for share in order[: threshold - 1]:
        assert run(seal.submit(share)).sealed
    assert not run(seal.submit(order[threshold - 1])).sealed


def test_repeated_share_is_ignored_like_vault() -> None:
    """Submitting the same share again leaves progress as it is (Vault ignores it)."""
    store, shares = initialized()
    seal = Seal(store)
    run(seal.submit(shares[0]))
    again = run(seal.submit(bytes(shares[0])))
    assert again.progress == 1 and again.sealed


def test_wrong_share_fails_only_at_threshold_and_resets() -> None:
    """A wrong share is accepted; at the threshold unseal fails and progress resets."""
    store, shares = initialized()
    seal = Seal(store)
    run(seal.submit(shares[0]))
    assert run(seal.submit(wrong_share(shares[1]))).progress == 2
    with pytest.raises(UnsealFailed, match="progress was reset") as caught:
        run(seal.submit(shares[2]))
    assert not leaks(str(caught.value), shares)
    status = seal.status()
    assert status.sealed and status.progress == 0 and status.nonce == ""
    for share in shares[2:]:
        run(seal.submit(share))
    assert not seal.sealed


def test_shares_of_another_seal_fail() -> None:
    """Shares from another initialization combine into a key that opens nothing."""
    store, _ = initialized(3, 2)
    _, others = initialized(3, 2)
    seal = Seal(store)
    run(seal.submit(others[0]))
    with pytest.raises(UnsealFailed):
        run(seal.submit(others[1]))


def test_uncombinable_shares_fail_at_threshold() -> None:
    """Shares that cannot be combined (different lengths, same x) fail like wrong shares."""
    store, shares = initialized(3, 2)
    seal = Seal(store)
    run(seal.submit(shares[0][:20]))
    with pytest.raises(UnsealFailed):
        run(seal.submit(shares[1]))
    run(seal.submit(shares[0][:-1] + shares[1][-1:]))
    with pytest.raises(UnsealFailed):
        run(seal.submit(shares[1]))
    assert seal.status().progress == 0


def test_share_size_limits_are_vaults() -> None:
    """Shares under 16 or over 33 bytes are refused at submission, progress unchanged."""
    store, _ = initialized()
    seal = Seal(store)
    with pytest.raises(InvalidShare, match="shorter than minimum 16 bytes"):
        run(seal.submit(b"x" * 15))
    with pytest.raises(InvalidShare, match="longer than maximum 33 bytes"):
        run(seal.submit(b"x" * 34))
    assert seal.status().progress == 0


def test_reset_forgets_progress() -> None:
    """reset_unseal (unseal -reset) sets progress to 0 and clears the nonce."""
    store, shares = initialized()
    seal = Seal(store)
    run(seal.submit(shares[0]))
    status = seal.reset_unseal()
    assert status.progress == 0 and status.nonce == ""
    for share in shares[1:4]:
        run(seal.submit(share))
    assert not seal.sealed


def test_unseal_before_init_is_not_initialized() -> None:
    """Submitting a share to an uninitialized store fails."""
    with pytest.raises(NotInitialized, match="s3orch is not initialized"):
        run(Seal(MemorySealStore()).submit(os.urandom(33)))


def test_unseal_when_unsealed_returns_status() -> None:
    """A share given to an unsealed instance changes nothing."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    status = run(seal.submit(shares[4]))
    assert not status.sealed and status.progress == 0


def test_instance_picks_up_an_init_made_elsewhere() -> None:
    """An instance started before init learns of it on its first share."""
    store = MemorySealStore()
    seal = Seal(store)
    assert not seal.status().initialized
    keys = run(Seal(store).init(T0, 3, 2)).keys
    run(seal.submit(keys[0]))
    run(seal.submit(keys[1]))
    assert not seal.sealed


def test_threshold_reached_while_a_rekey_elsewhere_raised_it() -> None:
    """If the stored threshold grew meanwhile, the shares stay as progress."""
    store, shares = initialized(3, 2)
    seal = Seal(store)
    run(seal.refresh())
    other = unsealed(store, shares[:2])
    other.rekey_init(5, 3)
    new = None
    for share in shares[:2]:
        new = run(other.rekey_update(other.rekey_status().nonce, share, T0))
    assert new is not None and new.complete
    run(seal.submit(new.keys[0]))
    status = run(seal.submit(new.keys[1]))
    assert status.sealed and status.progress == 2 and status.threshold == 3
    assert not run(seal.submit(new.keys[2])).sealed


# -- seal and restart -------------------------------------------------------------------------


def test_seal_forgets_keys_and_a_restart_is_sealed() -> None:
    """seal() makes the provider raise Sealed; a new instance over the store is sealed."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    dek = os.urandom(32)
    wrapped = run(seal.keys.wrap(dek))
    seal.seal()
    assert seal.sealed and seal.status().sealed
    with pytest.raises(Sealed):
        run(seal.keys.unwrap(wrapped))
    with pytest.raises(Sealed):
        seal.key_status()
    restarted = Seal(store)
    run(restarted.refresh())
    assert restarted.status().initialized and restarted.sealed
    for share in shares[2:]:
        run(restarted.submit(share))
    assert run(restarted.keys.unwrap(wrapped)) == dek


def test_seal_when_sealed_is_harmless() -> None:
    """Sealing twice, or before init, does nothing."""
    seal = Seal(MemorySealStore())
    seal.seal()
    seal.seal()
    assert seal.sealed


def test_nothing_secret_in_reprs_or_status() -> None:
    """repr/str of results, states, statuses and the seal never show shares or keys."""
    store = MemorySealStore()
    seal = Seal(store)
    result = run(seal.init(T0, 3, 2))
    for share in result.keys[:2]:
        run(seal.submit(share))
    root = seal._root
    assert root is not None
    secrets = [*result.keys, root, *(t.key for t in seal.keys.keyring.terms)]
    rekey = seal.rekey_init(3, 2)
    update = run(seal.rekey_update(rekey.nonce, result.keys[0], T0))
    update = run(seal.rekey_update(rekey.nonce, result.keys[1], T0))
    assert update.complete
    secrets += list(update.keys)
    shown = " ".join(
        [
            repr(result),
            str(result),
            repr(update),
            repr(seal),
            repr(store.state),
            repr(seal.status()),
            repr(seal.keys),
            repr(seal.key_status()),
        ]
    )
    assert "key shares" in repr(result)
    assert not leaks(shown, secrets)


# -- rotation ---------------------------------------------------------------------------------


def test_rotate_adds_a_term_and_persists_it() -> None:
    """rotate makes term 2 active at now; old DEKs unwrap; a restart sees term 2."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    dek = os.urandom(32)
    old = run(seal.keys.wrap(dek))
    status = run(seal.rotate(T0 + 60))
    assert (status.term, status.install_time, status.encryptions) == (2, T0 + 60, 0)
    assert run(seal.keys.wrap(dek)).key_id == "keyring-2"
    assert store.state is not None and store.state.generation == 2
    restarted = unsealed(store, shares[1:4])
    assert restarted.key_status().term == 2
    assert run(restarted.keys.unwrap(old)) == dek


def test_rotate_while_sealed_is_sealed() -> None:
    """Rotation needs the root key."""
    store, _ = initialized()
    seal = Seal(store)
    run(seal.refresh())
    with pytest.raises(Sealed):
        run(seal.rotate(T0))
    with pytest.raises(NotInitialized):
        run(Seal(MemorySealStore()).rotate(T0))


def test_rotate_if_due_by_count() -> None:
    """Not due: no write. Past max_operations: rotates and says why."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    run(seal.set_rotation_config(RotationConfig(max_operations=MIN_MAX_OPERATIONS), T0))
    writes = store.writes
    assert run(seal.rotate_if_due(T0)) is None
    assert store.writes == writes
    seal.keys.record_persisted(1, MIN_MAX_OPERATIONS)
    assert run(seal.rotate_if_due(T0)) == REASON_MAX_OPERATIONS
    assert seal.key_status().term == 2
    assert run(seal.rotate_if_due(T0)) is None


def test_rotate_if_due_by_interval() -> None:
    """After the interval the active term is replaced; the new one starts a new interval."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    run(seal.set_rotation_config(RotationConfig(interval=DAY), T0))
    assert run(seal.rotate_if_due(T0 + DAY - 1)) is None
    assert run(seal.rotate_if_due(T0 + DAY)) == REASON_INTERVAL
    assert run(seal.rotate_if_due(T0 + DAY + 1)) is None
    assert run(Seal(store).rotate_if_due(T0 + 10 * DAY)) is None  # sealed: nothing


def test_rotation_config_is_stored_in_the_keyring() -> None:
    """Settings survive a restart (they are inside the encrypted keyring)."""
    store, shares = initialized()
    config = RotationConfig(max_operations=2_000_000, interval=3 * DAY, enabled=False)
    run(unsealed(store, shares[:3]).set_rotation_config(config, T0))
    assert unsealed(store, shares[:3]).keys.keyring.rotation == config


def test_rotations_on_two_instances_both_land() -> None:
    """Two explicit rotates from instances that did not see each other give terms 2 and 3."""
    store, shares = initialized()
    a, b = unsealed(store, shares[:3]), unsealed(store, shares[:3])
    run(a.rotate(T0 + 1))
    run(b.rotate(T0 + 2))
    assert b.key_status().term == 3
    run(a.refresh())
    assert a.key_status().term == 3
    assert [t.term for t in a.keys.keyring.terms] == [1, 2, 3]


def test_automatic_rotation_happens_once_across_instances() -> None:
    """When both instances find the term due, only the first rotates."""
    store, shares = initialized()
    a, b = unsealed(store, shares[:3]), unsealed(store, shares[:3])
    run(a.set_rotation_config(RotationConfig(interval=DAY), T0))
    run(b.refresh())
    assert run(a.rotate_if_due(T0 + DAY)) == REASON_INTERVAL
    assert run(b.rotate_if_due(T0 + DAY)) is None
    assert b.key_status().term == 2


def test_a_peer_unwraps_a_term_made_elsewhere_without_waiting() -> None:
    """A DEK wrapped under a term rotated in on another instance unwraps at once."""
    store, shares = initialized()
    a, b = unsealed(store, shares[:3]), unsealed(store, shares[:3])
    run(a.rotate(T0 + 1))
    dek = os.urandom(32)
    assert run(b.keys.unwrap(run(a.keys.wrap(dek)))) == dek
    assert b.key_status().term == 2


def test_tampered_keyring_is_detected_at_unseal() -> None:
    """A keyring blob altered in the store fails unseal with KeyringCorrupt."""
    store, shares = initialized(3, 2)
    state = store.state
    assert state is not None
    blob = bytearray(state.keyring_blob)
    blob[-1] ^= 1
    store.state = evolve(state, keyring_blob=bytes(blob))
    seal = Seal(store)
    run(seal.submit(shares[0]))
    with pytest.raises(KeyringCorrupt):
        run(seal.submit(shares[1]))
    assert seal.sealed


def test_tampered_root_blob_fails_like_wrong_shares() -> None:
    """An altered sealed root key makes correct shares fail to unseal."""
    store, shares = initialized(3, 2)
    state = store.state
    assert state is not None
    root = state.root
    store.state = evolve(state, root=WrappedKey(root.key_id, root.fingerprint, root.blob[:-1]))
    seal = Seal(store)
    run(seal.submit(shares[0]))
    with pytest.raises(UnsealFailed):
        run(seal.submit(shares[1]))


# -- rekey ------------------------------------------------------------------------------------


def test_rekey_status_before_any_rekey() -> None:
    """No rekey: not started, empty nonce, required = current threshold."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    status = seal.rekey_status()
    assert not status.started and status.nonce == "" and status.required == 3


def test_rekey_replaces_shares_and_root_key() -> None:
    """rekey 5/3 -> 3/2: old shares stop working, new ones unseal, DEKs stay readable."""
    store, old = initialized()
    seal = unsealed(store, old[:3])
    dek = os.urandom(32)
    wrapped = run(seal.keys.wrap(dek))
    before = store.state
    assert before is not None
    started = seal.rekey_init(3, 2)
    assert started.started and started.nonce
    assert (started.shares, started.threshold, started.required) == (3, 2, 3)
    assert not started.verification_required
    assert run(seal.rekey_update(started.nonce, old[4], T0)).progress == 1
    assert seal.rekey_status().progress == 1
    assert store.state == before  # old shares keep working until the rekey completes
    unsealed(store, old[:3])
    run(seal.rekey_update(started.nonce, old[3], T0))
    done = run(seal.rekey_update(started.nonce, old[1], T0))
    assert done.complete and len(done.keys) == 3 and all(len(k) == 33 for k in done.keys)
    assert not seal.rekey_status().started
    after = store.state
    assert after is not None
    assert (after.shares, after.threshold, after.generation) == (3, 2, before.generation + 1)
    assert after.root != before.root and after.keyring_blob != before.keyring_blob
    assert seal.status().threshold == 2 and not seal.sealed

    stale = Seal(store)
    run(stale.submit(old[0]))
    with pytest.raises(UnsealFailed):
        run(stale.submit(old[1]))
    fresh = unsealed(store, list(done.keys[1:]))
    assert run(fresh.keys.unwrap(wrapped)) == dek
    assert fresh.keys.keyring == seal.keys.keyring  # the terms did not change


def test_rekey_needs_the_right_nonce() -> None:
    """A wrong nonce is refused and the message gives the right one, as Vault's does."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    nonce = seal.rekey_init(3, 2).nonce
    with pytest.raises(RekeyError, match=f'incorrect nonce supplied.*"{nonce}"'):
        run(seal.rekey_update("nope", shares[0], T0))
    assert seal.rekey_status().progress == 0


def test_rekey_refuses_a_share_given_twice() -> None:
    """Unlike unseal, a repeated share is an error (Vault's message)."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    nonce = seal.rekey_init(3, 2).nonce
    run(seal.rekey_update(nonce, shares[0], T0))
    with pytest.raises(
        RekeyError, match="given key has already been provided during this generation operation"
    ):
        run(seal.rekey_update(nonce, shares[0], T0))
    assert seal.rekey_status().progress == 1


def test_rekey_wrong_share_resets_progress_only() -> None:
    """At the threshold wrong shares fail; progress resets, the rekey and nonce remain."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    before = store.state
    nonce = seal.rekey_init(3, 2).nonce
    run(seal.rekey_update(nonce, shares[0], T0))
    run(seal.rekey_update(nonce, wrong_share(shares[1]), T0))
    with pytest.raises(RekeyError, match="root key verification failed") as caught:
        run(seal.rekey_update(nonce, shares[2], T0))
    assert not leaks(str(caught.value), shares)
    status = seal.rekey_status()
    assert status.started and status.nonce == nonce and status.progress == 0
    assert store.state == before
    for share in shares[2:]:
        result = run(seal.rekey_update(nonce, share, T0))
    assert result.complete


def test_rekey_validation_and_turns() -> None:
    """Bad config, a second init, no rekey, sealed, and auto seals are refused."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    with pytest.raises(SealConfigError, match="threshold cannot be larger than shares"):
        seal.rekey_init(2, 3)
    with pytest.raises(RekeyError, match="no rekey in progress"):
        run(seal.rekey_update("x", shares[0], T0))
    seal.rekey_init(3, 2)
    with pytest.raises(RekeyError, match="rekey already in progress"):
        seal.rekey_init(3, 2)
    sealed = Seal(store)
    run(sealed.refresh())
    with pytest.raises(Sealed):
        sealed.rekey_init(3, 2)


def test_rekey_cancel_keeps_old_shares() -> None:
    """cancel needs the nonce, ends the rekey, and leaves the stored state alone."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    before = store.state
    nonce = seal.rekey_init(3, 2).nonce
    run(seal.rekey_update(nonce, shares[0], T0))
    with pytest.raises(RekeyError, match="incorrect nonce"):
        seal.rekey_cancel("other")
    seal.rekey_cancel(nonce)
    assert not seal.rekey_status().started
    assert store.state == before
    seal.rekey_cancel("anything")  # nothing to cancel: no error
    assert seal.rekey_init(3, 2).nonce != nonce


def test_seal_cancels_a_rekey() -> None:
    """Sealing drops a rekey in progress, as Vault does."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    seal.rekey_init(3, 2)
    seal.seal()
    assert not seal.rekey_status().started


def test_rekey_with_verification() -> None:
    """New shares take effect only once threshold of them are proven; old ones work till then."""
    store, old = initialized()
    seal = unsealed(store, old[:3])
    before = store.state
    nonce = seal.rekey_init(4, 2, verify=True).nonce
    assert seal.rekey_status().verification_required
    for share in old[:2]:
        run(seal.rekey_update(nonce, share, T0))
    update = run(seal.rekey_update(nonce, old[2], T0))
    assert update.complete and update.verification_required
    assert len(update.keys) == 4 and update.verification_nonce
    assert store.state == before
    unsealed(store, old[2:5])  # old shares still valid

    with pytest.raises(RekeyError, match="verification must be performed"):
        run(seal.rekey_update(nonce, old[3], T0))
    verify = seal.rekey_verify_status()
    assert verify.started and verify.nonce == update.verification_nonce
    assert (verify.shares, verify.threshold, verify.progress) == (4, 2, 0)
    with pytest.raises(RekeyError, match="incorrect nonce"):
        run(seal.rekey_verify(nonce, update.keys[0], T0))

    vnonce = update.verification_nonce
    assert run(seal.rekey_verify(vnonce, update.keys[0], T0)).progress == 1
    with pytest.raises(RekeyError, match="already been provided"):
        run(seal.rekey_verify(vnonce, update.keys[0], T0))
    done = run(seal.rekey_verify(vnonce, update.keys[3], T0))
    assert done.complete
    after = store.state
    assert after is not None and (after.shares, after.threshold) == (4, 2)
    assert not seal.rekey_status().started
    unsealed(store, [update.keys[1], update.keys[2]])


def test_failed_verification_issues_a_new_nonce_and_keeps_the_new_shares() -> None:
    """Wrong new shares: error, new verification nonce, the pending shares still verify."""
    store, old = initialized(3, 2)
    seal = unsealed(store, old[:2])
    nonce = seal.rekey_init(3, 2, verify=True).nonce
    run(seal.rekey_update(nonce, old[0], T0))
    update = run(seal.rekey_update(nonce, old[1], T0))
    vnonce = update.verification_nonce
    run(seal.rekey_verify(vnonce, old[0], T0))  # an old share is not a new one
    with pytest.raises(RekeyError, match="rekey verification failed; incorrect key shares"):
        run(seal.rekey_verify(vnonce, update.keys[0], T0))
    renewed = seal.rekey_verify_status()
    assert renewed.nonce != vnonce and renewed.progress == 0
    unsealed(store, old[1:3])
    run(seal.rekey_verify(renewed.nonce, update.keys[2], T0))
    assert run(seal.rekey_verify(renewed.nonce, update.keys[0], T0)).complete
    unsealed(store, list(update.keys[:2]))


def test_verify_restart_and_out_of_turn() -> None:
    """rekey_verify_restart drops progress and renews the nonce; without verification pending
    the verify calls are refused."""
    store, old = initialized(3, 2)
    seal = unsealed(store, old[:2])
    with pytest.raises(RekeyError, match="no rekey verification in progress"):
        run(seal.rekey_verify("x", old[0], T0))
    with pytest.raises(RekeyError, match="no rekey verification in progress"):
        seal.rekey_verify_restart()
    assert not seal.rekey_verify_status().started
    nonce = seal.rekey_init(2, 2, verify=True).nonce
    run(seal.rekey_update(nonce, old[0], T0))
    update = run(seal.rekey_update(nonce, old[1], T0))
    run(seal.rekey_verify(update.verification_nonce, update.keys[0], T0))
    restarted = seal.rekey_verify_restart()
    assert restarted.progress == 0 and restarted.nonce != update.verification_nonce
    run(seal.rekey_verify(restarted.nonce, update.keys[0], T0))
    assert run(seal.rekey_verify(restarted.nonce, update.keys[1], T0)).complete


def test_rekey_to_one_share() -> None:
    """Rekeying to 1/1 hands out the raw 32-byte unseal key, which alone unseals."""
    store, old = initialized(3, 2)
    seal = unsealed(store, old[:2])
    nonce = seal.rekey_init(1, 1, verify=True).nonce
    run(seal.rekey_update(nonce, old[0], T0))
    update = run(seal.rekey_update(nonce, old[2], T0))
    assert len(update.keys) == 1 and len(update.keys[0]) == 32
    assert run(seal.rekey_verify(update.verification_nonce, update.keys[0], T0)).complete
    unsealed(store, [update.keys[0]])


def test_a_failed_write_leaves_old_shares_valid() -> None:
    """If storing the rekeyed state fails (the process dies), nothing changed: old shares work."""
    store, old = initialized()
    gated = GatedStore(store.state)
    seal = unsealed(gated, old[:3])
    nonce = seal.rekey_init(3, 2).nonce
    run(seal.rekey_update(nonce, old[0], T0))
    run(seal.rekey_update(nonce, old[1], T0))
    gated.fail_with = OSError("database went away")
    with pytest.raises(OSError):
        run(seal.rekey_update(nonce, old[2], T0))
    assert gated.state == store.state
    assert seal.rekey_status().started  # may be retried with the shares again
    restarted = unsealed(gated, old[2:5])
    assert not restarted.rekey_status().started


def test_sealing_while_the_threshold_is_checked_cancels_the_rekey() -> None:
    """A seal() between the last share and its check ends the rekey without a write."""
    store = GatedStore()
    keys = run(Seal(store).init(T0, 3, 2)).keys
    seal = Seal(store)
    for share in keys[:2]:
        run(seal.submit(share))
    nonce = seal.rekey_init(3, 2).nonce
    run(seal.rekey_update(nonce, keys[0], T0))
    gate: Deferred[None] = Deferred()
    store.gate = gate
    failures: list[Any] = []
    Deferred.fromCoroutine(seal.rekey_update(nonce, keys[1], T0)).addErrback(failures.append)
    seal.seal()
    gate.callback(None)
    assert len(failures) == 1 and failures[0].check(Sealed)
    assert store.writes == 1


# -- several instances ------------------------------------------------------------------------


def test_a_peer_follows_a_rekey_and_later_rotations() -> None:
    """After a rekey on A, B (unsealed with the old root key) follows it through the link,
    keeps serving, and can rotate; A follows B's rotation."""
    store, old = initialized()
    a, b = unsealed(store, old[:3]), unsealed(store, old[:3])
    nonce = a.rekey_init(3, 2).nonce
    for share in old[:3]:
        run(a.rekey_update(nonce, share, T0))
    assert run(b.refresh()) is True
    assert not b.sealed
    assert b._root == a._root
    run(b.rotate(T0 + 10))
    run(a.refresh())
    assert a.key_status().term == 2
    dek = os.urandom(32)
    assert run(a.keys.unwrap(run(b.keys.wrap(dek)))) == dek


def test_the_link_expires() -> None:
    """Rotations within ROOT_LINK_LIFETIME keep the link; a later write drops it."""
    store, old = initialized()
    a = unsealed(store, old[:3])
    nonce = a.rekey_init(3, 2).nonce
    for share in old[:3]:
        run(a.rekey_update(nonce, share, T0))
    state = store.state
    assert state is not None and state.root_link and state.root_link_expires == T0 + 3600
    run(a.rotate(T0 + 60))
    assert store.state is not None and store.state.root_link == state.root_link
    run(a.rotate(T0 + ROOT_LINK_LIFETIME))
    assert store.state is not None and store.state.root_link == b""


def test_a_peer_that_cannot_follow_seals_itself() -> None:
    """A peer that missed a rekey whose link is gone seals itself and says so."""
    store, old = initialized()
    a, b = unsealed(store, old[:3]), unsealed(store, old[:3])
    nonce = a.rekey_init(3, 2).nonce
    for share in old[:3]:
        new = run(a.rekey_update(nonce, share, T0))
    run(a.rotate(T0 + ROOT_LINK_LIFETIME + 1))
    with pytest.raises(Sealed, match="rekeyed by another instance"):
        run(b.refresh())
    assert b.sealed
    for share in new.keys[:2]:
        run(b.submit(share))
    assert not b.sealed and b.key_status().term == 2


def test_refresh_reports_changes_only() -> None:
    """refresh is False when nothing changed, True when it did."""
    store, shares = initialized()
    a = unsealed(store, shares[:3])
    assert run(a.refresh()) is False
    run(unsealed(store, shares[:3]).rotate(T0))
    assert run(a.refresh()) is True
    assert run(a.refresh()) is False


def test_a_wiped_store_seals() -> None:
    """If the stored state disappears, the instance seals and reports uninitialized."""
    store, shares = initialized()
    a = unsealed(store, shares[:3])
    store.state = None
    assert run(a.refresh()) is True
    assert a.sealed and not a.status().initialized


def test_a_rekey_elsewhere_makes_our_rekey_shares_fail() -> None:
    """If the seal was rekeyed elsewhere, the old shares no longer pass our rekey."""
    store, old = initialized(3, 2)
    a, b = unsealed(store, old[:2]), unsealed(store, old[:2])
    nonce_b = b.rekey_init(3, 2).nonce
    run(b.rekey_update(nonce_b, old[0], T0))
    nonce_a = a.rekey_init(3, 2).nonce
    run(a.rekey_update(nonce_a, old[0], T0))
    run(a.rekey_update(nonce_a, old[1], T0))
    with pytest.raises(RekeyError, match="root key verification failed"):
        run(b.rekey_update(nonce_b, old[1], T0))
    assert not b.sealed  # b followed the link and is still serving


# -- auto-unseal ------------------------------------------------------------------------------


def auto_provider() -> LocalKeys:
    return LocalKeys([("config-0", bytes([7]) * 32)])


def test_auto_unseal_init_and_restart() -> None:
    """With a provider: no shares, unsealed at once; a restart unseals through the provider."""
    store = MemorySealStore()
    seal = Seal(store, auto_provider())
    result = run(seal.init(T0))
    assert result.keys == () and (result.shares, result.threshold) == (1, 1)
    assert not seal.sealed
    status = seal.status()
    assert status.seal_type == AUTO and (status.shares, status.threshold) == (1, 1)
    dek = os.urandom(32)
    wrapped = run(seal.keys.wrap(dek))
    assert store.state is not None and store.state.root.key_id == "config-0"
    restarted = Seal(store, auto_provider())
    assert run(restarted.unseal_auto()).sealed is False
    assert run(restarted.keys.unwrap(wrapped)) == dek


def test_auto_unseal_refuses_shares_and_rekey() -> None:
    """Auto seals take no shares at init or unseal and cannot be rekeyed."""
    store = MemorySealStore()
    seal = Seal(store, auto_provider())
    with pytest.raises(SealConfigError, match="auto-unseal"):
        run(seal.init(T0, 3, 2))
    run(seal.init(T0))
    with pytest.raises(SealError, match="rekey needs a seal with key shares"):
        seal.rekey_init(3, 2)
    sealed = Seal(store, auto_provider())
    with pytest.raises(SealError, match="takes no key shares"):
        run(sealed.submit(os.urandom(33)))


def test_auto_unseal_with_the_wrong_key_or_none() -> None:
    """Another master key is UnknownKey; no provider configured is a SealError."""
    store = MemorySealStore()
    run(Seal(store, auto_provider()).init(T0))
    with pytest.raises(UnknownKey):
        run(Seal(store, LocalKeys([("config-0", bytes([8]) * 32)])).unseal_auto())
    with pytest.raises(SealError, match="no auto-unseal key is configured"):
        run(Seal(store).unseal_auto())


def test_auto_unseal_of_a_shamir_seal_is_refused() -> None:
    """A stored Shamir seal is not unsealed by a provider."""
    store, _ = initialized()
    with pytest.raises(SealError, match="uses key shares"):
        run(Seal(store, auto_provider()).unseal_auto())


def test_rotate_root_for_auto_seals() -> None:
    """rotate_root replaces the root key; the keyring and DEKs are unchanged."""
    store = MemorySealStore()
    seal = Seal(store, auto_provider())
    run(seal.init(T0))
    dek = os.urandom(32)
    wrapped = run(seal.keys.wrap(dek))
    before = store.state
    run(seal.rotate_root(T0))
    assert store.state is not None and before is not None
    assert store.state.root != before.root and store.state.generation == 2
    restarted = Seal(store, auto_provider())
    run(restarted.unseal_auto())
    assert run(restarted.keys.unwrap(wrapped)) == dek
    shamir_store, shares = initialized()
    with pytest.raises(SealError, match="rekeying"):
        run(unsealed(shamir_store, shares[:3]).rotate_root(T0))


def test_keyring_blob_opens_only_with_the_root_key() -> None:
    """The stored keyring is encrypted under the root key that unseal recovers."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    state = store.state
    assert state is not None and seal._root is not None
    assert Keyring.decrypt(state.keyring_blob, seal._root, state.generation) == seal.keys.keyring


def test_a_pending_verification_cannot_undo_a_rekey_made_elsewhere() -> None:
    """A rekey authorized with shares of an older root key is cancelled at its commit."""
    store, old = initialized(3, 2)
    a, b = unsealed(store, old[:2]), unsealed(store, old[:2])
    nonce_a = a.rekey_init(3, 2, verify=True).nonce
    run(a.rekey_update(nonce_a, old[0], T0))
    pending = run(a.rekey_update(nonce_a, old[1], T0))
    nonce_b = b.rekey_init(3, 2).nonce
    run(b.rekey_update(nonce_b, old[0], T0))
    done_b = run(b.rekey_update(nonce_b, old[1], T0))
    run(a.rekey_verify(pending.verification_nonce, pending.keys[0], T0))
    with pytest.raises(RekeyError, match="rekeyed by another instance meanwhile"):
        run(a.rekey_verify(pending.verification_nonce, pending.keys[1], T0))
    assert not a.rekey_status().started
    unsealed(store, list(done_b.keys[:2]))


def test_refresh_never_steps_back_to_an_older_generation() -> None:
    """A read older than what this instance wrote is ignored (a slow read racing a write)."""
    store, shares = initialized()
    seal = unsealed(store, shares[:3])
    first = store.state
    run(seal.rotate(T0 + 1))
    store.state = first
    assert run(seal.refresh()) is False
    assert seal.key_status().term == 2
