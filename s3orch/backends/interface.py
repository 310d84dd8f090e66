"""The seam between the orchestration core and a place that stores bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

from attrs import frozen
from zope.interface import Attribute, Interface

from s3orch.streams import ByteSource


class BackendError(Exception):
    """A backend call failed (network, timeout, unexpected status)."""


class BackendNotFound(BackendError):
    """The backend holds no object under that key."""


class BackendUploadNotFound(BackendError):
    """The backend knows no multipart upload by that handle for that key.

    It was never created, or was aborted or completed since.
    """


MIN_PART_NUMBER: Final = 1
MAX_PART_NUMBER: Final = 10_000


def check_part_number(part_number: int) -> None:
    """Raise BackendError unless ``part_number`` is one S3 allows."""
    if not MIN_PART_NUMBER <= part_number <= MAX_PART_NUMBER:
        raise BackendError(
            f"part number {part_number} outside {MIN_PART_NUMBER}..{MAX_PART_NUMBER}"
        )


def check_part_list(parts: Sequence[tuple[int, str]]) -> None:
    """Raise BackendError unless ``parts`` is a non-empty, strictly ascending list of parts.

    Checked before anything is sent, so a bad list fails the same way on every backend.
    """
    if not parts:
        raise BackendError("a multipart upload is completed with at least one part")
    previous = 0
    for number, _etag in parts:
        check_part_number(number)
        if number <= previous:
            raise BackendError("parts must be listed in strictly ascending order")
        previous = number


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

    async def create_multipart(key: str) -> str:
        """Start a multipart upload that will become ``key``; returns the backend's handle.

        The handle is opaque and only good for ``key``.
        """

    async def upload_part(
        key: str, handle: str, part_number: int, body: AsyncIterator[bytes], length: int
    ) -> str:
        """Store exactly ``length`` bytes as part ``part_number`` (1..10000) of the upload.

        An earlier part with that number is replaced. Returns the backend's
        receipt for the part, which ``complete_multipart`` takes back: its ETag
        (hex, no quotes), and for some backends more after a space. Atomic as
        ``put`` is: if the body fails or has the wrong length, the earlier part
        (if any) is intact and no partial part is left. Raises
        BackendUploadNotFound for a handle the backend does not know for ``key``.
        """

    async def complete_multipart(key: str, handle: str, parts: Sequence[tuple[int, str]]) -> None:
        """Assemble the listed parts (number, receipt), ascending, into ``key``.

        Parts not listed are discarded. The bytes never pass through s3orch:
        the backend assembles them itself. Afterwards ``key`` reads, describes
        and deletes like a put object, and the handle is gone. If a listed
        part is missing or its receipt differs, BackendError is raised and no
        object is written.
        """

    async def abort_multipart(key: str, handle: str) -> None:
        """Discard the upload and its parts; an unknown or finished handle succeeds."""
