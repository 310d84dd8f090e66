"""DekCache: DEKs Vault wrapped or unwrapped lately, kept for a TTL, least recently used out."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from s3orch.crypto.dek_cache import DekCache
from s3orch.crypto.keys import WrappedKey

FP = "vault:transit/k"


def wrapped(n: int, fingerprint: str = FP) -> WrappedKey:
    return WrappedKey("k", fingerprint, f"vault:v1:{n}".encode())


def dek(n: int) -> bytes:
    return bytes([n]) * 32


def test_a_dek_is_found_until_its_ttl_has_passed() -> None:
    """Found by its wrapped form; gone once ttl seconds have passed since it was added,
    however often it was used meanwhile."""
    clock = Clock()
    cache = DekCache(10.0, 100, clock)
    cache.put(wrapped(1), dek(1))
    for _ in range(3):
        clock.advance(3)
        assert cache.get(wrapped(1)) == dek(1)
    clock.advance(1)  # 10 s since put
    assert cache.get(wrapped(1)) is None
    assert len(cache) == 0


def test_put_again_restarts_the_ttl() -> None:
    clock = Clock()
    cache = DekCache(10.0, 100, clock)
    cache.put(wrapped(1), dek(1))
    clock.advance(8)
    cache.put(wrapped(1), dek(1))
    clock.advance(8)
    assert cache.get(wrapped(1)) == dek(1)


def test_the_least_recently_used_goes_first() -> None:
    """Past max_entries the entry neither put nor found for longest is dropped."""
    cache = DekCache(60.0, 3, Clock())
    for n in (1, 2, 3):
        cache.put(wrapped(n), dek(n))
    assert cache.get(wrapped(1)) == dek(1)  # 2 is now the least recently used
    cache.put(wrapped(4), dek(4))
    assert [cache.get(wrapped(n)) for n in (1, 2, 3, 4)] == [dek(1), None, dek(3), dek(4)]
    assert len(cache) == 3


def test_entries_are_per_key_and_per_wrapping() -> None:
    """The same blob under another key, or another blob (a re-wrapped DEK), is not found."""
    cache = DekCache(60.0, 10, Clock())
    cache.put(wrapped(1), dek(1))
    assert cache.get(wrapped(1, "vault:transit/other")) is None
    assert cache.get(wrapped(2)) is None


@pytest.mark.parametrize(("ttl", "size"), [(0.0, 10), (-1.0, 10), (60.0, 0)])
def test_a_cache_that_could_hold_nothing_is_refused(ttl: float, size: int) -> None:
    with pytest.raises(ValueError):
        DekCache(ttl, size, Clock())
