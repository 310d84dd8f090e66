"""S3Backend specifics: URL building, signing, error mapping, idle timeouts, back-pressure."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit
from xml.etree import ElementTree

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, DeferredQueue, maybeDeferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from s3orch.backends.interface import BackendError, BackendNotFound, BackendUploadNotFound
from s3orch.backends.s3 import (
    CONNECT_TIMEOUT,
    IDLE_TIMEOUT,
    RESPONSE_TIMEOUT,
    S3Backend,
    S3ResponseError,
    S3UploadNotFound,
    make_connection_pool,
    make_http_client,
)
from s3orch.httputil import LARGE_READ
from s3orch.sigv4 import SignedRequest, authenticate
from s3orch.streams import PushStream
from s3orch.testing.moto_server import MotoServer, start_moto_server
from s3orch.testing.sources import ScriptedSource
from tests.backends.conftest import new_s3_backend
from tests.backends.sources import EDGE_KEYS, MiB, chunks_of, generated

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def make_backend(
    endpoint: str, path_style: bool, client: Any = None, clock: Any = None
) -> S3Backend:
    return S3Backend(
        "s3",
        endpoint,
        "my-bucket",
        "eu-west-3",
        ACCESS_KEY,
        SECRET_KEY,
        path_style,
        client,
        clock if clock is not None else Clock(),
    )


def raise_result(d: Deferred[Any]) -> None:
    """Raise what a fired Deferred failed with (consuming it), or return if it succeeded."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()


# -- URLs and signatures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "path_style", "key", "url", "host"),
    [
        (
            "https://s3.example.com",
            True,
            "a b/c+d",
            "https://s3.example.com/my-bucket/a%20b/c%2Bd",
            "s3.example.com",
        ),
        (
            "https://s3.example.com",
            False,
            "a b/c+d",
            "https://my-bucket.s3.example.com/a%20b/c%2Bd",
            "my-bucket.s3.example.com",
        ),
        (
            "http://S3.Example.com:9000/",
            False,
            "~ok-_./é?#",
            "http://my-bucket.s3.example.com:9000/~ok-_./%C3%A9%3F%23",
            "my-bucket.s3.example.com:9000",
        ),
        (
            "http://127.0.0.1:80/gateway",
            True,
            "//x/../y",
            "http://127.0.0.1/gateway/my-bucket///x/../y",
            "127.0.0.1",
        ),
        ("https://s3.example.com:443", False, None, "https://my-bucket.s3.example.com/", None),
    ],
)
def test_url_building(
    endpoint: str, path_style: bool, key: str | None, url: str, host: str | None
) -> None:
    """Path-style and virtual-hosted URLs encode keys once, as SigV4 expects."""
    built_url, built_host = make_backend(endpoint, path_style).url_for(key)
    assert built_url == url
    assert built_host == (host or urlsplit(url).netloc)


def test_list_query_is_encoded_and_sorted() -> None:
    """Query parameters are sorted and percent-encoded, so the URL is its own canonical form."""
    url, _ = make_backend("https://s3.example.com", True).url_for(
        None, [("prefix", "a/b c+"), ("list-type", "2"), ("continuation-token", "x/y=")]
    )
    assert url == (
        "https://s3.example.com/my-bucket"
        "?continuation-token=x%2Fy%3D&list-type=2&prefix=a%2Fb%20c%2B"
    )


def test_endpoint_must_be_http() -> None:
    """An endpoint that is not an http(s) URL is refused at construction."""
    with pytest.raises(ValueError):
        make_backend("ftp://s3.example.com", True)


class FakeRequest:
    def __init__(self, method: str, url: str, headers: dict[str, str], data: Any) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.data = data
        self.cancelled = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        self.cancelled = True
        if self.data is not None:
            self.data.stopProducing()


class FakeHTTPClient:
    """Records requests; the test decides what happens to each."""

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        assert kwargs["unbuffered"] is True and kwargs["allow_redirects"] is False
        request = FakeRequest(method, url, dict(kwargs["headers"]), kwargs["data"])
        self.requests.append(request)
        return request.deferred


@pytest.mark.parametrize("path_style", [True, False])
@pytest.mark.parametrize("key", ["plain", "a b/c+d%e", "../x", "//lead", "été/😀", "q?h#"])
def test_signature_matches_the_request_as_sent(path_style: bool, key: str) -> None:
    """The signature verifies against the URL and headers actually handed to treq."""
    client = FakeHTTPClient()
    clock = Clock()
    clock.advance(1_700_000_000)
    backend = make_backend("http://s3.example.com:9000", path_style, client, clock)
    d = Deferred.fromCoroutine(backend.get(key, 5, 10))
    request = client.requests[0]
    parts = urlsplit(request.url)
    signed = SignedRequest(
        method=request.method,
        raw_path=parts.path,
        raw_query=parts.query,
        headers={k.lower(): v for k, v in request.headers.items()},
    )
    result = authenticate(signed, {ACCESS_KEY: SECRET_KEY}.get, clock.seconds(), region="eu-west-3")
    assert result.access_key == ACCESS_KEY
    assert signed.headers["range"] == "bytes=5-10"
    assert "authorization" not in repr(backend).lower() and SECRET_KEY not in repr(backend)
    request.deferred.errback(ConnectionRefusedError())
    with pytest.raises(BackendError):
        raise_result(d)


# -- a real server that checks signatures -------------------------------------------------


@pytest.fixture(scope="module")
def auth_moto() -> Iterator[MotoServer]:
    """A moto server of our own that verifies every signature (auth cannot be turned off)."""
    server = start_moto_server()
    try:
        server.enable_auth()
        yield server
    finally:
        server.stop()


# moto's own signature check mis-encodes the path of keys holding any of
# + % & = ; : @ * ' ( ) ! $ , \ " < > or non-ASCII characters, and rejects boto3
# for exactly those keys too; test_signature_matches_the_request_as_sent covers them.
MOTO_AUTH_KEYS = [k for k in EDGE_KEYS if k.isascii() and not set(k) & set("+%&=;:@*'()!$,\\\"<>")]


@pytest.fixture
def auth_backend(auth_moto: MotoServer, reactor: Any) -> Iterator[S3Backend]:
    """An S3Backend on the signature-checking server."""
    yield from new_s3_backend(auth_moto, reactor, list_page_size=5)


@pytest_twisted.ensureDeferred
async def test_real_server_accepts_our_signatures(auth_backend: S3Backend) -> None:
    """A signature-checking S3 server accepts put, get, head, list and delete for odd keys."""
    for key in MOTO_AUTH_KEYS:
        await auth_backend.put(key, chunks_of(key.encode()), len(key.encode()))
        opened = await auth_backend.get(key, 1, None)
        assert b"".join([c async for c in opened.body]) == key.encode()[1:], key
        head = await auth_backend.head(key)
        assert head is not None and head.size == len(key.encode())
    listed = [o.key async for o in auth_backend.list()]
    assert listed == sorted(MOTO_AUTH_KEYS, key=lambda k: k.encode())
    for key in MOTO_AUTH_KEYS:
        await auth_backend.delete(key)
    assert [o.key async for o in auth_backend.list()] == []


@pytest_twisted.ensureDeferred
async def test_real_server_accepts_our_multipart_signatures(auth_backend: S3Backend) -> None:
    """A signature-checking server accepts every multipart call, for odd keys too."""
    for key in ["plain", "with space", "a//b", "x/" * 100]:
        handle = await auth_backend.create_multipart(key)
        etag = await auth_backend.upload_part(key, handle, 1, chunks_of(b"part one"), 8)
        await auth_backend.complete_multipart(key, handle, [(1, etag)])
        opened = await auth_backend.get(key)
        assert b"".join([c async for c in opened.body]) == b"part one", key
        aborted = await auth_backend.create_multipart(key)
        await auth_backend.abort_multipart(key, aborted)
        await auth_backend.abort_multipart(key, aborted)
        await auth_backend.delete(key)


@pytest_twisted.ensureDeferred
async def test_wrong_secret_is_reported_with_the_s3_code(
    auth_moto: MotoServer, reactor: Any
) -> None:
    """A rejected signature surfaces as S3ResponseError 403 SignatureDoesNotMatch."""
    bucket = auth_moto.make_bucket("wrong-secret")
    backend = S3Backend(
        "s3",
        auth_moto.endpoint,
        bucket,
        auth_moto.region,
        auth_moto.access_key,
        "not-the-secret",
        True,
        make_http_client(reactor),
        reactor,
    )
    with pytest.raises(S3ResponseError) as info:
        await backend.put("k", chunks_of(b"data"), 4)
    assert (info.value.status, info.value.code) == (403, "SignatureDoesNotMatch")
    assert "not-the-secret" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_missing_bucket_is_an_error_not_a_missing_key(
    moto_server: MotoServer, reactor: Any
) -> None:
    """NoSuchBucket is a BackendError with its code, never BackendNotFound or a silent delete."""
    backend = S3Backend(
        "s3",
        moto_server.endpoint,
        "no-such-bucket-here",
        moto_server.region,
        moto_server.access_key,
        moto_server.secret_key,
        True,
        make_http_client(reactor),
        reactor,
    )
    for call in (
        lambda: backend.get("k"),
        lambda: backend.delete("k"),
        lambda: backend.put("k", chunks_of(b"x"), 1),
        lambda: backend.list().__anext__(),
        lambda: backend.create_multipart("k"),
        lambda: backend.abort_multipart("k", "some-upload"),
    ):
        with pytest.raises(S3ResponseError) as info:
            await call()
        assert not isinstance(info.value, BackendNotFound)
        assert (info.value.status, info.value.code) == (404, "NoSuchBucket")


# -- back-pressure on a real connection --------------------------------------------------


SLOW_READER_HIGH_WATER = 256 * 1024


@pytest.fixture
def small_buffer_backend(moto_server: MotoServer, reactor: Any) -> Iterator[S3Backend]:
    """An S3Backend whose reads buffer at most 256 KiB before pausing the connection."""
    yield from new_s3_backend(moto_server, reactor, high_water=SLOW_READER_HIGH_WATER)


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_the_connection(
    small_buffer_backend: S3Backend, reactor: Any
) -> None:
    """A reader that stops pulling leaves at most high_water plus one read buffered."""
    size = 8 * MiB
    await small_buffer_backend.put("big", generated(size), size)
    opened = await small_buffer_backend.get("big")
    body = cast(PushStream, opened.body)
    received = len(await body.__anext__())
    await deferLater(reactor, 0.3)  # let the server push as much as it can
    assert body.paused
    assert body.buffered <= SLOW_READER_HIGH_WATER + LARGE_READ
    async for chunk in body:
        received += len(chunk)
    assert received == size


# -- timeouts, against a server that does what the test says ------------------------------


class ScriptedConnection(Protocol):
    """The server side of one connection: the test writes the response by hand."""

    def __init__(self, requests: DeferredQueue[ScriptedConnection]) -> None:
        self.requests = requests
        self.received = b""
        self.seen_request = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.seen_request and b"\r\n\r\n" in self.received:
            self.seen_request = True
            self.requests.put(self)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class ScriptedServer:
    def __init__(self, reactor: Any) -> None:
        self.requests: DeferredQueue[ScriptedConnection] = DeferredQueue()
        self.connections: list[ScriptedConnection] = []

        server = self

        class ScriptedFactory(Factory):
            def buildProtocol(self, addr: object) -> ScriptedConnection:
                connection = ScriptedConnection(server.requests)
                server.connections.append(connection)
                return connection

        self.port = reactor.listenTCP(0, ScriptedFactory(), interface="127.0.0.1")
        self.endpoint = f"http://127.0.0.1:{self.port.getHost().port}"

    async def next_request(self) -> ScriptedConnection:
        connection: ScriptedConnection = await self.requests.get()
        return connection


@pytest.fixture
def scripted(reactor: Any) -> Iterator[tuple[ScriptedServer, Clock, HTTPConnectionPool]]:
    """A loopback server the test scripts, and a Clock that drives the backend's timers."""
    server = ScriptedServer(reactor)
    pool = make_connection_pool(reactor)
    yield server, Clock(), pool
    for connection in server.connections:
        if connection.transport is not None:
            connection.transport.abortConnection()  # type: ignore[attr-defined]
    pytest_twisted.blockon(pool.closeCachedConnections())
    pytest_twisted.blockon(maybeDeferred(server.port.stopListening))


def scripted_backend(
    scripted: tuple[ScriptedServer, Clock, HTTPConnectionPool], reactor: Any, **kwargs: Any
) -> S3Backend:
    server, clock, pool = scripted
    return S3Backend(
        "slow",
        server.endpoint,
        "bucket",
        "us-east-1",
        ACCESS_KEY,
        SECRET_KEY,
        True,
        make_http_client(reactor, pool),
        clock,
        **kwargs,
    )


def head_200(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode()


@pytest_twisted.ensureDeferred
async def test_response_header_timeout(scripted: Any, reactor: Any) -> None:
    """A server that never answers is given up on after connect_timeout, as a BackendError."""
    server, clock, _ = scripted
    backend = scripted_backend(scripted, reactor)
    get = Deferred.fromCoroutine(backend.get("k"))
    await server.next_request()
    clock.advance(CONNECT_TIMEOUT - 1)
    assert not get.called
    clock.advance(2)
    with pytest.raises(BackendError, match="timed out"):
        await get


@pytest_twisted.ensureDeferred
async def test_body_idle_timeout_resets_on_progress(scripted: Any, reactor: Any) -> None:
    """The idle timer restarts with every chunk: only a silence of idle_timeout ends a read."""
    server, clock, _ = scripted
    backend = scripted_backend(scripted, reactor)
    get = Deferred.fromCoroutine(backend.get("k"))
    connection = await server.next_request()
    connection.send(head_200(30) + b"a" * 10)
    opened = await get
    assert await opened.body.__anext__() == b"a" * 10
    clock.advance(IDLE_TIMEOUT - 10)
    connection.send(b"b" * 10)
    assert await opened.body.__anext__() == b"b" * 10
    clock.advance(IDLE_TIMEOUT - 10)  # long since the start, but not since the last chunk
    rest = Deferred.fromCoroutine(opened.body.__anext__())
    assert not rest.called
    clock.advance(11)
    with pytest.raises(BackendError, match="timed out"):
        await rest


@pytest_twisted.ensureDeferred
async def test_paused_reader_is_not_timed_out(scripted: Any, reactor: Any) -> None:
    """While the reader holds the stream paused no idle timer runs; reading resumes it."""
    server, clock, _ = scripted
    backend = scripted_backend(scripted, reactor, high_water=8)
    get = Deferred.fromCoroutine(backend.get("k"))
    connection = await server.next_request()
    connection.send(head_200(40) + b"a" * 20)
    opened = await get
    await deferLater(reactor, 0)  # the bytes after the headers reach the stream
    body = cast(PushStream, opened.body)
    assert body.paused
    assert clock.getDelayedCalls() == []
    clock.advance(10 * IDLE_TIMEOUT)
    assert await body.__anext__() == b"a" * 20
    connection.send(b"b" * 20)
    assert b"".join([c async for c in body]) == b"b" * 20


@pytest_twisted.ensureDeferred
async def test_truncated_body_is_an_error(scripted: Any, reactor: Any) -> None:
    """A connection that closes before Content-Length bytes fails the read with BackendError."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    get = Deferred.fromCoroutine(backend.get("k"))
    connection = await server.next_request()
    connection.send(head_200(100) + b"x" * 10)
    opened = await get
    assert connection.transport is not None
    connection.transport.loseConnection()
    with pytest.raises(BackendError, match="10 of 100"):
        async for _ in opened.body:
            pass


@pytest_twisted.ensureDeferred
async def test_error_bodies_are_read_up_to_a_cap(scripted: Any, reactor: Any) -> None:
    """A huge (or endless) error body is cut at 64 KiB; the status still surfaces."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    get = Deferred.fromCoroutine(backend.get("k"))
    connection = await server.next_request()
    connection.send(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 200_000)
    with pytest.raises(S3ResponseError) as info:
        await get
    assert info.value.status == 503


@pytest_twisted.ensureDeferred
async def test_error_code_is_parsed_from_the_xml(scripted: Any, reactor: Any) -> None:
    """The S3 error code and message in the XML body are reported."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    head = Deferred.fromCoroutine(backend.delete("k"))
    connection = await server.next_request()
    body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
    connection.send(b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(S3ResponseError, match="Reduce your rate") as info:
        await head
    assert (info.value.status, info.value.code) == (503, "SlowDown")


@implementer(IConsumer)
class FullSocket:
    """A consumer that is full after every write, until the test resumes its producer."""

    def __init__(self) -> None:
        self.written = 0
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.producer.pauseProducing()


def fake_backend(clock: Clock) -> tuple[S3Backend, FakeHTTPClient]:
    client = FakeHTTPClient()
    return make_backend("http://s3.example.com", True, client, clock), client


def test_put_times_out_when_the_socket_stays_full() -> None:
    """A PUT whose body the server stops taking fails after idle_timeout of no progress."""
    clock = Clock()
    backend, client = fake_backend(clock)
    put = Deferred.fromCoroutine(backend.put("k", generated(MiB), MiB))
    request = client.requests[0]
    socket = FullSocket()
    socket.registerProducer(request.data, True)
    request.data.startProducing(socket)
    assert socket.written > 0
    clock.advance(IDLE_TIMEOUT - 1)
    socket.producer.resumeProducing()  # progress: the socket drained once
    clock.advance(IDLE_TIMEOUT - 1)
    assert not put.called
    clock.advance(2)
    assert request.cancelled
    with pytest.raises(BackendError, match="timed out"):
        raise_result(put)


def test_put_waiting_on_its_source_is_not_timed_out() -> None:
    """Time the body source takes does not count; waiting for the response afterwards does."""
    clock = Clock()
    backend, client = fake_backend(clock)
    source = ScriptedSource()
    put = Deferred.fromCoroutine(backend.put("k", source, 6))
    request = client.requests[0]
    request.data.startProducing(FullSocketNeverFull())
    clock.advance(10 * IDLE_TIMEOUT)
    assert not put.called
    source.give(b"abc")
    source.give(b"def")
    source.end()
    clock.advance(RESPONSE_TIMEOUT - 1)
    assert not put.called
    clock.advance(2)
    with pytest.raises(BackendError, match="waiting for the response"):
        raise_result(put)


def test_put_connect_timeout() -> None:
    """A PUT whose connection never comes up fails after connect_timeout."""
    clock = Clock()
    backend, client = fake_backend(clock)
    put = Deferred.fromCoroutine(backend.put("k", chunks_of(b"x"), 1))
    clock.advance(CONNECT_TIMEOUT + 1)
    assert client.requests[0].cancelled
    with pytest.raises(BackendError, match="connecting"):
        raise_result(put)


def test_caller_cancelling_a_put_cancels_the_request() -> None:
    """Cancelling put() (a client that went away) cancels the HTTP request and closes the source."""
    clock = Clock()
    backend, client = fake_backend(clock)
    source = ScriptedSource()
    put = Deferred.fromCoroutine(backend.put("k", source, 6))
    client.requests[0].data.startProducing(FullSocketNeverFull())
    put.cancel()
    assert client.requests[0].cancelled and source.closed
    with pytest.raises(CancelledError):
        raise_result(put)
    assert clock.getDelayedCalls() == []


@implementer(IConsumer)
class FullSocketNeverFull:
    """A consumer that takes everything at once."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_put_to_an_unreachable_server_closes_the_source(reactor: Any) -> None:
    """A PUT that cannot even connect fails with BackendError and still closes its source."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    backend = S3Backend(
        "down",
        f"http://127.0.0.1:{port}",
        "bucket",
        "us-east-1",
        ACCESS_KEY,
        SECRET_KEY,
        True,
        make_http_client(reactor),
        reactor,
    )
    source = ScriptedSource()
    with pytest.raises(BackendError, match="down: PUT failed"):
        await backend.put("k", source, 3)
    assert source.closed


# -- multipart requests and answers ------------------------------------------------------


@implementer(IConsumer)
class Collector:
    """A consumer that keeps what a body producer writes."""

    def __init__(self) -> None:
        self.data = b""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data


def query_of(request: FakeRequest) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))


def test_multipart_requests_use_the_s3_verbs_and_queries() -> None:
    """Create, UploadPart and Abort are POST ?uploads, PUT ?partNumber&uploadId, DELETE ?uploadId."""
    backend, client = fake_backend(Clock())
    calls = [
        Deferred.fromCoroutine(backend.create_multipart("a b")),
        Deferred.fromCoroutine(backend.upload_part("a b", "id/+=", 7, chunks_of(b"x" * 10), 10)),
        Deferred.fromCoroutine(backend.abort_multipart("a b", "id/+=")),
    ]
    create, part, abort = client.requests
    assert (create.method, urlsplit(create.url).path, query_of(create)) == (
        "POST",
        "/my-bucket/a%20b",
        {"uploads": ""},
    )
    assert (part.method, query_of(part)) == ("PUT", {"partNumber": "7", "uploadId": "id/+="})
    assert part.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert part.data.length == 10
    assert (abort.method, query_of(abort)) == ("DELETE", {"uploadId": "id/+="})
    for call in calls:
        call.cancel()
        with pytest.raises(CancelledError):
            raise_result(call)


def test_complete_sends_the_part_list_as_signed_xml() -> None:
    """Complete POSTs ?uploadId with the parts in order, ETags quoted, its SHA-256 signed."""
    backend, client = fake_backend(Clock())
    d = Deferred.fromCoroutine(
        backend.complete_multipart("k", "upload-1", [(1, "aa"), (3, '"bb"'), (10, "cc")])
    )
    [request] = client.requests
    assert (request.method, query_of(request)) == ("POST", {"uploadId": "upload-1"})
    body = Collector()
    request.data.startProducing(body)
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(body.data).hexdigest()
    root = ElementTree.fromstring(body.data)
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    assert root.tag == ns + "CompleteMultipartUpload"
    assert [(part.findtext(ns + "PartNumber"), part.findtext(ns + "ETag")) for part in root] == [
        ("1", '"aa"'),
        ("3", '"bb"'),
        ("10", '"cc"'),
    ]
    d.cancel()
    with pytest.raises(CancelledError):
        raise_result(d)


def test_an_empty_upload_id_is_never_sent() -> None:
    """An empty handle (which a server could take for a plain PUT or DELETE) sends nothing."""
    backend, client = fake_backend(Clock())
    source = ScriptedSource()
    with pytest.raises(BackendUploadNotFound):
        raise_result(Deferred.fromCoroutine(backend.upload_part("k", "", 1, source, 1)))
    assert source.closed
    with pytest.raises(BackendUploadNotFound):
        raise_result(Deferred.fromCoroutine(backend.complete_multipart("k", "", [(1, "e")])))
    raise_result(Deferred.fromCoroutine(backend.abort_multipart("k", "")))
    assert client.requests == []


def respond(connection: ScriptedConnection, status: str, body: bytes, *headers: str) -> None:
    """Answer, closing the connection: the next request then arrives on a new one."""
    head = "".join(f"{h}\r\n" for h in (*headers, "Connection: close"))
    connection.send(
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
COMPLETED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult '
    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Key>k</Key><ETag>"x-2"</ETag>'
    b"</CompleteMultipartUploadResult>"
)


@pytest_twisted.ensureDeferred
async def test_complete_answering_200_with_an_error_fails(scripted: Any, reactor: Any) -> None:
    """A 200 whose body turns out to be an <Error> document is a failed Complete."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    complete = Deferred.fromCoroutine(backend.complete_multipart("k", "u", [(1, "e")]))
    connection = await server.next_request()
    error = b"<Error><Code>InternalError</Code><Message>We encountered an error</Message></Error>"
    connection.send(CHUNKED_200 + chunk(b" \n ") + chunk(error) + chunk(b""))
    with pytest.raises(S3ResponseError, match="encountered an error") as info:
        await complete
    assert (info.value.status, info.value.code) == (200, "InternalError")


@pytest_twisted.ensureDeferred
async def test_complete_answering_200_without_a_result_fails(scripted: Any, reactor: Any) -> None:
    """A 200 with an empty or foreign body is not taken for success."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    for body in (b"", b"   ", b"<Other/>", b"<not xml"):
        complete = Deferred.fromCoroutine(backend.complete_multipart("k", "u", [(1, "e")]))
        connection = await server.next_request()
        respond(connection, "200 OK", body)
        with pytest.raises(BackendError, match="without a result"):
            await complete


@pytest_twisted.ensureDeferred
async def test_complete_kept_alive_by_whitespace_succeeds(scripted: Any, reactor: Any) -> None:
    """Whitespace a server sends while assembling resets the idle timer; silence times out."""
    server, clock, _ = scripted
    backend = scripted_backend(scripted, reactor)
    complete = Deferred.fromCoroutine(backend.complete_multipart("k", "u", [(1, "e")]))
    connection = await server.next_request()
    connection.send(CHUNKED_200)
    for _ in range(3):
        connection.send(chunk(b" "))
        await deferLater(reactor, 0.1)  # the space reaches the backend
        clock.advance(IDLE_TIMEOUT - 1)
    assert not complete.called
    connection.send(chunk(COMPLETED) + chunk(b""))
    await complete

    stalled = Deferred.fromCoroutine(backend.complete_multipart("k", "u", [(1, "e")]))
    connection = await server.next_request()
    connection.send(CHUNKED_200 + chunk(b" "))
    await deferLater(reactor, 0.1)
    clock.advance(IDLE_TIMEOUT + 1)
    with pytest.raises(BackendError, match="timed out"):
        await stalled


@pytest_twisted.ensureDeferred
async def test_no_such_upload_is_upload_not_found(scripted: Any, reactor: Any) -> None:
    """404 NoSuchUpload from UploadPart or Complete raises S3UploadNotFound."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    not_found = b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
    calls = [
        lambda: backend.upload_part("k", "u", 1, chunks_of(b"x"), 1),
        lambda: backend.complete_multipart("k", "u", [(1, "e")]),
    ]
    for call in calls:
        d = Deferred.fromCoroutine(call())
        respond(await server.next_request(), "404 Not Found", not_found)
        with pytest.raises(S3UploadNotFound) as info:
            await d
        assert isinstance(info.value, BackendUploadNotFound)
        assert (info.value.status, info.value.code) == (404, "NoSuchUpload")


@pytest_twisted.ensureDeferred
async def test_abort_succeeds_only_for_no_such_upload(scripted: Any, reactor: Any) -> None:
    """Abort takes 204 and 404 NoSuchUpload as done; other 404s are errors, not successes."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    answers = [
        ("204 No Content", b"", None),
        ("404 Not Found", b"<Error><Code>NoSuchUpload</Code></Error>", None),
        ("404 Not Found", b"<Error><Code>NoSuchBucket</Code></Error>", "NoSuchBucket"),
        ("404 Not Found", b"", "AbortMultipartUpload answered 404"),
    ]
    for status, body, failure in answers:
        d = Deferred.fromCoroutine(backend.abort_multipart("k", "u"))
        respond(await server.next_request(), status, body)
        if failure is None:
            await d
        else:
            with pytest.raises(S3ResponseError, match=failure) as info:
                await d
            assert not isinstance(info.value, BackendNotFound | BackendUploadNotFound)


@pytest_twisted.ensureDeferred
async def test_create_and_upload_part_check_the_answer(scripted: Any, reactor: Any) -> None:
    """A Create without an UploadId, or an UploadPart without an ETag, is a BackendError."""
    server, _, _ = scripted
    backend = scripted_backend(scripted, reactor)
    create = Deferred.fromCoroutine(backend.create_multipart("k"))
    respond(await server.next_request(), "200 OK", b"<InitiateMultipartUploadResult/>")
    with pytest.raises(BackendError, match="without an UploadId"):
        await create
    part = Deferred.fromCoroutine(backend.upload_part("k", "u", 1, chunks_of(b"x"), 1))
    respond(await server.next_request(), "200 OK", b"")
    with pytest.raises(BackendError, match="without an ETag"):
        await part
    part = Deferred.fromCoroutine(backend.upload_part("k", "u", 1, chunks_of(b"x"), 1))
    respond(await server.next_request(), "200 OK", b"", 'ETag: "0123abc"')
    assert await part == "0123abc"


def test_upload_part_times_out_like_a_put() -> None:
    """A part whose body the server stops taking fails after idle_timeout of no progress."""
    clock = Clock()
    backend, client = fake_backend(clock)
    upload = Deferred.fromCoroutine(backend.upload_part("k", "u", 2, generated(MiB), MiB))
    request = client.requests[0]
    socket = FullSocket()
    socket.registerProducer(request.data, True)
    request.data.startProducing(socket)
    clock.advance(IDLE_TIMEOUT + 1)
    assert request.cancelled
    with pytest.raises(BackendError, match="timed out"):
        raise_result(upload)
