"""Data keys recently wrapped or unwrapped by Vault, so that reading an object needs no Vault call
every time.

Without it each GET of an object costs a Transit ``decrypt`` round trip, and Vault's load and
latency become every reader's (the Go system does exactly that). Entries are found by the
wrapped DEK as stored, so a re-wrapped DEK (after a rotation) is a new entry, and they expire
``ttl`` seconds after they were added, however often they are used: once Vault refuses a key
(revoked token, key deleted or disabled), a cached DEK stays usable at most that long. At most
``max_entries`` are kept, least recently used out first. The cache lives in s3orch's memory
only, as DEKs already do while a request uses them; it is never written, logged or measured
beyond hit and miss counts.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from s3orch import metrics
from s3orch.crypto.keys import WrappedKey

_HITS = metrics.encryption_dek_cache_total.labels("hit")
_MISSES = metrics.encryption_dek_cache_total.labels("miss")


@define
class DekCache:
    ttl: float
    max_entries: int
    clock: IReactorTime
    _entries: OrderedDict[tuple[str, bytes], tuple[float, bytes]] = field(
        factory=OrderedDict, init=False
    )

    def __attrs_post_init__(self) -> None:
        if self.ttl <= 0 or self.max_entries < 1:
            raise ValueError("a DEK cache needs a positive ttl and room for one entry")

    def get(self, wrapped: WrappedKey) -> bytes | None:
        """The DEK ``wrapped`` holds, if it is here and not expired."""
        name = (wrapped.fingerprint, wrapped.blob)
        entry = self._entries.get(name)
        if entry is None or entry[0] <= self.clock.seconds():
            if entry is not None:
                del self._entries[name]
            _MISSES.inc()
            return None
        self._entries.move_to_end(name)
        _HITS.inc()
        return entry[1]

    def put(self, wrapped: WrappedKey, dek: bytes) -> None:
        name = (wrapped.fingerprint, wrapped.blob)
        self._entries[name] = (self.clock.seconds() + self.ttl, dek)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
