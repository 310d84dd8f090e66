"""Job tests run against SQLite and PostgreSQL with the store tests' database fixtures."""

from tests.unit.store.conftest import DatabaseSpec, database_spec, db

__all__ = ["DatabaseSpec", "database_spec", "db"]
