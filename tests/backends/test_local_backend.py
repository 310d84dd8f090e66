"""LocalBackend specifics: the key -> path mapping, confinement to its root, temp-file hygiene."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred

from s3orch.backends import local
from s3orch.backends.interface import BackendError, BackendUploadNotFound
from s3orch.backends.local import (
    MULTIPART_DIR,
    TEMP_DIR,
    UPLOAD_KEY_FILE,
    LocalBackend,
    key_to_parts,
    parts_to_key,
)
from tests.backends.sources import EDGE_KEYS, MiB, SourceFailed, chunks_of, failing_after

HOSTILE_KEYS = [
    *EDGE_KEYS,
    "../../../../etc/passwd",
    "/../../outside",
    "..\\..\\windows",
    "a/./b/../c",
    ".tmp",
    ".tmp/x",
    "...",
    "tab\there/new\nline",
    "\x01control\x7f",
    "\x00nul",
    "lone-surrogate-\udcff",
    "." + "." * 300,
    "/" * 1024,
]


def files_under(directory: Path) -> list[Path]:
    """Every file below ``directory`` (iteratively: trees may be deep)."""
    found, stack = [], [directory]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                found.append(Path(entry.path))
    return found


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("photos/cat.jpg", ["photos", "cat.jpg="]),
        ("../x", ["%2E.", "x="]),
        ("a//b/", ["a", "%", "b", "%="]),
        ("été", ["%C3%A9t%C3%A9="]),
        ("a b+c", ["a%20b%2Bc="]),
        (".tmp", ["%2Etmp="]),
    ],
)
def test_mapping_examples(key: str, parts: list[str]) -> None:
    """The documented examples map as the module docstring says, and back."""
    assert key_to_parts(key) == parts
    assert parts_to_key(parts) == key


def test_long_segments_are_cut_into_components_of_at_most_200_bytes() -> None:
    """A long segment becomes several '+'-suffixed components, none over 200 bytes."""
    parts = key_to_parts("é" * 512)
    assert len(parts) > 1
    assert all(p.endswith("+") for p in parts[:-1]) and parts[-1].endswith("=")
    assert all(len(p.encode()) <= 200 for p in parts)
    assert parts_to_key(parts) == "é" * 512


def test_keys_with_many_slashes_stay_shallow() -> None:
    """Beyond 32 folders the rest of the key goes into the file name, slashes encoded."""
    key = "/" * 1023 + "x"
    parts = key_to_parts(key)
    assert parts[:32] == ["%"] * 32
    assert len(parts) < 60 and parts[32].startswith("%2F")
    assert parts_to_key(parts) == key


def test_a_cut_never_starts_a_component_with_a_dot() -> None:
    """Dots that land at the start of a cut piece are encoded, so no '..' component appears."""
    key = "a" * 198 + "..." + "b" * 400 + ".." + "/" + "c" * 199 + ".."
    parts = key_to_parts(key)
    assert not any(p.startswith(".") for p in parts)
    assert parts_to_key(parts) == key


@given(st.text(max_size=300))
def test_key_mapping_round_trips_and_is_safe(key: str) -> None:
    """Any key maps to safe components (no dot segments, no separators, <= 200 bytes) and back."""
    parts = key_to_parts(key)
    assert parts_to_key(parts) == key
    for part in parts:
        assert part and not part.startswith(".")
        assert "/" not in part and "\\" not in part and "\x00" not in part
        assert len(part.encode()) <= 200
    assert parts[-1].endswith("=")
    assert not any(p.endswith("=") for p in parts[:-1])


@given(st.text(max_size=40), st.text(max_size=40))
def test_distinct_keys_map_to_distinct_paths(a: str, b: str) -> None:
    """The mapping is injective, so two keys never share a file."""
    if a != b:
        assert key_to_parts(a) != key_to_parts(b)


@pytest.mark.parametrize("parts", [["x"], ["x+"], ["..="], [".x="], ["a%2=", "b="], ["a=", "b="]])
def test_paths_the_mapping_never_makes_do_not_decode(parts: list[str]) -> None:
    """Foreign names are rejected by parts_to_key rather than misread."""
    with pytest.raises(ValueError):
        parts_to_key(parts)


@pytest_twisted.ensureDeferred
async def test_hostile_keys_stay_inside_the_root(
    local_backend: LocalBackend, local_root: Path, tmp_path: Path
) -> None:
    """After puts with traversal-style keys every file on disk is under the root."""
    for key in HOSTILE_KEYS:
        await local_backend.put(key, chunks_of(b"payload"), 7)
    root = local_root.resolve()
    for path in files_under(tmp_path):
        resolved = path.resolve()
        assert root in resolved.parents, path
        assert TEMP_DIR not in resolved.relative_to(root).parts
        for part in resolved.relative_to(root).parts:
            assert part not in (".", "..") and len(part.encode()) <= 200
    stored = [o.key async for o in local_backend.list()]
    assert stored == sorted(set(HOSTILE_KEYS), key=lambda k: k.encode("utf-8", "surrogatepass"))
    assert len(stored) == len(files_under(local_root))


@pytest_twisted.ensureDeferred
async def test_failed_puts_leave_no_temp_files(
    local_backend: LocalBackend, local_root: Path
) -> None:
    """Source errors and length mismatches remove their temp file."""
    with pytest.raises(SourceFailed):
        await local_backend.put("a", failing_after(b"x" * 5000, 100), 5000)
    with pytest.raises(BackendError):
        await local_backend.put("b", chunks_of(b"short"), 50)
    with pytest.raises(BackendError):
        await local_backend.put("c", chunks_of(b"too long"), 3)
    assert files_under(local_root) == []


@pytest_twisted.ensureDeferred
async def test_cancelled_put_leaves_no_temp_file(
    local_backend: LocalBackend, local_root: Path, reactor: Any
) -> None:
    """A put cancelled while waiting for its source removes its temp file."""
    waiting: Deferred[None] = Deferred()
    never: Deferred[None] = Deferred()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"first"
        reactor.callLater(0, waiting.callback, None)  # once this source is parked on `never`
        await never

    put = Deferred.fromCoroutine(local_backend.put("k", stalling(), 100))
    await waiting
    assert len(files_under(local_root / TEMP_DIR)) == 1
    put.cancel()
    with pytest.raises(CancelledError):
        await put
    assert files_under(local_root) == []


@pytest_twisted.ensureDeferred
async def test_delete_prunes_empty_directories(
    local_backend: LocalBackend, local_root: Path
) -> None:
    """Deleting the last object of a folder removes the folders it leaves empty."""
    await local_backend.put("a/b/c/d", chunks_of(b"1"), 1)
    await local_backend.put("a/x", chunks_of(b"2"), 1)
    await local_backend.delete("a/b/c/d")
    assert sorted(p.name for p in (local_root / "a").iterdir()) == ["x="]
    await local_backend.delete("a/x")
    assert not (local_root / "a").exists()


@pytest_twisted.ensureDeferred
async def test_list_ignores_foreign_files(local_backend: LocalBackend, local_root: Path) -> None:
    """Files the mapping never produces (and the temp dir) are not listed."""
    await local_backend.put("real", chunks_of(b"1"), 1)
    (local_root / "stray.txt").write_bytes(b"?")
    (local_root / "dir").mkdir()
    (local_root / "dir" / "..x=").write_bytes(b"?")
    (local_root / TEMP_DIR / "put-leftover").write_bytes(b"?")
    assert [o.key async for o in local_backend.list()] == ["real"]


@pytest_twisted.ensureDeferred
async def test_list_by_prefix_walks_only_the_named_folder(
    local_backend: LocalBackend, local_root: Path
) -> None:
    """A prefix with complete folders still finds everything under it (and nothing else)."""
    for key in ["p/q/r", "p/q/rs", "p/qq", "p/q", "other/q/r"]:
        await local_backend.put(key, chunks_of(b"."), 1)
    assert [o.key async for o in local_backend.list("p/q/")] == ["p/q/r", "p/q/rs"]
    assert [o.key async for o in local_backend.list("p/q")] == ["p/q", "p/q/r", "p/q/rs", "p/qq"]


# -- multipart staging --------------------------------------------------------------------


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def read_all(backend: LocalBackend, key: str) -> bytes:
    opened = await backend.get(key)
    return b"".join([chunk async for chunk in opened.body])


@pytest_twisted.ensureDeferred
async def test_multipart_staging_layout(local_backend: LocalBackend, local_root: Path) -> None:
    """Parts live in .multipart/<handle>/<NNNNN>/<md5>; Complete leaves no staging or temp file."""
    handle = await local_backend.create_multipart("a/b")
    upload = local_root / MULTIPART_DIR / handle
    assert (upload / UPLOAD_KEY_FILE).read_bytes() == b"a/b"
    await local_backend.upload_part("a/b", handle, 1, chunks_of(b"old"), 3)
    etag = await local_backend.upload_part("a/b", handle, 1, chunks_of(b"new"), 3)
    await local_backend.upload_part("a/b", handle, 7, chunks_of(b"seven"), 5)
    assert etag == md5(b"new")
    assert sorted(p.relative_to(upload).as_posix() for p in files_under(upload)) == [
        f"00001/{md5(b'new')}",
        f"00007/{md5(b'seven')}",
        UPLOAD_KEY_FILE,
    ]
    await local_backend.complete_multipart("a/b", handle, [(1, etag)])
    assert local_backend.path_for("a/b").read_bytes() == b"new"
    assert list((local_root / MULTIPART_DIR).iterdir()) == []
    assert files_under(local_root / TEMP_DIR) == []
    assert list((local_root / TEMP_DIR).iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_complete_copies_in_the_kernel_off_the_reactor(
    local_backend: LocalBackend, local_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Complete moves part bytes only with kernel copies in the I/O pool; the reactor reads none."""
    copies: list[tuple[str, int]] = []
    reactor_reads: list[str] = []

    def recording(real: Callable[..., int]) -> Callable[..., int]:
        def wrapper(*args: Any) -> int:
            copied = real(*args)
            copies.append((threading.current_thread().name, copied))
            return copied

        return wrapper

    def watched_read(real: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
        def wrapper(fd: int, n: int) -> bytes:
            if threading.current_thread() is threading.main_thread():  # the reactor's
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/self/fd/{fd}")
                    if MULTIPART_DIR in target:
                        reactor_reads.append(target)
            return real(fd, n)

        return wrapper

    parts = [os.urandom(3 * MiB), os.urandom(MiB + 17)]
    handle = await local_backend.create_multipart("k")
    etags = [
        await local_backend.upload_part("k", handle, n, chunks_of(data, MiB), len(data))
        for n, data in enumerate(parts, start=1)
    ]
    monkeypatch.setattr(os, "copy_file_range", recording(os.copy_file_range))
    monkeypatch.setattr(os, "sendfile", recording(os.sendfile))
    monkeypatch.setattr(os, "read", watched_read(os.read))
    await local_backend.complete_multipart("k", handle, [(1, etags[0]), (2, etags[1])])
    monkeypatch.undo()
    assert sum(copied for _, copied in copies) == sum(map(len, parts))
    assert all("test-local-io" in name for name, _ in copies), copies
    assert reactor_reads == []
    assert await read_all(local_backend, "k") == b"".join(parts)


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.ENOSYS, errno.EINVAL])
@pytest_twisted.ensureDeferred
async def test_complete_falls_back_when_the_kernel_will_not_copy(
    local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """Where copy_file_range and sendfile are refused, parts are copied by reads and writes."""

    def refuse(*args: Any) -> int:
        raise OSError(refusal, os.strerror(refusal))

    parts = [b"a" * 300_000, b"b" * 5]
    handle = await local_backend.create_multipart("k")
    etags = [
        await local_backend.upload_part("k", handle, n, chunks_of(data), len(data))
        for n, data in enumerate(parts, start=1)
    ]
    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(os, "sendfile", refuse)
    await local_backend.complete_multipart("k", handle, list(enumerate(etags, start=1)))
    monkeypatch.undo()
    assert await read_all(local_backend, "k") == b"".join(parts)


@pytest_twisted.ensureDeferred
async def test_a_copy_error_fails_complete_and_keeps_the_upload(
    local_backend: LocalBackend, local_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error while assembling is a BackendError; no object or temp file remains."""

    def broken(*args: Any) -> int:
        raise OSError(errno.EIO, "disk on fire")

    handle = await local_backend.create_multipart("k")
    etag = await local_backend.upload_part("k", handle, 1, chunks_of(b"data"), 4)
    monkeypatch.setattr(os, "copy_file_range", broken)
    with pytest.raises(BackendError, match="disk on fire"):
        await local_backend.complete_multipart("k", handle, [(1, etag)])
    monkeypatch.undo()
    assert await local_backend.head("k") is None
    assert files_under(local_root / TEMP_DIR) == []
    await local_backend.complete_multipart("k", handle, [(1, etag)])
    assert await read_all(local_backend, "k") == b"data"


@pytest_twisted.ensureDeferred
async def test_cancelled_complete_leaves_no_object_and_keeps_the_upload(
    local_backend: LocalBackend,
    local_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    reactor: Any,
) -> None:
    """Cancelling Complete mid-assembly removes its temp file; the upload can still complete."""
    started: Deferred[None] = Deferred()
    release = threading.Event()
    real_append = local._append_file

    def slow_append(source: Path, temp: Any) -> None:
        reactor.callFromThread(started.callback, None)
        release.wait(10)
        real_append(source, temp)

    handle = await local_backend.create_multipart("k")
    etag = await local_backend.upload_part("k", handle, 1, chunks_of(b"data"), 4)
    monkeypatch.setattr(local, "_append_file", slow_append)
    completing = Deferred.fromCoroutine(local_backend.complete_multipart("k", handle, [(1, etag)]))
    await started
    completing.cancel()
    release.set()
    with pytest.raises(CancelledError):
        await completing
    monkeypatch.undo()
    assert await local_backend.head("k") is None
    assert files_under(local_root / TEMP_DIR) == []
    await local_backend.complete_multipart("k", handle, [(1, etag)])
    assert await read_all(local_backend, "k") == b"data"


@pytest_twisted.ensureDeferred
async def test_a_handle_only_works_for_its_own_key(local_backend: LocalBackend) -> None:
    """Another key's handle takes no parts and cannot complete; aborting under it does nothing."""
    handle = await local_backend.create_multipart("mine")
    etag = await local_backend.upload_part("mine", handle, 1, chunks_of(b"part"), 4)
    with pytest.raises(BackendUploadNotFound):
        await local_backend.upload_part("theirs", handle, 1, chunks_of(b"evil"), 4)
    with pytest.raises(BackendUploadNotFound):
        await local_backend.complete_multipart("theirs", handle, [(1, etag)])
    await local_backend.abort_multipart("theirs", handle)
    await local_backend.complete_multipart("mine", handle, [(1, etag)])
    assert await read_all(local_backend, "mine") == b"part"
    assert await local_backend.head("theirs") is None


@pytest_twisted.ensureDeferred
async def test_unknown_and_hostile_handles_touch_nothing(
    local_backend: LocalBackend, local_root: Path, tmp_path: Path
) -> None:
    """Handles that are not ours (traversal, wrong case, empty) are unknown uploads."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / UPLOAD_KEY_FILE).write_bytes(b"k")
    await local_backend.put("k", chunks_of(b"kept"), 4)
    before = sorted(files_under(tmp_path))
    for handle in ["0" * 32, "A" * 32, "../../outside", "", "/etc", "0" * 31 + "/"]:
        with pytest.raises(BackendUploadNotFound):
            await local_backend.upload_part("k", handle, 1, chunks_of(b"x"), 1)
        with pytest.raises(BackendUploadNotFound):
            await local_backend.complete_multipart("k", handle, [(1, md5(b"x"))])
        await local_backend.abort_multipart("k", handle)
    assert sorted(files_under(tmp_path)) == before
    assert await read_all(local_backend, "k") == b"kept"


@pytest_twisted.ensureDeferred
async def test_completed_handle_is_gone(local_backend: LocalBackend) -> None:
    """After Complete the handle takes no more parts and cannot complete again."""
    handle = await local_backend.create_multipart("k")
    etag = await local_backend.upload_part("k", handle, 1, chunks_of(b"once"), 4)
    await local_backend.complete_multipart("k", handle, [(1, etag)])
    with pytest.raises(BackendUploadNotFound):
        await local_backend.complete_multipart("k", handle, [(1, etag)])
    with pytest.raises(BackendUploadNotFound):
        await local_backend.upload_part("k", handle, 2, chunks_of(b"more"), 4)
    assert await read_all(local_backend, "k") == b"once"


@pytest_twisted.ensureDeferred
async def test_failed_part_uploads_leave_no_temp_files(
    local_backend: LocalBackend, local_root: Path
) -> None:
    """Broken, short and long part bodies leave only the earlier part, and no temp file."""
    handle = await local_backend.create_multipart("k")
    await local_backend.upload_part("k", handle, 1, chunks_of(b"good"), 4)
    with pytest.raises(SourceFailed):
        await local_backend.upload_part("k", handle, 1, failing_after(b"x" * 5000, 100), 5000)
    with pytest.raises(BackendError):
        await local_backend.upload_part("k", handle, 1, chunks_of(b"short"), 50)
    with pytest.raises(BackendError):
        await local_backend.upload_part("k", handle, 1, chunks_of(b"too long"), 3)
    assert files_under(local_root / TEMP_DIR) == []
    upload = local_root / MULTIPART_DIR / handle
    assert [p.name for p in files_under(upload / "00001")] == [md5(b"good")]


@pytest_twisted.ensureDeferred
async def test_crash_left_staging_breaks_nothing(
    local_backend: LocalBackend, local_root: Path
) -> None:
    """Half-created uploads, stray files and abort leftovers are never listed and block nothing."""
    staging = local_root / MULTIPART_DIR
    (staging / ("f" * 32) / "00001").mkdir(parents=True)  # created, key never written
    (staging / ("f" * 32) / "00001" / md5(b"x")).write_bytes(b"x")
    (staging / ("e" * 32)).mkdir()
    (staging / ("e" * 32) / (UPLOAD_KEY_FILE + ".new")).write_bytes(b"x")  # crash mid-write
    (staging / "stray-file").write_bytes(b"?")
    (local_root / TEMP_DIR / ("upload-" + "d" * 32 + "-1234") / "00001").mkdir(parents=True)
    (local_root / TEMP_DIR / "part-leftover").write_bytes(b"?")
    await local_backend.put("real", chunks_of(b"1"), 1)
    assert [o.key async for o in local_backend.list()] == ["real"]
    for handle in ["f" * 32, "e" * 32]:
        with pytest.raises(BackendUploadNotFound):
            await local_backend.complete_multipart("x", handle, [(1, md5(b"x"))])
        await local_backend.abort_multipart("x", handle)
    handle = await local_backend.create_multipart("new")
    etag = await local_backend.upload_part("new", handle, 1, chunks_of(b"fresh"), 5)
    await local_backend.complete_multipart("new", handle, [(1, etag)])
    assert [o.key async for o in local_backend.list()] == ["new", "real"]
    assert await read_all(local_backend, "new") == b"fresh"
