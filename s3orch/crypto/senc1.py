"""Read-only support for SENC v1, the format of the Go s3-orchestrator, so its objects can be
served. Written exactly as reference/anchor-encryption.md §1-§4 describes; nothing writes it.

Layout: a 32-byte header (``SENC`` | 0x01 | chunk_size u32 | base_nonce 12 | 11 reserved),
then chunks of ``nonce (12) || AES-256-GCM ciphertext || tag (16)``, no additional data, where
``nonce_i`` is the base nonce with its last 8 bytes XORed with ``i`` (big-endian). An empty
object is the header alone. The DB row holds ``base_nonce || wrapped DEK``, the key id, and
the plaintext size.

The format itself detects neither truncation nor an altered header, so reads lean on the
metadata: the plaintext size from the DB fixes how many chunks there are and how long each is,
and the base nonce from the DB must match the header's. What we add to the Go reader: the
chunk size always comes from the object (never the configuration), and it is bounded before
anything is allocated.
"""

from __future__ import annotations

from typing import Final

from attrs import field, frozen

from s3orch.crypto.envelope import (
    ChunkRange,
    HeaderIncomplete,
    Layout,
    MalformedHeader,
    TamperedError,
    check_chunk_shape,
)
from s3orch.crypto.keys import (
    DEK_SIZE,
    LOCAL_WRAPPED_SIZE,
    SENC1_FINGERPRINT_PREFIX,
    AesGcm,
    BytesLike,
    WrappedKey,
)

MAGIC: Final = b"SENC"
VERSION: Final = 1
HEADER_LEN: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
CHUNK_OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
"""The Go writer allowed 4 KiB..1 MiB; older objects may differ, so accept up to 16 MiB."""

_LOCAL_KEY_ID_PREFIXES: Final = ("config-", "file-")
_VAULT_KEY_ID_PREFIX: Final = "vault:"


class MalformedKeyMaterial(MalformedHeader):
    """The DB's ``encryption_key`` / ``key_id`` pair is not SENC v1 key material."""


def _check_chunk_size(_: object, __: object, value: int) -> None:
    if not 1 <= value <= MAX_CHUNK_SIZE:
        raise ValueError(f"SENC v1 chunk size {value} is out of bounds (1..{MAX_CHUNK_SIZE})")


def _check_nonce(_: object, __: object, value: bytes) -> None:
    if len(value) != NONCE_SIZE:
        raise ValueError(f"a SENC v1 base nonce is {NONCE_SIZE} bytes")


@frozen
class Senc1Header:
    """What a SENC v1 header says. Build one from the DB's nonce and a cached chunk size to
    read a range without fetching the header."""

    chunk_size: int = field(validator=_check_chunk_size)
    base_nonce: bytes = field(validator=_check_nonce)

    @classmethod
    def parse(cls, data: BytesLike) -> Senc1Header:
        """The header at the start of ``data``. Reserved bytes are ignored, as the Go reader
        does; the chunk size is bounded."""
        if len(data) < HEADER_LEN:
            if bytes(data[:4]) != MAGIC[: len(data)]:
                raise MalformedHeader("not an encrypted object (no SENC magic)")
            raise HeaderIncomplete(HEADER_LEN)
        if bytes(data[:4]) != MAGIC:
            raise MalformedHeader("not an encrypted object (no SENC magic)")
        if data[4] != VERSION:
            raise MalformedHeader(f"not a SENC v1 header (version {data[4]})")
        chunk_size = int.from_bytes(data[5:9], "big")
        try:
            return cls(chunk_size, bytes(data[9:21]))
        except ValueError as e:
            raise MalformedHeader(str(e)) from None


@frozen
class KeyMaterial:
    """A Go DB row's ``encryption_key`` (``base_nonce || wrapped DEK``) and ``key_id``."""

    base_nonce: bytes
    wrapped: WrappedKey

    def check_header(self, header: Senc1Header) -> None:
        """The object's header must carry the nonce the DB row recorded for it."""
        if header.base_nonce != self.base_nonce:
            raise TamperedError(
                "the object's SENC v1 header does not match its metadata (base nonce differs)"
            )


def parse_key_material(encryption_key: bytes, key_id: str) -> KeyMaterial:
    """Split a Go row's key material and name its key the way our providers look it up.

    Local keys (``config-N``, ``file-0``) get the fingerprint ``senc1:<key_id>``: the Go id is
    positional, so ``LocalKeys`` identifies the key by authentication, not by that label.
    Vault ids (``vault:<mount>/<key>``) already are our Vault fingerprints; the operator-facing
    id becomes the key name, as for our own Vault-wrapped DEKs.
    """
    if len(encryption_key) <= NONCE_SIZE:
        raise MalformedKeyMaterial("SENC v1 key material is too short")
    base_nonce, blob = encryption_key[:NONCE_SIZE], encryption_key[NONCE_SIZE:]
    if key_id.startswith(_LOCAL_KEY_ID_PREFIXES):
        if len(blob) != LOCAL_WRAPPED_SIZE:
            raise MalformedKeyMaterial(
                f"a SENC v1 local wrapped key is {LOCAL_WRAPPED_SIZE} bytes, not {len(blob)}"
            )
        wrapped = WrappedKey(key_id, SENC1_FINGERPRINT_PREFIX + key_id, blob)
    elif key_id.startswith(_VAULT_KEY_ID_PREFIX):
        if not blob.startswith(b"vault:v"):
            raise MalformedKeyMaterial("a SENC v1 Vault wrapped key must start with 'vault:v'")
        key_name = key_id.rsplit("/", 1)[-1]
        wrapped = WrappedKey(key_name, key_id, blob)
    else:
        raise MalformedKeyMaterial(f"unknown SENC v1 key id {key_id!r}")
    return KeyMaterial(base_nonce, wrapped)


def layout(plain_size: int, chunk_size: int) -> Layout:
    """SENC v1 geometry: 32-byte header, 28 bytes per chunk, no chunk for an empty object."""
    return Layout(HEADER_LEN, chunk_size, plain_size, overhead=CHUNK_OVERHEAD, empty_chunk=False)


def ciphertext_size(plain_size: int, chunk_size: int) -> int:
    """The stored size of a SENC v1 object (§1.5 of the reference)."""
    return layout(plain_size, chunk_size).ciphertext_size


def plaintext_range_to_chunks(start: int, end: int, plain_size: int, chunk_size: int) -> ChunkRange:
    """The SENC v1 chunks holding plaintext ``start``..``end`` (inclusive). Unlike the Go
    reader, the end is exact (the last chunk's real length) and the chunk size is the
    object's."""
    return layout(plain_size, chunk_size).plaintext_range(start, end)


def chunk_nonce(base_nonce: bytes, index: int) -> bytes:
    """The base nonce with its last 8 bytes XORed with the chunk index (big-endian)."""
    tail = int.from_bytes(base_nonce[4:], "big") ^ index
    return base_nonce[:4] + tail.to_bytes(8, "big")


class Senc1Opener:
    """Decrypts one SENC v1 object whose plaintext size comes from the metadata DB."""

    def __init__(self, dek: bytes, header: Senc1Header, plain_size: int) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        self.header = header
        self._cipher = AesGcm(dek)
        self._layout = layout(plain_size, header.chunk_size)

    @property
    def layout(self) -> Layout:
        return self._layout

    def open_chunk(self, index: int, sealed: BytesLike, last: bool) -> bytes:
        """Chunk ``index``'s plaintext, after checking its nonce and its tag."""
        check_chunk_shape(self._layout, index, sealed, last)
        view = memoryview(sealed)
        nonce = chunk_nonce(self.header.base_nonce, index)
        if bytes(view[:NONCE_SIZE]) != nonce:
            raise TamperedError(f"nonce mismatch at chunk {index} (moved or altered)")
        plaintext = self._cipher.open(nonce, view[NONCE_SIZE:])
        if plaintext is None:
            raise TamperedError(
                f"chunk {index} failed authentication (altered, from another object, "
                "or the wrong data key)"
            )
        return plaintext
