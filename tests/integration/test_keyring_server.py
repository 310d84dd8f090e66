"""s3orch's own keyring end to end: real servers, the real `s3orch operator` CLI, boto3.

The ceremony of issue 6 as an operator runs it (init, unseal with a threshold of shares, rekey
with verification, rotate, rotate-encryption-key, restart, unseal with the new shares) while a
client keeps reading and writing; a crash in the middle of a rekey; auto-unseal with a master
key; migrating from a master key to the keyring and back; two instances on one PostgreSQL.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg.conninfo import make_conninfo

from s3orch.admin_cli import AdminAPIError, AdminClient
from s3orch.cli import main
from s3orch.crypto.keys import generate_key
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.conftest import POSTGRES_ADMIN
from tests.integration.helpers import boto_client, put_multipart, wait_for

ADMIN_TOKEN = "keyring-admin-" + secrets.token_hex(12)
UNSEAL_KEY = re.compile(r"^Unseal Key \d+: (\S+)$", re.MULTILINE)
NEW_KEY = re.compile(r"^Key \d+: (\S+)$", re.MULTILINE)
PART = 5 * 1024 * 1024


# -- driving a server -----------------------------------------------------------------------


def keyring_config(workdir: Path, encryption: dict[str, Any] | None = None) -> dict[str, Any]:
    """Local backends and SQLite, the admin API on, encryption by the keyring (Shamir)."""
    config = local_config(workdir)
    config["admin"] = {"token": ADMIN_TOKEN}
    config["encryption"] = encryption or {"enabled": True, "keyring": {}}
    return config


def table(out: str) -> dict[str, str]:
    """The rows of a Key/Value table (or key-status's rows) as a dict."""
    rows = {}
    for line in out.splitlines():
        parts = re.split(r" {2,}", line.strip(), maxsplit=1)
        if len(parts) == 2:
            rows[parts[0]] = parts[1]
    return rows


class Operator:
    """`s3orch operator` against one server: in-process (main) or as a real subprocess."""

    def __init__(self, server: S3OrchProcess) -> None:
        self.server = server

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["operator", "--url", self.server.endpoint, "--token", ADMIN_TOKEN, *argv],
            stdout=out,
            stderr=err,
        )
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, f"{argv}: exit {code}\n{out}\n{err}"
        return out

    def typed(self, share: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """The installed `s3orch` in a process of its own, the share typed at its prompt."""
        command = shutil.which("s3orch")
        program = [command] if command else [sys.executable, "-m", "s3orch.cli"]
        env = {**os.environ, "S3ORCH_URL": self.server.endpoint, "S3ORCH_ADMIN_TOKEN": ADMIN_TOKEN}
        return subprocess.run(
            [*program, "operator", *argv],
            input=share + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def unseal(self, shares: list[str]) -> dict[str, str]:
        for share in shares:
            status = table(self.ok("unseal", share))
        return status


def admin(server: S3OrchProcess) -> AdminClient:
    return AdminClient(server.endpoint, ADMIN_TOKEN, timeout=120)


def metric(server: S3OrchProcess, name: str) -> float:
    with urllib.request.urlopen(server.endpoint + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def sqlite_key_ids(workdir: Path) -> dict[str, int]:
    """DEKs per recorded key id in the server's SQLite database."""
    with sqlite3.connect(f"file:{workdir / 'meta.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT enc_key_id, COUNT(*) FROM objects"
            " WHERE enc_key_id IS NOT NULL GROUP BY enc_key_id"
        ).fetchall()
    return {key_id: count for key_id, count in rows}


def write_objects(s3: Any, prefix: str) -> dict[str, bytes]:
    """A small object, a multi-chunk one, a multipart one and a copy; their contents."""
    bodies = {
        f"{prefix}/small": os.urandom(100),
        f"{prefix}/chunks": os.urandom(300_000),
    }
    for key, body in bodies.items():
        s3.put_object(Bucket="test", Key=key, Body=body)
    key = f"{prefix}/multipart"
    parts_data = [os.urandom(PART), os.urandom(1000)]
    put_multipart(s3, key, parts_data)
    bodies[key] = b"".join(parts_data)
    s3.copy_object(Bucket="test", Key=f"{prefix}/copy", CopySource=f"test/{prefix}/small")
    bodies[f"{prefix}/copy"] = bodies[f"{prefix}/small"]
    return bodies


def read_all(s3: Any, bodies: dict[str, bytes]) -> None:
    for key, body in bodies.items():
        assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body, key


def refused_as_sealed(call: Any) -> None:
    """``call`` fails with S3's 503 ServiceUnavailable saying s3orch is sealed."""
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert error["Error"]["Code"] == "ServiceUnavailable"
    assert "s3orch is sealed" in error["Error"]["Message"]


class ClientLoop(threading.Thread):
    """PUTs and GETs in a loop, each GET checked against what was PUT; errors are kept."""

    def __init__(self, server: S3OrchProcess) -> None:
        super().__init__(daemon=True)
        self.s3 = boto_client(server.endpoint)
        self.halt = threading.Event()
        self.errors: list[str] = []
        self.operations = 0
        self.written: dict[str, bytes] = {}

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            key = f"loop/{n % 25}"
            body = os.urandom(500 + n % 5000)
            try:
                self.s3.put_object(Bucket="test", Key=key, Body=body)
                self.written[key] = body
                got = self.s3.get_object(Bucket="test", Key=key)["Body"].read()
                if got != body:
                    self.errors.append(f"{key}: read back other bytes")
            except Exception as e:
                self.errors.append(f"{key}: {e!r}")
            self.operations += 2
            n += 1

    def progressed(self, since: int, by: int = 10) -> None:
        """Wait until the loop has done ``by`` more operations than ``since``."""
        wait_for(lambda: self.operations >= since + by, 30, "the client loop to progress")

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


@pytest.fixture
def servers() -> Iterator[list[S3OrchProcess]]:
    """Servers a test starts; each is stopped at the end."""
    started: list[S3OrchProcess] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[S3OrchProcess], workdir: Path, config: dict[str, Any]) -> S3OrchProcess:
    server = S3OrchProcess(workdir, config)
    servers.append(server)
    server.start()
    return server


# -- the ceremony -----------------------------------------------------------------------------


def test_the_whole_ceremony_through_the_cli(tmp_path: Path, servers: list[S3OrchProcess]) -> None:
    """Init, unseal, rekey+verify, rotate, re-wrap with zero client errors; restart: new shares."""
    server = start(servers, tmp_path, keyring_config(tmp_path))
    op = Operator(server)
    s3 = boto_client(server.endpoint)

    code, out, _ = op("seal-status")
    assert code == 2
    assert table(out)["Initialized"] == "false" and table(out)["Sealed"] == "true"
    assert server.health()["sealed"] is True and server.health()["status"] == "ok"
    refused_as_sealed(lambda: s3.put_object(Bucket="test", Key="early", Body=b"x"))

    out = op.ok("init", "-key-shares=5", "-key-threshold=3")
    shares = UNSEAL_KEY.findall(out)
    assert len(shares) == 5
    assert "initialized with 5 key shares and a key threshold of 3" in out
    code, _, err = op("init", "-key-shares=5", "-key-threshold=3")
    assert code == 2 and "s3orch is already initialized" in err
    code, out, _ = op("seal-status")
    assert code == 2 and table(out)["Threshold"] == "3"  # 2: sealed, as bao status

    typed = op.typed(shares[0], "unseal")
    assert typed.returncode == 0, typed.stderr
    assert "Unseal Key (will be hidden): " in typed.stderr
    assert shares[0] not in typed.stdout + typed.stderr
    assert table(typed.stdout)["Unseal Progress"] == "1/3"
    as_hex = base64.b64decode(shares[1]).hex()  # unseal takes hex as well as base64
    assert table(op.ok("unseal", as_hex))["Unseal Progress"] == "2/3"
    assert table(op.ok("unseal", shares[4]))["Sealed"] == "false"
    assert server.health()["sealed"] is False
    assert metric(server, "s3o_seal_sealed") == 0
    assert table(op.ok("key-status"))["Key Term"] == "1"

    bodies = write_objects(s3, "before")
    loop = ClientLoop(server)
    loop.start()
    try:
        loop.progressed(0)
        before_rekey = loop.operations
        out = op.ok("rekey", "-init", "-key-shares=3", "-key-threshold=2", "-verify")
        nonce = table(out)["Nonce"]
        assert table(out)["Verification Required"] == "true"
        typed = op.typed(shares[0], "rekey", f"-nonce={nonce}")
        assert typed.returncode == 0, typed.stderr
        assert "Key (will be hidden): " in typed.stderr
        assert table(typed.stdout)["Progress"] == "1/3"
        code, _, err = op("rekey", f"-nonce={nonce}", shares[0])
        assert code == 2 and "already been provided" in err
        assert table(op.ok("rekey", f"-nonce={nonce}", shares[2]))["Progress"] == "2/3"
        out = op.ok("rekey", f"-nonce={nonce}", shares[3])
        new_shares = NEW_KEY.findall(out)
        assert len(new_shares) == 3
        verify_nonce = table(out)["Verification Nonce"]
        code, out, _ = op("rekey", f"-nonce={nonce}", shares[4])
        assert code == 2 and not NEW_KEY.findall(out)  # the new shares are shown once
        assert table(op.ok("seal-status"))["Total Shares"] == "5"  # not active yet
        out = op.ok("rekey", "-verify", f"-nonce={verify_nonce}", new_shares[0])
        assert table(out)["Verification Progress"] == "1/2"
        out = op.ok("rekey", "-verify", f"-nonce={verify_nonce}", new_shares[2])
        assert "Rekey verification successful" in out
        status = table(op.ok("seal-status"))
        assert (status["Total Shares"], status["Threshold"]) == ("3", "2")
        loop.progressed(before_rekey)

        before_rotate = loop.operations
        out = op.ok("rotate")
        assert out.startswith("Success! Rotated key\n")
        assert table(out)["Key Term"] == "2"
        assert table(out)["Encryption Count"] == "0"
        loop.progressed(before_rotate)
        assert "keyring-2" in sqlite_key_ids(tmp_path)
        total_old = sqlite_key_ids(tmp_path).get("keyring-1", 0)
        assert total_old > 0
        _, answer = admin(server).call("POST", "rotate-encryption-key", {"old_key_id": "keyring-1"})
        assert answer["status"] == "complete" and answer["failed"] == 0, answer
        assert answer["rotated"] >= 1
        loop.progressed(loop.operations)
    finally:
        loop.stop()
    assert loop.errors == []
    assert set(sqlite_key_ids(tmp_path)) == {"keyring-2"}
    assert int(table(op.ok("key-status"))["Encryption Count"]) > 0
    bodies.update(loop.written)

    server.stop()
    server.start()
    assert server.health()["sealed"] is True
    assert metric(server, "s3o_seal_sealed") == 1
    refused_as_sealed(lambda: s3.get_object(Bucket="test", Key="before/small"))
    assert s3.head_object(Bucket="test", Key="before/small")["ContentLength"] == 100
    op.ok("unseal", shares[0])
    code, _, err = op("unseal", shares[1])
    assert code == 2 and "message authentication failed" in err
    assert op.unseal(new_shares[1:])["Sealed"] == "false"
    read_all(s3, bodies)
    log = server.log_path.read_text(errors="replace")
    for share in shares + new_shares:
        assert share not in log and base64.b64decode(share).hex() not in log


def test_kill_during_a_rekey_leaves_the_old_shares_valid(
    tmp_path: Path, servers: list[S3OrchProcess]
) -> None:
    """kill -9 after two of three shares of a rekey: after the restart nothing changed."""
    server = start(servers, tmp_path, keyring_config(tmp_path))
    op = Operator(server)
    shares = UNSEAL_KEY.findall(op.ok("init", "-key-shares=5", "-key-threshold=3"))
    op.unseal(shares[:3])
    s3 = boto_client(server.endpoint)
    bodies = {"k": os.urandom(5000)}
    s3.put_object(Bucket="test", Key="k", Body=bodies["k"])
    nonce = table(op.ok("rekey", "-init", "-key-shares=2", "-key-threshold=2"))["Nonce"]
    op.ok("rekey", f"-nonce={nonce}", shares[0])
    assert table(op.ok("rekey", f"-nonce={nonce}", shares[1]))["Progress"] == "2/3"

    server.kill()
    server.start()
    assert table(op.ok("rekey", "-status"))["Started"] == "false"
    status = op.unseal(shares[2:])
    assert (status["Sealed"], status["Total Shares"], status["Threshold"]) == ("false", "5", "3")
    read_all(s3, bodies)
    op.ok("rekey", "-init", "-key-shares=2", "-key-threshold=2")
    assert op.ok("rekey", "-cancel") == "Success! Canceled rekeying (if it was started)\n"
    assert table(op.ok("rekey", "-status"))["Started"] == "false"


def test_auto_unseal_with_a_master_key(tmp_path: Path, servers: list[S3OrchProcess]) -> None:
    """seal: auto unseals at start and on `unseal`; a wrong master key stays sealed till reload."""
    master_key = generate_key()
    encryption = {"enabled": True, "master_key": master_key, "keyring": {"seal": "auto"}}
    server = start(servers, tmp_path, keyring_config(tmp_path, encryption))
    op = Operator(server)
    status = table(op("seal-status")[1])
    assert (status["Seal Type"], status["Initialized"]) == ("auto", "false")
    out = op.ok("init")
    assert out.startswith("Success! s3orch is initialized") and "Unseal Key" not in out
    status = table(op.ok("seal-status"))
    assert (status["Sealed"], status["Total Shares"], status["Threshold"]) == ("false", "1", "1")
    s3 = boto_client(server.endpoint)
    bodies = write_objects(s3, "auto")
    assert set(sqlite_key_ids(tmp_path)) == {"keyring-1"}

    server.stop()
    server.start()
    assert server.health()["sealed"] is False
    read_all(s3, bodies)
    assert op.ok("seal") == "Success! s3orch is sealed.\n"
    refused_as_sealed(lambda: s3.get_object(Bucket="test", Key="auto/small"))
    assert table(op.ok("unseal"))["Sealed"] == "false"
    read_all(s3, bodies)

    server.stop()
    server.config["encryption"] = {**encryption, "master_key": generate_key()}
    server.start()
    assert server.health()["sealed"] is True
    refused_as_sealed(lambda: s3.get_object(Bucket="test", Key="auto/small"))
    server.config_path.write_text(json.dumps({**server.config, "encryption": encryption}))
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)  # systemctl reload
    wait_for(lambda: server.health()["sealed"] is False, 20, "auto-unseal after the reload")
    read_all(s3, bodies)


def test_from_a_master_key_to_the_keyring_and_back(
    tmp_path: Path, servers: list[S3OrchProcess]
) -> None:
    """rotate-encryption-key moves DEKs onto the keyring and, decrypt_only, off it again."""
    old_key, new_key = generate_key(), generate_key()
    server = start(
        servers, tmp_path, keyring_config(tmp_path, {"enabled": True, "master_key": old_key})
    )
    s3 = boto_client(server.endpoint)
    bodies = write_objects(s3, "inline")
    server.stop()

    def restart(encryption: dict[str, Any]) -> None:
        server.config["encryption"] = encryption
        server.start()

    restart({"enabled": True, "previous_keys": [old_key], "keyring": {}})
    op = Operator(server)
    init = json.loads(op.ok("init", "-key-shares=1", "-key-threshold=1", "-format=json"))
    shares = init["unseal_keys_b64"]
    assert [base64.b64decode(k).hex() for k in shares] == init["unseal_keys_hex"]
    assert (init["unseal_shares"], init["unseal_threshold"]) == (1, 1)
    op.unseal(shares)
    read_all(s3, bodies)
    bodies.update(write_objects(s3, "keyring"))
    _, answer = admin(server).call("POST", "rotate-encryption-key", {"old_key_id": "config-0"})
    assert (answer["status"], answer["failed"]) == ("complete", 0)
    assert set(sqlite_key_ids(tmp_path)) == {"keyring-1"}
    server.stop()

    restart({"enabled": True, "keyring": {}})
    op.unseal(shares)
    read_all(s3, bodies)
    server.stop()

    restart({"enabled": True, "master_key": new_key, "keyring": {"decrypt_only": True}})
    refused_as_sealed(lambda: s3.get_object(Bucket="test", Key="inline/small"))
    op.unseal(shares)
    read_all(s3, bodies)
    bodies.update(write_objects(s3, "back"))
    _, answer = admin(server).call("POST", "rotate-encryption-key", {"old_key_id": "keyring-1"})
    assert (answer["status"], answer["failed"]) == ("complete", 0)
    assert set(sqlite_key_ids(tmp_path)) == {"config-0"}
    server.stop()

    restart({"enabled": True, "master_key": new_key})
    read_all(s3, bodies)


def test_rotate_encryption_key_while_sealed_is_refused(
    tmp_path: Path, servers: list[S3OrchProcess]
) -> None:
    """No re-wrap job starts while the keyring is sealed: 503 saying so."""
    server = start(servers, tmp_path, keyring_config(tmp_path))
    with pytest.raises(AdminAPIError) as caught:
        admin(server).call("POST", "rotate-encryption-key", {"old_key_id": "keyring-1"})
    assert caught.value.status == 503 and "sealed" in caught.value.message


# -- several instances on one PostgreSQL -----------------------------------------------------


@pytest.mark.postgres
def test_rotation_on_one_instance_is_used_by_another_within_seconds(
    tmp_path: Path, servers: list[S3OrchProcess], fresh_postgres: dict[str, Any]
) -> None:
    """Two instances on one PostgreSQL: a rotation on one is wrapped with by the other in seconds."""
    config = keyring_config(tmp_path / "shared")
    config["database"] = fresh_postgres
    a = start(servers, tmp_path / "a", config)
    b = start(servers, tmp_path / "b", config)
    shares = UNSEAL_KEY.findall(Operator(a).ok("init", "-key-shares=3", "-key-threshold=2"))
    Operator(a).unseal(shares[:2])
    Operator(b).unseal(shares[1:])
    s3a, s3b = boto_client(a.endpoint), boto_client(b.endpoint)

    conninfo = make_conninfo(POSTGRES_ADMIN, dbname=fresh_postgres["database"])

    def key_id(key: str) -> str:
        with psycopg.connect(conninfo) as conn:
            row = conn.execute(
                "SELECT enc_key_id FROM objects WHERE bucket = 'test' AND key = %s", (key,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    s3b.put_object(Bucket="test", Key="b/first", Body=b"first")
    assert key_id("b/first") == "keyring-1"
    assert table(Operator(a).ok("rotate"))["Key Term"] == "2"
    rotated = time.monotonic()
    attempt = [0]

    def b_wraps_with_term_2() -> bool:
        attempt[0] += 1
        key = f"b/after-{attempt[0]}"
        s3b.put_object(Bucket="test", Key=key, Body=key.encode())
        return key_id(key) == "keyring-2"

    wait_for(b_wraps_with_term_2, 15, "instance b to wrap with keyring-2")
    assert time.monotonic() - rotated < 10
    s3a.put_object(Bucket="test", Key="a/after", Body=b"from a")
    assert s3b.get_object(Bucket="test", Key="a/after")["Body"].read() == b"from a"
    assert s3a.get_object(Bucket="test", Key="b/first")["Body"].read() == b"first"
    assert table(Operator(b).ok("key-status"))["Key Term"] == "2"
