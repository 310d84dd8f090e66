"""The aws cli's high-level commands and conditional s3api calls against a real s3orch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from s3orch.testing.s3orch_process import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    S3OrchProcess,
)
from tests.integration.helpers import boto_client, run_tool, succeeded, write_tree

MiB = 1024 * 1024

# Above the aws cli's 8 MiB multipart threshold: two uploads of 2 and 3 parts.
SYNC_TREE = {
    "a.txt": 10,
    "empty": 0,
    "sub/b.bin": 70_000,
    "sub/deep/c.bin": 9 * MiB + 1,
    "big.bin": 17 * MiB,
}
SMALL_TREE = {"one": 1, "two/2": 22, "two/three/3": 333, "four": 4444}


def aws(server: S3OrchProcess, *args: str) -> subprocess.CompletedProcess[str]:
    # No config or credentials file: the user's ~/.aws is never read.
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": DEMO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEMO_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_MAX_ATTEMPTS": "1",
    }
    return run_tool(
        ["aws", "--endpoint-url", server.endpoint, *args],
        env,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    return succeeded(done).stdout


def actions(output: str, verb: str) -> set[str]:
    """The destinations of ``upload:``/``download:``/``delete:`` lines in s3 command output."""
    found = set()
    for line in output.splitlines():
        if line.startswith(verb + ": "):
            found.add(line.rsplit(" to ", 1)[-1] if " to " in line else line.split(": ", 1)[1])
    return found


def s3api(server: S3OrchProcess, *args: str) -> dict[str, Any]:
    out = ok(aws(server, "s3api", *args))
    return json.loads(out) if out.strip() else {}


def test_sync_twice_second_copies_nothing(server: S3OrchProcess, tmp_path: Path) -> None:
    """s3 sync uploads a tree (multipart above 8 MiB), and a second sync each way copies nothing."""
    source = tmp_path / "source"
    contents = write_tree(source, SYNC_TREE)
    first = ok(aws(server, "s3", "sync", "--no-progress", str(source), "s3://test/sync/"))
    assert actions(first, "upload") == {f"s3://test/sync/{name}" for name in SYNC_TREE}
    s3 = boto_client(server.endpoint)
    big = s3.head_object(Bucket="test", Key="sync/big.bin")
    assert big["ContentLength"] == 17 * MiB
    assert big["ETag"].endswith('-3"'), big["ETag"]
    assert s3.head_object(Bucket="test", Key="sync/sub/deep/c.bin")["ETag"].endswith('-2"')

    second = ok(aws(server, "s3", "sync", "--no-progress", str(source), "s3://test/sync/"))
    assert actions(second, "upload") == set(), second

    target = tmp_path / "target"
    down = ok(aws(server, "s3", "sync", "--no-progress", "s3://test/sync/", str(target)))
    assert len(actions(down, "download")) == len(SYNC_TREE)
    for name, data in contents.items():
        assert (target / name).read_bytes() == data, name
    again = ok(aws(server, "s3", "sync", "--no-progress", "s3://test/sync/", str(target)))
    assert actions(again, "download") == set(), again


def test_ls_recursive(server: S3OrchProcess, tmp_path: Path) -> None:
    """s3 ls --recursive lists every key under a prefix with its size, and nothing outside it."""
    write_tree(tmp_path / "tree", SMALL_TREE)
    ok(
        aws(
            server,
            "s3",
            "cp",
            "--recursive",
            "--no-progress",
            str(tmp_path / "tree"),
            "s3://test/lsr/",
        )
    )
    ok(
        aws(
            server, "s3", "cp", "--no-progress", str(tmp_path / "tree/one"), "s3://test/lsr-sibling"
        )
    )
    listing = ok(aws(server, "s3", "ls", "--recursive", "s3://test/lsr/"))
    entries = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +(\d+) (.+)", line)
        assert match, line
        entries[match.group(2)] = int(match.group(1))
    assert entries == {f"lsr/{name}": size for name, size in SMALL_TREE.items()}


def test_rm_recursive(server: S3OrchProcess, tmp_path: Path) -> None:
    """s3 rm --recursive deletes every key under a prefix and leaves a sibling prefix alone."""
    write_tree(tmp_path / "tree", SMALL_TREE)
    ok(
        aws(
            server,
            "s3",
            "cp",
            "--recursive",
            "--no-progress",
            str(tmp_path / "tree"),
            "s3://test/rmr/",
        )
    )
    ok(
        aws(
            server,
            "s3",
            "cp",
            "--no-progress",
            str(tmp_path / "tree/one"),
            "s3://test/rmr-keep/one",
        )
    )
    removed = ok(aws(server, "s3", "rm", "--recursive", "s3://test/rmr/"))
    assert actions(removed, "delete") == {f"s3://test/rmr/{name}" for name in SMALL_TREE}
    assert aws(server, "s3", "ls", "--recursive", "s3://test/rmr/").stdout == ""
    s3 = boto_client(server.endpoint)
    left = s3.list_objects_v2(Bucket="test", Prefix="rmr")
    assert [o["Key"] for o in left["Contents"]] == ["rmr-keep/one"]


def test_cp_and_mv_within_bucket(server: S3OrchProcess, tmp_path: Path) -> None:
    """s3 cp between keys copies server-side (part copies above 8 MiB); s3 mv removes the source."""
    files = write_tree(tmp_path, {"small": 1234, "large": 17 * MiB})
    for name in files:
        ok(aws(server, "s3", "cp", "--no-progress", str(tmp_path / name), f"s3://test/cp/{name}"))
    s3 = boto_client(server.endpoint)
    for name, data in files.items():
        copied = ok(
            aws(
                server, "s3", "cp", "--no-progress", f"s3://test/cp/{name}", f"s3://test/cp2/{name}"
            )
        )
        assert f"copy: s3://test/cp/{name} to s3://test/cp2/{name}" in copied
        assert s3.get_object(Bucket="test", Key=f"cp2/{name}")["Body"].read() == data
    assert s3.head_object(Bucket="test", Key="cp2/large")["ETag"].endswith('-3"')
    moved = ok(
        aws(server, "s3", "mv", "--no-progress", "s3://test/cp2/large", "s3://test/cp3/large")
    )
    assert "move: s3://test/cp2/large to s3://test/cp3/large" in moved
    assert s3.get_object(Bucket="test", Key="cp3/large")["Body"].read() == files["large"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="test", Prefix="cp2/")["Contents"]] == [
        "cp2/small"
    ]


def test_s3api_get_object_if_match(server: S3OrchProcess, tmp_path: Path) -> None:
    """get-object --if-match returns the object for its ETag and fails with 412 for another."""
    body = tmp_path / "body"
    body.write_bytes(b"conditional body")
    etag = s3api(server, "put-object", "--bucket", "test", "--key", "cond/m", "--body", str(body))[
        "ETag"
    ]
    assert etag == f'"{hashlib.md5(b"conditional body").hexdigest()}"'
    out = tmp_path / "out"
    got = s3api(
        server, "get-object", "--bucket", "test", "--key", "cond/m", "--if-match", etag, str(out)
    )
    assert got["ETag"] == etag and out.read_bytes() == b"conditional body"
    wrong = aws(
        server,
        *("s3api", "get-object", "--bucket", "test", "--key", "cond/m"),
        *("--if-match", '"0123456789abcdef0123456789abcdef"', str(tmp_path / "no")),
    )
    assert wrong.returncode != 0
    assert "(PreconditionFailed)" in wrong.stderr, wrong.stderr


def test_s3api_get_object_if_none_match(server: S3OrchProcess, tmp_path: Path) -> None:
    """get-object --if-none-match is 304 Not Modified for the current ETag, 200 for another."""
    body = tmp_path / "body"
    body.write_bytes(b"none-match body")
    etag = s3api(server, "put-object", "--bucket", "test", "--key", "cond/n", "--body", str(body))[
        "ETag"
    ]
    same = aws(
        server,
        *("s3api", "get-object", "--bucket", "test", "--key", "cond/n"),
        *("--if-none-match", etag, str(tmp_path / "no")),
    )
    assert same.returncode != 0
    assert "(304)" in same.stderr and "Not Modified" in same.stderr, same.stderr
    out = tmp_path / "out"
    s3api(
        server,
        *("get-object", "--bucket", "test", "--key", "cond/n"),
        *("--if-none-match", '"0123456789abcdef0123456789abcdef"', str(out)),
    )
    assert out.read_bytes() == b"none-match body"


def test_s3api_head_object_if_modified_since(server: S3OrchProcess, tmp_path: Path) -> None:
    """head-object --if-modified-since is 304 at the object's Last-Modified, 200 a day before."""
    body = tmp_path / "body"
    body.write_bytes(b"dated")
    s3api(server, "put-object", "--bucket", "test", "--key", "cond/d", "--body", str(body))
    modified = boto_client(server.endpoint).head_object(Bucket="test", Key="cond/d")["LastModified"]
    # S3 compares at one-second resolution, the resolution of Last-Modified itself.
    at = aws(
        server,
        *("s3api", "head-object", "--bucket", "test", "--key", "cond/d"),
        *("--if-modified-since", modified.isoformat()),
    )
    assert at.returncode != 0
    assert "(304)" in at.stderr, at.stderr
    before = s3api(
        server,
        *("head-object", "--bucket", "test", "--key", "cond/d"),
        *("--if-modified-since", (modified - timedelta(days=1)).isoformat()),
    )
    assert before["ContentLength"] == 5


def test_s3api_put_object_if_none_match_star(server: S3OrchProcess, tmp_path: Path) -> None:
    """put-object --if-none-match '*' creates a new key and fails with 412 on an existing one."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"first writer")
    second.write_bytes(b"second writer")
    put = ("put-object", "--bucket", "test", "--key", "cond/once", "--if-none-match", "*")
    s3api(server, *put, "--body", str(first))
    again = aws(server, "s3api", *put, "--body", str(second))
    assert again.returncode != 0
    assert "(PreconditionFailed)" in again.stderr, again.stderr
    got = boto_client(server.endpoint).get_object(Bucket="test", Key="cond/once")
    assert got["Body"].read() == b"first writer"


def test_s3api_put_object_if_match(server: S3OrchProcess, tmp_path: Path) -> None:
    """put-object --if-match replaces the object for its current ETag and fails with 412 after."""
    body = tmp_path / "body"
    body.write_bytes(b"version one")
    put = ("put-object", "--bucket", "test", "--key", "cond/cas")
    etag = s3api(server, *put, "--body", str(body))["ETag"]
    body.write_bytes(b"version two")
    s3api(server, *put, "--if-match", etag, "--body", str(body))
    body.write_bytes(b"version three")
    stale = aws(server, "s3api", *put, "--if-match", etag, "--body", str(body))
    assert stale.returncode != 0
    assert "(PreconditionFailed)" in stale.stderr, stale.stderr
    got = boto_client(server.endpoint).get_object(Bucket="test", Key="cond/cas")
    assert got["Body"].read() == b"version two"
