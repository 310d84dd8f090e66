"""Range parsing and conditional request evaluation, as S3 does them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3orch.s3api.conditions import NotModified, check_read
from s3orch.s3api.errors import S3Error
from s3orch.s3api.ranges import parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=8-100", 10, (8, 9)),
        ("bytes=5-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("items=0-1", 10, None),
        ("bytes=x-1", 10, None),
        (None, 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    """Well-formed single ranges resolve; anything else serves the whole object."""
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-0", 0)]
)
def test_unsatisfiable(header: str, size: int) -> None:
    """Ranges starting at or past the end are 416 InvalidRange."""
    with pytest.raises(S3Error) as excinfo:
        parse_range(header, size)
    assert (excinfo.value.code, excinfo.value.status) == ("InvalidRange", 416)


@given(size=st.integers(1, 10**12), a=st.integers(0, 10**12), b=st.integers(0, 10**12))
def test_resolved_span_is_inside_object(size: int, a: int, b: int) -> None:
    """Any resolved span lies within the object and is non-empty."""
    try:
        span = parse_range(f"bytes={a}-{b}", size)
    except S3Error:
        assert a >= size
        return
    if span is not None:
        assert 0 <= span[0] <= span[1] < size


ETAG = "abc"
LAST = 1_700_000_000.5
BEFORE = "Mon, 13 Nov 2023 22:13:19 GMT"  # one second before LAST
AT = "Tue, 14 Nov 2023 22:13:20 GMT"
AFTER = "Wed, 15 Nov 2023 22:13:21 GMT"


def _outcome(headers: dict[str, str]) -> int:
    try:
        check_read(headers, ETAG, LAST)
    except NotModified:
        return 304
    except S3Error as e:
        return e.status
    return 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"if-match": '"abc"'}, 200),
        ({"if-match": '"zzz"'}, 412),
        ({"if-match": "*"}, 200),
        ({"if-none-match": '"abc"'}, 304),
        ({"if-none-match": '"zzz"'}, 200),
        ({"if-modified-since": AFTER}, 304),
        ({"if-modified-since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200),
        ({"if-unmodified-since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 412),
        ({"if-match": '"abc"', "if-unmodified-since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200),
        ({"if-none-match": '"zzz"', "if-modified-since": AFTER}, 200),
        ({"if-match": '"zzz"', "if-none-match": '"abc"'}, 412),
        ({"if-modified-since": "not a date"}, 200),
    ],
)
def test_condition_precedence(headers: dict[str, str], status: int) -> None:
    """If-Match beats If-Unmodified-Since, If-None-Match beats If-Modified-Since (RFC 7232)."""
    assert _outcome(headers) == status
