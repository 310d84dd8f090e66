"""Malformed and hostile requests get AWS's error, in S3 XML, and store nothing."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import pytest

from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import raw_request, signed_request

TOKEN = {"X-Proxy-Token": "test-proxy-token-0123456789"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("bad-input")
    config = local_config(workdir)
    config["server"] = {"max_object_size": "1MiB"}
    process = S3OrchProcess(workdir, config)
    process.start()
    yield process
    process.stop()


def stored_files(server: S3OrchProcess) -> list[Path]:
    """Every file in the server's local backend directories."""
    return sorted(
        p for root in ("b1", "b2") for p in (server.workdir / root).rglob("*") if p.is_file()
    )


def code_of(body: bytes) -> str:
    start = body.index(b"<Code>") + 6
    return body[start : body.index(b"</Code>")].decode()


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("AWS4-HMAC-SHA256 garbage", "AuthorizationHeaderMalformed"),
        (
            "AWS4-HMAC-SHA256 Credential=x/y, SignedHeaders=host, Signature=00",
            "AuthorizationHeaderMalformed",
        ),
        ("Basic dXNlcjpwYXNz", "InvalidArgument"),
        ("AWS AKIAS3ORCHTEST000001:c2lnbmF0dXJl", "InvalidRequest"),
    ],
)
def test_malformed_authorization(server: S3OrchProcess, authorization: str, code: str) -> None:
    """Malformed Authorization headers get AWS's 400 codes."""
    status, headers, body = raw_request(
        server,
        "GET",
        "/test",
        headers={"Authorization": authorization, "x-amz-date": "20260101T000000Z"},
    )
    assert (status, code_of(body)) == (400, code)
    assert b"<RequestId>" in body and "x-amz-request-id" in headers


def test_clock_skew(server: S3OrchProcess) -> None:
    """A request signed an hour ago is RequestTimeTooSkewed."""
    status, _, body = signed_request(server, "GET", "/test", now=time.time() - 3600)
    assert (status, code_of(body)) == (403, "RequestTimeTooSkewed")


def test_payload_hash_mismatch_stores_nothing(server: S3OrchProcess) -> None:
    """A body that does not match x-amz-content-sha256 is XAmzContentSHA256Mismatch; nothing stored."""
    before = stored_files(server)
    status, _, body = signed_request(
        server, "PUT", "/test/sha", b"signed body", payload_hash="a" * 64
    )
    assert (status, code_of(body)) == (400, "XAmzContentSHA256Mismatch")
    assert stored_files(server) == before
    status, _, _ = raw_request(server, "HEAD", "/test/sha", headers=TOKEN)
    assert status == 404


def test_absurd_content_length(server: S3OrchProcess) -> None:
    """A body over max_object_size is EntityTooLarge and nothing is stored."""
    body = b"x" * (2 * 1024 * 1024)
    status, _, answer = raw_request(
        server, "PUT", "/test/big", body, {**TOKEN, "Content-Length": str(len(body))}
    )
    assert (status, code_of(answer)) == (400, "EntityTooLarge")
    status, _, _ = raw_request(server, "HEAD", "/test/big", headers=TOKEN)
    assert status == 404


@pytest.mark.parametrize(
    ("path", "code"), [("/test/%FF%FE", "InvalidURI"), ("/test/a%00b", "InvalidArgument")]
)
def test_bad_keys(server: S3OrchProcess, path: str, code: str) -> None:
    """Keys that are not valid UTF-8, or contain NUL, are refused."""
    status, _, body = raw_request(server, "PUT", path, b"x", {**TOKEN, "Content-Length": "1"})
    assert (status, code_of(body)) == (400, code)


def test_bad_range_is_ignored(server: S3OrchProcess) -> None:
    """A malformed Range header serves the whole object, as S3 does."""
    raw_request(server, "PUT", "/test/r", b"0123456789", {**TOKEN, "Content-Length": "10"})
    status, _, body = raw_request(server, "GET", "/test/r", headers={**TOKEN, "Range": "bytes=zz"})
    assert (status, body) == (200, b"0123456789")


def test_method_not_allowed(server: S3OrchProcess) -> None:
    """A POST on an object without a sub-resource is 405 MethodNotAllowed."""
    status, _, body = signed_request(server, "POST", "/test/k")
    assert (status, code_of(body)) == (405, "MethodNotAllowed")


def test_bad_max_keys(server: S3OrchProcess) -> None:
    """A non-numeric max-keys is InvalidArgument."""
    status, _, body = signed_request(server, "GET", "/test?max-keys=lots")
    assert (status, code_of(body)) == (400, "InvalidArgument")


def test_bad_continuation_token(server: S3OrchProcess) -> None:
    """A continuation token that we did not issue is InvalidArgument."""
    status, _, body = signed_request(
        server, "GET", "/test?list-type=2&continuation-token=%21%21%21"
    )
    assert (status, code_of(body)) == (400, "InvalidArgument")


def test_conditional_get_precedence(server: S3OrchProcess) -> None:
    """If-None-Match hits are 304; If-Match misses are 412 PreconditionFailed."""
    raw_request(server, "PUT", "/test/c", b"abc", {**TOKEN, "Content-Length": "3"})
    status, headers, _ = raw_request(server, "HEAD", "/test/c", headers=TOKEN)
    etag = headers["etag"]
    status, _, _ = raw_request(server, "GET", "/test/c", headers={**TOKEN, "If-None-Match": etag})
    assert status == 304
    status, _, body = raw_request(server, "GET", "/test/c", headers={**TOKEN, "If-Match": '"nope"'})
    assert (status, code_of(body)) == (412, "PreconditionFailed")
    later = email.utils.formatdate(4_000_000_000, usegmt=True)
    status, _, _ = raw_request(
        server, "GET", "/test/c", headers={**TOKEN, "If-Modified-Since": later}
    )
    assert status == 304
