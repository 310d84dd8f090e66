"""Multipart operations: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from s3orch.objects.listing import common_prefix
from s3orch.objects.multipart import MAX_PART_NUMBER
from s3orch.s3api import copy_ops, xml
from s3orch.s3api import headers as object_headers
from s3orch.s3api.object_ops import incoming_body
from s3orch.s3api.replies import int_param, local_name, malformed_xml, request_xml, send
from s3orch.store.records import Part, Upload

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

# AWS's limits: 5 GiB a part, 1000 entries a listing page.
MAX_PART_SIZE = 5 * 1024**3
MAX_PAGE = 1000
# A Complete request lists at most 10,000 parts: ~1 MiB of XML at most.
MAX_COMPLETE_XML = 2 * 1024 * 1024


async def create(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    headers = call.headers
    upload = await ctx.multipart.create(
        call.bucket,
        call.key,
        headers.get("content-type") or object_headers.DEFAULT_CONTENT_TYPE,
        object_headers.user_metadata(headers),
        object_headers.stored_headers(headers),
    )
    send(call, xml.initiate_multipart(call.bucket, call.key, upload.upload_id))


def _part_number(call: Call) -> int:
    return int_param(
        call,
        "partNumber",
        0,
        1,
        MAX_PART_NUMBER,
        "Part number must be an integer between 1 and 10000, inclusive",
    )


async def upload_part(ctx: S3Context, call: Call) -> None:
    if "x-amz-copy-source" in call.headers:
        await copy_ops.upload_part_copy(ctx, call, _part_number(call))
        return
    early = call.request.early_upload
    part, checksum = await early if early is not None else await begin_upload_part(ctx, call)
    call.request.setHeader(b"ETag", f'"{part.etag}"'.encode())
    for name, value in checksum.items():
        call.request.setHeader(name.encode(), value.encode())


async def begin_upload_part(ctx: S3Context, call: Call) -> tuple[Part, dict[str, str]]:
    """Check and store one part; returns it with its verified checksum header, if any."""
    assert call.key is not None
    number = _part_number(call)
    body = incoming_body(ctx, call, MAX_PART_SIZE)
    part = await ctx.multipart.upload_part(
        call.bucket,
        call.key,
        call.query["uploadId"],
        number,
        body.chunks,
        body.size,
        body.content_md5,
        body.body_md5,
    )
    return part, body.checksum_headers()


async def complete(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    requested = await _requested_parts(call)
    version = await ctx.multipart.complete(call.bucket, call.key, call.query["uploadId"], requested)
    location = f"/{call.bucket}/{call.key}"
    send(call, xml.complete_multipart(location, call.bucket, call.key, version.etag))


async def _requested_parts(call: Call) -> list[tuple[int, str]]:
    root = await request_xml(call, MAX_COMPLETE_XML)
    if local_name(root.tag) != "CompleteMultipartUpload":
        raise malformed_xml()
    parts: list[tuple[int, str]] = []
    for element in root:
        if local_name(element.tag) != "Part":
            continue
        fields = {local_name(child.tag): (child.text or "").strip() for child in element}
        number, etag = fields.get("PartNumber", ""), fields.get("ETag")
        if not number.isdigit() or etag is None:
            raise malformed_xml()
        parts.append((int(number), etag))
    if not parts:
        raise malformed_xml()
    return parts


async def abort(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    await ctx.multipart.abort(call.bucket, call.key, call.query["uploadId"])
    call.request.setResponseCode(204)


async def list_parts(ctx: S3Context, call: Call) -> None:
    assert call.key is not None
    upload = await ctx.multipart.find(call.bucket, call.key, call.query["uploadId"])
    max_parts = min(
        int_param(call, "max-parts", MAX_PAGE, 0, 2**31 - 1, "Invalid max-parts"), MAX_PAGE
    )
    marker = int_param(call, "part-number-marker", 0, 0, 2**31 - 1, "Invalid part-number-marker")
    parts = await ctx.multipart.store.list_parts(upload.upload_id, marker, max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    send(call, xml.list_parts(upload, parts, marker, max_parts, truncated))


async def list_uploads(ctx: S3Context, call: Call) -> None:
    """ListMultipartUploads, rolled up at the delimiter like ListObjects."""
    prefix = call.query.get("prefix", "")
    delimiter = call.query.get("delimiter", "")
    key_marker = call.query.get("key-marker", "")
    id_marker = call.query.get("upload-id-marker", "") if key_marker else ""
    max_uploads = min(
        int_param(call, "max-uploads", MAX_PAGE, 0, 2**31 - 1, "Invalid max-uploads"), MAX_PAGE
    )
    url_encode = call.query.get("encoding-type") == "url"
    store = ctx.multipart.store
    uploads: list[Upload] = []
    prefixes: list[str] = []
    truncated = False
    after_key, after_id = key_marker, id_marker
    while len(uploads) + len(prefixes) <= max_uploads:
        batch = await store.list_uploads(call.bucket, prefix, after_key, after_id, MAX_PAGE)
        if not batch:
            break
        for upload in batch:
            after_key, after_id = upload.key, upload.upload_id
            rolled = common_prefix(upload.key, prefix, delimiter)
            if rolled is not None and (rolled in prefixes or rolled == key_marker):
                continue
            if len(uploads) + len(prefixes) == max_uploads:
                truncated = True
                break
            if rolled is None:
                uploads.append(upload)
            else:
                prefixes.append(rolled)
        if truncated or len(batch) < MAX_PAGE:
            break
    body = xml.list_uploads(
        call.bucket,
        uploads,
        prefixes,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker,
        upload_id_marker=id_marker,
        max_uploads=max_uploads,
        truncated=truncated,
        url_encode=url_encode,
    )
    send(call, body)
