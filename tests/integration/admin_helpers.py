"""Shared by the admin-job tests (key rotation, encrypt/decrypt-existing): servers restarted
on one work directory with chosen keys, admin API calls, bulk object traffic, disk checks."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import raw_request, wait_for
from tests.integration.test_encryption import labelled, local_files, metric_samples

T = TypeVar("T")

ADMIN_TOKEN = "admin-token-for-job-tests-0123456789"
PROXY_TOKEN = {"X-Proxy-Token": "test-proxy-token-0123456789"}
BACKEND_DIRS = ("b1", "b2")


class Servers:
    """Starts s3orch on one work directory, one process at a time, with a chosen
    ``encryption`` section (None: no section), the admin token and no limit on
    multipart uploads; stops (or kills) whatever still runs at the end."""

    def __init__(
        self,
        workdir: Path,
        *,
        admin_token: str | None = ADMIN_TOKEN,
        database: dict[str, Any] | None = None,
        process_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.admin_token = admin_token
        self.database = database
        # Where the config and log live: apart from the data when processes share it.
        self.process_dir = process_dir or workdir
        self.current: S3OrchProcess | None = None
        self.encryption: dict[str, Any] | None = None
        self.log_offset = 0

    def config(self, encryption: dict[str, Any] | None) -> dict[str, Any]:
        config = local_config(self.workdir)
        for bucket in config["buckets"]:
            bucket["max_multipart_uploads"] = 0
        if encryption is not None:
            config["encryption"] = encryption
        if self.admin_token is not None:
            config["admin"] = {"token": self.admin_token}
        if self.database is not None:
            config["database"] = self.database
        return config

    def start(self, encryption: dict[str, Any] | None) -> S3OrchProcess:
        self.stop()
        self.encryption = encryption
        server = S3OrchProcess(self.process_dir, self.config(encryption))
        self.log_offset = server.log_path.stat().st_size if server.log_path.exists() else 0
        server.start()
        self.current = server
        return server

    def restart(self) -> S3OrchProcess:
        """Start again with the configuration last started."""
        return self.start(self.encryption)

    def log(self) -> str:
        """What the running server has logged since it started."""
        assert self.current is not None
        with open(self.current.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL the running server, as a crash would."""
        assert self.current is not None
        self.current.kill()
        self.current = None

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


# -- keys -------------------------------------------------------------------------------------


def key_file(path: Path) -> tuple[Path, str]:
    """A fresh 32-byte master key file (mode 0600) and the base64 of its bytes, which is how
    its key is given once it moves to ``previous_keys``."""
    key = secrets.token_bytes(32)
    path.write_bytes(key)
    path.chmod(0o600)
    return path, base64.b64encode(key).decode("ascii")


# -- the admin API ----------------------------------------------------------------------------


def admin(
    server: S3OrchProcess,
    method: str,
    path: str,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    token: str | None = ADMIN_TOKEN,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Call /admin/api/``path`` with the bearer ``token`` (None: no credentials); returns the
    status, the headers and the decoded JSON answer."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    if data:
        sent["Content-Type"] = "application/json"
    status, answer_headers, raw = raw_request(server, method, "/admin/api/" + path, data, sent)
    assert answer_headers.get("content-type", "").startswith("application/json"), raw
    return status, answer_headers, json.loads(raw)


def post_ok(server: S3OrchProcess, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST an admin operation and return its answer, which must be 200 or 202."""
    status, _, answer = admin(server, "POST", path, body)
    assert status in (200, 202), (status, answer)
    return dict(answer)


def job(server: S3OrchProcess, job_id: str) -> dict[str, Any]:
    status, _, view = admin(server, "GET", f"jobs/{job_id}")
    assert status == 200, view
    return dict(view)


def wait_job(server: S3OrchProcess, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job's view once the server reports it no longer running."""
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(job(server, job_id))
        return seen["status"] != "running"

    wait_for(ended, timeout, f"job {job_id} to end")
    return seen


def wait_job_started(server: S3OrchProcess, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's view as soon as it has recorded a batch (or ended). Asked back to back:
    each answer is the pause before the next question, so a crash can be timed mid-job."""
    deadline = time.monotonic() + timeout
    while True:
        seen = job(server, job_id)
        if seen["status"] != "running" or seen["processed"] > 0:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} made no progress in {timeout} s: {seen}")


# -- metrics ----------------------------------------------------------------------------------


def deks(server: S3OrchProcess) -> dict[str, float]:
    """The s3o_encryption_deks gauge by key id, keys with no DEK left out."""
    found = labelled(metric_samples(server), "s3o_encryption_deks", "key_id")
    return {key_id: count for key_id, count in found.items() if count}


def rotation_counts(server: S3OrchProcess) -> tuple[float, float]:
    """s3o_key_rotation_objects_total (success, error) of this process."""
    found = labelled(metric_samples(server), "s3o_key_rotation_objects_total", "status")
    return found.get("success", 0.0), found.get("error", 0.0)


def unknown_key_count(server: S3OrchProcess) -> float:
    return metric_samples(server)["s3o_encryption_unknown_key_id_total"]


# -- bulk traffic -----------------------------------------------------------------------------


class Traffic:
    """Plain HTTP with the bucket's proxy token, one keep-alive connection per thread:
    a boto3 client costs more CPU per request than s3orch itself."""

    def __init__(self, server: S3OrchProcess, threads: int = 4) -> None:
        self.server = server
        self.threads = threads
        self._local = threading.local()

    def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        sent = {**PROXY_TOKEN, **(headers or {})}
        if method in ("PUT", "POST"):
            sent["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.server.port, timeout=30
                )
            try:
                conn.request(method, path, body=body or None, headers=sent)
                response = conn.getresponse()
                return response.status, response.read(), dict(response.getheaders())
            except (ConnectionError, http.client.HTTPException):
                # A connection the server closed between requests: once more on a new one.
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def each(self, work: Callable[[T], object], items: Iterable[T]) -> None:
        with ThreadPoolExecutor(self.threads) as pool:
            for _ in pool.map(work, items):
                pass

    def put(self, key: str, body: bytes) -> None:
        status, answer, _ = self.request("PUT", f"/test/{key}", body)
        assert status == 200, (key, status, answer)

    def put_all(self, objects: Mapping[str, bytes]) -> None:
        self.each(lambda key: self.put(key, objects[key]), list(objects))

    def delete(self, key: str) -> None:
        status, answer, _ = self.request("DELETE", f"/test/{key}")
        assert status == 204, (key, status, answer)

    def create_uploads(self, keys: Iterable[str]) -> None:
        """Start a multipart upload (and so wrap a DEK) for each key, leaving it open."""

        def create(key: str) -> None:
            status, answer, _ = self.request("POST", f"/test/{key}?uploads")
            assert status == 200, (key, status, answer)

        self.each(create, list(keys))

    def unreadable(self, objects: Mapping[str, bytes | None]) -> list[str]:
        """Keys that do not read back as given (None: must not exist), with what was seen."""
        problems: list[str] = []

        def check(key: str) -> None:
            status, body, _ = self.request("GET", f"/test/{key}")
            expected = objects[key]
            if expected is None:
                if status != 404:
                    problems.append(f"{key}: deleted, yet answered {status}")
            elif status != 200 or body != expected:
                problems.append(f"{key}: {status}, {len(body)} bytes, not the {len(expected)}")

        self.each(check, list(objects))
        return sorted(problems)


# -- the backends' disks ----------------------------------------------------------------------


def backend_files(workdir: Path) -> dict[Path, bytes]:
    """Every file every local backend holds (staging and temp files included)."""
    found: dict[Path, bytes] = {}
    for name in BACKEND_DIRS:
        root = workdir / name
        if root.exists():
            found.update(local_files(root))
    return found


def backend_hashes(workdir: Path) -> dict[Path, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in backend_files(workdir).items()}


def committed_files(root: Path) -> Iterator[Path]:
    """Files holding committed objects: neither temp files nor multipart staging."""
    for path in root.rglob("*"):
        if path.is_file() and not {".tmp", ".multipart"} & set(path.relative_to(root).parts):
            yield path


def counter_problems(server: S3OrchProcess, workdir: Path) -> list[str]:
    """Where the quota gauges differ from the committed bytes and files on each backend,
    or bytes are still pending."""
    samples = metric_samples(server)
    used = labelled(samples, "s3o_quota_bytes_used", "backend")
    count = labelled(samples, "s3o_objects_count", "backend")
    pending = labelled(samples, "s3o_quota_bytes_pending", "backend")
    problems = []
    for i, name in enumerate(BACKEND_DIRS, start=1):
        files = list(committed_files(workdir / name))
        size = sum(p.stat().st_size for p in files)
        backend = f"local{i}"
        if (used[backend], count[backend], pending[backend]) != (size, len(files), 0):
            problems.append(
                f"{backend}: gauges say {used[backend]:.0f} bytes in {count[backend]:.0f}"
                f" objects, {pending[backend]:.0f} pending; disk has {size} in {len(files)}"
            )
    return problems


def wait_nothing_pending(server: S3OrchProcess, timeout: float = 20.0) -> None:
    """Until the cleanup loop has deleted every pending copy (a crash leaves some)."""

    def settled() -> bool:
        pending = labelled(metric_samples(server), "s3o_quota_bytes_pending", "backend")
        return not any(pending.values())

    wait_for(settled, timeout, "pending bytes to be cleaned up")
