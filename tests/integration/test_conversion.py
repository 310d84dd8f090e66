"""Converting stored objects: encrypt-existing seals plaintext objects already stored,
decrypt-existing turns sealed ones back into plaintext before encryption is turned off for
good. Both leave clients' views unchanged, leave no old bytes behind, keep the quota counters
equal to the disks, never revert a racing client write, and finish after a crash."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3orch.crypto.keys import generate_key
from s3orch.jobs.conversion import BATCH_LIMIT
from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.admin_helpers import (
    Servers,
    Traffic,
    admin,
    backend_files,
    committed_files,
    counter_problems,
    deks,
    job,
    post_ok,
    wait_job,
    wait_job_started,
    wait_nothing_pending,
)
from tests.integration.helpers import boto_client, put_multipart
from tests.integration.test_encryption import MARKER, marked

MiB = 1024 * 1024
ENCRYPT = "encrypt-existing"
DECRYPT = "decrypt-existing"
SEALED = b"SENC\x02"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    made = Servers(tmp_path)
    yield made
    made.stop()


def write_every_kind(server: S3OrchProcess) -> dict[str, bytes]:
    """Objects with markers every way one arrives: single, empty, multipart, copied,
    overwritten. Returns their contents."""
    s3 = boto_client(server.endpoint)
    objects = {"single": marked(200_000, 1), "small": marked(1_000, 2), "empty": b""}
    for key, body in objects.items():
        s3.put_object(Bucket="test", Key=key, Body=body)
    parts = [marked(5 * MiB, 3), marked(3_000, 4)]
    put_multipart(s3, "multi", parts)
    objects["multi"] = b"".join(parts)
    s3.copy_object(Bucket="test", Key="copy", CopySource={"Bucket": "test", "Key": "single"})
    objects["copy"] = objects["single"]
    s3.put_object(Bucket="test", Key="overwritten", Body=marked(70_000, 5))
    objects["overwritten"] = marked(50_000, 6)
    s3.put_object(Bucket="test", Key="overwritten", Body=objects["overwritten"])
    return objects


def client_view(server: S3OrchProcess, objects: dict[str, bytes]) -> dict[str, tuple[Any, ...]]:
    """What a client sees of each object: body, size, ETag, type (GET, HEAD and listing)."""
    s3 = boto_client(server.endpoint)
    listed = {
        item["Key"]: (item["Size"], item["ETag"])
        for item in s3.list_objects_v2(Bucket="test")["Contents"]
    }
    assert set(listed) == set(objects)
    view = {}
    for key, body in objects.items():
        got = s3.get_object(Bucket="test", Key=key)
        head = s3.head_object(Bucket="test", Key=key)
        assert got["Body"].read() == body, key
        assert (head["ContentLength"], head["ETag"]) == (got["ContentLength"], got["ETag"]), key
        assert listed[key] == (len(body), got["ETag"]), key
        view[key] = (got["ContentLength"], got["ETag"], got["ContentType"])
    return view


def stored(workdir: Path) -> list[bytes]:
    """The committed files of both backends, sorted."""
    return sorted(p.read_bytes() for name in ("b1", "b2") for p in committed_files(workdir / name))


def test_encrypt_existing(servers: Servers, tmp_path: Path) -> None:
    """encrypt-existing seals every plaintext object: no marker left on disk, the same bytes
    and ETags for clients, counters equal to the disks, and nothing to do a second time."""
    server = servers.start(None)
    objects = write_every_kind(server)
    before = client_view(server, objects)
    assert sum(MARKER in data for data in stored(tmp_path)) == 5

    server = servers.start({"enabled": True, "master_key": generate_key()})
    status, _, answer = admin(server, "POST", ENCRYPT, {})
    count = len(objects)
    assert (status, answer) == (
        200,
        {"status": "complete", "converted": count, "failed": 0, "total": count},
    )
    # The plaintext copies were deleted as each object was swapped.
    files = backend_files(tmp_path)
    assert [path for path, data in files.items() if MARKER in data] == []
    assert all(data.startswith(SEALED) for data in stored(tmp_path))
    assert len(stored(tmp_path)) == count
    assert client_view(server, objects) == before
    assert counter_problems(server, tmp_path) == []
    assert deks(server) == {"config-0": count}

    status, _, answer = admin(server, "POST", ENCRYPT, {})
    assert (status, answer) == (
        200,
        {"status": "complete", "converted": 0, "failed": 0, "total": 0},
    )
    server = servers.restart()
    assert client_view(server, objects) == before


def test_decrypt_existing(servers: Servers, tmp_path: Path) -> None:
    """decrypt-existing stores every sealed object in plaintext again, so that encryption
    can then be turned off with no key configured at all."""
    key = generate_key()
    server = servers.start({"enabled": True, "master_key": key})
    objects = write_every_kind(server)
    before = client_view(server, objects)
    assert not any(MARKER in data for data in backend_files(tmp_path).values())

    server = servers.start({"enabled": False, "master_key": key})
    status, _, answer = admin(server, "POST", DECRYPT, {})
    count = len(objects)
    assert (status, answer) == (
        200,
        {"status": "complete", "converted": count, "failed": 0, "total": count},
    )
    # Each object is now one plaintext file, and the sealed copies are gone.
    assert stored(tmp_path) == sorted(objects.values())
    assert counter_problems(server, tmp_path) == []
    assert deks(server) == {}
    status, _, answer = admin(server, "POST", DECRYPT, {})
    assert (status, answer) == (
        200,
        {"status": "complete", "converted": 0, "failed": 0, "total": 0},
    )

    server = servers.start(None)
    assert "not configured" not in servers.log()
    assert client_view(server, objects) == before
    assert counter_problems(server, tmp_path) == []


def plain_objects(count: int, size: int) -> dict[str, bytes]:
    return {f"plain/{i:04d}": marked(size, i) for i in range(count)}


def test_conversion_conflicts(servers: Servers) -> None:
    """encrypt-existing with encryption off is a 409; so is decrypt-existing while an
    encrypt-existing job runs, and asking for encrypt-existing again joins the running job."""
    server = servers.start(None)
    status, _, answer = admin(server, "POST", ENCRYPT, {})
    assert status == 409 and "not enabled" in answer["error"]
    objects = plain_objects(200, 8_000)
    Traffic(server).put_all(objects)
    server = servers.start({"enabled": False, "master_key": generate_key()})
    status, _, answer = admin(server, "POST", ENCRYPT, {"wait": False})
    assert status == 409 and "not enabled" in answer["error"]
    assert admin(server, "GET", "jobs")[2] == {"jobs": []}

    server = servers.start({"enabled": True, "master_key": generate_key()})
    job_id = post_ok(server, ENCRYPT, {"wait": False})["id"]
    status, _, answer = admin(server, "POST", DECRYPT, {"wait": False})
    assert status == 409, answer
    assert job_id in answer["error"] and ENCRYPT in answer["error"]
    status, _, answer = admin(server, "POST", DECRYPT, {})
    assert status == 409, answer
    status, _, answer = admin(server, "POST", ENCRYPT, {"wait": False})
    assert (status, answer) == (202, {"id": job_id, "status": "running"})
    view = wait_job(server, job_id)
    assert view["status"] == "complete", view
    assert (view["processed"], view["failed"], view["total"]) == (200, 0, 200)
    jobs = admin(server, "GET", "jobs")[2]["jobs"]
    assert [(j["id"], j["kind"]) for j in jobs] == [(job_id, ENCRYPT)]
    assert Traffic(server).unreadable(dict(objects)) == []


def job_order(workdir: Path) -> list[str]:
    """The keys of bucket ``test`` in version id order, the order conversion jobs take."""
    db = sqlite3.connect(f"file:{workdir / 'meta.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key FROM objects WHERE bucket = 'test' ORDER BY version_id")
        return [key for (key,) in rows]
    finally:
        db.close()


@pytest.mark.parametrize("kind", [ENCRYPT, DECRYPT])
def test_racing_overwrites_win(kind: str, servers: Servers, tmp_path: Path) -> None:
    """Overwrites of the very objects a conversion job is rewriting are never reverted, and
    the job counts them as done, not failed."""
    key = generate_key()
    encrypting = kind == ENCRYPT
    server = servers.start(None if encrypting else {"enabled": True, "master_key": key})
    objects = plain_objects(300, 32_000)
    Traffic(server).put_all(objects)
    server = servers.start({"enabled": encrypting, "master_key": key})
    order = job_order(tmp_path)
    traffic = Traffic(server, threads=6)
    expected = dict(objects)

    def overwrite(key: str) -> None:
        body = marked(20_000, 7) + key.encode()
        traffic.put(key, body)
        expected[key] = body

    job_id = post_ok(server, kind, {"wait": False})["id"]
    # Chase the job: as each batch begins, overwrite the objects it is about to rewrite.
    overwritten = 0
    view = job(server, job_id)
    deadline = time.monotonic() + 60
    while view["status"] == "running":
        assert time.monotonic() < deadline, view
        at = view["processed"] + view["failed"]
        if at >= overwritten:
            traffic.each(overwrite, order[at : at + BATCH_LIMIT])
            overwritten = at + BATCH_LIMIT
        view = job(server, job_id)
    changed = sum(expected[key] != objects[key] for key in objects)
    assert changed >= len(objects) // 2
    assert view["status"] == "complete", view
    assert (view["failed"], view["last_errors"]) == (0, []), view

    assert traffic.unreadable(dict(expected)) == []
    wait_nothing_pending(server)
    assert counter_problems(server, tmp_path) == []
    files = stored(tmp_path)
    if encrypting:
        assert [p for p, data in backend_files(tmp_path).items() if MARKER in data] == []
        assert all(data.startswith(SEALED) for data in files)
    else:
        assert not any(data.startswith(SEALED) for data in files)
    assert admin(server, "POST", kind, {})[2]["converted"] == 0


def test_conversion_resumes_after_a_crash(servers: Servers, tmp_path: Path) -> None:
    """kill -9 during encrypt-existing: after a restart the job completes, every object reads
    back, no plaintext is left and the counters equal the disks."""
    server = servers.start(None)
    objects = plain_objects(300, 32_000)
    Traffic(server).put_all(objects)
    server = servers.start({"enabled": True, "master_key": generate_key()})
    job_id = post_ok(server, ENCRYPT, {"wait": False})["id"]
    at_crash = wait_job_started(server, job_id)
    servers.kill()
    assert at_crash["status"] == "running", f"the job ended before the crash: {at_crash}"
    assert 0 < at_crash["processed"] < len(objects)

    server = servers.restart()
    view = wait_job(server, job_id)
    assert view["status"] == "complete" and view["failed"] == 0, view
    assert view["processed"] >= at_crash["processed"]
    assert Traffic(server).unreadable(dict(objects)) == []
    wait_nothing_pending(server)
    assert counter_problems(server, tmp_path) == []
    assert [p for p, data in backend_files(tmp_path).items() if MARKER in data] == []
    assert all(data.startswith(SEALED) for data in stored(tmp_path))
    assert len(stored(tmp_path)) == len(objects)
    assert deks(server) == {"config-0": len(objects)}
