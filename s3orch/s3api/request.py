"""The HTTP request and site: bodies capped while they arrive, and our own access log."""

from __future__ import annotations

import tempfile
from typing import IO, Any

from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

# Bodies up to this size stay in memory; larger ones are spooled to disk.
MEMORY_SPOOL_LIMIT = 256 * 1024


class _Discard:
    """A content sink for bodies we already know we will refuse."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class S3Request(Request):
    """A request whose body is spooled to a file and capped at ``max_body`` bytes.

    A body over the cap is not stored anywhere: the route sees
    ``body_too_large`` and answers EntityTooLarge.
    """

    max_body: int = 5 * 1024**3
    body_too_large: bool = False
    _received: int = 0

    def gotLength(self, length: int | None) -> None:
        self._received = 0
        if length is not None and length > self.max_body:
            self.body_too_large = True
            self.content = _Discard()
            return
        if length is not None and length <= MEMORY_SPOOL_LIMIT:
            super().gotLength(length)
            return
        self.content = tempfile.TemporaryFile(prefix="s3orch-body-")  # noqa: SIM115 - lives with the request

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        content = content_file(self)
        if not self.body_too_large and self._received > self.max_body:
            self.body_too_large = True
            content.close()
            self.content = content = _Discard()  # type: ignore[assignment]
        content.write(data)


class S3Site(Site):
    """A Site that builds S3Requests and leaves access logging to the S3 resource."""

    def __init__(self, resource: IResource, max_body: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.noisy = False

        class CappedRequest(S3Request):
            pass

        CappedRequest.max_body = max_body
        self.requestFactory = CappedRequest

    def log(self, request: http.Request) -> None:
        """Each request is logged once, with its request id, by the resource."""


def content_file(request: http.Request) -> IO[bytes]:
    """The spooled body, typed (Twisted declares it optional until the body starts)."""
    assert request.content is not None
    content: IO[bytes] = request.content
    return content


def set_metadata_header(request: Request, name: str, value: str) -> None:
    """Set ``x-amz-meta-<name>`` with the name in lowercase, as AWS sends it.

    Twisted title-cases header names on output, but clients take user
    metadata names from the header name verbatim, so the stored lowercase
    name must reach the wire unchanged.
    """
    header = b"x-amz-meta-" + name.encode("latin-1")
    request.setHeader(header, value.encode("latin-1", "replace"))  # validates name and value
    raw = request.responseHeaders._rawHeaders  # no public way to keep a name's case
    for stored in [k for k in raw if k.lower() == header]:
        raw[header] = raw.pop(stored)
