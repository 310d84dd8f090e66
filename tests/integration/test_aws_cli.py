"""The real aws cli against a real s3orch: the README's first steps, and a few s3api calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from s3orch.testing.s3orch_process import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    S3OrchProcess,
)

pytestmark = pytest.mark.skipif(shutil.which("aws") is None, reason="aws cli not installed")


def aws(
    server: S3OrchProcess, *args: str, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": DEMO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEMO_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return subprocess.run(
        ["aws", "--endpoint-url", server.endpoint, *args],
        env=env,
        input=input_bytes,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_cp_ls_and_back(server: S3OrchProcess, tmp_path: Path) -> None:
    """aws s3 cp uploads a file, s3 ls lists it, and cp brings back the same bytes."""
    source = tmp_path / "hostname"
    source.write_bytes(os.urandom(4096))
    done = aws(server, "s3", "cp", str(source), "s3://test/x")
    assert done.returncode == 0, done.stderr
    listing = aws(server, "s3", "ls", "s3://test/")
    assert listing.returncode == 0, listing.stderr
    assert b" 4096 x" in listing.stdout
    buckets = aws(server, "s3", "ls")
    assert b"test" in buckets.stdout and b"other" not in buckets.stdout
    back = tmp_path / "back"
    done = aws(server, "s3", "cp", "s3://test/x", str(back))
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == source.read_bytes()


def test_cp_from_stdin_and_rm(server: S3OrchProcess) -> None:
    """cp from stdin (an unknown-length stream) stores the bytes; rm deletes them."""
    done = aws(server, "s3", "cp", "-", "s3://test/stdin.txt", input_bytes=b"from stdin\n")
    assert done.returncode == 0, done.stderr
    out = aws(server, "s3", "cp", "s3://test/stdin.txt", "-")
    assert out.stdout == b"from stdin\n"
    assert aws(server, "s3", "rm", "s3://test/stdin.txt").returncode == 0
    assert aws(server, "s3", "ls", "s3://test/stdin.txt").stdout == b""


def test_s3api_put_head_get(server: S3OrchProcess, tmp_path: Path) -> None:
    """s3api put-object with metadata, head-object and get-object round-trip."""
    body = tmp_path / "body"
    body.write_bytes(b"s3api body")
    done = aws(
        server,
        "s3api",
        "put-object",
        "--bucket",
        "test",
        "--key",
        "api/k",
        "--body",
        str(body),
        "--content-type",
        "text/plain",
        "--metadata",
        "team=storage",
    )
    assert done.returncode == 0, done.stderr
    head = json.loads(
        aws(server, "s3api", "head-object", "--bucket", "test", "--key", "api/k").stdout
    )
    assert head["ContentLength"] == 10
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"team": "storage"}
    out = tmp_path / "out"
    got = aws(
        server,
        "s3api",
        "get-object",
        "--bucket",
        "test",
        "--key",
        "api/k",
        "--range",
        "bytes=0-4",
        str(out),
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == b"s3api"


def test_missing_key_error(server: S3OrchProcess) -> None:
    """A missing key surfaces as the aws cli's 404 error."""
    done = aws(server, "s3api", "head-object", "--bucket", "test", "--key", "nope")
    assert done.returncode != 0
    assert b"404" in done.stderr or b"Not Found" in done.stderr
