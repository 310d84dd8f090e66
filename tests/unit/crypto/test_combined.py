"""CombinedKeys: a primary provider that wraps, others that only unwrap what they wrapped."""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from Crypto.Cipher import AES
from zope.interface.verify import verifyObject

from s3orch.crypto.combined import CombinedKeys
from s3orch.crypto.keys import (
    SENC1_FINGERPRINT_PREFIX,
    IKeyProvider,
    LocalKeys,
    UnknownKey,
    WrappedKey,
)

T = TypeVar("T")

KEY_A, KEY_B, KEY_C = (bytes([n]) * 32 for n in (1, 2, 3))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (local keys) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


def test_wraps_with_primary_and_unwraps_by_fingerprint() -> None:
    """New DEKs use the primary; DEKs of any provider unwrap through the combination."""
    primary = LocalKeys([("config-0", KEY_A)])
    old = LocalKeys([("config-1", KEY_B), ("config-2", KEY_C)])
    combined = CombinedKeys(primary, [old])
    assert verifyObject(IKeyProvider, combined)
    assert combined.primary_id == "config-0"
    assert combined.key_ids() == {**primary.key_ids(), **old.key_ids()}
    dek_new, dek_old = os.urandom(32), os.urandom(32)
    new = run(combined.wrap(dek_new))
    assert new.fingerprint == primary.primary_fingerprint
    wrapped_old = run(old.wrap(dek_old))
    assert run(combined.unwrap(new)) == dek_new
    assert run(combined.unwrap(wrapped_old)) == dek_old


def test_unknown_fingerprint() -> None:
    """A fingerprint no provider has is UnknownKey listing the configured keys."""
    combined = CombinedKeys(LocalKeys([("config-0", KEY_A)]), [LocalKeys([("config-1", KEY_B)])])
    blob = run(LocalKeys([("config-9", KEY_C)]).wrap(os.urandom(32)))
    with pytest.raises(UnknownKey, match=r"config-0 .*config-1"):
        run(combined.unwrap(blob))


def test_same_key_twice_is_refused() -> None:
    """One key configured in two providers is a configuration error."""
    with pytest.raises(ValueError, match="configured twice"):
        CombinedKeys(LocalKeys([("config-0", KEY_A)]), [LocalKeys([("config-1", KEY_A)])])


def test_senc1_keys_found_in_any_provider() -> None:
    """Go-era DEKs (positional senc1: ids) are tried with each provider until one opens them."""
    combined = CombinedKeys(LocalKeys([("config-0", KEY_A)]), [LocalKeys([("config-1", KEY_B)])])
    dek = os.urandom(32)
    # A Go-era blob: AES-GCM with no additional data, as LocalKeys._unwrap_senc1 reads it.
    nonce = os.urandom(12)
    sealed, tag = AES.new(KEY_B, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(dek)
    blob = nonce + sealed + tag
    senc1 = WrappedKey("config-0", SENC1_FINGERPRINT_PREFIX + "config-0", blob)
    assert run(combined.unwrap(senc1)) == dek
    stranger = WrappedKey("config-0", SENC1_FINGERPRINT_PREFIX + "config-0", b"\0" * len(blob))
    with pytest.raises(UnknownKey):
        run(combined.unwrap(stranger))
