"""Conditional requests (If-Match and friends), evaluated in RFC 7232 order as S3 does."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping

from s3orch.s3api.errors import S3Error


class NotModified(Exception):
    """The client's copy is current: answer 304 with no body."""


def _etags(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/").strip('"') for tag in value.split(",") if tag.strip()]


def _matches(value: str, etag: str) -> bool:
    tags = _etags(value)
    return "*" in tags or etag in tags


def _date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _precondition_failed(condition: str) -> S3Error:
    return S3Error(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        Condition=condition,
    )


def check_read(headers: Mapping[str, str], etag: str, last_modified: float) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) for a GET or HEAD.

    If-Match decides alone when present (If-Unmodified-Since is then ignored);
    likewise If-None-Match over If-Modified-Since. Dates compare at whole
    seconds, as Last-Modified is sent; unparseable dates are ignored.
    """
    modified = int(last_modified)
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag):
            raise _precondition_failed("If-Match")
    else:
        since = headers.get("if-unmodified-since")
        when = _date(since) if since is not None else None
        if when is not None and modified > when:
            raise _precondition_failed("If-Unmodified-Since")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag):
            raise NotModified()
    else:
        since = headers.get("if-modified-since")
        when = _date(since) if since is not None else None
        if when is not None and modified <= when:
            raise NotModified()


def check_copy_source(headers: Mapping[str, str], etag: str, last_modified: float) -> None:
    """The x-amz-copy-source-if-* conditions of a copy; any that fails is 412.

    As for reads, a present if-match decides over if-unmodified-since and a
    present if-none-match over if-modified-since.
    """
    prefix = "x-amz-copy-source-"
    try:
        check_read(
            {k[len(prefix) :]: v for k, v in headers.items() if k.startswith(prefix)},
            etag,
            last_modified,
        )
    except NotModified:
        raise _precondition_failed("x-amz-copy-source-If-None-Match") from None
