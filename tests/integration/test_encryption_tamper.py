"""Tampering with stored ciphertext or key material fails the read and never yields wrong bytes.

Objects are written through a real s3orch (local backends, 4 KiB chunks), then their files
or their database rows are altered behind its back. Each GET, read with a raw socket so that
every byte the server sends is seen, must end one of two ways: a 5xx before any body (damage
found before the response starts), or a body shorter than its Content-Length (the connection
cut when later damage is found). What is received is never complete and different, and any
prefix received is the true plaintext.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from s3orch.backends.local import key_to_parts
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client
from tests.integration.test_encryption import metric_samples, metric_sum, sample_name

CHUNK = 4096
SEALED_CHUNK = CHUNK + 16
MiB = 1024 * 1024
TOKEN = "test-proxy-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3OrchProcess]:
    """An encrypting s3orch with 4 KiB chunks on local backends and SQLite."""
    workdir = tmp_path_factory.mktemp("tamper")
    config = local_config(workdir, encrypted=True)
    config["encryption"]["chunk_size"] = CHUNK
    process = S3OrchProcess(workdir, config)
    process.start()
    yield process
    process.stop()


# -- where things are ----------------------------------------------------------------------


def db(server: S3OrchProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.workdir / "meta.db", timeout=30)


def row(server: S3OrchProcess, key: str) -> dict[str, Any]:
    """The current version of ``test/key``: its object row and its copy's location."""
    with contextlib.closing(db(server)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute(
            "SELECT o.*, c.backend, c.storage_key, c.stored_size FROM objects o"
            " JOIN copies c ON c.version_id = o.version_id"
            " WHERE o.bucket = 'test' AND o.key = ?",
            (key,),
        ).fetchone()
    assert found is not None, key
    return dict(found)


def stored_path(server: S3OrchProcess, key: str) -> Path:
    """The local file holding ``key``'s current version."""
    found = row(server, key)
    root = next(b["path"] for b in server.config["backends"] if b["name"] == found["backend"])
    return Path(root).joinpath(*key_to_parts(found["storage_key"]))


def header_len(server: S3OrchProcess, key: str) -> int:
    return len(base64.b64decode(row(server, key)["enc_header"]))


def segments(server: S3OrchProcess, key: str) -> list[tuple[int, int, int]]:
    """(part number, plain size, stored size) of each part of a multipart version."""
    return [tuple(s) for s in json.loads(row(server, key)["enc_segments"])]  # type: ignore[misc]


def set_columns(server: S3OrchProcess, key: str, **values: Any) -> None:
    """Overwrite columns of ``key``'s object row behind the server's back."""
    names = ", ".join(f"{name} = ?" for name in values)
    with contextlib.closing(db(server)) as conn, conn:
        conn.execute(
            f"UPDATE objects SET {names} WHERE bucket = 'test' AND key = ?", (*values.values(), key)
        )


@contextlib.contextmanager
def restored(path: Path) -> Iterator[bytearray]:
    """The file's bytes to damage; written back as they were afterwards."""
    original = path.read_bytes()
    try:
        yield bytearray(original)
    finally:
        path.write_bytes(original)


def flip(path: Path, offset: int, data: bytearray | None = None) -> None:
    data = bytearray(path.read_bytes()) if data is None else data
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- reading -----------------------------------------------------------------------------------


def raw_get(
    server: S3OrchProcess, key: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """GET over a bare socket: the status, headers and every body byte sent before the
    server closed the connection (status 0 if it closed before any header)."""
    lines = [
        f"GET /test/{key} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"X-Proxy-Token: {TOKEN}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    received = bytearray()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            try:
                block = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not block:
                break
            received += block
    head, found, body = bytes(received).partition(b"\r\n\r\n")
    if not found:
        return 0, {}, b""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in header_lines)
    return int(status_line.split()[1]), {n.strip().lower(): v.strip() for n, _, v in fields}, body


ERROR, CUT, OK = "error", "cut", "ok"
FAILED = (ERROR, CUT)
"""Damage past the first chunk read: found before the response starts (if the server reads
ahead) or after (the connection is cut); either way, no complete body."""


def read(
    server: S3OrchProcess, key: str, plaintext: bytes, first: int = 0, last: int | None = None
) -> str:
    """GET ``key`` (bytes ``first..last``) and say how it ended: ERROR (5xx before any body),
    CUT (fewer body bytes than announced, all of them right) or OK (all of them, right).
    A complete body with wrong bytes fails the test."""
    ranged = first != 0 or last is not None
    end = len(plaintext) - 1 if last is None else last
    expected = plaintext[first : end + 1]
    status, headers, body = raw_get(
        server, key, {"Range": f"bytes={first}-{end}"} if ranged else {}
    )
    if status == 0:
        return CUT
    if status >= 500:
        code = ElementTree.fromstring(body).findtext("Code")
        assert code in ("InternalError", "ServiceUnavailable"), body
        return ERROR
    assert status == (206 if ranged else 200), (status, body[:200])
    announced = int(headers["content-length"])
    assert announced == len(expected)
    assert body == expected[: len(body)], "bytes that are not the plaintext were served"
    return CUT if len(body) < announced else OK


def errors(server: S3OrchProcess) -> float:
    return metric_sum(metric_samples(server), "s3o_encryption_errors_total")


def put(server: S3OrchProcess, key: str, size: int) -> bytes:
    body = os.urandom(size)
    boto_client(server.endpoint).put_object(Bucket="test", Key=key, Body=body)
    return body


def put_parts(server: S3OrchProcess, key: str, sizes: list[int]) -> bytes:
    s3 = boto_client(server.endpoint)
    parts = [os.urandom(size) for size in sizes]
    upload = s3.create_multipart_upload(Bucket="test", Key=key)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        answer = s3.upload_part(
            Bucket="test", Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket="test", Key=key, UploadId=upload, MultipartUpload={"Parts": done}
    )
    return b"".join(parts)


SIX_CHUNKS = 5 * CHUNK + 1000


@pytest.fixture(scope="module")
def big(server: S3OrchProcess) -> tuple[str, bytes]:
    """A multipart object of two 5 MiB parts and a small last one, shared by the part tests
    (each restores what it damaged)."""
    return "big", put_parts(server, "big", [5 * MiB, 5 * MiB, 3 * CHUNK + 5])


# -- chunks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "chunk", "offset"),
    [
        ("ciphertext of chunk 0", 0, 100),
        ("tag of chunk 0", 0, SEALED_CHUNK - 1),
        ("ciphertext of chunk 3", 3, 7),
        ("tag of the last chunk", 5, 1000 + 15),
    ],
)
def test_bit_flip_in_a_chunk(server: S3OrchProcess, where: str, chunk: int, offset: int) -> None:
    """One flipped bit in a chunk: a 500 if it is the first chunk read, else a cut body."""
    key = f"flip/{chunk}/{offset}"
    plaintext = put(server, key, SIX_CHUNKS)
    path = stored_path(server, key)
    before = errors(server)
    flip(path, header_len(server, key) + chunk * SEALED_CHUNK + offset)
    assert read(server, key, plaintext) in ((ERROR,) if chunk == 0 else FAILED), where
    damaged = chunk * CHUNK
    assert read(server, key, plaintext, damaged + 1, damaged + 2) == ERROR
    assert read(server, key, plaintext, damaged - 1 if chunk else 0, damaged + 2) in (
        (ERROR,) if chunk == 0 else FAILED
    )
    if chunk:
        # Chunks before the damage are intact and still read (exactly).
        assert read(server, key, plaintext, 0, damaged - 1) == OK
    assert errors(server) > before


def test_bit_flips_anywhere_in_a_small_object(server: S3OrchProcess) -> None:
    """A bit flipped at any chunk offset of a one-chunk object is a 500, never wrong bytes."""
    key = "flip/small"
    plaintext = put(server, key, 300)
    path = stored_path(server, key)
    start = header_len(server, key)
    with restored(path) as data:
        for offset in range(start, len(data), 7):
            data[offset] ^= 0x80
            path.write_bytes(bytes(data))
            assert read(server, key, plaintext) == ERROR, offset
            data[offset] ^= 0x80
    path.write_bytes(bytes(data))
    assert read(server, key, plaintext) == OK


@pytest.mark.parametrize("keep", [0, 1, 3, 5])
def test_truncated_at_a_chunk_boundary(server: S3OrchProcess, keep: int) -> None:
    """A file cut after ``keep`` whole chunks fails: a 5xx, or a body cut after those chunks."""
    key = f"truncated/{keep}"
    plaintext = put(server, key, SIX_CHUNKS)
    path = stored_path(server, key)
    before = errors(server)
    with open(path, "r+b") as file:
        file.truncate(header_len(server, key) + keep * SEALED_CHUNK)
    assert read(server, key, plaintext) in ((ERROR,) if keep == 0 else FAILED)
    assert read(server, key, plaintext, keep * CHUNK, keep * CHUNK) == ERROR
    assert read(server, key, plaintext, len(plaintext) - 10) == ERROR
    if keep:
        assert errors(server) > before


def test_chunk_swapped_between_objects(server: S3OrchProcess) -> None:
    """A chunk copied from another object of the same size, at the same position, fails."""
    plain_a = put(server, "swap-chunk/a", SIX_CHUNKS)
    plain_b = put(server, "swap-chunk/b", SIX_CHUNKS)
    path_a, path_b = stored_path(server, "swap-chunk/a"), stored_path(server, "swap-chunk/b")
    start = header_len(server, "swap-chunk/a")
    assert start == header_len(server, "swap-chunk/b")
    data_a, data_b = bytearray(path_a.read_bytes()), path_b.read_bytes()
    for index in (0, 2):
        at = start + index * SEALED_CHUNK
        data = bytearray(data_a)
        data[at : at + SEALED_CHUNK] = data_b[at : at + SEALED_CHUNK]
        path_a.write_bytes(bytes(data))
        assert read(server, "swap-chunk/a", plain_a) in ((ERROR,) if index == 0 else FAILED)
        assert read(server, "swap-chunk/a", plain_a, index * CHUNK, index * CHUNK + 10) == ERROR
    assert read(server, "swap-chunk/b", plain_b) == OK


def test_chunks_reordered_within_an_object(server: S3OrchProcess) -> None:
    """Two chunks of one object exchanged fail (each chunk's index is authenticated)."""
    key = "reorder-chunks"
    plaintext = put(server, key, SIX_CHUNKS)
    path = stored_path(server, key)
    start = header_len(server, key)
    data = bytearray(path.read_bytes())
    one, two = start + SEALED_CHUNK, start + 2 * SEALED_CHUNK
    data[one:two], data[two : two + SEALED_CHUNK] = data[two : two + SEALED_CHUNK], data[one:two]
    path.write_bytes(bytes(data))
    assert read(server, key, plaintext) in FAILED
    assert read(server, key, plaintext, CHUNK, 3 * CHUNK) == ERROR


def test_whole_files_swapped(server: S3OrchProcess) -> None:
    """Two objects' files exchanged (same size): both reads fail with a 500."""
    plain_a = put(server, "swap-file/a", SIX_CHUNKS)
    plain_b = put(server, "swap-file/b", SIX_CHUNKS)
    parts_a = put_parts(server, "swap-file/mp-a", [3 * CHUNK + 7])
    parts_b = put_parts(server, "swap-file/mp-b", [3 * CHUNK + 7])
    before = errors(server)
    for a, b, plain_a_, plain_b_ in (
        ("swap-file/a", "swap-file/b", plain_a, plain_b),
        ("swap-file/mp-a", "swap-file/mp-b", parts_a, parts_b),
    ):
        path_a, path_b = stored_path(server, a), stored_path(server, b)
        data_a, data_b = path_a.read_bytes(), path_b.read_bytes()
        assert len(data_a) == len(data_b)
        path_a.write_bytes(data_b)
        path_b.write_bytes(data_a)
        assert read(server, a, plain_a_) == ERROR
        assert read(server, b, plain_b_) == ERROR
        assert read(server, a, plain_a_, CHUNK + 3, CHUNK + 9) == ERROR
    assert errors(server) >= before + 6


def test_stored_headers_swapped(server: S3OrchProcess) -> None:
    """Swapped on-disk headers never yield wrong bytes; for parts (headers read) they fail."""
    plain_a = put(server, "swap-header/a", SIX_CHUNKS)
    plain_b = put(server, "swap-header/b", SIX_CHUNKS)
    parts_a = put_parts(server, "swap-header/mp-a", [2 * CHUNK])
    parts_b = put_parts(server, "swap-header/mp-b", [2 * CHUNK])
    for a, b, plain, multipart in (
        ("swap-header/a", "swap-header/b", plain_a, False),
        ("swap-header/mp-a", "swap-header/mp-b", parts_a, True),
    ):
        path_a, path_b = stored_path(server, a), stored_path(server, b)
        size = len(path_a.read_bytes()) - len(plain) - 16 * (-(-len(plain) // CHUNK))
        data_a, data_b = path_a.read_bytes(), path_b.read_bytes()
        path_a.write_bytes(data_b[:size] + data_a[size:])
        outcome = read(server, a, plain)
        # A single-stream object's header is authenticated from the database copy.
        assert outcome in ((ERROR,) if multipart else (ERROR, OK))
    assert read(server, "swap-header/b", plain_b) == OK
    assert read(server, "swap-header/mp-b", parts_b) == OK


# -- multipart parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "offset"),
    [
        ("version", 4),
        ("header_len", 7),
        ("chunk_size", 10),
        ("plain_size", 19),
        ("object_id", 20),
        ("part number", 35),
        ("key id", 38),
        ("wrapped DEK", -1),
    ],
)
def test_bit_flip_in_a_part_header(
    server: S3OrchProcess, big: tuple[str, bytes], field: str, offset: int
) -> None:
    """A header bit flipped in part 2 cuts the body (500 inside it); in part 1, a 500."""
    key, plaintext = big
    (_, plain_1, stored_1), (_, plain_2, stored_2), _ = segments(server, key)
    chunks = -(-plain_2 // CHUNK)
    part_header = stored_2 - plain_2 - 16 * chunks
    path = stored_path(server, key)
    before = errors(server)
    at = offset if offset >= 0 else part_header + offset
    with restored(path) as data:
        flip(path, stored_1 + at, bytearray(data))
        assert read(server, key, plaintext) == CUT, field  # after 5 MiB of part 1
        assert read(server, key, plaintext, plain_1 + 10, plain_1 + 20) == ERROR, field
        assert read(server, key, plaintext, plain_1 + 3 * CHUNK, plain_1 + 3 * CHUNK + 5) == ERROR
        assert read(server, key, plaintext, plain_1 - 5, plain_1 + 5) in FAILED, field
        assert read(server, key, plaintext, 0, 99) == OK
        flip(path, at, bytearray(data))
        assert read(server, key, plaintext) == ERROR, field
    assert errors(server) > before
    assert read(server, key, plaintext) == OK


def test_parts_reordered(server: S3OrchProcess, big: tuple[str, bytes]) -> None:
    """The stored bytes of two equal-size parts exchanged: every read of either fails."""
    key, plaintext = big
    (_, plain_1, stored_1), (_, _, stored_2), _ = segments(server, key)
    assert stored_1 == stored_2
    path = stored_path(server, key)
    before = errors(server)
    with restored(path) as data:
        path.write_bytes(
            bytes(data[stored_1 : 2 * stored_1] + data[:stored_1] + data[2 * stored_1 :])
        )
        assert read(server, key, plaintext) == ERROR
        assert read(server, key, plaintext, 5, 10) == ERROR
        assert read(server, key, plaintext, plain_1 + 5 * CHUNK, plain_1 + 5 * CHUNK + 1) == ERROR
        assert read(server, key, plaintext, len(plaintext) - 10) == OK  # part 3 is untouched
    assert errors(server) >= before + 3
    assert read(server, key, plaintext) == OK


def test_last_part_cut_off(server: S3OrchProcess, big: tuple[str, bytes]) -> None:
    """A multipart file truncated at a part boundary fails when the missing part is read."""
    key, plaintext = big
    (_, plain_1, stored_1), (_, plain_2, stored_2), _ = segments(server, key)
    path = stored_path(server, key)
    with restored(path):
        with open(path, "r+b") as file:
            file.truncate(stored_1 + stored_2)
        assert read(server, key, plaintext) == CUT
        assert read(server, key, plaintext, plain_1 + plain_2 + 1) == ERROR
    assert read(server, key, plaintext) == OK


# -- key material in the database -------------------------------------------------------------------


def test_wrapped_dek_edited_in_the_database(server: S3OrchProcess) -> None:
    """A bit flipped in the stored wrapped DEK is a 500 before any byte, counted."""
    key = "db/wrapped"
    plaintext = put(server, key, SIX_CHUNKS)
    original = row(server, key)["enc_wrapped"]
    blob = bytearray(base64.b64decode(original))
    before = metric_samples(server)
    for index in (0, 20, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[index] ^= 0x04
        set_columns(server, key, enc_wrapped=base64.b64encode(bytes(damaged)).decode())
        assert read(server, key, plaintext) == ERROR
        assert read(server, key, plaintext, 3 * CHUNK, 3 * CHUNK + 1) == ERROR
    set_columns(server, key, enc_wrapped=base64.b64encode(bytes(blob[:-1])).decode())
    assert read(server, key, plaintext) == ERROR
    after = metric_samples(server)
    name = sample_name("s3o_encryption_errors_total", op="unwrap", error_type="invalid_wrapped_key")
    assert after.get(name, 0) - before.get(name, 0) == 7
    set_columns(server, key, enc_wrapped=original)
    assert read(server, key, plaintext) == OK


def test_key_material_swapped_between_rows(server: S3OrchProcess) -> None:
    """Another object's (valid) wrapped DEK or header in a row fails every read of it."""
    plain_a = put(server, "db/a", SIX_CHUNKS)
    plain_b = put(server, "db/b", SIX_CHUNKS)
    row_a, row_b = row(server, "db/a"), row(server, "db/b")
    before = errors(server)
    for column in ("enc_wrapped", "enc_header"):
        set_columns(server, "db/a", **{column: row_b[column]})
        assert read(server, "db/a", plain_a) == ERROR, column
        assert read(server, "db/a", plain_a, 2 * CHUNK, 2 * CHUNK + 3) == ERROR, column
        set_columns(server, "db/a", **{column: row_a[column]})
    set_columns(server, "db/a", enc_wrapped=row_b["enc_wrapped"], enc_header=row_b["enc_header"])
    assert read(server, "db/a", plain_a) == ERROR
    set_columns(server, "db/a", enc_wrapped=row_a["enc_wrapped"], enc_header=row_a["enc_header"])
    assert errors(server) >= before + 5
    assert read(server, "db/a", plain_a) == OK
    assert read(server, "db/b", plain_b) == OK


def test_key_id_and_sizes_edited_in_the_database(server: S3OrchProcess) -> None:
    """A row naming another key, another size or another part table fails, never guesses."""
    plaintext = put(server, "db/single", SIX_CHUNKS)
    original = row(server, "db/single")
    before = metric_samples(server)["s3o_encryption_unknown_key_id_total"]
    set_columns(server, "db/single", enc_fingerprint="local:" + "0" * 32)
    assert read(server, "db/single", plaintext) == ERROR
    assert metric_samples(server)["s3o_encryption_unknown_key_id_total"] == before + 1
    set_columns(server, "db/single", enc_fingerprint=original["enc_fingerprint"])
    set_columns(server, "db/single", size=original["size"] - 1)
    assert read(server, "db/single", plaintext[:-1]) == ERROR
    set_columns(server, "db/single", size=original["size"])
    set_columns(server, "db/single", enc_chunk_size=2 * CHUNK)
    assert read(server, "db/single", plaintext) in (ERROR, OK)
    set_columns(server, "db/single", enc_chunk_size=original["enc_chunk_size"])
    assert read(server, "db/single", plaintext) == OK

    multi = put_parts(server, "db/multi", [5 * MiB, 2 * CHUNK + 3])
    table = segments(server, "db/multi")
    (n1, p1, s1), (n2, p2, s2) = table
    for edited in (
        [(n2, p1, s1), (n1, p2, s2)],  # part numbers exchanged
        [(n1, p1 - CHUNK, s1 - CHUNK - 16), (n2, p2 + CHUNK, s2 + CHUNK + 16)],  # sizes moved
    ):
        set_columns(server, "db/multi", enc_segments=json.dumps(edited))
        assert read(server, "db/multi", multi) == ERROR, edited
        assert read(server, "db/multi", multi, p1 + 1, p1 + 2) == ERROR, edited
    set_columns(server, "db/multi", enc_segments=json.dumps(table))
    assert read(server, "db/multi", multi) == OK
