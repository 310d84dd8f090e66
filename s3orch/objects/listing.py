"""ListObjects paging with prefixes, delimiters and markers, over any sorted key source."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import frozen

from s3orch.store.records import ObjectVersion

# Greater than any character: a cursor of ``prefix + _MAX_CHAR`` skips (almost)
# every key under ``prefix`` in one index seek.
_MAX_CHAR = "\U0010ffff"

Fetch = Callable[[str, int], Awaitable[list[ObjectVersion]]]


@frozen
class ListPage:
    """One page of a listing, in key order; ``next_marker`` is the last entry returned."""

    contents: list[ObjectVersion]
    common_prefixes: list[str]
    is_truncated: bool
    next_marker: str | None


def common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    """The CommonPrefix ``key`` rolls up into, or None if it is listed itself."""
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    if at < 0:
        return None
    return key[: at + len(delimiter)]


def resume_cursor(marker: str, prefix: str, delimiter: str) -> str:
    """Where to resume after ``marker``; a marker that is a CommonPrefix skips its keys."""
    if (
        delimiter
        and marker.startswith(prefix)
        and common_prefix(marker, prefix, delimiter) == marker
    ):
        return marker + _MAX_CHAR
    return marker


async def list_page(
    fetch: Fetch, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> ListPage:
    """Collect up to ``max_keys`` keys and CommonPrefixes after ``start_after``.

    ``fetch(after, limit)`` returns up to ``limit`` versions whose keys start
    with ``prefix`` and sort after ``after``.
    """
    contents: list[ObjectVersion] = []
    prefixes: list[str] = []
    last: str | None = None
    cursor = resume_cursor(start_after, prefix, delimiter)
    if max_keys <= 0:
        return ListPage([], [], False, None)
    while True:
        requested = min(max_keys - len(contents) - len(prefixes) + 1, 1000)
        batch = await fetch(cursor, requested)
        if not batch:
            return ListPage(contents, prefixes, False, last)
        for version in batch:
            rolled = common_prefix(version.key, prefix, delimiter)
            if rolled is not None and rolled in (last, start_after):
                cursor = version.key  # a key past the skip cursor: still inside the prefix
                continue
            if len(contents) + len(prefixes) == max_keys:
                return ListPage(contents, prefixes, True, last)
            if rolled is None:
                contents.append(version)
                last = cursor = version.key
                continue
            prefixes.append(rolled)
            last = rolled
            cursor = rolled + _MAX_CHAR
            break
        else:
            if len(batch) < requested:
                return ListPage(contents, prefixes, False, last)
