"""An aws-chunked body encoder written from the AWS documentation, for tests and tools."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from attrs import frozen

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@frozen
class ChunkSigning:
    """What signs each chunk: the request's signing key, timestamp, scope and seed signature."""

    key: bytes
    timestamp: str
    scope: str
    seed: str

    def sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()


def encode_aws_chunked(
    payload: bytes,
    chunk_size: int,
    signing: ChunkSigning | None = None,
    trailers: Sequence[tuple[str, str]] = (),
    sign_trailers: bool = False,
) -> bytes:
    """Frame ``payload`` as aws-chunked: signed chunks when ``signing`` is given, else unsigned."""
    previous = signing.seed if signing else ""
    out = bytearray()
    pieces = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)]
    for data in [*pieces, b""]:
        out += b"%x" % len(data)
        if signing is not None:
            previous = signing.sign(
                f"AWS4-HMAC-SHA256-PAYLOAD\n{signing.timestamp}\n{signing.scope}\n{previous}\n"
                f"{EMPTY_SHA256}\n{hashlib.sha256(data).hexdigest()}"
            )
            out += b";chunk-signature=" + previous.encode()
        out += b"\r\n"
        if data:
            out += data + b"\r\n"
    for name, value in trailers:
        out += f"{name}:{value}\r\n".encode()
    if sign_trailers:
        assert signing is not None
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers).encode()
        signature = signing.sign(
            f"AWS4-HMAC-SHA256-TRAILER\n{signing.timestamp}\n{signing.scope}\n{previous}\n"
            f"{hashlib.sha256(canonical).hexdigest()}"
        )
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    out += b"\r\n"
    return bytes(out)
