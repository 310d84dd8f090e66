"""The HTTP request and site: bodies capped while they arrive, and our own access log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from s3orch.httputil import enlarge_reads
from s3orch.s3api import checksums
from s3orch.s3api.errors import S3Error
from s3orch.s3api.spool import BodyLost, InThread, Spool

# PUT bodies larger than this start their upload before the whole body is in.
EARLY_UPLOAD_MIN = 1024 * 1024


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
    """A request whose body is spooled as it arrives and capped at ``max_body`` bytes.

    A body over the cap is not stored anywhere: the route sees
    ``body_too_large`` and answers EntityTooLarge. A large PUT may be handed
    to ``start_upload`` as soon as its headers are in, so the upload to the
    backend runs while the client is still sending.
    """

    max_body: int = 5 * 1024**3
    start_upload: Callable[[S3Request, bytes, bytes], Deferred[Any] | None] | None = None
    hasher: InThread | None = None
    body_too_large: bool = False
    spool: Spool | None = None
    early_upload: Deferred[Any] | None = None
    _received: int = 0

    def gotLength(self, length: int | None) -> None:
        self._received = 0
        if length is not None and length > self.max_body:
            self.body_too_large = True
            self.content = _Discard()
            return
        declared = (self.requestHeaders.getRawHeaders(b"x-amz-content-sha256") or [b""])[0]
        self.spool = Spool(length, declared.decode("latin-1"), self.hasher, self._checksum())
        self.content = self.spool.file
        if length is None or length <= EARLY_UPLOAD_MIN:
            return
        enlarge_reads(self.channel.transport if self.channel else None)
        # Twisted keeps the request line on the channel until the body is in.
        method = getattr(self.channel, "_command", None)
        uri = getattr(self.channel, "_path", None)
        if method == b"PUT" and uri is not None and self.start_upload is not None:
            self.early_upload = self.start_upload(self, method, uri)

    def _checksum(self) -> str | None:
        """The additional checksum algorithm the headers name, if a known one."""
        headers = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in self.requestHeaders.getAllRawHeaders()
        }
        try:
            wanted = checksums.requested(headers)
        except S3Error:
            return None  # refused when the request is processed
        return wanted.algorithm if wanted is not None else None

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self.spool is None:
            return
        if self._received > self.max_body:
            self.body_too_large = True
            self.spool.fail(BodyLost("body over the size limit"))
            self.spool.close()
            self.spool = None
            self.content = _Discard()
            return
        self.spool.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.spool is not None:
            self.spool.finish()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self.spool is not None:
            self.spool.fail(BodyLost(str(reason.value)))
        super().connectionLost(reason)


class S3Site(Site):
    """A Site that builds S3Requests and leaves access logging to the S3 resource."""

    def __init__(
        self,
        resource: IResource,
        max_body: int,
        start_upload: Callable[[S3Request, bytes, bytes], Deferred[Any] | None] | None = None,
        hasher: InThread | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.noisy = False

        class SiteRequest(S3Request):
            pass

        SiteRequest.max_body = max_body
        SiteRequest.start_upload = staticmethod(start_upload) if start_upload else None
        SiteRequest.hasher = staticmethod(hasher) if hasher else None
        self.requestFactory = SiteRequest

    def log(self, request: http.Request) -> None:
        """Each request is logged once, with its request id, by the resource."""


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
