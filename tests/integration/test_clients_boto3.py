"""boto3's presigned URLs, copy, batch delete and managed transfers against a real s3orch."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.helpers import boto_client

MiB = 1024 * 1024


@pytest.fixture
def s3(server: S3OrchProcess) -> Any:
    """A boto3 client for bucket ``test``."""
    return boto_client(server.endpoint)


def test_presigned_get(s3: Any) -> None:
    """A presigned GET URL fetched with urllib returns the object, with response-* overrides."""
    s3.put_object(Bucket="test", Key="presign/get", Body=b"presigned bytes")
    url = s3.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": "test",
            "Key": "presign/get",
            "ResponseContentType": "text/plain",
            "ResponseContentDisposition": 'attachment; filename="get.txt"',
        },
        ExpiresIn=300,
    )
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == b"presigned bytes"
        assert response.headers["Content-Type"] == "text/plain"
        assert response.headers["Content-Disposition"] == 'attachment; filename="get.txt"'
    tampered = url.replace("presign%2Fget", "presign%2Fother").replace(
        "presign/get", "presign/other"
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(tampered, timeout=30)
    assert excinfo.value.code == 403


def test_presigned_put(s3: Any) -> None:
    """A presigned PUT URL used by urllib stores the body with the signed Content-Type."""
    body = b"a,b\n1,2\n"
    url = s3.generate_presigned_url(
        "put_object",
        Params={"Bucket": "test", "Key": "presign/put", "ContentType": "text/csv"},
        ExpiresIn=300,
    )
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Type": "text/csv"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="test", Key="presign/put")
    assert got["Body"].read() == body
    assert got["ContentType"] == "text/csv"


def test_copy_object_replace_metadata(s3: Any) -> None:
    """copy_object with MetadataDirective REPLACE copies the bytes and takes the new metadata."""
    s3.put_object(
        Bucket="test",
        Key="copy/src",
        Body=b"copy me",
        ContentType="text/plain",
        Metadata={"origin": "source"},
    )
    copied = s3.copy_object(
        Bucket="test",
        Key="copy/dst",
        CopySource={"Bucket": "test", "Key": "copy/src"},
        MetadataDirective="REPLACE",
        ContentType="application/x-copied",
        Metadata={"stage": "copied"},
    )
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    dst = s3.get_object(Bucket="test", Key="copy/dst")
    assert dst["Body"].read() == b"copy me"
    assert dst["ContentType"] == "application/x-copied"
    assert dst["Metadata"] == {"stage": "copied"}
    src = s3.head_object(Bucket="test", Key="copy/src")
    assert src["Metadata"] == {"origin": "source"} and src["ContentType"] == "text/plain"


def test_copy_object_onto_itself_with_replace(s3: Any) -> None:
    """copy_object of a key onto itself with REPLACE changes its metadata and keeps its bytes."""
    s3.put_object(Bucket="test", Key="copy/self", Body=b"same bytes", Metadata={"v": "1"})
    s3.copy_object(
        Bucket="test",
        Key="copy/self",
        CopySource={"Bucket": "test", "Key": "copy/self"},
        MetadataDirective="REPLACE",
        Metadata={"v": "2"},
    )
    got = s3.get_object(Bucket="test", Key="copy/self")
    assert got["Body"].read() == b"same bytes"
    assert got["Metadata"] == {"v": "2"}


def test_delete_objects_verbose(s3: Any) -> None:
    """delete_objects reports every key as deleted, a missing one too, and removes them."""
    for name in ("a", "b", "c"):
        s3.put_object(Bucket="test", Key=f"batch/v/{name}", Body=name.encode())
    keys = ["batch/v/a", "batch/v/b", "batch/v/c", "batch/v/missing"]
    done = s3.delete_objects(Bucket="test", Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in done["Deleted"]) == keys
    assert done.get("Errors", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket="test", Prefix="batch/v/")


def test_delete_objects_quiet(s3: Any) -> None:
    """delete_objects in Quiet mode answers with no Deleted entries and removes the keys."""
    for name in ("a", "b"):
        s3.put_object(Bucket="test", Key=f"batch/q/{name}", Body=name.encode())
    done = s3.delete_objects(
        Bucket="test",
        Delete={"Objects": [{"Key": "batch/q/a"}, {"Key": "batch/q/b"}], "Quiet": True},
    )
    assert done.get("Deleted", []) == [] and done.get("Errors", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket="test", Prefix="batch/q/")


def test_upload_and_download_file_multipart(s3: Any, tmp_path: Path) -> None:
    """upload_file sends 8 MiB parts in parallel; download_file reads back with ranged GETs."""
    source = tmp_path / "source"
    data = os.urandom(25 * MiB)
    source.write_bytes(data)
    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4
    )
    s3.upload_file(str(source), "test", "transfer/big", Config=config)
    head = s3.head_object(Bucket="test", Key="transfer/big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-4"'), head["ETag"]

    ranges: list[str] = []
    lock = threading.Lock()

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        with lock:
            ranges.append(params.get("Range", ""))

    s3.meta.events.register("provide-client-params.s3.GetObject", record)
    target = tmp_path / "target"
    s3.download_file("test", "transfer/big", str(target), Config=config)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert len(ranges) == 4 and all(r.startswith("bytes=") for r in ranges), ranges


def test_checksum_sent_is_verified_and_returned(s3: Any) -> None:
    """A SHA-256 checksum boto3 sends is returned with ChecksumMode; a wrong one is BadDigest."""
    body = b"checksummed body"
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    put = s3.put_object(Bucket="test", Key="sum/ok", Body=body, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == digest
    head = s3.head_object(Bucket="test", Key="sum/ok", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == digest
    got = s3.get_object(Bucket="test", Key="sum/ok", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == digest and got["Body"].read() == body

    other = base64.b64encode(hashlib.sha256(b"other body").digest()).decode()
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key="sum/bad", Body=body, ChecksumSHA256=other)
    assert excinfo.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket="test", Key="sum/bad")
    assert missing.value.response["Error"]["Code"] == "404"
