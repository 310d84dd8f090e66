"""Master key rotation as operators run it: the documented procedure end to end, the job API,
a crash in the middle, writes racing the job, /health during it, and two processes on one
PostgreSQL.

The larger tests share one seed: 2,000 objects and 3,500 open multipart uploads (5,500 DEKs)
written once under one key, then copied into each test's directory, which starts s3orch with
a new primary key and the seed's key in ``previous_keys``.
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from attrs import define

from s3orch.crypto.keys import generate_key
from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.admin_helpers import (
    ADMIN_TOKEN,
    Servers,
    Traffic,
    admin,
    backend_files,
    backend_hashes,
    deks,
    job,
    key_file,
    post_ok,
    rotation_counts,
    unknown_key_count,
    wait_job,
    wait_job_started,
)
from tests.integration.helpers import boto_client, put_multipart
from tests.integration.test_encryption import MARKER, marked

MiB = 1024 * 1024
ROTATE = "rotate-encryption-key"
SEED_OBJECTS = 2_000
SEED_UPLOADS = 3_500
SEED_DEKS = SEED_OBJECTS + SEED_UPLOADS
HEALTH_BUDGET = 0.050


# -- the operator's procedure -----------------------------------------------------------------


@define
class Procedure:
    """The encryption sections of the procedure's three configurations, for one key source."""

    old: dict[str, Any]
    rotating: dict[str, Any]  # the new key primary, the old one in previous_keys
    new: dict[str, Any]
    old_key_id: str
    new_key_id: str


def inline_keys(tmp_path: Path) -> Procedure:
    old, new = generate_key(), generate_key()
    return Procedure(
        old={"enabled": True, "master_key": old},
        rotating={"enabled": True, "master_key": new, "previous_keys": [old]},
        new={"enabled": True, "master_key": new},
        old_key_id="config-0",
        new_key_id="config-0",
    )


def key_files(tmp_path: Path) -> Procedure:
    old_path, old_base64 = key_file(tmp_path / "old.key")
    new_path, _ = key_file(tmp_path / "new.key")
    return Procedure(
        old={"enabled": True, "master_key_file": str(old_path)},
        rotating={
            "enabled": True,
            "master_key_file": str(new_path),
            "previous_keys": [old_base64],
        },
        new={"enabled": True, "master_key_file": str(new_path)},
        old_key_id="file-0",
        new_key_id="file-0",
    )


def read_all(s3: Any, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body, key


@pytest.mark.parametrize("procedure", [inline_keys, key_files], ids=["master_key", "key_file"])
def test_operator_procedure(procedure: Any, tmp_path: Path) -> None:
    """The documented rotation, step by step, keeps every object and open upload readable."""
    keys: Procedure = procedure(tmp_path)
    servers = Servers(tmp_path / "data")
    try:
        server = servers.start(keys.old)
        s3 = boto_client(server.endpoint)
        objects = {"single": marked(150_000, 1), "small": b"s", "empty": b""}
        for key, body in objects.items():
            s3.put_object(Bucket="test", Key=key, Body=body)
        parts = [marked(5 * MiB, 2), marked(3_000, 3)]
        put_multipart(s3, "multi", parts)
        objects["multi"] = b"".join(parts)
        s3.copy_object(Bucket="test", Key="copy", CopySource={"Bucket": "test", "Key": "single"})
        objects["copy"] = objects["single"]
        # Left in flight: one part now, one after the old key is gone.
        open_parts = [marked(5 * MiB, 4), marked(7_000, 5)]
        open_id = s3.create_multipart_upload(Bucket="test", Key="open")["UploadId"]
        first = s3.upload_part(
            Bucket="test", Key="open", UploadId=open_id, PartNumber=1, Body=open_parts[0]
        )["ETag"]
        total = len(objects) + 1
        assert deks(server) == {keys.old_key_id: total}
        servers.stop()
        stored = backend_hashes(servers.workdir)

        # Steps 2-3: the new key is primary, the old one decrypts only.
        server = servers.start(keys.rotating)
        assert "not configured" not in servers.log()
        s3 = boto_client(server.endpoint)
        read_all(s3, objects)
        assert deks(server) == {"config-1": total}

        # Step 4: re-wrap.
        status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": keys.old_key_id})
        assert (status, answer) == (
            200,
            {"status": "complete", "rotated": total, "failed": 0, "total": total},
        )
        # Step 5: what the operator watches.
        assert rotation_counts(server) == (total, 0)
        assert deks(server) == {keys.new_key_id: total}
        assert unknown_key_count(server) == 0
        read_all(s3, objects)
        assert backend_hashes(servers.workdir) == stored
        # A retry has nothing left to do.
        status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": keys.old_key_id})
        assert (status, answer) == (
            200,
            {"status": "complete", "rotated": 0, "failed": 0, "total": 0},
        )

        # Step 6: remove the old key and restart.
        server = servers.start(keys.new)
        assert "not configured" not in servers.log()
        s3 = boto_client(server.endpoint)
        read_all(s3, objects)
        second = s3.upload_part(
            Bucket="test", Key="open", UploadId=open_id, PartNumber=2, Body=open_parts[1]
        )["ETag"]
        s3.complete_multipart_upload(
            Bucket="test",
            Key="open",
            UploadId=open_id,
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]
            },
        )
        read_all(s3, {"open": b"".join(open_parts)})
        assert unknown_key_count(server) == 0
        assert not any(MARKER in data for data in backend_files(servers.workdir).values())
    finally:
        servers.stop()


# -- the job API ------------------------------------------------------------------------------


def test_rotation_job_api(tmp_path: Path) -> None:
    """wait:false answers 202 and an id; the job shows its progress, is listed, and a
    finished job cannot be cancelled."""
    old, new = generate_key(), generate_key()
    servers = Servers(tmp_path)
    try:
        server = servers.start({"enabled": True, "master_key": old})
        traffic = Traffic(server)
        traffic.put_all({f"k/{i}": b"v" for i in range(3)})
        server = servers.start({"enabled": True, "master_key": new, "previous_keys": [old]})

        status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": "config-0", "wait": False})
        assert status == 202
        assert answer == {"id": answer["id"], "status": "running"}
        job_id = answer["id"]
        view = wait_job(server, job_id)
        assert view["status"] == "complete"
        assert view["kind"] == ROTATE
        assert view["params"] == {"old_key_id": "config-0"}
        assert (view["rotated"], view["processed"], view["failed"], view["total"]) == (3, 3, 0, 3)
        assert view["last_errors"] == []
        started = datetime.fromisoformat(view["started"])
        finished = datetime.fromisoformat(view["finished"])
        assert started <= finished
        assert abs(time.time() - finished.timestamp()) < 60

        status, _, listed = admin(server, "GET", "jobs")
        assert status == 200
        assert [j["id"] for j in listed["jobs"]] == [job_id]
        assert listed["jobs"][0] == view
        assert admin(server, "GET", "jobs?status=complete")[2]["jobs"] == [view]
        assert admin(server, "GET", "jobs?status=running")[2]["jobs"] == []
        assert admin(server, "GET", "jobs?status=nonsense")[0] == 400

        status, _, answer = admin(server, "DELETE", f"jobs/{job_id}")
        assert status == 409
        assert "already ended" in answer["error"]
        assert job(server, job_id) == view
        assert admin(server, "GET", "jobs/0123456789abcdef")[0] == 404
        assert admin(server, "DELETE", "jobs/0123456789abcdef")[0] == 404
    finally:
        servers.stop()


def test_admin_authentication(tmp_path: Path) -> None:
    """No token configured: 404; wrong or missing token: 401 JSON; both headers work;
    a rotation without old_key_id is a 400."""
    servers = Servers(tmp_path, admin_token=None)
    try:
        server = servers.start({"enabled": True, "master_key": generate_key()})
        for token in (None, ADMIN_TOKEN):
            status, _, answer = admin(server, "GET", "jobs", token=token)
            assert status == 404 and "error" in answer
        assert admin(server, "POST", ROTATE, {"old_key_id": "config-0"})[0] == 404

        servers.admin_token = ADMIN_TOKEN
        server = servers.restart()
        for token, headers in (
            (None, {}),
            ("not-the-token", {}),
            (None, {"X-Admin-Token": "not-the-token"}),
            (None, {"Authorization": f"Basic {ADMIN_TOKEN}"}),
            (ADMIN_TOKEN[:-1], {}),
        ):
            status, answer_headers, answer = admin(
                server, "GET", "jobs", token=token, headers=headers
            )
            assert status == 401, (token, headers)
            assert set(answer) == {"error"}
            assert answer_headers["www-authenticate"].startswith("Bearer")
            status, _, answer = admin(
                server, "POST", ROTATE, {"old_key_id": "config-0"}, token=token, headers=headers
            )
            assert status == 401 and set(answer) == {"error"}
        status, _, answer = admin(server, "GET", "jobs")
        assert (status, answer) == (200, {"jobs": []})
        x_admin_token = {"X-Admin-Token": ADMIN_TOKEN}
        status, _, answer = admin(server, "GET", "jobs", token=None, headers=x_admin_token)
        assert (status, answer) == (200, {"jobs": []})

        for body in ({}, {"old_key_id": ""}, {"old_key_id": 7}, {"wait": False}):
            status, _, answer = admin(server, "POST", ROTATE, body)
            assert status == 400, body
            assert "old_key_id" in answer["error"]
        status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": "config-0", "wait": "no"})
        assert status == 400 and "wait" in answer["error"]
        assert admin(server, "POST", ROTATE, b"{not json")[0] == 400
        # None of the refused requests started a job.
        assert admin(server, "GET", "jobs")[2] == {"jobs": []}
        # The token never reaches the log.
        assert ADMIN_TOKEN not in servers.log()
    finally:
        servers.stop()


# -- a large rotation -------------------------------------------------------------------------


@define
class Seed:
    workdir: Path
    key: str
    objects: dict[str, bytes]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """5,500 DEKs under one key: objects and open multipart uploads, written once."""
    workdir = tmp_path_factory.mktemp("seed")
    key = generate_key()
    servers = Servers(workdir)
    try:
        server = servers.start({"enabled": True, "master_key": key})
        traffic = Traffic(server)
        objects = {f"bulk/{i:05d}": b"object %d, first version" % i for i in range(SEED_OBJECTS)}
        traffic.put_all(objects)
        traffic.create_uploads(f"open/{i:05d}" for i in range(SEED_UPLOADS))
        assert deks(server) == {"config-0": SEED_DEKS}
    finally:
        servers.stop()
    return Seed(workdir, key, objects)


@define
class Rotating:
    """A copy of the seed served with a new primary key, the seed's key as previous."""

    servers: Servers
    server: S3OrchProcess
    new_key: str

    def without_old_key(self) -> S3OrchProcess:
        """Restart with the new key alone, as the procedure's last step."""
        self.server = self.servers.start({"enabled": True, "master_key": self.new_key})
        assert "not configured" not in self.servers.log()
        return self.server


@pytest.fixture
def rotating(seed: Seed, tmp_path: Path) -> Iterator[Rotating]:
    """The seed copied to this test's directory and served with a new primary key."""
    workdir = tmp_path / "data"
    shutil.copytree(seed.workdir, workdir)
    servers = Servers(workdir)
    new_key = generate_key()
    try:
        server = servers.start(
            {"enabled": True, "master_key": new_key, "previous_keys": [seed.key]}
        )
        yield Rotating(servers, server, new_key)
    finally:
        servers.stop()


def finish_an_upload(server: S3OrchProcess) -> None:
    """Complete the first open upload with one part and read it back."""
    s3 = boto_client(server.endpoint)
    upload = s3.list_multipart_uploads(Bucket="test", MaxUploads=1)["Uploads"][0]
    key, upload_id = upload["Key"], upload["UploadId"]
    body = marked(20_000, 9)
    etag = s3.upload_part(Bucket="test", Key=key, UploadId=upload_id, PartNumber=1, Body=body)
    s3.complete_multipart_upload(
        Bucket="test",
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
    )
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body


def test_rotation_resumes_after_a_crash(rotating: Rotating, seed: Seed) -> None:
    """kill -9 in the middle of a rotation: after a restart the job resumes where it stopped
    and completes, and every object reads back without the old key."""
    server = rotating.server
    job_id = post_ok(server, ROTATE, {"old_key_id": "config-0", "wait": False})["id"]
    at_crash = wait_job_started(server, job_id)
    rotating.servers.kill()
    assert at_crash["status"] == "running", f"the rotation ended before the crash: {at_crash}"
    assert 0 < at_crash["processed"] < SEED_DEKS

    server = rotating.servers.restart()
    resumed = [line for line in rotating.servers.log().splitlines() if "resuming job" in line]
    assert any(job_id in line and "processed" in line for line in resumed), resumed
    view = wait_job(server, job_id)
    assert view["status"] == "complete", view
    assert view["failed"] == 0 and view["last_errors"] == []
    # A batch done but not yet recorded at the crash is not done again, so not counted.
    assert at_crash["processed"] <= view["processed"] <= SEED_DEKS
    assert view["total"] == SEED_DEKS
    assert deks(server) == {"config-0": SEED_DEKS}
    assert admin(server, "GET", "jobs?status=running")[2] == {"jobs": []}

    server = rotating.without_old_key()
    assert Traffic(server).unreadable(dict(seed.objects)) == []
    finish_an_upload(server)
    assert unknown_key_count(server) == 0


def test_rotation_never_reverts_racing_writes(rotating: Rotating, seed: Seed) -> None:
    """Overwrites and deletes made while a rotation runs win: each key ends with its newest
    content or gone, and nothing needs the old key afterwards."""
    server = rotating.server
    traffic = Traffic(server, threads=3)
    expected: dict[str, bytes | None] = dict(seed.objects)
    targets = sorted(seed.objects)[::4]
    going = threading.Event()

    def change(index_key: tuple[int, str]) -> None:
        index, key = index_key
        if index % 3 == 0:
            traffic.delete(key)
            expected[key] = None
        else:
            body = b"%s, overwritten during the rotation" % key.encode()
            traffic.put(key, body)
            expected[key] = body
        if index == 20:
            going.set()

    writer = threading.Thread(target=traffic.each, args=(change, list(enumerate(targets))))
    writer.start()
    try:
        assert going.wait(30)
        status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": "config-0"})
        # The rotation is over while the writes still go on.
        assert writer.is_alive()
    finally:
        writer.join()
    assert status == 200, answer
    assert answer["status"] == "complete" and answer["failed"] == 0
    assert answer["rotated"] <= SEED_DEKS
    deleted = sum(1 for body in expected.values() if body is None)
    assert deks(server) == {"config-0": SEED_DEKS - deleted}

    server = rotating.without_old_key()
    assert Traffic(server).unreadable(expected) == []
    assert unknown_key_count(server) == 0


def test_uploads_completed_during_rotation_are_rewrapped(rotating: Rotating) -> None:
    """An upload completed while the rotation runs leaves no DEK under the old key: its
    object reads back once the old key is removed."""
    server = rotating.server
    s3 = boto_client(server.endpoint)
    uploads = [
        (upload["UploadId"], upload["Key"])
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket="test")
        for upload in page.get("Uploads", [])
    ]
    assert len(uploads) == SEED_UPLOADS
    # The job walks uploads in upload id order: these are the last it would reach.
    last = sorted(uploads)[-3:]
    bodies = {key: marked(10_000, i) for i, (_, key) in enumerate(last)}
    etags = {
        key: s3.upload_part(
            Bucket="test", Key=key, UploadId=upload_id, PartNumber=1, Body=bodies[key]
        )["ETag"]
        for upload_id, key in last
    }

    completions = {
        upload_id: (
            f"/test/{key}?uploadId={upload_id}",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
            b"<ETag>%s</ETag></Part></CompleteMultipartUpload>" % etags[key].encode(),
        )
        for upload_id, key in last
    }
    traffic = Traffic(server, threads=len(last))

    def complete(upload_id: str) -> None:
        status, answer, _ = traffic.request("POST", *completions[upload_id])
        assert status == 200 and b"<Error>" not in answer, answer

    job_id = post_ok(server, ROTATE, {"old_key_id": "config-0", "wait": False})["id"]
    # Objects come first; once they are done, complete uploads the job has not reached.
    seen = job(server, job_id)
    deadline = time.monotonic() + 30
    while seen["status"] == "running" and seen["processed"] < SEED_OBJECTS:
        assert time.monotonic() < deadline, seen
        seen = job(server, job_id)
    traffic.each(complete, completions)
    completed = time.time()
    view = wait_job(server, job_id)
    assert view["status"] == "complete" and view["failed"] == 0, view
    assert completed < datetime.fromisoformat(view["finished"]).timestamp(), "too late to race"

    assert deks(server) == {"config-0": SEED_DEKS}
    server = rotating.without_old_key()
    assert Traffic(server).unreadable(bodies) == []


def test_cancel_then_retry(rotating: Rotating) -> None:
    """DELETE stops a running rotation at a batch boundary; a retry re-wraps exactly the
    DEKs the cancelled job had not."""
    server = rotating.server
    job_id = post_ok(server, ROTATE, {"old_key_id": "config-0", "wait": False})["id"]
    wait_job_started(server, job_id)
    status, _, cancelled = admin(server, "DELETE", f"jobs/{job_id}")
    assert status == 200, cancelled
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"], cancelled
    assert cancelled["processed"] < SEED_DEKS
    assert cancelled["finished"] is not None
    assert job(server, job_id) == cancelled
    assert deks(server) == {
        key_id: count
        for key_id, count in (
            ("config-0", cancelled["processed"]),
            ("config-1", SEED_DEKS - cancelled["processed"]),
        )
        if count
    }

    status, _, answer = admin(server, "POST", ROTATE, {"old_key_id": "config-0"})
    remaining = SEED_DEKS - cancelled["processed"]
    assert (status, answer) == (
        200,
        {"status": "complete", "rotated": remaining, "failed": 0, "total": remaining},
    )
    assert deks(server) == {"config-0": SEED_DEKS}
    assert rotation_counts(server) == (SEED_DEKS, 0)


def test_health_stays_fast_during_rotation(rotating: Rotating) -> None:
    """/health answers within 50 ms throughout a rotation of 5,500 DEKs."""
    server = rotating.server
    samples: list[tuple[float, float]] = []  # (wall clock when sent, latency in seconds)
    failures: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            while not stop.is_set():
                sent = time.time()
                began = time.perf_counter()
                conn.request("GET", "/health")
                response = conn.getresponse()
                body = response.read()
                samples.append((sent, time.perf_counter() - began))
                if response.status != 200 or b'"ok"' not in body:
                    failures.append(f"{response.status} {body!r}")
        finally:
            conn.close()

    probes = [threading.Thread(target=probe) for _ in range(2)]
    for thread in probes:
        thread.start()
    try:
        job_id = post_ok(server, ROTATE, {"old_key_id": "config-0", "wait": False})["id"]
        view = wait_job(server, job_id)
    finally:
        stop.set()
        for thread in probes:
            thread.join()
    assert view["status"] == "complete" and view["rotated"] == SEED_DEKS, view
    assert failures == []
    started = datetime.fromisoformat(view["started"]).timestamp()
    finished = datetime.fromisoformat(view["finished"]).timestamp()
    during = sorted(latency for sent, latency in samples if started <= sent <= finished)
    figures = (
        f"rotation of {SEED_DEKS} DEKs in {finished - started:.3f} s; /health during it:"
        f" {len(during)} requests, p50 {statistics.median(during) * 1000:.1f} ms,"
        f" p99 {during[int(len(during) * 0.99)] * 1000:.1f} ms, max {during[-1] * 1000:.1f} ms;"
        f" all {len(samples)} requests: max {max(s[1] for s in samples) * 1000:.1f} ms"
    )
    print(figures)
    assert len(during) >= 20, figures
    assert during[-1] < HEALTH_BUDGET, figures


# -- two processes on one PostgreSQL ----------------------------------------------------------


@pytest.mark.postgres
def test_one_rotation_across_two_processes(tmp_path: Path, fresh_postgres: dict[str, Any]) -> None:
    """The same rotation started on two processes at once is one job, run once."""
    old, new = generate_key(), generate_key()
    data = tmp_path / "data"
    first = Servers(data, database=fresh_postgres, process_dir=tmp_path / "p1")
    second = Servers(data, database=fresh_postgres, process_dir=tmp_path / "p2")
    try:
        server = first.start({"enabled": True, "master_key": old})
        traffic = Traffic(server)
        objects = {f"pg/{i:04d}": b"pg object %d" % i for i in range(300)}
        traffic.put_all(objects)
        traffic.create_uploads(f"pg-open/{i:04d}" for i in range(1_200))
        total = len(objects) + 1_200
        rotating = {"enabled": True, "master_key": new, "previous_keys": [old]}
        servers = [first.start(rotating), second.start(rotating)]

        answers: list[dict[str, Any]] = [{}, {}]
        together = threading.Barrier(2)

        def start(index: int) -> None:
            together.wait()
            answers[index] = post_ok(
                servers[index], ROTATE, {"old_key_id": "config-0", "wait": False}
            )

        threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers[0] == answers[1] == {"id": answers[0]["id"], "status": "running"}
        job_id = answers[0]["id"]
        for server in servers:
            view = wait_job(server, job_id)
            assert view["status"] == "complete", view
            assert (view["processed"], view["failed"], view["total"]) == (total, 0, total)
            assert [j["id"] for j in admin(server, "GET", "jobs")[2]["jobs"]] == [job_id]
        successes = [rotation_counts(server) for server in servers]
        assert sum(s for s, _ in successes) == total, successes
        assert all(e == 0 for _, e in successes)
        assert all(deks(server) == {"config-0": total} for server in servers)
        assert Traffic(servers[1]).unreadable(dict(objects)) == []
    finally:
        second.stop()
        first.stop()
