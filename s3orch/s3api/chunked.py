"""Incremental decoder for aws-chunked request bodies (SigV4 streaming uploads).

The body arrives as::

    hex-size[;chunk-signature=<64 hex>]\\r\\n <data> \\r\\n  ...  0[;chunk-signature=...]\\r\\n
    [trailer-name:value\\r\\n ...] [x-amz-trailer-signature:<64 hex>\\r\\n] \\r\\n

The decoder is a small state machine fed whatever bytes the transport hands over,
split anywhere. It buffers only the current header or trailer line (bounded), never
chunk data: payload bytes are hashed and handed back as they arrive, so a 1 MiB
chunk costs no extra copy beyond the one ``feed`` returns.

Because data is released before its chunk's signature has been checked (that
happens when the chunk's last byte arrives), the caller must treat everything
``feed`` returned as provisional until ``finish`` returns: any ``SigV4Error``
means the whole body is rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection

from s3orch.sigv4 import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    AuthResult,
    SigV4Error,
)

__all__ = ["MAX_CHUNK_SIZE", "MAX_LINE", "MAX_TRAILER_BYTES", "ChunkedDecoder"]

MAX_LINE = 4096  # a chunk header or trailer line, CRLF included
MAX_TRAILER_BYTES = 16 * 1024
MAX_CHUNK_SIZE = 5 * 1024**3  # S3's limit for one PUT; anything larger is not a real client

_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_HEX64 = re.compile(rb"[0-9a-fA-F]{64}")
_SIGNATURE_EXT = b"chunk-signature="
_TRAILER_SIGNATURE = "x-amz-trailer-signature"

_MSG_TRUNCATED = "The request body terminated unexpectedly"
_MSG_LENGTH = "You did not provide the number of bytes specified by the Content-Length HTTP header"
_MSG_TRAILER = (
    "The request contained trailing data that was not well-formed or did not conform "
    "to our published schema."
)
_MSG_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)

# States
_SIZE_LINE = 0
_DATA = 1
_DATA_CRLF = 2
_TRAILER = 3
_DONE = 4
_FAILED = 5


def _framing(detail: str) -> SigV4Error:
    # AWS answers IncompleteBody for any malformed aws-chunked framing.
    return SigV4Error("IncompleteBody", _MSG_TRUNCATED, details={"Detail": detail})


class ChunkedDecoder:
    """Removes aws-chunked framing and checks chunk and trailer signatures.

    ``payload_hash`` is the request's x-amz-content-sha256 (one of the three
    streaming values); ``auth`` is required for the signed variants, since the
    chunk signatures chain from its seed signature and use its signing key.
    ``decoded_length`` is x-amz-decoded-content-length, checked when given.
    ``expected_trailers`` (x-amz-trailer, lowercased), when given, must match
    the trailers actually sent.
    """

    def __init__(
        self,
        payload_hash: str,
        auth: AuthResult | None,
        decoded_length: int | None,
        *,
        expected_trailers: Collection[str] | None = None,
    ) -> None:
        if payload_hash not in (
            STREAMING_PAYLOAD,
            STREAMING_PAYLOAD_TRAILER,
            STREAMING_UNSIGNED_PAYLOAD_TRAILER,
        ):
            raise ValueError(f"not an aws-chunked payload: {payload_hash!r}")
        self._signed = payload_hash != STREAMING_UNSIGNED_PAYLOAD_TRAILER
        self._trailers_allowed = payload_hash != STREAMING_PAYLOAD
        self._signed_trailer = payload_hash == STREAMING_PAYLOAD_TRAILER
        if self._signed:
            if auth is None:
                raise ValueError("signed aws-chunked bodies need the request's AuthResult")
            self._key = auth.signing_key
            self._previous = auth.signature
            head = f"{auth.timestamp}\n{auth.scope}\n"
            self._chunk_prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{head}"
            self._trailer_prefix = f"AWS4-HMAC-SHA256-TRAILER\n{head}"
        self._decoded_length = decoded_length
        self._expected_trailers = (
            None if expected_trailers is None else frozenset(t.lower() for t in expected_trailers)
        )

        self._state = _SIZE_LINE
        self._error: SigV4Error | None = None
        self._line = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._crlf_seen = 0
        self._chunk_signature = ""
        self._chunk_hash: hashlib._Hash | None = None
        self._total = 0
        self._trailer_bytes = 0
        self._trailer_lines: list[bytes] = []
        self._trailers: dict[str, str] = {}
        self._trailer_signature: str | None = None

    # -- public ----------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Consume the next bytes of the body; return the payload bytes they complete."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except SigV4Error as e:
            self._fail(e)
            raise

    def finish(self) -> dict[str, str]:
        """Declare the body complete; return its trailers (names lowercased)."""
        if self._error is not None:
            raise self._error
        try:
            if self._state != _DONE:
                raise _framing("body ended inside the aws-chunked framing")
            if self._decoded_length is not None and self._total != self._decoded_length:
                raise SigV4Error("IncompleteBody", _MSG_LENGTH)
            if self._expected_trailers is not None and (
                self._expected_trailers != frozenset(self._trailers)
            ):
                raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
        except SigV4Error as e:
            self._fail(e)
            raise
        return dict(self._trailers)

    @property
    def decoded_bytes(self) -> int:
        """Payload bytes returned so far."""
        return self._total

    # -- machinery -------------------------------------------------------------------

    def _fail(self, error: SigV4Error) -> None:
        self._error = error
        self._state = _FAILED
        self._line.clear()

    def _feed(self, data: bytes) -> bytes:
        if not isinstance(data, bytes):
            data = bytes(data)
        view = memoryview(data)
        end = len(data)
        pos = 0
        out: list[memoryview] = []
        while pos < end:
            state = self._state
            if state == _DATA:
                n = min(self._remaining, end - pos)
                piece = view[pos : pos + n]
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                out.append(piece)
                pos += n
                self._total += n
                self._remaining -= n
                if self._remaining == 0:
                    if self._signed:
                        assert self._chunk_hash is not None
                        self._verify_chunk(self._chunk_hash.hexdigest())
                    self._state = _DATA_CRLF
                    self._crlf_seen = 0
            elif state in (_SIZE_LINE, _TRAILER):
                line_end, pos = self._take_line(data, pos, end)
                if line_end:
                    line = bytes(self._line)
                    self._line.clear()
                    if state == _SIZE_LINE:
                        self._chunk_header(line)
                    else:
                        self._trailer_line(line)
            elif state == _DATA_CRLF:
                while pos < end and self._crlf_seen < 2:
                    if data[pos] != b"\r\n"[self._crlf_seen]:
                        raise _framing("chunk data not followed by CRLF")
                    self._crlf_seen += 1
                    pos += 1
                if self._crlf_seen == 2:
                    self._state = _SIZE_LINE
            else:  # _DONE
                raise _framing("data after the final chunk")
        if not out:
            return b""
        if len(out) == 1 and len(out[0]) == end:
            return data
        return b"".join(out)

    def _take_line(self, data: bytes, pos: int, end: int) -> tuple[bool, int]:
        """Append bytes up to and including LF to the line buffer, within MAX_LINE."""
        room = MAX_LINE - len(self._line)
        limit = min(end, pos + room)
        nl = data.find(b"\n", pos, limit)
        if nl == -1:
            if limit < end or len(self._line) + (limit - pos) >= MAX_LINE:
                raise _framing("line too long")
            self._line += data[pos:limit]
            return False, limit
        self._line += data[pos : nl + 1]
        return True, nl + 1

    def _chunk_header(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise _framing("chunk header not terminated by CRLF")
        size_part, sep, ext = line[:-2].partition(b";")
        if not _HEX_SIZE.fullmatch(size_part):
            raise _framing("bad chunk size")
        size = int(size_part, 16)
        if size > MAX_CHUNK_SIZE:
            raise _framing("chunk too large")
        if self._decoded_length is not None and self._total + size > self._decoded_length:
            raise SigV4Error("IncompleteBody", _MSG_LENGTH)
        if self._signed:
            if not sep or not ext.startswith(_SIGNATURE_EXT):
                raise _framing("chunk signature missing")
            signature = ext[len(_SIGNATURE_EXT) :]
            if not _HEX64.fullmatch(signature):
                raise _framing("chunk signature malformed")
            self._chunk_signature = signature.decode("ascii").lower()
        # Unsigned chunks may carry extensions; nothing in them is trusted.
        if size == 0:
            if self._signed:
                self._verify_chunk(EMPTY_SHA256)
            self._state = _TRAILER
            return
        self._remaining = size
        self._chunk_hash = hashlib.sha256() if self._signed else None
        self._state = _DATA

    def _verify_chunk(self, data_hash: str) -> None:
        string_to_sign = (
            f"{self._chunk_prefix}{self._previous}\n{EMPTY_SHA256}\n{data_hash}"
        ).encode()
        expected = hmac.digest(self._key, string_to_sign, "sha256").hex()
        if not hmac.compare_digest(expected.encode(), self._chunk_signature.encode()):
            raise SigV4Error("SignatureDoesNotMatch", _MSG_SIGNATURE)
        self._previous = expected
        self._chunk_hash = None

    def _trailer_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise _framing("trailer line not terminated by CRLF")
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
        content = line[:-2]
        if not content:
            self._end_of_trailers()
            return
        if not self._trailers_allowed:
            raise _framing("final chunk not followed by CRLF")
        if self._trailer_signature is not None:
            # Nothing may follow the signature: it would not be covered by it.
            raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
        raw_name, sep, raw_value = content.partition(b":")
        name = raw_name.strip().lower().decode("ascii", "replace")
        if not sep or not name or not name.isascii():
            raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
        value = raw_value.strip().decode("utf-8", "replace")
        if name == _TRAILER_SIGNATURE:
            if not self._signed_trailer or not _HEX64.fullmatch(raw_value.strip()):
                raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
            self._trailer_signature = value.lower()
            return
        if name in self._trailers:
            raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
        self._trailers[name] = value
        self._trailer_lines.append(content)

    def _end_of_trailers(self) -> None:
        if self._signed_trailer:
            if self._trailer_signature is None:
                raise SigV4Error("MalformedTrailerError", _MSG_TRAILER)
            self._verify_trailer(self._trailer_signature)
        self._state = _DONE

    def _verify_trailer(self, provided: str) -> None:
        # AWS hashes "name:value\n" per trailer. Accept the lines as sent, or in
        # the normalised form (lowercase names, trimmed values, sorted) that
        # some SDKs compute when they send several.
        as_sent = b"".join(line + b"\n" for line in self._trailer_lines)
        normalised = "".join(f"{n}:{v}\n" for n, v in sorted(self._trailers.items())).encode()
        ok = False
        for candidate in dict.fromkeys((as_sent, normalised)):
            string_to_sign = (
                f"{self._trailer_prefix}{self._previous}\n{hashlib.sha256(candidate).hexdigest()}"
            ).encode()
            expected = hmac.digest(self._key, string_to_sign, "sha256").hex()
            ok |= hmac.compare_digest(expected.encode(), provided.encode())
        if not ok:
            raise SigV4Error("SignatureDoesNotMatch", _MSG_SIGNATURE)
