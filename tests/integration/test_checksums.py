"""Additional checksums (CRC32, CRC32C, SHA-1, SHA-256): verified, stored, returned on request."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zlib
from typing import Any

import crc32c
import pytest
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.helpers import raw_request, signed_request


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


EXPECTED = {
    "CRC32": lambda d: b64(zlib.crc32(d).to_bytes(4, "big")),
    "CRC32C": lambda d: b64(crc32c.crc32c(d).to_bytes(4, "big")),
    "SHA1": lambda d: b64(hashlib.sha1(d).digest()),
    "SHA256": lambda d: b64(hashlib.sha256(d).digest()),
}


@pytest.mark.parametrize("algorithm", sorted(EXPECTED))
def test_checksum_stored_and_returned(s3: Any, key: str, algorithm: str) -> None:
    """A PUT's checksum is echoed, stored, and returned by HEAD and GET in checksum mode."""
    body = os.urandom(300_000)
    put = s3.put_object(Bucket="test", Key=key, Body=body, ChecksumAlgorithm=algorithm)
    field = f"Checksum{algorithm}"
    assert put[field] == EXPECTED[algorithm](body)
    head = s3.head_object(Bucket="test", Key=key, ChecksumMode="ENABLED")
    assert head[field] == EXPECTED[algorithm](body)
    got = s3.get_object(Bucket="test", Key=key, ChecksumMode="ENABLED")
    assert got[field] == EXPECTED[algorithm](body)
    assert got["Body"].read() == body
    assert field not in s3.head_object(Bucket="test", Key=key)


def test_wrong_checksum_is_bad_digest(s3: Any, key: str) -> None:
    """A checksum that does not match the body is BadDigest and nothing is stored."""
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(
            Bucket="test",
            Key=key,
            Body=b"payload",
            ChecksumSHA256=b64(hashlib.sha256(b"other").digest()),
        )
    assert excinfo.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="test", Key=key)


def test_large_body_checksum_verified_while_streaming(s3: Any, key: str) -> None:
    """A 12 MiB body (streamed to the backend as it arrives) is checked too."""
    body = os.urandom(12 * 1024 * 1024)
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(
            Bucket="test", Key=key, Body=body, ChecksumCRC32=EXPECTED["CRC32"](body + b"!")
        )
    assert excinfo.value.response["Error"]["Code"] == "BadDigest"
    put = s3.put_object(Bucket="test", Key=key, Body=body, ChecksumAlgorithm="CRC32C")
    assert put["ChecksumCRC32C"] == EXPECTED["CRC32C"](body)


@pytest.mark.parametrize("tamper", [False, True])
def test_trailer_checksum(s3orch: S3OrchProcess, key: str, tamper: bool) -> None:
    """A checksum in an aws-chunked trailer is verified: right is stored, wrong is BadDigest."""
    payload = os.urandom(150_000)
    body = AwsChunkedWrapper(
        io.BytesIO(payload), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32"
    ).read()
    if tamper:
        good = EXPECTED["CRC32"](payload).encode()
        body = body.replace(good, EXPECTED["CRC32"](payload + b"x").encode())
    status, headers, answer = signed_request(
        s3orch,
        "PUT",
        f"/test/{key}",
        body,
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        headers={
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        },
    )
    if tamper:
        assert status == 400 and b"BadDigest" in answer
        status, _, _ = raw_request(
            s3orch, "HEAD", f"/test/{key}", headers={"X-Proxy-Token": "test-proxy-token-0123456789"}
        )
        assert status == 404
    else:
        assert status == 200, answer
        assert headers["x-amz-checksum-crc32"] == EXPECTED["CRC32"](payload)
