"""Key rotation: re-wrap every data key of one master key with the primary key.

Only the wrapping in the metadata changes; object bytes are never read or written, so a
rotation costs the same whatever the objects' sizes. Each batch unwraps and re-wraps its DEKs,
then stores them with compare-and-swap (``DekStore.replace``): a DEK whose row changed in
between (an overwrite, a delete, a completed upload) is left alone, never reverted.

Rotating the Vault Transit key itself (``old_key_id`` = the primary Vault key's name, after
``vault write -f transit/keys/<name>/rotate``) re-wraps the DEKs wrapped by an older key
version inside Vault, with Transit ``rewrap`` in batches: no DEK leaves Vault in the clear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from s3orch import metrics
from s3orch.crypto.keys import KeyProviderError, WrappedKey
from s3orch.crypto.vault import VaultTransitKeys, ciphertext_version
from s3orch.jobs.records import BatchResult
from s3orch.jobs.runner import IJobKind
from s3orch.objects.errors import ObjectError
from s3orch.objects.sealing import Encryption
from s3orch.store.deks import DekStore, KeySelection, StoredDek

log = Logger()

KIND = "rotate-encryption-key"
YIELD_EVERY = 50  # DEKs re-wrapped between two turns of the reactor
# Short batches and a rest after each, as a multiple of the batch's time, keep client latency
# close to idle during a rotation (benchmarks/bench_rotation.py; p99 of 1 KiB GETs went to
# 3-6x idle with batches of 500 and no rest). Inside Vault a batch is one Transit rewrap call
# of the provider's rewrap_batch_size; Vault's own work does not show in s3orch's time, so
# it rests longer. Measured with OpenBao on the same 2 CPUs, 100,000 DEKs: batches of 100
# resting 3x gave 2,900-3,050 DEKs/s with GET p99 1.6-2.3x idle; resting 4x, 2,300-2,650 with
# the same spread of p99 (1.4-2.4x); batches of 50 resting 3x, 2,043 and 1.9x.
LOCAL_BATCH = 100
LOCAL_REST = 1.0
VAULT_REST = 3.0


class NoKeys(Exception):
    """Encryption has no master key to rotate to."""


@implementer(IJobKind)
@define
class KeyRotation:
    """The ``rotate-encryption-key`` job: params ``{"old_key_id": "config-0"}``."""

    deks: DekStore
    encryption: Encryption
    vault: Callable[[], VaultTransitKeys | None] = lambda: None
    clock: IReactorTime | None = None
    """The Vault provider among the keys now (they change on reload)."""

    def selection(self, params: Mapping[str, Any]) -> KeySelection:
        """The DEKs recorded under ``old_key_id`` when wrapped, or wrapped by the key that has
        that id now, except those the primary key already wraps."""
        keys = self.encryption.keys
        if keys is None:
            raise NoKeys("encryption has no master key configured")
        old = str(params["old_key_id"])
        vault = self.vault()
        if vault is not None and self._inside_vault(old):
            return KeySelection(old, (vault.fingerprint,), exclude="")
        ids = keys.key_ids()
        primary = next((fp for fp, key_id in ids.items() if key_id == keys.primary_id), None)
        if primary is None:  # a sealed keyring lists no key
            raise NoKeys(f"the primary key {keys.primary_id} is unavailable (is s3orch sealed?)")
        current = tuple(fp for fp, key_id in ids.items() if key_id == old and fp != primary)
        return KeySelection(old, current, primary)

    async def count(self, params: Mapping[str, Any]) -> int:
        selection = self.selection(params)
        if not self._inside_vault(str(params["old_key_id"])):
            return await self.deks.count(selection)
        # Only the DEKs of older Transit key versions need re-wrapping: count those.
        vault = self.vault()
        assert vault is not None
        latest = (await vault.key_versions()).latest_version
        total, cursor = 0, None
        while True:
            page, cursor = await self.deks.page(selection, cursor, 5000)
            total += sum(1 for dek in page if _version(dek.wrapped.blob) < latest)
            if cursor is None:
                return total

    def _inside_vault(self, old_key_id: str) -> bool:
        keys = self.encryption.keys
        vault = self.vault()
        return vault is not None and keys is not None and old_key_id == keys.primary_id

    async def batch(self, params: Mapping[str, Any], cursor: str | None, limit: int) -> BatchResult:
        started = self.clock.seconds() if self.clock is not None else 0.0
        inside_vault = self._inside_vault(str(params["old_key_id"]))
        vault = self.vault()
        size = min(limit, vault.rewrap_batch_size if inside_vault and vault else LOCAL_BATCH)
        page, next_cursor = await self.deks.page(self.selection(params), cursor, size)
        changes: list[tuple[StoredDek, WrappedKey]] = []
        errors: list[str] = []
        if inside_vault:
            changes, errors = await self._rewrap_in_vault(page)
        else:
            for done, dek in enumerate(page, start=1):
                if done % YIELD_EVERY == 0 and self.clock is not None:
                    # Let the reactor serve requests between slices of the cipher work.
                    await deferLater(self.clock, 0)
                try:
                    changes.append((dek, await self.encryption.by_primary(dek.wrapped)))
                except (ObjectError, KeyProviderError) as e:
                    errors.append(f"{dek.row_id}: {e}")
        await self.deks.replace(changes)
        metrics.key_rotation_objects_total.labels("success").inc(len(changes))
        metrics.key_rotation_objects_total.labels("error").inc(len(errors))
        if self.clock is not None and next_cursor is not None:
            rest = VAULT_REST if inside_vault else LOCAL_REST
            await deferLater(self.clock, (self.clock.seconds() - started) * rest)
        return BatchResult(
            next_cursor=next_cursor,
            processed=len(changes),
            failed=len(errors),
            errors=tuple(errors[-10:]),
            done=next_cursor is None,
        )

    async def _rewrap_in_vault(
        self, page: list[StoredDek]
    ) -> tuple[list[tuple[StoredDek, WrappedKey]], list[str]]:
        """Transit ``rewrap`` for the DEKs of older key versions; the others are current."""
        vault = self.vault()
        assert vault is not None
        latest = (await vault.key_versions()).latest_version
        changes: list[tuple[StoredDek, WrappedKey]] = []
        errors: list[str] = []
        old = []
        for dek in page:
            if _version(dek.wrapped.blob) < latest:
                old.append(dek)
        results = await vault.rewrap_batch([dek.wrapped for dek in old])
        for dek, result in zip(old, results, strict=True):
            if isinstance(result, WrappedKey):
                changes.append((dek, result))
            else:
                errors.append(f"{dek.row_id}: {result}")
        return changes, errors


def _version(blob: bytes) -> int:
    """The Transit key version of a wrapped DEK; a malformed one counts as old, so that
    re-wrapping it reports its error."""
    try:
        return ciphertext_version(blob)
    except KeyProviderError:
        return 0
