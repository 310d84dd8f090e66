"""Converting stored objects: ``encrypt-existing`` seals plaintext ones, ``decrypt-existing``
turns sealed ones back into plaintext (before turning encryption off for good).

Each object is rewritten to a new storage key and swapped in by one transaction that also
commits its DEK (``Orchestrator.rewrite``): no byte is overwritten in place, so no DEK can be
lost, and a client write that races with the job always wins. Quotas count the new bytes from
their reservation on, and the old ones until they are deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define
from twisted.logger import Logger
from zope.interface import implementer

from s3orch.backends.interface import BackendError
from s3orch.jobs.records import BatchResult
from s3orch.jobs.runner import IJobKind
from s3orch.objects.errors import ObjectError
from s3orch.objects.orchestrator import Orchestrator
from s3orch.streams import LengthMismatch

log = Logger()

ENCRYPT = "encrypt-existing"
DECRYPT = "decrypt-existing"
LOCK_KEY = "convert-existing"
"""Both kinds hold this lock: encrypting and decrypting at once would undo each other."""

# Objects are whole transfers: a batch is a handful, so progress is saved often.
BATCH_LIMIT = 20


@implementer(IJobKind)
@define
class Conversion:
    """Rewrites every current version that is not yet as ``seal`` wants it."""

    objects: Orchestrator
    seal: bool

    async def count(self, params: Mapping[str, Any]) -> int:
        return await self.objects.store.count_versions(sealed=not self.seal)

    async def batch(self, params: Mapping[str, Any], cursor: str | None, limit: int) -> BatchResult:
        limit = min(limit, BATCH_LIMIT)
        store = self.objects.store
        rows = await store.versions_after(cursor or "", limit, sealed=not self.seal)
        processed = 0
        errors: list[str] = []
        for version_id, bucket, key in rows:
            version = await store.get(bucket, key)
            if version is None or version.version_id != version_id:
                processed += 1  # replaced or deleted since: the new version is the client's
                continue
            try:
                await self.objects.rewrite(version, self.seal)
            except (ObjectError, BackendError, LengthMismatch) as e:
                errors.append(f"{bucket}/{key}: {type(e).__name__}: {e}")
                log.warn(
                    "could not convert {bucket}/{key}: {error}", bucket=bucket, key=key, error=e
                )
                continue
            processed += 1
        return BatchResult(
            next_cursor=rows[-1][0] if rows else cursor,
            processed=processed,
            failed=len(errors),
            errors=tuple(errors[-10:]),
            done=len(rows) < limit,
        )
