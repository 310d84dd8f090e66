"""DekStore: the walk a key rotation takes over every wrapped DEK, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid

import pytest

from s3orch.crypto.keys import WrappedKey
from s3orch.store.db import Database
from s3orch.store.deks import DekStore, KeySelection, StoredDek

OLD = KeySelection("config-0", ("fp-old",), exclude="fp-new")


async def _seed(db: Database, count: int, fingerprint: str = "fp-old") -> list[str]:
    """``count`` object rows with a DEK each, inserted out of version-id order; their version
    ids (each row's wrapped DEK is its version id, to tell them apart)."""
    version_ids = [uuid.uuid4().hex for _ in range(count)]
    rows = [
        (f"{fingerprint}/{i:04d}", version_id, fingerprint, _b64(version_id.encode()))
        for i, version_id in enumerate(version_ids)
    ]
    await db.run(
        "seed",
        lambda cur: cur.executemany(
            "INSERT INTO objects (bucket, key, version_id, size, etag, content_type, metadata,"
            " headers, created_at, enc_scheme, enc_key_id, enc_fingerprint, enc_wrapped)"
            " VALUES ('b', ?, ?, 1, 'e', 'x', '{}', '{}', 0, 'senc2', 'config-0', ?, ?)",
            rows,
        ),
    )
    return version_ids


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _walk(deks: DekStore, limit: int, cursor: str | None = None) -> list[StoredDek]:
    found: list[StoredDek] = []
    while True:
        page, cursor = await deks.page(OLD, cursor, limit)
        found.extend(page)
        if cursor is None:
            return found


async def test_walk_visits_every_selected_dek_once(db: Database) -> None:
    """Pages of any size visit each DEK of the old key exactly once, and no other."""
    seeded = await _seed(db, 23)
    await _seed(db, 5, fingerprint="fp-new")
    deks = DekStore(db)
    for limit in (1, 4, 23, 100):
        found = await _walk(deks, limit)
        assert sorted(d.wrapped.blob.decode() for d in found) == sorted(seeded)
    assert await deks.count(OLD) == 23


async def test_replace_is_compare_and_swap(db: Database) -> None:
    """A DEK whose row changed after it was read is left alone; the others are replaced."""
    await _seed(db, 6)
    deks = DekStore(db)
    page, _ = await deks.page(OLD, None, 6)
    raced = page[0]
    await db.run(
        "race",
        lambda cur: cur.execute(
            "UPDATE objects SET enc_wrapped = ? WHERE enc_wrapped = ?",
            [_b64(b"client write"), _b64(raced.wrapped.blob)],
        ),
    )
    changes = [(dek, WrappedKey("config-0", "fp-new", b"new " + dek.wrapped.blob)) for dek in page]
    assert await deks.replace(changes) == 5
    assert await deks.count(OLD) == 1
    left, _ = await deks.page(OLD, None, 10)
    assert [d.wrapped.blob for d in left] == [b"client write"]


async def test_cursor_from_before_schema_6_walks_the_table_again(db: Database) -> None:
    """A job saved by an older s3orch holds a version id as its position; on SQLite, where
    the walk now follows rowids, it starts that table over instead of failing or skipping."""
    seeded = await _seed(db, 7)
    deks = DekStore(db)
    old_cursor = f"0:{max(seeded)}"
    found = await _walk(deks, 3, old_cursor)
    if db.dialect == "sqlite":
        assert sorted(d.wrapped.blob.decode() for d in found) == sorted(seeded)
    else:  # still a version id walk: nothing comes after the greatest one
        assert found == []


async def test_a_walk_survives_renumbered_rowids(db: Database) -> None:
    """SQLite walks rowids, which only a VACUUM may change. If the row the cursor stopped at
    has moved, the walk starts over rather than skip the rows that moved below it."""
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL walks version ids, which never change")
    seeded = await _seed(db, 10)
    deks = DekStore(db)
    first, cursor = await deks.page(OLD, None, 4)
    # Renumber as a rebuild could: rows 5..10 become 1..6, rows 1..4 become 7..10.
    await db.run(
        "renumber",
        lambda cur: (
            cur.execute("UPDATE objects SET rowid = rowid + 1000"),
            cur.execute(
                "UPDATE objects SET rowid = CASE WHEN rowid > 1004 THEN rowid - 1004"
                " ELSE rowid - 994 END"
            ),
        ),
    )
    rest = await _walk(deks, 4, cursor)
    assert {d.wrapped.blob.decode() for d in first + rest} == set(seeded)
