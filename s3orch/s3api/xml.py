"""The XML documents S3 answers with, built as text (they are small and regular)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import quote
from xml.sax.saxutils import escape

from s3orch.objects.listing import ListPage

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
