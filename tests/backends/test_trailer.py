"""Crc32Body: an aws-chunked body with a trailing CRC32, byte for byte what botocore sends."""

from __future__ import annotations

import io
import os
import zlib

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from s3orch.backends import trailer
from s3orch.backends.trailer import Crc32Body, encode_crc32
from s3orch.streams import LengthMismatch
from tests.backends.sources import chunks_of


async def framed(data: bytes, piece: int, length: int | None = None) -> tuple[bytes, Crc32Body]:
    body = Crc32Body(chunks_of(data, piece), len(data) if length is None else length)
    return b"".join([block async for block in body.stream()]), body


def botocore_framing(data: bytes, chunk_size: int) -> bytes:
    wrapper = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=chunk_size,
    )
    return wrapper.read()


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 2000, 4567])
@pytest.mark.parametrize("piece", [1, 7, 1000, 5000])
async def test_framing_matches_botocore(
    monkeypatch: pytest.MonkeyPatch, size: int, piece: int
) -> None:
    """Whatever pieces the source yields, the wire bytes are botocore's aws-chunked encoding of
    the same payload with the same chunk size, and wire_length is their exact length."""
    monkeypatch.setattr(trailer, "CHUNK_SIZE", 1000)
    data = os.urandom(size)
    wire, body = await framed(data, piece)
    assert wire == botocore_framing(data, 1000)
    assert body.wire_length == len(wire)
    assert body.checksum == encode_crc32(zlib.crc32(data))


async def test_default_chunk_size_matches_botocore() -> None:
    """At the real chunk size too (8 MiB: one full chunk and a short one)."""
    data = os.urandom(trailer.CHUNK_SIZE + 12345)
    wire, body = await framed(data, 65536)
    assert wire == botocore_framing(data, trailer.CHUNK_SIZE)
    assert body.wire_length == len(wire)


@pytest.mark.parametrize("declared", [99, 101])
async def test_a_source_of_the_wrong_length_never_ends_the_body(declared: int) -> None:
    """A source shorter or longer than declared raises before the final chunk goes out, so
    the server is left with an incomplete body it will not store."""
    body = Crc32Body(chunks_of(b"x" * 100, 30), declared)
    sent: list[bytes] = []
    with pytest.raises(LengthMismatch):
        async for block in body.stream():
            sent.append(block)
    assert not any(block.startswith(b"0\r\n") for block in sent)
    assert body.checksum is None


@pytest.mark.parametrize("data", [b"", b"hello\n", bytes(range(256)) * 100])
def test_crc32_is_written_as_botocore_writes_it(data: bytes) -> None:
    """Big-endian, base64: the x-amz-checksum-crc32 value the AWS SDKs send."""
    expected = Crc32Checksum()
    expected.update(data)
    assert encode_crc32(zlib.crc32(data)) == expected.b64digest()
