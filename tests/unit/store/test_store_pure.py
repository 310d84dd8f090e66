"""Pure helpers of the store: key ranges, lock ids, backoff, SQL splitting and rewriting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from s3orch.store.db import _to_pyformat
from s3orch.store.migrations import load, split_statements
from s3orch.store.objects import deletion_backoff, key_lock_id, prefix_successor

# Valid UTF-8 text: no surrogates. A small alphabet near the edges makes prefixes likely.
key_chars = st.one_of(
    st.characters(exclude_categories=["Cs"]),
    st.sampled_from(["a", "b", "\ud7ff", "\ue000", "\U0010ffff", "\U0010fffe", "\x00", "%"]),
)
keys = st.text(alphabet=key_chars, max_size=6)


@given(prefix=keys, key=keys)
def test_prefix_range_matches_startswith(prefix: str, key: str) -> None:
    """A key starts with the prefix exactly when it lies in [prefix, prefix_successor(prefix))."""
    upper = prefix_successor(prefix)
    in_range = prefix <= key and (upper is None or key < upper)
    assert in_range == key.startswith(prefix)


@given(prefix=keys, key=keys)
def test_code_point_order_is_utf8_byte_order(prefix: str, key: str) -> None:
    """Python's str order agrees with UTF-8 byte order, which the databases use."""
    assert (prefix < key) == (prefix.encode() < key.encode())


def test_prefix_successor_edges() -> None:
    """The successor skips surrogates and carries past U+10FFFF."""
    assert prefix_successor("") is None
    assert prefix_successor("ab") == "ac"
    assert prefix_successor("a\ud7ff") == "a\ue000"
    assert prefix_successor("a\U0010ffff") == "b"
    assert prefix_successor("\U0010ffff\U0010ffff") is None


def test_key_lock_id_is_signed_64_bit_and_separates_names() -> None:
    """Lock ids fit a PostgreSQL bigint and the bucket/key split changes the id."""
    a = key_lock_id("a", "b/c")
    assert -(2**63) <= a < 2**63
    assert a == key_lock_id("a", "b/c")
    assert a != key_lock_id("a/b", "c")


def test_deletion_backoff() -> None:
    """The n-th failure waits 60 * 2**n seconds, never more than a day."""
    assert [deletion_backoff(n) for n in range(1, 5)] == [120, 240, 480, 960]
    assert deletion_backoff(10) == 61_440
    assert deletion_backoff(11) == 86_400
    assert deletion_backoff(1000) == 86_400


def test_split_statements() -> None:
    """Statements end with ; at a line end; comment lines are dropped."""
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');\n\nSELECT 1;  \nSELECT 2"
    assert split_statements(sql) == ("CREATE TABLE a (x TEXT DEFAULT ';')", "SELECT 1", "SELECT 2")


def test_pyformat_rewrite() -> None:
    """? becomes %s and a literal % is doubled for psycopg."""
    assert (
        _to_pyformat("SELECT '5%' WHERE a = ? AND b = ?") == "SELECT '5%%' WHERE a = %s AND b = %s"
    )


def test_migrations_render_per_dialect() -> None:
    """Shipped migrations load for both dialects with the key collation filled in."""
    sqlite, postgres = load("sqlite"), load("postgres")
    versions = [m.version for m in sqlite]
    assert versions == [m.version for m in postgres] == list(range(1, len(versions) + 1))
    assert len(versions) >= 2
    assert all("@" not in s for m in sqlite + postgres for s in m.statements)
    assert any('COLLATE "C"' in s for s in postgres[0].statements)
    assert any("COLLATE BINARY" in s for s in sqlite[0].statements)
