"""Versioned schema migrations, shared by SQLite and PostgreSQL.

Migrations live in ``schema/`` as ``NNN_name.sql``. Where the dialects
cannot share a file, ``NNN_name.sqlite.sql`` or ``NNN_name.postgres.sql``
replaces it for that dialect; a version with a file for the other dialect only
is a no-op here but is still recorded. The few differences inside a shared file
are tokens (``@BINARY@``) replaced per dialect. A statement ends with ``;`` at
the end of a line; lines starting with ``--`` are comments. Statements run
through ``Cursor.execute``, so they must not contain ``?``.

Each ``migrate`` applies every pending migration and records it in
``schema_version`` in one transaction, so a failed migration leaves the schema
as it was. A database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import TYPE_CHECKING, Literal

from attrs import frozen

if TYPE_CHECKING:
    from s3orch.store.db import Cursor

_TOKENS: dict[str, dict[str, str]] = {
    "sqlite": {"@BINARY@": "COLLATE BINARY"},
    "postgres": {"@BINARY@": 'COLLATE "C"'},
}

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")

# Serialises migrations from several processes sharing one PostgreSQL database.
_MIGRATION_LOCK = int.from_bytes(
    hashlib.blake2b(b"s3orch.store.migrations", digest_size=8).digest(), "big", signed=True
)


class SchemaTooNew(Exception):
    """The database was migrated by a newer s3orch than this one."""


@frozen
class Migration:
    """One schema version, as the statements one dialect runs."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """Split a migration into statements: each ends with ``;`` at the end of a line."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    statements = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return tuple(s.strip() for s in statements if s.strip())


def _render(sql: str, dialect: Literal["sqlite", "postgres"]) -> str:
    for token, replacement in _TOKENS[dialect].items():
        sql = sql.replace(token, replacement)
    return sql


def load(dialect: Literal["sqlite", "postgres"]) -> tuple[Migration, ...]:
    """Read the migrations shipped in ``schema/`` as ``dialect`` runs them, in version order."""
    shared: dict[int, tuple[str, str]] = {}
    specific: dict[int, tuple[str, str]] = {}
    names: dict[int, str] = {}
    for entry in resources.files("s3orch.store").joinpath("schema").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        version, name, only = int(match[1]), match[2], match[3]
        if names.setdefault(version, name) != name:
            raise ValueError(f"two migrations are numbered {version}")
        text = entry.read_text(encoding="utf-8")
        if only is None:
            shared[version] = (name, text)
        elif only == dialect:
            specific[version] = (name, text)
    versions = sorted(names)
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions are not 1..n: {versions}")
    steps = []
    for version in versions:
        chosen = specific.get(version) or shared.get(version)
        text = chosen[1] if chosen is not None else ""
        steps.append(Migration(version, names[version], split_statements(_render(text, dialect))))
    return tuple(steps)


def apply(cur: Cursor, steps: tuple[Migration, ...]) -> int:
    """Apply the steps newer than the database's version; return the resulting version."""
    if cur.dialect == "postgres":
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
    )
    cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    row = cur.fetchone()
    current = int(row[0]) if row is not None else 0
    latest = steps[-1].version if steps else 0
    if current > latest:
        raise SchemaTooNew(
            f"the database has schema version {current}; this s3orch knows up to {latest}"
        )
    for step in steps:
        if step.version <= current:
            continue
        for statement in step.statements:
            cur.execute(statement)
        cur.execute(
            "INSERT INTO schema_version (version, name) VALUES (?, ?)", (step.version, step.name)
        )
    return max(current, latest)
