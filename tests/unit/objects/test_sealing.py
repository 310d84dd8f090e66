"""Tests for s3orch.objects.sealing: sealing bodies and opening any range of them again."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
from attrs import evolve
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.crypto.envelope import Opener, TamperedError, parse_header
from s3orch.crypto.keys import LocalKeys
from s3orch.crypto.senc1 import parse_key_material
from s3orch.metrics import REGISTRY
from s3orch.objects.errors import Undecryptable
from s3orch.objects.sealing import Encryption
from s3orch.store.records import SENC1, SENC2, SENC2_PARTS, ObjectVersion, Sealing, Segment

T = TypeVar("T")

CHUNK = 4096
MASTER = os.urandom(32)


def run(awaitable: Awaitable[T]) -> T:
    """Run an awaitable whose awaits never wait (local keys, in-memory bytes) to its result."""

    async def wait() -> T:
        return await awaitable

    coro = wait()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


def encryption(chunk_size: int = CHUNK, master: bytes = MASTER) -> Encryption:
    return Encryption(LocalKeys([("config-0", master)]), enabled=True, chunk_size=chunk_size)


async def blocks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """``data`` in uneven network-sized blocks."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([block async for block in stream])


class Stored:
    """The bytes a backend holds for one version, and every range a read asked of them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []

    async def fetch(self, first: int, last: int) -> AsyncIterator[bytes]:
        self.requests.append((first, last))
        return blocks(self.data[first : last + 1], 1500)

    @property
    def fetched(self) -> int:
        return sum(last - first + 1 for first, last in self.requests)


def version(sealing: Sealing, size: int) -> ObjectVersion:
    return ObjectVersion(
        bucket="b",
        key="k",
        version_id="v",
        size=size,
        etag="",
        content_type="application/octet-stream",
        created_at=0.0,
        sealing=sealing,
    )


def seal(enc: Encryption, plaintext: bytes) -> tuple[bytes, Sealing]:
    """What a PUT stores, and the sealing its metadata keeps."""
    sealed = run(enc.seal_object(len(plaintext)))
    stored = run(collect(sealed.stream(blocks(plaintext, 777))))
    assert len(stored) == sealed.stored_size
    return stored, sealed.sealing


def seal_parts(
    enc: Encryption, parts: list[bytes], numbers: list[int] | None = None
) -> tuple[list[bytes], Sealing]:
    """Each part sealed as an upload seals it, and the sealing Complete records."""
    sealing = run(enc.upload_sealing())
    assert sealing.scheme == SENC2_PARTS
    stored, table = [], []
    for number, body in zip(numbers or range(1, len(parts) + 1), parts, strict=True):
        sealed = run(enc.seal_part(sealing, number, len(body)))
        data = run(collect(sealed.stream(blocks(body, 900))))
        assert len(data) == sealed.stored_size
        stored.append(data)
        table.append(Segment(number, len(body), len(data)))
    return stored, evolve(sealing, segments=tuple(table))


def read(
    enc: Encryption, stored: Stored, sealing: Sealing, size: int, start: int, end: int
) -> bytes:
    return run(collect(enc.open(version(sealing, size), stored.fetch, start, end)))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- single objects ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
def test_round_trip(size: int) -> None:
    """A sealed object opens to its plaintext, whole and at its edges; only whole reads
    fetch the stored header (which is checked against the metadata's)."""
    enc = encryption()
    plaintext = os.urandom(size)
    data, sealing = seal(enc, plaintext)
    assert sealing.scheme == SENC2 and sealing.chunk_size == CHUNK
    assert data.startswith(sealing.header)
    chunks = -(-size // CHUNK)
    assert len(data) == len(sealing.header) + size + 16 * chunks
    stored = Stored(data)
    assert read(enc, stored, sealing, size, 0, size - 1) == plaintext
    assert read(enc, stored, sealing, size, size - 1, size - 1) == plaintext[-1:]
    assert read(enc, stored, sealing, size, 0, 0) == plaintext[:1]
    if size > CHUNK:
        assert (
            read(enc, stored, sealing, size, CHUNK - 1, CHUNK) == plaintext[CHUNK - 1 : CHUNK + 1]
        )
    # The header comes from the metadata: only reads to the end fetch it, from byte 0.
    assert all(
        first >= len(sealing.header) or (first == 0 and last == len(data) - 1)
        for first, last in stored.requests
    )


def test_empty_object_is_one_authenticated_empty_chunk() -> None:
    """An empty object is stored as its header and one empty final chunk that authenticates."""
    enc = encryption()
    data, sealing = seal(enc, b"")
    header = parse_header(sealing.header)
    assert header.plain_size == 0
    assert len(data) == len(sealing.header) + 16
    opener = Opener(run(enc.data_key(sealing.wrapped)), header)
    assert opener.open_chunk(0, data[len(sealing.header) :], last=True) == b""
    damaged = bytearray(data[len(sealing.header) :])
    damaged[3] ^= 1
    with pytest.raises(TamperedError):
        opener.open_chunk(0, damaged, last=True)


SIZES = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 100, 8 * CHUNK]
ENC = encryption()
OBJECTS = {size: (body, *seal(ENC, body)) for size, body in ((s, os.urandom(s)) for s in SIZES)}


@settings(max_examples=150, deadline=None)
@given(size=st.sampled_from(SIZES), data=st.data())
def test_any_range_reads_the_right_bytes(size: int, data: st.DataObject) -> None:
    """Any range opens to exactly its plaintext, from one fetch of only the chunks holding it
    (and the header for a read from the first chunk to the end)."""
    plaintext, stored_bytes, sealing = OBJECTS[size]
    start = data.draw(st.integers(0, size - 1), label="start")
    end = data.draw(st.integers(start, size - 1), label="end")
    stored = Stored(stored_bytes)
    assert read(ENC, stored, sealing, size, start, end) == plaintext[start : end + 1]
    chunks = end // CHUNK - start // CHUNK + 1
    whole = len(sealing.header) if start < CHUNK and end == size - 1 else 0
    assert len(stored.requests) == 1
    assert stored.fetched <= chunks * (CHUNK + 16) + whole


def test_chunk_size_comes_from_the_object() -> None:
    """Objects sealed with one chunk size read back under a configuration with another."""
    plaintext = os.urandom(5 * CHUNK + 3)
    data, sealing = seal(encryption(CHUNK), plaintext)
    later = encryption(16 * CHUNK)
    size = len(plaintext)
    assert read(later, Stored(data), sealing, size, 0, size - 1) == plaintext
    assert (
        read(later, Stored(data), sealing, size, 2 * CHUNK + 1, 3 * CHUNK)
        == (plaintext[2 * CHUNK + 1 : 3 * CHUNK + 1])
    )


def test_small_range_of_a_large_object_fetches_at_most_two_chunks() -> None:
    """A 1 KiB range read asks the backend for at most two chunks (2 * (chunk + 16) bytes)."""
    chunk = 65536
    enc = encryption(chunk)
    plaintext = os.urandom(40 * chunk + 123)
    data, sealing = seal(enc, plaintext)
    size = len(plaintext)
    starts = [0, chunk - 512, chunk - 1024, chunk, 17 * chunk - 1000, size - 1024]
    starts += [int.from_bytes(os.urandom(4), "big") % (size - 1024) for _ in range(20)]
    for start in starts:
        stored = Stored(data)
        assert (
            read(enc, stored, sealing, size, start, start + 1023) == plaintext[start : start + 1024]
        )
        assert stored.fetched <= 2 * (chunk + 16), start


def test_damaged_chunk_is_undecryptable() -> None:
    """A flipped chunk bit is a counted Undecryptable (TamperedError); other chunks still read."""
    enc = encryption()
    plaintext = os.urandom(4 * CHUNK)
    data, sealing = seal(enc, plaintext)
    damaged = bytearray(data)
    damaged[len(sealing.header) + 2 * (CHUNK + 16) + 5] ^= 1
    before = sample("s3o_encryption_errors_total", op="decrypt", error_type="tampered")
    with pytest.raises(Undecryptable) as caught:
        read(enc, Stored(bytes(damaged)), sealing, len(plaintext), 2 * CHUNK, 2 * CHUNK)
    assert isinstance(caught.value.__cause__, TamperedError)
    assert sample("s3o_encryption_errors_total", op="decrypt", error_type="tampered") == before + 1
    assert (
        read(enc, Stored(bytes(damaged)), sealing, len(plaintext), 0, CHUNK)
        == (plaintext[: CHUNK + 1])
    )


# -- multipart: one sealed stream per part -----------------------------------------------------


PART_SIZES = [2 * CHUNK + 5, CHUNK, 1, 3 * CHUNK]
PARTS = [os.urandom(size) for size in PART_SIZES]
PART_DATA, PART_SEALING = seal_parts(ENC, PARTS)
PART_PLAIN = b"".join(PARTS)
PART_STORED = b"".join(PART_DATA)


def test_parts_read_whole_and_across_boundaries() -> None:
    """A multipart object reads whole, and across each part boundary, byte for byte."""
    size = len(PART_PLAIN)
    stored = Stored(PART_STORED)
    assert read(ENC, stored, PART_SEALING, size, 0, size - 1) == PART_PLAIN
    boundary = 0
    for part in PART_SIZES[:-1]:
        boundary += part
        for first, last in (
            (boundary - 1, boundary),
            (boundary, boundary),
            (boundary - 3, size - 1),
        ):
            got = read(ENC, Stored(PART_STORED), PART_SEALING, size, first, last)
            assert got == PART_PLAIN[first : last + 1], (first, last)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_range_of_parts_reads_the_right_bytes(data: st.DataObject) -> None:
    """Any range of a multipart object opens to exactly those plaintext bytes."""
    size = len(PART_PLAIN)
    start = data.draw(st.integers(0, size - 1), label="start")
    end = data.draw(st.integers(start, size - 1), label="end")
    assert (
        read(ENC, Stored(PART_STORED), PART_SEALING, size, start, end)
        == PART_PLAIN[start : end + 1]
    )


def test_small_range_of_parts_fetches_at_most_two_chunks_and_headers() -> None:
    """A 1 KiB range of parts fetches at most two full chunks plus part headers."""
    chunk = 65536
    enc = encryption(chunk)
    parts = [os.urandom(4 * chunk + 7), os.urandom(3 * chunk)]
    stored_parts, sealing = seal_parts(enc, parts)
    plaintext, data = b"".join(parts), b"".join(stored_parts)
    header = len(stored_parts[0]) - len(parts[0]) - 16 * 5
    size = len(plaintext)
    for start in (0, chunk - 100, 2 * chunk + 5, len(parts[0]) - 500, len(parts[0]) + chunk - 1):
        stored = Stored(data)
        assert (
            read(enc, stored, sealing, size, start, start + 1023) == plaintext[start : start + 1024]
        )
        short_last_chunk = 7 + 16 if start < len(parts[0]) <= start + 1023 else 0
        assert stored.fetched <= 2 * (chunk + 16) + 2 * header + short_last_chunk, start


def test_part_moved_to_another_position_fails() -> None:
    """Two parts' stored bytes exchanged (part table unchanged) fail every read of them."""
    parts = [os.urandom(2 * CHUNK + 9) for _ in range(3)]
    stored_parts, sealing = seal_parts(ENC, parts)
    plaintext = b"".join(parts)
    size = len(plaintext)
    swapped = Stored(stored_parts[1] + stored_parts[0] + stored_parts[2])
    for first, last in ((0, size - 1), (5, 5), (len(parts[0]) + 3, len(parts[0]) + 3)):
        with pytest.raises(Undecryptable) as caught:
            read(ENC, swapped, sealing, size, first, last)
        assert isinstance(caught.value.__cause__, TamperedError)
    # Part 3 did not move and still reads.
    tail = read(ENC, swapped, sealing, size, size - 10, size - 1)
    assert tail == plaintext[-10:]


def test_part_sealed_under_another_number_fails() -> None:
    """A part sealed as number 7 but recorded as number 2 fails, even with the same DEK."""
    parts = [os.urandom(CHUNK + 1), os.urandom(CHUNK + 1)]
    stored_parts, sealing = seal_parts(ENC, parts, numbers=[1, 7])
    relabelled = evolve(
        sealing, segments=(sealing.segments[0], evolve(sealing.segments[1], part_number=2))
    )
    size = 2 * (CHUNK + 1)
    with pytest.raises(Undecryptable):
        read(ENC, Stored(b"".join(stored_parts)), relabelled, size, CHUNK + 1, size - 1)
    assert read(ENC, Stored(b"".join(stored_parts)), sealing, size, 0, size - 1) == b"".join(parts)


def test_part_from_another_upload_fails() -> None:
    """Part 2 of another upload (another DEK) in part 2's place fails; part 1 still reads."""
    parts = [os.urandom(CHUNK + 5), os.urandom(CHUNK + 5)]
    ours, sealing = seal_parts(ENC, parts)
    theirs, _ = seal_parts(ENC, [os.urandom(CHUNK + 5), os.urandom(CHUNK + 5)])
    size = 2 * (CHUNK + 5)
    mixed = Stored(ours[0] + theirs[1])
    with pytest.raises(Undecryptable):
        read(ENC, mixed, sealing, size, 0, size - 1)
    assert read(ENC, mixed, sealing, size, 0, CHUNK + 4) == parts[0]


# -- SENC v1 (the Go system's format) ------------------------------------------------------------

# reference/anchor-encryption.md §1.8
VECTOR_DEK = bytes(range(32))
VECTOR_NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
VECTOR_PLAINTEXT = b"A" * 4097
VECTOR_SHA256 = "a898644551c97db549392fcd6897fb358ef8f9f0e6ef29a6847ee5de8715a810"


def go_encrypt(dek: bytes, base_nonce: bytes, chunk_size: int, plaintext: bytes) -> bytes:
    """SENC v1 as the reference describes it (s3orch itself never writes it)."""
    out = [b"SENC\x01" + chunk_size.to_bytes(4, "big") + base_nonce + bytes(11)]
    for index, start in enumerate(range(0, len(plaintext), chunk_size)):
        nonce = base_nonce[:4] + (int.from_bytes(base_nonce[4:], "big") ^ index).to_bytes(8, "big")
        cipher = AES.new(dek, AES.MODE_GCM, nonce=nonce)
        sealed, tag = cipher.encrypt_and_digest(plaintext[start : start + chunk_size])
        out.append(nonce + sealed + tag)
    return b"".join(out)


def go_row(master: bytes, dek: bytes, base_nonce: bytes) -> bytes:
    """The Go DB row's encryption_key: base nonce || nonce || GCM(master, DEK) || tag."""
    nonce = os.urandom(12)
    wrapped, tag = AES.new(master, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(dek)
    return base_nonce + nonce + wrapped + tag


def test_senc1_reference_vector_opens() -> None:
    """The SENC v1 reference vector opens to 4097 'A's, whole and by range, via Go key material."""
    blob = go_encrypt(VECTOR_DEK, VECTOR_NONCE, 4096, VECTOR_PLAINTEXT)
    assert hashlib.sha256(blob).hexdigest() == VECTOR_SHA256
    master = os.urandom(32)
    material = parse_key_material(go_row(master, VECTOR_DEK, VECTOR_NONCE), "config-0")
    sealing = Sealing(SENC1, material.wrapped, header=material.base_nonce)
    size = len(VECTOR_PLAINTEXT)
    for keys in (
        LocalKeys([("config-0", master)]),
        LocalKeys([("config-0", os.urandom(32)), ("config-1", master)]),
    ):
        enc = Encryption(keys, enabled=True)
        assert read(enc, Stored(blob), sealing, size, 0, size - 1) == VECTOR_PLAINTEXT
        assert read(enc, Stored(blob), sealing, size, 4090, 4096) == b"A" * 7
        stored = Stored(blob)
        assert read(enc, stored, sealing, size, 4096, 4096) == b"A"
        # The header, then only the last chunk.
        assert stored.requests == [(0, 31), (32 + 4124, len(blob) - 1)]


def test_senc1_header_must_match_the_row() -> None:
    """A SENC v1 object whose header nonce differs from the row's, or a chunk altered, fails."""
    master = os.urandom(32)
    material = parse_key_material(go_row(master, VECTOR_DEK, VECTOR_NONCE), "config-0")
    enc = Encryption(LocalKeys([("config-0", master)]))
    blob = go_encrypt(VECTOR_DEK, bytes(12), 4096, VECTOR_PLAINTEXT)
    sealing = Sealing(SENC1, material.wrapped, header=material.base_nonce)
    with pytest.raises(Undecryptable):
        read(enc, Stored(blob), sealing, 4097, 0, 4096)
    damaged = bytearray(go_encrypt(VECTOR_DEK, VECTOR_NONCE, 4096, VECTOR_PLAINTEXT))
    damaged[-1] ^= 1
    with pytest.raises(Undecryptable):
        read(enc, Stored(bytes(damaged)), sealing, 4097, 4096, 4096)


# -- keys -----------------------------------------------------------------------------------------


def test_unknown_key_is_undecryptable_and_counted() -> None:
    """An unconfigured key is a counted Undecryptable naming the key; nothing is fetched."""
    plaintext = os.urandom(CHUNK + 1)
    data, sealing = seal(ENC, plaintext)
    before = sample("s3o_encryption_unknown_key_id_total")
    errors = sample("s3o_encryption_errors_total", op="unwrap", error_type="unknown_key")
    for other in (encryption(master=os.urandom(32)), Encryption(None)):
        stored = Stored(data)
        with pytest.raises(Undecryptable) as caught:
            read(other, stored, sealing, len(plaintext), 0, len(plaintext) - 1)
        assert "config-0" in str(caught.value)
        assert sealing.wrapped.fingerprint in str(caught.value)
        assert stored.requests == []
    assert sample("s3o_encryption_unknown_key_id_total") == before + 2
    assert (
        sample("s3o_encryption_errors_total", op="unwrap", error_type="unknown_key") == errors + 2
    )


def test_previous_key_still_opens() -> None:
    """After rotation (old key moved to previous_keys) old objects open; new ones use the new key."""
    old, new = os.urandom(32), os.urandom(32)
    plaintext = os.urandom(3 * CHUNK)
    data, sealing = seal(encryption(master=old), plaintext)
    rotated = Encryption(LocalKeys([("config-0", new), ("config-1", old)]), True, CHUNK)
    assert read(rotated, Stored(data), sealing, len(plaintext), 0, len(plaintext) - 1) == plaintext
    _, fresh = seal(rotated, b"x")
    assert fresh.wrapped.fingerprint != sealing.wrapped.fingerprint
    assert fresh.wrapped.key_id == "config-0"
