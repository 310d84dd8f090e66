"""A request body as the client meant it: framing removed, signatures and hashes checked.

Twisted has spooled the body to a file by the time a route runs. Reading it
back yields the payload in blocks; the final block is held back until every
check passes (SHA-256 of the payload, aws-chunked chunk and trailer
signatures), so a backend never receives a complete object that fails them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import IO

from s3orch.s3api.chunked import ChunkedDecoder
from s3orch.s3api.errors import S3Error
from s3orch.sigv4 import AuthResult, SigV4Error

BLOCK_SIZE = 256 * 1024
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
STREAMING_PREFIX = "STREAMING-"


class RequestBody:
    """The payload of one request; iterate ``chunks()`` exactly once."""

    def __init__(
        self,
        content: IO[bytes],
        auth: AuthResult | None,
        decoded_length: int | None,
    ) -> None:
        self._content = content
        self._auth = auth
        declared = auth.payload_hash if auth else "UNSIGNED-PAYLOAD"
        self._expected_sha256 = declared if _HEX_SHA256.fullmatch(declared) else None
        self._decoder: ChunkedDecoder | None = None
        if declared.startswith(STREAMING_PREFIX):
            self._decoder = ChunkedDecoder(declared, auth, decoded_length)
        self.trailers: dict[str, str] = {}

    @property
    def streaming(self) -> bool:
        return self._decoder is not None

    async def chunks(self) -> AsyncIterator[bytes]:
        self._content.seek(0)
        sha256 = hashlib.sha256() if self._expected_sha256 else None
        held = b""
        while True:
            block = self._content.read(BLOCK_SIZE)
            if not block:
                break
            if self._decoder is not None:
                block = self._decode(block)
            elif sha256 is not None:
                sha256.update(block)
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
        if sha256 is not None and sha256.hexdigest() != self._expected_sha256:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ClientComputedContentSHA256=self._expected_sha256 or "",
                S3ComputedContentSHA256=sha256.hexdigest(),
            )
        if held:
            yield held

    def _decode(self, block: bytes) -> bytes:
        assert self._decoder is not None
        try:
            return self._decoder.feed(block)
        except SigV4Error as e:
            raise S3Error(e.code, e.message, e.status) from None
