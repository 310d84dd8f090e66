"""Which backend a new write goes to: pure functions over the backends' usage."""

from __future__ import annotations

from collections.abc import Sequence

from s3orch.store.records import BackendUsage


def fits(usage: BackendUsage, size: int) -> bool:
    """Whether ``size`` more bytes fit, counting bytes still pending on the backend."""
    if usage.bytes_limit == 0:
        return True
    return usage.bytes_used + usage.bytes_pending + size <= usage.bytes_limit


def candidates(
    order: Sequence[str], usage: Sequence[BackendUsage], strategy: str, size: int
) -> list[str]:
    """The backends that look like they have room, best first.

    ``order`` is the configured backend order. The answer is advisory: the
    store's conditional reservation is what actually guarantees the room, so a
    caller tries each candidate in turn.

    - ``pack``: configured order, so the first backends fill up first.
    - ``spread``: lowest used/limit ratio first (unlimited backends count as
      empty); ties keep configured order.
    """
    by_name = {u.backend: u for u in usage}
    known = [by_name[name] for name in order if name in by_name]
    roomy = [u for u in known if fits(u, size)]
    if strategy == "spread":
        roomy.sort(key=_fill_ratio)  # stable: ties keep configured order
    return [u.backend for u in roomy]


def _fill_ratio(usage: BackendUsage) -> float:
    if usage.bytes_limit == 0:
        return 0.0
    return (usage.bytes_used + usage.bytes_pending) / usage.bytes_limit
