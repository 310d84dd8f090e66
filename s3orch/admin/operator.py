"""Admin API for the keyring's seal: Vault's ``sys/`` operator endpoints, under /admin/api/.

Shapes follow reference/vault.md §2.2 (field names ``t``, ``n``, ``keys``, ``keys_base64``…):

    GET    seal-status                   type, initialized, sealed, t, n, progress, nonce
    POST   init         {secret_shares, secret_threshold}  -> keys (hex), keys_base64, once
    POST   unseal       {key} | {reset: true} | {} (auto-unseal)   -> seal-status
    POST   seal                                                    -> seal-status
    GET    rekey/init                    nonce, started, t, n, progress, required, ...
    POST   rekey/init   {secret_shares, secret_threshold, require_verification}
    DELETE rekey/init?nonce=…            cancel
    POST   rekey/update {key, nonce}     progress, or complete with the new keys
    GET    rekey/verify                  nonce, started, t, n, progress
    POST   rekey/verify {key, nonce}     progress, or complete
    DELETE rekey/verify                  restart verification with a new nonce
    POST   rotate                        term, install_time, encryptions
    GET    key-status                    term, install_time, encryptions
    GET    rotate/config                 max_operations, interval, enabled
    POST   rotate/config {max_operations?, interval?, enabled?}

Every route sits behind the admin token (unlike Vault's unauthenticated seal-status and
unseal: an s3orch admin token is what stands for Vault's sudo here). Shares are returned in
the one answer that makes them and are never logged: the admin resource logs method, path,
status and error message, and no message here contains a share or a key.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import define, evolve
from twisted.internet.interfaces import IReactorTime

from s3orch.admin.resource import AdminError, Answer, Call, Route
from s3orch.config import parse_duration
from s3orch.crypto.keyring import KeyringError, KeyStatus, RotationConfig, Sealed
from s3orch.crypto.keys import KeyUnavailable
from s3orch.crypto.seal import (
    AUTO,
    NotInitialized,
    RekeyStatus,
    RekeyVerifyStatus,
    Seal,
    SealError,
    SealStatus,
    StaleState,
    decode_share,
)
from s3orch.keyring_upkeep import KeyringUpkeep

NO_KEYRING = (
    "s3orch has no keyring: add encryption.keyring to the configuration to use the "
    "operator commands"
)


def rfc3339(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds, as Vault's ``install_time``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def go_duration(seconds: float) -> str:
    """Seconds as Go prints a duration: ``24h0m0s``, ``1m30s``, ``0s``."""
    whole = round(seconds)
    if whole == 0:
        return "0s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _keys_view(keys: tuple[bytes, ...]) -> dict[str, list[str]]:
    return {
        "keys": [key.hex() for key in keys],
        "keys_base64": [base64.b64encode(key).decode("ascii") for key in keys],
    }


def _status_view(status: SealStatus) -> dict[str, Any]:
    return {
        "type": status.seal_type,
        "initialized": status.initialized,
        "sealed": status.sealed,
        "t": status.threshold,
        "n": status.shares,
        "progress": status.progress,
        "nonce": status.nonce,
    }


def _rekey_view(status: RekeyStatus) -> dict[str, Any]:
    return {
        "nonce": status.nonce,
        "started": status.started,
        "t": status.threshold,
        "n": status.shares,
        "progress": status.progress,
        "required": status.required,
        "verification_required": status.verification_required,
    }


def _verify_view(status: RekeyVerifyStatus) -> dict[str, Any]:
    view: dict[str, Any] = {
        "nonce": status.nonce,
        "started": status.started,
        "t": status.threshold,
        "n": status.shares,
        "progress": status.progress,
    }
    if status.complete:
        view["complete"] = True
    return view


def _key_status_view(status: KeyStatus) -> dict[str, Any]:
    return {
        "term": status.term,
        "install_time": rfc3339(status.install_time),
        "encryptions": status.encryptions,
    }


def _rotation_view(config: RotationConfig) -> dict[str, Any]:
    return {
        "max_operations": config.max_operations,
        "interval": go_duration(config.interval),
        "enabled": config.enabled,
    }


def _refusal(error: Exception) -> AdminError:
    """The answer to an operation the seal refused; messages carry no key material."""
    if isinstance(error, KeyUnavailable):  # Sealed, or the auto-unseal key's Vault is down
        return AdminError(503, str(error))
    if isinstance(error, StaleState):
        return AdminError(409, str(error))
    return AdminError(400, str(error))


def _integer(body: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise AdminError(400, f'"{name}" must be an integer')
    return value


def _string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise AdminError(400, f'"{name}" is required')
    return value


def _boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise AdminError(400, f'"{name}" must be true or false')
    return value


def _share(body: Mapping[str, Any]) -> bytes:
    try:
        return decode_share(_string(body, "key"))
    except SealError as e:
        raise AdminError(400, str(e)) from None


@define
class SealOperations:
    """The operator routes over ``upkeep``'s seal (None: no keyring is configured, and every
    route says so). ``clock`` stamps new terms; ``storage_type`` is the metadata database."""

    upkeep: KeyringUpkeep | None
    clock: IReactorTime
    storage_type: str = ""
    version: str = ""

    def routes(self) -> list[Route]:
        routes = [
            ("GET", "seal-status", self.seal_status),
            ("POST", "init", self.init),
            ("POST", "unseal", self.unseal),
            ("POST", "seal", self.seal_now),
            ("GET", "rekey/init", self.rekey_status),
            ("POST", "rekey/init", self.rekey_init),
            ("DELETE", "rekey/init", self.rekey_cancel),
            ("POST", "rekey/update", self.rekey_update),
            ("GET", "rekey/verify", self.rekey_verify_status),
            ("POST", "rekey/verify", self.rekey_verify),
            ("DELETE", "rekey/verify", self.rekey_verify_restart),
            ("POST", "rotate", self.rotate),
            ("GET", "key-status", self.key_status),
            ("GET", "rotate/config", self.rotation_config),
            ("POST", "rotate/config", self.set_rotation_config),
        ]
        return [Route(method, path, self._guarded(handler)) for method, path, handler in routes]

    def _guarded(
        self, handler: Callable[[Seal, Call], Awaitable[Answer]]
    ) -> Callable[[Call], Awaitable[Answer]]:
        """``handler`` with the seal, the seal's refusals as admin errors, and the upkeep
        told of whatever changed."""

        async def route(call: Call) -> Answer:
            upkeep = self.upkeep
            if upkeep is None:
                raise AdminError(409, NO_KEYRING)
            try:
                return await handler(upkeep.seal, call)
            except (SealError, KeyringError, KeyUnavailable) as e:
                raise _refusal(e) from None
            finally:
                await upkeep.noticed()

        return route

    def _now(self) -> float:
        return self.clock.seconds()

    # -- init, unseal, seal -------------------------------------------------------------------

    def _seal_status(self, seal: Seal) -> dict[str, Any]:
        view = _status_view(seal.status())
        view["version"] = self.version
        view["storage_type"] = self.storage_type
        return view

    async def seal_status(self, seal: Seal, call: Call) -> Answer:
        # Sealed: a rekey elsewhere that this instance could not follow sealed it.
        with contextlib.suppress(Sealed):
            await seal.refresh()
        return 200, self._seal_status(seal)

    async def init(self, seal: Seal, call: Call) -> Answer:
        shares = _integer(call.body, "secret_shares")
        threshold = _integer(call.body, "secret_threshold")
        result = await seal.init(self._now(), shares, threshold)
        return 200, _keys_view(result.keys)

    async def unseal(self, seal: Seal, call: Call) -> Answer:
        if _boolean(call.body, "reset", False):
            seal.reset_unseal()
        elif "key" in call.body:
            await seal.submit(_share(call.body))
        else:
            await seal.refresh()
            state = seal.state
            if state is None:
                raise NotInitialized()
            if state.seal_type != AUTO:
                raise AdminError(400, '"key" is required: an unseal key share')
            await seal.unseal_auto()
        return 200, self._seal_status(seal)

    async def seal_now(self, seal: Seal, call: Call) -> Answer:
        if seal.state is None:
            await seal.refresh()
            if seal.state is None:
                raise NotInitialized()
        seal.seal()
        return 200, self._seal_status(seal)

    # -- rekey --------------------------------------------------------------------------------

    async def rekey_status(self, seal: Seal, call: Call) -> Answer:
        return 200, _rekey_view(seal.rekey_status())

    async def rekey_init(self, seal: Seal, call: Call) -> Answer:
        shares = _integer(call.body, "secret_shares")
        threshold = _integer(call.body, "secret_threshold")
        if shares is None or threshold is None:
            raise AdminError(400, '"secret_shares" and "secret_threshold" are required')
        verify = _boolean(call.body, "require_verification", False)
        return 200, _rekey_view(seal.rekey_init(shares, threshold, verify))

    async def rekey_cancel(self, seal: Seal, call: Call) -> Answer:
        nonce = call.query.get("nonce", "")
        if not nonce and seal.rekey_status().started:
            raise AdminError(400, '"nonce" is required to cancel a rekey (?nonce=...)')
        seal.rekey_cancel(nonce)
        return 200, _rekey_view(seal.rekey_status())

    async def rekey_update(self, seal: Seal, call: Call) -> Answer:
        nonce = _string(call.body, "nonce")
        update = await seal.rekey_update(nonce, _share(call.body), self._now())
        if not update.complete:
            return 200, _rekey_view(seal.rekey_status())
        view: dict[str, Any] = {
            "nonce": update.nonce,
            "complete": True,
            **_keys_view(update.keys),
            "verification_required": update.verification_required,
        }
        if update.verification_required:
            view["verification_nonce"] = update.verification_nonce
        return 200, view

    async def rekey_verify_status(self, seal: Seal, call: Call) -> Answer:
        return 200, _verify_view(seal.rekey_verify_status())

    async def rekey_verify(self, seal: Seal, call: Call) -> Answer:
        nonce = _string(call.body, "nonce")
        return 200, _verify_view(await seal.rekey_verify(nonce, _share(call.body), self._now()))

    async def rekey_verify_restart(self, seal: Seal, call: Call) -> Answer:
        return 200, _verify_view(seal.rekey_verify_restart())

    # -- rotation -----------------------------------------------------------------------------

    async def rotate(self, seal: Seal, call: Call) -> Answer:
        return 200, _key_status_view(await seal.rotate(self._now()))

    async def key_status(self, seal: Seal, call: Call) -> Answer:
        return 200, _key_status_view(seal.key_status())

    async def rotation_config(self, seal: Seal, call: Call) -> Answer:
        return 200, _rotation_view(seal.keys.keyring.rotation)

    async def set_rotation_config(self, seal: Seal, call: Call) -> Answer:
        if self.upkeep is not None and self.upkeep.rotation is not None:
            raise AdminError(
                409,
                "the rotation policy is set in the configuration file "
                "(encryption.keyring.rotation): change it there and reload",
            )
        current = seal.keys.keyring.rotation
        changes: dict[str, Any] = {}
        max_operations = _integer(call.body, "max_operations")
        if max_operations is not None:
            changes["max_operations"] = max_operations
        if "interval" in call.body:
            try:
                changes["interval"] = parse_duration(call.body["interval"])
            except ValueError:
                raise AdminError(400, '"interval" must be a duration such as "24h"') from None
        if "enabled" in call.body:
            changes["enabled"] = _boolean(call.body, "enabled", True)
        config = evolve(current, **changes)
        await seal.set_rotation_config(config, self._now())
        return 200, _rotation_view(config)
