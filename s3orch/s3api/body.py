"""A request body as the client meant it: framing removed, signatures and hashes checked.

The body is read back from its spool, possibly while it is still arriving.
The final block is held back until every check passes (SHA-256 of the
payload, aws-chunked chunk and trailer signatures), so a backend never
receives a complete object that fails them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

from s3orch.s3api.checksums import Checksum, Requested
from s3orch.s3api.chunked import ChunkedDecoder
from s3orch.s3api.errors import S3Error
from s3orch.s3api.spool import BodyDigests, Spool
from s3orch.sigv4 import AuthResult, SigV4Error

BLOCK_SIZE = 1024 * 1024
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
STREAMING_PREFIX = "STREAMING-"


class RequestBody:
    """The payload of one request; iterate ``chunks()`` exactly once."""

    def __init__(
        self,
        spool: Spool,
        auth: AuthResult | None,
        decoded_length: int | None,
        checksum: Requested | None = None,
    ) -> None:
        self._spool = spool
        self._checksum = checksum
        self.checksum_value: str | None = None
        declared = auth.payload_hash if auth else "UNSIGNED-PAYLOAD"
        self._expected_sha256 = declared if _HEX_SHA256.fullmatch(declared) else None
        self._decoder: ChunkedDecoder | None = None
        if declared.startswith(STREAMING_PREFIX):
            self._decoder = ChunkedDecoder(declared, auth, decoded_length)
        self.trailers: dict[str, str] = {}
        self._digests: BodyDigests | None = None

    def checksum_headers(self) -> dict[str, str]:
        """The verified additional checksum, as the header to store, once the body is read."""
        if self._checksum is None or self.checksum_value is None:
            return {}
        return {self._checksum.header: self.checksum_value}

    def md5(self) -> bytes | None:
        """The MD5 the spool took of a plain body, once ``chunks()`` has checked the body."""
        return self._digests.md5 if self._digests is not None else None

    async def chunks(self) -> AsyncIterator[bytes]:
        spooled = self._spool.digests if self._decoder is None else None
        hashed_by_spool = spooled is not None and spooled.sha256_hex is not None
        sha256 = hashlib.sha256() if self._expected_sha256 and not hashed_by_spool else None
        spool_checksum = spooled.checksum if spooled is not None else None
        checksum = None
        if self._checksum is not None and spool_checksum is None:
            checksum = Checksum(self._checksum.algorithm)
        held = b""
        offset = 0
        while True:
            block = await self._spool.read(offset, BLOCK_SIZE)
            if not block:
                break
            offset += len(block)
            if self._decoder is not None:
                block = self._decode(block)
            elif sha256 is not None:
                sha256.update(block)
            if checksum is not None:
                checksum.update(block)
            if not block:
                continue
            if held:
                yield held
            held = block
        if self._decoder is not None:
            try:
                self.trailers = self._decoder.finish()
            except SigV4Error as e:
                raise S3Error(e.code, e.message, e.status) from None
        digests = await self._spool.digested() if self._decoder is None else None
        if self._expected_sha256 is not None:
            computed = sha256.hexdigest() if sha256 is not None else None
            if computed is None and digests is not None:
                computed = digests.sha256_hex
            self._check_sha256(computed or "")
        if self._checksum is not None:
            found = checksum or (digests.checksum if digests is not None else None)
            assert found is not None
            self.checksum_value = found.b64()
            self._checksum.verify(self.checksum_value, self.trailers)
        self._digests = digests
        if held:
            yield held

    def _check_sha256(self, computed: str) -> None:
        if computed != self._expected_sha256:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ClientComputedContentSHA256=self._expected_sha256 or "",
                S3ComputedContentSHA256=computed,
            )

    def _decode(self, block: bytes) -> bytes:
        assert self._decoder is not None
        try:
            return self._decoder.feed(block)
        except SigV4Error as e:
            raise S3Error(e.code, e.message, e.status) from None
