"""Key rotation: re-wrap every data key of one master key with the primary key.

Only the wrapping in the metadata changes; object bytes are never read or written, so a
rotation costs the same whatever the objects' sizes. Each batch unwraps and re-wraps its DEKs,
then stores them with compare-and-swap (``DekStore.replace``): a DEK whose row changed in
between (an overwrite, a delete, a completed upload) is left alone, never reverted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define
from twisted.logger import Logger
from zope.interface import implementer

from s3orch import metrics
from s3orch.crypto.keys import KeyProviderError, WrappedKey
from s3orch.jobs.records import BatchResult
from s3orch.jobs.runner import IJobKind
from s3orch.objects.errors import ObjectError
from s3orch.objects.sealing import Encryption
from s3orch.store.deks import DekStore, KeySelection, StoredDek

log = Logger()

KIND = "rotate-encryption-key"


class NoKeys(Exception):
    """Encryption has no master key to rotate to."""


@implementer(IJobKind)
@define
class KeyRotation:
    """The ``rotate-encryption-key`` job: params ``{"old_key_id": "config-0"}``."""

    deks: DekStore
    encryption: Encryption

    def selection(self, params: Mapping[str, Any]) -> KeySelection:
        """The DEKs recorded under ``old_key_id`` when wrapped, or wrapped by the key that has
        that id now, except those the primary key already wraps."""
        keys = self.encryption.keys
        if keys is None:
            raise NoKeys("encryption has no master key configured")
        old = str(params["old_key_id"])
        ids = keys.key_ids()
        primary = next(fp for fp, key_id in ids.items() if key_id == keys.primary_id)
        current = tuple(fp for fp, key_id in ids.items() if key_id == old and fp != primary)
        return KeySelection(old, current, primary)

    async def count(self, params: Mapping[str, Any]) -> int:
        return await self.deks.count(self.selection(params))

    async def batch(self, params: Mapping[str, Any], cursor: str | None, limit: int) -> BatchResult:
        page, next_cursor = await self.deks.page(self.selection(params), cursor, limit)
        changes: list[tuple[StoredDek, WrappedKey]] = []
        errors: list[str] = []
        for dek in page:
            try:
                changes.append((dek, await self._rewrap(dek.wrapped)))
            except (ObjectError, KeyProviderError) as e:
                errors.append(f"{dek.row_id}: {e}")
        await self.deks.replace(changes)
        metrics.key_rotation_objects_total.labels("success").inc(len(changes))
        metrics.key_rotation_objects_total.labels("error").inc(len(errors))
        return BatchResult(
            next_cursor=next_cursor,
            processed=len(changes),
            failed=len(errors),
            errors=tuple(errors[-10:]),
            done=next_cursor is None,
        )

    async def _rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        keys = self.encryption.keys
        assert keys is not None
        return await keys.wrap(await self.encryption.data_key(wrapped))
