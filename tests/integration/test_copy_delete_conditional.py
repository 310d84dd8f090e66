"""CopyObject, UploadPartCopy, DeleteObjects and conditional PUTs, as AWS answers them."""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.helpers import boto_client, signed_request

MiB = 1024 * 1024


def code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    value: str = excinfo.value.response["Error"]["Code"]
    return value


def test_copy_keeps_bytes_and_metadata(s3: Any, key: str) -> None:
    """A COPY-directive copy has the source's bytes, ETag, type and metadata."""
    body = os.urandom(100_000)
    s3.put_object(
        Bucket="test", Key=key, Body=body, ContentType="image/x-test", Metadata={"m": "1"}
    )
    result = s3.copy_object(
        Bucket="test", Key=key + "-copy", CopySource={"Bucket": "test", "Key": key}
    )
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="test", Key=key + "-copy")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["Metadata"]) == ("image/x-test", {"m": "1"})


def test_replace_onto_itself_changes_metadata(s3: Any, key: str) -> None:
    """REPLACE onto the same key changes metadata; COPY onto itself is refused."""
    s3.put_object(Bucket="test", Key=key, Body=b"same bytes", Metadata={"v": "1"})
    with pytest.raises(ClientError) as excinfo:
        s3.copy_object(Bucket="test", Key=key, CopySource={"Bucket": "test", "Key": key})
    assert code(excinfo) == "InvalidRequest"
    s3.copy_object(
        Bucket="test",
        Key=key,
        CopySource={"Bucket": "test", "Key": key},
        MetadataDirective="REPLACE",
        Metadata={"v": "2"},
        ContentType="text/plain",
    )
    head = s3.head_object(Bucket="test", Key=key)
    assert (head["Metadata"], head["ContentType"]) == ({"v": "2"}, "text/plain")
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == b"same bytes"


def test_copy_source_conditions(s3: Any, key: str) -> None:
    """x-amz-copy-source-if-* conditions that fail are 412 and copy nothing."""
    etag = s3.put_object(Bucket="test", Key=key, Body=b"c")["ETag"]
    source = {"Bucket": "test", "Key": key}
    s3.copy_object(Bucket="test", Key=key + "-1", CopySource=source, CopySourceIfMatch=etag)
    for kwargs in (
        {"CopySourceIfMatch": '"0000"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": "2100-01-01T00:00:00Z"},
        {"CopySourceIfUnmodifiedSince": "2000-01-01T00:00:00Z"},
    ):
        with pytest.raises(ClientError) as excinfo:
            s3.copy_object(Bucket="test", Key=key + "-2", CopySource=source, **kwargs)
        assert code(excinfo) == "PreconditionFailed", kwargs
    with pytest.raises(ClientError):
        s3.head_object(Bucket="test", Key=key + "-2")


def test_copy_errors(s3orch: S3OrchProcess, s3: Any, key: str) -> None:
    """Missing sources, versioned sources and other tenants' sources are refused clearly."""
    with pytest.raises(ClientError) as excinfo:
        s3.copy_object(
            Bucket="test", Key=key, CopySource={"Bucket": "test", "Key": "missing-" + key}
        )
    assert code(excinfo) == "NoSuchKey"
    s3.put_object(Bucket="test", Key=key, Body=b"v")
    with pytest.raises(ClientError) as excinfo:
        s3.copy_object(
            Bucket="test",
            Key=key + "-v",
            CopySource={"Bucket": "test", "Key": key, "VersionId": "abc"},
        )
    assert code(excinfo) == "InvalidArgument"
    other = boto_client(s3orch.endpoint, "AKIAS3ORCHOTHER00001", "other-secret")
    with pytest.raises(ClientError) as excinfo:
        other.copy_object(Bucket="other", Key=key, CopySource={"Bucket": "test", "Key": key})
    assert code(excinfo) == "AccessDenied"


def test_upload_part_copy_with_ranges(s3: Any, key: str) -> None:
    """UploadPartCopy assembles an object from byte ranges of another."""
    source = os.urandom(11 * MiB)
    s3.put_object(Bucket="test", Key=key, Body=source)
    uid = s3.create_multipart_upload(Bucket="test", Key=key + "-mp")["UploadId"]
    parts = []
    for number, (start, end) in enumerate([(0, 5 * MiB - 1), (5 * MiB, 11 * MiB - 1)], start=1):
        result = s3.upload_part_copy(
            Bucket="test",
            Key=key + "-mp",
            UploadId=uid,
            PartNumber=number,
            CopySource={"Bucket": "test", "Key": key},
            CopySourceRange=f"bytes={start}-{end}",
        )
        parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
    s3.complete_multipart_upload(
        Bucket="test", Key=key + "-mp", UploadId=uid, MultipartUpload={"Parts": parts}
    )
    assert s3.get_object(Bucket="test", Key=key + "-mp")["Body"].read() == source


def test_delete_objects(s3: Any) -> None:
    """DeleteObjects removes every listed key (missing ones count as deleted); Quiet lists none."""
    prefix = f"del-{secrets.token_hex(4)}/"
    keys = [prefix + str(i) for i in range(25)]
    for k in keys:
        s3.put_object(Bucket="test", Key=k, Body=b"x")
    result = s3.delete_objects(
        Bucket="test", Delete={"Objects": [{"Key": k} for k in [*keys[:10], prefix + "missing"]]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted([*keys[:10], prefix + "missing"])
    quiet = s3.delete_objects(
        Bucket="test", Delete={"Objects": [{"Key": k} for k in keys[10:]], "Quiet": True}
    )
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert s3.list_objects_v2(Bucket="test", Prefix=prefix)["KeyCount"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<Delete></Delete>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><Delete><Object><Key>&a;</Key></Object></Delete>',
    ],
)
def test_delete_objects_malformed(s3orch: S3OrchProcess, body: bytes) -> None:
    """Empty, broken, key-less and entity-laden bodies are MalformedXML."""
    status, _, answer = signed_request(s3orch, "POST", "/test?delete", body)
    assert status == 400 and b"MalformedXML" in answer


def test_delete_objects_over_1000_keys(s3orch: S3OrchProcess) -> None:
    """More than 1000 keys in one DeleteObjects is MalformedXML."""
    objects = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(1001))
    status, _, answer = signed_request(
        s3orch, "POST", "/test?delete", f"<Delete>{objects}</Delete>".encode()
    )
    assert status == 400 and b"MalformedXML" in answer


def test_conditional_put(s3: Any, key: str) -> None:
    """If-None-Match: * refuses an existing key; If-Match writes only over the expected ETag."""
    s3.put_object(Bucket="test", Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key=key, Body=b"second", IfNoneMatch="*")
    assert code(excinfo) == "PreconditionFailed"
    etag = s3.head_object(Bucket="test", Key=key)["ETag"]
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(
            Bucket="test", Key=key, Body=b"third", IfMatch='"00000000000000000000000000000000"'
        )
    assert code(excinfo) == "PreconditionFailed"
    s3.put_object(Bucket="test", Key=key, Body=b"fourth", IfMatch=etag)
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == b"fourth"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key=key + "-absent", Body=b"x", IfMatch=etag)
    assert code(excinfo) == "NoSuchKey"


def test_racing_create_only_puts(s3orch: S3OrchProcess, key: str) -> None:
    """Of many concurrent If-None-Match: * PUTs of one key, exactly one succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(i: int) -> bool:
        try:
            boto_client(s3orch.endpoint).put_object(
                Bucket="test", Key=key, Body=bytes([i]) * 1000, IfNoneMatch="*"
            )
            return True
        except ClientError as e:
            assert e.response["Error"]["Code"] == "PreconditionFailed"
            return False

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(12)))
    assert outcomes.count(True) == 1
