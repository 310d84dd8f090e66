"""Routing, quotas and counters end to end: the database, the gauges and the disk must agree."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client, wait_for

MiB = 1024 * 1024


def start(tmp_path: Path, quotas: tuple[int, ...], strategy: str = "pack") -> S3OrchProcess:
    server = S3OrchProcess(tmp_path, local_config(tmp_path, quotas=quotas, strategy=strategy))
    server.start()
    return server


def stored_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of committed objects in a local backend directory, temp files excluded."""
    files = [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(root).parts]
    return sum(p.stat().st_size for p in files), len(files)


def gauges(server: S3OrchProcess) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(server.endpoint + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for name, backend, value in re.findall(
        r'^s3o_(quota_bytes_used|quota_bytes_pending|quota_bytes_limit|objects_count)\{backend="([^"]+)"\} (\S+)$',
        text,
        re.MULTILINE,
    ):
        found[(name, backend)] = float(value)
    return found


def assert_consistent(server: S3OrchProcess, tmp_path: Path, backends: int) -> None:
    """Each backend's counters equal what is on its disk, and nothing is pending."""
    values = gauges(server)
    for i in range(1, backends + 1):
        size, files = stored_bytes(tmp_path / f"b{i}")
        name = f"local{i}"
        assert values[("quota_bytes_used", name)] == size, name
        assert values[("objects_count", name)] == files, name
        assert values[("quota_bytes_pending", name)] == 0, name


@pytest.fixture
def server_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    servers: list[S3OrchProcess] = []

    def make(quotas: tuple[int, ...], strategy: str = "pack") -> S3OrchProcess:
        server = start(tmp_path, quotas, strategy)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def test_pack_fills_first_backend_first(server_factory: Any, tmp_path: Path) -> None:
    """pack: objects go to the first backend with room, then the next; then 507."""
    server = server_factory((1000, 1000))
    s3 = boto_client(server.endpoint)
    s3.put_object(Bucket="test", Key="a", Body=b"x" * 600)
    s3.put_object(Bucket="test", Key="b", Body=b"x" * 300)
    assert stored_bytes(tmp_path / "b1") == (900, 2)
    s3.put_object(Bucket="test", Key="c", Body=b"x" * 600)
    assert stored_bytes(tmp_path / "b2") == (600, 1)
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key="d", Body=b"x" * 500)
    assert excinfo.value.response["Error"]["Code"] == "InsufficientStorage"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 507
    assert_consistent(server, tmp_path, 2)


def test_spread_balances(server_factory: Any, tmp_path: Path) -> None:
    """spread: each write goes to the least-filled backend."""
    server = server_factory((10_000, 10_000), "spread")
    s3 = boto_client(server.endpoint)
    for i in range(6):
        s3.put_object(Bucket="test", Key=f"k{i}", Body=b"x" * 1000)
    assert stored_bytes(tmp_path / "b1") == (3000, 3)
    assert stored_bytes(tmp_path / "b2") == (3000, 3)
    assert_consistent(server, tmp_path, 2)


def test_overwrite_frees_old_bytes(server_factory: Any, tmp_path: Path) -> None:
    """An overwrite releases the old copy's bytes, so a full backend accepts it."""
    server = server_factory((1000,))
    s3 = boto_client(server.endpoint)
    s3.put_object(Bucket="test", Key="k", Body=b"1" * 600)
    with pytest.raises(ClientError):
        s3.put_object(Bucket="test", Key="k2", Body=b"2" * 600)
    s3.delete_object(Bucket="test", Key="k")
    s3.put_object(Bucket="test", Key="k", Body=b"3" * 900)
    assert s3.get_object(Bucket="test", Key="k")["Body"].read() == b"3" * 900
    assert_consistent(server, tmp_path, 1)


def test_concurrent_puts_leave_one_version(server_factory: Any, tmp_path: Path) -> None:
    """Twenty concurrent PUTs of one key leave exactly one version, in the DB and on disk."""
    server = server_factory((0, 0), "spread")
    bodies = [bytes([i]) * (10_000 + i) for i in range(20)]

    def put(body: bytes) -> None:
        boto_client(server.endpoint).put_object(Bucket="test", Key="hot", Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, bodies))
    s3 = boto_client(server.endpoint)
    got = s3.get_object(Bucket="test", Key="hot")["Body"].read()
    assert got in bodies
    files = stored_bytes(tmp_path / "b1")[1] + stored_bytes(tmp_path / "b2")[1]
    assert files == 1
    assert_consistent(server, tmp_path, 2)


def test_random_workload_keeps_counters_exact(server_factory: Any, tmp_path: Path) -> None:
    """Random puts, overwrites, deletes and failing puts (bad digests, no room) never drift a counter."""
    server = server_factory((60_000, 60_000))
    s3 = boto_client(server.endpoint)
    rng = random.Random(1234)
    keys = [f"r/{i}" for i in range(12)]
    outcomes = {"put": 0, "delete": 0, "bad-md5": 0, "no-room": 0}
    for _ in range(150):
        key = rng.choice(keys)
        action = rng.random()
        body = os.urandom(rng.choice([0, 1, 100, 5_000, 20_000, 45_000]))
        if action < 0.55:
            try:
                s3.put_object(Bucket="test", Key=key, Body=body)
                outcomes["put"] += 1
            except ClientError as e:
                assert e.response["Error"]["Code"] == "InsufficientStorage"
                outcomes["no-room"] += 1
        elif action < 0.8:
            s3.delete_object(Bucket="test", Key=key)
            outcomes["delete"] += 1
        else:
            wrong = base64.b64encode(hashlib.md5(body + b"!").digest()).decode()
            with pytest.raises(ClientError) as excinfo:
                s3.put_object(Bucket="test", Key=key, Body=body, ContentMD5=wrong)
            assert excinfo.value.response["Error"]["Code"] in ("BadDigest", "InsufficientStorage")
            outcomes["bad-md5"] += 1
    assert all(outcomes.values()), outcomes
    assert_consistent(server, tmp_path, 2)
    listed = s3.list_objects_v2(Bucket="test", Prefix="r/").get("Contents", [])
    disk = stored_bytes(tmp_path / "b1")[0] + stored_bytes(tmp_path / "b2")[0]
    assert sum(c["Size"] for c in listed) == disk


def test_crash_leaves_no_drift(server_factory: Any, tmp_path: Path) -> None:
    """After kill -9 and a restart, counters still equal what is on disk."""
    server = server_factory((0, 0))
    s3 = boto_client(server.endpoint)
    for i in range(10):
        s3.put_object(Bucket="test", Key=f"c{i}", Body=os.urandom(2000))
    server.kill()
    server.start()
    s3 = boto_client(server.endpoint)
    s3.delete_object(Bucket="test", Key="c0")
    assert len(s3.list_objects_v2(Bucket="test")["Contents"]) == 9
    assert_consistent(server, tmp_path, 2)


def test_parts_in_flight_count_against_the_quota(server_factory: Any, tmp_path: Path) -> None:
    """Uploaded parts hold quota before Complete; abort releases it; complete keeps counters exact."""
    server = server_factory((12 * MiB,))
    s3 = boto_client(server.endpoint)
    uid = s3.create_multipart_upload(Bucket="test", Key="mp")["UploadId"]
    first = s3.upload_part(
        Bucket="test", Key="mp", UploadId=uid, PartNumber=1, Body=b"1" * (5 * MiB)
    )
    second = s3.upload_part(
        Bucket="test", Key="mp", UploadId=uid, PartNumber=2, Body=b"2" * (5 * MiB)
    )
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key="other", Body=b"x" * (3 * MiB))
    assert excinfo.value.response["Error"]["Code"] == "InsufficientStorage"
    s3.complete_multipart_upload(
        Bucket="test",
        Key="mp",
        UploadId=uid,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": second["ETag"]},
            ]
        },
    )
    assert_consistent(server, tmp_path, 1)
    uid = s3.create_multipart_upload(Bucket="test", Key="mp2")["UploadId"]
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket="test", Key="mp2", UploadId=uid, PartNumber=1, Body=b"3" * (3 * MiB))
    assert excinfo.value.response["Error"]["Code"] == "InsufficientStorage"
    s3.delete_object(Bucket="test", Key="mp")
    s3.upload_part(Bucket="test", Key="mp2", UploadId=uid, PartNumber=1, Body=b"3" * (3 * MiB))
    s3.abort_multipart_upload(Bucket="test", Key="mp2", UploadId=uid)
    assert_consistent(server, tmp_path, 1)


def test_stale_uploads_are_aborted(tmp_path: Path) -> None:
    """Uploads older than multipart_max_age are aborted in the background and their parts deleted."""
    config = local_config(tmp_path, quotas=(0,))
    config["server"] = {"multipart_max_age": "2s"}
    config["buckets"][0]["max_multipart_uploads"] = 2
    server = S3OrchProcess(tmp_path, config)
    server.start()
    try:
        s3 = boto_client(server.endpoint)
        uids = [
            s3.create_multipart_upload(Bucket="test", Key=f"s{i}")["UploadId"] for i in range(2)
        ]
        s3.upload_part(Bucket="test", Key="s0", UploadId=uids[0], PartNumber=1, Body=b"p" * 1000)
        with pytest.raises(ClientError) as excinfo:
            s3.create_multipart_upload(Bucket="test", Key="s2")
        assert excinfo.value.response["Error"]["Code"] == "SlowDown"
        wait_for(
            lambda: not s3.list_multipart_uploads(Bucket="test").get("Uploads"),
            what="stale uploads aborted",
        )
        wait_for(lambda: stored_bytes(tmp_path / "b1") == (0, 0), what="parts deleted")
        assert_consistent(server, tmp_path, 1)
    finally:
        server.stop()
