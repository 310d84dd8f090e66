"""ListObjects paging over an in-memory sorted key list."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.objects.listing import ListPage, list_page
from s3orch.store.records import ObjectVersion


def _version(key: str) -> ObjectVersion:
    return ObjectVersion("b", key, "v", 1, "e", "t", 0.0)


def _fetcher(keys: list[str], prefix: str):  # type: ignore[no-untyped-def]
    ordered = sorted(set(keys), key=lambda k: k.encode())

    async def fetch(after: str, limit: int) -> list[ObjectVersion]:
        found = [k for k in ordered if k.startswith(prefix) and k.encode() > after.encode()]
        return [_version(k) for k in found[:limit]]

    return fetch


def _page(keys: list[str], prefix: str, delimiter: str, after: str, max_keys: int) -> ListPage:
    return asyncio.run(list_page(_fetcher(keys, prefix), prefix, delimiter, after, max_keys))


def _expected(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    """What S3 lists: keys and rolled-up prefixes, each once, in byte order."""
    entries = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        at = rest.find(delimiter) if delimiter else -1
        entries.add(prefix + rest[: at + len(delimiter)] if at >= 0 else key)
    return sorted(entries, key=lambda e: e.encode())


def _walk(keys: list[str], prefix: str, delimiter: str, max_keys: int) -> list[str]:
    seen: list[str] = []
    marker = ""
    for _ in range(10_000):
        page = _page(keys, prefix, delimiter, marker, max_keys)
        entries = [v.key for v in page.contents] + page.common_prefixes
        assert len(entries) <= max_keys
        seen += sorted(entries, key=lambda e: e.encode())
        if not page.is_truncated:
            return seen
        assert page.next_marker is not None
        marker = page.next_marker
    raise AssertionError("listing did not terminate")


def test_delimiter_rolls_up_directories() -> None:
    """Keys under a delimiter become one CommonPrefix each."""
    page = _page(["a", "d/1", "d/2", "e/f/g", "z"], "", "/", "", 1000)
    assert [v.key for v in page.contents] == ["a", "z"]
    assert page.common_prefixes == ["d/", "e/"]
    assert not page.is_truncated


def test_max_keys_zero_is_empty_and_not_truncated() -> None:
    """max-keys=0 returns nothing and is not truncated."""
    page = _page(["a", "b"], "", "", "", 0)
    assert page == ListPage([], [], False, None)


def test_marker_on_a_common_prefix_skips_it() -> None:
    """Resuming from a CommonPrefix marker does not list that prefix again."""
    page = _page(["a/1", "a/2", "b"], "", "/", "a/", 1000)
    assert page.common_prefixes == []
    assert [v.key for v in page.contents] == ["b"]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.text(alphabet="ab/\U0010ffffé", min_size=1, max_size=6), max_size=30),
    prefix=st.sampled_from(["", "a", "a/", "b"]),
    delimiter=st.sampled_from(["", "/", "b"]),
    max_keys=st.integers(min_value=1, max_value=5),
)
def test_paging_lists_every_entry_once(
    keys: list[str], prefix: str, delimiter: str, max_keys: int
) -> None:
    """Walking all pages yields exactly the entries S3 would list, each once, in order."""
    assert _walk(keys, prefix, delimiter, max_keys) == _expected(keys, prefix, delimiter)
