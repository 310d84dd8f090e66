"""Values read from and written to the metadata store."""

from __future__ import annotations

from attrs import Factory, field, frozen

from s3orch.crypto.keys import WrappedKey

SENC2 = "senc2"
"""One SENC v2 stream (docs/encryption-format.md); its header is kept in ``Sealing.header``."""
SENC2_PARTS = "senc2-parts"
"""Multipart: one SENC v2 stream per part, back to back, each with its own header."""
SENC1 = "senc1"
"""The Go system's format (read only); ``Sealing.header`` holds the base nonce."""


@frozen
class StoredCopy:
    """One stored copy of an object version on one backend."""

    backend: str
    storage_key: str
    stored_size: int


@frozen
class Segment:
    """One sealed part of a ``SENC2_PARTS`` version, in object order."""

    part_number: int
    plain_size: int
    stored_size: int


@frozen
class Sealing:
    """How an encrypted version (or upload) is sealed, and its DEK as the DB keeps it.

    ``wrapped`` is the DEK's current wrapping: key rotation replaces it (and only it).
    ``chunk_size`` is 0 where only the object's own header knows it (SENC v1).
    """

    scheme: str
    wrapped: WrappedKey
    chunk_size: int = 0
    header: bytes = field(default=b"", repr=False)
    segments: tuple[Segment, ...] = field(default=(), repr=lambda s: f"<{len(s)} segments>")


@frozen
class ObjectVersion:
    """The current version of a client-visible object and where its copies live.

    ``created_at`` is seconds since the epoch (float, from the injected clock).
    ``metadata`` holds the user's ``x-amz-meta-*`` pairs (names lowercased,
    without the prefix); ``headers`` holds the stored response headers
    (cache-control, content-disposition, content-encoding, content-language,
    expires), names lowercased. ``size`` and ``etag`` are the client's view (the
    plaintext); a copy's ``stored_size`` is what the backend holds. ``sealing`` is
    None for a plaintext version.
    """

    bucket: str
    key: str
    version_id: str
    size: int
    etag: str
    content_type: str
    created_at: float
    metadata: dict[str, str] = field(factory=dict)
    headers: dict[str, str] = field(factory=dict)
    copies: tuple[StoredCopy, ...] = ()
    sealing: Sealing | None = None


@frozen
class BackendUsage:
    """A backend's byte counters.

    ``bytes_used`` counts committed copies; ``bytes_pending`` counts bytes that
    may exist on the backend without a committed copy (uploads in flight and
    deletions not yet done). A write fits if
    ``bytes_limit == 0 or bytes_used + bytes_pending + size <= bytes_limit``.
    """

    backend: str
    bytes_used: int
    bytes_pending: int
    bytes_limit: int
    object_count: int


@frozen
class PendingDeletion:
    """Bytes on a backend that no committed copy refers to and that must be deleted.

    ``multipart_id`` is set when the bytes belong to a backend multipart upload,
    which must be aborted rather than (or as well as) deleted.
    """

    backend: str
    storage_key: str
    size: int
    attempts: int
    multipart_id: str | None = None


class NoSpace(Exception):
    """The backend has no room for the write."""


@frozen
class Precondition:
    """What must hold of the current version for a write to commit (conditional PUT).

    ``absent``: there is no current version (``If-None-Match: *``);
    ``etag``: the current version has this ETag (``If-Match``).
    """

    absent: bool = False
    etag: str | None = None

    def check(self, current_etag: str | None) -> None:
        """Raise PreconditionFailed unless a current version with ``current_etag`` satisfies it."""
        if self.absent and current_etag is not None:
            raise PreconditionFailed("the object already exists", "If-None-Match")
        if self.etag is not None:
            if current_etag is None:
                raise PreconditionFailed("the object does not exist", "If-Match", missing=True)
            if current_etag != self.etag:
                raise PreconditionFailed("the object's ETag does not match", "If-Match")


class PreconditionFailed(Exception):
    """The write's ``condition`` does not hold; ``missing`` if it failed for lack of an object."""

    def __init__(self, message: str, condition: str, missing: bool = False) -> None:
        super().__init__(message)
        self.condition = condition
        self.missing = missing


@frozen
class Upload:
    """A multipart upload in progress.

    Its parts are written to ``storage_key`` on ``backend`` (inside the
    backend's own multipart upload ``backend_upload_id`` where it has one),
    so completing never moves the bytes again.
    """

    upload_id: str
    bucket: str
    key: str
    backend: str
    storage_key: str
    backend_upload_id: str
    content_type: str
    created_at: float
    metadata: dict[str, str] = field(factory=dict)
    headers: dict[str, str] = field(factory=dict)
    sealing: Sealing | None = None


@frozen
class Part:
    """One uploaded part; ``etag`` is the hex MD5 of its bytes as the client sent them,
    ``size`` their length, ``stored_size`` what the backend holds (larger when sealed)."""

    part_number: int
    etag: str
    size: int
    created_at: float
    backend_etag: str = ""
    stored_size: int = Factory(lambda self: self.size, takes_self=True)


class TooManyUploads(Exception):
    """The bucket already has its maximum number of multipart uploads in progress."""
