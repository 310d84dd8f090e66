"""VaultTransitKeys without a server: headers, retries, timeouts and error mapping on a fake Vault.

The behaviour of real Vault is covered by tests/integration/test_vault_transit.py (OpenBao);
these tests drive what a live server cannot easily do (hang, fail twice then succeed) with a
StubTreq-served fake and a Clock.
"""

from __future__ import annotations

import base64
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from s3orch.config import VaultConfig
from s3orch.crypto.dek_cache import DekCache
from s3orch.crypto.keys import (
    InvalidWrappedKey,
    KeyMaterialError,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
)
from s3orch.crypto.vault import (
    REQUEST_TIMEOUT,
    VaultTransitKeys,
    VaultUnavailable,
    ciphertext_version,
    read_token_file,
)
from s3orch.testing.fake_vault import CannedVault as FakeVault
from s3orch.testing.fake_vault import run_stubbed

T = TypeVar("T")

TOKEN = "s.fake-token-0123456789"
FINGERPRINT = "vault:transit/k"
DEK = bytes(range(32))
KEY_READ = {"data": {"name": "k", "latest_version": 1, "min_decryption_version": 1}}


class Driver:
    """Runs provider coroutines to their end on a Clock, pumping the stub's connections."""

    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault
        self.clock = Clock()
        self.stub = StubTreq(vault)

    def keys(self, **kwargs: Any) -> VaultTransitKeys:
        kwargs.setdefault("token", TOKEN)
        return VaultTransitKeys(
            "http://vault.test:8200", "k", cast(HTTPClient, self.stub), self.clock, **kwargs
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return run_stubbed(coro, self.stub.flush, self.clock, step=0.1, rounds=100)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log message emitted during the test, formatted."""
    messages: list[str] = []

    def observe(event: LogEvent) -> None:
        messages.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield messages
    globalLogPublisher.removeObserver(observe)


def wrapped(blob: bytes = b"vault:v1:ZmFrZQ==") -> WrappedKey:
    return WrappedKey("k", FINGERPRINT, blob)


def token_file(tmp_path: Path, token: str, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_text(f"  {token}\n")
    path.chmod(mode)
    return str(path)


# -- requests ---------------------------------------------------------------------------------


def test_headers_and_paths() -> None:
    """Calls carry X-Vault-Token, X-Vault-Namespace when set, and go to <mount>/<op>/<key>."""
    vault = FakeVault()
    driver = Driver(vault)
    keys = driver.keys(namespace="team/a", mount_path="/secret/transit/")
    assert driver.run(keys.wrap(DEK)).fingerprint == "vault:secret/transit/k"
    driver.run(keys.unwrap(WrappedKey("k", "vault:secret/transit/k", b"vault:v1:x")))
    assert vault.paths == [
        "/v1/secret/transit/keys/k",
        "/v1/secret/transit/encrypt/k",
        "/v1/secret/transit/decrypt/k",
    ]
    assert {(r["token"], r["namespace"]) for r in vault.requests} == {(TOKEN, "team/a")}
    assert vault.requests[1]["body"] == {"plaintext": base64.b64encode(DEK).decode()}
    assert vault.requests[2]["body"] == {"ciphertext": "vault:v1:x"}


def test_no_namespace_header_by_default() -> None:
    """Without a namespace no X-Vault-Namespace header is sent."""
    vault = FakeVault()
    driver = Driver(vault)
    driver.run(driver.keys().wrap(DEK))
    assert [r["namespace"] for r in vault.requests] == [None, None]


def test_dek_cache_spares_vault_calls() -> None:
    """With a DEK cache, a DEK just wrapped, or once unwrapped, is not sent to Vault again
    until its TTL has passed; a failed unwrap caches nothing."""
    vault = FakeVault()
    driver = Driver(vault)
    keys = driver.keys(dek_cache=DekCache(60.0, 10, driver.clock))
    fresh = driver.run(keys.wrap(DEK))
    assert driver.run(keys.unwrap(fresh)) == DEK
    old = wrapped(b"vault:v1:b3RoZXI=")  # not the canned encrypt's answer
    first = driver.run(keys.unwrap(old))
    assert driver.run(keys.unwrap(old)) == first
    assert [p.rsplit("/", 2)[-2] for p in vault.paths] == ["keys", "encrypt", "decrypt"]
    driver.clock.advance(61)
    driver.run(keys.unwrap(old))
    assert vault.paths[-1].endswith("/decrypt/k") and len(vault.paths) == 4


def test_a_failed_unwrap_is_not_cached() -> None:
    vault = FakeVault((500, {"errors": ["internal"]}), (500, {}), (500, {}))
    driver = Driver(vault)
    keys = driver.keys(dek_cache=DekCache(60.0, 10, driver.clock))
    with pytest.raises(VaultUnavailable):
        driver.run(keys.unwrap(wrapped()))
    assert driver.run(keys.unwrap(wrapped())) == DEK
    assert sum(p.endswith("/decrypt/k") for p in vault.paths) == 4  # 3 failed tries, then one


def test_key_checked_once() -> None:
    """The key is read before the first wrap only."""
    vault = FakeVault()
    driver = Driver(vault)
    keys = driver.keys()
    for _ in range(3):
        driver.run(keys.wrap(DEK))
    assert [p.split("/")[3] for p in vault.paths] == ["keys", "encrypt", "encrypt", "encrypt"]


def test_wrap_rejects_wrong_dek_size() -> None:
    """wrap refuses a DEK that is not 32 bytes before any request."""
    driver = Driver(FakeVault())
    with pytest.raises(ValueError, match="32"):
        driver.run(driver.keys().wrap(b"short"))
    assert driver.vault.requests == []


def test_unwrap_rejects_wrong_plaintext_size() -> None:
    """A Transit plaintext that is not 32 bytes is InvalidWrappedKey."""
    vault = FakeVault((200, {"data": {"plaintext": base64.b64encode(b"x" * 16).decode()}}))
    driver = Driver(vault)
    with pytest.raises(InvalidWrappedKey, match="16 bytes"):
        driver.run(driver.keys().unwrap(wrapped()))


def test_unknown_fingerprint_sends_nothing() -> None:
    """A fingerprint not this provider's is UnknownKey without any request."""
    driver = Driver(FakeVault())
    with pytest.raises(UnknownKey):
        driver.run(driver.keys().unwrap(WrappedKey("k", "vault:transit/other", b"vault:v1:x")))
    assert driver.vault.requests == []


def test_ciphertext_version() -> None:
    """The version is read from vault:vN: and anything else is InvalidWrappedKey."""
    assert ciphertext_version(b"vault:v1:abc") == 1
    assert ciphertext_version(b"vault:v42:abc") == 42
    for blob in (b"vault:v0:abc", b"vault:vX:abc", b"vault:1:abc", b"", b"local"):
        with pytest.raises(InvalidWrappedKey):
            ciphertext_version(blob)


# -- errors and retries --------------------------------------------------------------------------


def test_retries_5xx_then_succeeds() -> None:
    """Two 5xx answers are retried with backoff; the third answer counts."""
    vault = FakeVault((500, {"errors": ["internal"]}), (502, {}))
    driver = Driver(vault)
    assert driver.run(driver.keys().unwrap(wrapped())) == DEK
    assert len(vault.requests) == 3


def test_gives_up_after_two_retries(logged: list[str]) -> None:
    """Three 503s are KeyUnavailable saying Vault is sealed; the retries are logged."""
    vault = FakeVault(*[(503, {"errors": ["Vault is sealed"]})] * 3)
    driver = Driver(vault)
    with pytest.raises(KeyUnavailable, match="sealed") as caught:
        driver.run(driver.keys().unwrap(wrapped()))
    assert isinstance(caught.value, VaultUnavailable) and caught.value.status == 503
    assert len(vault.requests) == 3
    assert sum("retry" in m for m in logged) == 2


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_not_retried(status: int) -> None:
    """4xx answers are final: one request each, then the mapped error."""
    vault = FakeVault((status, {"errors": ["no"]}), (200, {"errors": []}))
    driver = Driver(vault)
    error = InvalidWrappedKey if status == 400 else KeyUnavailable
    with pytest.raises(error):
        driver.run(driver.keys().unwrap(wrapped()))
    assert vault.paths[0] == "/v1/transit/decrypt/k"
    assert vault.paths.count("/v1/transit/decrypt/k") == 1


def test_decrypt_400_with_missing_key_is_unavailable() -> None:
    """A 400 from decrypt while the key itself is missing is KeyUnavailable, not invalid."""
    vault = FakeVault((400, {"errors": ["encryption key not found"]}), (404, {"errors": []}))
    driver = Driver(vault)
    with pytest.raises(KeyUnavailable, match="does not exist"):
        driver.run(driver.keys().unwrap(wrapped()))


def test_timeout() -> None:
    """A Vault that never answers is KeyUnavailable after a timeout per attempt."""
    requests: list[str] = []

    class Silent:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            requests.append(url)
            return Deferred()

    clock = Clock()
    keys = VaultTransitKeys(
        "http://vault.test", "k", cast(HTTPClient, Silent()), clock, token=TOKEN
    )
    d = Deferred.fromCoroutine(keys.unwrap(wrapped()))
    for _ in range(3):
        clock.advance(REQUEST_TIMEOUT)
        clock.advance(1.0)  # the backoff
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(VaultUnavailable)
    assert f"no answer within {REQUEST_TIMEOUT:g} s" in str(failures[0].value)
    assert len(requests) == 3


def test_token_not_in_messages_or_logs(logged: list[str]) -> None:
    """Even when Vault echoes the token, errors and logs show <token> instead."""
    echo = {"errors": [f"token {TOKEN} is bad"]}
    vault = FakeVault((500, echo), (500, echo), (500, echo))
    driver = Driver(vault)
    with pytest.raises(KeyUnavailable) as caught:
        driver.run(driver.keys().unwrap(wrapped()))
    assert TOKEN not in str(caught.value) and "<token>" in str(caught.value)
    assert logged and not any(TOKEN in m for m in logged)
    assert TOKEN not in repr(driver.keys())


def test_warnings_are_logged(logged: list[str]) -> None:
    """Warnings in a successful answer are logged."""
    answer = {"data": {"ciphertext": "vault:v1:x"}, "warnings": ["ignored [bogus]"]}
    driver = Driver(FakeVault((200, KEY_READ), (200, answer)))
    driver.run(driver.keys().wrap(DEK))
    assert any("ignored [bogus]" in m for m in logged)


def test_malformed_answer_is_unavailable() -> None:
    """A 200 without a vault:v ciphertext is KeyUnavailable, never a bad WrappedKey."""
    driver = Driver(FakeVault((200, KEY_READ), (200, {"data": {"ciphertext": "plain"}})))
    with pytest.raises(KeyUnavailable, match="ciphertext"):
        driver.run(driver.keys().wrap(DEK))


# -- the token -------------------------------------------------------------------------------


def test_token_file_read_and_reread_on_403(tmp_path: Path) -> None:
    """The token comes from token_file (stripped); a 403 re-reads it once and retries."""
    path = token_file(tmp_path, "old-token")
    vault = FakeVault((403, {"errors": ["permission denied"]}))
    driver = Driver(vault)
    keys = driver.keys(token="", token_file=path)
    assert keys.token == "old-token"
    token_file(tmp_path, "new-token")
    assert driver.run(keys.unwrap(wrapped())) == DEK
    assert [r["token"] for r in vault.requests] == ["old-token", "new-token"]


def test_token_file_403_twice_is_unavailable(tmp_path: Path) -> None:
    """A 403 with the file's token unchanged is not retried."""
    path = token_file(tmp_path, "same")
    vault = FakeVault((403, {"errors": ["permission denied"]}))
    driver = Driver(vault)
    with pytest.raises(KeyUnavailable, match="permission denied"):
        driver.run(driver.keys(token="", token_file=path).unwrap(wrapped()))
    assert len(vault.requests) == 1


def test_token_file_must_be_private(tmp_path: Path) -> None:
    """A token file readable by others, empty or missing is refused at construction."""
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        read_token_file(token_file(tmp_path, "t", mode=0o644))
    with pytest.raises(KeyMaterialError, match="empty"):
        read_token_file(token_file(tmp_path, ""))
    with pytest.raises(KeyMaterialError, match=r"token_file does not exist"):
        Driver(FakeVault()).keys(token="", token_file=str(tmp_path / "nope"))


def test_renew_only_renewable_tokens() -> None:
    """renew() calls renew-self only when lookup-self says the token is renewable."""
    vault = FakeVault(
        (200, {"data": {"renewable": False, "ttl": 0, "id": TOKEN}}),
        (200, {"data": {"renewable": True, "ttl": 60, "id": TOKEN}}),
        (200, {"auth": {"client_token": TOKEN, "lease_duration": 3600, "renewable": True}}),
    )
    driver = Driver(vault)
    keys = driver.keys()
    first = driver.run(keys.renew())
    assert (first.renewable, first.ttl) == (False, 0)
    second = driver.run(keys.renew())
    assert (second.renewable, second.ttl) == (True, 3600)
    assert vault.paths == [
        "/v1/auth/token/lookup-self",
        "/v1/auth/token/lookup-self",
        "/v1/auth/token/renew-self",
    ]


# -- construction ----------------------------------------------------------------------------


def test_from_config_refuses_client_with_ca_cert() -> None:
    """A ready-made HTTP client cannot honour ca_cert, so from_config refuses the pair."""
    config = VaultConfig(address="https://v:8200", key_name="k", token="t", ca_cert="/ca.pem")
    with pytest.raises(ValueError, match="ca_cert"):
        VaultTransitKeys.from_config(config, Clock(), cast(HTTPClient, object()))


def test_from_config_bad_ca_cert(tmp_path: Path) -> None:
    """A ca_cert file without a PEM certificate is a KeyMaterialError naming the setting."""
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate")
    config = VaultConfig(address="https://v:8200", key_name="k", token="t", ca_cert=str(path))
    with pytest.raises(KeyMaterialError, match="ca_cert holds no PEM certificate"):
        VaultTransitKeys.from_config(config, Clock())


def test_from_config_settings() -> None:
    """from_config carries every setting over; the key id is the key name."""
    config = VaultConfig(
        address="http://v:8200/",
        key_name="s3-orchestrator",
        token="t",
        mount_path="kms",
        namespace="ns",
    )
    keys = VaultTransitKeys.from_config(config, Clock())
    assert (keys.primary_id, keys.namespace) == ("s3-orchestrator", "ns")
    assert keys.key_ids() == {"vault:kms/s3-orchestrator": "s3-orchestrator"}
    assert keys.pool is not None
