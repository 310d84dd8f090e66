"""What every S3 operation shares: answering, refusing, and the sub-resources S3 defines."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from s3orch.s3api.errors import S3Error
from s3orch.s3api.headers import content_md5

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call

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


def not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by s3orch yet.")


def method_not_allowed(call: Call, resource_type: str) -> S3Error:
    return S3Error(
        "MethodNotAllowed",
        "The specified method is not allowed against this resource.",
        Method=call.method,
        ResourceType=resource_type,
    )


def refuse_subresources(call: Call, allowed: frozenset[str] = frozenset()) -> None:
    for name in call.query:
        if name in SUBRESOURCES and name not in allowed:
            raise not_implemented(f"The '{name}' sub-resource")


def send(
    call: Call, body: bytes, status: int = 200, content_type: bytes = b"application/xml"
) -> None:
    """Answer with a complete body (the resource finishes the request)."""
    request = call.request
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)


def int_param(call: Call, name: str, default: int, low: int, high: int, message: str) -> int:
    """An integer query parameter within [low, high], else InvalidArgument."""
    raw = call.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise S3Error("InvalidArgument", message, ArgumentName=name, ArgumentValue=raw)
    return value


def malformed_xml() -> S3Error:
    return S3Error(
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema",
    )


def local_name(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rpartition("}")[2]


async def request_xml(call: Call, limit: int) -> Element:
    """The request body parsed safely (no entities, no DTDs), or MalformedXML."""
    spool = call.request.spool
    if spool is None or spool.written > limit or spool.written == 0:
        raise malformed_xml()
    text = await spool.read(0, spool.written)
    expected = content_md5(call.headers)
    if expected is not None and hashlib.md5(text, usedforsecurity=False).digest() != expected:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
    try:
        root: Element = SafeET.fromstring(text)
    except (SafeET.ParseError, DefusedXmlException, ValueError):
        raise malformed_xml() from None
    return root
