"""Object headers: what a PUT stores and what a GET or HEAD answers with."""

from __future__ import annotations

import base64
import binascii
import email.utils
from collections.abc import Mapping

from s3orch.s3api.errors import S3Error
from s3orch.store.records import ObjectVersion

META_PREFIX = "x-amz-meta-"
# AWS: user metadata (names and values, as sent) may total 2 KB.
MAX_METADATA_BYTES = 2048
# Headers stored with the object and returned on GET and HEAD.
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` pairs (names lowercased, prefix removed), size-checked."""
    metadata = {
        name[len(META_PREFIX) :]: value.strip()
        for name, value in headers.items()
        if name.startswith(META_PREFIX)
    }
    if "" in metadata:
        raise S3Error("InvalidArgument", "User metadata names must not be empty.")
    total = sum(len(name) + len(value) for name, value in metadata.items())
    if total > MAX_METADATA_BYTES:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size.",
            Size=str(total),
            MaxSizeAllowed=str(MAX_METADATA_BYTES),
        )
    return metadata


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The standard headers to store; the aws-chunked transfer coding is not one of them."""
    stored = {name: headers[name] for name in STORED_HEADERS if name in headers}
    encoding = stored.get("content-encoding")
    if encoding is not None:
        codings = [c.strip() for c in encoding.split(",") if c.strip().lower() != "aws-chunked"]
        if codings:
            stored["content-encoding"] = ", ".join(codings)
        else:
            del stored["content-encoding"]
    return stored


def content_md5(headers: Mapping[str, str]) -> bytes | None:
    """The decoded Content-MD5, or None; malformed values are InvalidDigest."""
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


def http_date(seconds: float) -> str:
    return email.utils.formatdate(int(seconds), usegmt=True)


def object_headers(version: ObjectVersion, with_checksum: bool = False) -> dict[str, str]:
    """Response headers describing ``version`` (Content-Length and user metadata excluded).

    The stored additional checksum is included only when asked for.
    """
    headers = {
        "ETag": f'"{version.etag}"',
        "Last-Modified": http_date(version.created_at),
        "Content-Type": version.content_type,
        "Accept-Ranges": "bytes",
    }
    for name, value in version.headers.items():
        if name.startswith("x-amz-checksum-"):
            if with_checksum:
                headers[name] = value
            continue
        headers["-".join(part.capitalize() for part in name.split("-"))] = value
    return headers
