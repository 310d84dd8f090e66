"""CopyObject and UploadPartCopy: bytes of one stored version, streamed into a new write.

The source version is read once, with its copies, from one snapshot of the
metadata; its bytes come only from those copies, so a copy never mixes the
bytes of one version with the metadata of another. If the source is
overwritten meanwhile, the read fails rather than serving other bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

from s3orch.s3api import conditions, xml
from s3orch.s3api import headers as object_headers
from s3orch.s3api.errors import S3Error
from s3orch.s3api.object_ops import write_precondition
from s3orch.s3api.replies import send
from s3orch.store.records import ObjectVersion
from s3orch.streams import empty

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

# AWS: CopyObject copies at most 5 GiB; larger objects are copied with UploadPartCopy.
MAX_COPY_SIZE = 5 * 1024**3
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


async def _source(ctx: S3Context, call: Call) -> ObjectVersion:
    """The version named by x-amz-copy-source, if the caller may read it and it qualifies."""
    raw = call.headers["x-amz-copy-source"]
    path, _, query = raw.partition("?")
    if query:
        name, _, value = query.partition("=")
        if name != "versionId" or value != "null":
            raise S3Error(
                "InvalidArgument",
                "s3orch buckets are not versioned: x-amz-copy-source cannot name a version",
                ArgumentName="x-amz-copy-source",
            )
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
        )
    if bucket not in call.principal.buckets:
        if any(b.name == bucket for b in ctx.buckets):
            raise S3Error("AccessDenied", "Access Denied")
        raise S3Error("NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
    source = await ctx.orchestrator.head(bucket, key)
    conditions.check_copy_source(call.headers, source.etag, source.created_at)
    return source


async def _bytes_of(
    ctx: S3Context, source: ObjectVersion, start: int, end: int
) -> AsyncIterator[bytes]:
    if end < start:
        return empty()
    read = await ctx.orchestrator.open(source, start, end)
    return read.body


async def copy_object(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    source = await _source(ctx, call)
    headers = call.headers
    directive = headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error(
            "InvalidArgument",
            "Unknown metadata directive.",
            ArgumentName="x-amz-metadata-directive",
            ArgumentValue=directive,
        )
    if (source.bucket, source.key) == (call.bucket, call.key) and directive == "COPY":
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself"
            " without changing the object's metadata, storage class, website redirect location"
            " or encryption attributes.",
        )
    if source.size > MAX_COPY_SIZE:
        raise S3Error(
            "InvalidRequest",
            "The specified copy source is larger than the maximum allowable size for a copy"
            f" source: {MAX_COPY_SIZE}",
        )
    if directive == "REPLACE":
        content_type = headers.get("content-type") or object_headers.DEFAULT_CONTENT_TYPE
        metadata = object_headers.user_metadata(headers)
        stored = object_headers.stored_headers(headers)
    else:
        content_type, metadata, stored = source.content_type, source.metadata, source.headers
    body = await _bytes_of(ctx, source, 0, source.size - 1)
    version = await ctx.orchestrator.put(
        call.bucket,
        call.key,
        body,
        source.size,
        content_type,
        metadata,
        stored,
        precondition=write_precondition(headers),
    )
    send(call, xml.copy_result("CopyObjectResult", version.etag, version.created_at))


async def upload_part_copy(ctx: S3Context, call: Call, part_number: int) -> None:
    assert call.key is not None
    source = await _source(ctx, call)
    start, end = 0, source.size - 1
    wanted = call.headers.get("x-amz-copy-source-range")
    if wanted is not None:
        match = _RANGE.fullmatch(wanted.strip())
        if (
            match is None
            or int(match.group(1)) > int(match.group(2))
            or int(match.group(2)) >= source.size
        ):
            raise S3Error(
                "InvalidArgument",
                f"Range specified is not valid for source object of size: {source.size}",
                ArgumentName="x-amz-copy-source-range",
            )
        start, end = int(match.group(1)), int(match.group(2))
    if end - start + 1 > MAX_COPY_SIZE:
        raise S3Error("InvalidRequest", "A part copied from a source may be at most 5 GiB.")
    body = await _bytes_of(ctx, source, start, end)
    part = await ctx.multipart.upload_part(
        call.bucket, call.key, call.query["uploadId"], part_number, body, end - start + 1
    )
    send(call, xml.copy_result("CopyPartResult", part.etag, part.created_at))
