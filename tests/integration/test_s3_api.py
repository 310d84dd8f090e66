"""The S3 API through boto3 against a real s3orch process and real backends."""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from s3orch.testing.s3orch_process import S3OrchProcess
from tests.integration.helpers import boto_client, raw_request, signed_request


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = excinfo.value.response["Error"]["Code"]
    return code


def test_put_get_round_trip_with_md5_etag(s3: Any, key: str) -> None:
    """A PUT stores the bytes; GET returns them with the body's MD5 as ETag."""
    body = os.urandom(300_000)
    put = s3.put_object(Bucket="test", Key=key, Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="test", Key=key)
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)
    assert got["ETag"] == put["ETag"]
    assert "x-amz-request-id" in got["ResponseMetadata"]["HTTPHeaders"]


def test_empty_object(s3: Any, key: str) -> None:
    """A zero-byte object round-trips with the MD5 of nothing."""
    s3.put_object(Bucket="test", Key=key, Body=b"")
    got = s3.get_object(Bucket="test", Key=key)
    assert got["Body"].read() == b""
    assert got["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'


def test_metadata_and_headers_round_trip(s3: Any, key: str) -> None:
    """User metadata and the standard stored headers come back on HEAD and GET."""
    s3.put_object(
        Bucket="test",
        Key=key,
        Body=b"hello",
        ContentType="text/plain",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="a.txt"',
        ContentEncoding="identity",
        ContentLanguage="fr",
        Expires="Wed, 21 Oct 2037 07:28:00 GMT",
        Metadata={"Color": "blue", "owner": "ops"},
    )
    for response in (s3.head_object(Bucket="test", Key=key), s3.get_object(Bucket="test", Key=key)):
        assert response["ContentType"] == "text/plain"
        assert response["CacheControl"] == "max-age=60"
        assert response["ContentDisposition"] == 'attachment; filename="a.txt"'
        assert response["ContentEncoding"] == "identity"
        assert response["ContentLanguage"] == "fr"
        assert response["Metadata"] == {"color": "blue", "owner": "ops"}
        assert response["ContentLength"] == 5
        assert (
            response["ResponseMetadata"]["HTTPHeaders"]["expires"]
            == "Wed, 21 Oct 2037 07:28:00 GMT"
        )


def test_default_content_type(s3: Any, key: str) -> None:
    """Without a Content-Type the object is binary/octet-stream, as on AWS."""
    s3.put_object(Bucket="test", Key=key, Body=b"x")
    head = s3.head_object(Bucket="test", Key=key)
    assert head["ContentType"] in ("binary/octet-stream", "application/octet-stream")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=100-", (100, 999)),
        ("bytes=-50", (950, 999)),
        ("bytes=990-5000", (990, 999)),
    ],
)
def test_ranges(s3: Any, key: str, header: str, expected: tuple[int, int]) -> None:
    """Range GETs answer 206 with Content-Range and exactly the asked bytes."""
    body = os.urandom(1000)
    s3.put_object(Bucket="test", Key=key, Body=body)
    got = s3.get_object(Bucket="test", Key=key, Range=header)
    start, end = expected
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes {start}-{end}/1000"
    assert got["Body"].read() == body[start : end + 1]


def test_unsatisfiable_range(s3: Any, key: str) -> None:
    """A range starting past the end is 416 InvalidRange."""
    s3.put_object(Bucket="test", Key=key, Body=b"0123456789")
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="test", Key=key, Range="bytes=10-20")
    assert error_code(excinfo) == "InvalidRange"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_delete_is_idempotent(s3: Any, key: str) -> None:
    """DELETE removes the object; deleting again (or a missing key) is still 204."""
    s3.put_object(Bucket="test", Key=key, Body=b"x")
    assert s3.delete_object(Bucket="test", Key=key)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket="test", Key=key)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="test", Key=key)
    assert error_code(excinfo) == "NoSuchKey"


def test_overwrite_serves_latest(s3: Any, key: str) -> None:
    """An overwrite replaces the object; the old bytes are never served again."""
    s3.put_object(Bucket="test", Key=key, Body=b"first")
    s3.put_object(Bucket="test", Key=key, Body=b"second version")
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == b"second version"


@pytest.mark.parametrize(
    "odd_key",
    [
        "a b+c=d&e",
        "unicodé/日本語/😀",
        "../../etc/passwd",
        "a//b///c",
        "percent%2Fslash",
        "~tilde!*'()",
        "x" * 1024,
    ],
)
def test_odd_keys_round_trip(s3: Any, odd_key: str) -> None:
    """Keys with spaces, unicode, dots, slashes and 1024 bytes are stored and listed as sent."""
    s3.put_object(Bucket="test", Key=odd_key, Body=odd_key.encode())
    assert s3.get_object(Bucket="test", Key=odd_key)["Body"].read() == odd_key.encode()
    listed = s3.list_objects_v2(Bucket="test", Prefix=odd_key)
    assert [c["Key"] for c in listed["Contents"]] == [odd_key]
    s3.delete_object(Bucket="test", Key=odd_key)


def test_key_too_long(s3: Any) -> None:
    """A key over 1024 bytes is KeyTooLongError."""
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key="y" * 1025, Body=b"x")
    assert error_code(excinfo) == "KeyTooLongError"


def test_bad_content_md5_stores_nothing(s3: Any, key: str) -> None:
    """A wrong Content-MD5 is BadDigest and the key stays absent."""
    import base64

    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key=key, Body=b"payload", ContentMD5=wrong)
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket="test", Key=key)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_metadata_too_large(s3: Any, key: str) -> None:
    """User metadata over 2 KB is MetadataTooLarge and nothing is stored."""
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="test", Key=key, Body=b"x", Metadata={"big": "v" * 2100})
    assert error_code(excinfo) == "MetadataTooLarge"


def _fill(s3: Any, prefix: str, keys: list[str]) -> None:
    for k in keys:
        s3.put_object(Bucket="test", Key=prefix + k, Body=k.encode())


def test_list_v2_delimiter_and_paging(s3: Any) -> None:
    """ListObjectsV2 rolls keys up at the delimiter and pages with continuation tokens."""
    prefix = f"list-{secrets.token_hex(4)}/"
    keys = ["a.txt", "b/1", "b/2", "c/x/y", "d.txt", "e/1"]
    _fill(s3, prefix, keys)
    page = s3.list_objects_v2(Bucket="test", Prefix=prefix, Delimiter="/")
    assert [c["Key"] for c in page["Contents"]] == [prefix + "a.txt", prefix + "d.txt"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [
        prefix + "b/",
        prefix + "c/",
        prefix + "e/",
    ]
    assert page["KeyCount"] == 5
    entry = page["Contents"][0]
    assert (
        entry["Size"] == 5 and entry["StorageClass"] == "STANDARD" and entry["ETag"].startswith('"')
    )
    seen: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {
            "Bucket": "test",
            "Prefix": prefix,
            "Delimiter": "/",
            "MaxKeys": 2,
        }
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        seen += [c["Key"] for c in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert page["KeyCount"] <= 2
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert sorted(seen) == sorted([prefix + k for k in ("a.txt", "d.txt", "b/", "c/", "e/")])


def test_list_v2_start_after_and_fetch_owner(s3: Any) -> None:
    """StartAfter skips keys; FetchOwner adds an Owner to each entry."""
    prefix = f"sa-{secrets.token_hex(4)}/"
    _fill(s3, prefix, ["1", "2", "3"])
    page = s3.list_objects_v2(
        Bucket="test", Prefix=prefix, StartAfter=prefix + "1", FetchOwner=True
    )
    assert [c["Key"] for c in page["Contents"]] == [prefix + "2", prefix + "3"]
    assert all("Owner" in c for c in page["Contents"])


def test_list_v1_marker_paging(s3: Any) -> None:
    """ListObjects v1 pages with Marker/NextMarker over every key once, in order."""
    prefix = f"v1-{secrets.token_hex(4)}/"
    keys = [f"{i:03d}" for i in range(7)]
    _fill(s3, prefix, keys)
    seen: list[str] = []
    marker = ""
    while True:
        page = s3.list_objects(Bucket="test", Prefix=prefix, Marker=marker, MaxKeys=3)
        seen += [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = page.get("NextMarker") or page["Contents"][-1]["Key"]
    assert seen == [prefix + k for k in keys]


def test_list_encoding_type_url(s3orch: S3OrchProcess, s3: Any) -> None:
    """encoding-type=url percent-encodes keys in the listing."""
    prefix = f"enc-{secrets.token_hex(4)}/"
    s3.put_object(Bucket="test", Key=prefix + "a b", Body=b"x")
    status, _, body = signed_request(
        s3orch, "GET", f"/test?list-type=2&encoding-type=url&prefix={quote(prefix, safe='')}"
    )
    assert status == 200
    assert f"<Key>{prefix}a%20b</Key>".encode() in body
    assert b"<EncodingType>url</EncodingType>" in body


def test_max_keys_over_1000_is_clamped(s3: Any) -> None:
    """MaxKeys above 1000 is answered as 1000."""
    page = s3.list_objects_v2(Bucket="test", Prefix="nothing-here/", MaxKeys=5000)
    assert page["MaxKeys"] == 1000


def test_list_buckets_shows_only_own(s3: Any, s3orch: S3OrchProcess) -> None:
    """ListBuckets returns the credential's buckets only."""
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["test"]
    other = boto_client(s3orch.endpoint, "AKIAS3ORCHOTHER00001", "other-secret")
    assert [b["Name"] for b in other.list_buckets()["Buckets"]] == ["other"]


def test_head_bucket_and_location(s3: Any) -> None:
    """HeadBucket is 200 and GetBucketLocation answers the default region."""
    assert s3.head_bucket(Bucket="test")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket="test").get("LocationConstraint") in (None, "")


def test_tenants_are_isolated(s3orch: S3OrchProcess, s3: Any, key: str) -> None:
    """A credential cannot read, write, list or delete in another tenant's bucket."""
    s3.put_object(Bucket="test", Key=key, Body=b"secret")
    other = boto_client(s3orch.endpoint, "AKIAS3ORCHOTHER00001", "other-secret")
    for call in (
        lambda: other.get_object(Bucket="test", Key=key),
        lambda: other.put_object(Bucket="test", Key=key, Body=b"overwrite"),
        lambda: other.delete_object(Bucket="test", Key=key),
        lambda: other.list_objects_v2(Bucket="test"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "AccessDenied"
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == b"secret"
    # The same key in the other tenant's bucket is a different object.
    with pytest.raises(ClientError) as excinfo:
        other.get_object(Bucket="other", Key=key)
    assert error_code(excinfo) == "NoSuchKey"


def test_unknown_bucket(s3: Any) -> None:
    """A bucket that is not configured is NoSuchBucket."""
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="no-such-bucket", Key="x")
    assert error_code(excinfo) in ("NoSuchBucket", "AccessDenied")


def test_bad_credentials(s3orch: S3OrchProcess) -> None:
    """An unknown access key is InvalidAccessKeyId; a wrong secret is SignatureDoesNotMatch."""
    with pytest.raises(ClientError) as excinfo:
        boto_client(s3orch.endpoint, "AKIAUNKNOWN000000000", "x").list_objects_v2(Bucket="test")
    assert error_code(excinfo) == "InvalidAccessKeyId"
    with pytest.raises(ClientError) as excinfo:
        boto_client(s3orch.endpoint, secret="wrong").list_objects_v2(Bucket="test")
    assert error_code(excinfo) == "SignatureDoesNotMatch"


def test_anonymous_is_denied(s3orch: S3OrchProcess) -> None:
    """An unsigned request is 403 AccessDenied in S3 XML with a RequestId."""
    status, headers, body = raw_request(s3orch, "GET", "/test")
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body and b"<RequestId>" in body
    assert "x-amz-request-id" in headers


@pytest.mark.parametrize("subresource", ["acl", "tagging", "policy", "lifecycle", "cors"])
def test_unimplemented_subresources_are_501(
    s3: Any, s3orch: S3OrchProcess, key: str, subresource: str
) -> None:
    """?acl, ?tagging and friends are 501 NotImplemented, never a plain GET or PUT."""
    s3.put_object(Bucket="test", Key=key, Body=b"original")
    for method, path in (("PUT", f"/test/{key}?{subresource}"), ("GET", f"/test?{subresource}")):
        status, _, body = signed_request(s3orch, method, path, b"<x/>")
        assert status == 501, body
        assert b"<Code>NotImplemented</Code>" in body
    assert s3.get_object(Bucket="test", Key=key)["Body"].read() == b"original"


def test_presigned_get_and_put(s3: Any, key: str) -> None:
    """Presigned URLs work for PUT and GET over plain HTTP."""
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "test", "Key": key}, ExpiresIn=300
    )
    request = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    get_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "test", "Key": key}, ExpiresIn=300
    )
    with urllib.request.urlopen(get_url, timeout=30) as response:
        assert response.read() == b"presigned body"


def test_presigned_tampered_is_rejected(s3: Any, key: str) -> None:
    """A presigned URL whose key was changed fails with SignatureDoesNotMatch."""
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "test", "Key": key}, ExpiresIn=300
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(url.replace(key, key + "x"), timeout=30)
    assert excinfo.value.code == 403
    assert b"SignatureDoesNotMatch" in excinfo.value.read()


def test_proxy_token(s3orch: S3OrchProcess, key: str) -> None:
    """The legacy X-Proxy-Token header authenticates for its bucket only."""
    token = {"X-Proxy-Token": "test-proxy-token-0123456789"}
    status, headers, _ = raw_request(
        s3orch, "PUT", f"/test/{key}", b"tok", {**token, "Content-Length": "3"}
    )
    assert status == 200, headers
    status, _, body = raw_request(s3orch, "GET", f"/test/{key}", headers=token)
    assert (status, body) == (200, b"tok")
    status, _, _ = raw_request(s3orch, "GET", f"/other/{key}", headers=token)
    assert status == 403
    status, _, _ = raw_request(s3orch, "GET", f"/test/{key}", headers={"X-Proxy-Token": "wrong"})
    assert status == 403


def test_missing_content_length(s3orch: S3OrchProcess, key: str) -> None:
    """A PUT without Content-Length (chunked transfer) is 411 MissingContentLength."""
    token = {"X-Proxy-Token": "test-proxy-token-0123456789", "Transfer-Encoding": "chunked"}
    status, _, body = raw_request(s3orch, "PUT", f"/test/{key}", b"3\r\nabc\r\n0\r\n\r\n", token)
    assert status == 411, body
    assert b"MissingContentLength" in body


def test_large_object_streams(s3: Any, key: str) -> None:
    """A 24 MiB single PUT and GET round-trip intact."""
    body = os.urandom(24 * 1024 * 1024)
    s3.put_object(Bucket="test", Key=key, Body=body)
    got = s3.get_object(Bucket="test", Key=key)["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
