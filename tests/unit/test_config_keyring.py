"""encryption.keyring: s3orch's own keyring as the primary, auto-unseal, decrypt-only."""

from __future__ import annotations

import os

import pytest

from s3orch.cli import summarise
from s3orch.config import Config, EncryptionConfig
from s3orch.crypto.keyring import DEFAULT_MAX_OPERATIONS, KeyringKeys, RotationConfig
from s3orch.crypto.keys import LocalKeys
from s3orch.crypto.sources import key_sources
from tests.unit.test_config import (
    KEY_1,
    KEY_1_TEXT,
    KEY_2_TEXT,
    errors,
    parse,
    with_encryption,
)

VAULT = """
vault:
  address: "https://vault:8200"
  token: "hvs.s3cr3t"
  key_name: old-transit
  decrypt_only: {decrypt_only}
"""


def encryption_of(body: str) -> EncryptionConfig:
    return parse(with_encryption(body)).encryption


def encryption_line(config: Config) -> str:
    """The line ``s3orch validate`` prints about encryption."""
    lines = summarise(config, "c.yaml", os.getcwd())
    return next(line for line in lines if line.startswith("encryption:"))


def test_bare_keyring_is_shamir_with_stored_rotation() -> None:
    """``keyring:`` (null or {}) turns the keyring on: Shamir seal, rotation as stored."""
    for body in ("enabled: true\nkeyring:\n", "enabled: true\nkeyring: {}\n"):
        encryption = encryption_of(body)
        assert encryption.keyring is not None
        assert encryption.keyring.seal == "shamir"
        assert encryption.keyring.rotation is None
        assert not encryption.keyring.decrypt_only
        assert encryption.primary_key_id == "keyring-<term>"


def test_full_keyring_block() -> None:
    """seal: auto with a master key, and a rotation policy with Go durations."""
    encryption = encryption_of(
        f"""
        enabled: true
        master_key: "{KEY_1_TEXT}"
        previous_keys: ["{KEY_2_TEXT}"]
        keyring:
          seal: auto
          rotation:
            max_operations: 2000000
            interval: 720h
        """
    )
    assert encryption.keyring is not None
    assert encryption.keyring.seal == "auto"
    assert encryption.keyring.rotation == RotationConfig(2_000_000, 720 * 3600.0, True)


def test_rotation_defaults_are_vaults() -> None:
    """A rotation block without values: 0.9 * 2^32 operations, no interval, enabled."""
    encryption = encryption_of("keyring:\n  rotation: {}\n")
    assert encryption.keyring is not None
    assert encryption.keyring.rotation == RotationConfig(DEFAULT_MAX_OPERATIONS, 0.0, True)
    off = encryption_of("keyring:\n  rotation: {interval: 0, enabled: false}\n")
    assert off.keyring is not None and off.keyring.rotation == RotationConfig(enabled=False)


def test_shamir_keeps_old_keys_decrypt_only() -> None:
    """With seal: shamir, previous_keys and a decrypt-only Vault are accepted."""
    encryption = encryption_of(
        f'enabled: true\nprevious_keys: ["{KEY_1_TEXT}"]\nkeyring: {{}}\n'
        + VAULT.format(decrypt_only="true")
    )
    assert encryption.previous_keys == (KEY_1,)
    assert encryption.vault is not None and encryption.vault.decrypt_only


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            f'keyring: {{}}\nmaster_key: "{KEY_1_TEXT}"\n',
            "encryption.master_key: with keyring.seal: shamir the keyring wraps new data keys",
        ),
        (
            "keyring: {}\n" + VAULT.format(decrypt_only="false"),
            "encryption.vault: with keyring.seal: shamir the keyring wraps new data keys",
        ),
        (
            "keyring: {seal: auto}\n",
            "encryption.keyring.seal: auto needs the key that unseals the keyring",
        ),
        ("keyring: {seal: shamri}\n", "encryption.keyring.seal: must be one of shamir, auto"),
        ("keyring: {rotation: {interval: 1h}}\n", "encryption.keyring.rotation.interval:"),
        (
            "keyring: {rotation: {interval: soon}}\n",
            "encryption.keyring.rotation.interval: must be a duration",
        ),
        (
            "keyring: {rotation: {max_operations: 5}}\n",
            "encryption.keyring.rotation.max_operations: must be from 1000000 to 3865470566",
        ),
        ("keyring: {rotation: {every: 24h}}\n", "encryption.keyring.rotation.every: unknown key"),
        ("keyring: {sealed: auto}\n", "encryption.keyring.sealed: unknown key (did you mean"),
        ("keyring: [shamir]\n", "encryption.keyring: must be a mapping"),
        (
            "keyring: {decrypt_only: true}\n",
            "encryption.keyring.decrypt_only: a decrypt-only keyring needs a primary key",
        ),
        (
            f'master_key: "{KEY_1_TEXT}"\nkeyring: {{decrypt_only: true, seal: auto}}\n',
            "encryption.keyring.seal: a decrypt-only keyring is unsealed with its key shares",
        ),
    ],
)
def test_keyring_errors_name_the_field(body: str, expected: str) -> None:
    """Each mistake is reported at the path of the field, with what to do."""
    found = errors(with_encryption(body))
    assert any(e.startswith(expected) for e in found), found


def test_interval_floor_message() -> None:
    """An interval under 24h says the floor, as Vault does."""
    (error,) = errors(with_encryption("keyring: {rotation: {interval: 23h59m}}\n"))
    assert error == (
        "encryption.keyring.rotation.interval: must be at least 24h, or 0 for no time-based "
        "rotation"
    )


def test_validate_describes_the_keyring() -> None:
    """s3orch validate names the keyring, its seal, rotation and decrypt-only keys."""
    config = parse(
        with_encryption(
            f'enabled: true\nprevious_keys: ["{KEY_1_TEXT}"]\n'
            "keyring: {rotation: {interval: 720h, max_operations: 1000000}}\n"
        )
    )
    assert encryption_line(config) == (
        "encryption: on, chunk 64 KiB, new objects use key keyring-<term> (s3orch's keyring, "
        "unsealed with key shares: s3orch operator unseal); automatic rotation: after "
        "1,000,000 data keys or every 720h; decrypt-only keys: config-1"
    )
    auto = parse(with_encryption(f'master_key: "{KEY_1_TEXT}"\nkeyring: {{seal: auto}}\n'))
    assert "unsealed automatically by master_key" in encryption_line(auto)
    away = parse(with_encryption(f'master_key: "{KEY_1_TEXT}"\nkeyring: {{decrypt_only: true}}\n'))
    assert encryption_line(away) == (
        "encryption: off for new objects; existing ones decrypt with key config-0 (master_key);"
        " decrypt-only keys: keyring-<term> (s3orch's keyring, unsealed with key shares)"
    )


def test_key_sources_with_the_keyring() -> None:
    """Keyring wraps, old keys unwrap; seal: auto's key seals the root only; decrypt_only."""
    keyring = KeyringKeys()
    shamir = key_sources(
        encryption_of(f'previous_keys: ["{KEY_1_TEXT}"]\nkeyring: {{}}\n'), None, keyring
    )
    assert shamir.keys is not None and shamir.keys.primary_id == "keyring"
    assert "config-1" in shamir.keys.key_ids().values()
    assert shamir.auto_unseal is None

    auto = key_sources(
        encryption_of(f'master_key: "{KEY_1_TEXT}"\nkeyring: {{seal: auto}}\n'), None, keyring
    )
    assert auto.keys is keyring
    assert isinstance(auto.auto_unseal, LocalKeys)
    assert auto.auto_unseal.primary_id == "config-0"

    away = key_sources(
        encryption_of(f'master_key: "{KEY_1_TEXT}"\nkeyring: {{decrypt_only: true}}\n'),
        None,
        keyring,
    )
    assert away.keys is not None and away.keys.primary_id == "config-0"
    assert away.auto_unseal is None
