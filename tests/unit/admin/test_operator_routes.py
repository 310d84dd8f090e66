"""The operator routes of the admin API (seal-status, init, unseal, rekey, rotate...), called
directly with a seal over a memory store, as Vault's sys/ endpoints answer."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from attrs import frozen
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock

from s3orch.admin.operator import SealOperations, go_duration, rfc3339
from s3orch.admin.resource import AdminError, Call
from s3orch.crypto.keyring import RotationConfig
from s3orch.crypto.keys import LocalKeys
from s3orch.crypto.seal import MemorySealStore, Seal
from s3orch.keyring_upkeep import KeyringUpkeep
from s3orch.store.db import Database
from s3orch.store.seal import WrapCounts

T0 = 1_800_000_000.0


@frozen
class Api:
    """The operator routes over one seal."""

    operations: SealOperations
    upkeep: KeyringUpkeep

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **query: str
    ) -> dict[str, Any]:
        """The answer of a 200, or AdminError."""
        for route in self.operations.routes():
            if (route.method, route.pattern) == (method, path):
                status, answer = await route.handler(Call(method, path, {}, query, body or {}))
                assert status == 200
                return dict(answer)
        raise AssertionError(f"no route {method} {path}")

    async def refused(
        self, status: int, method: str, path: str, body: dict[str, Any] | None = None
    ) -> str:
        """The error message of a refusal with ``status``."""
        with pytest.raises(AdminError) as caught:
            await self.call(method, path, body)
        assert caught.value.status == status, caught.value.message
        return caught.value.message


@pytest_twisted.async_yield_fixture
async def counts(reactor: IReactorCore, tmp_path: os.PathLike[str]) -> AsyncIterator[WrapCounts]:
    db = Database.sqlite(os.path.join(tmp_path, "meta.db"), reactor=reactor)
    await db.migrate()
    yield WrapCounts(db)
    db.close()


def make_api(
    counts: WrapCounts,
    store: MemorySealStore | None = None,
    auto: bool = False,
    rotation: RotationConfig | None = None,
) -> Api:
    clock = Clock()
    clock.advance(T0)
    auto_unseal = LocalKeys([("config-0", bytes([3]) * 32)]) if auto else None
    seal = Seal(store or MemorySealStore(), auto_unseal)
    upkeep = KeyringUpkeep(seal, counts, clock, rotation=rotation)
    return Api(SealOperations(upkeep, clock, "sqlite", "0.1.0"), upkeep)


async def initialized(api: Api, shares: int = 5, threshold: int = 3) -> list[str]:
    answer = await api.call(
        "POST", "init", {"secret_shares": shares, "secret_threshold": threshold}
    )
    return list(answer["keys"])


async def unsealed(api: Api, keys: list[str]) -> None:
    for key in keys:
        status = await api.call("POST", "unseal", {"key": key})
    assert status["sealed"] is False


@pytest_twisted.ensureDeferred
async def test_no_keyring_says_so() -> None:
    """Without encryption.keyring every operator route answers 409 saying what to add."""
    operations = SealOperations(None, Clock())
    for route in operations.routes():
        with pytest.raises(AdminError) as caught:
            await route.handler(Call(route.method, route.pattern, {}, {}, {}))
        assert caught.value.status == 409
        assert "encryption.keyring" in caught.value.message


@pytest_twisted.ensureDeferred
async def test_init_returns_hex_and_base64_once(counts: WrapCounts) -> None:
    """init answers the shares as hex and base64 (the same bytes); a second init is 400."""
    api = make_api(counts)
    status = await api.call("GET", "seal-status")
    assert status == {
        "type": "shamir",
        "initialized": False,
        "sealed": True,
        "t": 0,
        "n": 0,
        "progress": 0,
        "nonce": "",
        "version": "0.1.0",
        "storage_type": "sqlite",
    }
    answer = await api.call("POST", "init", {"secret_shares": 5, "secret_threshold": 3})
    assert len(answer["keys"]) == len(answer["keys_base64"]) == 5
    for hex_key, b64_key in zip(answer["keys"], answer["keys_base64"], strict=True):
        assert bytes.fromhex(hex_key) == base64.b64decode(b64_key)
        assert len(bytes.fromhex(hex_key)) == 33
    message = await api.refused(400, "POST", "init", {"secret_shares": 5, "secret_threshold": 3})
    assert message == "s3orch is already initialized"
    status = await api.call("GET", "seal-status")
    assert (status["initialized"], status["sealed"], status["t"], status["n"]) == (True, True, 3, 5)


@pytest.mark.parametrize(
    ("shares", "threshold", "message"),
    [
        (
            5,
            1,
            "invalid seal configuration: threshold must be greater than one for multiple shares",
        ),
        (256, 3, "invalid seal configuration: shares must be less than 256"),
        (3, 4, "invalid seal configuration: threshold cannot be larger than shares"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_init_validation_is_vaults(
    counts: WrapCounts, shares: int, threshold: int, message: str
) -> None:
    """Vault's share/threshold checks and messages, as 400s."""
    api = make_api(counts)
    body = {"secret_shares": shares, "secret_threshold": threshold}
    assert await api.refused(400, "POST", "init", body) == message


@pytest_twisted.ensureDeferred
async def test_unseal_progress_reset_and_wrong_shares(counts: WrapCounts) -> None:
    """Progress counts shares, reset clears it, wrong shares fail at the threshold."""
    api = make_api(counts)
    keys = await initialized(api)
    status = await api.call("POST", "unseal", {"key": keys[0]})
    assert (status["progress"], status["sealed"]) == (1, True)
    assert status["nonce"]
    again = await api.call("POST", "unseal", {"key": keys[0]})
    assert again["progress"] == 1  # a repeated share is ignored, as Vault does
    reset = await api.call("POST", "unseal", {"reset": True})
    assert (reset["progress"], reset["nonce"]) == (0, "")
    other = await initialized(make_api(counts))
    await api.call("POST", "unseal", {"key": other[0]})
    await api.call("POST", "unseal", {"key": other[1]})
    message = await api.refused(400, "POST", "unseal", {"key": other[2]})
    assert "message authentication failed" in message
    assert (await api.call("GET", "seal-status"))["progress"] == 0
    assert "shorter than minimum 16 bytes" in await api.refused(
        400, "POST", "unseal", {"key": "AAAA"}
    )
    assert await api.refused(400, "POST", "unseal", {"key": "not a key!"}) == (
        "key must be a valid hex or base64 string"
    )
    await unsealed(api, [base64.b64encode(bytes.fromhex(k)).decode() for k in keys[2:]])
    assert api.upkeep.seal.keys.primary_id == "keyring-1"


@pytest_twisted.ensureDeferred
async def test_sealed_operations_are_503(counts: WrapCounts) -> None:
    """While sealed, rotate and key-status answer 503 saying s3orch is sealed."""
    api = make_api(counts)
    keys = await initialized(api, 3, 2)
    assert await api.refused(503, "POST", "rotate") == "s3orch is sealed"
    assert await api.refused(503, "GET", "key-status") == "s3orch is sealed"
    await unsealed(api, keys[:2])
    await api.call("POST", "seal")
    assert (await api.call("GET", "seal-status"))["sealed"] is True
    assert await api.refused(503, "GET", "rotate/config") == "s3orch is sealed"


@pytest_twisted.ensureDeferred
async def test_rekey_with_verification(counts: WrapCounts) -> None:
    """Rekey with verification: old shares work until it completes, only the new ones after."""
    store = MemorySealStore()
    api = make_api(counts, store)
    old = await initialized(api, 3, 2)
    await unsealed(api, old[:2])
    assert await api.call("GET", "rekey/init") == {
        "nonce": "",
        "started": False,
        "t": 0,
        "n": 0,
        "progress": 0,
        "required": 2,
        "verification_required": False,
    }
    started = await api.call(
        "POST",
        "rekey/init",
        {"secret_shares": 4, "secret_threshold": 3, "require_verification": True},
    )
    nonce = started["nonce"]
    assert (started["started"], started["n"], started["t"], started["required"]) == (True, 4, 3, 2)
    assert "rekey already in progress" in await api.refused(
        400, "POST", "rekey/init", {"secret_shares": 2, "secret_threshold": 2}
    )
    wrong = await api.refused(400, "POST", "rekey/update", {"key": old[0], "nonce": "x"})
    assert wrong.startswith("incorrect nonce supplied")
    progress = await api.call("POST", "rekey/update", {"key": old[0], "nonce": nonce})
    assert progress["progress"] == 1
    duplicate = await api.refused(400, "POST", "rekey/update", {"key": old[0], "nonce": nonce})
    assert duplicate == "given key has already been provided during this generation operation"
    done = await api.call("POST", "rekey/update", {"key": old[2], "nonce": nonce})
    assert done["complete"] is True and done["verification_required"] is True
    new = done["keys"]
    assert len(new) == len(done["keys_base64"]) == 4
    verify_nonce = done["verification_nonce"]
    assert (await api.call("GET", "rekey/verify"))["nonce"] == verify_nonce
    # Not yet active: a fresh instance still unseals with the old shares.
    await unsealed(make_api(counts, store), old[1:])
    for key in new[:2]:
        step = await api.call("POST", "rekey/verify", {"key": key, "nonce": verify_nonce})
        assert "complete" not in step
    assert (await api.call("POST", "rekey/verify", {"key": new[3], "nonce": verify_nonce}))[
        "complete"
    ] is True
    status = await api.call("GET", "seal-status")
    assert (status["n"], status["t"]) == (4, 3)
    later = make_api(counts, store)
    for key in old[:2]:
        await later.call("POST", "unseal", {"key": key})
    await later.refused(400, "POST", "unseal", {"key": old[2]})
    await unsealed(later, new[1:])


@pytest_twisted.ensureDeferred
async def test_rekey_cancel_needs_the_nonce(counts: WrapCounts) -> None:
    """DELETE rekey/init cancels with the nonce only; the old shares stay."""
    api = make_api(counts)
    old = await initialized(api, 3, 2)
    await unsealed(api, old[:2])
    nonce = (await api.call("POST", "rekey/init", {"secret_shares": 2, "secret_threshold": 2}))[
        "nonce"
    ]
    await api.refused(400, "DELETE", "rekey/init")
    cancelled = await api.call("DELETE", "rekey/init", nonce=nonce)
    assert cancelled["started"] is False
    await api.call("POST", "seal")
    await unsealed(api, old[1:])


@pytest_twisted.ensureDeferred
async def test_rotate_key_status_and_config(counts: WrapCounts) -> None:
    """rotate adds a term; key-status shows it; rotate/config has Vault's bounds."""
    api = make_api(counts)
    await unsealed(api, (await initialized(api, 3, 2))[:2])
    first = await api.call("GET", "key-status")
    assert first == {"term": 1, "install_time": rfc3339(T0), "encryptions": 0}
    await api.upkeep.seal.keys.wrap(os.urandom(32))
    assert (await api.call("GET", "key-status"))["encryptions"] == 1
    rotated = await api.call("POST", "rotate")
    assert (rotated["term"], rotated["encryptions"]) == (2, 0)
    assert api.upkeep.seal.keys.primary_id == "keyring-2"
    assert await api.call("GET", "rotate/config") == {
        "max_operations": 3865470566,
        "interval": "0s",
        "enabled": True,
    }
    changed = await api.call("POST", "rotate/config", {"interval": "48h", "enabled": False})
    assert changed == {"max_operations": 3865470566, "interval": "48h0m0s", "enabled": False}
    assert await api.refused(400, "POST", "rotate/config", {"interval": "1h"}) == (
        "interval must be greater or equal to 24h0m0s"
    )
    assert await api.refused(400, "POST", "rotate/config", {"max_operations": 10}) == (
        "max_operations must be in the range [1000000,3865470566]"
    )


@pytest_twisted.ensureDeferred
async def test_rotation_config_from_the_file_wins(counts: WrapCounts) -> None:
    """With encryption.keyring.rotation set, POST rotate/config is refused (409)."""
    api = make_api(counts, rotation=RotationConfig(2_000_000))
    await unsealed(api, (await initialized(api, 3, 2))[:2])
    assert (await api.call("GET", "rotate/config"))["max_operations"] == 2_000_000
    message = await api.refused(409, "POST", "rotate/config", {"enabled": False})
    assert "encryption.keyring.rotation" in message


@pytest_twisted.ensureDeferred
async def test_auto_unseal_init_seal_unseal(counts: WrapCounts) -> None:
    """Auto-unseal: init makes no shares; unseal without a key works again; shares are refused."""
    api = make_api(counts, auto=True)
    assert (await api.call("GET", "seal-status"))["type"] == "auto"
    assert await api.call("POST", "init") == {"keys": [], "keys_base64": []}
    assert (await api.call("GET", "seal-status"))["sealed"] is False
    await api.call("POST", "seal")
    status = await api.call("POST", "unseal")
    assert status["sealed"] is False and (status["t"], status["n"]) == (1, 1)
    await api.call("POST", "seal")
    assert "takes no key shares" in await api.refused(400, "POST", "unseal", {"key": "00" * 33})


def test_go_durations() -> None:
    """Intervals are shown as Go prints durations."""
    assert [go_duration(s) for s in (0, 59, 90, 86400, 90061)] == [
        "0s",
        "59s",
        "1m30s",
        "24h0m0s",
        "25h1m1s",
    ]
