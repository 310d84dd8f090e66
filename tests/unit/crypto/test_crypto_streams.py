"""Tests for s3orch.crypto.streams: sealing and opening re-chunked async byte streams."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.crypto.envelope import (
    Opener,
    Sealer,
    TamperedError,
    TruncatedError,
    new_dek,
    parse_header,
    plaintext_range_to_chunks,
)
from s3orch.crypto.keys import WrappedKey
from s3orch.crypto.streams import SourceLengthMismatch, open_stream, seal_stream

T = TypeVar("T")

CHUNK = 4096
WRAPPED = WrappedKey("config-0", "local:" + "cd" * 16, bytes(60))


def run(awaitable: Awaitable[T]) -> T:
    """Run an awaitable whose awaits never wait (in-memory sources) to its result."""

    async def wait() -> T:
        return await awaitable

    coro = wait()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


class Source:
    """An async byte source that records how far it was read and whether it was closed."""

    def __init__(self, blocks: Sequence[bytes]) -> None:
        self.blocks = list(blocks)
        self.taken = 0
        self.closed = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        if self.taken == len(self.blocks):
            raise StopAsyncIteration
        self.taken += 1
        return self.blocks[self.taken - 1]

    async def aclose(self) -> None:
        self.closed = True


def cut(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` in blocks of the given sizes (cycled), the way a network delivers it."""
    blocks, pos, i = [], 0, 0
    while pos < len(data):
        size = max(sizes[i % len(sizes)], 1)
        blocks.append(data[pos : pos + size])
        pos += size
        i += 1
    return blocks


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in stream]


def seal_all(
    plaintext: bytes, sizes: Sequence[int] = (1000,), dek: bytes | None = None
) -> tuple[bytes, bytes]:
    dek = dek or new_dek()
    sealer = Sealer(dek, WRAPPED, CHUNK, len(plaintext))
    out = run(collect(seal_stream(Source(cut(plaintext, sizes)), sealer, len(plaintext))))
    assert out[0] == sealer.header
    blob = b"".join(out)
    assert len(blob) == sealer.ciphertext_size
    return blob, dek


def open_range(
    blob: bytes, dek: bytes, start: int, end: int, sizes: Sequence[int] = (5000,)
) -> bytes:
    header = parse_header(blob)
    span = plaintext_range_to_chunks(
        start, end, header.plain_size, header.chunk_size, header.header_len
    )
    fetched = blob[span.ciphertext_start : span.ciphertext_end + 1]
    stream = open_stream(
        Source(cut(fetched, sizes)),
        Opener(dek, header),
        span.first_chunk,
        span.last_chunk,
        span.skip,
        span.length,
    )
    return b"".join(run(collect(stream)))


def open_whole(
    blob: bytes, dek: bytes, body: bytes | None = None, sizes: Sequence[int] = (5000,)
) -> bytes:
    header = parse_header(blob)
    span = header.layout.whole()
    data = blob[header.header_len :] if body is None else body
    stream = open_stream(
        Source(cut(data, sizes)),
        Opener(dek, header),
        span.first_chunk,
        span.last_chunk,
        0,
        span.length,
    )
    return b"".join(run(collect(stream)))


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(0, 5 * CHUNK + 3),
    seal_sizes=st.lists(st.integers(0, 3 * CHUNK), min_size=1, max_size=5),
    open_sizes=st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=5),
)
def test_any_block_split_round_trips(
    size: int, seal_sizes: list[int], open_sizes: list[int]
) -> None:
    """Whatever block sizes the source yields on either side, the plaintext comes back."""
    plaintext = os.urandom(size)
    blob, dek = seal_all(plaintext, seal_sizes)
    assert open_whole(blob, dek, sizes=open_sizes) == plaintext


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK])
def test_edge_sizes_round_trip(size: int) -> None:
    """Sizes around the chunk boundary, and empty, round-trip through the streams."""
    plaintext = os.urandom(size)
    blob, dek = seal_all(plaintext, (CHUNK,))
    assert open_whole(blob, dek) == plaintext


def test_sealed_chunks_come_out_as_soon_as_their_plaintext_is_in() -> None:
    """Sealing pulls no more than it needs: one chunk out per chunk in (bounded buffering)."""
    plaintext = os.urandom(4 * CHUNK)
    source = Source(cut(plaintext, (CHUNK,)))
    stream = seal_stream(source, Sealer(new_dek(), WRAPPED, CHUNK, len(plaintext)), len(plaintext))
    run(stream.__anext__())  # header
    assert source.taken == 0
    run(stream.__anext__())
    assert source.taken == 1
    run(stream.__anext__())
    assert source.taken == 2
    run(stream.aclose())
    assert source.closed


def test_one_large_block_is_sealed_without_waiting_for_more() -> None:
    """A block holding several chunks yields them all before the source is asked again."""
    plaintext = os.urandom(3 * CHUNK + 5)
    source = Source([plaintext[: 3 * CHUNK], plaintext[3 * CHUNK :]])
    stream = seal_stream(source, Sealer(new_dek(), WRAPPED, CHUNK, len(plaintext)), len(plaintext))
    outputs = [run(stream.__anext__()) for _ in range(4)]
    assert source.taken == 1
    assert [len(o) for o in outputs[1:]] == [CHUNK + 16] * 3


# -- length mismatches -------------------------------------------------------------------------


@pytest.mark.parametrize("actual", [0, CHUNK - 1, 2 * CHUNK - 1, 2 * CHUNK + 1, 5 * CHUNK])
def test_wrong_source_length_never_completes_an_object(actual: int) -> None:
    """A short or long body raises before the final chunk, so no valid object is produced."""
    declared = 2 * CHUNK
    sealer = Sealer(new_dek(), WRAPPED, CHUNK, declared)
    source = Source(cut(os.urandom(actual), (1000,)))
    produced: list[bytes] = []

    async def drain() -> None:
        async for piece in seal_stream(source, sealer, declared):
            produced.append(piece)

    with pytest.raises(SourceLengthMismatch):
        run(drain())
    assert source.closed
    assert len(b"".join(produced)) < sealer.ciphertext_size


def test_declared_size_must_match_the_sealer() -> None:
    """seal_stream refuses a plain_size other than the sealer's."""
    sealer = Sealer(new_dek(), WRAPPED, CHUNK, 10)
    with pytest.raises(ValueError):
        run(collect(seal_stream(Source([b"x" * 11]), sealer, 11)))


# -- ranges ----------------------------------------------------------------------------------------


RANGE_PLAIN = os.urandom(6 * CHUNK + 77)
RANGE_BLOB, RANGE_DEK = seal_all(RANGE_PLAIN, (3000,))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), sizes=st.lists(st.integers(1, 2 * CHUNK), min_size=1, max_size=4))
def test_range_reads_match_the_plaintext_slice(data: st.DataObject, sizes: list[int]) -> None:
    """Any range, fetched as only its chunks and delivered in any blocks, gives the slice."""
    start = data.draw(st.integers(0, len(RANGE_PLAIN) - 1))
    end = data.draw(st.integers(start, len(RANGE_PLAIN) - 1))
    assert open_range(RANGE_BLOB, RANGE_DEK, start, end, sizes) == RANGE_PLAIN[start : end + 1]


def test_range_arguments_are_checked() -> None:
    """Chunks outside the object, a skip past the first chunk or too long a length are refused."""
    header = parse_header(RANGE_BLOB)
    opener = Opener(RANGE_DEK, header)
    for first, last, skip, length in (
        (0, 7, 0, 1),
        (2, 1, 0, 0),
        (0, 0, CHUNK, 1),
        (0, 0, 1, CHUNK),
    ):
        with pytest.raises(ValueError):
            run(collect(open_stream(Source([]), opener, first, last, skip, length)))


# -- failures: an error, never wrong or extra bytes -------------------------------------------------


def test_truncated_stream_raises_after_only_verified_plaintext() -> None:
    """Cut mid-chunk: the whole chunks before the cut come out, then TruncatedError."""
    header = parse_header(RANGE_BLOB)
    body = RANGE_BLOB[header.header_len : header.header_len + 2 * (CHUNK + 16) + 100]
    produced: list[bytes] = []

    async def drain() -> None:
        span = header.layout.whole()
        stream = open_stream(
            Source(cut(body, (999,))), Opener(RANGE_DEK, header), 0, span.last_chunk, 0, span.length
        )
        async for piece in stream:
            produced.append(piece)

    with pytest.raises(TruncatedError):
        run(drain())
    assert b"".join(produced) == RANGE_PLAIN[: 2 * CHUNK]


def test_truncation_at_a_chunk_boundary_raises() -> None:
    """Dropping the final chunk (or everything) is TruncatedError, never a short success."""
    header = parse_header(RANGE_BLOB)
    body = RANGE_BLOB[header.header_len :]
    for keep in (0, CHUNK + 16, 6 * (CHUNK + 16)):
        with pytest.raises(TruncatedError):
            open_whole(RANGE_BLOB, RANGE_DEK, body[:keep])


def test_trailing_bytes_are_refused() -> None:
    """Ciphertext beyond the last requested chunk is TamperedError."""
    header = parse_header(RANGE_BLOB)
    body = RANGE_BLOB[header.header_len :]
    for extra, sizes in (
        (b"\x00", (5000,)),
        (b"\x00" * 100, (len(body),)),
        (b"x", (len(body) + 1,)),
    ):
        with pytest.raises(TamperedError):
            open_whole(RANGE_BLOB, RANGE_DEK, body + extra, sizes)


def test_flipped_bit_yields_nothing_from_that_chunk() -> None:
    """A damaged chunk raises before any of its plaintext is yielded; earlier chunks are intact."""
    header = parse_header(RANGE_BLOB)
    body = bytearray(RANGE_BLOB[header.header_len :])
    body[3 * (CHUNK + 16) + 10] ^= 0x80
    produced: list[bytes] = []

    async def drain() -> None:
        span = header.layout.whole()
        stream = open_stream(
            Source([bytes(body)]), Opener(RANGE_DEK, header), 0, span.last_chunk, 0, span.length
        )
        async for piece in stream:
            produced.append(piece)

    with pytest.raises(TamperedError):
        run(drain())
    assert b"".join(produced) == RANGE_PLAIN[: 3 * CHUNK]


def test_source_is_closed_when_the_reader_stops_early() -> None:
    """Closing the plaintext stream early closes the ciphertext source."""
    header = parse_header(RANGE_BLOB)
    source = Source(cut(RANGE_BLOB[header.header_len :], (CHUNK,)))
    span = header.layout.whole()
    stream = open_stream(source, Opener(RANGE_DEK, header), 0, span.last_chunk, 0, span.length)
    assert run(stream.__anext__()) == RANGE_PLAIN[:CHUNK]
    run(stream.aclose())
    assert source.closed


def test_empty_object_streams_verify_the_final_chunk() -> None:
    """An empty object's one chunk must be present and authentic."""
    blob, dek = seal_all(b"")
    assert open_whole(blob, dek) == b""
    with pytest.raises(TruncatedError):
        open_whole(blob, dek, b"")
    with pytest.raises(TamperedError):
        open_whole(blob, dek, bytes(16))
