"""Envelope encryption end to end: backends hold only ciphertext, clients see plaintext.

One server per backend kind (local directories, S3 on moto) receives objects that carry a
marker string in every way a body can arrive (single PUT, aws-chunked, multipart, copies,
part copies, overwrites); then every stored byte is scanned for the marker and every client
view (GET, ranges, HEAD, listings, ETags, conditions, quota counters) is checked.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client, signed_request

KiB = 1024
MiB = 1024 * KiB
MARKER = b"<<s3orch-plaintext-marker-5e1f>>"


def marked(size: int, seed: int, every: int = 9_000) -> bytes:
    """``size`` pseudo-random bytes with MARKER written at the start, every ``every`` bytes
    (so across chunk and part boundaries too) and at the end."""
    data = bytearray(random.Random(seed).randbytes(size))
    if size < len(MARKER):
        return bytes(data)
    for at in [*range(0, size - len(MARKER), every), size - len(MARKER)]:
        data[at : at + len(MARKER)] = MARKER
    return bytes(data)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


def metric_samples(server: S3OrchProcess) -> dict[str, float]:
    """Every sample of /metrics, by its name with labels as printed (``name{a="b"}``)."""
    with urllib.request.urlopen(server.endpoint + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            base, _, labels = name.partition("{")
            pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
            samples[sample_name(base, **dict(pairs))] = float(value)
    return samples


def sample_name(name: str, **labels: str) -> str:
    """How ``metric_samples`` names a sample: labels sorted, ``name{a="1",b="2"}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def metric_sum(samples: dict[str, float], name: str) -> float:
    """The sum of every sample of metric ``name`` whatever its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def labelled(samples: dict[str, float], name: str, label: str) -> dict[str, float]:
    """``name``'s samples by the value of its one label ``label``."""
    pattern = re.compile(re.escape(name) + r"\{" + label + r'="([^"]*)"\}')
    return {m.group(1): v for k, v in samples.items() if (m := pattern.fullmatch(k))}


def local_files(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` (temp and multipart staging included), with its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def s3_objects(moto: Any, bucket: str) -> dict[str, bytes]:
    """Every object of a backend bucket, read straight from moto."""
    client = boto_client(moto.endpoint, moto.access_key, moto.secret_key)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"unfinished backend uploads left in {bucket}"
    return found


class World:
    """A running encrypted s3orch, the objects written through it, and its backends' bytes."""

    def __init__(self, kind: str, server: S3OrchProcess, moto: Any | None) -> None:
        self.kind = kind
        self.server = server
        self.moto = moto
        self.s3 = boto_client(server.endpoint)
        self.objects: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.part_sizes: dict[str, list[int]] = {}

    def stored(self) -> dict[str, bytes]:
        """Everything every backend holds, by backend and name."""
        found = {}
        for backend in self.server.config["backends"]:
            if backend["type"] == "local":
                for path, data in local_files(Path(backend["path"])).items():
                    found[f"{backend['name']}:{path}"] = data
            else:
                for key, data in s3_objects(self.moto, backend["bucket"]).items():
                    found[f"{backend['name']}:{key}"] = data
        return found

    def put(self, key: str, body: bytes, **kwargs: Any) -> None:
        self.s3.put_object(Bucket="test", Key=key, Body=body, **kwargs)
        self.objects[key] = body
        self.etags[key] = md5(body)

    def multipart(self, key: str, parts: list[bytes]) -> None:
        s3 = self.s3
        upload = s3.create_multipart_upload(Bucket="test", Key=key)["UploadId"]
        done = []
        for number, body in enumerate(parts, start=1):
            answer = s3.upload_part(
                Bucket="test", Key=key, UploadId=upload, PartNumber=number, Body=body
            )
            assert answer["ETag"] == f'"{md5(body)}"'
            done.append({"PartNumber": number, "ETag": answer["ETag"]})
        # ListParts shows what the client sent, not what the backend holds.
        listed = s3.list_parts(Bucket="test", Key=key, UploadId=upload)["Parts"]
        assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [
            (d["PartNumber"], len(body), d["ETag"]) for d, body in zip(done, parts, strict=True)
        ]
        s3.complete_multipart_upload(
            Bucket="test", Key=key, UploadId=upload, MultipartUpload={"Parts": done}
        )
        self.objects[key] = b"".join(parts)
        self.etags[key] = multipart_etag(parts)
        self.part_sizes[key] = [len(p) for p in parts]


def populate(world: World) -> None:
    """Write marked objects every way the S3 API lets a body in."""
    s3 = world.s3
    world.put("single/small", marked(1_000, 1))
    world.put("single/chunks", marked(300 * KiB + 7, 2))
    world.put("single/empty", b"")
    world.put("single/one", b"x")
    # Overwritten: neither body may remain in plaintext anywhere.
    world.put("single/overwritten", marked(70 * KiB, 3))
    world.put("single/overwritten", marked(50 * KiB, 4))
    world.multipart("multi/three", [marked(5 * MiB, 5), marked(5 * MiB, 6), marked(20_000, 7)])
    world.multipart("multi/one-small-part", [marked(3_000, 8)])

    # aws-chunked with an unsigned trailer, framed by botocore as SDKs send it.
    payload = marked(200 * KiB + 3, 9)
    framed = AwsChunkedWrapper(
        io.BytesIO(payload), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32"
    ).read()
    status, _, answer = signed_request(
        world.server,
        "PUT",
        "/test/single/aws-chunked",
        framed,
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        headers={
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        },
    )
    assert status == 200, answer
    world.objects["single/aws-chunked"] = payload
    world.etags["single/aws-chunked"] = md5(payload)

    # Copies decrypt the source and seal the copy with a DEK of its own.
    for directive, key in (("COPY", "copy/copied"), ("REPLACE", "copy/replaced")):
        s3.copy_object(
            Bucket="test",
            Key=key,
            CopySource={"Bucket": "test", "Key": "single/chunks"},
            MetadataDirective=directive,
            **(
                {"Metadata": {"m": "1"}, "ContentType": "text/plain"}
                if directive == "REPLACE"
                else {}
            ),
        )
        world.objects[key] = world.objects["single/chunks"]
        world.etags[key] = world.etags["single/chunks"]
    s3.copy_object(
        Bucket="test", Key="copy/of-multipart", CopySource={"Bucket": "test", "Key": "multi/three"}
    )
    world.objects["copy/of-multipart"] = world.objects["multi/three"]
    world.etags["copy/of-multipart"] = md5(world.objects["multi/three"])

    # UploadPartCopy: a 5 MiB range across the first part boundary, then a small range.
    source = world.objects["multi/three"]
    upload = s3.create_multipart_upload(Bucket="test", Key="multi/part-copy")["UploadId"]
    ranges = [(1_000, 1_000 + 5 * MiB - 1), (5 * MiB - 100, 5 * MiB + 5_000)]
    done = []
    for number, (first, last) in enumerate(ranges, start=1):
        answer = s3.upload_part_copy(
            Bucket="test",
            Key="multi/part-copy",
            UploadId=upload,
            PartNumber=number,
            CopySource={"Bucket": "test", "Key": "multi/three"},
            CopySourceRange=f"bytes={first}-{last}",
        )
        done.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
    s3.complete_multipart_upload(
        Bucket="test", Key="multi/part-copy", UploadId=upload, MultipartUpload={"Parts": done}
    )
    pieces = [source[first : last + 1] for first, last in ranges]
    world.objects["multi/part-copy"] = b"".join(pieces)
    world.etags["multi/part-copy"] = multipart_etag(pieces)
    world.part_sizes["multi/part-copy"] = [len(p) for p in pieces]


@pytest.fixture(scope="module", params=["local", "s3"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """An encrypted s3orch on local directories (64 KiB chunks) or on moto S3 buckets
    (4 KiB chunks), holding the marked objects."""
    workdir = tmp_path_factory.mktemp(f"encrypted-{request.param}")
    config = local_config(workdir, encrypted=True)
    moto = None
    if request.param == "s3":
        moto = request.getfixturevalue("moto_server")
        config["encryption"]["chunk_size"] = 4096
        backends = []
        for i in (1, 2):
            bucket = f"enc{i}-{secrets.token_hex(4)}"
            moto.make_bucket(bucket)
            backends.append(
                {
                    "name": f"s3-{i}",
                    "type": "s3",
                    "endpoint": moto.endpoint,
                    "region": moto.region,
                    "bucket": bucket,
                    "access_key_id": moto.access_key,
                    "secret_access_key": moto.secret_key,
                    "force_path_style": True,
                    "quota_bytes": 0,
                }
            )
        config["backends"] = backends
    server = S3OrchProcess(workdir, config)
    server.start()
    try:
        built = World(request.param, server, moto)
        populate(built)
        yield built
    finally:
        server.stop()


def chunk_size(world: World) -> int:
    return int(world.server.config["encryption"].get("chunk_size", 65536))


def test_no_marker_on_any_backend(world: World) -> None:
    """No byte sequence of the marker appears anywhere any backend stores data."""
    stored = world.stored()
    assert stored, "nothing was stored"
    plaintext_bytes = sum(len(body) for body in world.objects.values())
    assert sum(len(data) for data in stored.values()) >= plaintext_bytes - 100 * KiB
    leaks = [name for name, data in stored.items() if MARKER in data]
    assert leaks == []
    # The bodies themselves (not just the marker) are not stored as such either.
    for name, data in stored.items():
        for key, body in world.objects.items():
            if len(body) >= 64:
                assert body[:64] not in data, (name, key)


def test_every_object_round_trips(world: World) -> None:
    """GET returns every object exactly as it was written, with its plaintext length."""
    for key, body in world.objects.items():
        answer = world.s3.get_object(Bucket="test", Key=key)
        assert answer["ContentLength"] == len(body), key
        got = answer["Body"].read()
        assert len(got) == len(body) and got == body, key


def test_etags_are_plaintext_md5(world: World) -> None:
    """ETags are the plaintext MD5, or the MD5 of the parts' MD5s with -N for multipart."""
    for key, etag in world.etags.items():
        assert world.s3.head_object(Bucket="test", Key=key)["ETag"] == f'"{etag}"', key
        if world.objects[key]:
            ranged = world.s3.get_object(Bucket="test", Key=key, Range="bytes=0-0")
            assert ranged["ETag"] == f'"{etag}"', key
    listed = world.s3.list_objects_v2(Bucket="test")["Contents"]
    assert {item["Key"]: item["ETag"].strip('"') for item in listed} == world.etags


def test_sizes_are_plaintext(world: World) -> None:
    """HEAD Content-Length and ListObjectsV2 Size are plaintext sizes."""
    sizes = {key: len(body) for key, body in world.objects.items()}
    for key, size in sizes.items():
        assert world.s3.head_object(Bucket="test", Key=key)["ContentLength"] == size, key
    listed = []
    for page in world.s3.get_paginator("list_objects_v2").paginate(Bucket="test", MaxKeys=3):
        listed.extend(page.get("Contents", []))
    assert {item["Key"]: item["Size"] for item in listed} == sizes
    v1 = world.s3.list_objects(Bucket="test")["Contents"]
    assert {item["Key"]: item["Size"] for item in v1} == sizes


def test_conditional_get(world: World) -> None:
    """If-Match and If-None-Match compare against the plaintext ETag."""
    s3 = world.s3
    for key in ("single/chunks", "multi/three"):
        etag = f'"{world.etags[key]}"'
        body = s3.get_object(Bucket="test", Key=key, IfMatch=etag)["Body"].read()
        assert body == world.objects[key]
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket="test", Key=key, IfMatch='"0123456789abcdef0123456789abcdef"')
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket="test", Key=key, IfNoneMatch=etag)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
        answer = s3.get_object(
            Bucket="test",
            Key=key,
            IfNoneMatch='"0123456789abcdef0123456789abcdef"',
            Range="bytes=3-9",
        )
        assert answer["Body"].read() == world.objects[key][3:10]


def boundary_ranges(size: int, chunk: int, part_sizes: list[int]) -> list[str]:
    """Range headers at the edges: first and last byte, suffixes, open ends, and ranges
    across every kind of boundary (chunk, part, both)."""
    ranges = ["bytes=0-0", f"bytes={size - 1}-{size - 1}", "bytes=-1", f"bytes=-{size}"]
    ranges += [
        f"bytes=-{min(size, chunk + 1)}",
        f"bytes={size - 1}-",
        "bytes=0-",
        f"bytes=0-{size + 100}",
    ]
    ranges += [
        f"bytes={chunk - 1}-{chunk}",
        f"bytes={chunk}-{chunk}",
        f"bytes={chunk - 1}-{chunk - 1}",
    ]
    ranges += [f"bytes=1-{2 * chunk}", f"bytes={chunk - 5}-{3 * chunk + 5}"]
    at = 0
    for part in part_sizes[:-1]:
        at += part
        ranges += [f"bytes={at - 1}-{at}", f"bytes={at}-{at}", f"bytes={at - 1}-{at - 1}"]
        ranges += [f"bytes={at - chunk - 3}-{at + chunk + 3}", f"bytes={at - 10}-"]
    if len(part_sizes) > 2:
        ranges.append(f"bytes={part_sizes[0] - 7}-{size - 3}")
    return ranges


def expected_slice(body: bytes, header: str) -> bytes:
    spec = header.removeprefix("bytes=")
    first, _, last = spec.partition("-")
    if first == "":
        return body[-int(last) :]
    start = int(first)
    end = len(body) - 1 if last == "" else min(int(last), len(body) - 1)
    return body[start : end + 1]


@pytest.mark.parametrize(
    "key", ["single/chunks", "multi/three", "multi/part-copy", "copy/replaced"]
)
def test_ranges_return_exact_bytes(world: World, key: str) -> None:
    """Edge and random Range GETs return exactly the requested plaintext bytes."""
    body = world.objects[key]
    size = len(body)
    chunk = chunk_size(world)
    parts = world.part_sizes.get(key, [size])
    rng = random.Random(f"{world.kind}-{key}")
    headers = [h for h in boundary_ranges(size, chunk, parts) if h != "bytes=-0"]
    for _ in range(40):
        start = rng.randrange(size)
        length = rng.choice(
            [1, 2, 15, 16, 17, chunk - 1, chunk, chunk + 1, rng.randrange(1, 3 * chunk)]
        )
        headers.append(f"bytes={start}-{start + length - 1}")
    for _ in range(5):
        headers.append(f"bytes=-{rng.randrange(1, 2 * chunk)}")
    for header in headers:
        wanted = expected_slice(body, header)
        answer = world.s3.get_object(Bucket="test", Key=key, Range=header)
        got = answer["Body"].read()
        assert answer["ContentLength"] == len(wanted), header
        assert got == wanted, header
        first = (
            size - len(wanted) if header.startswith("bytes=-") else int(header[6:].split("-")[0])
        )
        assert answer["ContentRange"] == f"bytes {first}-{first + len(wanted) - 1}/{size}", header


def test_empty_object(world: World) -> None:
    """An empty object round-trips (GET, HEAD, listing) and is stored sealed, not as 0 bytes."""
    s3 = world.s3
    answer = s3.get_object(Bucket="test", Key="single/empty")
    assert answer["ContentLength"] == 0 and answer["Body"].read() == b""
    assert answer["ETag"] == f'"{md5(b"")}"'
    assert s3.head_object(Bucket="test", Key="single/empty")["ContentLength"] == 0
    # Every object on a backend is a sealed stream: none is empty, each starts with SENC v2.
    for name, data in world.stored().items():
        if world.kind == "local" and "/.tmp/" in name:
            continue
        assert data[:5] == b"SENC\x02", name
        assert len(data) >= 146 + 16, name


def test_quota_counters_equal_stored_bytes(world: World) -> None:
    """Each backend's s3o_quota_bytes_used is the sealed bytes it actually holds."""
    samples = metric_samples(world.server)
    used = labelled(samples, "s3o_quota_bytes_used", "backend")
    pending = labelled(samples, "s3o_quota_bytes_pending", "backend")
    for backend in world.server.config["backends"]:
        name = backend["name"]
        if backend["type"] == "local":
            root = Path(backend["path"])
            on_disk = sum(
                p.stat().st_size
                for p in root.rglob("*")
                if p.is_file() and not ({".tmp", ".multipart"} & set(p.relative_to(root).parts))
            )
        else:
            on_disk = sum(len(d) for d in s3_objects(world.moto, backend["bucket"]).values())
        assert used[name] == on_disk, name
        assert pending[name] == 0, name
    plaintext = sum(len(body) for body in world.objects.values())
    assert sum(used.values()) > plaintext
