"""Tests for s3orch.crypto.keyring: key terms, the encrypted keyring blob, KeyringKeys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from s3orch.crypto.keyring import (
    BLOB_HEADER_SIZE,
    DEFAULT_MAX_OPERATIONS,
    MIN_MAX_OPERATIONS,
    MIN_ROTATION_INTERVAL,
    REASON_INTERVAL,
    REASON_MAX_OPERATIONS,
    Keyring,
    KeyringCorrupt,
    KeyringKeys,
    KeyStatus,
    KeyTerm,
    RotationConfig,
    RotationConfigError,
    Sealed,
    blob_generation_of,
    parse_fingerprint_term,
    term_fingerprint,
)
from s3orch.crypto.keys import (
    IKeyProvider,
    InvalidWrappedKey,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
)

T = TypeVar("T")

T0 = 1_800_000_000.0
ROOT = bytes(range(32))
DAY = 24 * 3600.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


def fixed_keyring(*terms: int, active: int | None = None) -> Keyring:
    """A keyring with known keys: term n's key is 32 bytes of n."""
    entries = tuple(KeyTerm(n, bytes([n]) * 32, T0 + n) for n in terms)
    return Keyring(entries, active if active is not None else terms[-1])


def every_key_text(keyring: Keyring) -> list[str]:
    """Each term key as it could leak: hex, base64, bytes repr."""
    out = []
    for term in keyring.terms:
        out += [term.key.hex(), base64.b64encode(term.key).decode(), repr(term.key)]
    return out


# -- rotation settings ------------------------------------------------------------------------


def test_rotation_defaults_are_vaults() -> None:
    """max_operations 0.9*2^32 = 3,865,470,566, no interval, enabled."""
    config = RotationConfig()
    assert config.max_operations == DEFAULT_MAX_OPERATIONS == 3_865_470_566
    assert config.interval == 0
    assert config.enabled is True


@pytest.mark.parametrize("value", [0, MIN_MAX_OPERATIONS - 1, DEFAULT_MAX_OPERATIONS + 1, -5])
def test_max_operations_out_of_range_is_refused(value: int) -> None:
    """max_operations outside [1000000, 3865470566] gets Vault's message."""
    with pytest.raises(
        RotationConfigError, match=r"max_operations must be in the range \[1000000,3865470566\]"
    ):
        RotationConfig(max_operations=value)


@pytest.mark.parametrize("value", [1.0, MIN_ROTATION_INTERVAL - 1, -DAY, float("inf")])
def test_interval_under_24h_is_refused(value: float) -> None:
    """A rotation interval other than 0 must be at least 24 hours (Vault's message)."""
    with pytest.raises(RotationConfigError, match="interval must be greater or equal to 24h0m0s"):
        RotationConfig(interval=value)


def test_rotation_bounds_are_accepted() -> None:
    """The bounds themselves are valid."""
    RotationConfig(max_operations=MIN_MAX_OPERATIONS, interval=MIN_ROTATION_INTERVAL)
    RotationConfig(max_operations=DEFAULT_MAX_OPERATIONS, interval=0, enabled=False)


# -- the keyring value ------------------------------------------------------------------------


def test_new_keyring_has_term_one_active() -> None:
    """A new keyring holds one random term, 1, installed now, and is active."""
    keyring = Keyring.new(T0)
    assert [t.term for t in keyring.terms] == [1]
    assert keyring.active_term == 1
    assert keyring.active.install_time == T0
    assert len(keyring.active.key) == 32
    assert Keyring.new(T0).active.key != keyring.active.key


def test_rotated_adds_an_active_term_and_keeps_the_old() -> None:
    """Rotation appends term max+1 with a fresh key; the old keyring value is unchanged."""
    first = Keyring.new(T0)
    second = first.rotated(T0 + 10)
    third = second.rotated(T0 + 20)
    assert [t.term for t in third.terms] == [1, 2, 3]
    assert third.active_term == 3
    assert third.active.install_time == T0 + 20
    assert third.term(1) == first.active
    assert len({t.key for t in third.terms}) == 3
    assert first.active_term == 1 and len(first.terms) == 1


def test_rotation_config_travels_with_the_keyring() -> None:
    """with_rotation replaces the settings; rotation keeps them."""
    config = RotationConfig(max_operations=2_000_000, interval=7 * DAY, enabled=False)
    keyring = Keyring.new(T0).with_rotation(config).rotated(T0 + 1)
    assert keyring.rotation == config


@pytest.mark.parametrize(
    "build",
    [
        lambda: Keyring((), 1),
        lambda: Keyring((KeyTerm(2, b"\x02" * 32, T0), KeyTerm(1, b"\x01" * 32, T0)), 2),
        lambda: Keyring((KeyTerm(1, b"\x01" * 32, T0), KeyTerm(1, b"\x02" * 32, T0)), 1),
        lambda: Keyring((KeyTerm(1, b"\x01" * 32, T0),), 2),
        lambda: KeyTerm(0, b"\x01" * 32, T0),
        lambda: KeyTerm(1, b"\x01" * 16, T0),
    ],
)
def test_inconsistent_keyrings_are_refused(build: Any) -> None:
    """No terms, unordered or repeated terms, a missing active term, term 0, short keys."""
    with pytest.raises(ValueError):
        build()


def test_term_lookup_of_a_missing_term_fails() -> None:
    """Asking for a term the keyring lacks is a LookupError."""
    with pytest.raises(LookupError):
        fixed_keyring(1, 2).term(3)


def test_repr_never_shows_key_material() -> None:
    """repr of terms and keyrings names terms, never keys."""
    keyring = Keyring.new(T0).rotated(T0 + 1)
    shown = repr(keyring) + repr(keyring.terms[0]) + str(keyring.active)
    for text in every_key_text(keyring):
        assert text not in shown


def test_serialization_round_trips() -> None:
    """to_bytes then from_bytes gives an equal keyring."""
    keyring = Keyring.new(T0, RotationConfig(max_operations=5_000_000, interval=DAY)).rotated(T0)
    assert Keyring.from_bytes(keyring.to_bytes()) == keyring


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"active_term":1,"terms":[],"rotation":{}}',
        b'{"active_term":1,"terms":[{"term":1,"key":"AAAA","install_time":1}],'
        b'"rotation":{"max_operations":1000000,"interval":0,"enabled":true}}',
        b'{"active_term":"1","terms":[{"term":1,"key":"' + base64.b64encode(b"k" * 32) + b'",'
        b'"install_time":1}],"rotation":{"max_operations":1000000,"interval":0,"enabled":true}}',
        b'{"active_term":1,"terms":[{"term":1,"key":"' + base64.b64encode(b"k" * 32) + b'",'
        b'"install_time":1}],"rotation":{"max_operations":5,"interval":0,"enabled":true}}',
    ],
)
def test_malformed_plaintext_is_keyring_corrupt(data: bytes) -> None:
    """Anything but a well-formed keyring document is KeyringCorrupt, never another error."""
    with pytest.raises(KeyringCorrupt):
        Keyring.from_bytes(data)


# -- the encrypted blob -----------------------------------------------------------------------


def test_blob_round_trips_under_the_root_key() -> None:
    """encrypt then decrypt with the same root key and generation gives the keyring back."""
    keyring = Keyring.new(T0).rotated(T0 + 5)
    blob = keyring.encrypt(ROOT, 7)
    assert blob[:4] == b"S3KR" and blob[4] == 1
    assert blob_generation_of(blob) == 7
    assert Keyring.decrypt(blob, ROOT, 7) == keyring
    assert Keyring.decrypt(blob, ROOT) == keyring


def test_blob_format_matches_an_independent_decryption() -> None:
    """The blob is header || nonce || AES-256-GCM(root, aad = label || header)."""
    keyring = fixed_keyring(1, 2)
    blob = keyring.encrypt(ROOT, 3)
    header, nonce = blob[:BLOB_HEADER_SIZE], blob[BLOB_HEADER_SIZE : BLOB_HEADER_SIZE + 12]
    body, tag = blob[BLOB_HEADER_SIZE + 12 : -16], blob[-16:]
    cipher = AES.new(ROOT, AES.MODE_GCM, nonce=nonce)
    cipher.update(b"s3orch keyring\x00" + header)
    assert cipher.decrypt_and_verify(body, tag) == keyring.to_bytes()


def test_blob_is_fresh_each_time_and_hides_the_keys() -> None:
    """Two encryptions differ (random nonce) and contain no key in any encoding."""
    keyring = fixed_keyring(1, 2)
    first, second = keyring.encrypt(ROOT, 1), keyring.encrypt(ROOT, 1)
    assert first != second
    for term in keyring.terms:
        assert term.key not in first
        assert base64.b64encode(term.key) not in first


def test_wrong_root_key_fails() -> None:
    """Another root key cannot open the blob."""
    blob = Keyring.new(T0).encrypt(ROOT, 1)
    with pytest.raises(KeyringCorrupt, match="failed authentication"):
        Keyring.decrypt(blob, os.urandom(32), 1)


def test_every_bit_flip_is_detected() -> None:
    """Flipping any single bit anywhere in the blob makes it fail."""
    blob = fixed_keyring(1).encrypt(ROOT, 2)
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            damaged = bytearray(blob)
            damaged[index] ^= bit
            with pytest.raises(KeyringCorrupt):
                Keyring.decrypt(bytes(damaged), ROOT)


@settings(max_examples=100)
@given(cut=st.integers(min_value=0, max_value=400))
def test_truncation_is_detected(cut: int) -> None:
    """Any shortened blob fails."""
    blob = fixed_keyring(1).encrypt(ROOT, 2)
    with pytest.raises(KeyringCorrupt):
        Keyring.decrypt(blob[: min(cut, len(blob) - 1)], ROOT)


def test_generation_is_bound() -> None:
    """A blob stored for one generation is refused for another, even with its header edited."""
    blob = fixed_keyring(1).encrypt(ROOT, 4)
    with pytest.raises(KeyringCorrupt, match="generation 4, not 5"):
        Keyring.decrypt(blob, ROOT, 5)
    edited = blob[:5] + (5).to_bytes(8, "big") + blob[13:]
    with pytest.raises(KeyringCorrupt, match="failed authentication"):
        Keyring.decrypt(edited, ROOT, 5)


def test_foreign_blobs_are_refused() -> None:
    """Wrong magic or format version is refused before decryption."""
    blob = fixed_keyring(1).encrypt(ROOT, 1)
    with pytest.raises(KeyringCorrupt, match="wrong magic"):
        Keyring.decrypt(b"XXXX" + blob[4:], ROOT)
    with pytest.raises(KeyringCorrupt, match="format 2"):
        Keyring.decrypt(blob[:4] + b"\x02" + blob[5:], ROOT)


def test_errors_never_contain_key_material() -> None:
    """Failures name the problem, never the keys or the root key."""
    keyring = fixed_keyring(1, 2)
    blob = keyring.encrypt(ROOT, 1)
    with pytest.raises(KeyringCorrupt) as caught:
        Keyring.decrypt(blob, os.urandom(32), 1)
    for text in [*every_key_text(keyring), ROOT.hex()]:
        assert text not in str(caught.value)


# -- KeyringKeys ------------------------------------------------------------------------------


def test_keyring_keys_is_a_key_provider() -> None:
    """KeyringKeys provides IKeyProvider."""
    assert verifyObject(IKeyProvider, KeyringKeys(fixed_keyring(1)))


def test_fingerprint_names_the_term_and_hides_the_key() -> None:
    """keyring:<term>:<32 hex of HMAC-SHA256(key, label)>, different per term."""
    key = bytes([9]) * 32
    expected = hmac.new(key, b"s3orch keyring term id", hashlib.sha256).hexdigest()[:32]
    assert term_fingerprint(4, key) == f"keyring:4:{expected}"
    keyring = fixed_keyring(1, 2)
    assert keyring.terms[0].fingerprint != keyring.terms[1].fingerprint
    assert key.hex() not in term_fingerprint(4, key)


def test_wrap_uses_the_active_term() -> None:
    """New DEKs are wrapped by the active term: key id keyring-<term>, its fingerprint."""
    keyring = fixed_keyring(1, 2, 3, active=2)
    keys = KeyringKeys(keyring)
    wrapped = run(keys.wrap(os.urandom(32)))
    assert wrapped.key_id == "keyring-2" == keys.primary_id
    assert wrapped.fingerprint == keyring.term(2).fingerprint == keys.primary_fingerprint
    assert len(wrapped.blob) == 60


def test_wrap_format_is_the_local_wrap_under_the_term_key() -> None:
    """blob = nonce || AES-GCM(term key, aad = 's3orch DEK wrap v1' 0 || fingerprint, DEK)."""
    keyring = fixed_keyring(1)
    dek = os.urandom(32)
    wrapped = KeyringKeys(keyring).wrap_sync(dek)
    cipher = AES.new(keyring.active.key, AES.MODE_GCM, nonce=wrapped.blob[:12])
    cipher.update(b"s3orch DEK wrap v1\x00" + wrapped.fingerprint.encode())
    assert cipher.decrypt_and_verify(wrapped.blob[12:-16], wrapped.blob[-16:]) == dek


def test_old_terms_keep_unwrapping_after_rotation() -> None:
    """A DEK wrapped under term 1 unwraps after rotation; new DEKs go to term 2."""
    keyring = Keyring.new(T0)
    keys = KeyringKeys(keyring)
    dek = os.urandom(32)
    old = run(keys.wrap(dek))
    keys.load(keyring.rotated(T0 + 1))
    assert run(keys.unwrap(old)) == dek
    new = run(keys.wrap(dek))
    assert new.key_id == "keyring-2"
    assert run(keys.unwrap(new)) == dek
    assert sorted(keys.key_ids().values()) == ["keyring-1", "keyring-2"]


def test_unwrap_goes_by_fingerprint_not_key_id() -> None:
    """A stale operator label does not matter; the fingerprint does."""
    keys = KeyringKeys(fixed_keyring(1, 2))
    dek = os.urandom(32)
    wrapped = keys.wrap_sync(dek)
    assert keys.unwrap_sync(WrappedKey("config-0", wrapped.fingerprint, wrapped.blob)) == dek


def test_unknown_fingerprint_is_unknown_key() -> None:
    """A DEK from a key the keyring lacks is UnknownKey, never a try with another term."""
    keys = KeyringKeys(fixed_keyring(1, 2))
    wrapped = KeyringKeys(fixed_keyring(5)).wrap_sync(os.urandom(32))
    with pytest.raises(UnknownKey) as caught:
        keys.unwrap_sync(wrapped)
    assert caught.value.key_id == "keyring-5"
    assert "terms 1 to 2" in str(caught.value)


def test_tampered_or_relabelled_blob_is_invalid() -> None:
    """A flipped bit, a short blob, or a blob presented under another term all fail."""
    keyring = fixed_keyring(1, 2)
    keys = KeyringKeys(keyring)
    wrapped = keys.wrap_sync(os.urandom(32))
    flipped = bytes([wrapped.blob[0] ^ 1]) + wrapped.blob[1:]
    for blob, fp in [
        (flipped, wrapped.fingerprint),
        (wrapped.blob[:-1], wrapped.fingerprint),
        (wrapped.blob, keyring.term(1).fingerprint),
    ]:
        with pytest.raises(InvalidWrappedKey):
            keys.unwrap_sync(WrappedKey("keyring-2", fp, blob))


def test_wrap_refuses_a_dek_of_the_wrong_size() -> None:
    """Only 32-byte DEKs are wrapped."""
    with pytest.raises(ValueError):
        KeyringKeys(fixed_keyring(1)).wrap_sync(b"short")


def test_sealed_provider_raises_sealed_503() -> None:
    """With no keyring loaded (or after clear) wrap and unwrap raise Sealed (KeyUnavailable)."""
    keys = KeyringKeys(fixed_keyring(1))
    wrapped = keys.wrap_sync(os.urandom(32))
    keys.clear()
    assert keys.sealed
    for call in (lambda: keys.wrap_sync(os.urandom(32)), lambda: keys.unwrap_sync(wrapped)):
        with pytest.raises(Sealed, match="s3orch is sealed") as caught:
            call()
        assert isinstance(caught.value, KeyUnavailable)
    assert keys.primary_id == "keyring"
    assert keys.key_ids() == {}
    assert repr(keys) == "<KeyringKeys sealed>"
    with pytest.raises(Sealed):
        keys.key_status()
    with pytest.raises(Sealed):
        run(KeyringKeys().wrap(os.urandom(32)))


def test_provider_repr_hides_keys() -> None:
    """repr names the active term only."""
    keyring = fixed_keyring(1, 2)
    shown = repr(KeyringKeys(keyring))
    assert shown == "<KeyringKeys active=keyring-2 terms=2>"


# -- counting and rotation --------------------------------------------------------------------


def test_wraps_are_counted_per_term() -> None:
    """Each wrap counts against the active term; a new term starts at zero."""
    keyring = Keyring.new(T0)
    keys = KeyringKeys(keyring)
    for _ in range(3):
        keys.wrap_sync(os.urandom(32))
    assert keys.encryptions() == 3
    keys.load(keyring.rotated(T0 + 1))
    assert keys.encryptions() == 0
    keys.wrap_sync(os.urandom(32))
    assert keys.encryptions(1) == 3 and keys.encryptions(2) == 1
    assert keys.key_status() == KeyStatus(2, T0 + 1, 1)


def test_unwrap_is_not_counted() -> None:
    """Only encryptions count towards the AES-GCM limit."""
    keys = KeyringKeys(fixed_keyring(1))
    wrapped = keys.wrap_sync(os.urandom(32))
    for _ in range(5):
        keys.unwrap_sync(wrapped)
    assert keys.encryptions() == 1


def test_flushing_counts() -> None:
    """take_unflushed hands over the deltas once; persisted totals plus new wraps add up."""
    keys = KeyringKeys(fixed_keyring(1))
    keys.wrap_sync(os.urandom(32))
    keys.wrap_sync(os.urandom(32))
    taken = keys.take_unflushed()
    assert taken == {1: 2}
    assert keys.take_unflushed() == {}
    assert keys.encryptions() == 0  # until the caller reports the stored total
    keys.record_persisted(1, 1_000 + 2)  # other instances wrapped 1,000
    keys.wrap_sync(os.urandom(32))
    assert keys.encryptions() == 1_003


def test_counts_that_could_not_be_stored_are_put_back() -> None:
    """restore_unflushed returns a failed flush to the next one."""
    keys = KeyringKeys(fixed_keyring(1))
    keys.wrap_sync(os.urandom(32))
    taken = keys.take_unflushed()
    keys.wrap_sync(os.urandom(32))
    keys.restore_unflushed(taken)
    assert keys.take_unflushed() == {1: 2}


def test_counts_survive_sealing() -> None:
    """Clearing the keys keeps unflushed counts for the next flush."""
    keyring = fixed_keyring(1)
    keys = KeyringKeys(keyring)
    keys.wrap_sync(os.urandom(32))
    keys.clear()
    assert keys.take_unflushed() == {1: 1}


def test_rotation_due_after_max_operations() -> None:
    """Due once the active term has max_operations wraps, with the reason."""
    config = RotationConfig(max_operations=MIN_MAX_OPERATIONS)
    keys = KeyringKeys(Keyring.new(T0, config))
    keys.record_persisted(1, MIN_MAX_OPERATIONS - 1)
    assert not keys.rotation_due(T0)
    keys.wrap_sync(os.urandom(32))
    assert keys.rotation_due(T0)
    assert keys.rotation_reason(T0) == REASON_MAX_OPERATIONS == "reached max operations"


def test_rotation_due_after_interval() -> None:
    """Due once the active term is older than the interval; never without one."""
    keys = KeyringKeys(Keyring.new(T0, RotationConfig(interval=2 * DAY)))
    assert not keys.rotation_due(T0 + 2 * DAY - 1)
    assert keys.rotation_reason(T0 + 2 * DAY) == REASON_INTERVAL
    assert not KeyringKeys(Keyring.new(T0)).rotation_due(T0 + 10_000 * DAY)


def test_disabled_rotation_still_counts() -> None:
    """enabled=False: never due, but wraps are still counted."""
    config = RotationConfig(max_operations=MIN_MAX_OPERATIONS, interval=DAY, enabled=False)
    keys = KeyringKeys(Keyring.new(T0, config))
    keys.record_persisted(1, MIN_MAX_OPERATIONS)
    keys.wrap_sync(os.urandom(32))
    assert keys.encryptions() == MIN_MAX_OPERATIONS + 1
    assert keys.rotation_reason(T0 + 5 * DAY) is None


def test_rotation_due_while_sealed_is_sealed() -> None:
    """A sealed provider cannot judge rotation."""
    with pytest.raises(Sealed):
        KeyringKeys().rotation_due(T0)


# -- following other instances ----------------------------------------------------------------


def test_unwrap_of_a_newer_term_refreshes_once() -> None:
    """A DEK from a term created elsewhere a moment ago triggers one refresh, then unwraps."""
    keyring = Keyring.new(T0)
    newer = keyring.rotated(T0 + 1)
    calls = []

    async def refresh() -> None:
        calls.append(1)
        keys.load(newer)

    keys = KeyringKeys(keyring, refresh=refresh)
    dek = os.urandom(32)
    wrapped = KeyringKeys(newer).wrap_sync(dek)
    assert run(keys.unwrap(wrapped)) == dek
    assert calls == [1]
    assert run(keys.unwrap(wrapped)) == dek
    assert calls == [1]


def test_unknown_older_or_foreign_fingerprints_do_not_refresh() -> None:
    """Only a keyring fingerprint with a newer term number is worth a refresh."""
    calls = []

    async def refresh() -> None:
        calls.append(1)

    keys = KeyringKeys(fixed_keyring(2, 3), refresh=refresh)
    for fp in ["keyring:1:" + "0" * 32, "local:" + "0" * 32, "keyring:x:y"]:
        with pytest.raises(UnknownKey):
            run(keys.unwrap(WrappedKey("k", fp, b"\x00" * 60)))
    assert calls == []
    with pytest.raises(UnknownKey):
        run(keys.unwrap(WrappedKey("k", "keyring:9:" + "0" * 32, b"\x00" * 60)))
    assert calls == [1]


@pytest.mark.parametrize(
    ("fingerprint", "term"),
    [
        ("keyring:1:abc", 1),
        ("keyring:42:" + "f" * 32, 42),
        ("keyring:abc", None),
        ("keyring::abc", None),
        ("keyring:-1:abc", None),
        ("local:abcd", None),
        ("keyring:" + "9" * 13 + ":a", None),
    ],
)
def test_parse_fingerprint_term(fingerprint: str, term: int | None) -> None:
    """The term number is read from keyring fingerprints only."""
    assert parse_fingerprint_term(fingerprint) == term
