"""Which master keys a configuration names, and how they combine: the one that wraps new
data keys, the decrypt-only ones beside it, and the key that auto-unseals a keyring."""

from __future__ import annotations

from typing import Any

from attrs import evolve, frozen
from twisted.logger import Logger

from s3orch.config import EncryptionConfig
from s3orch.crypto.combined import CombinedKeys
from s3orch.crypto.keyring import KeyringKeys
from s3orch.crypto.keys import IKeyProvider, LocalKeys, create_key_file
from s3orch.crypto.vault import VaultTransitKeys

log = Logger()


@frozen
class KeySources:
    """The master keys a configuration names, as the service uses them."""

    keys: IKeyProvider | None
    """Wraps new DEKs with its primary and unwraps every DEK it knows; None: no key."""
    vault: VaultTransitKeys | None
    """The Vault Transit provider among them (or the keyring's auto-unseal key), if any."""
    auto_unseal: IKeyProvider | None = None
    """The key that seals the keyring's root key (``keyring.seal: auto``)."""


def key_sources(config: EncryptionConfig, reactor: Any, keyring: KeyringKeys | None) -> KeySources:
    """The master keys the configuration names; ``keyring`` is the seal's key provider when
    encryption.keyring is configured.

    With the keyring, the keyring wraps; previous_keys and a ``decrypt_only`` Vault only
    unwrap what they wrapped; with ``seal: auto`` the master key (or Vault key) seals the
    keyring's root key and wraps no DEK. Creates the default key file if asked to.
    """
    generate = config.master_key_file and config.generate_key_file
    if generate and create_key_file(config.master_key_file):
        log.critical(
            "Created a new master key in {path} (mode 0600). Every encrypted object needs"
            " it: back it up now, somewhere safe and apart from this machine (for example"
            " `base64 {path}` into a password manager). Without it the data is lost.",
            path=config.master_key_file,
        )
    vault = VaultTransitKeys.from_config(config.vault, reactor) if config.vault else None
    previous = (
        LocalKeys(list(zip(config.previous_key_ids, config.previous_keys, strict=True)))
        if config.previous_keys
        else None
    )
    has_local = config.master_key is not None or bool(config.master_key_file)
    if config.keyring is not None and keyring is None:
        raise ValueError("encryption.keyring is configured but there is no keyring")
    wrapper: IKeyProvider | None = None
    extras: list[IKeyProvider] = []
    auto_unseal: IKeyProvider | None = None
    if config.keyring is not None and not config.keyring.decrypt_only:
        assert keyring is not None
        wrapper = keyring
        extras = [previous] if previous is not None else []
        if vault is not None and config.vault is not None and config.vault.decrypt_only:
            extras.append(vault)
        if config.keyring.seal == "auto":
            # Only the primary: previous_keys stay decrypt-only keys of DEKs.
            primary_only = evolve(config, previous_keys=())
            auto_unseal = LocalKeys.from_config(primary_only) if has_local else vault
    else:
        if has_local:
            wrapper = LocalKeys.from_config(config)
            if vault is not None:  # decrypt-only: moving away from Vault
                extras.append(vault)
        elif vault is not None:
            wrapper = vault
            if previous is not None:
                extras.append(previous)
        if keyring is not None:  # a decrypt-only keyring: moving away from it
            extras.append(keyring)
    if wrapper is not None and extras:
        wrapper = CombinedKeys(wrapper, extras)
    return KeySources(wrapper, vault, auto_unseal)
