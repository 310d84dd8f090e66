"""Values read from and written to the metadata store."""

from __future__ import annotations

from attrs import field, frozen


@frozen
class StoredCopy:
    """One stored copy of an object version on one backend."""

    backend: str
    storage_key: str
    stored_size: int


@frozen
class ObjectVersion:
    """The current version of a client-visible object and where its copies live.

    ``created_at`` is seconds since the epoch (float, from the injected clock).
    ``metadata`` holds the user's ``x-amz-meta-*`` pairs (names lowercased,
    without the prefix); ``headers`` holds the stored response headers
    (cache-control, content-disposition, content-encoding, content-language,
    expires), names lowercased.
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


@frozen
class Part:
    """One uploaded part; ``etag`` is the hex MD5 of its bytes as the client sent them."""

    part_number: int
    etag: str
    size: int
    created_at: float
    backend_etag: str = ""


class TooManyUploads(Exception):
    """The bucket already has its maximum number of multipart uploads in progress."""
