"""The Range header, parsed the way S3 reads it."""

from __future__ import annotations

import re

from s3orch.s3api.errors import S3Error

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span to serve, or None to serve the whole object.

    Like S3: a header that is not one well-formed byte range is ignored (200
    with the whole object); a well-formed range that starts past the end is
    416 InvalidRange; an end past the object is clamped.
    """
    if header is None:
        return None
    match = _SINGLE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        ActualObjectSize=str(size),
    )
