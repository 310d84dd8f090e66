"""MetadataStore behaviour, run against SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import pytest_twisted

from s3orch.store.db import Cursor, Database
from s3orch.store.objects import MetadataStore, ReservationLost, UnknownBackend
from s3orch.store.records import (
    BackendUsage,
    NoSpace,
    ObjectVersion,
    PendingDeletion,
    StoredCopy,
)

NOW = 1_700_000_000.0


def make_version(
    key: str,
    version_id: str,
    copies: list[tuple[str, int]],
    *,
    bucket: str = "bkt",
    created_at: float = NOW,
) -> ObjectVersion:
    """A version whose copies are named ``<version_id>@<backend>``."""
    return ObjectVersion(
        bucket=bucket,
        key=key,
        version_id=version_id,
        size=sum(size for _, size in copies),
        etag=f"etag-{version_id}",
        content_type="application/octet-stream",
        created_at=created_at,
        copies=tuple(StoredCopy(b, f"{version_id}@{b}", size) for b, size in copies),
    )


async def put(
    store: MetadataStore,
    key: str,
    version_id: str,
    copies: list[tuple[str, int]],
    *,
    bucket: str = "bkt",
    now: float = NOW,
) -> list[PendingDeletion]:
    """Reserve every copy at its stored size, then commit."""
    version = make_version(key, version_id, copies, bucket=bucket, created_at=now)
    for copy in version.copies:
        await store.reserve(copy.backend, copy.storage_key, copy.stored_size, now)
    return await store.commit(version, now)


async def usage_of(store: MetadataStore, backend: str) -> BackendUsage:
    """The counters of one backend."""
    (found,) = [u for u in await store.usage() if u.backend == backend]
    return found


async def pending_rows(db: Database) -> dict[str, tuple[str, int, str, int]]:
    """Every pending row: storage_key -> (backend, size, state, attempts)."""

    def txn(cur: Cursor) -> dict[str, tuple[str, int, str, int]]:
        cur.execute("SELECT storage_key, backend, size, state, attempts FROM pending")
        return {row[0]: (row[1], int(row[2]), row[3], int(row[4])) for row in cur.fetchall()}

    return await db.run("test pending rows", txn)


@pytest_twisted.ensureDeferred
async def test_sync_backends_inserts_and_updates_limits(store: MetadataStore) -> None:
    """sync_backends adds new backends, updates limits of known ones and keeps the rest."""
    await store.sync_backends({"b1": 100, "b2": 0})
    await store.reserve("b1", "k", 10, NOW)
    await store.sync_backends({"b1": 500, "b3": 7})
    assert await store.usage() == [
        BackendUsage("b1", 0, 10, 500, 0),
        BackendUsage("b2", 0, 0, 0, 0),
        BackendUsage("b3", 0, 0, 7, 0),
    ]


@pytest_twisted.ensureDeferred
async def test_reserve_counts_pending_bytes(store: MetadataStore, db: Database) -> None:
    """reserve adds an 'upload' pending row and its size to bytes_pending."""
    await store.sync_backends({"b1": 100})
    await store.reserve("b1", "k1", 30, NOW)
    await store.reserve("b1", "k2", 20, NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 50, 100, 0)
    assert await pending_rows(db) == {"k1": ("b1", 30, "upload", 0), "k2": ("b1", 20, "upload", 0)}
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_reserve_fits_exactly_then_no_space(store: MetadataStore, db: Database) -> None:
    """A reservation that fills the limit exactly fits; one more byte raises NoSpace and changes nothing."""
    await store.sync_backends({"b1": 100})
    await put(store, "used", "v1", [("b1", 60)])
    await store.reserve("b1", "k1", 40, NOW)
    before = await pending_rows(db)
    with pytest.raises(NoSpace):
        await store.reserve("b1", "k2", 1, NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 60, 40, 100, 1)
    assert await pending_rows(db) == before


@pytest_twisted.ensureDeferred
async def test_reserve_unlimited_when_limit_is_zero(store: MetadataStore) -> None:
    """A backend with limit 0 accepts any size."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "k1", 2**50, NOW)
    await store.reserve("b1", "k2", 2**50, NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 2**51, 0, 0)


@pytest_twisted.ensureDeferred
async def test_reserve_unknown_backend(store: MetadataStore, db: Database) -> None:
    """Reserving on a backend the database does not know raises UnknownBackend."""
    await store.sync_backends({"b1": 0})
    with pytest.raises(UnknownBackend):
        await store.reserve("nope", "k1", 1, NOW)
    assert await pending_rows(db) == {}


@pytest_twisted.ensureDeferred
async def test_reserve_duplicate_storage_key_changes_nothing(
    store: MetadataStore, db: Database
) -> None:
    """Reserving a storage key twice fails and leaves the first reservation alone."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "k1", 5, NOW)
    with pytest.raises(Exception):  # noqa: B017 - the driver's IntegrityError
        await store.reserve("b1", "k1", 7, NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 5, 0, 0)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_commit_moves_reservation_to_used(store: MetadataStore, db: Database) -> None:
    """Committing turns each copy's pending upload into a copy row and used bytes."""
    await store.sync_backends({"b1": 1000, "b2": 0})
    assert await put(store, "k", "v1", [("b1", 100), ("b2", 100)]) == []
    assert await usage_of(store, "b1") == BackendUsage("b1", 100, 0, 1000, 1)
    assert await usage_of(store, "b2") == BackendUsage("b2", 100, 0, 0, 1)
    assert await pending_rows(db) == {}
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_commit_reservation_larger_than_copy(store: MetadataStore) -> None:
    """A copy smaller than its reservation releases the difference."""
    await store.sync_backends({"b1": 100})
    await store.reserve("b1", "v1@b1", 80, NOW)
    await store.commit(make_version("k", "v1", [("b1", 50)]), NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 50, 0, 100, 1)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_commit_larger_than_reservation_must_fit(store: MetadataStore) -> None:
    """A copy larger than its reservation commits only if the excess fits."""
    await store.sync_backends({"b1": 100})
    await store.reserve("b1", "v1@b1", 50, NOW)
    await store.reserve("b1", "other", 40, NOW)
    with pytest.raises(NoSpace):
        await store.commit(make_version("k", "v1", [("b1", 61)]), NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 90, 100, 0)
    await store.commit(make_version("k", "v1", [("b1", 60)]), NOW)
    assert await usage_of(store, "b1") == BackendUsage("b1", 60, 40, 100, 1)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_commit_replace_displaces_old_copies(store: MetadataStore, db: Database) -> None:
    """Replacing a version removes its copies, queues them for deletion and returns them."""
    await store.sync_backends({"b1": 0, "b2": 0, "b3": 0})
    await put(store, "k", "v1", [("b1", 100), ("b2", 110)])
    displaced = await put(store, "k", "v2", [("b3", 70)], now=NOW + 1)
    assert sorted(displaced, key=lambda d: d.storage_key) == [
        PendingDeletion("b1", "v1@b1", 100, 0),
        PendingDeletion("b2", "v1@b2", 110, 0),
    ]
    assert await store.usage() == [
        BackendUsage("b1", 0, 100, 0, 0),
        BackendUsage("b2", 0, 110, 0, 0),
        BackendUsage("b3", 70, 0, 0, 1),
    ]
    assert await pending_rows(db) == {
        "v1@b1": ("b1", 100, "delete", 0),
        "v1@b2": ("b2", 110, "delete", 0),
    }
    current = await store.get("bkt", "k")
    assert current is not None and current.version_id == "v2"
    assert await store.check_counters() == []
    for deletion in displaced:
        await store.forget(deletion.storage_key)
    assert [u.bytes_pending for u in await store.usage()] == [0, 0, 0]


@pytest_twisted.ensureDeferred
async def test_commit_replace_on_same_backend(store: MetadataStore) -> None:
    """Replacing a copy on the same backend keeps used + pending honest until the old bytes go."""
    await store.sync_backends({"b1": 300})
    await put(store, "k", "v1", [("b1", 100)])
    displaced = await put(store, "k", "v2", [("b1", 150)])
    assert displaced == [PendingDeletion("b1", "v1@b1", 100, 0)]
    assert await usage_of(store, "b1") == BackendUsage("b1", 150, 100, 300, 1)
    with pytest.raises(NoSpace):
        await store.reserve("b1", "x", 51, NOW)
    await store.forget("v1@b1")
    assert await usage_of(store, "b1") == BackendUsage("b1", 150, 0, 300, 1)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_commit_without_reservation_changes_nothing(
    store: MetadataStore, db: Database
) -> None:
    """A commit whose upload row is missing raises ReservationLost and leaves the old version."""
    await store.sync_backends({"b1": 0, "b2": 0})
    await put(store, "k", "v1", [("b1", 10)])
    await store.reserve("b2", "v2@b2", 20, NOW)
    version = make_version("k", "v2", [("b2", 20), ("b1", 20)])  # v2@b1 never reserved
    with pytest.raises(ReservationLost):
        await store.commit(version, NOW)
    current = await store.get("bkt", "k")
    assert current is not None and current.version_id == "v1"
    assert await store.usage() == [BackendUsage("b1", 10, 0, 0, 1), BackendUsage("b2", 0, 20, 0, 0)]
    assert await pending_rows(db) == {"v2@b2": ("b2", 20, "upload", 0)}


@pytest_twisted.ensureDeferred
async def test_commit_after_expiry_raises(store: MetadataStore, db: Database) -> None:
    """An upload expired by crash recovery can no longer be committed."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "v1@b1", 10, NOW)
    assert await store.expire_uploads(NOW + 3600) == 1
    with pytest.raises(ReservationLost):
        await store.commit(make_version("k", "v1", [("b1", 10)]), NOW + 3601)
    assert await store.get("bkt", "k") is None
    assert await pending_rows(db) == {"v1@b1": ("b1", 10, "delete", 0)}


@pytest_twisted.ensureDeferred
async def test_commit_rejects_copy_on_other_backend(store: MetadataStore, db: Database) -> None:
    """A copy committed under a different backend than it was reserved on is refused."""
    await store.sync_backends({"b1": 0, "b2": 0})
    await store.reserve("b1", "s", 10, NOW)
    version = ObjectVersion(
        "bkt", "k", "v1", 10, "e", "t", NOW, copies=(StoredCopy("b2", "s", 10),)
    )
    with pytest.raises(ValueError):
        await store.commit(version, NOW)
    assert await pending_rows(db) == {"s": ("b1", 10, "upload", 0)}
    assert await store.get("bkt", "k") is None


@pytest_twisted.ensureDeferred
async def test_commit_and_sync_reject_nonsense(store: MetadataStore) -> None:
    """A version without copies and a negative limit are refused before touching the database."""
    with pytest.raises(ValueError):
        await store.commit(make_version("k", "v1", []), NOW)
    with pytest.raises(ValueError):
        await store.sync_backends({"b1": -1})
    with pytest.raises(ValueError):
        await store.reserve("b1", "s", -1, NOW)
    assert await store.usage() == []


@pytest_twisted.ensureDeferred
async def test_get_round_trips_every_field(store: MetadataStore) -> None:
    """get returns what commit stored, copies ordered by backend name."""
    await store.sync_backends({"b1": 0, "b2": 0})
    for storage_key, backend in (("s2", "b2"), ("s1", "b1")):
        await store.reserve(backend, storage_key, 42, NOW)
    version = ObjectVersion(
        bucket="bkt",
        key="dir/ü.txt",
        version_id="v1",
        size=40,
        etag='"0123abcd"',
        content_type="text/plain; charset=utf-8",
        created_at=1_700_000_123.456789,
        metadata={"owner": "ünï", "empty": ""},
        headers={"cache-control": "no-cache", "content-disposition": 'attachment; name="x"'},
        copies=(StoredCopy("b2", "s2", 42), StoredCopy("b1", "s1", 42)),
    )
    await store.commit(version, NOW)
    got = await store.get("bkt", "dir/ü.txt")
    assert got is not None
    assert got.created_at == pytest.approx(1_700_000_123.456789, abs=1e-6)
    assert got == ObjectVersion(
        bucket=version.bucket,
        key=version.key,
        version_id=version.version_id,
        size=version.size,
        etag=version.etag,
        content_type=version.content_type,
        created_at=got.created_at,
        metadata=version.metadata,
        headers=version.headers,
        copies=(StoredCopy("b1", "s1", 42), StoredCopy("b2", "s2", 42)),
    )


@pytest_twisted.ensureDeferred
async def test_get_absent_and_other_bucket(store: MetadataStore) -> None:
    """get finds nothing for an unknown key or the same key in another bucket."""
    await store.sync_backends({"b1": 0})
    await put(store, "k", "v1", [("b1", 1)], bucket="one")
    assert await store.get("one", "missing") is None
    assert await store.get("two", "k") is None


@pytest_twisted.ensureDeferred
async def test_delete_queues_copies(store: MetadataStore, db: Database) -> None:
    """delete removes the version, turns its copies into pending deletions and returns them."""
    await store.sync_backends({"b1": 0, "b2": 0})
    await put(store, "k", "v1", [("b1", 10), ("b2", 20)])
    displaced = await store.delete("bkt", "k", NOW + 5)
    assert sorted(d.storage_key for d in displaced) == ["v1@b1", "v1@b2"]
    assert await store.get("bkt", "k") is None
    assert await store.usage() == [BackendUsage("b1", 0, 10, 0, 0), BackendUsage("b2", 0, 20, 0, 0)]
    assert await store.due_deletions(NOW + 5, 10) == sorted(displaced, key=lambda d: d.storage_key)
    assert await store.check_counters() == []


@pytest_twisted.ensureDeferred
async def test_delete_absent_is_empty(store: MetadataStore) -> None:
    """Deleting a key that has no version returns [] and changes nothing."""
    await store.sync_backends({"b1": 0})
    assert await store.delete("bkt", "nothing", NOW) == []
    assert await store.usage() == [BackendUsage("b1", 0, 0, 0, 0)]


@pytest_twisted.ensureDeferred
async def test_abandon_turns_upload_into_deletion(store: MetadataStore, db: Database) -> None:
    """abandon keeps the bytes pending but makes the row a deletion that is due now."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "k1", 10, NOW)
    assert await store.due_deletions(NOW + 100, 10) == []
    deletion = await store.abandon("k1", NOW + 1)
    assert deletion == PendingDeletion("b1", "k1", 10, 0)
    assert await store.abandon("k1", NOW + 2) == deletion
    assert await store.due_deletions(NOW + 1, 10) == [deletion]
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 10, 0, 0)
    assert await store.abandon("never-reserved", NOW) is None


@pytest_twisted.ensureDeferred
async def test_forget_releases_pending_bytes(store: MetadataStore, db: Database) -> None:
    """forget removes a pending row of either state and its bytes; an unknown key is a no-op."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "up", 10, NOW)
    await store.reserve("b1", "del", 5, NOW)
    await store.abandon("del", NOW)
    await store.forget("up")
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 5, 0, 0)
    await store.forget("del")
    await store.forget("del")
    await store.forget("unknown")
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 0, 0, 0)
    assert await pending_rows(db) == {}


@pytest_twisted.ensureDeferred
async def test_expire_uploads_only_older_ones(store: MetadataStore, db: Database) -> None:
    """expire_uploads turns only uploads reserved before the cutoff into due deletions."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "old", 1, NOW)
    await store.reserve("b1", "new", 2, NOW + 10)
    await store.reserve("b1", "gone", 4, NOW)
    await store.abandon("gone", NOW)
    assert await store.expire_uploads(NOW + 5) == 1
    assert await store.expire_uploads(NOW + 5) == 0
    rows = await pending_rows(db)
    assert rows["old"][2] == "delete" and rows["new"][2] == "upload"
    assert [d.storage_key for d in await store.due_deletions(NOW + 5, 10)] == ["gone", "old"]
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 7, 0, 0)


@pytest_twisted.ensureDeferred
async def test_deletion_failed_backs_off(store: MetadataStore, db: Database) -> None:
    """Each failed deletion doubles the wait (60 * 2**attempts s, capped at a day)."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "k", 10, NOW)
    await store.abandon("k", NOW)
    now = NOW
    for attempts in range(1, 14):
        await store.deletion_failed("k", f"boom {attempts}", now)
        wait = min(60 * 2**attempts, 86_400)
        assert await store.due_deletions(now + wait - 1, 10) == []
        assert await store.due_deletions(now + wait, 10) == [
            PendingDeletion("b1", "k", 10, attempts)
        ]
        now += wait

    def last_error(cur: Cursor) -> object:
        cur.execute("SELECT last_error FROM pending WHERE storage_key = ?", ("k",))
        row = cur.fetchone()
        return None if row is None else row[0]

    assert await db.run("test last_error", last_error) == "boom 13"
    assert await usage_of(store, "b1") == BackendUsage("b1", 0, 10, 0, 0)


@pytest_twisted.ensureDeferred
async def test_deletion_failed_ignores_uploads(store: MetadataStore, db: Database) -> None:
    """deletion_failed on a row that is still an upload leaves it alone."""
    await store.sync_backends({"b1": 0})
    await store.reserve("b1", "k", 10, NOW)
    await store.deletion_failed("k", "boom", NOW)
    await store.deletion_failed("unknown", "boom", NOW)
    assert await pending_rows(db) == {"k": ("b1", 10, "upload", 0)}


@pytest_twisted.ensureDeferred
async def test_due_deletions_order_and_limit(store: MetadataStore) -> None:
    """due_deletions returns the most overdue first, at most ``limit``."""
    await store.sync_backends({"b1": 0})
    for i, at in enumerate([NOW + 3, NOW + 1, NOW + 2, NOW + 50]):
        await store.reserve("b1", f"k{i}", i, NOW)
        await store.abandon(f"k{i}", at)
    due = await store.due_deletions(NOW + 10, 2)
    assert [d.storage_key for d in due] == ["k1", "k2"]
    due = await store.due_deletions(NOW + 10, 10)
    assert [d.storage_key for d in due] == ["k1", "k2", "k0"]


UNICODE_KEYS = [
    "a",
    "B",
    "é",
    "日本",
    "\U0001f600",
    "a%b",
    "a_b",
    "a\\b",
    "ab",
    "aXb",
    "a%",
    "Z",
    "\uffff",
    "\ue000",
    "\ud7ff",
    "~",
    " ",
    "a/b/c",
    "a/b",
]


async def put_keys(store: MetadataStore, keys: list[str], bucket: str = "bkt") -> None:
    """Commit one tiny version per key."""
    await store.sync_backends({"b1": 0})
    for i, key in enumerate(keys):
        await put(store, key, f"{bucket}-v{i}", [("b1", 1)], bucket=bucket)


@pytest_twisted.ensureDeferred
async def test_list_in_byte_order(store: MetadataStore) -> None:
    """list returns keys in UTF-8 byte order, which is code point order."""
    await put_keys(store, UNICODE_KEYS)
    expected = sorted(UNICODE_KEYS, key=lambda k: k.encode("utf-8"))
    assert expected == sorted(UNICODE_KEYS)
    listed = await store.list("bkt", "", "", 100)
    assert [v.key for v in listed] == expected
    assert all(v.copies == () for v in listed)
    assert listed[0].etag.startswith("etag-")


@pytest_twisted.ensureDeferred
async def test_list_prefix_with_like_metacharacters(store: MetadataStore) -> None:
    """Prefixes containing %, _ and backslash match literally."""
    await put_keys(store, UNICODE_KEYS)

    async def keys(prefix: str) -> list[str]:
        return [v.key for v in await store.list("bkt", prefix, "", 100)]

    assert await keys("a%") == ["a%", "a%b"]
    assert await keys("a_") == ["a_b"]
    assert await keys("a\\") == ["a\\b"]
    assert await keys("a/") == ["a/b", "a/b/c"]
    assert await keys("a") == sorted(k for k in UNICODE_KEYS if k.startswith("a"))
    assert await keys("日") == ["日本"]
    assert await keys("x") == []


@pytest_twisted.ensureDeferred
async def test_list_prefix_at_code_point_edges(store: MetadataStore) -> None:
    """Prefixes ending in U+D7FF or U+10FFFF select exactly the keys that start with them."""
    keys = ["\ud7ff", "\ud7ffz", "\ue000", "\U0010ffff", "\U0010ffffa", "\U0010ffff\U0010ffff"]
    await put_keys(store, keys)

    async def listed(prefix: str) -> list[str]:
        return [v.key for v in await store.list("bkt", prefix, "", 100)]

    assert await listed("\ud7ff") == ["\ud7ff", "\ud7ffz"]
    assert await listed("\U0010ffff") == ["\U0010ffff", "\U0010ffffa", "\U0010ffff\U0010ffff"]
    assert await listed("\U0010ffff\U0010ffff") == ["\U0010ffff\U0010ffff"]


@pytest_twisted.ensureDeferred
async def test_list_start_after_and_limit_paginate(store: MetadataStore) -> None:
    """Paging with start_after and a limit visits every key once, in order."""
    await put_keys(store, UNICODE_KEYS)
    expected = sorted(UNICODE_KEYS)
    seen: list[str] = []
    start_after = ""
    while True:
        page = await store.list("bkt", "", start_after, 3)
        assert len(page) <= 3
        if not page:
            break
        seen += [v.key for v in page]
        start_after = page[-1].key
    assert seen == expected
    assert [v.key for v in await store.list("bkt", "a", "a%b", 2)] == ["a/b", "a/b/c"]
    assert [v.key for v in await store.list("bkt", "a", "zzz", 10)] == []
    assert [v.key for v in await store.list("bkt", "a_", "", 10)] == ["a_b"]
    assert [v.key for v in await store.list("bkt", "", "\U0001f600", 10)] == []
    assert await store.list("bkt", "", "", 0) == []


@pytest_twisted.ensureDeferred
async def test_list_is_scoped_to_bucket(store: MetadataStore) -> None:
    """list only sees keys of the bucket asked for."""
    await put_keys(store, ["a", "b"], bucket="one")
    await put_keys(store, ["a", "c"], bucket="two")
    assert [v.key for v in await store.list("one", "", "", 10)] == ["a", "b"]
    assert [(v.bucket, v.key) for v in await store.list("two", "", "", 10)] == [
        ("two", "a"),
        ("two", "c"),
    ]


@pytest_twisted.ensureDeferred
async def test_check_counters_reports_drift(store: MetadataStore, db: Database) -> None:
    """check_counters names each counter that differs from the sum of its rows."""
    await store.sync_backends({"b1": 0, "b2": 0})
    await put(store, "k", "v1", [("b1", 10)])
    await store.reserve("b2", "s", 3, NOW)
    assert await store.check_counters() == []

    def corrupt(cur: Cursor) -> None:
        cur.execute("UPDATE backends SET bytes_used = 11, object_count = 2 WHERE name = ?", ("b1",))
        cur.execute("UPDATE backends SET bytes_pending = 0 WHERE name = ?", ("b2",))

    await db.run("test corrupt", corrupt)
    assert await store.check_counters() == [
        "backend 'b1': bytes_used is 11, its rows sum to 10",
        "backend 'b1': object_count is 2, its rows sum to 1",
        "backend 'b2': bytes_pending is 0, its rows sum to 3",
    ]
