"""Sealing and opening whole byte streams, re-chunked from whatever blocks the source yields.

Both are async generators over ``AsyncIterator[bytes]`` and hold at most about one chunk of
their own (plus the block the source just handed over). They own their source: when they end,
fail or are closed early, they close it (if it can be closed).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from s3orch.crypto.envelope import ChunkOpener, Sealer, TamperedError, TruncatedError


class SourceLengthMismatch(ValueError):
    """The plaintext source yielded a different number of bytes than it was declared to."""


async def _close(source: AsyncIterator[bytes]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


async def seal_stream(
    source: AsyncIterator[bytes], sealer: Sealer, plain_size: int
) -> AsyncGenerator[bytes, None]:
    """Yield the header, then each sealed chunk.

    The last chunk is sealed only once the source has ended with exactly ``plain_size``
    bytes, so a short or long source raises SourceLengthMismatch and never produces a
    complete, valid object.
    """
    layout = sealer.layout
    if plain_size != layout.plain_size:
        raise ValueError(f"the sealer was made for {layout.plain_size} bytes, not {plain_size}")
    chunk_size = layout.chunk_size
    final = layout.chunk_count - 1
    index = 0
    received = 0
    pending = bytearray()
    try:
        yield sealer.header
        async for block in source:
            if not block:
                continue
            received += len(block)
            if received > plain_size:
                raise SourceLengthMismatch(f"the body holds more than {plain_size} bytes")
            view = memoryview(block)
            pos = 0
            # Every chunk but the last is full; the last waits for the end of the source.
            while index < final:
                wanted = chunk_size - len(pending)
                if len(view) - pos < wanted:
                    break
                if pending:
                    pending += view[pos : pos + wanted]
                    chunk: bytes | bytearray | memoryview = pending
                    pending = bytearray()
                else:
                    chunk = view[pos : pos + wanted]
                pos += wanted
                sealed = sealer.seal_chunk(index, chunk, last=False)
                index += 1
                yield sealed
            if pos < len(view):
                pending += view[pos:]
        if received != plain_size:
            raise SourceLengthMismatch(f"the body ended after {received} of {plain_size} bytes")
        yield sealer.seal_chunk(final, pending, last=True)
    finally:
        await _close(source)


async def open_stream(
    source: AsyncIterator[bytes],
    opener: ChunkOpener,
    first_chunk: int,
    last_chunk: int,
    skip: int,
    length: int,
) -> AsyncGenerator[bytes, None]:
    """Yield exactly ``length`` plaintext bytes, after dropping ``skip``, from the ciphertext
    of chunks ``first_chunk``..``last_chunk`` (no header) that ``source`` yields.

    Each chunk's tag is verified before any of its plaintext is yielded. Too little
    ciphertext raises TruncatedError, too much TamperedError, a bad chunk TamperedError.
    """
    layout = opener.layout
    count = layout.chunk_count
    _check_span(count, first_chunk, last_chunk)
    chunk_size = layout.chunk_size
    available = min(layout.plain_size, (last_chunk + 1) * chunk_size) - first_chunk * chunk_size
    if skip < 0 or length < 0 or skip + length > max(available, 0):
        raise ValueError(f"skip {skip} + length {length} exceed the chunks' {available} bytes")
    if skip and skip >= layout.chunk_plain_len(first_chunk):
        raise ValueError(f"skip {skip} is past the end of chunk {first_chunk}")
    index = first_chunk
    remaining = length
    # Chunks are opened straight from the block that holds them; only a chunk split across
    # blocks is gathered in ``pending``, so most bytes are never copied.
    pending = bytearray()
    wanted = layout.chunk_sealed_len(index) if index <= last_chunk else 0
    try:
        async for block in source:
            if not block:
                continue
            if index > last_chunk:
                raise TamperedError("more ciphertext than the requested chunks hold")
            data: bytes | bytearray = block
            if pending:
                pending += block
                data = pending
            pos = 0
            while index <= last_chunk and len(data) - pos >= wanted:
                if index == last_chunk and len(data) - pos > wanted:
                    raise TamperedError("more ciphertext than the requested chunks hold")
                plaintext = _open(opener, index, data, pos, wanted, index == count - 1)
                pos += wanted
                if skip:
                    plaintext = plaintext[skip:]
                    skip = 0
                if len(plaintext) > remaining:
                    plaintext = plaintext[:remaining]
                remaining -= len(plaintext)
                index += 1
                if index <= last_chunk:
                    wanted = layout.chunk_sealed_len(index)
                if plaintext:
                    yield plaintext
            pending = bytearray(data[pos:])
        if index <= last_chunk:
            raise TruncatedError(
                f"the ciphertext ended inside chunk {index} (chunks {first_chunk}..{last_chunk})"
            )
    finally:
        await _close(source)


def _open(
    opener: ChunkOpener, index: int, buffer: bytes | bytearray, pos: int, size: int, last: bool
) -> bytes:
    """Open the chunk at ``buffer[pos:pos + size]`` without copying it; the view is
    released before the caller changes the buffer."""
    with memoryview(buffer) as view, view[pos : pos + size] as sealed:
        return opener.open_chunk(index, sealed, last)


def _check_span(count: int, first: int, last: int) -> None:
    if count == 0 and (first, last) == (0, -1):
        return
    if not 0 <= first <= last < count:
        raise ValueError(f"chunks {first}..{last} are not in an object of {count} chunks")
