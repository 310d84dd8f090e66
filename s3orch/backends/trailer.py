"""A body sent to an S3 server with a CRC32 the server checks: aws-chunked with a trailer.

A checksum in a header must be known before the first byte goes out, which would mean holding
the body. The trailing form (``x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER``)
lets the CRC32 follow the payload, computed as it streams::

    <size hex>\\r\\n<size bytes>\\r\\n ... 0\\r\\nx-amz-checksum-crc32:<base64>\\r\\n\\r\\n

The server refuses the body (``BadDigest``) if the bytes it received have another CRC32, and
keeps the value with the object or part: a multipart upload created with
``x-amz-checksum-algorithm: CRC32`` is completed with each part's value.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import AsyncIterator
from typing import Final

from s3orch.streams import LengthMismatch, close_source

CHUNK_SIZE: Final = 8 * 1024 * 1024
"""Payload bytes per chunk. The bytes stream through whatever the size; large chunks keep the
framing small, and some servers (moto) join chunks by copying what they have so far."""
TRAILER: Final = "x-amz-checksum-crc32"
HEADERS: Final = {"content-encoding": "aws-chunked", "x-amz-trailer": TRAILER}
"""Sent with every such body, besides ``x-amz-decoded-content-length``."""
_END: Final = len(f"0\r\n{TRAILER}:AAAAAA==\r\n\r\n")


def encode_crc32(crc: int) -> str:
    """A CRC32 as S3 writes it: the four bytes, big-endian, in base64."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class Crc32Body:
    """Exactly ``length`` bytes of ``source`` framed as aws-chunked, ending with their CRC32.

    ``checksum`` holds the CRC32 once the whole body has been produced. A source that yields
    more or fewer than ``length`` bytes raises ``LengthMismatch`` before the final chunk, so
    the server never sees a complete body.
    """

    def __init__(self, source: AsyncIterator[bytes], length: int) -> None:
        if length < 0:
            raise ValueError("length must not be negative")
        self._source = source
        self.length = length
        self.checksum: str | None = None

    @property
    def wire_length(self) -> int:
        """The Content-Length of the framed body."""
        full, rest = divmod(self.length, CHUNK_SIZE)
        framing = full * len(f"{CHUNK_SIZE:x}\r\n\r\n")
        if rest:
            framing += len(f"{rest:x}\r\n\r\n")
        return self.length + framing + _END

    async def stream(self) -> AsyncIterator[bytes]:
        crc = sent = left = 0
        try:
            async for data in self._source:
                if sent + len(data) > self.length:
                    raise LengthMismatch(f"the body is longer than {self.length} bytes")
                crc = zlib.crc32(data, crc)
                at = 0
                while at < len(data):
                    if not left:
                        left = min(CHUNK_SIZE, self.length - sent)
                        yield f"{left:x}\r\n".encode("ascii")
                    take = min(left, len(data) - at)
                    yield data if take == len(data) else data[at : at + take]
                    at += take
                    sent += take
                    left -= take
                    if not left:
                        yield b"\r\n"
            if sent != self.length:
                raise LengthMismatch(f"the body ended after {sent} of {self.length} bytes")
            self.checksum = encode_crc32(crc)
            yield f"0\r\n{TRAILER}:{self.checksum}\r\n\r\n".encode("ascii")
        finally:
            await close_source(self._source)
