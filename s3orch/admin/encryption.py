"""Admin operations on encryption: key rotation and converting existing objects, as jobs.

``POST rotate-encryption-key`` ``{"old_key_id": "config-0", "wait": true}`` re-wraps every data
key of that key with the primary key; ``POST encrypt-existing`` and ``POST decrypt-existing``
rewrite objects. Each answers when its job ends (``"wait": false``: 202 and the job id at
once); GET/DELETE ``jobs/{id}`` follow and cancel them.
"""

from __future__ import annotations

from attrs import define

from s3orch.admin.resource import (
    AdminError,
    Answer,
    Call,
    Route,
    begin_job,
    counters_view,
    job_answer,
    start_job,
    wait_requested,
)
from s3orch.jobs import conversion, rotation
from s3orch.jobs.runner import JobRunner
from s3orch.objects.sealing import Encryption


@define
class EncryptionOperations:
    jobs: JobRunner
    encryption: Encryption

    def routes(self) -> list[Route]:
        return [
            Route("POST", rotation.KIND, self.rotate),
            Route("POST", conversion.ENCRYPT, self.encrypt_existing),
            Route("POST", conversion.DECRYPT, self.decrypt_existing),
        ]

    async def rotate(self, call: Call) -> Answer:
        old_key_id = call.body.get("old_key_id")
        if not isinstance(old_key_id, str) or not old_key_id:
            raise AdminError(400, '"old_key_id" is required: the key id the DEKs were wrapped with')
        keys = self.encryption.keys
        if keys is None:
            raise AdminError(409, "encryption has no master key configured")
        if keys.primary_id not in keys.key_ids().values():  # a sealed keyring lists no key
            raise AdminError(
                503, f"the primary key {keys.primary_id} is unavailable: is s3orch sealed?"
            )
        return await start_job(
            self.jobs,
            rotation.KIND,
            {"old_key_id": old_key_id},
            lock_key=f"{rotation.KIND}:{old_key_id}",
            wait=wait_requested(call.body),
            view=counters_view("rotated"),
        )

    async def encrypt_existing(self, call: Call) -> Answer:
        if not self.encryption.seals:
            raise AdminError(409, "encryption is not enabled: nothing would be sealed")
        return await self._convert(conversion.ENCRYPT, call)

    async def decrypt_existing(self, call: Call) -> Answer:
        return await self._convert(conversion.DECRYPT, call)

    async def _convert(self, kind: str, call: Call) -> Answer:
        wait = wait_requested(call.body)
        job = await begin_job(self.jobs, kind, {}, conversion.LOCK_KEY)
        if job.kind != kind:
            raise AdminError(409, f"a {job.kind} job ({job.id}) is running; cancel it first")
        return await job_answer(self.jobs, job, wait, counters_view("converted"))
