"""The XML documents S3 answers with, built as text (they are small and regular)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import quote
from xml.sax.saxutils import escape

from s3orch.objects.listing import ListPage
from s3orch.store.records import Part, Upload

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
OWNER_ID = "s3orch"


def iso8601(seconds: float) -> str:
    """S3's XML timestamp form, with milliseconds."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>"


def _document(root: str, body: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NAMESPACE}">{body}</{root}>'
    ).encode()


def _owner() -> str:
    return f"<Owner>{_element('ID', OWNER_ID)}{_element('DisplayName', OWNER_ID)}</Owner>"


def list_buckets(names: Sequence[str], created: float) -> bytes:
    buckets = "".join(
        f"<Bucket>{_element('Name', name)}{_element('CreationDate', iso8601(created))}</Bucket>"
        for name in names
    )
    return _document("ListAllMyBucketsResult", f"{_owner()}<Buckets>{buckets}</Buckets>")


def location() -> bytes:
    """An empty LocationConstraint: the bucket is in us-east-1."""
    return _document("LocationConstraint", "")


def versioning() -> bytes:
    return _document("VersioningConfiguration", "")


def list_objects(
    bucket: str,
    page: ListPage,
    *,
    v2: bool,
    prefix: str,
    delimiter: str,
    max_keys: int,
    url_encode: bool,
    marker: str = "",
    start_after: str = "",
    continuation_token: str = "",
    next_continuation_token: str = "",
    fetch_owner: bool = False,
) -> bytes:
    """ListBucketResult for ListObjects (v1) or ListObjectsV2."""

    def enc(value: str) -> str:
        return quote(value, safe="/") if url_encode else value

    parts = [_element("Name", bucket), _element("Prefix", enc(prefix))]
    if v2:
        if start_after:
            parts.append(_element("StartAfter", enc(start_after)))
        if continuation_token:
            parts.append(_element("ContinuationToken", continuation_token))
        if next_continuation_token:
            parts.append(_element("NextContinuationToken", next_continuation_token))
        parts.append(_element("KeyCount", str(len(page.contents) + len(page.common_prefixes))))
    else:
        parts.append(_element("Marker", enc(marker)))
        if page.is_truncated and page.next_marker is not None:
            parts.append(_element("NextMarker", enc(page.next_marker)))
    parts.append(_element("MaxKeys", str(max_keys)))
    if delimiter:
        parts.append(_element("Delimiter", enc(delimiter)))
    if url_encode:
        parts.append(_element("EncodingType", "url"))
    parts.append(_element("IsTruncated", "true" if page.is_truncated else "false"))
    owner = _owner() if fetch_owner or not v2 else ""
    for version in page.contents:
        parts.append(
            "<Contents>"
            + _element("Key", enc(version.key))
            + _element("LastModified", iso8601(version.created_at))
            + _element("ETag", f'"{version.etag}"')
            + _element("Size", str(version.size))
            + owner
            + _element("StorageClass", "STANDARD")
            + "</Contents>"
        )
    for common in page.common_prefixes:
        parts.append(f"<CommonPrefixes>{_element('Prefix', enc(common))}</CommonPrefixes>")
    return _document("ListBucketResult", "".join(parts))


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    body = _element("Bucket", bucket) + _element("Key", key) + _element("UploadId", upload_id)
    return _document("InitiateMultipartUploadResult", body)


def complete_multipart(location: str, bucket: str, key: str, etag: str) -> bytes:
    body = (
        _element("Location", location)
        + _element("Bucket", bucket)
        + _element("Key", key)
        + _element("ETag", f'"{etag}"')
    )
    return _document("CompleteMultipartUploadResult", body)


def _initiator() -> str:
    return f"<Initiator>{_element('ID', OWNER_ID)}{_element('DisplayName', OWNER_ID)}</Initiator>"


def list_parts(
    upload: Upload, parts: Sequence[Part], marker: int, max_parts: int, truncated: bool
) -> bytes:
    items = "".join(
        "<Part>"
        + _element("PartNumber", str(p.part_number))
        + _element("LastModified", iso8601(p.created_at))
        + _element("ETag", f'"{p.etag}"')
        + _element("Size", str(p.size))
        + "</Part>"
        for p in parts
    )
    next_marker = parts[-1].part_number if parts else marker
    body = (
        _element("Bucket", upload.bucket)
        + _element("Key", upload.key)
        + _element("UploadId", upload.upload_id)
        + _initiator()
        + _owner()
        + _element("StorageClass", "STANDARD")
        + _element("PartNumberMarker", str(marker))
        + _element("NextPartNumberMarker", str(next_marker))
        + _element("MaxParts", str(max_parts))
        + _element("IsTruncated", "true" if truncated else "false")
        + items
    )
    return _document("ListPartsResult", body)


def list_uploads(
    bucket: str,
    uploads: Sequence[Upload],
    prefixes: Sequence[str],
    *,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
    truncated: bool,
    url_encode: bool,
) -> bytes:
    def enc(value: str) -> str:
        return quote(value, safe="/") if url_encode else value

    parts = [
        _element("Bucket", bucket),
        _element("KeyMarker", enc(key_marker)),
        _element("UploadIdMarker", upload_id_marker),
    ]
    if truncated:
        last_upload = uploads[-1] if uploads else None
        last_prefix = prefixes[-1] if prefixes else None
        if last_prefix is not None and (last_upload is None or last_prefix > last_upload.key):
            parts += [_element("NextKeyMarker", enc(last_prefix)), "<NextUploadIdMarker/>"]
        elif last_upload is not None:
            parts += [
                _element("NextKeyMarker", enc(last_upload.key)),
                _element("NextUploadIdMarker", last_upload.upload_id),
            ]
    parts.append(_element("Prefix", enc(prefix)))
    if delimiter:
        parts.append(_element("Delimiter", enc(delimiter)))
    parts.append(_element("MaxUploads", str(max_uploads)))
    if url_encode:
        parts.append(_element("EncodingType", "url"))
    parts.append(_element("IsTruncated", "true" if truncated else "false"))
    for upload in uploads:
        parts.append(
            "<Upload>"
            + _element("Key", enc(upload.key))
            + _element("UploadId", upload.upload_id)
            + _initiator()
            + _owner()
            + _element("StorageClass", "STANDARD")
            + _element("Initiated", iso8601(upload.created_at))
            + "</Upload>"
        )
    for common in prefixes:
        parts.append(f"<CommonPrefixes>{_element('Prefix', enc(common))}</CommonPrefixes>")
    return _document("ListMultipartUploadsResult", "".join(parts))


def copy_result(root: str, etag: str, modified: float) -> bytes:
    """CopyObjectResult or CopyPartResult."""
    body = _element("LastModified", iso8601(modified)) + _element("ETag", f'"{etag}"')
    return _document(root, body)


def delete_result(deleted: Sequence[str], errors: Sequence[tuple[str, str, str]]) -> bytes:
    """DeleteResult: one Deleted per key removed, one Error per key that failed."""
    body = "".join(f"<Deleted>{_element('Key', key)}</Deleted>" for key in deleted)
    for key, code, message in errors:
        fields = _element("Key", key) + _element("Code", code) + _element("Message", message)
        body += f"<Error>{fields}</Error>"
    return _document("DeleteResult", body)
