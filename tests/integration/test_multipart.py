"""Multipart uploads end to end, through boto3 and the aws cli, on local and S3 backends."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from s3orch.testing.s3orch_process import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, S3OrchProcess
from tests.integration.helpers import boto_client

MiB = 1024 * 1024


def code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    value: str = excinfo.value.response["Error"]["Code"]
    return value


def multipart_etag(parts: list[bytes]) -> str:
    combined = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{combined}-{len(parts)}"'


def test_create_upload_complete(s3: Any, key: str) -> None:
    """Parts uploaded (one re-uploaded) and completed read back as one object with AWS's ETag."""
    upload = s3.create_multipart_upload(
        Bucket="test", Key=key, ContentType="text/x-parts", Metadata={"a": "b"}
    )
    uid = upload["UploadId"]
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    etags = []
    for number, data in enumerate(parts, start=1):
        etags.append(
            s3.upload_part(Bucket="test", Key=key, UploadId=uid, PartNumber=number, Body=data)[
                "ETag"
            ]
        )
    parts[1] = os.urandom(5 * MiB)
    etags[1] = s3.upload_part(Bucket="test", Key=key, UploadId=uid, PartNumber=2, Body=parts[1])[
        "ETag"
    ]
    assert etags[0] == f'"{hashlib.md5(parts[0]).hexdigest()}"'
    done = s3.complete_multipart_upload(
        Bucket="test",
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]},
    )
    assert done["ETag"] == multipart_etag(parts)
    got = s3.get_object(Bucket="test", Key=key)
    assert got["Body"].read() == b"".join(parts)
    assert got["ETag"] == multipart_etag(parts)
    assert got["ContentType"] == "text/x-parts" and got["Metadata"] == {"a": "b"}
    with pytest.raises(ClientError) as excinfo:
        s3.list_parts(Bucket="test", Key=key, UploadId=uid)
    assert code(excinfo) == "NoSuchUpload"


def test_complete_checks_parts(s3: Any, key: str) -> None:
    """Complete refuses wrong ETags, descending order and small non-final parts."""
    uid = s3.create_multipart_upload(Bucket="test", Key=key)["UploadId"]
    small = s3.upload_part(Bucket="test", Key=key, UploadId=uid, PartNumber=1, Body=b"tiny")["ETag"]
    big = s3.upload_part(
        Bucket="test", Key=key, UploadId=uid, PartNumber=2, Body=os.urandom(5 * MiB)
    )["ETag"]
    cases = [
        ([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}], "InvalidPart"),
        ([{"PartNumber": 3, "ETag": big}], "InvalidPart"),
        ([{"PartNumber": 2, "ETag": big}, {"PartNumber": 1, "ETag": small}], "InvalidPartOrder"),
        ([{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": big}], "EntityTooSmall"),
    ]
    for listed, expected in cases:
        with pytest.raises(ClientError) as excinfo:
            s3.complete_multipart_upload(
                Bucket="test", Key=key, UploadId=uid, MultipartUpload={"Parts": listed}
            )
        assert code(excinfo) == expected
    s3.abort_multipart_upload(Bucket="test", Key=key, UploadId=uid)
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket="test", Key=key)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_upload_id_is_bound_to_bucket_and_key(s3orch: S3OrchProcess, s3: Any, key: str) -> None:
    """An upload id works only with its own bucket and key, for its own tenant."""
    uid = s3.create_multipart_upload(Bucket="test", Key=key)["UploadId"]
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket="test", Key=key + "-other", UploadId=uid, PartNumber=1, Body=b"x")
    assert code(excinfo) == "NoSuchUpload"
    other = boto_client(s3orch.endpoint, "AKIAS3ORCHOTHER00001", "other-secret")
    for call in (
        lambda: other.upload_part(Bucket="other", Key=key, UploadId=uid, PartNumber=1, Body=b"x"),
        lambda: other.abort_multipart_upload(Bucket="other", Key=key, UploadId=uid),
        lambda: other.list_parts(Bucket="other", Key=key, UploadId=uid),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert code(excinfo) == "NoSuchUpload"
    with pytest.raises(ClientError) as excinfo:
        other.abort_multipart_upload(Bucket="test", Key=key, UploadId=uid)
    assert code(excinfo) == "AccessDenied"
    s3.abort_multipart_upload(Bucket="test", Key=key, UploadId=uid)


def test_list_parts_paging(s3: Any, key: str) -> None:
    """ListParts pages with part-number-marker and max-parts."""
    uid = s3.create_multipart_upload(Bucket="test", Key=key)["UploadId"]
    for number in range(1, 6):
        s3.upload_part(
            Bucket="test", Key=key, UploadId=uid, PartNumber=number, Body=bytes([number]) * 10
        )
    first = s3.list_parts(Bucket="test", Key=key, UploadId=uid, MaxParts=2)
    assert [p["PartNumber"] for p in first["Parts"]] == [1, 2] and first["IsTruncated"]
    rest = s3.list_parts(
        Bucket="test", Key=key, UploadId=uid, PartNumberMarker=first["NextPartNumberMarker"]
    )
    assert [p["PartNumber"] for p in rest["Parts"]] == [3, 4, 5] and not rest["IsTruncated"]
    assert rest["Parts"][0]["Size"] == 10
    s3.abort_multipart_upload(Bucket="test", Key=key, UploadId=uid)


def test_list_multipart_uploads(s3: Any) -> None:
    """ListMultipartUploads filters by prefix, rolls up at the delimiter and pages with markers."""
    prefix = f"mpu-{secrets.token_hex(4)}/"
    ids = {}
    for name in ("a", "b", "b", "dir/x", "dir/y"):
        uid = s3.create_multipart_upload(Bucket="test", Key=prefix + name)["UploadId"]
        ids.setdefault(name, []).append(uid)
    listed = s3.list_multipart_uploads(Bucket="test", Prefix=prefix, Delimiter="/")
    assert [u["Key"] for u in listed["Uploads"]] == [prefix + "a", prefix + "b", prefix + "b"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == [prefix + "dir/"]
    seen = []
    kwargs: dict[str, Any] = {"Bucket": "test", "Prefix": prefix, "MaxUploads": 2}
    while True:
        page = s3.list_multipart_uploads(**kwargs)
        seen += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
    assert sorted(seen) == sorted((prefix + n, u) for n, us in ids.items() for u in us)
    for name, uids in ids.items():
        for uid in uids:
            s3.abort_multipart_upload(Bucket="test", Key=prefix + name, UploadId=uid)


def test_transfer_manager_multipart_and_ranged_download(s3: Any, key: str, tmp_path: Path) -> None:
    """boto3 upload_file/download_file with 5 MiB parts and parallel ranged GETs round-trip 23 MiB."""
    source = tmp_path / "src"
    source.write_bytes(os.urandom(23 * MiB))
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4
    )
    s3.upload_file(str(source), "test", key, Config=config)
    assert s3.head_object(Bucket="test", Key=key)["ETag"].endswith('-5"')
    target = tmp_path / "dst"
    s3.download_file("test", key, str(target), Config=config)
    assert (
        hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


def test_aws_cli_copies_40_mib(s3orch: S3OrchProcess, key: str, tmp_path: Path) -> None:
    """aws s3 cp of a 40 MiB file goes up as multipart and comes back identical."""
    source = tmp_path / "big"
    source.write_bytes(os.urandom(40 * MiB))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": DEMO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEMO_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
    }
    base = ["aws", "--endpoint-url", s3orch.endpoint, "s3"]
    up = subprocess.run(
        [*base, "cp", str(source), f"s3://test/{key}"], env=env, capture_output=True, timeout=300
    )
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = subprocess.run(
        [*base, "cp", f"s3://test/{key}", str(back)], env=env, capture_output=True, timeout=300
    )
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == source.read_bytes()
    head = boto_client(s3orch.endpoint).head_object(Bucket="test", Key=key)
    assert head["ETag"].endswith('-5"')
