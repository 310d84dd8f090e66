"""Our object format, SENC v2: a self-describing header, then AES-256-GCM chunks (STREAM).

docs/encryption-format.md describes it byte by byte. In short::

    header = "SENC" | 0x02 | suite 0x01 | header_len u16 | chunk_size u32 | plain_size u64
             | object_id (16 random bytes) | key_id (u8 len) | fingerprint (u8 len)
             | wrapped DEK (u16 len)
    chunk i = AES-256-GCM(chunk_key, nonce_i, aad=SHA-256(header), plaintext_i) || tag (16)
    chunk_key = HKDF-SHA256(ikm=DEK, salt=object_id, info="s3orch SENC v2 chunk key")
    nonce_i  = 00 00 00 | i as u64 | 01 if i is the last chunk else 00

Every chunk authenticates the whole header, its own index and whether it is the last, so a
flipped bit anywhere, a truncation at a chunk boundary, a reordering or a chunk (or header)
taken from another object fails authentication. An empty object still has one (empty) final
chunk. The chunk key is derived per object, so even a DEK reused for two objects (a PUT retried
on another backend) never repeats a (key, nonce) pair.

Size arithmetic is pure and exact (``Layout``): a range read fetches only the chunks that hold
the range; the header length is in the header and in ``Sealer.header_len`` so the caller can
store it (or the whole header) with the object's metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Final, Protocol

from attrs import frozen

from s3orch.crypto.keys import DEK_SIZE, AesGcm, BytesLike, WrappedKey

MAGIC: Final = b"SENC"
VERSION: Final = 2
SUITE_AES256GCM_HKDF_STREAM: Final = 1

MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 64 * 1024

OBJECT_ID_SIZE: Final = 16
TAG_SIZE: Final = 16
CHUNK_OVERHEAD: Final = TAG_SIZE
MAX_PLAIN_SIZE: Final = 2**63 - 1

_PREFIX: Final = struct.Struct(">4sBBH")  # magic, version, suite, header_len
_FIXED: Final = struct.Struct(">4sBBHIQ16s")  # ... chunk_size, plain_size, object_id
PREFIX_LEN: Final = _PREFIX.size
"""Bytes needed to learn the header's length (``HeaderIncomplete.needed`` tells the rest)."""
FIXED_HEADER_LEN: Final = _FIXED.size
MIN_HEADER_LEN: Final = FIXED_HEADER_LEN + 1 + 1 + 1 + 1 + 2 + 1
MAX_HEADER_LEN: Final = 4096

_CHUNK_KEY_INFO: Final = b"s3orch SENC v2 chunk key"
_NONCE_PAD: Final = b"\x00\x00\x00"


# -- errors ---------------------------------------------------------------------------------


class EnvelopeError(Exception):
    """Stored ciphertext cannot be used. Never carries plaintext or key material."""


class MalformedHeader(EnvelopeError):
    """The bytes are not a header this code reads (wrong magic, version, bounds, garbage)."""


class HeaderIncomplete(EnvelopeError):
    """More bytes are needed to parse the header: ``needed`` in all, counted from its start."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"the header needs {needed} bytes")
        self.needed = needed


class TamperedError(EnvelopeError):
    """A chunk failed authentication: altered, reordered, from another object, or wrong DEK."""


class TruncatedError(TamperedError):
    """The ciphertext ended before the chunks its header (or metadata) promises."""


# -- size arithmetic ------------------------------------------------------------------------


def check_chunk_size(chunk_size: int) -> None:
    """Raise ValueError unless ``chunk_size`` is a power of two from 4 KiB to 1 MiB."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise ValueError(
            f"chunk size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, "
            f"not {chunk_size}"
        )


@frozen
class ChunkRange:
    """The chunks that hold a plaintext range, and where they are in the stored object.

    Fetch ``ciphertext_start``..``ciphertext_end`` (inclusive, absolute offsets: the header is
    not included unless the range starts at 0), decrypt chunks ``first_chunk``..``last_chunk``,
    drop ``skip`` bytes and return the next ``length``. An empty span (end < start) happens only
    for an empty SENC v1 object, which has no chunks.
    """

    first_chunk: int
    last_chunk: int
    ciphertext_start: int
    ciphertext_end: int
    skip: int
    length: int

    @property
    def ciphertext_length(self) -> int:
        return self.ciphertext_end - self.ciphertext_start + 1


@frozen
class Layout:
    """Where each chunk of one stored object lives: ``header_len`` bytes of header, then
    chunks of ``chunk_size`` plaintext bytes (the last one shorter) each ``overhead`` longer
    when sealed. ``empty_chunk``: an empty object still has one (empty) chunk."""

    header_len: int
    chunk_size: int
    plain_size: int
    overhead: int = CHUNK_OVERHEAD
    empty_chunk: bool = True

    def __attrs_post_init__(self) -> None:
        if self.chunk_size <= 0 or self.plain_size < 0 or self.header_len < 0:
            raise ValueError("chunk_size must be positive, sizes non-negative")

    @property
    def chunk_count(self) -> int:
        count = -(-self.plain_size // self.chunk_size)
        return max(count, 1) if self.empty_chunk else count

    @property
    def ciphertext_size(self) -> int:
        return self.header_len + self.plain_size + self.chunk_count * self.overhead

    def chunk_plain_len(self, index: int) -> int:
        self._check_index(index)
        return min(self.chunk_size, self.plain_size - index * self.chunk_size)

    def chunk_sealed_len(self, index: int) -> int:
        return self.chunk_plain_len(index) + self.overhead

    def chunk_offset(self, index: int) -> int:
        """Absolute offset of sealed chunk ``index`` in the stored object."""
        self._check_index(index)
        return self.header_len + index * (self.chunk_size + self.overhead)

    def plaintext_range(self, start: int, end: int) -> ChunkRange:
        """The chunks holding plaintext bytes ``start``..``end`` (inclusive, within the object)."""
        if not 0 <= start <= end < self.plain_size:
            raise ValueError(
                f"range {start}-{end} is not within an object of {self.plain_size} bytes"
            )
        first = start // self.chunk_size
        last = end // self.chunk_size
        return ChunkRange(
            first_chunk=first,
            last_chunk=last,
            ciphertext_start=self.chunk_offset(first),
            ciphertext_end=self.chunk_offset(last) + self.chunk_sealed_len(last) - 1,
            skip=start - first * self.chunk_size,
            length=end - start + 1,
        )

    def whole(self) -> ChunkRange:
        """Every chunk, all plaintext (also for an empty object)."""
        if self.chunk_count == 0:
            return ChunkRange(0, -1, self.header_len, self.header_len - 1, 0, 0)
        last = self.chunk_count - 1
        return ChunkRange(
            first_chunk=0,
            last_chunk=last,
            ciphertext_start=self.header_len,
            ciphertext_end=self.ciphertext_size - 1,
            skip=0,
            length=self.plain_size,
        )

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.chunk_count:
            raise ValueError(f"chunk {index} is not in an object of {self.chunk_count} chunks")


def ciphertext_size(plain_size: int, chunk_size: int, header_len: int) -> int:
    """Stored size of a SENC v2 object: header + plaintext + 16 bytes per chunk (at least one)."""
    return Layout(header_len, chunk_size, plain_size).ciphertext_size


def plaintext_range_to_chunks(
    start: int, end: int, plain_size: int, chunk_size: int, header_len: int
) -> ChunkRange:
    """The SENC v2 chunks holding plaintext ``start``..``end`` (inclusive)."""
    return Layout(header_len, chunk_size, plain_size).plaintext_range(start, end)


class ChunkOpener(Protocol):
    """What ``streams.open_stream`` needs: ours (``Opener``) and SENC v1 (``Senc1Opener``)."""

    @property
    def layout(self) -> Layout: ...

    def open_chunk(self, index: int, sealed: BytesLike, last: bool) -> bytes: ...


# -- header ---------------------------------------------------------------------------------


@frozen
class HeaderInfo:
    """A parsed SENC v2 header. ``raw`` is its exact bytes: every chunk authenticates them,
    so the metadata DB may keep ``raw`` to serve range reads without fetching the header."""

    raw: bytes
    chunk_size: int
    plain_size: int
    object_id: bytes
    wrapped: WrappedKey

    @property
    def header_len(self) -> int:
        return len(self.raw)

    @property
    def layout(self) -> Layout:
        return Layout(len(self.raw), self.chunk_size, self.plain_size)


def format_version(prefix: BytesLike) -> int:
    """1 (the Go system's SENC v1) or 2 (ours), from at least the first 5 bytes of an object."""
    if len(prefix) < 5:
        if bytes(prefix[:4]) != MAGIC[: len(prefix)]:
            raise MalformedHeader("not an encrypted object (no SENC magic)")
        raise HeaderIncomplete(5)
    if bytes(prefix[:4]) != MAGIC:
        raise MalformedHeader("not an encrypted object (no SENC magic)")
    version = prefix[4]
    if version not in (1, VERSION):
        raise MalformedHeader(f"unsupported SENC version {version}")
    return version


def header_length(wrapped: WrappedKey) -> int:
    """Length of the header a ``Sealer`` writes for ``wrapped`` (for sizes known up front)."""
    return (
        FIXED_HEADER_LEN
        + 1
        + len(_label(wrapped.key_id, "key id"))
        + 1
        + len(_label(wrapped.fingerprint, "fingerprint"))
        + 2
        + len(wrapped.blob)
    )


def encode_header(chunk_size: int, plain_size: int, object_id: bytes, wrapped: WrappedKey) -> bytes:
    check_chunk_size(chunk_size)
    if not 0 <= plain_size <= MAX_PLAIN_SIZE:
        raise ValueError(f"plaintext size {plain_size} is out of range")
    if len(object_id) != OBJECT_ID_SIZE:
        raise ValueError(f"object id must be {OBJECT_ID_SIZE} bytes")
    if not wrapped.blob:
        raise ValueError("the wrapped DEK is empty")
    length = header_length(wrapped)
    if length > MAX_HEADER_LEN:
        raise ValueError(f"header would be {length} bytes, more than {MAX_HEADER_LEN}")
    key_id = _label(wrapped.key_id, "key id")
    key_fingerprint = _label(wrapped.fingerprint, "fingerprint")
    return b"".join(
        (
            _FIXED.pack(
                MAGIC,
                VERSION,
                SUITE_AES256GCM_HKDF_STREAM,
                length,
                chunk_size,
                plain_size,
                object_id,
            ),
            bytes((len(key_id),)),
            key_id,
            bytes((len(key_fingerprint),)),
            key_fingerprint,
            len(wrapped.blob).to_bytes(2, "big"),
            wrapped.blob,
        )
    )


def _label(text: str, what: str) -> bytes:
    """A key id or fingerprint: 1..255 printable ASCII characters, no spaces."""
    if not 1 <= len(text) <= 255 or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"{what} must be 1 to 255 printable ASCII characters without spaces")
    return text.encode("ascii")


def parse_header(data: BytesLike) -> HeaderInfo:
    """Parse a SENC v2 header from the start of ``data``, checking every bound first.

    Raises HeaderIncomplete (with the total length needed, at most MAX_HEADER_LEN) when
    ``data`` is too short, MalformedHeader for anything that is not a valid header. Only the
    checks happen here: the header is authenticated when the first chunk is opened.
    """
    if len(data) < PREFIX_LEN:
        if bytes(data[:4]) != MAGIC[: len(data)]:
            raise MalformedHeader("not an encrypted object (no SENC magic)")
        raise HeaderIncomplete(PREFIX_LEN)
    magic, version, suite, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MalformedHeader("not an encrypted object (no SENC magic)")
    if version == 1:
        raise MalformedHeader("this is a SENC v1 object (Go s3-orchestrator): read it with senc1")
    if version != VERSION:
        raise MalformedHeader(f"unsupported SENC version {version}")
    if suite != SUITE_AES256GCM_HKDF_STREAM:
        raise MalformedHeader(f"unsupported cipher suite {suite}")
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise MalformedHeader(f"header length {header_len} is out of bounds")
    if len(data) < header_len:
        raise HeaderIncomplete(header_len)
    raw = bytes(data[:header_len])
    _, _, _, _, chunk_size, plain_size, object_id = _FIXED.unpack_from(raw)
    try:
        check_chunk_size(chunk_size)
    except ValueError as e:
        raise MalformedHeader(str(e)) from None
    if plain_size > MAX_PLAIN_SIZE:
        raise MalformedHeader("plaintext size is out of range")
    reader = _FieldReader(raw, FIXED_HEADER_LEN)
    key_id = reader.text(1, "key id")
    key_fingerprint = reader.text(1, "fingerprint")
    blob = reader.take(2, "wrapped key")
    if reader.pos != header_len:
        raise MalformedHeader("the header has trailing bytes")
    return HeaderInfo(
        raw=raw,
        chunk_size=chunk_size,
        plain_size=plain_size,
        object_id=object_id,
        wrapped=WrappedKey(key_id, key_fingerprint, blob),
    )


class _FieldReader:
    """Length-prefixed fields, each checked against the header's end before it is read."""

    def __init__(self, raw: bytes, pos: int) -> None:
        self.raw = raw
        self.pos = pos

    def take(self, width: int, what: str) -> bytes:
        if self.pos + width > len(self.raw):
            raise MalformedHeader(f"the header ends inside the {what} length")
        size = int.from_bytes(self.raw[self.pos : self.pos + width], "big")
        self.pos += width
        if size == 0 or self.pos + size > len(self.raw):
            raise MalformedHeader(f"the {what} length is out of bounds")
        value = self.raw[self.pos : self.pos + size]
        self.pos += size
        return value

    def text(self, width: int, what: str) -> str:
        value = self.take(width, what)
        try:
            text = value.decode("ascii")
            _label(text, what)
        except (UnicodeDecodeError, ValueError):
            raise MalformedHeader(f"the {what} is not printable ASCII") from None
        return text


# -- sealing and opening --------------------------------------------------------------------


def new_dek() -> bytes:
    """A fresh random 256-bit data key; one per object."""
    return os.urandom(DEK_SIZE)


def derive_chunk_key(dek: bytes, object_id: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the DEK, salted with the object id: the key chunks use."""
    prk = hmac.digest(object_id, dek, "sha256")
    return hmac.digest(prk, _CHUNK_KEY_INFO + b"\x01", "sha256")


def chunk_nonce(index: int, last: bool) -> bytes:
    """96 bits: three zero bytes, the chunk index (u64 big-endian), 1 for the last chunk."""
    return _NONCE_PAD + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


class Sealer:
    """Encrypts one object. Chunks must be sealed in order, each exactly once.

    The order rule keeps a (key, nonce) pair from ever sealing two different plaintexts: to
    retry, make a new Sealer (it draws a new object id, hence a new chunk key, even with the
    same DEK). ``object_id`` is for reproducible test vectors only.
    """

    def __init__(
        self,
        dek: bytes,
        wrapped: WrappedKey,
        chunk_size: int,
        plain_size: int,
        *,
        object_id: bytes | None = None,
    ) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        self.object_id = os.urandom(OBJECT_ID_SIZE) if object_id is None else bytes(object_id)
        self.header = encode_header(chunk_size, plain_size, self.object_id, wrapped)
        self.layout = Layout(len(self.header), chunk_size, plain_size)
        self._cipher = AesGcm(derive_chunk_key(dek, self.object_id))
        self._aad = hashlib.sha256(self.header).digest()
        self._next = 0

    @property
    def header_len(self) -> int:
        return len(self.header)

    @property
    def ciphertext_size(self) -> int:
        return self.layout.ciphertext_size

    def seal_chunk(self, index: int, plaintext: BytesLike, last: bool) -> bytes:
        """Chunk ``index`` sealed: ciphertext || tag. Its plaintext must be exactly the
        chunk's share of the object (``chunk_size`` bytes, the rest for the last chunk)."""
        layout = self.layout
        if index != self._next:
            raise ValueError(f"chunk {index} sealed out of order (expected chunk {self._next})")
        expected = layout.chunk_plain_len(index)
        if last != (index == layout.chunk_count - 1):
            raise ValueError(f"chunk {index} of {layout.chunk_count}: last={last} is wrong")
        if len(plaintext) != expected:
            raise ValueError(
                f"chunk {index} needs {expected} plaintext bytes, not {len(plaintext)}"
            )
        sealed = self._cipher.seal(chunk_nonce(index, last), plaintext, self._aad)
        self._next = index + 1
        return sealed


def check_chunk_shape(layout: Layout, index: int, sealed: BytesLike, last: bool) -> None:
    """Refuse a sealed chunk whose position flag or length does not fit the object's layout."""
    expected = layout.chunk_sealed_len(index)
    if last != (index == layout.chunk_count - 1):
        raise ValueError(f"chunk {index} of {layout.chunk_count}: last={last} is wrong")
    if len(sealed) != expected:
        error = TruncatedError if len(sealed) < expected else TamperedError
        raise error(f"chunk {index} is {len(sealed)} bytes, expected {expected}")


class Opener:
    """Decrypts one SENC v2 object, any chunk in any order (for range reads)."""

    @classmethod
    def parse_header(cls, data: BytesLike) -> HeaderInfo:
        """See ``parse_header``: bounded, and HeaderIncomplete says how many bytes it needs."""
        return parse_header(data)

    def __init__(self, dek: bytes, header: HeaderInfo) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        self.header = header
        self._layout = header.layout
        self._cipher = AesGcm(derive_chunk_key(dek, header.object_id))
        self._aad = hashlib.sha256(header.raw).digest()

    @property
    def layout(self) -> Layout:
        return self._layout

    def open_chunk(self, index: int, sealed: BytesLike, last: bool) -> bytes:
        """Chunk ``index``'s plaintext, returned only once its tag has been verified."""
        check_chunk_shape(self._layout, index, sealed, last)
        plaintext = self._cipher.open(chunk_nonce(index, last), sealed, self._aad)
        if plaintext is None:
            raise TamperedError(
                f"chunk {index} failed authentication (altered, moved, from another object, "
                "or the wrong data key)"
            )
        return plaintext
