"""The additional checksums current SDKs send: CRC32, CRC32C, SHA-1 and SHA-256.

A client names one algorithm (``x-amz-checksum-<alg>`` with the value, or
``x-amz-sdk-checksum-algorithm``, or ``x-amz-trailer`` when the value comes
after an aws-chunked body). s3orch computes it over the payload, refuses the
body if the client's value differs, stores it, and returns it on GET and HEAD
when asked with ``x-amz-checksum-mode: ENABLED``.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Mapping

import crc32c
from attrs import frozen

from s3orch.s3api.errors import S3Error

HEADER_PREFIX = "x-amz-checksum-"
ALGORITHMS = ("crc32", "crc32c", "sha1", "sha256")


class Checksum:
    """One algorithm's running checksum."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._crc = 0
        self._hash = hashlib.new(algorithm) if algorithm in ("sha1", "sha256") else None

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._crc = crc32c.crc32c(data, self._crc)

    def b64(self) -> str:
        raw = self._hash.digest() if self._hash is not None else self._crc.to_bytes(4, "big")
        return base64.b64encode(raw).decode("ascii")


@frozen
class Requested:
    """The checksum a request asks for; ``expected`` is None when it arrives in a trailer."""

    algorithm: str
    expected: str | None

    @property
    def header(self) -> str:
        return HEADER_PREFIX + self.algorithm

    def verify(self, computed: str, trailers: Mapping[str, str]) -> None:
        expected = self.expected if self.expected is not None else trailers.get(self.header)
        if expected is not None and expected.strip() != computed:
            name = self.algorithm.upper()
            raise S3Error(
                "BadDigest", f"The {name} you specified did not match the calculated checksum."
            )


def requested(headers: Mapping[str, str]) -> Requested | None:
    """The checksum named by a request's headers, or None; unknown algorithms are refused."""
    for algorithm in ALGORITHMS:
        value = headers.get(HEADER_PREFIX + algorithm)
        if value is not None:
            return Requested(algorithm, value)
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if trailer.startswith(HEADER_PREFIX):
        return Requested(_known(trailer[len(HEADER_PREFIX) :]), None)
    named = headers.get("x-amz-sdk-checksum-algorithm")
    if named is not None:
        return Requested(_known(named.strip().lower()), None)
    return None


def _known(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise S3Error(
            "InvalidRequest", f"The checksum algorithm {algorithm!r} is not supported by s3orch."
        )
    return algorithm


def stored_checksum(headers: Mapping[str, str]) -> dict[str, str]:
    """The checksum header kept with an object, if any."""
    return {k: v for k, v in headers.items() if k.startswith(HEADER_PREFIX)}
