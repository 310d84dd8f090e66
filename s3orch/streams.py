"""Byte streams with back-pressure: the one currency object bodies move in.

Every object body, in either direction, is an async iterator of ``bytes``
chunks. The consumer pulls; a producer that is pushed data (a treq response,
an HTTP request) buffers at most a bounded amount and pauses its transport
until the consumer catches up.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ByteSource(Protocol):
    """An async iterator of byte chunks that can be closed early."""

    def __aiter__(self) -> ByteSource: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...
