"""Body sources and keys shared by the backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

MiB = 1024 * 1024

# Keys that break naive mappings: S3-encoding specials, dot segments, empty
# segments, unicode, and 1024-byte keys (ASCII, 2-byte UTF-8, and all folders).
EDGE_KEYS = [
    "plain",
    "with space",
    "plus+sign",
    "percent%20literal",
    "%",
    "..",
    "../escape",
    "a/../../b",
    "./dot",
    ".hidden",
    "a//b",
    "/leading",
    "trailing/",
    "question?mark",
    "hash#tag",
    "tilde~",
    "amp&eq=semi;colon:at@",
    "star*quote'paren()!$,",
    "back\\slash",
    'dq"<xml>&amp;',
    "unicode/été/日本語/😀",
    "dir",
    "dir/child",
    "dir=",
    "dir+",
    "a" * 1024,
    "é" * 512,
    "x/" * 512,
]


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def generated(length: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``length`` deterministic bytes, made chunk by chunk (never held whole)."""
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < length:
        piece = block[: min(size, length - sent)]
        sent += len(piece)
        yield piece


class SourceFailed(Exception):
    """The body source broke, as a client upload might."""


async def failing_after(data: bytes, at: int) -> AsyncIterator[bytes]:
    yield data[:at]
    raise SourceFailed()
