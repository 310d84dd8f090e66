"""systemctl reload (SIGHUP): new encryption keys without a restart or a dropped connection."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import sqlite3
from pathlib import Path

import yaml

from s3orch.crypto.keys import fingerprint, generate_key
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client, wait_for


def recorded_key(workdir: Path, key: str) -> tuple[str, str]:
    with sqlite3.connect(workdir / "meta.db") as db:
        row = db.execute(
            "SELECT enc_key_id, enc_fingerprint FROM objects WHERE key = ?", (key,)
        ).fetchone()
    return row[0], row[1]


def test_sighup_switches_keys_and_keeps_connections(tmp_path: Path) -> None:
    """After SIGHUP new objects use the new key, old ones stay readable, and a keep-alive
    client connection opened before the reload keeps working; a broken file changes nothing."""
    old, new = generate_key(), generate_key()
    config = local_config(tmp_path)
    config["encryption"] = {"enabled": True, "master_key": old}
    server = S3OrchProcess(tmp_path, config)
    server.start()
    try:
        s3 = boto_client(server.endpoint)
        s3.put_object(Bucket="test", Key="before", Body=b"sealed with the old key")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/health")
        assert connection.getresponse().read()

        config["encryption"] = {"enabled": True, "master_key": new, "previous_keys": [old]}
        config["server"] = server.config["server"]
        server.config_path.write_text(yaml.safe_dump(config))
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: "reloaded encryption keys" in server.log_path.read_text())

        s3.put_object(Bucket="test", Key="after", Body=b"sealed with the new key")
        assert recorded_key(tmp_path, "after") == ("config-0", fingerprint(base64.b64decode(new)))
        assert recorded_key(tmp_path, "before")[1] == fingerprint(base64.b64decode(old))
        assert (
            s3.get_object(Bucket="test", Key="before")["Body"].read() == b"sealed with the old key"
        )
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200

        server.config_path.write_text("encryption: {enabled: maybe}\n")
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: "keeping the current keys" in server.log_path.read_text())
        s3.put_object(Bucket="test", Key="still", Body=b"still the new key")
        assert recorded_key(tmp_path, "still")[1] == fingerprint(base64.b64decode(new))
        connection.close()
    finally:
        server.stop()
