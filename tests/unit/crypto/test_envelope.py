"""Tests for s3orch.crypto.envelope: the SENC v2 header, chunk sealing, and the size arithmetic."""

from __future__ import annotations

import hashlib
import os

import pytest
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.crypto.envelope import (
    FIXED_HEADER_LEN,
    MAX_CHUNK_SIZE,
    MAX_HEADER_LEN,
    MIN_CHUNK_SIZE,
    PREFIX_LEN,
    ChunkRange,
    HeaderIncomplete,
    Layout,
    MalformedHeader,
    Opener,
    Sealer,
    TamperedError,
    TruncatedError,
    check_chunk_size,
    chunk_nonce,
    ciphertext_size,
    derive_chunk_key,
    encode_header,
    format_version,
    header_length,
    new_dek,
    parse_header,
    plaintext_range_to_chunks,
)
from s3orch.crypto.keys import WrappedKey

CHUNK_SIZES = [2**n for n in range(12, 21)]
WRAPPED = WrappedKey("config-0", "local:" + "ab" * 16, bytes(range(60)))


def seal(
    plaintext: bytes,
    chunk_size: int = MIN_CHUNK_SIZE,
    dek: bytes | None = None,
    wrapped: WrappedKey = WRAPPED,
    object_id: bytes | None = None,
) -> tuple[bytes, list[bytes], bytes]:
    """(header, sealed chunks, dek) for ``plaintext``."""
    dek = dek or new_dek()
    sealer = Sealer(dek, wrapped, chunk_size, len(plaintext), object_id=object_id)
    layout = sealer.layout
    chunks = []
    for i in range(layout.chunk_count):
        piece = plaintext[i * chunk_size : (i + 1) * chunk_size]
        chunks.append(sealer.seal_chunk(i, piece, last=i == layout.chunk_count - 1))
    return sealer.header, chunks, dek


def split(blob: bytes, header_len: int, layout: Layout) -> list[bytes]:
    """Cut a stored object into its sealed chunks, by the layout."""
    return [
        blob[layout.chunk_offset(i) : layout.chunk_offset(i) + layout.chunk_sealed_len(i)]
        for i in range(layout.chunk_count)
    ]


def open_all(blob: bytes, dek: bytes) -> bytes:
    """Decrypt a whole stored object the way a reader would: header from the bytes, then
    every chunk the header promises, failing on missing or extra bytes."""
    header = parse_header(blob)
    opener = Opener(dek, header)
    layout = opener.layout
    if len(blob) < layout.ciphertext_size:
        raise TruncatedError("short")
    if len(blob) > layout.ciphertext_size:
        raise TamperedError("long")
    out = []
    for i, sealed in enumerate(split(blob, header.header_len, layout)):
        out.append(opener.open_chunk(i, sealed, i == layout.chunk_count - 1))
    return b"".join(out)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_round_trip_edge_sizes_for_every_chunk_size(chunk_size: int) -> None:
    """Sizes 0, 1, chunk-1, chunk, chunk+1 and several chunks decrypt to the same bytes."""
    for size in (0, 1, chunk_size - 1, chunk_size, chunk_size + 1, 3 * chunk_size + 7):
        plaintext = os.urandom(size)
        header, chunks, dek = seal(plaintext, chunk_size)
        blob = header + b"".join(chunks)
        assert len(blob) == ciphertext_size(size, chunk_size, len(header))
        assert open_all(blob, dek) == plaintext


def test_empty_object_has_one_authenticated_final_chunk() -> None:
    """A zero-length object is the header plus one 16-byte tag, and that tag is checked."""
    header, chunks, dek = seal(b"")
    assert [len(c) for c in chunks] == [16]
    assert open_all(header + chunks[0], dek) == b""
    with pytest.raises(TruncatedError):
        open_all(header, dek)


def test_many_chunks_round_trip() -> None:
    """An object of a hundred chunks round-trips."""
    plaintext = os.urandom(100 * MIN_CHUNK_SIZE + 123)
    header, chunks, dek = seal(plaintext)
    assert len(chunks) == 101
    assert open_all(header + b"".join(chunks), dek) == plaintext


def test_chunks_open_in_any_order() -> None:
    """The opener decrypts any single chunk on its own, as a range read needs."""
    plaintext = os.urandom(5 * MIN_CHUNK_SIZE)
    header, chunks, dek = seal(plaintext)
    opener = Opener(dek, parse_header(header))
    for i in (3, 0, 4, 1):
        piece = opener.open_chunk(i, chunks[i], last=i == 4)
        assert piece == plaintext[i * MIN_CHUNK_SIZE : (i + 1) * MIN_CHUNK_SIZE]


def test_same_dek_twice_gives_unrelated_ciphertext() -> None:
    """Reusing a DEK (a retried PUT) draws a new object id and so a new chunk key."""
    plaintext = os.urandom(2 * MIN_CHUNK_SIZE)
    dek = new_dek()
    h1, c1, _ = seal(plaintext, dek=dek)
    h2, c2, _ = seal(plaintext, dek=dek)
    assert parse_header(h1).object_id != parse_header(h2).object_id
    assert c1[0] != c2[0]
    assert c1[0][:16] != c2[0][:16]


def test_chunk_key_is_rfc5869_hkdf() -> None:
    """The chunk key is HKDF-SHA256(DEK, salt=object id, info), as the format document says."""
    dek, object_id = os.urandom(32), os.urandom(16)
    expected = HKDF(dek, 32, object_id, SHA256, context=b"s3orch SENC v2 chunk key")
    assert derive_chunk_key(dek, object_id) == expected


def test_chunk_is_plain_aes_gcm_over_documented_nonce_and_aad() -> None:
    """A chunk is AES-256-GCM with nonce 000000|u64 index|last and AAD SHA-256(header)."""
    plaintext = os.urandom(MIN_CHUNK_SIZE + 5)
    header, chunks, dek = seal(plaintext)
    key = derive_chunk_key(dek, parse_header(header).object_id)
    cipher = AES.new(key, AES.MODE_GCM, nonce=bytes(3) + (1).to_bytes(8, "big") + b"\x01")
    cipher.update(hashlib.sha256(header).digest())
    assert cipher.decrypt_and_verify(chunks[1][:-16], chunks[1][-16:]) == plaintext[-5:]
    assert chunk_nonce(1, True) == bytes(3) + b"\x00" * 7 + b"\x01\x01"


# -- header -----------------------------------------------------------------------------------


def test_header_round_trip_and_documented_layout() -> None:
    """The header holds magic, version, suite, length, sizes, object id and the wrapped key."""
    object_id = bytes(range(16))
    header = encode_header(65536, 123456789, object_id, WRAPPED)
    assert header[:8] == b"SENC\x02\x01" + len(header).to_bytes(2, "big")
    assert header[8:12] == (65536).to_bytes(4, "big")
    assert header[12:20] == (123456789).to_bytes(8, "big")
    assert header[20:36] == object_id
    assert header[36:45] == b"\x08config-0"
    assert len(header) == header_length(WRAPPED) == FIXED_HEADER_LEN + 1 + 8 + 1 + 38 + 2 + 60
    info = parse_header(header + b"chunk bytes follow")
    assert (info.raw, info.chunk_size, info.plain_size) == (header, 65536, 123456789)
    assert (info.object_id, info.wrapped) == (object_id, WRAPPED)
    assert Opener.parse_header(header) == info


def test_short_input_says_how_many_bytes_the_header_needs() -> None:
    """With too few bytes, HeaderIncomplete gives the prefix size, then the full length."""
    header = encode_header(4096, 1, bytes(16), WRAPPED)
    for cut in range(PREFIX_LEN):
        with pytest.raises(HeaderIncomplete) as caught:
            parse_header(header[:cut])
        assert caught.value.needed == PREFIX_LEN
    for cut in range(PREFIX_LEN, len(header)):
        with pytest.raises(HeaderIncomplete) as caught:
            parse_header(header[:cut])
        assert caught.value.needed == len(header)


@pytest.mark.parametrize(
    ("patch", "offset", "reason"),
    [
        (b"SENX", 0, "magic"),
        (b"\x01", 4, "SENC v1"),
        (b"\x07", 4, "version 7"),
        (b"\x02", 5, "suite"),
        (b"\x00\x10", 6, "length"),
        (b"\x20\x00", 6, "length"),
        ((1000).to_bytes(4, "big"), 8, "power of two"),
        ((2048).to_bytes(4, "big"), 8, "power of two"),
        ((2 * MAX_CHUNK_SIZE).to_bytes(4, "big"), 8, "power of two"),
        (b"\xff" * 4, 8, "power of two"),
        (b"\xff" * 8, 12, "plaintext size"),
        (b"\x00", 36, "key id length"),
        (b"\xff", 36, "key id length"),
        (b"\x01", 37, "printable"),
    ],
)
def test_garbage_headers_are_rejected_before_anything_is_allocated(
    patch: bytes, offset: int, reason: str
) -> None:
    """Bad magic, version, suite, length, chunk size or field bounds raise MalformedHeader."""
    header = bytearray(encode_header(4096, 1, bytes(16), WRAPPED))
    header[offset : offset + len(patch)] = patch
    with pytest.raises(MalformedHeader, match=reason):
        parse_header(bytes(header) + bytes(MAX_HEADER_LEN))


def test_header_with_trailing_bytes_inside_its_length_is_rejected() -> None:
    """The fields must fill the declared length exactly."""
    header = bytearray(encode_header(4096, 1, bytes(16), WRAPPED))
    header[6:8] = (len(header) + 1).to_bytes(2, "big")
    with pytest.raises(MalformedHeader, match="trailing"):
        parse_header(bytes(header) + b"\x00")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    """Any input parses, asks for more (at most MAX_HEADER_LEN), or is MalformedHeader."""
    for candidate in (data, b"SENC\x02\x01" + data):
        try:
            parse_header(candidate)
        except HeaderIncomplete as e:
            assert len(candidate) < e.needed <= MAX_HEADER_LEN
        except MalformedHeader:
            pass


def test_format_version_sniffs_v1_and_v2() -> None:
    """The first five bytes tell SENC v1 from v2; anything else is not an encrypted object."""
    assert format_version(b"SENC\x01") == 1
    assert format_version(encode_header(4096, 0, bytes(16), WRAPPED)) == 2
    with pytest.raises(HeaderIncomplete):
        format_version(b"SEN")
    for bad in (b"SENC\x03", b"PK\x03\x04\x00", b"X"):
        with pytest.raises(MalformedHeader):
            format_version(bad)


@pytest.mark.parametrize(
    "wrapped",
    [
        WrappedKey("", "local:x", b"b"),
        WrappedKey("config 0", "local:x", b"b"),
        WrappedKey("config-0", "é", b"b"),
        WrappedKey("config-0", "local:x", b""),
        WrappedKey("config-0", "local:x", bytes(MAX_HEADER_LEN)),
        WrappedKey("k" * 256, "local:x", b"b"),
    ],
)
def test_unencodable_wrapped_keys_are_refused_when_sealing(wrapped: WrappedKey) -> None:
    """Key ids and fingerprints must be short printable ASCII; the blob must fit the header."""
    with pytest.raises(ValueError):
        Sealer(new_dek(), wrapped, 4096, 0)


def test_vault_sized_wrapped_key_fits() -> None:
    """A Vault Transit ciphertext string fits in the header and round-trips."""
    wrapped = WrappedKey(
        "s3-orchestrator", "vault:transit/s3-orchestrator", b"vault:v1:" + b"A" * 80
    )
    header, chunks, dek = seal(b"hello", wrapped=wrapped)
    assert parse_header(header).wrapped == wrapped
    assert open_all(header + chunks[0], dek) == b"hello"


# -- sealer misuse ----------------------------------------------------------------------------


def test_sealer_enforces_order_sizes_and_last_flag() -> None:
    """Out-of-order or repeated chunks, wrong lengths and a wrong last flag are refused."""
    sealer = Sealer(new_dek(), WRAPPED, 4096, 4096 * 2 + 1)
    with pytest.raises(ValueError, match="order"):
        sealer.seal_chunk(1, bytes(4096), last=False)
    with pytest.raises(ValueError, match="plaintext bytes"):
        sealer.seal_chunk(0, bytes(4095), last=False)
    with pytest.raises(ValueError, match="last"):
        sealer.seal_chunk(0, bytes(4096), last=True)
    sealer.seal_chunk(0, bytes(4096), last=False)
    with pytest.raises(ValueError, match="order"):
        sealer.seal_chunk(0, bytes(4096), last=False)
    sealer.seal_chunk(1, bytes(4096), last=False)
    sealer.seal_chunk(2, b"x", last=True)
    with pytest.raises(ValueError):
        sealer.seal_chunk(3, b"", last=True)


@pytest.mark.parametrize("chunk_size", [0, 1, 2048, 4095, 4097, 65535, 2 * MAX_CHUNK_SIZE])
def test_bad_chunk_sizes_are_refused(chunk_size: int) -> None:
    """Only powers of two from 4 KiB to 1 MiB are chunk sizes."""
    with pytest.raises(ValueError):
        check_chunk_size(chunk_size)
    with pytest.raises(ValueError):
        Sealer(new_dek(), WRAPPED, chunk_size, 10)


def test_dek_must_be_32_bytes() -> None:
    """Sealer and Opener refuse a DEK that is not 256 bits."""
    header, _, _ = seal(b"x")
    with pytest.raises(ValueError):
        Sealer(bytes(16), WRAPPED, 4096, 1)
    with pytest.raises(ValueError):
        Opener(bytes(31), parse_header(header))


# -- tampering: always an error, never wrong bytes --------------------------------------------


SAMPLE = os.urandom(3 * MIN_CHUNK_SIZE + 100)
SAMPLE_HEADER, SAMPLE_CHUNKS, SAMPLE_DEK = seal(SAMPLE)
SAMPLE_BLOB = SAMPLE_HEADER + b"".join(SAMPLE_CHUNKS)


@settings(max_examples=400)
@given(st.integers(0, len(SAMPLE_BLOB) * 8 - 1))
def test_any_single_bit_flip_fails(bit: int) -> None:
    """Flipping any one bit (header, ciphertext or tag) makes the read fail."""
    blob = bytearray(SAMPLE_BLOB)
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((MalformedHeader, TamperedError, HeaderIncomplete)):
        open_all(bytes(blob), SAMPLE_DEK)


def test_every_bit_of_the_header_is_authenticated() -> None:
    """Each header bit flip is caught by parsing or by the first chunk's tag."""
    for bit in range(len(SAMPLE_HEADER) * 8):
        blob = bytearray(SAMPLE_BLOB)
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((MalformedHeader, TamperedError, HeaderIncomplete)):
            open_all(bytes(blob), SAMPLE_DEK)


def test_truncation_at_every_chunk_boundary_fails() -> None:
    """Cutting the object after any whole chunk (or after the header) is detected."""
    for keep in range(len(SAMPLE_CHUNKS)):
        with pytest.raises(TruncatedError):
            open_all(SAMPLE_HEADER + b"".join(SAMPLE_CHUNKS[:keep]), SAMPLE_DEK)


def test_dropping_the_last_chunk_and_relabelling_fails() -> None:
    """A shortened object whose previous chunk is presented as the last one fails its tag."""
    opener = Opener(SAMPLE_DEK, parse_header(SAMPLE_HEADER))
    with pytest.raises((TamperedError, ValueError)):
        opener.open_chunk(2, SAMPLE_CHUNKS[2], last=True)
    # Even a header rewritten to claim fewer chunks fails: the header is in every chunk's AAD.
    forged = bytearray(SAMPLE_HEADER)
    forged[12:20] = (3 * MIN_CHUNK_SIZE).to_bytes(8, "big")
    with pytest.raises(TamperedError):
        open_all(bytes(forged) + b"".join(SAMPLE_CHUNKS[:3]), SAMPLE_DEK)


def test_reordered_chunks_fail() -> None:
    """Swapping two full chunks of one object fails authentication."""
    chunks = list(SAMPLE_CHUNKS)
    chunks[0], chunks[1] = chunks[1], chunks[0]
    with pytest.raises(TamperedError):
        open_all(SAMPLE_HEADER + b"".join(chunks), SAMPLE_DEK)


def test_chunks_and_headers_swapped_between_objects_with_one_dek_fail() -> None:
    """Two objects under the same DEK: a chunk or a header from one never opens in the other."""
    other = os.urandom(len(SAMPLE))
    header2, chunks2, _ = seal(other, dek=SAMPLE_DEK)
    mixed = SAMPLE_HEADER + b"".join([SAMPLE_CHUNKS[0], chunks2[1], *SAMPLE_CHUNKS[2:]])
    with pytest.raises(TamperedError):
        open_all(mixed, SAMPLE_DEK)
    with pytest.raises(TamperedError):
        open_all(header2 + b"".join(SAMPLE_CHUNKS), SAMPLE_DEK)


def test_wrong_dek_fails() -> None:
    """Opening with another DEK fails on the first chunk."""
    with pytest.raises(TamperedError):
        open_all(SAMPLE_BLOB, new_dek())


def test_wrong_length_chunk_is_an_error() -> None:
    """A sealed chunk shorter or longer than the layout says is truncation or tampering."""
    opener = Opener(SAMPLE_DEK, parse_header(SAMPLE_HEADER))
    with pytest.raises(TruncatedError):
        opener.open_chunk(0, SAMPLE_CHUNKS[0][:-1], last=False)
    with pytest.raises(TamperedError):
        opener.open_chunk(0, SAMPLE_CHUNKS[0] + b"\x00", last=False)
    with pytest.raises(ValueError):
        opener.open_chunk(9, SAMPLE_CHUNKS[0], last=False)


# -- size arithmetic ----------------------------------------------------------------------------


def test_ciphertext_size_examples() -> None:
    """Header, plaintext and 16 bytes per chunk; an empty object still pays for one tag."""
    assert ciphertext_size(0, 65536, 100) == 116
    assert ciphertext_size(1, 65536, 100) == 117
    assert ciphertext_size(65536, 65536, 100) == 100 + 65536 + 16
    assert ciphertext_size(65537, 65536, 100) == 100 + 65537 + 32
    assert ciphertext_size(2**30, 65536, 100) == 100 + 2**30 + 16 * 16384


@given(
    plain_size=st.integers(0, 10 * MAX_CHUNK_SIZE),
    chunk_size=st.sampled_from(CHUNK_SIZES),
    header_len=st.integers(43, MAX_HEADER_LEN),
)
def test_layout_accounts_for_every_byte(plain_size: int, chunk_size: int, header_len: int) -> None:
    """Chunk offsets are contiguous, lengths sum to the plaintext, the end is the size."""
    layout = Layout(header_len, chunk_size, plain_size)
    offset = header_len
    plain = 0
    for i in range(layout.chunk_count):
        assert layout.chunk_offset(i) == offset
        assert 0 < layout.chunk_plain_len(i) <= chunk_size or plain_size == 0
        offset += layout.chunk_sealed_len(i)
        plain += layout.chunk_plain_len(i)
    assert plain == plain_size
    assert offset == layout.ciphertext_size == ciphertext_size(plain_size, chunk_size, header_len)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    chunk_size = draw(st.sampled_from(CHUNK_SIZES[:4]))
    plain_size = draw(st.integers(1, 6 * chunk_size))
    start = draw(st.integers(0, plain_size - 1))
    end = draw(st.integers(start, plain_size - 1))
    header_len = draw(st.integers(43, 300))
    return start, end, plain_size, chunk_size, header_len


@settings(max_examples=300)
@given(ranges())
def test_range_math_matches_brute_force(case: tuple[int, int, int, int, int]) -> None:
    """The chunk span is exactly the chunks holding the bytes, at their stored offsets."""
    start, end, plain_size, chunk_size, header_len = case
    span = plaintext_range_to_chunks(start, end, plain_size, chunk_size, header_len)
    layout = Layout(header_len, chunk_size, plain_size)
    holding = [
        i
        for i in range(layout.chunk_count)
        if i * chunk_size <= end and start < i * chunk_size + layout.chunk_plain_len(i)
    ]
    assert (span.first_chunk, span.last_chunk) == (holding[0], holding[-1])
    assert span.ciphertext_start == header_len + holding[0] * (chunk_size + 16)
    last = holding[-1]
    assert span.ciphertext_end == layout.chunk_offset(last) + layout.chunk_sealed_len(last) - 1
    assert span.ciphertext_end < layout.ciphertext_size
    assert span.skip == start - holding[0] * chunk_size
    assert span.length == end - start + 1
    assert span.ciphertext_length == sum(layout.chunk_sealed_len(i) for i in holding)


@settings(max_examples=60, deadline=None)
@given(ranges(), st.data())
def test_range_read_from_fetched_bytes_equals_the_plaintext_slice(
    case: tuple[int, int, int, int, int], data: st.DataObject
) -> None:
    """Decrypting only the fetched span and applying skip/length gives plaintext[start:end+1]."""
    start, end, plain_size, chunk_size, _ = case
    plaintext = os.urandom(plain_size)
    header, chunks, dek = seal(plaintext, chunk_size)
    blob = header + b"".join(chunks)
    span = plaintext_range_to_chunks(start, end, plain_size, chunk_size, len(header))
    fetched = blob[span.ciphertext_start : span.ciphertext_end + 1]
    opener = Opener(dek, parse_header(header))
    out = []
    pos = 0
    for i in range(span.first_chunk, span.last_chunk + 1):
        size = opener.layout.chunk_sealed_len(i)
        out.append(opener.open_chunk(i, fetched[pos : pos + size], i == len(chunks) - 1))
        pos += size
    assert pos == len(fetched)
    got = b"".join(out)[span.skip : span.skip + span.length]
    assert got == plaintext[start : end + 1]


def test_range_outside_the_object_is_refused() -> None:
    """Ranges must lie within the object (S3 answers 416 before asking)."""
    for start, end in ((0, 10), (5, 4), (-1, 3)):
        with pytest.raises(ValueError):
            plaintext_range_to_chunks(start, end, 10, 4096, 100)
    with pytest.raises(ValueError):
        plaintext_range_to_chunks(0, 0, 0, 4096, 100)


def test_whole_object_span() -> None:
    """whole() covers every chunk after the header, including the empty object's one chunk."""
    assert Layout(100, 4096, 0).whole() == ChunkRange(0, 0, 100, 115, 0, 0)
    assert Layout(100, 4096, 5000).whole() == ChunkRange(0, 1, 100, 100 + 5000 + 32 - 1, 0, 5000)


def test_one_kib_range_in_a_gib_object_touches_at_most_two_chunks() -> None:
    """A 1 KiB range read from a 1 GiB object fetches one or two 64 KiB chunks."""
    size = 2**30
    for start in (0, 65536 - 512, 12345678, size - 1024):
        span = plaintext_range_to_chunks(start, start + 1023, size, 65536, 150)
        assert span.last_chunk - span.first_chunk <= 1
        assert span.ciphertext_length <= 2 * (65536 + 16)
