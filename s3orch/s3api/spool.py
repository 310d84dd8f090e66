"""A request body on disk that can be read back while it is still arriving.

Twisted hands a request to its resource only once the whole body is in.
Spooling into a file that a reader can follow lets a large PUT start sending
to its backend while the client is still uploading, with the disk (not
memory, not a paused client) absorbing any difference in speed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from s3orch.s3api.checksums import Checksum

# Bodies up to this size stay in memory; larger ones go to a temporary file.
MEMORY_LIMIT = 256 * 1024
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
HASH_BLOCK = 1024 * 1024
InThread = Callable[..., Deferred[Any]]


class BodyDigests:
    """MD5 and (when the client declared one) SHA-256 of a plain body, taken as it arrives.

    Hashing while the client is still sending costs nothing a PUT would not
    spend anyway. aws-chunked bodies are hashed by their decoder instead,
    since their raw bytes are not the payload.
    """

    def __init__(self, declared_sha256: str | None, checksum: Checksum | None = None) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256() if declared_sha256 else None
        self.checksum = checksum

    @classmethod
    def for_header(cls, content_sha256: str, checksum: str | None = None) -> BodyDigests | None:
        """Digests for a body sent with this x-amz-content-sha256 value (None: aws-chunked).

        ``checksum`` names an additional algorithm the client asked for.
        """
        if content_sha256.startswith("STREAMING-"):
            return None
        declared = content_sha256.lower()
        return cls(
            declared if _HEX_SHA256.fullmatch(declared) else None,
            Checksum(checksum) if checksum else None,
        )

    def update(self, data: bytes) -> None:
        self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self.checksum is not None:
            self.checksum.update(data)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    @property
    def sha256_hex(self) -> str | None:
        return self._sha256.hexdigest() if self._sha256 is not None else None


def _hash_file(fd: int, digests: BodyDigests, start: int, end: int) -> int:
    """Hash bytes start..end of a spool file (runs in a thread); returns where it stopped."""
    offset = start
    while offset < end:
        block = os.pread(fd, min(HASH_BLOCK, end - offset), offset)
        if not block:
            raise OSError("spool file shorter than written")
        digests.update(block)
        offset += len(block)
    return offset


class BodyLost(Exception):
    """The client went away before its whole body arrived."""


class Spool:
    """The body written so far, readable at any offset, waiting for what is missing.

    With a ``hasher`` (a function running a call in a thread pool), large
    bodies are hashed in a thread that reads them back from the file at its
    own pace (hashlib releases the GIL), so the reactor keeps moving bytes
    and nothing waiting to be hashed is held in memory.
    """

    def __init__(
        self,
        length: int | None,
        content_sha256: str,
        hasher: InThread | None = None,
        checksum: str | None = None,
    ) -> None:
        self.file: IO[bytes]
        if length is not None and length <= MEMORY_LIMIT:
            self._memory: io.BytesIO | None = io.BytesIO()
            self.file = self._memory
        else:
            self._memory = None
            # Unbuffered, so every byte written is visible to pread at once.
            self.file = tempfile.TemporaryFile(prefix="s3orch-body-", buffering=0)  # noqa: SIM115
        self.digests = BodyDigests.for_header(content_sha256, checksum)
        self._hasher = hasher if self._memory is None else None
        self._hashing: Deferred[int] | None = None
        self._hashed_to = 0
        self._hash_error: BaseException | None = None
        self._all_hashed: list[Deferred[None]] = []
        self.written = 0
        self.complete = False
        self._error: BaseException | None = None
        self._waiting: list[Deferred[None]] = []

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.written += len(data)
        if self.digests is not None:
            if self._hasher is None:
                self.digests.update(data)
            elif self._hashing is None:
                self._hash_more()
        self._wake()

    def _hash_more(self) -> None:
        assert self._hasher is not None and self.digests is not None
        self._hashing = self._hasher(
            _hash_file, self.file.fileno(), self.digests, self._hashed_to, self.written
        )
        self._hashing.addCallbacks(self._hashed, self._hash_failed)

    def _hashed(self, offset: int) -> None:
        self._hashed_to = offset
        self._hashing = None
        if self._hash_error is None and offset < self.written:
            self._hash_more()
        elif self.complete:
            self._release_hash_waiters()

    def _hash_failed(self, failure: Failure) -> None:
        self._hashing = None
        self._hash_error = failure.value
        self._release_hash_waiters()

    def _release_hash_waiters(self) -> None:
        waiting, self._all_hashed = self._all_hashed, []
        for d in waiting:
            d.callback(None)

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.complete:
            self._error = error
            self._wake()

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; waits for them; b"" only at the complete end."""
        while offset >= self.written and not self.complete:
            if self._error is not None:
                raise BodyLost("the client went away before sending its whole body")
            waiting: Deferred[None] = Deferred()
            self._waiting.append(waiting)
            await waiting
        size = min(size, self.written - offset)
        if size <= 0:
            return b""
        if self._memory is not None:
            return self._memory.getbuffer()[offset : offset + size].tobytes()
        return os.pread(self.file.fileno(), size, offset)

    async def digested(self) -> BodyDigests | None:
        """The body's digests, once the whole body is in and hashed."""
        assert self.complete, "digests of an incomplete body"
        if self._hasher is not None and self.digests is not None:
            if self._hashing is not None or self._hashed_to < self.written:
                waiting: Deferred[None] = Deferred()
                self._all_hashed.append(waiting)
                if self._hashing is None:
                    self._hash_more()
                await waiting
            if self._hash_error is not None:
                raise BodyLost(f"the body could not be hashed: {self._hash_error}")
        return self.digests

    def close(self) -> None:
        self.file.close()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
