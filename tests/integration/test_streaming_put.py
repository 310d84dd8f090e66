"""Large PUTs stream to their backend while the client is still sending, and fail cleanly."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import raw_request, signed_request, wait_for
from tests.integration.test_quota_routing import assert_consistent

TOKEN = "test-proxy-token-0123456789"
SIZE = 8 * 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Any:
    process = S3OrchProcess(tmp_path, local_config(tmp_path))
    process.start()
    yield process
    process.stop()


def temp_bytes(server: S3OrchProcess) -> int:
    """Bytes in the local backends' temporary files (uploads in progress)."""
    return sum(
        p.stat().st_size
        for root in ("b1", "b2")
        for p in (server.workdir / root / ".tmp").glob("*")
    )


def start_put(server: S3OrchProcess, key: str, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = f"PUT /test/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Token: {TOKEN}\r\nContent-Length: {size}\r\n\r\n"
    sock.sendall(head.encode())
    return sock


def test_backend_receives_bytes_before_the_body_is_complete(server: S3OrchProcess) -> None:
    """Half an 8 MiB body is already on the backend before the client sends the rest."""
    body = os.urandom(SIZE)
    sock = start_put(server, "streamed", SIZE)
    sock.sendall(body[: SIZE // 2])
    wait_for(lambda: temp_bytes(server) >= SIZE // 4, what="bytes on the backend mid-upload")
    sock.sendall(body[SIZE // 2 :])
    response = sock.recv(65536)
    sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response
    assert f'"{hashlib.md5(body).hexdigest()}"'.encode() in response
    status, _, got = raw_request(server, "GET", "/test/streamed", headers={"X-Proxy-Token": TOKEN})
    assert status == 200 and got == body
    assert_consistent(server, server.workdir, 2)


def test_client_going_away_mid_upload_leaves_nothing(server: S3OrchProcess) -> None:
    """A client that disconnects half-way leaves no object, no temp file and no counted bytes."""
    sock = start_put(server, "abandoned", SIZE)
    sock.sendall(os.urandom(SIZE // 2))
    wait_for(lambda: temp_bytes(server) > 0, what="upload to start")
    sock.close()
    wait_for(lambda: temp_bytes(server) == 0, what="the partial upload to be removed")
    status, _, _ = raw_request(server, "HEAD", "/test/abandoned", headers={"X-Proxy-Token": TOKEN})
    assert status == 404
    wait_for(lambda: _pending_is_zero(server), what="pending bytes to be released")
    assert_consistent(server, server.workdir, 2)


def _pending_is_zero(server: S3OrchProcess) -> bool:
    from tests.integration.test_quota_routing import gauges

    return all(v == 0 for (name, _), v in gauges(server).items() if name == "quota_bytes_pending")


def test_streamed_body_with_wrong_sha256_stores_nothing(server: S3OrchProcess) -> None:
    """A large body that fails its SHA-256 check never becomes an object."""
    body = os.urandom(SIZE)
    status, _, answer = signed_request(server, "PUT", "/test/bad", body, payload_hash="b" * 64)
    assert status == 400 and b"XAmzContentSHA256Mismatch" in answer
    status, _, _ = raw_request(server, "HEAD", "/test/bad", headers={"X-Proxy-Token": TOKEN})
    assert status == 404
    assert temp_bytes(server) == 0
    assert_consistent(server, server.workdir, 2)
