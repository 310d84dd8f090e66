"""Tests for s3orch.crypto.keys: key material, fingerprints, and local DEK wrapping."""

from __future__ import annotations

import base64
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from Crypto.Cipher import AES
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from s3orch.config import EncryptionConfig
from s3orch.crypto.envelope import new_dek
from s3orch.crypto.keys import (
    AesGcm,
    IKeyProvider,
    InvalidWrappedKey,
    KeyMaterialError,
    LocalKeys,
    UnknownKey,
    WrappedKey,
    decode_key,
    fingerprint,
    generate_key,
    read_key_file,
    vault_fingerprint,
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


def key_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "master.key"
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


# -- key material ------------------------------------------------------------------------------


def test_generate_key_is_base64_of_32_random_bytes() -> None:
    """keygen output decodes to 32 bytes and differs each time."""
    first, second = generate_key(), generate_key()
    assert len(base64.b64decode(first, validate=True)) == 32
    assert decode_key(first) != decode_key(second)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(bytes(32)).decode()[:-1], "not valid base64"),
        (base64.b64encode(bytes(31)).decode(), "decodes to 31 bytes"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
        ("", "decodes to 0 bytes"),
        (" " + base64.b64encode(bytes(32)).decode(), "not valid base64"),
        ("ключ", "not valid base64"),
    ],
)
def test_bad_key_text_is_explained_without_quoting_it(text: str, reason: str) -> None:
    """Invalid base64 or a wrong length is a KeyMaterialError that never contains the text."""
    with pytest.raises(KeyMaterialError, match=reason) as caught:
        decode_key(text)
    if text.strip():
        assert text.strip() not in str(caught.value)


def test_fingerprint_is_stable_distinct_and_not_the_key() -> None:
    """A fingerprint depends only on the key, differs between keys and reveals nothing of it."""
    assert fingerprint(KEY_A) == fingerprint(bytes(KEY_A))
    assert fingerprint(KEY_A) != fingerprint(KEY_B)
    assert fingerprint(KEY_A).startswith("local:")
    assert len(fingerprint(KEY_A)) == len("local:") + 32
    assert KEY_A.hex() not in fingerprint(KEY_A)


def test_vault_fingerprint_matches_the_go_key_id() -> None:
    """A Vault fingerprint is the Go system's Vault key id, so its rows need no mapping."""
    assert vault_fingerprint("transit", "s3-orchestrator") == "vault:transit/s3-orchestrator"
    assert vault_fingerprint("/transit/", "k") == "vault:transit/k"


def test_key_file_round_trip(tmp_path: Path) -> None:
    """A 32-byte file with mode 0600 (or 0400) is read as the key."""
    assert read_key_file(key_file(tmp_path, KEY_A)) == KEY_A
    assert read_key_file(key_file(tmp_path, KEY_B, 0o400)) == KEY_B


@pytest.mark.parametrize(
    ("data", "mode", "reason"),
    [
        (KEY_A, 0o644, r"accessible by group or others \(mode 0644\)"),
        (KEY_A, 0o640, "mode 0640"),
        (KEY_A, 0o602, "mode 0602"),
        (KEY_A[:31], 0o600, "holds 31 bytes"),
        (KEY_A + b"\n", 0o600, "holds more than 32 bytes"),
        (b"", 0o600, "holds 0 bytes"),
        (base64.b64encode(KEY_A) + b"\n", 0o600, "looks like base64 text"),
    ],
)
def test_bad_key_files_are_explained(tmp_path: Path, data: bytes, mode: int, reason: str) -> None:
    """Loose permissions, a wrong size or base64 text in the file are clear errors."""
    with pytest.raises(KeyMaterialError, match=reason) as caught:
        read_key_file(key_file(tmp_path, data, mode))
    assert base64.b64encode(KEY_A).decode() not in str(caught.value)


def test_missing_key_file_and_directory(tmp_path: Path) -> None:
    """A missing path or a directory is refused with a reason."""
    with pytest.raises(KeyMaterialError, match="does not exist"):
        read_key_file(str(tmp_path / "absent.key"))
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyMaterialError, match="not a regular file"):
        read_key_file(str(directory))


def test_aes_gcm_seals_opens_and_refuses_anything_altered() -> None:
    """AesGcm is standard AES-256-GCM; an altered message, AAD or nonce opens to None."""
    cipher = AesGcm(KEY_A)
    nonce = bytes(12)
    sealed = cipher.seal(nonce, b"plaintext", b"aad")
    reference = AES.new(KEY_A, AES.MODE_GCM, nonce=nonce)
    reference.update(b"aad")
    assert sealed == b"".join(reference.encrypt_and_digest(b"plaintext"))
    assert cipher.open(nonce, sealed, b"aad") == b"plaintext"
    assert cipher.open(nonce, memoryview(bytearray(sealed)), b"aad") == b"plaintext"
    assert cipher.open(nonce, sealed, b"aaD") is None
    assert cipher.open(bytes(11) + b"\x01", sealed, b"aad") is None
    assert cipher.open(nonce, sealed[:-1], b"aad") is None
    assert cipher.open(nonce, sealed[:15], b"aad") is None
    assert cipher.open(nonce, bytes([sealed[0] ^ 1]) + sealed[1:], b"aad") is None
    assert repr(cipher) == "<AesGcm>"
    with pytest.raises(ValueError):
        AesGcm(bytes(16))


# -- wrapping ----------------------------------------------------------------------------------


def test_local_keys_provide_the_interface() -> None:
    """LocalKeys implements IKeyProvider."""
    assert verifyObject(IKeyProvider, LocalKeys([("config-0", KEY_A)]))


def test_wrap_unwrap_round_trip_sync_and_async() -> None:
    """A wrapped DEK names the primary and unwraps to the same DEK."""
    keys = LocalKeys([("config-0", KEY_A), ("config-1", KEY_B)])
    dek = new_dek()
    wrapped = run(keys.wrap(dek))
    assert (wrapped.key_id, wrapped.fingerprint) == ("config-0", fingerprint(KEY_A))
    assert len(wrapped.blob) == 60
    assert run(keys.unwrap(wrapped)) == dek
    assert keys.unwrap_sync(keys.wrap_sync(dek)) == dek
    assert keys.wrap_sync(dek).blob != wrapped.blob  # fresh nonce each time


def test_wrap_format_is_gcm_with_fingerprint_aad() -> None:
    """The blob is nonce || AES-256-GCM(DEK) || tag, AAD = purpose label + fingerprint."""
    keys = LocalKeys([("config-0", KEY_A)])
    dek = new_dek()
    blob = keys.wrap_sync(dek).blob
    cipher = AES.new(KEY_A, AES.MODE_GCM, nonce=blob[:12])
    cipher.update(b"s3orch DEK wrap v1\x00" + fingerprint(KEY_A).encode())
    assert cipher.decrypt_and_verify(blob[12:44], blob[44:]) == dek


def test_moving_the_primary_into_previous_keys_keeps_dek_readable() -> None:
    """After rotation (new master_key, old one in previous_keys) old DEKs still unwrap."""
    before = LocalKeys([("config-0", KEY_A)])
    dek = new_dek()
    wrapped = before.wrap_sync(dek)
    after = LocalKeys([("config-0", KEY_B), ("config-1", KEY_A)])
    assert wrapped.key_id == "config-0"  # the stale label the DB keeps
    assert after.unwrap_sync(wrapped) == dek
    assert after.wrap_sync(dek).fingerprint == fingerprint(KEY_B)


def test_file_key_moved_to_previous_keys_keeps_dek_readable(tmp_path: Path) -> None:
    """A DEK wrapped by file-0 unwraps once that key is an inline previous key."""
    path = key_file(tmp_path, KEY_A)
    with_file = LocalKeys.from_config(EncryptionConfig(enabled=True, master_key_file=path))
    wrapped = with_file.wrap_sync(dek := new_dek())
    assert wrapped.key_id == "file-0"
    inline = LocalKeys.from_config(
        EncryptionConfig(enabled=True, master_key=KEY_B, previous_keys=(KEY_A,))
    )
    assert inline.key_ids() == {fingerprint(KEY_B): "config-0", fingerprint(KEY_A): "config-1"}
    assert inline.unwrap_sync(wrapped) == dek


def test_unknown_key_is_a_clear_error_never_a_fallback() -> None:
    """A DEK whose key is not configured raises UnknownKey naming its id and fingerprint."""
    wrapped = LocalKeys([("config-0", KEY_A)]).wrap_sync(new_dek())
    other = LocalKeys([("config-0", KEY_B), ("config-1", KEY_C)])
    with pytest.raises(UnknownKey) as caught:
        other.unwrap_sync(wrapped)
    assert isinstance(caught.value, LookupError)
    assert caught.value.key_id == "config-0"
    assert caught.value.fingerprint == fingerprint(KEY_A)
    message = str(caught.value)
    assert "config-0" in message and fingerprint(KEY_A) in message
    assert "not configured" in message


def test_relabelled_or_altered_blob_fails() -> None:
    """A blob claimed by another configured key, or altered in any byte, does not unwrap."""
    keys = LocalKeys([("config-0", KEY_A), ("config-1", KEY_B)])
    wrapped = keys.wrap_sync(new_dek())
    relabelled = WrappedKey("config-1", fingerprint(KEY_B), wrapped.blob)
    with pytest.raises(InvalidWrappedKey):
        keys.unwrap_sync(relabelled)
    for i in range(len(wrapped.blob)):
        blob = bytearray(wrapped.blob)
        blob[i] ^= 0x01
        with pytest.raises(InvalidWrappedKey):
            keys.unwrap_sync(WrappedKey(wrapped.key_id, wrapped.fingerprint, bytes(blob)))
    with pytest.raises(InvalidWrappedKey):
        keys.unwrap_sync(WrappedKey(wrapped.key_id, wrapped.fingerprint, wrapped.blob[:-1]))


def test_wrong_sized_dek_and_duplicate_keys_are_refused() -> None:
    """Only 32-byte DEKs wrap; a key listed twice (or an id used twice) is refused."""
    keys = LocalKeys([("config-0", KEY_A)])
    with pytest.raises(ValueError):
        keys.wrap_sync(bytes(16))
    with pytest.raises(ValueError, match="same key"):
        LocalKeys([("config-0", KEY_A), ("config-1", KEY_A)])
    with pytest.raises(ValueError, match="used twice"):
        LocalKeys([("config-0", KEY_A), ("config-0", KEY_B)])
    with pytest.raises(ValueError):
        LocalKeys([("config-0", bytes(31))])
    with pytest.raises(ValueError):
        LocalKeys([])


def test_from_config_ids_follow_the_go_convention(tmp_path: Path) -> None:
    """master_key is config-0, master_key_file is file-0, previous keys are config-1…"""
    inline = LocalKeys.from_config(
        EncryptionConfig(enabled=True, master_key=KEY_A, previous_keys=(KEY_B, KEY_C))
    )
    assert inline.primary_id == "config-0"
    assert sorted(inline.key_ids().values()) == ["config-0", "config-1", "config-2"]
    path = key_file(tmp_path, KEY_A)
    from_file = LocalKeys.from_config(
        EncryptionConfig(enabled=True, master_key_file=path, previous_keys=(KEY_B,))
    )
    assert from_file.primary_id == "file-0"
    assert from_file.key_ids() == {fingerprint(KEY_A): "file-0", fingerprint(KEY_B): "config-1"}


def test_from_config_reports_a_bad_file_by_field(tmp_path: Path) -> None:
    """A key file that went bad after validation fails naming the field."""
    path = key_file(tmp_path, KEY_A, 0o644)
    with pytest.raises(KeyMaterialError, match=r"encryption\.master_key_file is accessible"):
        LocalKeys.from_config(EncryptionConfig(enabled=True, master_key_file=path))
    with pytest.raises(ValueError, match="no local master key"):
        LocalKeys.from_config(EncryptionConfig())


def test_repr_shows_ids_and_fingerprints_never_keys() -> None:
    """repr() lists key ids and fingerprints and no key bytes."""
    keys = LocalKeys([("config-0", os.urandom(32)), ("config-1", KEY_B)])
    text = repr(keys)
    assert "config-0" in text and fingerprint(KEY_B) in text
    assert repr(KEY_B) not in text and KEY_B.hex() not in text
    wrapped = keys.wrap_sync(new_dek())
    assert "<60 bytes>" in repr(wrapped)


# -- SENC v1 (Go) wrapped DEKs ---------------------------------------------------------------


def go_wrap(key: bytes, dek: bytes) -> bytes:
    """How the Go system wraps: random nonce, no AAD, nonce || ct || tag."""
    nonce = os.urandom(12)
    sealed, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(dek)
    return nonce + sealed + tag


def test_senc1_wrapped_dek_unwraps_by_position() -> None:
    """A Go row wrapped by config-0 unwraps with the key now at config-0."""
    dek = new_dek()
    wrapped = WrappedKey("config-0", "senc1:config-0", go_wrap(KEY_A, dek))
    assert LocalKeys([("config-0", KEY_A), ("config-1", KEY_B)]).unwrap_sync(wrapped) == dek


def test_senc1_wrapped_dek_survives_the_rotation_procedure() -> None:
    """After the documented rotation the Go label config-0 points at the new key; the DEK
    still unwraps with the old key, now config-1 (the Go system's P0 bug does not recur)."""
    dek = new_dek()
    wrapped = WrappedKey("config-0", "senc1:config-0", go_wrap(KEY_A, dek))
    rotated = LocalKeys([("config-0", KEY_B), ("config-1", KEY_A)])
    assert rotated.unwrap_sync(wrapped) == dek


def test_senc1_wrapped_dek_without_its_key_is_unknown() -> None:
    """A Go DEK that no configured key opens raises UnknownKey; a bad size is invalid."""
    wrapped = WrappedKey("file-0", "senc1:file-0", go_wrap(KEY_C, new_dek()))
    with pytest.raises(UnknownKey, match="file-0"):
        LocalKeys([("config-0", KEY_A), ("config-1", KEY_B)]).unwrap_sync(wrapped)
    with pytest.raises(InvalidWrappedKey):
        LocalKeys([("config-0", KEY_C)]).unwrap_sync(
            WrappedKey("file-0", "senc1:file-0", wrapped.blob[:-1])
        )


def test_vault_wrapped_dek_is_unknown_to_local_keys() -> None:
    """A Vault-wrapped DEK is not guessed at by local keys."""
    wrapped = WrappedKey("k", vault_fingerprint("transit", "k"), b"vault:v1:abc")
    with pytest.raises(UnknownKey):
        LocalKeys([("config-0", KEY_A)]).unwrap_sync(wrapped)


@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    plaintext=st.binary(max_size=5000),
    aad=st.binary(max_size=100),
)
def test_aes_gcm_agrees_with_pycryptodome(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes
) -> None:
    """AesGcm seals exactly as an independent AES-GCM (pycryptodome) does, and opens its output."""
    oracle = AES.new(key, AES.MODE_GCM, nonce=nonce)
    oracle.update(aad)
    ciphertext, tag = oracle.encrypt_and_digest(plaintext)
    cipher = AesGcm(key)
    assert cipher.seal(nonce, plaintext, aad) == ciphertext + tag
    assert cipher.open(nonce, ciphertext + tag, aad) == plaintext
    assert cipher.open(nonce, ciphertext + bytes(16), aad) is None
