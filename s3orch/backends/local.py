"""A backend that stores each object as one file under a directory.

Key -> path mapping (``key_to_parts`` / ``parts_to_key``)
---------------------------------------------------------
The key is taken as UTF-8 bytes and split on ``/`` into segments; every
segment, including empty ones (``a//b``, a leading or trailing ``/``), keeps its
place, so the tree mirrors the key's own folders and a listing by prefix only
walks the folders the prefix names.

Each segment is percent-encoded byte by byte: ``A-Z a-z 0-9 _ -`` and ``.``
stay as they are, every other byte becomes ``%XX`` (upper-case hex). A ``.``
that would start a path component is encoded too, so no component is ever
``.`` or ``..`` or a hidden file, whatever the key. An empty segment is written
``%`` (which no encoding produces). An encoding longer than 199 characters is
cut, never inside a ``%XX``, into pieces of at most 199; each piece but the
last becomes a directory named ``<piece>+``. The last piece of the last segment
is the object's file, named ``<piece>=``; the last piece of any other segment
is a plain directory ``<piece>``. Encoded pieces never contain ``+`` or ``=``,
so a file can never collide with a directory (keys ``a`` and ``a/b`` are
``a=`` and ``a/b=``), a cut can never be mistaken for a ``/``, and every
component is at most 200 bytes. Examples::

    photos/cat.jpg      ->  photos/cat.jpg=
    ../x                ->  %2E./x=
    a//b/               ->  a/%/b/%=
    été                 ->  %C3%A9t%C3%A9=

A key with more than 32 ``/`` keeps its first 32 segments as folders; the
rest, slashes included (``%2F``), names the file, so the tree stays within
about 50 levels however many slashes a key holds.

The mapping is a function whose inverse ``list()`` applies to what it finds;
files that are not exactly where the mapping puts their key (foreign files)
are ignored. No hash prefix is used: the key's own folders spread the files
and keep prefix listings cheap. A 1024-byte key encodes to at most about
3.1 KiB, inside PATH_MAX for a root of reasonable length. The file system must
be case-sensitive.

``<root>/.tmp/`` holds files being written (no encoded component starts with
``.``). A write goes to a temp file there, is fsynced, then renamed into place
and the parent directory fsynced; a failed write removes its temp file. A
crash can leave stale files in ``.tmp`` (never a partial object); they are
not listed. Deleting prunes directories left empty.

Multipart uploads are staged under ``<root>/.multipart/``, never listed::

    .multipart/<handle>/key             the key the upload becomes (UTF-8)
    .multipart/<handle>/<NNNNN>/<etag>  part NNNNN (five digits), named by its MD5

The handle is 32 random hex digits. A part is written like an object (temp
file, fsync, rename) and then replaces any other version of that number, so
a failed upload leaves the earlier part intact. Complete checks that every
listed part exists under its ETag, then copies the parts into a temp file
with ``copy_file_range`` (falling back to ``sendfile``, then to reads and
writes, all in the thread pool), fsyncs it and renames it into place like a
put. Abort and Complete first rename the upload's directory into ``.tmp``
(after which no part can land in it), then remove it. The key file is
written aside and renamed in, so a crash during Create leaves a directory
without one: no call ever accepts it, and its handle was never returned.
Any other upload a crash leaves behind is inert until aborted.

All file-system work runs in the injected thread pool; the reactor only
shuffles chunks. Directory creation/rename and unlink/prune hold one lock so
a delete never removes a directory a concurrent put is renaming into. Only
one process may use a root.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from s3orch.backends.interface import (
    BackendError,
    BackendNotFound,
    BackendObject,
    BackendRead,
    BackendUploadNotFound,
    IBackend,
    check_part_list,
    check_part_number,
)
from s3orch.streams import (
    DEFAULT_READ_SIZE,
    ByteSource,
    LengthMismatch,
    OrderedThreadCalls,
    close_source,
    file_chunks,
)

log = Logger()

TEMP_DIR = ".tmp"
MULTIPART_DIR = ".multipart"
UPLOAD_KEY_FILE = "key"
MAX_PIECE = 199  # plus the one-character suffix: components are at most 200 bytes
MAX_FOLDERS = 32
DEFAULT_WRITE_SIZE = 1024 * 1024
KERNEL_COPY_SIZE = 1 << 30  # per copy_file_range/sendfile call

_HANDLE = re.compile(r"[0-9a-f]{32}")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# copy_file_range/sendfile refusing this pair of files: try the next way.
_COPY_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
)

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_DOT = ord(".")
_EMPTY = "%"
_CONTINUED = "+"
_OBJECT = "="


def _encode_segment(segment: bytes) -> list[str]:
    """The pieces (each at most MAX_PIECE characters) of one encoded key segment."""
    if not segment:
        return [_EMPTY]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for byte in segment:
        token = chr(byte) if byte in _PLAIN and not (byte == _DOT and size == 0) else f"%{byte:02X}"
        if size + len(token) > MAX_PIECE:
            pieces.append("".join(current))
            current, size = [], 0
            if byte == _DOT:
                token = "%2E"
        current.append(token)
        size += len(token)
    pieces.append("".join(current))
    return pieces


def _decode_piece(piece: str) -> bytes:
    """Inverse of one piece's encoding; ValueError if ``piece`` is not one."""
    if piece == _EMPTY:
        return b""
    if not piece or piece.startswith("."):
        raise ValueError(piece)
    out = bytearray()
    i = 0
    while i < len(piece):
        char = piece[i]
        if char == "%":
            hex_digits = piece[i + 1 : i + 3]
            if len(hex_digits) != 2 or hex_digits != hex_digits.upper():
                raise ValueError(piece)
            out.append(int(hex_digits, 16))
            i += 3
        elif ord(char) < 128 and ord(char) in _PLAIN:
            out.append(ord(char))
            i += 1
        else:
            raise ValueError(piece)
    return bytes(out)


def _directory_parts(segment: bytes) -> list[str]:
    pieces = _encode_segment(segment)
    return [p + _CONTINUED for p in pieces[:-1]] + [pieces[-1]]


def _folders(key: bytes) -> tuple[list[bytes], bytes]:
    """The segments that become folders, and the rest, which names the file."""
    segments = key.split(b"/")
    if len(segments) - 1 > MAX_FOLDERS:
        return segments[:MAX_FOLDERS], b"/".join(segments[MAX_FOLDERS:])
    return segments[:-1], segments[-1]


def key_to_parts(key: str) -> list[str]:
    """The path components, relative to the root, of the file holding ``key``."""
    folders, name = _folders(key.encode("utf-8", "surrogatepass"))
    parts: list[str] = []
    for segment in folders:
        parts.extend(_directory_parts(segment))
    pieces = _encode_segment(name)
    parts.extend(p + _CONTINUED for p in pieces[:-1])
    parts.append(pieces[-1] + _OBJECT)
    return parts


def parts_to_key(parts: Sequence[str]) -> str:
    """Inverse of ``key_to_parts``; ValueError for paths it never produces."""
    if not parts or not parts[-1].endswith(_OBJECT):
        raise ValueError("not an object path")
    segments: list[bytes] = []
    current = b""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part.endswith(_CONTINUED) and not last:
            current += _decode_piece(part[:-1])
        elif last:
            segments.append(current + _decode_piece(part[:-1]))
        else:
            segments.append(current + _decode_piece(part))
            current = b""
    return b"/".join(segments).decode("utf-8", "surrogatepass")


def _sort_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


class _BackendErrors:
    """A ByteSource that reports the file's failures as BackendError."""

    def __init__(self, source: ByteSource, what: str) -> None:
        self._source = source
        self._what = what

    def __aiter__(self) -> _BackendErrors:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._source.__anext__()
        except (OSError, LengthMismatch) as e:
            raise BackendError(f"reading {self._what}: {e}") from e

    async def aclose(self) -> None:
        await self._source.aclose()


@define
class _Temp:
    """A temp file being written: closed at most once, removed unless renamed into place."""

    fd: int | None
    path: str

    def fileno(self) -> int:
        if self.fd is None:
            raise ValueError("temp file already closed")
        return self.fd

    def close(self) -> None:
        # Never closed twice: the number may belong to another file by then.
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


@implementer(IBackend)
@define
class LocalBackend:
    """Objects as files under ``root``; see the module docstring for the layout.

    ``threadpool`` must be started by the owner (and stopped after the last
    call); every blocking call runs there.
    """

    name: str
    root: Path = field(converter=Path)
    reactor: IReactorFromThreads
    threadpool: ThreadPool
    read_size: int = DEFAULT_READ_SIZE
    write_size: int = DEFAULT_WRITE_SIZE
    _namespace_lock: threading.Lock = field(init=False, factory=threading.Lock)
    _parts_lock: threading.Lock = field(init=False, factory=threading.Lock)

    def path_for(self, key: str) -> Path:
        """Where ``key`` is (or would be) stored."""
        return self.root.joinpath(*key_to_parts(key))

    async def put(self, key: str, body: AsyncIterator[bytes], length: int) -> None:
        if length < 0:
            with contextlib.suppress(Exception):
                await close_source(body)
            raise BackendError(f"{self.name}: negative length")
        target = self.path_for(key)
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        await self._store(calls, body, length, "put-", lambda temp: self._commit(temp, target))

    async def _store(
        self,
        calls: OrderedThreadCalls,
        body: AsyncIterator[bytes],
        length: int,
        prefix: str,
        commit: Callable[[_Temp], None],
        digest: hashlib._Hash | None = None,
    ) -> None:
        """Write ``body`` to a temp file, then ``commit`` it (in a thread); or leave nothing."""
        try:
            temp = await calls.call(self._open_temp, prefix)
        except OSError as e:
            with contextlib.suppress(Exception):
                await close_source(body)
            raise BackendError(f"{self.name}: cannot create a temp file: {e}") from e
        try:
            await self._write_all(calls, temp, body, length, digest)
            try:
                await calls.call(commit, temp)
            except OSError as e:
                raise BackendError(f"{self.name}: cannot store: {e}") from e
        except BaseException as failure:
            await calls.call(self._discard, temp)
            with contextlib.suppress(Exception):
                await close_source(body)
            if isinstance(failure, LengthMismatch):
                raise BackendError(f"{self.name}: {failure}") from failure
            raise

    async def _write_all(
        self,
        calls: OrderedThreadCalls,
        temp: _Temp,
        body: AsyncIterator[bytes],
        length: int,
        digest: hashlib._Hash | None,
    ) -> None:
        # One write may run in a thread while the next buffer fills.
        pulled = 0
        buffer: list[bytes] = []
        buffered = 0
        writing: Deferred[None] | None = None
        async for chunk in body:
            if not chunk:
                continue
            pulled += len(chunk)
            if pulled > length:
                raise LengthMismatch(f"body longer than the declared {length} bytes")
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= self.write_size:
                if writing is not None:
                    await self._disk(writing)
                writing = calls.call(_write_temp, temp, b"".join(buffer), digest)
                buffer, buffered = [], 0
        if writing is not None:
            await self._disk(writing)
        if pulled != length:
            raise LengthMismatch(f"body ended after {pulled} of {length} bytes")
        if buffer:
            await self._disk(calls.call(_write_temp, temp, b"".join(buffer), digest))

    async def _disk(self, d: Deferred[None]) -> None:
        try:
            await d
        except OSError as e:
            raise BackendError(f"{self.name}: write failed: {e}") from e

    async def get(self, key: str, start: int = 0, end: int | None = None) -> BackendRead:
        if start < 0 or (end is not None and end < start):
            raise BackendError(f"{self.name}: invalid range {start}-{end}")
        path = self.path_for(key)
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            file, size = await calls.call(_open_for_reading, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise BackendNotFound(key) from e
        except OSError as e:
            raise BackendError(f"{self.name}: cannot open: {e}") from e
        if start == 0 and end is None:
            length = size
        elif start >= size:
            await calls.call(file.close)
            raise BackendError(f"{self.name}: range {start}-{end} not satisfiable (size {size})")
        else:
            last = size - 1 if end is None else min(end, size - 1)
            length = last - start + 1
        body = file_chunks(
            file,
            start,
            length,
            reactor=self.reactor,
            threadpool=self.threadpool,
            chunk_size=self.read_size,
        )
        return BackendRead(
            start=start, length=length, total_size=size, body=_BackendErrors(body, self.name)
        )

    async def head(self, key: str) -> BackendObject | None:
        path = self.path_for(key)
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            size = await calls.call(_file_size, path)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot stat: {e}") from e
        return None if size is None else BackendObject(key=key, size=size)

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            await calls.call(self._unlink, path)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot delete: {e}") from e

    async def list(self, prefix: str = "") -> AsyncIterator[BackendObject]:
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            found = await calls.call(self._scan, prefix)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot list: {e}") from e
        for item in found:
            yield item

    async def create_multipart(self, key: str) -> str:
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            return await calls.call(self._create_upload, key)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot start a multipart upload: {e}") from e

    async def upload_part(
        self, key: str, handle: str, part_number: int, body: AsyncIterator[bytes], length: int
    ) -> str:
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            check_part_number(part_number)
            if length < 0:
                raise BackendError("negative length")
            directory = await calls.call(self._upload_directory, key, handle)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await close_source(body)
            if isinstance(e, OSError):
                raise BackendError(f"{self.name}: cannot find the upload: {e}") from e
            if type(e) is BackendError:
                raise BackendError(f"{self.name}: {e}") from e
            raise
        digest = hashlib.md5(usedforsecurity=False)

        def commit(temp: _Temp) -> None:
            self._commit_part(temp, directory, part_number, digest.hexdigest())

        await self._store(calls, body, length, "part-", commit, digest)
        return digest.hexdigest()

    async def complete_multipart(
        self, key: str, handle: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        try:
            check_part_list(parts)
        except BackendError as e:
            raise BackendError(f"{self.name}: {e}") from e
        target = self.path_for(key)
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            directory = await calls.call(self._upload_directory, key, handle)
            sources = await calls.call(self._find_parts, directory, parts)
            temp = await calls.call(self._open_temp, "complete-")
        except OSError as e:
            raise BackendError(f"{self.name}: cannot complete the upload: {e}") from e
        try:
            # One call per part, so a cancelled Complete stops between parts.
            for source in sources:
                await calls.call(_append_file, source, temp)
            await calls.call(self._commit, temp, target)
        except BaseException as failure:
            await calls.call(self._discard, temp)
            if isinstance(failure, OSError):
                raise BackendError(f"{self.name}: cannot assemble: {failure}") from failure
            raise
        try:
            await calls.call(self._remove_upload, handle)
        except OSError:
            # The object is complete; the staging directory is only garbage now.
            log.failure("{backend}: could not remove a completed upload", backend=self.name)

    async def abort_multipart(self, key: str, handle: str) -> None:
        calls = OrderedThreadCalls(self.reactor, self.threadpool)
        try:
            await calls.call(self._upload_directory, key, handle)
        except BackendUploadNotFound:
            return  # as S3 does, an upload of another key is not touched
        except OSError as e:
            raise BackendError(f"{self.name}: cannot abort the upload: {e}") from e
        try:
            await calls.call(self._remove_upload, handle)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot abort the upload: {e}") from e

    # Everything below runs in the thread pool.

    def _open_temp(self, prefix: str) -> _Temp:
        temp_dir = self.root / TEMP_DIR
        temp_dir.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=temp_dir, prefix=prefix)
        return _Temp(fd, path)

    def _commit(self, temp: _Temp, target: Path) -> None:
        os.fsync(temp.fileno())
        temp.close()
        with self._namespace_lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp.path, target)
        _fsync_directory(target.parent)

    def _discard(self, temp: _Temp) -> None:
        try:
            temp.close()
        except OSError:
            log.failure("could not close temp file {temp}", temp=temp.path)
        try:
            os.unlink(temp.path)
        except FileNotFoundError:
            pass  # renamed into place before the failure
        except OSError:
            log.failure("could not remove temp file {temp}", temp=temp.path)

    def _upload_path(self, handle: str) -> Path | None:
        """Where upload ``handle`` is staged; None for a string no upload could have."""
        if not _HANDLE.fullmatch(handle):
            return None
        return self.root / MULTIPART_DIR / handle

    def _create_upload(self, key: str) -> str:
        uploads = self.root / MULTIPART_DIR
        uploads.mkdir(parents=True, exist_ok=True)
        handle = secrets.token_hex(16)
        directory = uploads / handle
        directory.mkdir()
        # Written aside and renamed, so a crash never leaves a key file with part of a key.
        writing = directory / (UPLOAD_KEY_FILE + ".new")
        fd = os.open(writing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_fully(fd, _key_bytes(key))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(writing, directory / UPLOAD_KEY_FILE)
        _fsync_directory(directory)
        _fsync_directory(uploads)
        return handle

    def _upload_directory(self, key: str, handle: str) -> Path:
        """The staging directory of ``handle``, which must be an upload of ``key``."""
        directory = self._upload_path(handle)
        if directory is not None:
            try:
                bound_to = (directory / UPLOAD_KEY_FILE).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                bound_to = None
            if bound_to == _key_bytes(key):
                return directory
        raise BackendUploadNotFound(f"{self.name}: no multipart upload {handle!r} for that key")

    def _commit_part(self, temp: _Temp, directory: Path, part_number: int, etag: str) -> None:
        os.fsync(temp.fileno())
        temp.close()
        slot = directory / f"{part_number:05d}"
        # Under the lock, the last part renamed in is the one that stays.
        with self._parts_lock:
            try:
                try:
                    slot.mkdir()
                    created = True
                except FileExistsError:
                    created = False
                os.replace(temp.path, slot / etag)
            except (FileNotFoundError, NotADirectoryError) as e:
                raise BackendUploadNotFound(
                    f"{self.name}: the upload was aborted or completed meanwhile"
                ) from e
            for entry in os.scandir(slot):
                if entry.name != etag:
                    os.unlink(entry.path)
        _fsync_directory(slot)
        if created:
            _fsync_directory(directory)

    def _find_parts(self, directory: Path, parts: Sequence[tuple[int, str]]) -> builtins.list[Path]:
        found = []
        for number, etag in parts:
            wanted = etag.strip().strip('"').lower()
            path = directory / f"{number:05d}" / wanted
            try:
                if _MD5_HEX.fullmatch(wanted) and stat.S_ISREG(os.stat(path).st_mode):
                    found.append(path)
                    continue
            except (FileNotFoundError, NotADirectoryError):
                pass
            raise BackendError(f"{self.name}: part {number} is missing or its ETag is not {etag!r}")
        return found

    def _remove_upload(self, handle: str) -> None:
        directory = self._upload_path(handle)
        if directory is None:
            return
        # Renamed away first: no part can land in it afterwards, and no half-removed
        # upload is ever visible under its handle.
        trash_dir = self.root / TEMP_DIR
        trash = trash_dir / f"upload-{handle}-{secrets.token_hex(4)}"
        try:
            trash_dir.mkdir(parents=True, exist_ok=True)
            os.rename(directory, trash)
        except (FileNotFoundError, NotADirectoryError):
            return  # never created, or already aborted or completed
        try:
            shutil.rmtree(trash)
        except OSError:
            log.failure("could not remove {trash}", trash=str(trash))

    def _unlink(self, path: Path) -> None:
        with self._namespace_lock:
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            directory = path.parent
            while directory != self.root and self.root in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    break  # not empty (or already gone)
                directory = directory.parent

    def _scan(self, prefix: str) -> builtins.list[BackendObject]:
        # Walk only the folder that the prefix's complete segments name.
        prefix_folders = prefix.encode("utf-8", "surrogatepass").split(b"/")[:-1]
        start_parts: builtins.list[str] = []
        for segment in prefix_folders[:MAX_FOLDERS]:
            start_parts.extend(_directory_parts(segment))
        found: builtins.list[BackendObject] = []
        stack: builtins.list[tuple[Path, builtins.list[str]]] = [
            (self.root.joinpath(*start_parts), start_parts)
        ]
        while stack:
            directory, parts = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if not parts and entry.name in (TEMP_DIR, MULTIPART_DIR):
                    continue
                entry_parts = [*parts, entry.name]
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), entry_parts))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    key = parts_to_key(entry_parts)
                    if key_to_parts(key) != entry_parts:
                        continue  # decodes, but is not where we would put it: not ours
                    size = entry.stat(follow_symlinks=False).st_size
                except (ValueError, FileNotFoundError):
                    continue  # not ours, or deleted while we looked
                if key.startswith(prefix):
                    found.append(BackendObject(key=key, size=size))
        found.sort(key=lambda item: _sort_key(item.key))
        return found


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_temp(temp: _Temp, data: bytes, digest: hashlib._Hash | None) -> None:
    if digest is not None:
        digest.update(data)  # here, so hashing stays off the reactor
    _write_fully(temp.fileno(), data)


def _append_file(source: Path, temp: _Temp) -> None:
    """Append the whole of ``source`` to ``temp``, in the kernel where it can."""
    fd = os.open(source, os.O_RDONLY)
    try:
        _copy_fd(fd, temp.fileno(), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _copy_fd(source: int, target: int, count: int) -> None:
    """Copy ``count`` bytes from ``source``'s position to ``target``'s, advancing both.

    ``copy_file_range`` first (no bytes enter user space; reflinks on file
    systems that have them), then ``sendfile``, then plain reads and writes
    for file systems that refuse both.
    """
    remaining = count
    for copy in (_kernel_copy_file_range, _kernel_sendfile, _read_write):
        try:
            while remaining:
                copied = copy(source, target, min(remaining, KERNEL_COPY_SIZE))
                if copied == 0:
                    raise BackendError(f"part file ended with {remaining} bytes still expected")
                remaining -= copied
            return
        except OSError as e:
            if e.errno not in _COPY_UNSUPPORTED or copy is _read_write:
                raise


def _kernel_copy_file_range(source: int, target: int, count: int) -> int:
    return os.copy_file_range(source, target, count)


def _kernel_sendfile(source: int, target: int, count: int) -> int:
    return os.sendfile(target, source, None, count)


def _read_write(source: int, target: int, count: int) -> int:
    data = os.read(source, min(count, DEFAULT_WRITE_SIZE))
    _write_fully(target, data)
    return len(data)


def _open_for_reading(path: Path) -> tuple[IO[bytes], int]:
    file = open(path, "rb")  # noqa: SIM115 (handed to file_chunks, which closes it)
    try:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(str(path))
    except BaseException:
        file.close()
        raise
    return file, info.st_size


def _file_size(path: Path) -> int | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
