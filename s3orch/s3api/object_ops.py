"""Object operations: GetObject, HeadObject, PutObject, DeleteObject, and request bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from attrs import frozen

from s3orch.objects.errors import Unavailable
from s3orch.s3api import checksums, conditions
from s3orch.s3api import headers as object_headers
from s3orch.s3api.body import STREAMING_PREFIX, RequestBody
from s3orch.s3api.errors import S3Error
from s3orch.s3api.ranges import parse_range
from s3orch.s3api.replies import not_implemented
from s3orch.s3api.request import set_metadata_header
from s3orch.s3api.streaming import write_body
from s3orch.store.records import ObjectVersion, Precondition

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


@frozen
class IncomingBody:
    """A request's payload, checked as it is read, with what the core needs to verify it."""

    chunks: AsyncIterator[bytes]
    size: int
    content_md5: bytes | None
    body_md5: Callable[[], bytes | None] | None
    checksum_headers: Callable[[], dict[str, str]]


def incoming_body(ctx: S3Context, call: Call, max_size: int) -> IncomingBody:
    """The body of a PutObject or UploadPart, or the S3Error AWS answers for it."""
    headers = call.headers
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
    if call.request.body_too_large or size > max_size:
        raise S3Error(
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
            ProposedSize=str(size),
            MaxSizeAllowed=str(max_size),
        )
    md5 = object_headers.content_md5(headers)
    spool = call.request.spool
    assert spool is not None
    body = RequestBody(spool, auth, decoded_length, checksums.requested(headers))
    return IncomingBody(
        body.chunks(), size, md5, None if streaming else body.md5, body.checksum_headers
    )


async def put_object(ctx: S3Context, call: Call) -> None:
    early = call.request.early_upload
    version = await early if early is not None else await begin_put(ctx, call)
    call.request.setHeader(b"ETag", f'"{version.etag}"'.encode())
    for name, value in checksums.stored_checksum(version.headers).items():
        call.request.setHeader(name.encode(), value.encode())


async def begin_put(ctx: S3Context, call: Call) -> ObjectVersion:
    """Check a PutObject, then store it (S3Error before any byte moves if it is wrong)."""
    assert call.key is not None
    headers = call.headers
    precondition = write_precondition(headers)
    body = incoming_body(ctx, call, ctx.max_object_size)
    metadata = object_headers.user_metadata(headers)
    stored = object_headers.stored_headers(headers)
    content_type = headers.get("content-type") or object_headers.DEFAULT_CONTENT_TYPE
    return await ctx.orchestrator.put(
        call.bucket,
        call.key,
        body.chunks,
        body.size,
        content_type,
        metadata,
        stored,
        content_md5=body.content_md5,
        body_md5=body.body_md5,
        body_headers=body.checksum_headers,
        precondition=precondition,
    )


def write_precondition(headers: Mapping[str, str]) -> Precondition | None:
    """The conditional-write headers of a PUT: ``If-None-Match: *`` and ``If-Match``."""
    none_match = headers.get("if-none-match")
    match = headers.get("if-match")
    if none_match is None and match is None:
        return None
    if none_match is not None and none_match.strip() != "*":
        raise not_implemented("If-None-Match with a value other than '*'")
    etag = match.strip().removeprefix("W/").strip('"') if match is not None else None
    return Precondition(absent=none_match is not None, etag=etag)


async def delete_object(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    await ctx.orchestrator.delete(call.bucket, call.key)
    call.request.setResponseCode(204)


async def get_object(ctx: S3Context, call: Call) -> None:
    """GetObject and HeadObject: conditions, ranges, headers, then the streamed body."""
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
    with_checksum = span is None and call.headers.get("x-amz-checksum-mode") == "ENABLED"
    for name, value in object_headers.object_headers(version, with_checksum).items():
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
