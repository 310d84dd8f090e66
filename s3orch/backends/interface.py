"""The seam between the orchestration core and a place that stores bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from attrs import frozen
from zope.interface import Attribute, Interface

from s3orch.streams import ByteSource


class BackendError(Exception):
    """A backend call failed (network, timeout, unexpected status)."""


class BackendNotFound(BackendError):
    """The backend holds no object under that key."""


@frozen
class BackendObject:
    """What a backend reports about one stored object."""

    key: str
    size: int
    etag: str | None = None


@frozen
class BackendRead:
    """An open read: ``body`` yields exactly ``length`` bytes starting at ``start``.

    The caller must ``await body.aclose()`` if it stops before the end, so the
    backend connection or file is released.
    """

    start: int
    length: int
    total_size: int
    body: ByteSource


class IBackend(Interface):
    name = Attribute("The backend's configured name (str).")

    async def put(key: str, body: AsyncIterator[bytes], length: int) -> None:
        """Store exactly ``length`` bytes from ``body`` under ``key``, atomically.

        Either the whole object is stored or nothing is: if ``body`` raises,
        yields a different number of bytes, or the transfer fails, no object
        (and no partial object) is left under ``key`` and the error propagates.
        """

    async def get(key: str, start: int = 0, end: int | None = None) -> BackendRead:
        """Open ``key`` for reading bytes ``start``..``end`` inclusive (None: to the end).

        Raises BackendNotFound if the key does not exist.
        """

    async def head(key: str) -> BackendObject | None:
        """Describe ``key``, or None if it does not exist."""

    async def delete(key: str) -> None:
        """Delete ``key``; deleting a missing key succeeds."""

    def list(prefix: str = "") -> AsyncIterator[BackendObject]:
        """Yield every object whose key starts with ``prefix``, in key order."""
