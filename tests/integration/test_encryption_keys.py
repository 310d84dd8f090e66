"""Master keys across restarts: rotation, turning encryption off, a missing key, a generated key file."""

from __future__ import annotations

import base64
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from botocore.exceptions import ClientError

from s3orch.backends.local import key_to_parts
from s3orch.crypto.envelope import parse_header
from s3orch.crypto.keys import fingerprint, generate_key
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client, put_multipart, raw_request
from tests.integration.test_encryption import MARKER, labelled, local_files, marked, metric_samples

TOKEN = {"X-Proxy-Token": "test-proxy-token-0123456789"}
PLAIN_MARKER = b"<<s3orch-stored-in-plaintext-9c41>>"


class Servers:
    """Starts s3orch on one work directory with a chosen ``encryption`` section, one at a
    time, and stops whatever is still running at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.current: S3OrchProcess | None = None
        self.log_offset = 0

    def start(self, encryption: dict[str, Any] | None) -> S3OrchProcess:
        self.stop()
        config = local_config(self.workdir)
        if encryption is not None:
            config["encryption"] = encryption
        server = S3OrchProcess(self.workdir, config)
        self.log_offset = server.log_path.stat().st_size if server.log_path.exists() else 0
        server.start()
        self.current = server
        return server

    def log(self) -> str:
        """What the running server has logged since it started."""
        assert self.current is not None
        with open(self.current.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    made = Servers(tmp_path)
    yield made
    made.stop()


def key_of(text: str) -> bytes:
    return base64.b64decode(text)


def rows(workdir: Path) -> dict[str, tuple[Any, ...]]:
    """key -> (enc_scheme, enc_key_id, enc_fingerprint) of every object in bucket ``test``."""
    with sqlite3.connect(workdir / "meta.db") as db:
        found = db.execute(
            "SELECT key, enc_scheme, enc_key_id, enc_fingerprint FROM objects WHERE bucket = 'test'"
        ).fetchall()
    return {key: tuple(rest) for key, *rest in found}


def stored_file(workdir: Path, key: str) -> bytes:
    """The bytes a local backend holds for ``key``'s current version."""
    with sqlite3.connect(workdir / "meta.db") as db:
        backend, storage_key = db.execute(
            "SELECT c.backend, c.storage_key FROM copies c JOIN objects o"
            " ON o.version_id = c.version_id WHERE o.bucket = 'test' AND o.key = ?",
            (key,),
        ).fetchone()
    root = workdir / {"local1": "b1", "local2": "b2"}[backend]
    return root.joinpath(*key_to_parts(storage_key)).read_bytes()


def deks(server: S3OrchProcess) -> dict[str, float]:
    """The s3o_encryption_deks gauge by key id, keys with no DEK left out."""
    found = labelled(metric_samples(server), "s3o_encryption_deks", "key_id")
    return {key_id: count for key_id, count in found.items() if count}


def unknown_key_count(server: S3OrchProcess) -> float:
    return metric_samples(server)["s3o_encryption_unknown_key_id_total"]


def backend_bytes(workdir: Path) -> dict[Path, bytes]:
    return {**local_files(workdir / "b1"), **local_files(workdir / "b2")}


def test_rotation_keeps_old_objects_readable(servers: Servers, tmp_path: Path) -> None:
    """After moving the primary key to previous_keys, old objects read and the old key empties."""
    old_key, new_key = generate_key(), generate_key()
    server = servers.start({"enabled": True, "master_key": old_key})
    s3 = boto_client(server.endpoint)
    old = {"old/a": marked(10_000, 1), "old/b": marked(200_000, 2), "old/c": marked(3, 3)}
    for key, body in old.items():
        s3.put_object(Bucket="test", Key=key, Body=body)
    # An upload begun under the old key and finished under the new one.
    upload = s3.create_multipart_upload(Bucket="test", Key="old/upload")["UploadId"]
    assert deks(server) == {"config-0": 4}

    server = servers.start({"enabled": True, "master_key": new_key, "previous_keys": [old_key]})
    assert "not configured" not in servers.log()
    s3 = boto_client(server.endpoint)
    for key, body in old.items():
        assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body, key
    part = marked(4_000, 4)
    etag = s3.upload_part(Bucket="test", Key="old/upload", UploadId=upload, PartNumber=1, Body=part)
    s3.complete_multipart_upload(
        Bucket="test",
        Key="old/upload",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
    )
    assert s3.get_object(Bucket="test", Key="old/upload")["Body"].read() == part
    new_body = marked(70_000, 5)
    s3.put_object(Bucket="test", Key="new/d", Body=new_body)
    assert s3.get_object(Bucket="test", Key="new/d")["Body"].read() == new_body

    old_fp, new_fp = fingerprint(key_of(old_key)), fingerprint(key_of(new_key))
    found = rows(tmp_path)
    for key in old:
        assert found[key] == ("senc2", "config-0", old_fp)
    # Completing re-wraps the upload's DEK with the primary key: no rotation can miss it.
    assert found["old/upload"] == ("senc2-parts", "config-0", new_fp)
    assert found["new/d"] == ("senc2", "config-0", new_fp)
    header = parse_header(stored_file(tmp_path, "new/d"))
    assert (header.wrapped.key_id, header.wrapped.fingerprint) == ("config-0", new_fp)
    # Operators see each key under its current name.
    assert deks(server) == {"config-0": 2, "config-1": 3}

    s3.put_object(Bucket="test", Key="old/a", Body=b"overwritten")
    s3.delete_object(Bucket="test", Key="old/b")
    assert deks(server) == {"config-0": 3, "config-1": 1}
    s3.delete_object(Bucket="test", Key="old/c")
    s3.copy_object(
        Bucket="test", Key="old/upload", CopySource="test/old/upload", MetadataDirective="REPLACE"
    )
    assert deks(server) == {"config-0": 3}
    assert s3.get_object(Bucket="test", Key="old/upload")["Body"].read() == part
    assert unknown_key_count(server) == 0
    assert not any(MARKER in data for data in backend_bytes(tmp_path).values())


def test_turning_encryption_off_never_serves_ciphertext(servers: Servers, tmp_path: Path) -> None:
    """Encryption off: sealed objects read, new ones are plaintext; without a key, a 500."""
    key = generate_key()
    server = servers.start({"enabled": True, "master_key": key})
    sealed = marked(100_000, 1)
    boto_client(server.endpoint).put_object(Bucket="test", Key="sealed", Body=sealed)

    server = servers.start({"enabled": False, "master_key": key})
    s3 = boto_client(server.endpoint)
    assert s3.get_object(Bucket="test", Key="sealed")["Body"].read() == sealed
    assert (
        s3.get_object(Bucket="test", Key="sealed", Range="bytes=70000-70100")["Body"].read()
        == (sealed[70000:70101])
    )
    plain = marked(50_000, 2).replace(MARKER, PLAIN_MARKER)
    s3.put_object(Bucket="test", Key="plain", Body=plain)
    assert s3.get_object(Bucket="test", Key="plain")["Body"].read() == plain
    found = rows(tmp_path)
    assert found["sealed"][0] == "senc2"
    assert found["plain"] == (None, None, None)
    stored = backend_bytes(tmp_path)
    assert [data for data in stored.values() if PLAIN_MARKER in data] == [plain]
    assert not any(MARKER in data for data in stored.values())

    # No key at all: the sealed object is an error, never its ciphertext.
    server = servers.start(None)
    assert (
        "1 data keys are wrapped by a master key that is not configured (wrapped as config-0"
        in (servers.log())
    )
    status, _, body = raw_request(server, "GET", "/test/sealed", headers=TOKEN)
    assert status == 500
    assert ElementTree.fromstring(body).findtext("Code") == "InternalError"
    assert b"SENC" not in body and len(body) < 2000
    status, _, body = raw_request(server, "GET", "/test/plain", headers=TOKEN)
    assert (status, body) == (200, plain)


def test_unconfigured_key_fails_clearly(servers: Servers, tmp_path: Path) -> None:
    """An unconfigured key: a counted 500 naming it, a startup warning, never ciphertext."""
    lost_key, other_key = generate_key(), generate_key()
    server = servers.start({"enabled": True, "master_key": lost_key})
    s3 = boto_client(server.endpoint)
    single, multi = marked(150_000, 1), marked(20_000, 2)
    s3.put_object(Bucket="test", Key="single", Body=single)
    put_multipart(s3, "multi", [multi])
    stored = backend_bytes(tmp_path)

    server = servers.start({"enabled": True, "master_key": other_key})
    log = servers.log()
    lost_fp = fingerprint(key_of(lost_key))
    warning = "2 data keys are wrapped by a master key that is not configured (wrapped as config-0"
    assert f"{warning}, fingerprint {lost_fp})" in log
    assert "#critical]" in log.split("2 data keys are wrapped")[0].splitlines()[-1]
    before = unknown_key_count(server)
    attempts = [
        ("/test/single", {}),
        ("/test/multi", {}),
        ("/test/single", {"Range": "bytes=100000-100010"}),
        ("/test/multi", {"Range": "bytes=-5"}),
    ]
    for path, headers in attempts:
        status, answer_headers, body = raw_request(
            server, "GET", path, headers={**TOKEN, **headers}
        )
        assert status == 500, (path, headers)
        error = ElementTree.fromstring(body)
        assert error.findtext("Code") == "InternalError"
        message = error.findtext("Message") or ""
        assert "config-0" in message and lost_fp in message, message
        assert "content-range" not in answer_headers
        for data in stored.values():
            assert data[200:232] not in body
    assert unknown_key_count(server) == before + len(attempts)

    s3 = boto_client(server.endpoint)
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket="test", Key="copied", CopySource="test/single")
    assert caught.value.response["Error"]["Code"] == "InternalError"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="test", Key="copied")
    # New objects are sealed with the configured key and read back.
    s3.put_object(Bucket="test", Key="fresh", Body=b"fresh")
    assert s3.get_object(Bucket="test", Key="fresh")["Body"].read() == b"fresh"


def test_unconfigured_key_is_told_apart_from_the_configured_one(servers: Servers) -> None:
    """DEKs of an unconfigured former config-0 are not counted or named as today's config-0."""
    lost_key = generate_key()
    server = servers.start({"enabled": True, "master_key": lost_key})
    s3 = boto_client(server.endpoint)
    for i in range(3):
        s3.put_object(Bucket="test", Key=f"lost/{i}", Body=b"x")

    server = servers.start({"enabled": True, "master_key": generate_key()})
    warning = next(line for line in servers.log().splitlines() if "not configured" in line)
    boto_client(server.endpoint).put_object(Bucket="test", Key="fresh", Body=b"y")
    assert deks(server).get("config-0") == 1
    assert fingerprint(key_of(lost_key)) in warning


def test_generated_key_file(servers: Servers, tmp_path: Path) -> None:
    """A generated master_key_file is created 0600 with 32 bytes, logged loudly, and reused."""
    relative = "var/master.key"  # as in the shipped default config, relative to the work dir
    path = tmp_path / relative
    encryption = {"enabled": True, "master_key_file": relative, "generate_key_file": True}
    assert not path.exists()
    server = servers.start(encryption)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert len(key) == 32
    log = servers.log()
    created = [line for line in log.splitlines() if "Created a new master key" in line]
    assert any("#critical]" in line for line in created), log
    assert all(relative in line and "back it up" in line for line in created)
    body = marked(80_000, 1)
    boto_client(server.endpoint).put_object(Bucket="test", Key="k", Body=body)
    assert rows(tmp_path)["k"] == ("senc2", "file-0", fingerprint(key))
    assert deks(server) == {"file-0": 1}

    server = servers.start(encryption)
    assert "Created a new master key" not in servers.log()
    assert path.read_bytes() == key
    assert boto_client(server.endpoint).get_object(Bucket="test", Key="k")["Body"].read() == body
    assert not any(MARKER in data for data in backend_bytes(tmp_path).values())


def test_plaintext_upload_takes_no_parts_once_encryption_is_on(
    servers: Servers, tmp_path: Path
) -> None:
    """An upload begun with encryption off is refused new parts after it is turned on, so
    no part reaches a backend in plaintext; a new upload works and is sealed."""
    server = servers.start(None)
    s3 = boto_client(server.endpoint)
    upload = s3.create_multipart_upload(Bucket="test", Key="late")["UploadId"]

    server = servers.start({"enabled": True, "master_key": generate_key()})
    s3 = boto_client(server.endpoint)
    with pytest.raises(ClientError) as caught:
        s3.upload_part(Bucket="test", Key="late", UploadId=upload, PartNumber=1, Body=MARKER)
    assert caught.value.response["Error"]["Code"] == "InvalidRequest"
    assert not any(MARKER in data for data in backend_bytes(tmp_path).values())
    put_multipart(s3, "fresh", [MARKER * 3])
    assert s3.get_object(Bucket="test", Key="fresh")["Body"].read() == MARKER * 3
    assert not any(MARKER in data for data in backend_bytes(tmp_path).values())
