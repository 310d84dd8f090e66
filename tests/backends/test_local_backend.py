"""LocalBackend specifics: the key -> path mapping, confinement to its root, temp-file hygiene."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred

from s3orch.backends.interface import BackendError
from s3orch.backends.local import TEMP_DIR, LocalBackend, key_to_parts, parts_to_key
from tests.backends.sources import EDGE_KEYS, SourceFailed, chunks_of, failing_after

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
