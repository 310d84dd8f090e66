"""The S3 operations: from a parsed, authenticated call to a finished response."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from s3orch.objects.errors import Unavailable
from s3orch.s3api import conditions, xml
from s3orch.s3api import headers as object_headers
from s3orch.s3api.body import STREAMING_PREFIX, RequestBody
from s3orch.s3api.errors import S3Error
from s3orch.s3api.ranges import parse_range
from s3orch.s3api.request import set_metadata_header
from s3orch.s3api.streaming import write_body
from s3orch.store.records import ObjectVersion

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

# Sub-resources S3 defines; any we do not serve is 501, never a plain GET or PUT.
SUBRESOURCES = frozenset(
    [
        "accelerate",
        "acl",
        "analytics",
        "attributes",
        "cors",
        "delete",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "partNumber",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "restore",
        "retention",
        "select",
        "select-type",
        "session",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    ]
)
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
MAX_LIST_KEYS = 1000


def _not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by s3orch yet.")


def _method_not_allowed(call: Call, resource_type: str) -> S3Error:
    return S3Error(
        "MethodNotAllowed",
        "The specified method is not allowed against this resource.",
        Method=call.method,
        ResourceType=resource_type,
    )


def _refuse_subresources(call: Call, allowed: frozenset[str] = frozenset()) -> None:
    for name in call.query:
        if name in SUBRESOURCES and name not in allowed:
            raise _not_implemented(f"The '{name}' sub-resource")


def _send(
    call: Call, body: bytes, status: int = 200, content_type: bytes = b"application/xml"
) -> None:
    request = call.request
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)


async def dispatch(ctx: S3Context, call: Call) -> None:
    if not call.bucket:
        if call.method != "GET":
            raise _method_not_allowed(call, "SERVICE")
        _refuse_subresources(call)
        names = [b.name for b in ctx.buckets if b.name in call.principal.buckets]
        _send(call, xml.list_buckets(names, ctx.started))
        return
    _check_bucket_access(ctx, call)
    if call.key is None:
        await _bucket_operation(ctx, call)
    else:
        await _object_operation(ctx, call)


def _check_bucket_access(ctx: S3Context, call: Call) -> None:
    if call.bucket in call.principal.buckets:
        return
    if call.method == "PUT" or any(b.name == call.bucket for b in ctx.buckets):
        raise S3Error("AccessDenied", "Access Denied")
    raise S3Error("NoSuchBucket", "The specified bucket does not exist", BucketName=call.bucket)


def early_put(ctx: S3Context, call: Call) -> Coroutine[Any, Any, ObjectVersion] | None:
    """The PutObject for ``call`` while its body is still arriving, or None if it is not one.

    Runs exactly the checks dispatch would, so an upload started early is one
    the request would have made anyway.
    """
    if not call.bucket or call.key is None or call.method != "PUT":
        return None
    if any(name in SUBRESOURCES for name in call.query):
        return None
    _check_bucket_access(ctx, call)
    return _begin_put(ctx, call)


async def _bucket_operation(ctx: S3Context, call: Call) -> None:
    if call.method == "HEAD":
        _refuse_subresources(call)
        call.request.setHeader(b"x-amz-bucket-region", b"us-east-1")
        return
    if call.method == "GET":
        _refuse_subresources(call, frozenset({"location", "versioning"}))
        if "location" in call.query:
            _send(call, xml.location())
        elif "versioning" in call.query:
            _send(call, xml.versioning())
        else:
            await _list_objects(ctx, call)
        return
    if call.method == "PUT":
        _refuse_subresources(call)
        # Buckets come from the configuration; creating your own again is a no-op, as in us-east-1.
        call.request.setHeader(b"Location", f"/{call.bucket}".encode())
        return
    if call.method == "DELETE":
        _refuse_subresources(call)
        raise _not_implemented("Deleting a bucket (buckets are defined in the configuration)")
    if call.method == "POST":
        _refuse_subresources(call)
    raise _method_not_allowed(call, "BUCKET")


def _max_keys(call: Call) -> int:
    raw = call.query.get("max-keys", str(MAX_LIST_KEYS))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0 or value > 2**31 - 1:
        raise S3Error(
            "InvalidArgument",
            "Provided max-keys not an integer or within integer range",
            ArgumentName="max-keys",
            ArgumentValue=raw,
        )
    return min(value, MAX_LIST_KEYS)


def _decode_token(token: str) -> str:
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise S3Error(
            "InvalidArgument",
            "The continuation token provided is incorrect",
            ArgumentName="continuation-token",
        ) from None


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode("ascii")


async def _list_objects(ctx: S3Context, call: Call) -> None:
    query = call.query
    encoding = query.get("encoding-type")
    if encoding is not None and encoding != "url":
        raise S3Error(
            "InvalidArgument",
            "Invalid Encoding Method specified in Request",
            ArgumentName="encoding-type",
            ArgumentValue=encoding,
        )
    list_type = query.get("list-type")
    if list_type is not None and list_type != "2":
        raise S3Error("InvalidArgument", "Invalid List Type specified in Request")
    v2 = list_type == "2"
    prefix = query.get("prefix", "")
    delimiter = query.get("delimiter", "")
    max_keys = _max_keys(call)
    token = query.get("continuation-token", "")
    if v2:
        start_after = query.get("start-after", "")
        after = _decode_token(token) if token else start_after
    else:
        start_after = ""
        after = query.get("marker", "")
    page = await ctx.orchestrator.list(call.bucket, prefix, delimiter, after, max_keys)
    next_token = ""
    if v2 and page.is_truncated and page.next_marker is not None:
        next_token = _encode_token(page.next_marker)
    body = xml.list_objects(
        call.bucket,
        page,
        v2=v2,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=max_keys,
        url_encode=encoding == "url",
        marker=after if not v2 else "",
        start_after=start_after,
        continuation_token=token,
        next_continuation_token=next_token,
        fetch_owner=query.get("fetch-owner") == "true",
    )
    _send(call, body)


async def _object_operation(ctx: S3Context, call: Call) -> None:
    version_id = call.query.get("versionId")
    if version_id is not None and version_id != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="versionId")
    allowed = frozenset({"versionId"})
    if call.method in ("GET", "HEAD"):
        _refuse_subresources(call, allowed)
        await _get_object(ctx, call)
    elif call.method == "PUT":
        _refuse_subresources(call)
        await _put_object(ctx, call)
    elif call.method == "DELETE":
        _refuse_subresources(call, allowed)
        assert call.key is not None
        await ctx.orchestrator.delete(call.bucket, call.key)
        call.request.setResponseCode(204)
    else:
        _refuse_subresources(call)
        raise _method_not_allowed(call, "OBJECT")


async def _get_object(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    request = call.request
    for attempt in (1, 2):
        version = await ctx.orchestrator.head(call.bucket, call.key)
        try:
            conditions.check_read(call.headers, version.etag, version.created_at)
        except conditions.NotModified:
            request.setResponseCode(304)
            request.setHeader(b"ETag", f'"{version.etag}"'.encode())
            request.setHeader(
                b"Last-Modified", object_headers.http_date(version.created_at).encode()
            )
            return
        span = parse_range(call.headers.get("range"), version.size)
        if call.method == "HEAD" or version.size == 0:
            read = None
            break
        start, end = span if span is not None else (0, version.size - 1)
        try:
            read = await ctx.orchestrator.open(version, start, end)
            break
        except Unavailable:
            # An overwrite may have replaced this version between lookup and read.
            if attempt == 2:
                raise
    for name, value in object_headers.object_headers(version).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1", "replace"))
    for name, value in version.metadata.items():
        set_metadata_header(request, name, value)
    for param, header in RESPONSE_OVERRIDES.items():
        if param in call.query:
            request.setHeader(header.encode(), call.query[param].encode("latin-1", "replace"))
    if span is not None:
        start, end = span
        request.setResponseCode(206)
        request.setHeader(b"Content-Range", f"bytes {start}-{end}/{version.size}".encode())
        request.setHeader(b"Content-Length", str(end - start + 1).encode())
    else:
        request.setHeader(b"Content-Length", str(version.size).encode())
    if read is not None:
        await write_body(request, read.body)


async def _put_object(ctx: S3Context, call: Call) -> None:
    early = call.request.early_upload
    version = await early if early is not None else await _begin_put(ctx, call)
    call.request.setHeader(b"ETag", f'"{version.etag}"'.encode())


def _begin_put(ctx: S3Context, call: Call) -> Coroutine[Any, Any, ObjectVersion]:
    """Check a PutObject and return the upload to run (S3Error if the request is wrong)."""
    assert call.key is not None
    headers = call.headers
    if "x-amz-copy-source" in headers:
        raise _not_implemented("CopyObject")
    if "if-none-match" in headers or "if-match" in headers:
        raise _not_implemented("Conditional PutObject")
    if "content-length" not in headers:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
    auth = call.principal.sigv4
    streaming = auth is not None and auth.payload_hash.startswith(STREAMING_PREFIX)
    decoded_length: int | None = None
    if streaming:
        raw = headers.get("x-amz-decoded-content-length")
        if raw is None or not raw.isdigit():
            raise S3Error(
                "MissingContentLength",
                "aws-chunked uploads must send x-amz-decoded-content-length.",
            )
        decoded_length = size = int(raw)
    else:
        size = int(headers["content-length"])
    if call.request.body_too_large or size > ctx.max_object_size:
        raise S3Error(
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
            ProposedSize=str(size),
            MaxSizeAllowed=str(ctx.max_object_size),
        )
    metadata = object_headers.user_metadata(headers)
    stored = object_headers.stored_headers(headers)
    md5 = object_headers.content_md5(headers)
    content_type = headers.get("content-type") or object_headers.DEFAULT_CONTENT_TYPE
    spool = call.request.spool
    assert spool is not None
    body = RequestBody(spool, auth, decoded_length)
    return ctx.orchestrator.put(
        call.bucket,
        call.key,
        body.chunks(),
        size,
        content_type,
        metadata,
        stored,
        content_md5=md5,
        body_md5=None if streaming else body.md5,
    )
