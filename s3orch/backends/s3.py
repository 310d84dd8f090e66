"""A backend on any S3-compatible server, spoken to over treq with SigV4.

Bodies stream both ways. A PUT is signed ``UNSIGNED-PAYLOAD`` and sent with
Content-Length from an ``IBodyProducer`` that pulls the source as the socket
drains; a GET is requested ``unbuffered`` and its body is pushed into a
``PushStream`` that pauses the connection while the reader lags.

Timeouts reset on progress instead of bounding a whole transfer, so a large
object on a slow but live connection is never cut off, while a stalled one is:

- ``connect_timeout``: connecting and, for bodiless requests, the response
  headers;
- ``idle_timeout``: no progress while we wait on the server, i.e. the socket
  will not take more of the request body, or no response bytes arrive while
  the reader wants some (time the reader itself spends, or the source of a
  PUT spends, does not count);
- ``response_timeout``: the response headers after the last body byte.

A timeout cancels the request (closing its connection) and raises
``BackendError``. All timers run on the injected clock.

Multipart uploads map onto the server's own: CreateMultipartUpload,
UploadPart (streamed like a PUT), CompleteMultipartUpload (the server
assembles the object; no byte passes through us again) and
AbortMultipartUpload. A Complete can fail after a ``200 OK``: the server
sends the status at once, keeps the connection alive with whitespace while
it assembles, and may then send an ``<Error>`` document instead of the
result, so only a ``CompleteMultipartUploadResult`` counts as success.

With ``checksum`` on, every body goes out with a trailing CRC32 that the server checks
(``trailer.py``), and multipart uploads are created with ``x-amz-checksum-algorithm: CRC32``.
Such an upload's handle is ``crc32:<UploadId>`` (no S3 upload id has a colon) and its parts'
receipts are ``<ETag> <CRC32>``, so that Complete can list each part's checksum as S3 then
requires, whatever the setting is by the time the upload goes on.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, cast
from urllib.parse import unquote_plus, urlsplit
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

import defusedxml.ElementTree as SafeET
from attrs import define, field
from defusedxml import DefusedXmlException
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestGenerationFailed,
    ResponseDone,
)
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from s3orch.backends.interface import (
    BackendError,
    BackendNotFound,
    BackendObject,
    BackendRead,
    BackendUploadNotFound,
    IBackend,
    check_part_list,
    check_part_number,
)
from s3orch.backends.trailer import HEADERS as TRAILER_HEADERS
from s3orch.backends.trailer import TRAILER, Crc32Body
from s3orch.httputil import describe_failure, enlarge_reads
from s3orch.sigv4 import (
    EMPTY_SHA256,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    sign_request,
    uri_encode,
)
from s3orch.streams import (
    DEFAULT_HIGH_WATER,
    LengthMismatch,
    PushStream,
    body_producer,
    close_source,
)

log = Logger()

CONNECT_TIMEOUT: Final = 30.0
IDLE_TIMEOUT: Final = 60.0
RESPONSE_TIMEOUT: Final = 30.0
MAX_PERSISTENT_PER_HOST: Final = 16
POOLED_CONNECTION_IDLE: Final = 30  # below the keep-alive limits servers commonly apply
ERROR_BODY_LIMIT: Final = 64 * 1024
LIST_BODY_LIMIT: Final = 16 * 1024 * 1024  # 1000 keys of 1 KiB, url-encoded, with room
LIST_PAGE_SIZE: Final = 1000
# Room for the whitespace a server sends to keep a long Complete alive.
COMPLETE_BODY_LIMIT: Final = 1024 * 1024
S3_XMLNS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
# AWS answers CompleteMultipartUploadResult; moto (5.x) says ...Response.
_COMPLETED: Final = frozenset({"CompleteMultipartUploadResult", "CompleteMultipartUploadResponse"})
_CRC32_HANDLE: Final = "crc32:"


class S3ResponseError(BackendError):
    """The server answered with an unexpected status; ``code`` is its S3 error code, if any."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class S3UploadNotFound(S3ResponseError, BackendUploadNotFound):
    """NoSuchUpload: the server knows no multipart upload by that id for that key."""


def make_connection_pool(
    reactor: Any,
    max_persistent_per_host: int = MAX_PERSISTENT_PER_HOST,
    idle_seconds: int = POOLED_CONNECTION_IDLE,
) -> HTTPConnectionPool:
    """A pool of keep-alive connections; close it with ``closeCachedConnections()`` at shutdown."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_persistent_per_host
    pool.cachedConnectionTimeout = idle_seconds
    pool.retryAutomatically = True  # only idempotent, bodiless requests are retried
    return pool


def make_http_client(
    reactor: Any,
    pool: HTTPConnectionPool | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> HTTPClient:
    """The treq client S3 backends share: one Agent over a persistent connection pool."""
    if pool is None:
        pool = make_connection_pool(reactor)
    endpoints = _LargeReadEndpoints(reactor, connect_timeout)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return HTTPClient(agent)


@implementer(IAgentEndpointFactory)
class _LargeReadEndpoints:
    """Agent endpoints whose connections read large blocks (see ``enlarge_reads``)."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("idna")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, uri.port, timeout=self._timeout
        )
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return _LargeReads(endpoint)


@implementer(IStreamClientEndpoint)
class _LargeReads:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def enlarge(protocol: IProtocol) -> IProtocol:
            enlarge_reads(getattr(protocol, "transport", None))
            return protocol

        return self._endpoint.connect(factory).addCallback(enlarge)


class _Watchdog:
    """One restartable timer per request; ``on_timeout`` aborts the current phase."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None
        self._doing = ""
        self._closed = False
        self.on_timeout: Callable[[], object] = lambda: None
        self.expired: str | None = None

    def arm(self, seconds: float, doing: str) -> None:
        if self.expired is not None or self._closed:
            return
        self._doing = doing
        if self._call is not None and self._call.active():
            self._call.reset(seconds)
        else:
            self._call = self._clock.callLater(seconds, self._fire, seconds)

    def disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def close(self) -> None:
        """The request is over: no timer may start again."""
        self._closed = True
        self.disarm()

    def _fire(self, seconds: float) -> None:
        self._call = None
        self.expired = f"no progress for {seconds:g} s while {self._doing}"
        self.on_timeout()


@implementer(IBodyProducer)
class _WatchedBody:
    """Runs the watchdog only while the socket holds the body back."""

    def __init__(self, inner: IBodyProducer, watchdog: _Watchdog, idle: float, response: float):
        self.length = inner.length
        self._inner = inner
        self._watchdog = watchdog
        self._idle = idle
        self._response = response

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._watchdog.disarm()  # connected; the source sets the pace now

        def sent(result: None) -> None:
            self._watchdog.arm(self._response, "waiting for the response")
            return result

        d: Deferred[None] = self._inner.startProducing(consumer)
        return d.addCallback(sent)

    def pauseProducing(self) -> None:
        self._watchdog.arm(self._idle, "sending the body")
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._watchdog.disarm()
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._inner.stopProducing()


@implementer(IPushProducer)
class _WatchedTransport:
    """The response transport as the PushStream sees it: no idle timer while paused."""

    def __init__(self, transport: IPushProducer, watchdog: _Watchdog, idle: float) -> None:
        self._transport = transport
        self._watchdog = watchdog
        self._idle = idle

    def pauseProducing(self) -> None:
        self._watchdog.disarm()
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._watchdog.arm(self._idle, "receiving the body")
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._watchdog.close()
        self._transport.stopProducing()


class _StreamReceiver(Protocol):
    """Pushes an object body into a PushStream, checking its length."""

    def __init__(
        self, name: str, stream: PushStream, expected: int, watchdog: _Watchdog, idle: float
    ) -> None:
        self._name = name
        self._stream = stream
        self._expected = expected
        self._received = 0
        self._watchdog = watchdog
        self._idle = idle
        self._failed = False

    def connectionMade(self) -> None:
        self._watchdog.on_timeout = self._timed_out
        self._stream.attach(_WatchedTransport(_producer(self), self._watchdog, self._idle))
        if not self._stream.paused:
            self._watchdog.arm(self._idle, "receiving the body")

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        self._received += len(data)
        if self._received > self._expected:
            self._abort(BackendError(f"{self._name}: body longer than {self._expected} bytes"))
            return
        if not self._stream.paused:
            self._watchdog.arm(self._idle, "receiving the body")
        self._stream.feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._watchdog.close()
        if self._failed:
            return
        if isinstance(reason.value, ResponseDone) and self._received == self._expected:
            self._stream.finish()
        else:
            self._stream.fail(
                BackendError(
                    f"{self._name}: body ended after {self._received} of {self._expected} "
                    f"bytes: {reason.getErrorMessage()}"
                )
            )

    def _timed_out(self) -> None:
        self._abort(BackendError(f"{self._name}: timed out: {self._watchdog.expired}"))

    def _abort(self, error: BackendError) -> None:
        self._failed = True
        self._watchdog.close()
        self._stream.fail(error)
        _producer(self).stopProducing()


class _BodyCollector(Protocol):
    """Reads a small response body whole, up to ``limit`` bytes."""

    def __init__(self, limit: int, truncate: bool, watchdog: _Watchdog, idle: float) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._limit = limit
        self._truncate = truncate
        self._parts: builtins.list[bytes] = []
        self._size = 0
        self._watchdog = watchdog
        self._idle = idle

    def connectionMade(self) -> None:
        self._watchdog.on_timeout = self._timed_out
        self._watchdog.arm(self._idle, "reading the response")

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._watchdog.arm(self._idle, "reading the response")
        room = self._limit - self._size
        if len(data) > room:
            self._parts.append(data[:room])
            self._size = self._limit
            self._stop()
            if self._truncate:
                self.done.callback(b"".join(self._parts))
            else:
                self.done.errback(BackendError(f"response body over {self._limit} bytes"))
            return
        self._parts.append(data)
        self._size += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._watchdog.disarm()
        if self.done.called:
            return
        if isinstance(reason.value, ResponseDone) or self._truncate:
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(BackendError(f"response body lost: {reason.getErrorMessage()}"))

    def _timed_out(self) -> None:
        self._stop()
        if not self.done.called:
            self.done.errback(BackendError(f"timed out: {self._watchdog.expired}"))

    def _stop(self) -> None:
        self._watchdog.disarm()
        _producer(self).stopProducing()


class _Hangup(Protocol):
    """Closes a response's connection instead of reading a body nobody wants."""

    def connectionMade(self) -> None:
        _producer(self).stopProducing()


def _producer(protocol: Protocol) -> IPushProducer:
    # A response body's transport is a TransportProxyProducer: an IPushProducer.
    return cast(IPushProducer, protocol.transport)


def _local_name(element: Element) -> str:
    return element.tag.rpartition("}")[2]


def _child_text(element: Element, name: str) -> str | None:
    for child in element:
        if _local_name(child) == name:
            return child.text or ""
    return None


def _parse_xml(body: bytes) -> Element | None:
    try:
        root: Element = SafeET.fromstring(body)
    except (ParseError, ValueError, DefusedXmlException):
        return None
    return root


def _parse_error(body: bytes) -> tuple[str | None, str | None]:
    """(Code, Message) of an S3 error document, when there is one."""
    root = _parse_xml(body) if body else None
    if root is None:
        return None, None
    return _child_text(root, "Code"), _child_text(root, "Message")


def _parse_list_page(body: bytes) -> tuple[builtins.list[BackendObject], str | None]:
    """The objects of one ListObjectsV2 page, and the token for the next (None at the end)."""
    root = _parse_xml(body)
    if root is None or _local_name(root) != "ListBucketResult":
        raise BackendError("malformed ListObjectsV2 response")
    url_encoded = (_child_text(root, "EncodingType") or "").lower() == "url"
    objects = []
    for entry in root:
        if _local_name(entry) != "Contents":
            continue
        key = _child_text(entry, "Key")
        size = _child_text(entry, "Size")
        if key is None or size is None or not size.isdigit():
            raise BackendError("malformed ListObjectsV2 entry")
        if url_encoded:
            key = unquote_plus(key)
        etag = _child_text(entry, "ETag")
        objects.append(BackendObject(key=key, size=int(size), etag=_unquote_etag(etag)))
    truncated = (_child_text(root, "IsTruncated") or "").lower() == "true"
    token = _child_text(root, "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise BackendError("truncated ListObjectsV2 response without a continuation token")
    return objects, token


def _complete_document(parts: Sequence[tuple[int, str]], crc32: bool) -> bytes:
    """The CompleteMultipartUpload request body (ETags quoted, as AWS documents them), with
    each part's CRC32 from its receipt for an upload created with CRC32 checksums."""
    root = Element("CompleteMultipartUpload", xmlns=S3_XMLNS)
    for number, receipt in parts:
        etag, _, checksum = receipt.strip().partition(" ")
        if crc32 and not checksum:
            raise BackendError(f"part {number} was stored without the CRC32 its upload requires")
        part = SubElement(root, "Part")
        SubElement(part, "PartNumber").text = str(number)
        SubElement(part, "ETag").text = f'"{etag.strip(chr(34))}"'
        if crc32:
            SubElement(part, "ChecksumCRC32").text = checksum
    document: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return document


async def _just(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip().strip('"') or None


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """(first, last, total) from ``bytes first-last/total``."""
    if value is None:
        return None
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    return int(first), int(last), int(total)


def _host_header(scheme: str, hostname: str, port: int | None) -> str:
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return host


@implementer(IBackend)
@define
class S3Backend:
    """One bucket on an S3-compatible server.

    ``force_path_style`` addresses ``endpoint/bucket/key``; otherwise
    ``bucket.endpoint-host/key`` (virtual-hosted). Any path in ``endpoint`` is
    kept as a prefix.
    """

    name: str
    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    force_path_style: bool
    http_client: HTTPClient
    clock: IReactorTime
    connect_timeout: float = field(default=CONNECT_TIMEOUT, kw_only=True)
    idle_timeout: float = field(default=IDLE_TIMEOUT, kw_only=True)
    response_timeout: float = field(default=RESPONSE_TIMEOUT, kw_only=True)
    high_water: int = field(default=DEFAULT_HIGH_WATER, kw_only=True)
    list_page_size: int = field(default=LIST_PAGE_SIZE, kw_only=True)
    checksum: bool = field(default=False, kw_only=True)
    """Send every body with a trailing CRC32 (trailer.py)."""
    _scheme: str = field(init=False, default="")
    _host: str = field(init=False, default="")
    _base_path: str = field(init=False, default="")

    def __attrs_post_init__(self) -> None:
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("endpoint must be an http:// or https:// URL")
        self._scheme = url.scheme
        self._host = _host_header(url.scheme, url.hostname, url.port)
        self._base_path = url.path.rstrip("/")

    def url_for(self, key: str | None, query: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
        """(URL, Host header) for ``key`` (None: the bucket itself), encoded as SigV4 expects."""
        if key is None:
            object_path = ""
        else:
            try:
                raw = key.encode("utf-8")
            except UnicodeEncodeError as e:
                raise BackendError(f"{self.name}: key is not valid UTF-8") from e
            object_path = "/" + uri_encode(raw, encode_slash=False)
        if self.force_path_style:
            host = self._host
            path = f"{self._base_path}/{uri_encode(self.bucket)}{object_path}"
        else:
            host = f"{self.bucket}.{self._host}"
            path = f"{self._base_path}{object_path or '/'}"
        url = f"{self._scheme}://{host}{path}"
        if query:
            url += "?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query))
        return url, host

    async def _send(
        self,
        method: str,
        key: str | None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: IBodyProducer | None = None,
        payload_hash: str | None = None,
    ) -> tuple[IResponse, _Watchdog]:
        """Send a signed request; return the response once its headers are in.

        A body is signed ``UNSIGNED-PAYLOAD`` unless ``payload_hash`` gives its SHA-256.
        """
        url, host = self.url_for(key, query)
        all_headers = {"host": host, **(headers or {})}
        if payload_hash is None:
            payload_hash = EMPTY_SHA256 if body is None else UNSIGNED_PAYLOAD
        all_headers.update(
            sign_request(
                method,
                url,
                all_headers,
                payload_hash,
                self.access_key_id,
                self.secret_access_key,
                self.region,
                self.clock.seconds(),
            )
        )
        wire_headers: dict[bytes | str, bytes | str] = {k: v for k, v in all_headers.items()}
        watchdog = _Watchdog(self.clock)
        if body is not None:
            body = _WatchedBody(body, watchdog, self.idle_timeout, self.response_timeout)
        # Armed first: a pooled connection may start the body inside request().
        watchdog.arm(self.connect_timeout, "connecting" if body else "waiting for the response")
        d = self.http_client.request(
            method,
            url,
            headers=wire_headers,
            data=body,
            allow_redirects=False,
            unbuffered=True,
        )
        watchdog.on_timeout = d.cancel
        try:
            response: IResponse = await d
        except BaseException as e:
            watchdog.close()
            translated = self._translate(method, e, watchdog)
            if translated is e:
                raise
            raise translated from e
        watchdog.disarm()
        return response, watchdog

    def _translate(self, method: str, error: BaseException, watchdog: _Watchdog) -> BaseException:
        """What a failed request raises: the body source's own error, or BackendError."""
        if watchdog.expired is not None:
            log.warn(
                "{backend}: {method} timed out: {why}",
                backend=self.name,
                method=method,
                why=watchdog.expired,
            )
            return BackendError(f"{self.name}: {method} timed out: {watchdog.expired}")
        if isinstance(error, RequestGenerationFailed) and error.reasons:
            cause: BaseException = error.reasons[0].value
            if isinstance(cause, LengthMismatch):
                return BackendError(f"{self.name}: {cause}")
            return cause  # the source's own exception, e.g. a digest mismatch
        if isinstance(error, CancelledError | BackendError):
            return error
        if isinstance(error, Exception):
            return BackendError(f"{self.name}: {method} failed: {describe_failure(error)}")
        return error

    async def _read_small_body(
        self, response: IResponse, watchdog: _Watchdog, limit: int, truncate: bool
    ) -> bytes:
        """Read a small body whole; the request is over afterwards."""
        collector = _BodyCollector(limit, truncate, watchdog, self.idle_timeout)
        response.deliverBody(collector)
        try:
            return await collector.done
        except BackendError as e:
            raise BackendError(f"{self.name}: {e}") from e
        finally:
            watchdog.close()

    async def _failure(
        self, method: str, key: str | None, response: IResponse, watchdog: _Watchdog
    ) -> BackendError:
        """The error an unexpected response stands for; reads (at most 64 KiB of) its body."""
        try:
            body = await self._read_small_body(response, watchdog, ERROR_BODY_LIMIT, True)
        except BackendError:
            body = b""
        code, message = _parse_error(body)
        if response.code == 404 and method in ("GET", "DELETE") and code in (None, "NoSuchKey"):
            return BackendNotFound(key or "")
        return self._error(method, response.code, code, message)

    def _error(
        self, method: str, status: int, code: str | None, message: str | None
    ) -> S3ResponseError:
        text = f"{self.name}: {method} answered {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message[:200]}"
        if code == "NoSuchUpload":
            return S3UploadNotFound(text, status, code)
        return S3ResponseError(text, status, code)

    async def _discard_body(self, response: IResponse, watchdog: _Watchdog) -> None:
        # Reading the (empty or tiny) body lets the connection go back to the pool.
        await self._read_small_body(response, watchdog, ERROR_BODY_LIMIT, True)

    async def _send_body(
        self,
        what: str,
        key: str,
        body: AsyncIterator[bytes],
        length: int,
        *,
        checksum: bool,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> str | None:
        """PUT exactly ``length`` bytes of ``body``, streamed; ``body`` is closed if that fails.

        Returns the response's ETag, once the server has taken the body, with the body's
        CRC32 when ``checksum`` sent one (the server checked it).
        """
        try:
            if length < 0:
                raise BackendError(f"{self.name}: negative length")
            framed = Crc32Body(body, length) if checksum else None
            if framed is None:
                producer, payload_hash = body_producer(body, length), None
            else:
                headers = {
                    **(headers or {}),
                    **TRAILER_HEADERS,
                    "x-amz-decoded-content-length": str(length),
                }
                producer = body_producer(framed.stream(), framed.wire_length)
                payload_hash = STREAMING_UNSIGNED_PAYLOAD_TRAILER
            response, watchdog = await self._send(
                "PUT", key, query=query, headers=headers, body=producer, payload_hash=payload_hash
            )
        except BaseException:
            # The request may have failed before the body was ever pulled.
            with contextlib.suppress(Exception):
                await close_source(body)
            raise
        if response.code != 200:
            raise await self._failure(what, key, response, watchdog)
        await self._discard_body(response, watchdog)
        etag = _unquote_etag(_header(response, b"etag"))
        if framed is None:
            return etag
        echoed = _header(response, TRAILER.encode("ascii"))
        if framed.checksum is None or (echoed is not None and echoed.strip() != framed.checksum):
            raise BackendError(
                f"{self.name}: {what} stored a CRC32 of {echoed}, not the {framed.checksum} sent"
            )
        return f"{etag} {framed.checksum}" if etag is not None else None

    async def put(self, key: str, body: AsyncIterator[bytes], length: int) -> None:
        await self._send_body(
            "PUT",
            key,
            body,
            length,
            checksum=self.checksum,
            headers={"content-type": "application/octet-stream"},
        )

    async def get(self, key: str, start: int = 0, end: int | None = None) -> BackendRead:
        if start < 0 or (end is not None and end < start):
            raise BackendError(f"{self.name}: invalid range {start}-{end}")
        ranged = start > 0 or end is not None
        headers = {"range": f"bytes={start}-{'' if end is None else end}"} if ranged else {}
        response, watchdog = await self._send("GET", key, headers=headers)
        if response.code == 200 and not ranged:
            if response.length == UNKNOWN_LENGTH:  # e.g. chunked, or decoded from gzip
                _abandon(response, watchdog)
                raise BackendError(f"{self.name}: GET answered without a Content-Length")
            length = total = response.length
        elif response.code == 206 and ranged:
            content_range = _parse_content_range(_header(response, b"content-range"))
            if content_range is None or content_range[0] != start:
                _abandon(response, watchdog)
                raise BackendError(f"{self.name}: GET answered a bad Content-Range")
            first, last, total = content_range
            length = last - first + 1
        elif response.code in (200, 206):
            _abandon(response, watchdog)
            raise BackendError(f"{self.name}: GET answered {response.code} to a range of {key!r}")
        else:
            raise await self._failure("GET", key, response, watchdog)
        stream = PushStream(self.high_water)
        receiver = _StreamReceiver(self.name, stream, length, watchdog, self.idle_timeout)
        response.deliverBody(receiver)
        return BackendRead(start=start, length=length, total_size=total, body=stream)

    async def head(self, key: str) -> BackendObject | None:
        response, watchdog = await self._send("HEAD", key)
        if response.code == 404:
            await self._discard_body(response, watchdog)
            return None
        if response.code != 200:
            raise await self._failure("HEAD", key, response, watchdog)
        await self._discard_body(response, watchdog)
        size = _header(response, b"content-length")
        if size is None or not size.isdigit():
            raise BackendError(f"{self.name}: HEAD answered without a Content-Length")
        etag = _unquote_etag(_header(response, b"etag"))
        return BackendObject(key=key, size=int(size), etag=etag)

    async def delete(self, key: str) -> None:
        response, watchdog = await self._send("DELETE", key)
        if response.code in (200, 204):
            await self._discard_body(response, watchdog)
            return
        error = await self._failure("DELETE", key, response, watchdog)
        if isinstance(error, BackendNotFound):
            return
        raise error

    async def list(self, prefix: str = "") -> AsyncIterator[BackendObject]:
        token: str | None = None
        while True:
            query = [
                ("list-type", "2"),
                ("encoding-type", "url"),
                ("max-keys", str(self.list_page_size)),
            ]
            if prefix:
                query.append(("prefix", prefix))
            if token is not None:
                query.append(("continuation-token", token))
            response, watchdog = await self._send("GET", None, query=query)
            if response.code != 200:
                raise await self._failure("LIST", None, response, watchdog)
            body = await self._read_small_body(response, watchdog, LIST_BODY_LIMIT, False)
            objects, token = _parse_list_page(body)
            for item in objects:
                if item.key.startswith(prefix):
                    yield item
            if token is None:
                return

    async def create_multipart(self, key: str) -> str:
        headers = {"content-type": "application/octet-stream"}
        if self.checksum:
            headers["x-amz-checksum-algorithm"] = "CRC32"
        response, watchdog = await self._send("POST", key, query=[("uploads", "")], headers=headers)
        if response.code != 200:
            raise await self._failure("CreateMultipartUpload", key, response, watchdog)
        body = await self._read_small_body(response, watchdog, ERROR_BODY_LIMIT, False)
        root = _parse_xml(body.strip())
        upload_id = None
        if root is not None and _local_name(root) == "InitiateMultipartUploadResult":
            upload_id = _child_text(root, "UploadId")
        if not upload_id:
            raise BackendError(f"{self.name}: CreateMultipartUpload answered without an UploadId")
        return _CRC32_HANDLE + upload_id if self.checksum else upload_id

    async def upload_part(
        self, key: str, handle: str, part_number: int, body: AsyncIterator[bytes], length: int
    ) -> str:
        try:
            check_part_number(part_number)
            upload_id, crc32 = self._check_handle(handle)
        except BackendError as e:
            with contextlib.suppress(Exception):
                await close_source(body)
            if type(e) is BackendError:
                raise BackendError(f"{self.name}: {e}") from e
            raise
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        receipt = await self._send_body(
            "UploadPart", key, body, length, checksum=crc32, query=query
        )
        if receipt is None:
            raise BackendError(f"{self.name}: UploadPart answered without an ETag")
        return receipt

    async def complete_multipart(
        self, key: str, handle: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        try:
            check_part_list(parts)
        except BackendError as e:
            raise BackendError(f"{self.name}: {e}") from e
        upload_id, crc32 = self._check_handle(handle)
        try:
            document = _complete_document(parts, crc32)
        except BackendError as e:
            raise BackendError(f"{self.name}: {e}") from e
        response, watchdog = await self._send(
            "POST",
            key,
            query=[("uploadId", upload_id)],
            headers={"content-type": "application/xml"},
            body=body_producer(_just(document), len(document)),
            payload_hash=hashlib.sha256(document).hexdigest(),
        )
        if response.code != 200:
            raise await self._failure("CompleteMultipartUpload", key, response, watchdog)
        body = await self._read_small_body(response, watchdog, COMPLETE_BODY_LIMIT, False)
        root = _parse_xml(body.strip())
        if root is not None and _local_name(root) in _COMPLETED:
            return
        if root is not None and _local_name(root) == "Error":
            code, message = _child_text(root, "Code"), _child_text(root, "Message")
            raise self._error("CompleteMultipartUpload", response.code, code, message)
        raise BackendError(f"{self.name}: CompleteMultipartUpload answered 200 without a result")

    async def abort_multipart(self, key: str, handle: str) -> None:
        upload_id = handle.removeprefix(_CRC32_HANDLE)
        if not upload_id:
            return  # no upload has an empty id
        response, watchdog = await self._send("DELETE", key, query=[("uploadId", upload_id)])
        if response.code in (200, 204):
            await self._discard_body(response, watchdog)
            return
        error = await self._failure("AbortMultipartUpload", key, response, watchdog)
        if isinstance(error, BackendUploadNotFound):
            return
        raise error

    def _check_handle(self, handle: str) -> tuple[str, bool]:
        """The upload id in ``handle``, and whether the upload takes CRC32 part checksums."""
        upload_id = handle.removeprefix(_CRC32_HANDLE)
        # With an empty uploadId a server may take the request for a plain PUT or DELETE.
        if not upload_id:
            raise BackendUploadNotFound(f"{self.name}: no multipart upload has an empty id")
        return upload_id, upload_id != handle


def _abandon(response: IResponse, watchdog: _Watchdog) -> None:
    # Closing beats reading an unwanted object body to reuse the connection.
    watchdog.close()
    response.deliverBody(_Hangup())
