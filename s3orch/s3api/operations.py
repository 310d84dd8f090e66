"""Dispatch: from a parsed, authenticated call to the operation that answers it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from s3orch.s3api import copy_ops, delete_ops, multipart_ops, object_ops, xml
from s3orch.s3api.errors import S3Error
from s3orch.s3api.replies import (
    SUBRESOURCES,
    method_not_allowed,
    not_implemented,
    refuse_subresources,
    send,
)

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

MAX_LIST_KEYS = 1000
_UPLOAD = frozenset({"uploadId"})
_PART = frozenset({"uploadId", "partNumber"})


async def dispatch(ctx: S3Context, call: Call) -> None:
    if not call.bucket:
        if call.method != "GET":
            raise method_not_allowed(call, "SERVICE")
        refuse_subresources(call)
        names = [b.name for b in ctx.buckets if b.name in call.principal.buckets]
        send(call, xml.list_buckets(names, ctx.started))
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


def early_upload(ctx: S3Context, call: Call) -> Coroutine[Any, Any, object] | None:
    """The PutObject or UploadPart for ``call`` while its body is still arriving, or None.

    Runs exactly the checks dispatch would, so an upload started early is one
    the request would have made anyway.
    """
    if not call.bucket or call.key is None or call.method != "PUT":
        return None
    subresources = {name for name in call.query if name in SUBRESOURCES}
    if "x-amz-copy-source" in call.headers:
        return None
    if not subresources:
        _check_bucket_access(ctx, call)
        return object_ops.begin_put(ctx, call)
    if subresources == _PART:
        _check_bucket_access(ctx, call)
        return multipart_ops.begin_upload_part(ctx, call)
    return None


async def _bucket_operation(ctx: S3Context, call: Call) -> None:
    if call.method == "HEAD":
        refuse_subresources(call)
        call.request.setHeader(b"x-amz-bucket-region", b"us-east-1")
        return
    if call.method == "GET":
        refuse_subresources(call, frozenset({"location", "versioning", "uploads"}))
        if "location" in call.query:
            send(call, xml.location())
        elif "versioning" in call.query:
            send(call, xml.versioning())
        elif "uploads" in call.query:
            await multipart_ops.list_uploads(ctx, call)
        else:
            await _list_objects(ctx, call)
        return
    if call.method == "PUT":
        refuse_subresources(call)
        # Buckets come from the configuration; creating your own again is a no-op, as in us-east-1.
        call.request.setHeader(b"Location", f"/{call.bucket}".encode())
        return
    if call.method == "DELETE":
        refuse_subresources(call)
        raise not_implemented("Deleting a bucket (buckets are defined in the configuration)")
    if call.method == "POST" and "delete" in call.query:
        refuse_subresources(call, frozenset({"delete"}))
        await delete_ops.delete_objects(ctx, call)
        return
    if call.method == "POST":
        refuse_subresources(call)
    raise method_not_allowed(call, "BUCKET")


async def _object_operation(ctx: S3Context, call: Call) -> None:
    version_id = call.query.get("versionId")
    if version_id is not None and version_id != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="versionId")
    names = {name for name in call.query if name in SUBRESOURCES} - {"versionId"}
    method = call.method
    if method in ("GET", "HEAD") and names == _UPLOAD and method == "GET":
        await multipart_ops.list_parts(ctx, call)
    elif method in ("GET", "HEAD"):
        refuse_subresources(call, frozenset({"versionId"}))
        await object_ops.get_object(ctx, call)
    elif method == "PUT" and names == _PART:
        await multipart_ops.upload_part(ctx, call)
    elif method == "PUT" and "x-amz-copy-source" in call.headers:
        refuse_subresources(call)
        await copy_ops.copy_object(ctx, call)
    elif method == "PUT":
        refuse_subresources(call)
        await object_ops.put_object(ctx, call)
    elif method == "DELETE" and names == _UPLOAD:
        await multipart_ops.abort(ctx, call)
    elif method == "DELETE":
        refuse_subresources(call, frozenset({"versionId"}))
        await object_ops.delete_object(ctx, call)
    elif method == "POST" and names == {"uploads"}:
        await multipart_ops.create(ctx, call)
    elif method == "POST" and names == _UPLOAD:
        await multipart_ops.complete(ctx, call)
    else:
        refuse_subresources(call)
        raise method_not_allowed(call, "OBJECT")


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
    send(call, body)
