"""The IBackend contract, run against every implementation (local directory, S3 on moto)."""

from __future__ import annotations

import hashlib
import random
import re

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from s3orch.backends.interface import (
    BackendError,
    BackendNotFound,
    BackendObject,
    BackendUploadNotFound,
    IBackend,
)
from s3orch.testing.sources import ScriptedSource
from tests.backends.sources import (
    EDGE_KEYS,
    MiB,
    SourceFailed,
    chunks_of,
    failing_after,
    generated,
)

# S3 (and moto) refuse parts under 5 MiB, except the last, at Complete.
PART = 5 * MiB


async def read(backend: IBackend, key: str, start: int = 0, end: int | None = None) -> bytes:
    opened = await backend.get(key, start, end)
    data = b"".join([chunk async for chunk in opened.body])
    assert len(data) == opened.length
    return data


async def listed(backend: IBackend, prefix: str = "") -> list[BackendObject]:
    return [item async for item in backend.list(prefix)]


async def assert_absent(backend: IBackend, key: str) -> None:
    assert await backend.head(key) is None
    with pytest.raises(BackendNotFound):
        await backend.get(key)


@pytest_twisted.ensureDeferred
async def test_put_then_get_returns_the_bytes(backend: IBackend) -> None:
    """What is put comes back byte for byte, with its size."""
    data = b"hello, backend"
    await backend.put("k", chunks_of(data, 4), len(data))
    opened = await backend.get("k")
    assert (opened.start, opened.length, opened.total_size) == (0, len(data), len(data))
    assert b"".join([c async for c in opened.body]) == data


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 0, b"0"), (3, 6, b"3456"), (5, None, b"56789"), (0, None, b"0123456789"), (9, 9, b"9")],
)
@pytest_twisted.ensureDeferred
async def test_get_range(backend: IBackend, start: int, end: int | None, expected: bytes) -> None:
    """A range read returns exactly bytes start..end inclusive, and says where it starts."""
    await backend.put("r", chunks_of(b"0123456789"), 10)
    opened = await backend.get("r", start, end)
    assert (opened.start, opened.length, opened.total_size) == (start, len(expected), 10)
    assert b"".join([c async for c in opened.body]) == expected


@pytest_twisted.ensureDeferred
async def test_get_range_past_the_end_is_clamped(backend: IBackend) -> None:
    """An end beyond the object stops at its last byte."""
    await backend.put("r", chunks_of(b"0123456789"), 10)
    assert await read(backend, "r", 7, 1000) == b"789"


@pytest_twisted.ensureDeferred
async def test_get_range_starting_past_the_end_fails(backend: IBackend) -> None:
    """A range that starts after the last byte is a BackendError (not a silent empty read)."""
    await backend.put("r", chunks_of(b"0123456789"), 10)
    with pytest.raises(BackendError):
        await backend.get("r", 10, None)


@pytest_twisted.ensureDeferred
async def test_empty_object(backend: IBackend) -> None:
    """A zero-byte object can be stored, described and read."""
    await backend.put("empty", chunks_of(b""), 0)
    head = await backend.head("empty")
    assert head is not None and head.size == 0
    assert await read(backend, "empty") == b""


@pytest_twisted.ensureDeferred
async def test_head_describes_an_object_and_misses_cleanly(backend: IBackend) -> None:
    """head() gives key and size of an object, None for a missing key."""
    await backend.put("h", chunks_of(b"12345"), 5)
    head = await backend.head("h")
    assert head is not None and (head.key, head.size) == ("h", 5)
    assert await backend.head("nope") is None


@pytest_twisted.ensureDeferred
async def test_get_missing_key_raises_not_found(backend: IBackend) -> None:
    """Reading a key that was never stored raises BackendNotFound."""
    with pytest.raises(BackendNotFound):
        await backend.get("never/stored")


@pytest_twisted.ensureDeferred
async def test_delete_removes_and_is_idempotent(backend: IBackend) -> None:
    """delete() removes the object; deleting again, or a key never stored, succeeds."""
    await backend.put("d/x", chunks_of(b"x"), 1)
    await backend.delete("d/x")
    await assert_absent(backend, "d/x")
    await backend.delete("d/x")
    await backend.delete("never/stored")


@pytest_twisted.ensureDeferred
async def test_put_overwrites(backend: IBackend) -> None:
    """A second put under the same key replaces the first."""
    await backend.put("o", chunks_of(b"first version"), 13)
    await backend.put("o", chunks_of(b"second"), 6)
    assert await read(backend, "o") == b"second"


@pytest_twisted.ensureDeferred
async def test_list_yields_keys_in_order_filtered_by_prefix(backend: IBackend) -> None:
    """list() yields every object under a prefix, in (UTF-8 byte) key order, with sizes."""
    keys = ["b/2", "a/1", "a-z", "a/0/deep", "b/10", "c", "a", "é", "z"]
    for key in keys:
        await backend.put(key, chunks_of(key.encode()), len(key.encode()))
    everything = await listed(backend)
    assert [o.key for o in everything] == sorted(keys, key=lambda k: k.encode())
    assert all(o.size == len(o.key.encode()) for o in everything)
    assert [o.key for o in await listed(backend, "a/")] == ["a/0/deep", "a/1"]
    assert [o.key for o in await listed(backend, "a")] == ["a", "a-z", "a/0/deep", "a/1"]
    assert [o.key for o in await listed(backend, "b/1")] == ["b/10"]
    assert await listed(backend, "nothing-here") == []


@pytest_twisted.ensureDeferred
async def test_list_of_an_empty_backend_is_empty(backend: IBackend) -> None:
    """A backend with nothing stored lists nothing."""
    assert await listed(backend) == []


@pytest_twisted.ensureDeferred
async def test_edge_case_keys_round_trip(backend: IBackend) -> None:
    """Hostile and unusual keys store, read, describe, list and delete as themselves."""
    for i, key in enumerate(EDGE_KEYS):
        data = f"{i}:".encode() + key.encode()
        await backend.put(key, chunks_of(data), len(data))
    for i, key in enumerate(EDGE_KEYS):
        data = f"{i}:".encode() + key.encode()
        assert await read(backend, key) == data, key
        head = await backend.head(key)
        assert head is not None and head.size == len(data), key
    assert [o.key for o in await listed(backend)] == sorted(EDGE_KEYS, key=lambda k: k.encode())
    assert [o.key for o in await listed(backend, "dir")] == ["dir", "dir+", "dir/child", "dir="]
    for key in EDGE_KEYS:
        await backend.delete(key)
    assert await listed(backend) == []


@pytest_twisted.ensureDeferred
async def test_source_failing_half_way_stores_nothing(backend: IBackend) -> None:
    """If the body source raises, its own error propagates and no object is left."""
    data = b"x" * (3 * MiB)
    with pytest.raises(SourceFailed):
        await backend.put("half", failing_after(data, MiB), len(data))
    await assert_absent(backend, "half")
    assert await listed(backend) == []


@pytest_twisted.ensureDeferred
async def test_failed_overwrite_keeps_the_previous_object(backend: IBackend) -> None:
    """A put that fails leaves the object it would have replaced untouched."""
    await backend.put("keep", chunks_of(b"original"), 8)
    with pytest.raises(SourceFailed):
        await backend.put("keep", failing_after(b"replacement", 4), 11)
    assert await read(backend, "keep") == b"original"


@pytest_twisted.ensureDeferred
async def test_source_failing_after_its_last_byte_stores_nothing(backend: IBackend) -> None:
    """A source that yields every byte and then raises (a late digest check) stores nothing."""
    with pytest.raises(SourceFailed):
        await backend.put("late", failing_after(b"complete", 8), 8)
    await assert_absent(backend, "late")


@pytest_twisted.ensureDeferred
async def test_short_source_stores_nothing(backend: IBackend) -> None:
    """A source that yields fewer bytes than declared fails with BackendError, storing nothing."""
    with pytest.raises(BackendError):
        await backend.put("short", chunks_of(b"x" * 1000), 2000)
    await assert_absent(backend, "short")


@pytest_twisted.ensureDeferred
async def test_long_source_stores_nothing(backend: IBackend) -> None:
    """A source that yields more bytes than declared fails with BackendError, storing nothing."""
    with pytest.raises(BackendError):
        await backend.put("long", chunks_of(b"x" * 2000), 1000)
    await assert_absent(backend, "long")


@pytest_twisted.ensureDeferred
async def test_large_object_streams_in_bounded_chunks(backend: IBackend) -> None:
    """A 6 MiB object goes in and comes out as a stream of chunks, never as one buffer."""
    size = 6 * MiB + 123
    expected = hashlib.sha256()
    async for piece in generated(size):
        expected.update(piece)
    await backend.put("big", generated(size), size)
    opened = await backend.get("big")
    assert opened.length == size
    digest = hashlib.sha256()
    count = largest = 0
    async for chunk in opened.body:
        digest.update(chunk)
        count += 1
        largest = max(largest, len(chunk))
    assert digest.hexdigest() == expected.hexdigest()
    assert count > 1 and largest <= MiB + 64 * 1024


@pytest_twisted.ensureDeferred
async def test_aclose_half_way_releases_the_backend(backend: IBackend) -> None:
    """Closing a read part way frees its connection or file; later calls work."""
    size = 8 * MiB
    await backend.put("big", generated(size), size)
    for _ in range(3):
        opened = await backend.get("big")
        first = await opened.body.__anext__()
        assert first
        await opened.body.aclose()
    assert len(await read(backend, "big", size - 10, None)) == 10
    await backend.put("after", chunks_of(b"still works"), 11)
    assert await read(backend, "after") == b"still works"


@pytest_twisted.ensureDeferred
async def test_concurrent_puts_and_gets(backend: IBackend) -> None:
    """Several transfers at once do not mix their bytes."""
    keys = [f"c/{i}" for i in range(6)]

    async def round_trip(key: str) -> bytes:
        data = key.encode() * 40_000
        await backend.put(key, chunks_of(data, 10_000), len(data))
        return await read(backend, key)

    results = await gatherResults([Deferred.fromCoroutine(round_trip(k)) for k in keys])
    assert results == [k.encode() * 40_000 for k in keys]


# -- multipart uploads ------------------------------------------------------------------


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def sha256_of(backend: IBackend, key: str) -> tuple[str, int]:
    """The digest and chunk count of ``key`` read as a stream."""
    opened = await backend.get(key)
    digest = hashlib.sha256()
    count = 0
    async for chunk in opened.body:
        digest.update(chunk)
        count += 1
    return digest.hexdigest(), count


@pytest_twisted.ensureDeferred
async def test_multipart_assembles_exactly_the_listed_parts(backend: IBackend) -> None:
    """Complete joins the listed parts' latest bytes in order; unlisted parts are dropped."""
    first, replaced = random_bytes(PART, 1), random_bytes(PART, 2)
    middle, last = b"never listed", b"the last part, short"
    handle = await backend.create_multipart("mp/object")
    old_etag = await backend.upload_part("mp/object", handle, 1, chunks_of(first, MiB), PART)
    await backend.upload_part("mp/object", handle, 2, chunks_of(middle), len(middle))
    last_etag = await backend.upload_part("mp/object", handle, 3, chunks_of(last), len(last))
    new_etag = await backend.upload_part("mp/object", handle, 1, chunks_of(replaced, MiB), PART)
    for etag in (old_etag, new_etag, last_etag):
        # The part's ETag, then (S3 with checksums) its CRC32.
        assert re.fullmatch("[0-9a-f]{32}( [A-Za-z0-9+/]{6}==)?", etag)
    assert new_etag != old_etag
    await backend.complete_multipart("mp/object", handle, [(1, new_etag), (3, last_etag)])
    assert await read(backend, "mp/object") == replaced + last
    head = await backend.head("mp/object")
    assert head is not None and head.size == PART + len(last)
    assert await read(backend, "mp/object", PART - 2, PART + 2) == replaced[-2:] + last[:3]
    assert [o.key for o in await listed(backend)] == ["mp/object"]
    await backend.abort_multipart("mp/object", handle)  # finished: still succeeds
    await backend.delete("mp/object")
    await assert_absent(backend, "mp/object")


@pytest_twisted.ensureDeferred
async def test_multipart_replaces_an_existing_object(backend: IBackend) -> None:
    """Completing onto a key that holds an object replaces it; until then the old one reads."""
    await backend.put("mp/k", chunks_of(b"old object"), 10)
    handle = await backend.create_multipart("mp/k")
    etag = await backend.upload_part("mp/k", handle, 1, chunks_of(b"new"), 3)
    assert await read(backend, "mp/k") == b"old object"
    await backend.complete_multipart("mp/k", handle, [(1, etag)])
    assert await read(backend, "mp/k") == b"new"


@pytest_twisted.ensureDeferred
async def test_abort_discards_the_upload_and_is_idempotent(backend: IBackend) -> None:
    """After abort the upload takes no parts and cannot complete; aborting again succeeds."""
    handle = await backend.create_multipart("mp/aborted")
    etag = await backend.upload_part("mp/aborted", handle, 1, chunks_of(b"part"), 4)
    await backend.abort_multipart("mp/aborted", handle)
    await backend.abort_multipart("mp/aborted", handle)
    # BackendError, not BackendUploadNotFound: moto answers 500 where AWS says NoSuchUpload.
    with pytest.raises(BackendError):
        await backend.complete_multipart("mp/aborted", handle, [(1, etag)])
    with pytest.raises(BackendError):
        await backend.upload_part("mp/aborted", handle, 2, chunks_of(b"late"), 4)
    await assert_absent(backend, "mp/aborted")
    assert await listed(backend) == []


@pytest_twisted.ensureDeferred
async def test_abort_of_an_unknown_handle_succeeds(backend: IBackend) -> None:
    """Aborting a handle that never existed (well-formed or not) succeeds and changes nothing."""
    await backend.put("k", chunks_of(b"kept"), 4)
    for handle in ["0" * 32, "no-such-upload", "../../k", ""]:
        await backend.abort_multipart("k", handle)
    assert await read(backend, "k") == b"kept"


@pytest_twisted.ensureDeferred
async def test_unknown_handle_takes_no_part(backend: IBackend) -> None:
    """upload_part and Complete with a handle that does not exist fail and store nothing."""
    for handle in ["0" * 32, "no-such-upload"]:
        with pytest.raises(BackendError):
            await backend.upload_part("k", handle, 1, chunks_of(b"x"), 1)
        with pytest.raises(BackendError):
            await backend.complete_multipart("k", handle, [(1, "0" * 32)])
    source = ScriptedSource()
    with pytest.raises(BackendUploadNotFound):
        await backend.upload_part("k", "", 1, source, 1)
    assert source.closed
    await assert_absent(backend, "k")


@pytest_twisted.ensureDeferred
async def test_complete_with_a_wrong_etag_fails_and_stores_nothing(backend: IBackend) -> None:
    """A listed part with a wrong ETag, or never uploaded, fails Complete and writes no object."""
    handle = await backend.create_multipart("mp/wrong")
    etag = await backend.upload_part("mp/wrong", handle, 1, chunks_of(b"only part"), 9)
    for parts in ([(1, "0" * 32)], [(1, etag.upper()[:-1] + "X")], [(1, etag), (2, etag)]):
        with pytest.raises(BackendError):
            await backend.complete_multipart("mp/wrong", handle, parts)
        await assert_absent(backend, "mp/wrong")
    # A failed Complete leaves the upload as it was.
    await backend.complete_multipart("mp/wrong", handle, [(1, etag)])
    assert await read(backend, "mp/wrong") == b"only part"


@pytest_twisted.ensureDeferred
async def test_bad_part_numbers_and_part_lists_are_refused(backend: IBackend) -> None:
    """Part numbers outside 1..10000, and empty or unordered lists, fail before any effect."""
    handle = await backend.create_multipart("mp/bad")
    for number in (0, -1, 10_001):
        source = ScriptedSource()
        with pytest.raises(BackendError):
            await backend.upload_part("mp/bad", handle, number, source, 1)
        assert source.closed
    etag = await backend.upload_part("mp/bad", handle, 1, chunks_of(b"x"), 1)
    for parts in ([], [(1, etag), (1, etag)], [(2, etag), (1, etag)], [(0, etag)]):
        with pytest.raises(BackendError):
            await backend.complete_multipart("mp/bad", handle, parts)
    await assert_absent(backend, "mp/bad")
    await backend.abort_multipart("mp/bad", handle)


@pytest_twisted.ensureDeferred
async def test_failed_part_upload_keeps_the_earlier_part(backend: IBackend) -> None:
    """A part upload whose body breaks, or is short or long, leaves the earlier part usable."""
    good = random_bytes(MiB, 3)
    handle = await backend.create_multipart("mp/retry")
    etag = await backend.upload_part("mp/retry", handle, 1, chunks_of(good), MiB)
    broken = random_bytes(MiB, 4)
    with pytest.raises(SourceFailed):
        await backend.upload_part("mp/retry", handle, 1, failing_after(broken, MiB // 2), MiB)
    with pytest.raises(SourceFailed):  # every byte arrived, then the source failed
        await backend.upload_part("mp/retry", handle, 1, failing_after(broken, MiB), MiB)
    with pytest.raises(BackendError):
        await backend.upload_part("mp/retry", handle, 1, chunks_of(broken[:100]), MiB)
    with pytest.raises(BackendError):
        await backend.upload_part("mp/retry", handle, 1, chunks_of(broken), 100)
    await backend.complete_multipart("mp/retry", handle, [(1, etag)])
    assert await read(backend, "mp/retry") == good


@pytest_twisted.ensureDeferred
async def test_parts_are_never_listed(backend: IBackend) -> None:
    """Uploads in progress are invisible to list(), head() and get()."""
    await backend.put("visible", chunks_of(b"v"), 1)
    handle = await backend.create_multipart("pending/object")
    await backend.upload_part("pending/object", handle, 1, chunks_of(b"a" * 1000), 1000)
    await backend.upload_part("pending/object", handle, 2, chunks_of(b"b"), 1)
    assert [o.key for o in await listed(backend)] == ["visible"]
    assert await listed(backend, "pending") == []
    await assert_absent(backend, "pending/object")
    await backend.abort_multipart("pending/object", handle)
    assert [o.key for o in await listed(backend)] == ["visible"]


@pytest_twisted.ensureDeferred
async def test_large_parts_uploaded_concurrently_stream_back(backend: IBackend) -> None:
    """Two 8 MiB parts sent at once complete into a 16 MiB object that streams back in chunks."""
    size = 8 * MiB
    handle = await backend.create_multipart("mp/large")
    etags = await gatherResults(
        [
            Deferred.fromCoroutine(
                backend.upload_part("mp/large", handle, n, generated(size, 256 * 1024), size)
            )
            for n in (1, 2)
        ]
    )
    await backend.complete_multipart("mp/large", handle, list(zip((1, 2), etags, strict=True)))
    expected = hashlib.sha256()
    for _ in range(2):
        async for piece in generated(size, 256 * 1024):
            expected.update(piece)
    digest, count = await sha256_of(backend, "mp/large")
    assert digest == expected.hexdigest() and count > 2
    head = await backend.head("mp/large")
    assert head is not None and head.size == 2 * size


@pytest_twisted.ensureDeferred
async def test_uploads_of_one_key_are_independent(backend: IBackend) -> None:
    """Two uploads to the same key keep separate parts; the one completed last wins."""
    first = await backend.create_multipart("mp/twice")
    second = await backend.create_multipart("mp/twice")
    assert first != second
    e1 = await backend.upload_part("mp/twice", first, 1, chunks_of(b"first"), 5)
    e2 = await backend.upload_part("mp/twice", second, 1, chunks_of(b"second"), 6)
    await backend.complete_multipart("mp/twice", second, [(1, e2)])
    assert await read(backend, "mp/twice") == b"second"
    await backend.complete_multipart("mp/twice", first, [(1, e1)])
    assert await read(backend, "mp/twice") == b"first"
