"""s3orch's keyring while the server runs: unsealing, following other instances, counting.

The ``Seal`` (``s3orch.crypto.seal``) is pure state; this keeps it current:

- at start, and every ``REFRESH_INTERVAL`` seconds, it reads the stored seal state, so that a
  rotation or rekey made by another instance on the same PostgreSQL is used within seconds;
  with an auto-unseal seal it unseals through the configured key until that has worked once
  (an operator who then seals on purpose unseals again with ``s3orch operator unseal``);
- every ``COUNT_INTERVAL`` seconds it adds this process's wrap counts to the shared totals
  (``WrapCounts``) and rotates the active term when it is due (Vault's ``rotate/config``);
- when it sees the keyring unsealed, it stores the configured rotation policy, if the file
  gives one, and tells the service (which then checks that every DEK's key is known).

``s3o_seal_sealed`` follows what it sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from s3orch import metrics
from s3orch.crypto.keyring import RotationConfig, Sealed
from s3orch.crypto.keys import KeyProviderError
from s3orch.crypto.seal import AUTO, Seal, SealError
from s3orch.loops import PeriodicService
from s3orch.store.seal import WrapCounts

log = Logger()

REFRESH_INTERVAL = 2.0
"""Seconds between reads of the stored seal state (another instance's rotation shows then)."""
COUNT_INTERVAL = 10.0
"""Seconds between flushes of the wrap counts, each followed by a check for a due rotation."""


@define(eq=False)
class KeyringUpkeep:
    """Keeps ``seal`` in step with the database. ``rotation`` is the policy the configuration
    file sets (None: the one stored in the keyring stands); ``on_unsealed`` runs each time the
    keyring is seen unsealed after being sealed."""

    seal: Seal
    counts: WrapCounts
    clock: IReactorTime
    rotation: RotationConfig | None = None
    on_unsealed: Callable[[], Awaitable[object]] | None = None
    wraps: bool = True
    """False for a decrypt-only keyring: it is never rotated automatically."""
    _was_sealed: bool = field(init=False, default=True)
    _auto_unseal_pending: bool = field(init=False, default=True)
    _last_error: str = field(init=False, default="")

    def loops(self) -> list[PeriodicService]:
        return [
            PeriodicService("keyring-refresh", REFRESH_INTERVAL, self.sync, self.clock, False),
            PeriodicService("keyring-counts", COUNT_INTERVAL, self.upkeep, self.clock, False),
        ]

    async def start(self) -> None:
        """The first sync, at startup: never fails the start (a sealed s3orch still serves
        everything that needs no key)."""
        try:
            await self.sync()
        except Exception:
            log.failure("could not read the keyring's seal at startup; retrying in the background")
        metrics.seal_sealed.set(1 if self.seal.sealed else 0)

    async def sync(self) -> None:
        """Read the stored state; auto-unseal if that is still to be done."""
        seal = self.seal
        try:
            state = seal.state
            if (
                self._auto_unseal_pending
                and seal.sealed
                and seal.auto_unseal is not None
                and (state is None or state.seal_type == AUTO)
            ):
                await self._auto_unseal()
            else:
                await seal.refresh()
        except Sealed:
            pass  # refresh sealed this instance after a rekey it could not follow; logged
        await self.noticed()

    async def _auto_unseal(self) -> None:
        await self.seal.refresh()
        state = self.seal.state
        if state is None or not self.seal.sealed:
            return  # not initialized yet (s3orch operator init), or nothing to do
        if state.seal_type != AUTO:
            self._auto_unseal_pending = False
            log.error(
                "keyring.seal is auto, but the stored keyring is sealed with key shares: "
                "unseal it with them (s3orch operator unseal)"
            )
            return
        try:
            await self.seal.unseal_auto()
        except (KeyProviderError, SealError) as e:
            # Vault down, or the configured key is not the one that sealed the root key.
            if str(e) != self._last_error:
                log.error("auto-unseal failed, retrying: {error}", error=str(e))
            self._last_error = str(e)

    async def noticed(self) -> None:
        """Publish the seal's state, and run the unseal hooks on a sealed -> unsealed change.
        The admin API calls this after each operation, so nothing waits for the next sync."""
        sealed = self.seal.sealed
        metrics.seal_sealed.set(1 if sealed else 0)
        if sealed:
            self._was_sealed = True
            return
        metrics.keyring_active_term.set(self.seal.keys.keyring.active_term)
        if not self._was_sealed:
            return
        self._was_sealed = False
        self._auto_unseal_pending = False
        try:
            await self.apply_rotation()
            await self.flush()
            if self.on_unsealed is not None:
                await self.on_unsealed()
        except BaseException:
            self._was_sealed = True  # run them again at the next sync
            raise

    async def apply_rotation(self) -> None:
        """Store the configured rotation policy in the keyring if it differs."""
        if self.rotation is None or self.seal.sealed:
            return
        if self.seal.keys.keyring.rotation != self.rotation:
            await self.seal.set_rotation_config(self.rotation, self.clock.seconds())
            log.info("stored the configured keyring rotation policy")

    async def flush(self) -> None:
        """Add this process's wrap counts to the shared totals and learn everyone's."""
        keys = self.seal.keys
        taken = keys.take_unflushed()
        try:
            totals = await self.counts.add(taken)
        except BaseException:
            keys.restore_unflushed(taken)
            raise
        for term, total in totals.items():
            keys.record_persisted(term, total)

    async def upkeep(self) -> None:
        await self.flush()
        if self.wraps and await self.seal.rotate_if_due(self.clock.seconds()) is not None:
            await self.noticed()
