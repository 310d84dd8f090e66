"""CombinedKeys over keys that change: a keyring that is sealed, unsealed and rotated."""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from Crypto.Cipher import AES

from s3orch.crypto.combined import CombinedKeys
from s3orch.crypto.keyring import Keyring, KeyringKeys, Sealed
from s3orch.crypto.keys import SENC1_FINGERPRINT_PREFIX, LocalKeys, UnknownKey, WrappedKey

T = TypeVar("T")
T0 = 1_800_000_000.0
OLD_KEY = bytes([9]) * 32


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


def test_keyring_primary_follows_seal_and_rotation() -> None:
    """Built while sealed, the combination wraps and unwraps with terms loaded later."""
    keyring = KeyringKeys()
    old = LocalKeys([("config-1", OLD_KEY)])
    combined = CombinedKeys(keyring, [old])
    dek = os.urandom(32)
    old_wrapped = run(old.wrap(dek))
    with pytest.raises(Sealed):
        run(combined.wrap(dek))
    assert run(combined.unwrap(old_wrapped)) == dek  # the old key needs no unseal

    ring = Keyring.new(T0)
    keyring.load(ring)
    assert combined.primary_id == "keyring-1"
    first = run(combined.wrap(dek))
    assert first.key_id == "keyring-1"
    keyring.load(ring.rotated(T0 + 1))
    second = run(combined.wrap(dek))
    assert second.key_id == "keyring-2"
    assert set(combined.key_ids().values()) == {"keyring-1", "keyring-2", "config-1"}
    assert run(combined.unwrap(first)) == run(combined.unwrap(second)) == dek

    keyring.clear()
    with pytest.raises(Sealed):
        run(combined.unwrap(first))
    assert run(combined.unwrap(old_wrapped)) == dek


def test_keyring_behind_a_master_key() -> None:
    """A decrypt-only keyring among the others: its DEKs open while it is unsealed."""
    keyring = KeyringKeys()
    combined = CombinedKeys(LocalKeys([("config-0", OLD_KEY)]), [keyring])
    keyring.load(Keyring.new(T0))
    dek = os.urandom(32)
    wrapped = run(keyring.wrap(dek))
    assert run(combined.unwrap(wrapped)) == dek
    assert run(combined.wrap(dek)).key_id == "config-0"
    keyring.clear()
    with pytest.raises(Sealed):
        run(combined.unwrap(wrapped))


def test_unknown_key_with_an_unsealed_keyring() -> None:
    """A fingerprint nobody has is UnknownKey listing every key, the terms included."""
    keyring = KeyringKeys(Keyring.new(T0))
    combined = CombinedKeys(keyring, [LocalKeys([("config-1", OLD_KEY)])])
    stranger = run(LocalKeys([("config-9", bytes(32))]).wrap(os.urandom(32)))
    with pytest.raises(UnknownKey, match=r"keyring-1 .*config-1"):
        run(combined.unwrap(stranger))


def test_go_era_key_opens_while_the_keyring_is_sealed() -> None:
    """A SENC v1 DEK of an old local key reads even with the keyring sealed."""
    combined = CombinedKeys(KeyringKeys(), [LocalKeys([("config-1", OLD_KEY)])])
    dek, nonce = os.urandom(32), os.urandom(12)
    sealed, tag = AES.new(OLD_KEY, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(dek)
    senc1 = WrappedKey("config-0", SENC1_FINGERPRINT_PREFIX + "config-0", nonce + sealed + tag)
    assert run(combined.unwrap(senc1)) == dek
