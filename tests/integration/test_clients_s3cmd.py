"""s3cmd (path-style, SigV4, plain HTTP) against a real s3orch: put, get, ls, del and sync."""

from __future__ import annotations

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

# s3cmd's smallest part size; files above it are sent as multipart uploads.
CHUNK_MB = 5
TREE = {"a.txt": 11, "empty": 0, "sub/b.bin": 4096, "sub/deep/c.bin": 11 * MiB}


@pytest.fixture(scope="module")
def s3cmd_home(tmp_path_factory: pytest.TempPathFactory, server: S3OrchProcess) -> Path:
    """A HOME holding only a config written for the server; s3cmd gets it with ``-c``."""
    home = tmp_path_factory.mktemp("s3cmd-home")
    host = f"127.0.0.1:{server.port}"
    (home / "s3cfg").write_text(
        "[default]\n"
        f"access_key = {DEMO_ACCESS_KEY}\n"
        f"secret_key = {DEMO_SECRET_KEY}\n"
        f"host_base = {host}\n"
        f"host_bucket = {host}\n"
        "bucket_location = us-east-1\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        f"multipart_chunk_size_mb = {CHUNK_MB}\n"
    )
    return home


def s3cmd(home: Path, server: S3OrchProcess, *args: str) -> subprocess.CompletedProcess[str]:
    host = f"127.0.0.1:{server.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3CMD"))}
    env["HOME"] = str(home)
    return run_tool(
        [
            *("s3cmd", "-c", str(home / "s3cfg"), "--no-ssl", "--region=us-east-1"),
            *(f"--host={host}", f"--host-bucket={host}", "--no-progress"),
            *args,
        ],
        env,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    return succeeded(done).stdout


def transfers(output: str, verb: str) -> set[str]:
    """The destinations named by s3cmd's ``upload: 'a' -> 'b'`` style lines."""
    return set(re.findall(rf"^{verb}: '.*' -> '(.*)'", output, flags=re.MULTILINE))


def listing(output: str) -> dict[str, int]:
    """Object URIs and sizes from ``s3cmd ls`` output (``DIR`` lines are skipped)."""
    found = {}
    for line in output.splitlines():
        match = re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d +(\d+) +(s3://\S+)", line.strip())
        if match:
            found[match.group(2)] = int(match.group(1))
    return found


def test_put_and_get(s3cmd_home: Path, server: S3OrchProcess, tmp_path: Path) -> None:
    """s3cmd put stores a small file and a multipart one; get brings back the same bytes."""
    files = write_tree(tmp_path, {"small": 1000, "large": 2 * CHUNK_MB * MiB + 7})
    for name in files:
        ok(s3cmd(s3cmd_home, server, "put", str(tmp_path / name), f"s3://test/s3cmd/put/{name}"))
    s3 = boto_client(server.endpoint)
    assert s3.head_object(Bucket="test", Key="s3cmd/put/large")["ETag"].endswith('-3"')
    for name, data in files.items():
        target = tmp_path / f"{name}.back"
        ok(s3cmd(s3cmd_home, server, "get", f"s3://test/s3cmd/put/{name}", str(target)))
        assert target.read_bytes() == data, name


def test_ls(s3cmd_home: Path, server: S3OrchProcess, tmp_path: Path) -> None:
    """s3cmd ls lists the bucket, one level of a prefix (with DIR entries), or all of it."""
    write_tree(tmp_path, {"x": 10, "dir/y": 20})
    ok(s3cmd(s3cmd_home, server, "put", "--recursive", f"{tmp_path}/", "s3://test/s3cmd/ls/"))
    buckets = ok(s3cmd(s3cmd_home, server, "ls"))
    assert "s3://test" in buckets and "s3://other" not in buckets
    one_level = ok(s3cmd(s3cmd_home, server, "ls", "s3://test/s3cmd/ls/"))
    assert listing(one_level) == {"s3://test/s3cmd/ls/x": 10}
    assert re.search(r"^\s*DIR\s+s3://test/s3cmd/ls/dir/$", one_level, flags=re.MULTILINE)
    everything = ok(s3cmd(s3cmd_home, server, "ls", "--recursive", "s3://test/s3cmd/ls/"))
    assert listing(everything) == {"s3://test/s3cmd/ls/x": 10, "s3://test/s3cmd/ls/dir/y": 20}


def test_del(s3cmd_home: Path, server: S3OrchProcess, tmp_path: Path) -> None:
    """s3cmd del removes one object; del --recursive --force removes a prefix in a batch."""
    write_tree(tmp_path, {"one": 1, "many/a": 2, "many/b": 3, "many/c/d": 4})
    ok(s3cmd(s3cmd_home, server, "put", "--recursive", f"{tmp_path}/", "s3://test/s3cmd/del/"))
    ok(s3cmd(s3cmd_home, server, "del", "s3://test/s3cmd/del/one"))
    missing = s3cmd(s3cmd_home, server, "get", "s3://test/s3cmd/del/one", str(tmp_path / "gone"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr, missing.stderr
    removed = ok(s3cmd(s3cmd_home, server, "del", "--recursive", "--force", "s3://test/s3cmd/del/"))
    assert removed.count("delete: ") == 3, removed
    left = boto_client(server.endpoint).list_objects_v2(Bucket="test", Prefix="s3cmd/del/")
    assert "Contents" not in left


def test_sync(s3cmd_home: Path, server: S3OrchProcess, tmp_path: Path) -> None:
    """s3cmd sync uploads a tree, a second sync sends nothing, changes and removals follow."""
    source = tmp_path / "source"
    contents = write_tree(source, TREE)
    remote = "s3://test/s3cmd/sync/"
    first = ok(s3cmd(s3cmd_home, server, "sync", f"{source}/", remote))
    assert transfers(first, "upload") == {remote + name for name in TREE}

    second = ok(s3cmd(s3cmd_home, server, "sync", f"{source}/", remote))
    assert transfers(second, "upload") == set(), second

    contents["a.txt"] = b"changed, longer"
    (source / "a.txt").write_bytes(contents["a.txt"])
    (source / "sub/b.bin").unlink()
    del contents["sub/b.bin"]
    third = ok(s3cmd(s3cmd_home, server, "sync", "--delete-removed", f"{source}/", remote))
    assert transfers(third, "upload") == {remote + "a.txt"}, third
    assert f"delete: '{remote}sub/b.bin'" in third, third

    target = tmp_path / "target"
    down = ok(s3cmd(s3cmd_home, server, "sync", remote, f"{target}/"))
    assert len(transfers(down, "download")) == len(contents), down
    for name, data in contents.items():
        assert (target / name).read_bytes() == data, name
    again = ok(s3cmd(s3cmd_home, server, "sync", remote, f"{target}/"))
    assert transfers(again, "download") == set(), again
