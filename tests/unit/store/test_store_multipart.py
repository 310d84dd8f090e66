"""MultipartStore behaviour and its byte accounting, run against SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import pytest
import pytest_twisted
from attrs import define, evolve, field
from twisted.internet.defer import Deferred, gatherResults

from s3orch.store.db import Cursor, Database
from s3orch.store.migrations import load
from s3orch.store.multipart import MultipartStore, UploadNotFound
from s3orch.store.objects import MetadataStore, ReservationLost, UnknownBackend
from s3orch.store.records import (
    BackendUsage,
    NoSpace,
    ObjectVersion,
    Part,
    PendingDeletion,
    StoredCopy,
    TooManyUploads,
    Upload,
)

T = TypeVar("T")
NOW = 1_700_000_000.0


@pytest.fixture
def uploads(db: Database) -> MultipartStore:
    """A multipart store on the migrated database."""
    return MultipartStore(db)


def start(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Start a coroutine now and return its Deferred."""
    return Deferred.fromCoroutine(coroutine)


def make_upload(
    upload_id: str,
    key: str = "k",
    *,
    backend: str = "b1",
    bucket: str = "bkt",
    created_at: float = NOW,
) -> Upload:
    """An upload stored at ``mp/<upload_id>`` whose backend handle is ``h-<upload_id>``."""
    return Upload(
        upload_id=upload_id,
        bucket=bucket,
        key=key,
        backend=backend,
        storage_key=f"mp/{upload_id}",
        backend_upload_id=f"h-{upload_id}",
        content_type="text/plain",
        created_at=created_at,
        metadata={"colour": "blue"},
        headers={"cache-control": "no-cache"},
    )


def part(number: int, size: int, *, now: float = NOW) -> Part:
    """Part ``number`` of ``size`` bytes with ETags derived from both."""
    return Part(number, f"etag-{number}-{size}", size, now, f"backend-{number}-{size}")


def completed(upload: Upload, version_id: str, stored_size: int) -> ObjectVersion:
    """The version that completing ``upload`` with ``stored_size`` bytes of parts commits."""
    return ObjectVersion(
        bucket=upload.bucket,
        key=upload.key,
        version_id=version_id,
        size=stored_size,
        etag=f"etag-{version_id}-2",
        content_type=upload.content_type,
        created_at=NOW,
        metadata=upload.metadata,
        headers=upload.headers,
        copies=(StoredCopy(upload.backend, upload.storage_key, stored_size),),
    )


async def put(store: MetadataStore, key: str, version_id: str, backend: str, size: int) -> None:
    """Reserve and commit a single-copy PUT stored at ``version_id``."""
    await store.reserve(backend, version_id, size, NOW)
    copy = StoredCopy(backend, version_id, size)
    version = ObjectVersion("bkt", key, version_id, size, "e", "t", NOW, copies=(copy,))
    await store.commit(version, NOW)


async def add_part(uploads: MultipartStore, upload_id: str, number: int, size: int) -> None:
    """Reserve a part's bytes, then record it."""
    await uploads.reserve_part(upload_id, size, NOW)
    await uploads.record_part(upload_id, part(number, size), NOW)


async def usage_of(store: MetadataStore, backend: str) -> BackendUsage:
    """The counters of one backend."""
    (found,) = [u for u in await store.usage() if u.backend == backend]
    return found


async def pending_rows(db: Database) -> dict[str, tuple[str, int, str, str | None]]:
    """Every pending row: storage_key -> (backend, size, state, multipart_id)."""

    def txn(cur: Cursor) -> dict[str, tuple[str, int, str, str | None]]:
        cur.execute("SELECT storage_key, backend, size, state, multipart_id FROM pending")
        return {row[0]: (row[1], int(row[2]), row[3], row[4]) for row in cur.fetchall()}

    return await db.run("test pending rows", txn)


async def part_rows(db: Database) -> int:
    """How many part rows there are, of any upload."""

    def txn(cur: Cursor) -> int:
        cur.execute("SELECT COUNT(*) FROM multipart_parts")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    return await db.run("test part rows", txn)


def test_migration_002_renders_for_both_dialects() -> None:
    """Migration 2 loads in both dialects with byte-order keys and a multipart_id column."""
    dialects: tuple[tuple[Literal["sqlite", "postgres"], str], ...] = (
        ("sqlite", "COLLATE BINARY"),
        ("postgres", 'COLLATE "C"'),
    )
    for dialect, collation in dialects:
        (step,) = [m for m in load(dialect) if m.version == 2]
        assert step.name == "multipart"
        assert any("multipart_id" in s for s in step.statements)
        assert any(f"key TEXT {collation}" in s for s in step.statements)
        assert all("@" not in s for s in step.statements)


@pytest_twisted.ensureDeferred
async def test_create_and_get_round_trip(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """create_upload stores every field and an empty reservation carrying the backend handle."""
    await store.sync_backends({"b1": 100})
    upload = make_upload("u1", "dir/ké", created_at=NOW + 0.25)
    await uploads.create_upload(upload, 0, NOW)
    assert await uploads.get_upload("u1") == upload
    assert await uploads.get_upload("u2") is None
    assert await pending_rows(db) == {"mp/u1": ("b1", 0, "upload", "h-u1")}
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 0, 100, 0)
    assert await uploads.all_parts("u1") == {}
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_create_on_unknown_backend(uploads: MultipartStore, db: Database) -> None:
    """create_upload on a backend the database lacks raises UnknownBackend and changes nothing."""
    with pytest.raises(UnknownBackend):
        await uploads.create_upload(make_upload("u1", backend="nope"), 0, NOW)
    assert await uploads.get_upload("u1") is None
    assert await pending_rows(db) == {}


@pytest_twisted.ensureDeferred
async def test_too_many_uploads_at_the_limit(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """The bucket's limit admits exactly max_uploads; other buckets and limit 0 are unaffected."""
    await store.sync_backends({"b1": 0})
    for i in range(3):
        await uploads.create_upload(make_upload(f"u{i}"), 3, NOW)
    before = await pending_rows(db)
    with pytest.raises(TooManyUploads):
        await uploads.create_upload(make_upload("u3"), 3, NOW)
    assert await uploads.get_upload("u3") is None
    assert await pending_rows(db) == before
    assert await uploads.count_uploads("bkt") == 3
    await uploads.create_upload(make_upload("other", bucket="bkt2"), 3, NOW)
    await uploads.create_upload(make_upload("u4"), 0, NOW)
    assert await uploads.count_uploads("bkt") == 4
    assert await uploads.count_uploads("bkt2") == 1
    assert await uploads.count_uploads("none") == 0


@pytest_twisted.ensureDeferred
async def test_reserve_part_no_space_at_exact_boundary(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Parts in flight count against the limit: filling it exactly fits, one byte more does not."""
    await store.sync_backends({"b1": 100})
    await put(store, "used", "v1", "b1", 60)
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await uploads.reserve_part("u1", 30, NOW)
    await uploads.reserve_part("u1", 10, NOW)
    before = await pending_rows(db)
    with pytest.raises(NoSpace):
        await uploads.reserve_part("u1", 1, NOW)
    with pytest.raises(NoSpace):
        await store.reserve("b1", "plain", 1, NOW)
    assert await pending_rows(db) == before == {"mp/u1": ("b1", 40, "upload", "h-u1")}
    assert await usage_of(store, "b1") == BackendUsage("b1", 60, 40, 100, 1)
    await uploads.reserve_part("u1", 0, NOW)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_unknown_upload_raises(uploads: MultipartStore, store: MetadataStore) -> None:
    """reserve_part and record_part of an unknown upload raise UploadNotFound, a KeyError."""
    await store.sync_backends({"b1": 0})
    with pytest.raises(UploadNotFound):
        await uploads.reserve_part("nope", 1, NOW)
    with pytest.raises(KeyError):
        await uploads.record_part("nope", part(1, 1), NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_release_part_gives_bytes_back(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """release_part gives back a failed part's bytes, refuses too many, ignores a gone upload."""
    await store.sync_backends({"b1": 100})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 20)
    await uploads.reserve_part("u1", 70, NOW)
    await uploads.release_part("u1", 70, NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 20, 100, 0)
    with pytest.raises(ValueError):
        await uploads.release_part("u1", 21, NOW)
    assert await pending_rows(db) == {"mp/u1": ("b1", 20, "upload", "h-u1")}
    await uploads.release_part("nope", 5, NOW)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_record_part_replacement_releases_old_size(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Re-recording a part number keeps the new part and gives back the old part's bytes."""
    await store.sync_backends({"b1": 0})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 30)
    await add_part(uploads, "u1", 2, 5)
    await add_part(uploads, "u1", 1, 12)
    assert await uploads.all_parts("u1") == {1: part(1, 12), 2: part(2, 5)}
    assert await pending_rows(db) == {"mp/u1": ("b1", 17, "upload", "h-u1")}
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 17, 0, 0)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_list_parts_pages(uploads: MultipartStore, store: MetadataStore) -> None:
    """list_parts returns parts numbered above the marker, ascending, at most limit."""
    await store.sync_backends({"b1": 0})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await uploads.create_upload(make_upload("u2"), 0, NOW)
    for number in (7, 1, 10000, 3, 2):
        await add_part(uploads, "u1", number, number % 100)
    await add_part(uploads, "u2", 4, 4)
    first = await uploads.list_parts("u1", 0, 2)
    assert first == [part(1, 1), part(2, 2)]
    second = await uploads.list_parts("u1", first[-1].part_number, 2)
    assert second == [part(3, 3), part(7, 7)]
    assert await uploads.list_parts("u1", 7, 2) == [part(10000, 0)]
    assert await uploads.list_parts("u1", 10000, 2) == []
    assert await uploads.list_parts("nope", 0, 10) == []


@pytest_twisted.ensureDeferred
async def test_list_uploads_order_and_markers(
    uploads: MultipartStore, store: MetadataStore
) -> None:
    """list_uploads orders by key bytes then initiation, and resumes after either marker kind."""
    await store.sync_backends({"b1": 0})
    made = [
        make_upload("z", "a/x", created_at=NOW + 3),
        make_upload("m", "a/x", created_at=NOW + 1),
        make_upload("c", "a/x", created_at=NOW + 2),
        make_upload("b", "a/x", created_at=NOW + 2),
        make_upload("e", "a/é", created_at=NOW),
        make_upload("d", "a/Z", created_at=NOW + 9),
        make_upload("f", "b", created_at=NOW),
        make_upload("g", "a/x", bucket="other"),
    ]
    for upload in made:
        await uploads.create_upload(upload, 0, NOW)

    async def ids(prefix: str, key_marker: str, id_marker: str, limit: int = 100) -> list[str]:
        listed = await uploads.list_uploads("bkt", prefix, key_marker, id_marker, limit)
        return [u.upload_id for u in listed]

    assert await ids("", "", "") == ["d", "m", "b", "c", "z", "e", "f"]
    assert await ids("a/", "", "") == ["d", "m", "b", "c", "z", "e"]
    assert await ids("a/", "", "", 2) == ["d", "m"]
    assert await ids("", "a/x", "") == ["e", "f"]
    assert await ids("", "a/x", "m") == ["b", "c", "z", "e", "f"]
    assert await ids("", "a/x", "b", 2) == ["c", "z"]
    assert await ids("", "a/x", "z") == ["e", "f"]
    assert await ids("", "", "m") == ["d", "m", "b", "c", "z", "e", "f"]
    # The marker upload is gone: the key's remaining uploads are listed, none skipped.
    await uploads.abort_upload("c", NOW)
    assert await ids("", "a/x", "c") == ["m", "b", "z", "e", "f"]
    listed = await uploads.list_uploads("bkt", "a/Z", "", "", 10)
    assert listed == [made[5]]


@pytest_twisted.ensureDeferred
async def test_complete_commits_the_upload(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Complete commits the reserved bytes, displaces the old version and drops the upload."""
    await store.sync_backends({"b1": 1000, "b2": 0})
    await put(store, "k", "old", "b2", 70)
    await put(store, "other", "keep", "b1", 5)
    await store.reserve("b1", "plain", 9, NOW)
    before = await usage_of(store, "b1")
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 100)
    await add_part(uploads, "u1", 2, 50)
    await add_part(uploads, "u1", 3, 7)  # not chosen
    await uploads.reserve_part("u1", 40, NOW)  # still in flight
    version = completed(make_upload("u1"), "new", 150)

    displaced = await uploads.complete_upload("u1", version, NOW + 1)

    assert displaced == [PendingDeletion("b2", "old", 70, 0, None)]
    assert await usage_of(store, "b1") == BackendUsage(
        "b1", before.bytes_used + 150, before.bytes_pending, 1000, before.object_count + 1
    )
    assert await usage_of(store, "b2") == BackendUsage("b2", 0, 70, 0, 0)
    assert await store.get("bkt", "k") == version
    assert await uploads.get_upload("u1") is None
    assert await uploads.all_parts("u1") == {}
    assert await part_rows(db) == 0
    assert await pending_rows(db) == {
        "plain": ("b1", 9, "upload", None),
        "old": ("b2", 70, "delete", None),
    }
    # A part that was in flight finds the upload gone.
    await uploads.release_part("u1", 40, NOW)
    with pytest.raises(UploadNotFound):
        await uploads.record_part("u1", part(4, 40), NOW)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_complete_after_abort_changes_nothing(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Completing an aborted upload raises UploadNotFound and leaves the old version in place."""
    await store.sync_backends({"b1": 0})
    await put(store, "k", "old", "b1", 3)
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 10)
    await uploads.abort_upload("u1", NOW)
    rows, usage, current = await pending_rows(db), await store.usage(), await store.get("bkt", "k")
    with pytest.raises(UploadNotFound):
        await uploads.complete_upload("u1", completed(make_upload("u1"), "new", 10), NOW)
    assert await pending_rows(db) == rows
    assert await store.usage() == usage
    assert await store.get("bkt", "k") == current
    assert await uploads.abort_upload("u1", NOW) is None


@pytest_twisted.ensureDeferred
async def test_complete_refuses_another_key_or_copy(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """An upload completes only as its own bucket and key, from its own storage key."""
    await store.sync_backends({"b1": 0, "b2": 0})
    upload = make_upload("u1")
    await uploads.create_upload(upload, 0, NOW)
    await add_part(uploads, "u1", 1, 10)
    rows = await pending_rows(db)
    for other in (make_upload("u1", "elsewhere"), make_upload("u1", bucket="bkt2")):
        with pytest.raises(UploadNotFound):
            await uploads.complete_upload("u1", completed(other, "v", 10), NOW)
    for other in (make_upload("u1", backend="b2"), make_upload("u2")):
        with pytest.raises(ValueError):
            await uploads.complete_upload("u1", completed(other, "v", 10), NOW)
    two = completed(upload, "v", 10)
    with pytest.raises(ValueError):
        await uploads.complete_upload("u1", evolve(two, copies=two.copies * 2), NOW)
    assert await pending_rows(db) == rows
    assert await uploads.get_upload("u1") == upload
    assert await store.get("bkt", "k") is None


@pytest_twisted.ensureDeferred
async def test_abort_returns_deletion_with_multipart_id(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Aborting keeps the bytes pending as a due deletion that names the backend upload."""
    await store.sync_backends({"b1": 0})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 10)
    await add_part(uploads, "u1", 2, 5)
    deletion = await uploads.abort_upload("u1", NOW + 5)
    assert deletion == PendingDeletion("b1", "mp/u1", 15, 0, "h-u1")
    assert await uploads.get_upload("u1") is None
    assert await part_rows(db) == 0
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 15, 0, 0)
    assert await store.due_deletions(NOW + 5, 10) == [deletion]
    await store.deletion_failed("mp/u1", "boom", NOW + 5)
    assert await store.due_deletions(NOW + 3600, 10) == [
        PendingDeletion("b1", "mp/u1", 15, 1, "h-u1")
    ]
    await store.forget("mp/u1")
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 0, 0, 0)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_abort_without_reservation_still_queues_abort(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """An upload whose reservation was dropped still leaves a (zero-byte) backend abort queued."""
    await store.sync_backends({"b1": 0})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await store.forget("mp/u1")
    with pytest.raises(ReservationLost):
        await uploads.reserve_part("u1", 1, NOW)
    assert await uploads.abort_upload("u1", NOW) == PendingDeletion("b1", "mp/u1", 0, 0, "h-u1")
    assert await pending_rows(db) == {"mp/u1": ("b1", 0, "delete", "h-u1")}
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_expire_uploads_skips_multipart(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """expire_uploads reclaims stalled single PUTs but leaves multipart reservations alone."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "plain", 3, NOW)
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await add_part(uploads, "u1", 1, 10)
    assert await store.expire_uploads(NOW + 3600) == 1
    assert await pending_rows(db) == {
        "plain": ("b1", 3, "delete", None),
        "mp/u1": ("b1", 10, "upload", "h-u1"),
    }
    await add_part(uploads, "u1", 2, 1)
    assert await store.due_deletions(NOW + 3600, 10) == [PendingDeletion("b1", "plain", 3, 0)]


@pytest_twisted.ensureDeferred
async def test_stale_uploads_oldest_first(uploads: MultipartStore, store: MetadataStore) -> None:
    """stale_uploads returns uploads created before the cutoff, oldest first, at most limit."""
    await store.sync_backends({"b1": 0})
    for upload_id, age in (("new", 10), ("old", 1000), ("mid", 500), ("older", 2000)):
        await uploads.create_upload(make_upload(upload_id, created_at=NOW - age), 0, NOW)
    stale = await uploads.stale_uploads(NOW - 100, 10)
    assert [u.upload_id for u in stale] == ["older", "old", "mid"]
    assert [u.upload_id for u in await uploads.stale_uploads(NOW - 100, 2)] == ["older", "old"]
    assert await uploads.stale_uploads(NOW - 5000, 10) == []


@pytest_twisted.ensureDeferred
async def test_concurrent_complete_and_abort(
    uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Complete racing abort of one upload, 10 times: exactly one wins, counters stay exact."""
    await store.sync_backends({"b1": 10_000})
    expected: dict[str, tuple[str, int, str, str | None]] = {}
    current: dict[str, str] = {}  # key -> storage key of its version
    for i in range(10):
        upload = make_upload(f"u{i}", f"k{i % 3}")
        await uploads.create_upload(upload, 0, NOW)
        await add_part(uploads, upload.upload_id, 1, 20 + i)
        await add_part(uploads, upload.upload_id, 2, 3)
        version = completed(upload, f"v{i}", 23 + i)

        async def complete(upload: Upload = upload, version: ObjectVersion = version) -> bool:
            try:
                await uploads.complete_upload(upload.upload_id, version, NOW)
            except UploadNotFound:
                return False
            return True

        # Alternate which starts first, so each can win on either database.
        if i % 2:
            aborting = start(uploads.abort_upload(upload.upload_id, NOW))
            completing = start(complete())
        else:
            completing = start(complete())
            aborting = start(uploads.abort_upload(upload.upload_id, NOW))
        won, aborted = await completing, await aborting
        assert won != (aborted is not None), (i, won, aborted)
        if won:
            old = current.get(upload.key)
            if old is not None:
                expected[old] = ("b1", expected[old][1], "delete", None)
            current[upload.key] = upload.storage_key
            expected[upload.storage_key] = ("b1", 23 + i, "copy", None)
        else:
            assert aborted == PendingDeletion("b1", upload.storage_key, 23 + i, 0, f"h-u{i}")
            expected[upload.storage_key] = ("b1", 23 + i, "delete", f"h-u{i}")
        assert await uploads.get_upload(upload.upload_id) is None
        assert await store.check_counters() == []
    pending = {sk: row for sk, row in expected.items() if row[2] != "copy"}
    assert await pending_rows(db) == pending
    for key, storage_key in current.items():
        got = await store.get("bkt", key)
        assert got is not None and [c.storage_key for c in got.copies] == [storage_key]
    assert await usage_of(store, "b1") == BackendUsage(
        "b1",
        sum(expected[sk][1] for sk in current.values()),
        sum(row[1] for row in pending.values()),
        10_000,
        len(current),
    )
    assert await part_rows(db) == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_creates_respect_the_limit(
    uploads: MultipartStore, store: MetadataStore
) -> None:
    """Concurrent creates in one bucket admit exactly max_uploads."""
    await store.sync_backends({"b1": 0})

    async def attempt(i: int) -> bool:
        try:
            await uploads.create_upload(make_upload(f"u{i}"), 4, NOW)
        except TooManyUploads:
            return False
        return True

    admitted = await gatherResults([start(attempt(i)) for i in range(12)])
    assert admitted.count(True) == 4
    assert await uploads.count_uploads("bkt") == 4


@pytest_twisted.ensureDeferred
async def test_concurrent_part_reservations_never_exceed_limit(
    uploads: MultipartStore, store: MetadataStore
) -> None:
    """Concurrent part reservations on a nearly full backend admit exactly as many as fit."""
    await store.sync_backends({"b1": 95})
    await uploads.create_upload(make_upload("u1"), 0, NOW)
    await uploads.create_upload(make_upload("u2"), 0, NOW)

    async def attempt(i: int) -> bool:
        try:
            await uploads.reserve_part(f"u{1 + i % 2}", 10, NOW)
        except NoSpace:
            return False
        return True

    admitted = await gatherResults([start(attempt(i)) for i in range(20)])
    assert admitted.count(True) == 9
    assert await store.usage() == [BackendUsage("b1", 0, 90, 95, 0)]
    assert await store.check_counters() == []


@define
class LiveUpload:
    """What the model knows of one upload."""

    upload: Upload
    parts: dict[int, int] = field(factory=dict)
    in_flight: list[int] = field(factory=list)


@define
class Model:
    """What the store should hold, computed independently of it."""

    limits: dict[str, int]
    # storage_key -> (backend, size, state, multipart_id)
    pending: dict[str, tuple[str, int, str, str | None]] = field(factory=dict)
    # storage_key -> (backend, stored_size) for committed copies
    copies: dict[str, tuple[str, int]] = field(factory=dict)
    # key -> storage key of its single copy
    objects: dict[str, str] = field(factory=dict)
    live: dict[str, LiveUpload] = field(factory=dict)
    # Uploads completed or aborted with parts still in flight: upload_id -> sizes
    late: dict[str, list[int]] = field(factory=dict)
    plain_created: dict[str, float] = field(factory=dict)

    def used(self, backend: str) -> int:
        return sum(size for b, size in self.copies.values() if b == backend)

    def pending_bytes(self, backend: str) -> int:
        return sum(row[1] for row in self.pending.values() if row[0] == backend)

    def fits(self, backend: str, growth: int) -> bool:
        limit = self.limits[backend]
        return limit == 0 or self.used(backend) + self.pending_bytes(backend) + growth <= limit

    def grow(self, storage_key: str, change: int) -> None:
        backend, size, state, mp = self.pending[storage_key]
        self.pending[storage_key] = (backend, size + change, state, mp)

    def commit(self, key: str, storage_key: str, stored_size: int) -> list[PendingDeletion]:
        backend = self.pending.pop(storage_key)[0]
        displaced = []
        old = self.objects.pop(key, None)
        if old is not None:
            old_backend, old_size = self.copies.pop(old)
            self.pending[old] = (old_backend, old_size, "delete", None)
            displaced.append(PendingDeletion(old_backend, old, old_size, 0, None))
        self.copies[storage_key] = (backend, stored_size)
        self.objects[key] = storage_key
        return displaced

    def usage(self) -> list[BackendUsage]:
        return [
            BackendUsage(
                b,
                self.used(b),
                self.pending_bytes(b),
                limit,
                sum(1 for c, _ in self.copies.values() if c == b),
            )
            for b, limit in sorted(self.limits.items())
        ]


async def random_step(
    rng: random.Random,
    uploads: MultipartStore,
    store: MetadataStore,
    model: Model,
    step: int,
    now: float,
) -> str:
    """Do one random operation on the stores and the model, checking what the stores answer."""
    backends = sorted(model.limits)
    live = sorted(model.live)
    op = rng.choices(
        [
            "create",
            "reserve",
            "record",
            "fail",
            "complete",
            "abort",
            "late",
            "put",
            "commit",
            "delete",
            "forget",
            "expire",
        ],
        weights=[8, 20, 16, 5, 5, 3, 3, 8, 5, 4, 6, 2],
    )[0]
    key = f"k{rng.randint(0, 3)}"
    if op == "create":
        upload = make_upload(f"u{step}", key, backend=rng.choice(backends), created_at=now)
        if len(model.live) >= 5:
            with pytest.raises(TooManyUploads):
                await uploads.create_upload(upload, 5, now)
            return "create refused"
        await uploads.create_upload(upload, 5, now)
        model.live[upload.upload_id] = LiveUpload(upload)
        model.pending[upload.storage_key] = (upload.backend, 0, "upload", upload.backend_upload_id)
        return "created"
    if op == "reserve" and live:
        entry, size = model.live[rng.choice(live)], rng.randint(0, 40)
        if model.fits(entry.upload.backend, size):
            await uploads.reserve_part(entry.upload.upload_id, size, now)
            entry.in_flight.append(size)
            model.grow(entry.upload.storage_key, size)
            return "reserved"
        with pytest.raises(NoSpace):
            await uploads.reserve_part(entry.upload.upload_id, size, now)
        return "reserve refused"
    busy = [u for u in live if model.live[u].in_flight]
    if op in ("record", "fail") and busy:
        entry = model.live[rng.choice(busy)]
        size = entry.in_flight.pop(rng.randrange(len(entry.in_flight)))
        if op == "fail":
            await uploads.release_part(entry.upload.upload_id, size, now)
            model.grow(entry.upload.storage_key, -size)
            return "part failed"
        number = rng.randint(1, 4)
        replaced = entry.parts.get(number)
        await uploads.record_part(entry.upload.upload_id, part(number, size, now=now), now)
        entry.parts[number] = size
        if replaced is not None:
            model.grow(entry.upload.storage_key, -replaced)
            return "part replaced"
        return "part recorded"
    with_parts = [u for u in live if model.live[u].parts]
    if op == "complete" and with_parts:
        entry = model.live.pop(rng.choice(with_parts))
        chosen = rng.sample(sorted(entry.parts), rng.randint(1, len(entry.parts)))
        stored = sum(entry.parts[n] for n in chosen)
        version = completed(entry.upload, f"v{step}", stored)
        displaced = await uploads.complete_upload(entry.upload.upload_id, version, now)
        assert displaced == model.commit(entry.upload.key, entry.upload.storage_key, stored)
        if entry.in_flight:
            model.late[entry.upload.upload_id] = entry.in_flight
        return "completed"
    if op == "abort" and live:
        entry = model.live.pop(rng.choice(live))
        backend, size, _, mp = model.pending[entry.upload.storage_key]
        deletion = await uploads.abort_upload(entry.upload.upload_id, now)
        assert deletion == PendingDeletion(backend, entry.upload.storage_key, size, 0, mp)
        model.pending[entry.upload.storage_key] = (backend, size, "delete", mp)
        if entry.in_flight:
            model.late[entry.upload.upload_id] = entry.in_flight
        return "aborted"
    if op == "late" and model.late:
        upload_id = rng.choice(sorted(model.late))
        size = model.late[upload_id].pop()
        if not model.late[upload_id]:
            del model.late[upload_id]
        if rng.random() < 0.5:
            await uploads.release_part(upload_id, size, now)
        else:
            with pytest.raises(UploadNotFound):
                await uploads.record_part(upload_id, part(1, size), now)
            with pytest.raises(UploadNotFound):
                await uploads.complete_upload(
                    upload_id, completed(make_upload(upload_id), "x", 0), now
                )
        return "late part"
    if op == "put":
        backend, size, sk = rng.choice(backends), rng.randint(0, 60), f"p{step}"
        if not model.fits(backend, size):
            with pytest.raises(NoSpace):
                await store.reserve(backend, sk, size, now)
            return "put refused"
        await store.reserve(backend, sk, size, now)
        model.pending[sk] = (backend, size, "upload", None)
        model.plain_created[sk] = now
        return "put reserved"
    plain = sorted(sk for sk, row in model.pending.items() if row[2] == "upload" and row[3] is None)
    if op == "commit" and plain:
        sk = rng.choice(plain)
        backend, size, _, _ = model.pending[sk]
        copy = StoredCopy(backend, sk, size)
        version = ObjectVersion("bkt", key, f"v{step}", size, "e", "t", now, copies=(copy,))
        assert await store.commit(version, now) == model.commit(key, sk, size)
        return "put committed"
    if op == "delete":
        displaced = await store.delete("bkt", key, now)
        expected = []
        if key in model.objects:
            sk = model.objects.pop(key)
            backend, size = model.copies.pop(sk)
            model.pending[sk] = (backend, size, "delete", None)
            expected.append(PendingDeletion(backend, sk, size, 0, None))
        assert displaced == expected
        return "deleted"
    deletions = sorted(sk for sk, row in model.pending.items() if row[2] == "delete")
    if op == "forget" and deletions:
        sk = rng.choice(deletions)
        await store.forget(sk)
        del model.pending[sk]
        return "forgotten"
    if op == "expire":
        cutoff = now - 10
        expired = [sk for sk in plain if model.plain_created[sk] < cutoff]
        assert await store.expire_uploads(cutoff) == len(expired)
        for sk in expired:
            backend, size, _, _ = model.pending[sk]
            model.pending[sk] = (backend, size, "delete", None)
        return "expired"
    return "skipped"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_random_operations_keep_counters_exact(
    seed: int, uploads: MultipartStore, store: MetadataStore, db: Database
) -> None:
    """Random uploads, parts, completes, aborts and PUTs leave counters equal to the row sums."""
    rng = random.Random(seed)
    limits = {"b1": 300, "b2": 0, "b3": 150}
    await store.sync_backends(limits)
    model = Model(limits)
    now = NOW
    outcomes: Counter[str] = Counter()
    for step in range(250):
        now += 1
        outcomes[await random_step(rng, uploads, store, model, step, now)] += 1
        if step % 25 == 0:
            assert await store.usage() == model.usage()
    for outcome in (
        "created",
        "reserved",
        "reserve refused",
        "part recorded",
        "part replaced",
        "part failed",
        "completed",
        "aborted",
        "put committed",
        "forgotten",
    ):
        assert outcomes[outcome] > 0, outcomes
    assert await store.check_counters() == []
    assert await store.usage() == model.usage()
    assert await pending_rows(db) == model.pending
    assert await uploads.count_uploads("bkt") == len(model.live)
    for upload_id, entry in model.live.items():
        stored = await uploads.all_parts(upload_id)
        assert {n: p.size for n, p in stored.items()} == entry.parts
    for key, storage_key in model.objects.items():
        current = await store.get("bkt", key)
        assert current is not None and [c.storage_key for c in current.copies] == [storage_key]
