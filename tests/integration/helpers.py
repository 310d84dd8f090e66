"""Clients for integration tests."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from s3orch.sigv4 import sign_request
from s3orch.testing.s3orch_process import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, S3OrchProcess


def boto_client(
    endpoint: str, access_key: str = DEMO_ACCESS_KEY, secret: str = DEMO_SECRET_KEY
) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def raw_request(
    server: S3OrchProcess,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        has_host = any(name.lower() == "host" for name in headers or {})
        conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        names = {name.lower() for name in headers or {}}
        if body and not names & {"content-length", "transfer-encoding"}:
            conn.putheader("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def signed_request(
    server: S3OrchProcess,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    payload_hash: str | None = None,
    now: float | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A SigV4-signed request sent exactly as written (path and query are not re-encoded).

    Signed with s3orch's own signer, which the unit tests prove identical to
    botocore's, because botocore cannot sign a deliberately wrong payload hash
    or a chosen time.
    """
    all_headers = {"host": f"127.0.0.1:{server.port}", **(headers or {})}
    all_headers.update(
        sign_request(
            method,
            server.endpoint + path,
            all_headers,
            payload_hash or hashlib.sha256(body).hexdigest(),
            DEMO_ACCESS_KEY,
            DEMO_SECRET_KEY,
            "us-east-1",
            time.time() if now is None else now,
        )
    )
    return raw_request(server, method, path, body, all_headers)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(0.02)


def run_tool(
    argv: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command-line client to completion, capturing its text output."""
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def succeeded(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``done``, after asserting it exited 0 (its output is in the failure message)."""
    assert done.returncode == 0, f"{done.args}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done


def write_tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """Random files of the given sizes under ``root``; returns their contents by name."""
    contents = {}
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        contents[name] = os.urandom(size)
        path.write_bytes(contents[name])
    return contents


def put_multipart(s3: Any, key: str, parts: list[bytes], bucket: str = "test") -> None:
    """Store ``parts`` as one multipart upload of ``key`` (each part as it is, in order)."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
    )
