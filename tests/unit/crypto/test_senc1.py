"""Tests for s3orch.crypto.senc1: reading the Go system's SENC v1 objects and key material."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.crypto.envelope import (
    HeaderIncomplete,
    MalformedHeader,
    TamperedError,
    TruncatedError,
    format_version,
)
from s3orch.crypto.keys import LocalKeys, WrappedKey
from s3orch.crypto.senc1 import (
    HEADER_LEN,
    MAX_CHUNK_SIZE,
    KeyMaterial,
    MalformedKeyMaterial,
    Senc1Header,
    Senc1Opener,
    chunk_nonce,
    ciphertext_size,
    layout,
    parse_key_material,
    plaintext_range_to_chunks,
)
from s3orch.crypto.streams import open_stream

T = TypeVar("T")

# The test vector of reference/anchor-encryption.md §1.8.
VECTOR_DEK = bytes(range(32))
VECTOR_NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
VECTOR_CHUNK = 4096
VECTOR_PLAINTEXT = b"A" * 4097
VECTOR_HEADER = "53454e430100001000a0a1a2a3a4a5a6a7a8a9aaab0000000000000000000000"
VECTOR_CHUNK1_NONCE = "a0a1a2a3a4a5a6a7a8a9aaaa"
VECTOR_FINAL_CHUNK = "a0a1a2a3a4a5a6a7a8a9aaaa147f26f32c7512fafacbdbcfdeed2146a9"
VECTOR_SHA256 = "a898644551c97db549392fcd6897fb358ef8f9f0e6ef29a6847ee5de8715a810"
VECTOR_LENGTH = 4185


def go_encrypt(dek: bytes, base_nonce: bytes, chunk_size: int, plaintext: bytes) -> bytes:
    """A SENC v1 writer as the reference describes it (tests only; s3orch never writes v1)."""
    out = [b"SENC\x01" + chunk_size.to_bytes(4, "big") + base_nonce + bytes(11)]
    for index, start in enumerate(range(0, len(plaintext), chunk_size)):
        nonce = base_nonce[:4] + (int.from_bytes(base_nonce[4:], "big") ^ index).to_bytes(8, "big")
        sealed, tag = AES.new(dek, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(
            plaintext[start : start + chunk_size]
        )
        out.append(nonce + sealed + tag)
    return b"".join(out)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the coroutine waited")


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


def read_v1(
    blob: bytes, dek: bytes, plain_size: int, start: int = 0, end: int | None = None
) -> bytes:
    """Serve a v1 object (or a range of it) the way the core does: header from the bytes,
    chunk span from the math, decrypting through open_stream."""
    header = Senc1Header.parse(blob)
    opener = Senc1Opener(dek, header, plain_size)
    if plain_size == 0:
        span = opener.layout.whole()
    else:
        span = plaintext_range_to_chunks(
            start, plain_size - 1 if end is None else end, plain_size, header.chunk_size
        )
    # A whole-object GET reads to the end of what the backend holds; a range GET only the span.
    whole = start == 0 and end is None
    fetched = (
        blob[span.ciphertext_start :]
        if whole
        else blob[span.ciphertext_start : span.ciphertext_end + 1]
    )
    stream = open_stream(
        pieces(fetched, 7000), opener, span.first_chunk, span.last_chunk, span.skip, span.length
    )
    return run(collect(stream))


# -- the reference test vector ---------------------------------------------------------------


def test_reference_vector_bytes() -> None:
    """Our reading of the format reproduces the reference's header, final chunk and hash."""
    blob = go_encrypt(VECTOR_DEK, VECTOR_NONCE, VECTOR_CHUNK, VECTOR_PLAINTEXT)
    assert blob[:HEADER_LEN].hex() == VECTOR_HEADER
    assert chunk_nonce(VECTOR_NONCE, 1).hex() == VECTOR_CHUNK1_NONCE
    assert len(blob) == VECTOR_LENGTH == ciphertext_size(4097, 4096)
    assert blob[32 + 4124 :].hex() == VECTOR_FINAL_CHUNK
    assert hashlib.sha256(blob).hexdigest() == VECTOR_SHA256


def test_reference_vector_decrypts() -> None:
    """The SENC v1 test vector decrypts to 4097 'A's, whole and by range."""
    blob = go_encrypt(VECTOR_DEK, VECTOR_NONCE, VECTOR_CHUNK, VECTOR_PLAINTEXT)
    assert hashlib.sha256(blob).hexdigest() == VECTOR_SHA256
    header = Senc1Header.parse(blob)
    assert header == Senc1Header(4096, VECTOR_NONCE)
    assert format_version(blob) == 1
    assert read_v1(blob, VECTOR_DEK, 4097) == VECTOR_PLAINTEXT
    assert read_v1(blob, VECTOR_DEK, 4097, 4090, 4096) == b"A" * 7
    assert read_v1(blob, VECTOR_DEK, 4097, 4096, 4096) == b"A"
    final = Senc1Opener(VECTOR_DEK, header, 4097).open_chunk(1, blob[32 + 4124 :], last=True)
    assert final == b"A"


def test_vector_through_go_key_material() -> None:
    """A Go row (nonce || wrapped DEK, key id config-0) leads to the DEK and the header check."""
    master = os.urandom(32)
    nonce = os.urandom(12)
    wrapped, tag = AES.new(master, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(VECTOR_DEK)
    row_key = VECTOR_NONCE + nonce + wrapped + tag
    material = parse_key_material(row_key, "config-0")
    assert material.base_nonce == VECTOR_NONCE
    assert material.wrapped == WrappedKey("config-0", "senc1:config-0", nonce + wrapped + tag)
    dek = LocalKeys([("config-0", master)]).unwrap_sync(material.wrapped)
    blob = go_encrypt(dek, VECTOR_NONCE, VECTOR_CHUNK, VECTOR_PLAINTEXT)
    material.check_header(Senc1Header.parse(blob))
    with pytest.raises(TamperedError, match="base nonce"):
        material.check_header(Senc1Header(4096, bytes(12)))


# -- key material forms --------------------------------------------------------------------------


def test_key_material_forms() -> None:
    """Local ids keep their label as a senc1 fingerprint; Vault ids become Vault fingerprints."""
    nonce = bytes(range(12))
    local = parse_key_material(nonce + bytes(60), "file-0")
    assert local == KeyMaterial(nonce, WrappedKey("file-0", "senc1:file-0", bytes(60)))
    vault_blob = b"vault:v3:" + b"Q" * 80
    vault = parse_key_material(nonce + vault_blob, "vault:transit/s3-orchestrator")
    assert vault.wrapped == WrappedKey(
        "s3-orchestrator", "vault:transit/s3-orchestrator", vault_blob
    )


@pytest.mark.parametrize(
    ("blob", "key_id", "reason"),
    [
        (bytes(12), "config-0", "too short"),
        (bytes(5), "config-0", "too short"),
        (bytes(12 + 59), "config-0", "60 bytes"),
        (bytes(12 + 61), "config-1", "60 bytes"),
        (bytes(12) + b"notvault", "vault:transit/k", "vault:v"),
        (bytes(72), "mystery-0", "unknown SENC v1 key id"),
    ],
)
def test_bad_key_material_is_refused(blob: bytes, key_id: str, reason: str) -> None:
    """Key material that the Go system could not have written is MalformedKeyMaterial."""
    with pytest.raises(MalformedKeyMaterial, match=reason):
        parse_key_material(blob, key_id)


# -- header ---------------------------------------------------------------------------------------


def test_header_bounds() -> None:
    """Chunk size 0 or beyond 16 MiB, a wrong magic or version are refused before allocating."""
    good = bytes.fromhex(VECTOR_HEADER)
    for size in (0, MAX_CHUNK_SIZE + 1, 2**32 - 1):
        bad = good[:5] + size.to_bytes(4, "big") + good[9:]
        with pytest.raises(MalformedHeader, match="out of bounds"):
            Senc1Header.parse(bad)
    with pytest.raises(MalformedHeader, match="magic"):
        Senc1Header.parse(b"SENX" + good[4:])
    with pytest.raises(MalformedHeader, match="version 2"):
        Senc1Header.parse(good[:4] + b"\x02" + good[5:])
    with pytest.raises(HeaderIncomplete) as caught:
        Senc1Header.parse(good[:31])
    assert caught.value.needed == 32
    with pytest.raises(MalformedHeader):
        Senc1Header.parse(b"PK\x03")


def test_reserved_bytes_are_ignored_like_the_go_reader() -> None:
    """Non-zero reserved bytes do not change what the header says."""
    good = bytes.fromhex(VECTOR_HEADER)
    assert Senc1Header.parse(good[:21] + b"\xff" * 11) == Senc1Header.parse(good)


# -- size and range math ---------------------------------------------------------------------


def test_ciphertext_size_matches_the_reference_examples() -> None:
    """§1.5: P=0 -> 32, 1 -> 61, 65536 -> 65596, 65537 -> 65625, 1 MiB -> 1,049,056."""
    assert [ciphertext_size(p, 65536) for p in (0, 1, 65536, 65537, 2**20)] == [
        32,
        61,
        65596,
        65625,
        1_049_056,
    ]


def test_range_example_from_the_reference() -> None:
    """§2: bytes=100000-200000 at 64 KiB is chunks 1..3 from 65596, skip 34464, 100001 bytes."""
    span = plaintext_range_to_chunks(100000, 200000, 10**6, 65536)
    assert (span.first_chunk, span.last_chunk) == (1, 3)
    assert (span.ciphertext_start, span.ciphertext_end) == (65596, 262287)
    assert (span.skip, span.length) == (34464, 100001)


def test_range_end_is_exact_for_a_short_last_chunk() -> None:
    """The span ends at the object's real end, not a whole chunk later as in the Go reader."""
    span = plaintext_range_to_chunks(0, 99, 100, 65536)
    assert span.ciphertext_end == ciphertext_size(100, 65536) - 1


@settings(max_examples=40, deadline=None)
@given(
    chunk_size=st.sampled_from([7, 512, 4096, 5000]),
    plain_size=st.integers(1, 12000),
    data=st.data(),
)
def test_any_range_reads_the_right_bytes(
    chunk_size: int, plain_size: int, data: st.DataObject
) -> None:
    """Whatever the chunk size (taken from the header), a range read returns the slice."""
    start = data.draw(st.integers(0, plain_size - 1))
    end = data.draw(st.integers(start, plain_size - 1))
    plaintext = os.urandom(plain_size)
    dek, nonce = os.urandom(32), os.urandom(12)
    blob = go_encrypt(dek, nonce, chunk_size, plaintext)
    assert len(blob) == ciphertext_size(plain_size, chunk_size)
    assert read_v1(blob, dek, plain_size, start, end) == plaintext[start : end + 1]


def test_empty_object_is_the_header_alone() -> None:
    """An empty v1 object has no chunk and reads as empty."""
    dek, nonce = os.urandom(32), os.urandom(12)
    blob = go_encrypt(dek, nonce, 65536, b"")
    assert len(blob) == 32 == ciphertext_size(0, 65536)
    assert layout(0, 65536).chunk_count == 0
    assert read_v1(blob, dek, 0) == b""


# -- tampering: with the DB's size and nonce, never wrong bytes ---------------------------------


PLAIN = os.urandom(3 * 4096 + 10)
DEK = os.urandom(32)
BLOB = go_encrypt(DEK, os.urandom(12), 4096, PLAIN)


def chunks_of(blob: bytes) -> list[bytes]:
    lay = layout(len(PLAIN), 4096)
    return [
        blob[lay.chunk_offset(i) : lay.chunk_offset(i) + lay.chunk_sealed_len(i)]
        for i in range(lay.chunk_count)
    ]


@settings(max_examples=200)
@given(st.integers(32 * 8, len(BLOB) * 8 - 1))
def test_bit_flips_in_chunks_fail(bit: int) -> None:
    """Flipping any bit of a chunk (nonce, ciphertext or tag) fails the read."""
    blob = bytearray(BLOB)
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(TamperedError):
        read_v1(bytes(blob), DEK, len(PLAIN))


def test_truncation_and_extension_are_caught_by_the_db_size() -> None:
    """Dropping whole trailing chunks or appending one fails, because the DB knows the size."""
    chunks = chunks_of(BLOB)
    for keep in range(len(chunks)):
        with pytest.raises(TruncatedError):
            read_v1(BLOB[:32] + b"".join(chunks[:keep]), DEK, len(PLAIN))
    with pytest.raises(TamperedError):
        read_v1(BLOB + chunks[-1], DEK, len(PLAIN))


def test_reordered_or_foreign_chunks_fail() -> None:
    """Swapped chunks fail the nonce check; another object's chunk fails its tag."""
    chunks = chunks_of(BLOB)
    swapped = BLOB[:32] + b"".join([chunks[1], chunks[0], *chunks[2:]])
    with pytest.raises(TamperedError, match="nonce mismatch"):
        read_v1(swapped, DEK, len(PLAIN))
    other = go_encrypt(os.urandom(32), BLOB[9:21], 4096, os.urandom(len(PLAIN)))
    foreign = BLOB[:32] + b"".join([chunks[0], chunks_of(other)[1], *chunks[2:]])
    with pytest.raises(TamperedError, match="authentication"):
        read_v1(foreign, DEK, len(PLAIN))


def test_header_changes_fail() -> None:
    """A flipped chunk size or base nonce in the header fails (the header is not authenticated,
    but it drives every check)."""
    for offset in range(4, 21):
        blob = bytearray(BLOB)
        blob[offset] ^= 0x01
        with pytest.raises((MalformedHeader, TamperedError)):
            read_v1(bytes(blob), DEK, len(PLAIN))


def test_wrong_dek_fails() -> None:
    """Another DEK fails authentication of the first chunk."""
    with pytest.raises(TamperedError):
        read_v1(BLOB, os.urandom(32), len(PLAIN))
