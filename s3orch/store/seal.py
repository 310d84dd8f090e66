"""The keyring's persistent state in the metadata database: the seal record and wrap counts.

``DatabaseSealStore`` is the ``ISealStore`` of ``s3orch.crypto.seal``: one row, replaced with
compare-and-swap on its generation, so that two instances rotating or rekeying at once never
overwrite each other (the loser re-reads and builds again). ``WrapCounts`` adds each
instance's wrap counts per term to shared totals with an upsert, so they are summed across
instances without a read-modify-write race. Both work the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import define
from zope.interface import implementer

from s3orch.crypto.seal import ISealStore, SealState, StaleState
from s3orch.store.db import Cursor, Database

_ROW = 1


@implementer(ISealStore)
@define
class DatabaseSealStore:
    """The one ``SealState`` row; ``clock`` gives the unix seconds recorded as ``updated``."""

    _db: Database
    _clock: Callable[[], float]

    async def load(self) -> SealState | None:
        def txn(cur: Cursor) -> str | None:
            cur.execute("SELECT state FROM keyring_seal WHERE id = ?", (_ROW,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        text = await self._db.run("load_seal", txn, readonly=True)
        return None if text is None else SealState.from_bytes(text.encode("ascii"))

    async def replace(self, expected_generation: int | None, state: SealState) -> None:
        """Store ``state`` if the stored generation is ``expected_generation`` (None: if
        there is no row yet); StaleState if another writer got there first."""
        text = state.to_bytes().decode("ascii")
        updated = int(self._clock())

        def txn(cur: Cursor) -> int:
            if expected_generation is None:
                cur.execute(
                    "INSERT INTO keyring_seal (id, generation, state, updated) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (id) DO NOTHING",
                    (_ROW, state.generation, text, updated),
                )
            else:
                cur.execute(
                    "UPDATE keyring_seal SET generation = ?, state = ?, updated = ?"
                    " WHERE id = ? AND generation = ?",
                    (state.generation, text, updated, _ROW, expected_generation),
                )
            return cur.rowcount

        if await self._db.run("replace_seal", txn) != 1:
            raise StaleState(
                f"the stored seal state is no longer at generation {expected_generation}"
            )


@define
class WrapCounts:
    """Data keys wrapped per key term, summed over every instance sharing the database."""

    _db: Database

    async def add(self, counts: Mapping[int, int]) -> dict[int, int]:
        """Add ``counts`` ({term: wraps}) to the stored totals; return every term's total."""
        rows = [(term, count) for term, count in sorted(counts.items()) if count > 0]

        def txn(cur: Cursor) -> dict[int, int]:
            if rows:
                cur.executemany(
                    "INSERT INTO keyring_encryptions (term, encryptions) VALUES (?, ?)"
                    " ON CONFLICT (term) DO UPDATE"
                    " SET encryptions = keyring_encryptions.encryptions + excluded.encryptions",
                    rows,
                )
            cur.execute("SELECT term, encryptions FROM keyring_encryptions")
            return {int(term): int(total) for term, total in cur.fetchall()}

        return await self._db.run("add_wrap_counts", txn, readonly=not rows)
