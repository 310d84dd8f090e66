"""aws-chunked uploads end to end: framing decoded, signatures checked, never stored."""

from __future__ import annotations

import base64
import io
import os
import time
import zlib
from pathlib import Path

from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from s3orch.sigv4 import signing_key
from s3orch.testing.aws_chunked import ChunkSigning, encode_aws_chunked
from s3orch.testing.s3orch_process import DEMO_SECRET_KEY, S3OrchProcess
from tests.integration.helpers import raw_request, signed_request

TOKEN = {"X-Proxy-Token": "test-proxy-token-0123456789"}


def stored_bytes(server: S3OrchProcess) -> int:
    return sum(
        p.stat().st_size
        for r in ("b1", "b2")
        for p in Path(server.workdir / r).rglob("*")
        if p.is_file()
    )


def signed_chunked_put(
    server: S3OrchProcess, key: str, payload: bytes, tamper: bool = False
) -> tuple[int, bytes]:
    """PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD, each chunk signed from the seed signature."""
    now = time.time()
    headers = {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload)),
    }
    from s3orch.sigv4 import sign_request

    host = {"host": f"127.0.0.1:{server.port}", **headers}
    signed = sign_request(
        "PUT",
        f"{server.endpoint}/test/{key}",
        host,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "AKIAS3ORCHTEST000001",
        DEMO_SECRET_KEY,
        "us-east-1",
        now,
    )
    timestamp = signed["x-amz-date"]
    seed = signed["authorization"].rsplit("Signature=", 1)[1]
    signing = ChunkSigning(
        signing_key(DEMO_SECRET_KEY, timestamp[:8], "us-east-1", "s3"),
        timestamp,
        f"{timestamp[:8]}/us-east-1/s3/aws4_request",
        seed,
    )
    body = encode_aws_chunked(payload, 64 * 1024, signing)
    if tamper:
        at = body.index(b"\r\n", body.index(b"\r\n") + 2) - 10  # inside the first chunk's data
        body = body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]
    status, _, answer = raw_request(server, "PUT", f"/test/{key}", body, {**host, **signed})
    return status, answer


def test_signed_chunks_are_decoded(server: S3OrchProcess) -> None:
    """Signed aws-chunked bodies are stored as the payload, without their framing."""
    payload = os.urandom(300_000)
    status, answer = signed_chunked_put(server, "signed", payload)
    assert status == 200, answer
    status, _, got = raw_request(server, "GET", "/test/signed", headers=TOKEN)
    assert (status, got) == (200, payload)


def test_tampered_chunk_is_rejected_and_not_stored(server: S3OrchProcess) -> None:
    """One flipped bit in a signed chunk is SignatureDoesNotMatch and nothing is stored."""
    before = stored_bytes(server)
    status, answer = signed_chunked_put(server, "tampered", os.urandom(300_000), tamper=True)
    assert status == 403 and b"SignatureDoesNotMatch" in answer
    status, _, _ = raw_request(server, "HEAD", "/test/tampered", headers=TOKEN)
    assert status == 404
    assert stored_bytes(server) == before


def test_unsigned_trailer_variant_from_botocore(server: S3OrchProcess) -> None:
    """botocore's own STREAMING-UNSIGNED-PAYLOAD-TRAILER framing (what SDKs send by default) is decoded."""
    payload = os.urandom(200_000)
    body = AwsChunkedWrapper(
        io.BytesIO(payload), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32"
    ).read()
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    assert crc.encode() in body
    status, _, answer = signed_request(
        server,
        "PUT",
        "/test/trailer",
        body,
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        headers={
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        },
    )
    assert status == 200, answer
    status, headers, got = raw_request(server, "GET", "/test/trailer", headers=TOKEN)
    assert (status, got) == (200, payload)
    assert "aws-chunked" not in headers.get("content-encoding", "")
