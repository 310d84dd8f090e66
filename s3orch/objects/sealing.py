"""Envelope encryption of object bodies: sealed on the way to a backend, opened on the way back.

Every object (and every multipart upload) gets its own random data key (DEK), wrapped by the
master key provider; the DEK seals the body in SENC v2 chunks (``s3orch.crypto``). What a read
needs besides the stored bytes is a ``Sealing`` in the metadata: the wrapped DEK, and the
header of a single-stream object, or the part table of a multipart one, whose parts are each a
SENC v2 stream of their own, back to back (docs/encryption-format.md). Reads fetch only the
chunks that hold the requested range, and every chunk is authenticated before any of its
plaintext leaves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from attrs import define, frozen
from twisted.logger import Logger

from s3orch import metrics
from s3orch.crypto import senc1
from s3orch.crypto.envelope import (
    CHUNK_OVERHEAD,
    MAX_HEADER_LEN,
    MIN_HEADER_LEN,
    OBJECT_ID_SIZE,
    EnvelopeError,
    HeaderInfo,
    Layout,
    Opener,
    Sealer,
    TamperedError,
    TruncatedError,
    new_dek,
    parse_header,
)
from s3orch.crypto.keys import (
    IKeyProvider,
    InvalidWrappedKey,
    KeyProviderError,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
)
from s3orch.crypto.streams import open_stream, seal_stream
from s3orch.objects.errors import KeyServiceUnavailable, Undecryptable
from s3orch.store.records import SENC1, SENC2, SENC2_PARTS, ObjectVersion, Sealing, Segment
from s3orch.streams import ByteSource, close_source

log = Logger()

Fetch = Callable[[int, int], Awaitable[ByteSource]]
"""Stored bytes ``start..end`` (inclusive) of the version being read."""

_PART_TAG = 4  # the last bytes of a part's object_id: its part number

# Counted per DEK and per object: bound once, not looked up every time.
_ENCRYPTS = metrics.encryption_operations_total.labels("encrypt")
_DECRYPTS = metrics.encryption_operations_total.labels("decrypt")
_WRAPS = metrics.encryption_operations_total.labels("wrap")
_UNWRAPS = metrics.encryption_operations_total.labels("unwrap")


@frozen
class SealedWrite:
    """One body about to be sealed: its size on the backend and what the metadata keeps."""

    sealer: Sealer
    sealing: Sealing

    @property
    def stored_size(self) -> int:
        return self.sealer.ciphertext_size

    def stream(self, plaintext: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The sealed bytes of ``plaintext``, which must be exactly the size sealed for."""
        _ENCRYPTS.inc()
        return seal_stream(plaintext, self.sealer, self.sealer.layout.plain_size)


@define
class Encryption:
    """Seals new bodies when ``enabled``; opens sealed ones whenever ``keys`` can unwrap them.

    With encryption off, ``keys`` may still be set so that existing objects stay readable;
    without keys, an encrypted object fails clearly rather than being served as ciphertext.
    """

    keys: IKeyProvider | None = None
    enabled: bool = False
    chunk_size: int = 65536

    @property
    def seals(self) -> bool:
        """Whether new objects are sealed."""
        return self.enabled and self.keys is not None

    # -- writing ------------------------------------------------------------------------------

    async def seal_object(self, size: int) -> SealedWrite:
        """A new DEK and a sealer for a ``size``-byte object."""
        dek, wrapped = await self._new_data_key()
        sealer = Sealer(dek, wrapped, self.chunk_size, size)
        return SealedWrite(sealer, Sealing(SENC2, wrapped, self.chunk_size, sealer.header))

    async def upload_sealing(self) -> Sealing:
        """The sealing of a new multipart upload: one DEK for all its parts."""
        _, wrapped = await self._new_data_key()
        return Sealing(SENC2_PARTS, wrapped, self.chunk_size)

    async def seal_part(self, sealing: Sealing, part_number: int, size: int) -> SealedWrite:
        """A sealer for one part of an upload. The part number is bound into the part's
        (authenticated) header, so a part cannot be read back in another position."""
        dek = await self.data_key(sealing.wrapped)
        object_id = os.urandom(OBJECT_ID_SIZE - _PART_TAG) + part_number.to_bytes(_PART_TAG, "big")
        sealer = Sealer(dek, sealing.wrapped, sealing.chunk_size, size, object_id=object_id)
        return SealedWrite(sealer, sealing)

    async def _new_data_key(self) -> tuple[bytes, WrappedKey]:
        if self.keys is None:
            raise RuntimeError("encryption has no master key")
        dek = new_dek()
        return dek, await self._wrap(self.keys, dek)

    async def _wrap(self, keys: IKeyProvider, dek: bytes) -> WrappedKey:
        try:
            wrapped = await keys.wrap(dek)
        except KeyProviderError as e:
            metrics.encryption_errors_total.labels("wrap", _error_type(e)).inc()
            raise KeyServiceUnavailable(f"the master key could not wrap a data key: {e}") from e
        _WRAPS.inc()
        return wrapped

    async def by_primary(self, wrapped: WrappedKey) -> WrappedKey:
        """``wrapped``'s DEK wrapped by the primary key (``wrapped`` itself if it already is,
        or if the primary cannot be told: then a rotation takes care of it)."""
        keys = self.keys
        if keys is None:
            return wrapped
        primary = [fp for fp, key_id in keys.key_ids().items() if key_id == keys.primary_id]
        if not primary or wrapped.fingerprint in primary:
            return wrapped
        return await self._wrap(keys, await self.data_key(wrapped))

    # -- reading ------------------------------------------------------------------------------

    async def data_key(self, wrapped: WrappedKey) -> bytes:
        """Unwrap ``wrapped`` with the key its fingerprint names; never with a guess."""
        try:
            if self.keys is None:
                raise UnknownKey(wrapped.key_id, wrapped.fingerprint, "no master key is configured")
            dek = await self.keys.unwrap(wrapped)
        except UnknownKey as e:
            metrics.encryption_unknown_key_id_total.inc()
            metrics.encryption_errors_total.labels("unwrap", "unknown_key").inc()
            raise Undecryptable(
                f"the data key is wrapped by master key {wrapped.key_id!r}"
                f" ({wrapped.fingerprint}), which is not configured"
            ) from e
        except InvalidWrappedKey as e:
            metrics.encryption_errors_total.labels("unwrap", "invalid_wrapped_key").inc()
            raise Undecryptable(f"the wrapped data key is invalid: {e}") from e
        except KeyProviderError as e:
            metrics.encryption_errors_total.labels("unwrap", _error_type(e)).inc()
            raise KeyServiceUnavailable(f"the master key is unavailable: {e}") from e
        _UNWRAPS.inc()
        return dek

    async def open(
        self, version: ObjectVersion, fetch: Fetch, start: int, end: int
    ) -> AsyncGenerator[bytes, None]:
        """Plaintext bytes ``start..end`` (inclusive) of a sealed ``version``.

        Raises Undecryptable (counted) when the bytes or the metadata were altered; the
        caller should pull the first block before answering, so most damage is a 5xx.
        """
        sealing = version.sealing
        assert sealing is not None
        _DECRYPTS.inc()
        try:
            dek = await self.data_key(sealing.wrapped)
            async for block in _plaintext(sealing, version.size, dek, fetch, start, end):
                yield block
        except EnvelopeError as e:
            metrics.encryption_errors_total.labels("decrypt", _error_type(e)).inc()
            log.error(
                "{bucket}/{key} (version {version_id}) failed decryption: {error}",
                bucket=version.bucket,
                key=version.key,
                version_id=version.version_id,
                error=str(e),
            )
            raise Undecryptable(f"the stored object failed authentication: {e}") from e


def _error_type(error: Exception) -> str:
    if isinstance(error, UnknownKey):
        return "unknown_key"
    if isinstance(error, InvalidWrappedKey):
        return "invalid_wrapped_key"
    if isinstance(error, KeyUnavailable):
        return "key_unavailable"
    if isinstance(error, TruncatedError):
        return "truncated"
    if isinstance(error, TamperedError):
        return "tampered"
    return "malformed"


async def _plaintext(
    sealing: Sealing, size: int, dek: bytes, fetch: Fetch, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    if not 0 <= start <= end < size:
        raise ValueError(f"range {start}-{end} is not within an object of {size} bytes")
    if sealing.scheme == SENC2:
        header = parse_header(sealing.header)
        if header.plain_size != size:
            raise TamperedError("the object's header does not match its metadata (size)")
        async for block in _open_single(Opener(dek, header), fetch, start, end):
            yield block
    elif sealing.scheme == SENC2_PARTS:
        async for block in _open_parts(sealing, size, dek, fetch, start, end):
            yield block
    elif sealing.scheme == SENC1:
        raw = await _read_all(await fetch(0, senc1.HEADER_LEN - 1), senc1.HEADER_LEN)
        header1 = senc1.Senc1Header.parse(raw)
        material = senc1.KeyMaterial(sealing.header, sealing.wrapped)
        material.check_header(header1)
        opener1 = senc1.Senc1Opener(dek, header1, size)
        async for block in _open_range(opener1, 0, fetch, start, end):
            yield block
    else:
        raise TamperedError(f"unknown sealing scheme {sealing.scheme!r}")


async def _open_single(
    opener: Opener, fetch: Fetch, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """Plaintext ``start..end`` of a single SENC v2 stream whose header the metadata holds.

    A read of the whole object fetches the stored header too (one request with no range,
    which some backends serve much faster) and checks it is that header; other reads fetch
    only the chunks that hold the range.
    """
    layout = opener.layout
    if start >= layout.chunk_size or end < layout.plain_size - 1:
        async for block in _open_range(opener, 0, fetch, start, end):
            yield block
        return
    span = layout.plaintext_range(start, end)
    header = opener.header.raw
    raw, rest = await _split(await fetch(0, span.ciphertext_end), len(header))
    if raw != header:
        await close_source(rest)
        raise TamperedError("the stored header is not the one the metadata holds")
    async for block in open_stream(
        rest, opener, span.first_chunk, span.last_chunk, span.skip, span.length
    ):
        yield block


async def _open_range(
    opener: Opener | senc1.Senc1Opener, offset: int, fetch: Fetch, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """Plaintext ``start..end`` of one stream stored at ``offset``, whose header is known."""
    span = opener.layout.plaintext_range(start, end)
    source = await fetch(offset + span.ciphertext_start, offset + span.ciphertext_end)
    async for block in open_stream(
        source, opener, span.first_chunk, span.last_chunk, span.skip, span.length
    ):
        yield block


async def _open_parts(
    sealing: Sealing, size: int, dek: bytes, fetch: Fetch, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """Plaintext ``start..end`` of an object made of sealed parts, part by part."""
    if sum(s.plain_size for s in sealing.segments) != size:
        raise TamperedError("the object's part table does not add up to its size")
    plain_at = stored_at = 0
    for segment in sealing.segments:
        plain_end = plain_at + segment.plain_size - 1
        if segment.plain_size and plain_end >= start and plain_at <= end:
            lo, hi = max(start, plain_at) - plain_at, min(end, plain_end) - plain_at
            async for block in _open_part(sealing, segment, stored_at, dek, fetch, lo, hi):
                yield block
        plain_at += segment.plain_size
        stored_at += segment.stored_size
        if plain_at > end:
            return


async def _open_part(
    sealing: Sealing, segment: Segment, offset: int, dek: bytes, fetch: Fetch, lo: int, hi: int
) -> AsyncGenerator[bytes, None]:
    chunk_size = sealing.chunk_size
    chunks = Layout(0, chunk_size, segment.plain_size).chunk_count
    header_len = segment.stored_size - segment.plain_size - chunks * CHUNK_OVERHEAD
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise TamperedError(f"part {segment.part_number}'s stored size does not fit its layout")
    layout = Layout(header_len, chunk_size, segment.plain_size)
    span = layout.plaintext_range(lo, hi)
    if span.first_chunk == 0:
        # Header and chunks are adjacent: one request.
        source = await fetch(offset, offset + span.ciphertext_end)
        raw, rest = await _split(source, header_len)
    else:
        raw = await _read_all(await fetch(offset, offset + header_len - 1), header_len)
        rest = await fetch(offset + span.ciphertext_start, offset + span.ciphertext_end)
    try:
        opener = Opener(dek, _part_header(raw, segment, chunk_size))
    except BaseException:
        await close_source(rest)
        raise
    async for block in open_stream(
        rest, opener, span.first_chunk, span.last_chunk, span.skip, span.length
    ):
        yield block


def _part_header(raw: bytes, segment: Segment, chunk_size: int) -> HeaderInfo:
    """The part's own header, which must say what the part table says of it."""
    header = parse_header(raw)
    if (
        header.plain_size != segment.plain_size
        or header.chunk_size != chunk_size
        or header.object_id[-_PART_TAG:] != segment.part_number.to_bytes(_PART_TAG, "big")
    ):
        raise TamperedError(
            f"part {segment.part_number}'s header does not match the object's metadata"
        )
    return header


async def _split(source: ByteSource, size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first ``size`` bytes of ``source``, and a stream of the rest."""
    head = bytearray()
    try:
        async for block in source:
            head += block
            if len(head) >= size:
                break
        else:
            raise TruncatedError("the stored object ended inside a header")
    except BaseException:
        await close_source(source)
        raise

    async def rest(extra: bytes) -> AsyncGenerator[bytes, None]:
        try:
            if extra:
                yield extra
            async for block in source:
                yield block
        finally:
            await close_source(source)

    return bytes(head[:size]), rest(bytes(head[size:]))


async def _read_all(source: ByteSource, size: int) -> bytes:
    """Exactly ``size`` bytes: the whole of a short read such as a header."""
    raw, rest = await _split(source, size)
    try:
        async for _ in rest:
            raise TamperedError("the backend returned more bytes than asked for")
    finally:
        await close_source(rest)
    return raw
