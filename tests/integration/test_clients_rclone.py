"""rclone (S3 provider Other, path-style) against a real s3orch: copy, sync and check."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from s3orch.testing.s3orch_process import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    S3OrchProcess,
)
from tests.integration.helpers import boto_client, run_tool, succeeded, write_tree

MiB = 1024 * 1024

# rclone's smallest part size; files above the cutoff go up as multipart uploads.
CHUNK = 5 * MiB
TREE = {
    "a.txt": 11,
    "empty": 0,
    "sub/b.bin": 4096,
    "sub/deep/c.bin": 2 * CHUNK + 3,
    "z.bin": 100_000,
}


@pytest.fixture(scope="module")
def rclone_env(tmp_path_factory: pytest.TempPathFactory, server: S3OrchProcess) -> dict[str, str]:
    """Environment defining remote ``s3o:`` alone; no rclone config file is read or written."""
    home = tmp_path_factory.mktemp("rclone-home")
    # No AWS_* either: rclone 1.60 refuses AWS_CA_BUNDLE ("LoadCustomCABundleError").
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "RCLONE_CONFIG": str(home / "absent.conf"),
            "RCLONE_CONFIG_S3O_TYPE": "s3",
            "RCLONE_CONFIG_S3O_PROVIDER": "Other",
            "RCLONE_CONFIG_S3O_ACCESS_KEY_ID": DEMO_ACCESS_KEY,
            "RCLONE_CONFIG_S3O_SECRET_ACCESS_KEY": DEMO_SECRET_KEY,
            "RCLONE_CONFIG_S3O_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_S3O_REGION": "us-east-1",
            "RCLONE_CONFIG_S3O_FORCE_PATH_STYLE": "true",
            "RCLONE_CONFIG_S3O_UPLOAD_CUTOFF": "5Mi",
            "RCLONE_CONFIG_S3O_CHUNK_SIZE": "5Mi",
        }
    )
    return env


def rclone(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(
        ["rclone", "--retries", "1", "--low-level-retries", "1", *args],
        env,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    return succeeded(done).stderr


def logged(log: str, what: str) -> set[str]:
    """The files that rclone's -v log says had ``what`` done to them ("Copied", "Deleted")."""
    return set(re.findall(rf"INFO  : (.+?): {what}", log))


def remote_sizes(server: S3OrchProcess, prefix: str) -> dict[str, int]:
    listed = boto_client(server.endpoint).list_objects_v2(Bucket="test", Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for o in listed.get("Contents", [])}


def test_copy_then_check(rclone_env: dict[str, str], server: S3OrchProcess, tmp_path: Path) -> None:
    """rclone copy uploads a tree (multipart above 5 MiB); check finds sizes and MD5s equal."""
    source = tmp_path / "source"
    write_tree(source, TREE)
    remote = "s3o:test/rclone/copy"
    first = ok(rclone(rclone_env, "copy", "-v", str(source), remote))
    assert logged(first, "Copied") == set(TREE), first
    assert remote_sizes(server, "rclone/copy/") == TREE
    head = boto_client(server.endpoint).head_object(Bucket="test", Key="rclone/copy/sub/deep/c.bin")
    assert head["ETag"].endswith('-3"'), head["ETag"]

    again = ok(rclone(rclone_env, "copy", "-v", str(source), remote))
    assert logged(again, "Copied") == set(), again

    checked = ok(rclone(rclone_env, "check", str(source), remote))
    assert f"{len(TREE)} matching files" in checked, checked
    assert "0 differences found" in checked and "could not be checked" not in checked, checked

    # Same size, other bytes: only the hashes can tell.
    (source / "sub/deep/c.bin").write_bytes(os.urandom(TREE["sub/deep/c.bin"]))
    differs = rclone(rclone_env, "check", str(source), remote)
    assert differs.returncode == 1, differs.stderr
    assert "1 differences found" in differs.stderr, differs.stderr


def test_sync(rclone_env: dict[str, str], server: S3OrchProcess, tmp_path: Path) -> None:
    """rclone sync mirrors a tree: changes upload, removals delete, a touch updates metadata only."""
    source = tmp_path / "source"
    write_tree(source, TREE)
    remote = "s3o:test/rclone/sync"
    first = ok(rclone(rclone_env, "sync", "-v", str(source), remote))
    assert logged(first, "Copied") == set(TREE), first

    (source / "a.txt").write_bytes(b"changed content")
    (source / "sub/b.bin").unlink()
    (source / "new.txt").write_bytes(b"new")
    # Same bytes, new mtime: rclone rewrites its mtime metadata with a server-side copy.
    stat = (source / "z.bin").stat()
    os.utime(source / "z.bin", (stat.st_atime, stat.st_mtime - 3600))
    second = ok(rclone(rclone_env, "sync", "-v", str(source), remote))
    assert logged(second, "Copied") == {"a.txt", "new.txt"}, second
    assert logged(second, "Deleted") == {"sub/b.bin"}, second
    assert logged(second, "Updated modification time in destination") == {"z.bin"}, second
    assert set(remote_sizes(server, "rclone/sync/")) == set(TREE) - {"sub/b.bin"} | {"new.txt"}

    third = ok(rclone(rclone_env, "sync", "-v", str(source), remote))
    assert not re.search(r"INFO  : .+: (Copied|Deleted|Updated)", third), third
    ok(rclone(rclone_env, "check", str(source), remote))


def test_server_side_copyto_and_moveto(
    rclone_env: dict[str, str], server: S3OrchProcess, tmp_path: Path
) -> None:
    """rclone copyto and moveto between keys of the bucket copy server-side, keeping hashes."""
    data = os.urandom(3 * CHUNK)
    (tmp_path / "obj").write_bytes(data)
    ok(rclone(rclone_env, "copyto", str(tmp_path / "obj"), "s3o:test/rclone/ss/obj"))
    copied = ok(
        rclone(rclone_env, "copyto", "-v", "s3o:test/rclone/ss/obj", "s3o:test/rclone/ss/copy")
    )
    assert "Copied (server-side copy)" in copied, copied
    moved = ok(
        rclone(rclone_env, "moveto", "-v", "s3o:test/rclone/ss/copy", "s3o:test/rclone/ss/moved")
    )
    assert "Copied (server-side copy)" in moved and "copy: Deleted" in moved, moved
    assert remote_sizes(server, "rclone/ss/") == {"obj": len(data), "moved": len(data)}
    got = boto_client(server.endpoint).get_object(Bucket="test", Key="rclone/ss/moved")
    assert got["Body"].read() == data
    sums = rclone(rclone_env, "md5sum", "s3o:test/rclone/ss")
    assert sums.returncode == 0, sums.stderr
    md5 = hashlib.md5(data).hexdigest()
    assert sorted(sums.stdout.splitlines()) == [f"{md5}  moved", f"{md5}  obj"]
