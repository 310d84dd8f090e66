"""The S3 endpoint: one leaf resource that authenticates, dispatches and answers.

A plain leaf resource rather than a router: S3 paths are raw keys ('//',
'%2F', '..' all mean themselves), and the operation depends on method, path
depth and query together.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from s3orch import metrics
from s3orch.backends.interface import BackendError
from s3orch.config import BucketConfig
from s3orch.httputil import serve_async
from s3orch.objects import errors as core
from s3orch.objects import multipart
from s3orch.objects.multipart import MultipartUploads
from s3orch.objects.orchestrator import Orchestrator
from s3orch.s3api import operations
from s3orch.s3api.auth import Credentials, Principal
from s3orch.s3api.errors import S3Error
from s3orch.s3api.request import S3Request
from s3orch.sigv4 import SignedRequest
from s3orch.store.records import PreconditionFailed, TooManyUploads

log = Logger()

MAX_KEY_BYTES = 1024


@frozen
class Call:
    """One parsed, authenticated S3 request."""

    request: S3Request
    method: str
    bucket: str
    key: str | None
    query: dict[str, str]
    headers: dict[str, str]
    principal: Principal


@define
class S3Context:
    """Everything the operations need from the server."""

    orchestrator: Orchestrator
    multipart: MultipartUploads
    credentials: Credentials
    buckets: tuple[BucketConfig, ...]
    clock: IReactorTime
    max_object_size: int
    started: float
    ready: bool = False  # false until the database is migrated and counters synced


class S3Resource(Resource):
    isLeaf = True

    def __init__(self, context: S3Context) -> None:
        super().__init__()
        self.context = context

    def render(self, request: S3Request) -> Any:
        return serve_async(request, self._serve(request))

    async def _serve(self, request: S3Request) -> None:
        clock = self.context.clock
        started = clock.seconds()
        request_id = secrets.token_hex(8).upper()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setHeader(b"x-amz-id-2", secrets.token_urlsafe(24).encode())
        request.setHeader(b"Server", b"s3orch")
        method = request.method.decode("ascii", "replace")
        bucket = key = ""
        outcome = "ok"
        try:
            if not self.context.ready:
                raise S3Error("ServiceUnavailable", "s3orch is starting; try again shortly.")
            call = self._parse(request)
            bucket, key = call.bucket, call.key or ""
            await operations.dispatch(self.context, call)
        except CancelledError:
            outcome = "client went away"
        except S3Error as e:
            self._fail(request, e, request_id)
        except Exception as e:
            s3_error = _translate(e)
            if s3_error.code == "InternalError":
                log.failure(
                    "unhandled error serving {request_id}", Failure(), request_id=request_id
                )
            self._fail(request, s3_error, request_id)
        finally:
            if not request.finished and not request._disconnected:
                request.finish()
            duration = clock.seconds() - started
            status = request.code
            metrics.requests_total.labels(method, str(status)).inc()
            metrics.request_duration_seconds.labels(method).observe(duration)
            log.info(
                "{request_id} {method} {bucket} {key} {status} in={bytes_in} out={bytes_out} "
                "{duration:.4f}s {outcome}",
                request_id=request_id,
                method=method,
                bucket=bucket,
                key=key,
                status=status,
                bytes_in=getattr(request, "_received", 0),
                bytes_out=request.sentLength,
                duration=duration,
                outcome=outcome,
            )

    def start_upload(self, request: S3Request, method: bytes, uri: bytes) -> Deferred[Any] | None:
        """Begin a large PutObject while its body arrives (see S3Request); None if not one.

        Errors are kept in the returned Deferred for the request's normal
        processing to answer once the body is in.
        """
        if not self.context.ready:
            return None
        try:
            call = self._parse(request, method, uri)
            upload = operations.early_upload(self.context, call)
        except Exception:
            return fail()
        if upload is None:
            return None
        d = Deferred.fromCoroutine(upload)
        request.notifyFinish().addErrback(lambda _: d.addErrback(lambda _: None))
        return d

    def _parse(
        self, request: S3Request, method: bytes | None = None, uri: bytes | None = None
    ) -> Call:
        method = request.method if method is None else method
        uri = request.uri if uri is None else uri
        raw_path, _, raw_query = uri.partition(b"?")
        try:
            path = raw_path.decode("ascii")
            query_text = raw_query.decode("ascii")
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
        headers = {
            name.decode("latin-1").lower(): ",".join(v.decode("latin-1") for v in values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        signed = SignedRequest(
            method=method.decode("ascii", "replace"),
            raw_path=path,
            raw_query=query_text,
            headers=headers,
        )
        principal = self.context.credentials.authenticate(signed, self.context.clock.seconds())
        if not decoded.startswith("/"):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
        bucket, _, key = decoded[1:].partition("/")
        has_key = key != ""
        if has_key:
            _check_key(key)
        return Call(
            request=request,
            method=signed.method,
            bucket=bucket,
            key=key if has_key else None,
            query=_parse_query(query_text),
            headers=headers,
            principal=principal,
        )

    def _fail(self, request: S3Request, error: S3Error, request_id: str) -> None:
        if request.startedWriting:
            # Headers are gone: the only honest signal left is a cut connection.
            request.loseConnection()
            return
        body = error.to_xml(request.uri.partition(b"?")[0].decode("ascii", "replace"), request_id)
        request.setResponseCode(error.status)
        for name in (b"ETag", b"Last-Modified", b"Content-Range", b"Accept-Ranges"):
            request.responseHeaders.removeHeader(name)
        request.setHeader(b"Content-Type", b"application/xml")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)


def _check_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", MaxSizeAllowed=str(MAX_KEY_BYTES))
    if "\x00" in key:
        raise S3Error("InvalidArgument", "Object key contains a NUL character.")


def _parse_query(query: str) -> dict[str, str]:
    """Query parameters, percent-decoded ('+' stays a plus, as SigV4 clients mean it)."""
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            params[unquote(name, errors="strict")] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
    return params


_CORE_ERRORS: dict[type[Exception], Callable[[Exception], S3Error]] = {
    core.NoSuchObject: lambda e: S3Error("NoSuchKey", "The specified key does not exist."),
    core.InsufficientStorage: lambda e: S3Error(
        "InsufficientStorage", "No storage backend has room for this object."
    ),
    core.BadDigest: lambda e: S3Error("BadDigest", str(e)),
    core.IncompleteBody: lambda e: S3Error("IncompleteBody", str(e)),
    core.Unavailable: lambda e: S3Error(
        "ServiceUnavailable", "No copy of the object could be read; try again later."
    ),
    core.Undecryptable: lambda e: S3Error("InternalError", f"The object cannot be decrypted: {e}"),
    core.KeyServiceUnavailable: lambda e: S3Error(
        "ServiceUnavailable", f"The encryption key service is unavailable: {e}"
    ),
    multipart.UploadNotSealed: lambda e: S3Error(
        "InvalidRequest",
        "This multipart upload was started while encryption was off; start the upload again.",
    ),
    multipart.NoSuchUpload: lambda e: S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may"
        " have been aborted or completed.",
        UploadId=str(e),
    ),
    multipart.InvalidPart: lambda e: S3Error("InvalidPart", str(e)),
    multipart.InvalidPartOrder: lambda e: S3Error("InvalidPartOrder", str(e)),
    multipart.EntityTooSmall: lambda e: S3Error(
        "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size."
    ),
    PreconditionFailed: lambda e: _precondition_failed(cast(PreconditionFailed, e)),
    TooManyUploads: lambda e: S3Error(
        "SlowDown", "Too many multipart uploads in progress for this bucket; try again later."
    ),
    BackendError: lambda e: S3Error(
        "ServiceUnavailable", "A storage backend failed; try again later."
    ),
}


def _precondition_failed(error: PreconditionFailed) -> S3Error:
    if error.missing:
        return S3Error("NoSuchKey", "The specified key does not exist.")
    return S3Error(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        Condition=error.condition,
    )


def _translate(error: Exception) -> S3Error:
    for kind, make in _CORE_ERRORS.items():
        if isinstance(error, kind):
            return make(error)
    return S3Error("InternalError", "We encountered an internal error. Please try again.")
