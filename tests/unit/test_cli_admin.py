"""`s3orch admin`: the admin API client against a real s3orch, and against a scripted fake for
the answers a healthy server rarely gives (failed jobs, Ctrl-C, odd replies)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from s3orch.admin_cli import Progress
from s3orch.cli import main
from s3orch.crypto.keys import generate_key
from s3orch.testing.processes import free_port
from s3orch.testing.s3orch_process import S3OrchProcess, local_config
from tests.integration.helpers import boto_client

TOKEN = "cli-admin-token-5f1e"
OBJECTS = {f"obj/{i}": f"body {i} ".encode() * (i + 1) for i in range(5)}


@frozen
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def admin(url: str, *argv: str, token: str = TOKEN, err: io.StringIO | None = None) -> Outcome:
    out, err = io.StringIO(), err or io.StringIO()
    code = main(["admin", "--url", url, "--token", token, *argv], stdout=out, stderr=err)
    outcome = Outcome(code, out.getvalue(), err.getvalue())
    assert token not in outcome.out + outcome.err
    return outcome


# -- a real s3orch with objects under an old master key --------------------------------------


@frozen
class Rotated:
    server: S3OrchProcess
    rotation: Outcome
    job_id: str


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotated]:
    """s3orch restarted with a new master key after writing OBJECTS under the old one, and the
    CLI's rotation of the old key (config-0)."""
    workdir = tmp_path_factory.mktemp("s3orch")
    config = local_config(workdir, encrypted=True)
    config["admin"] = {"token": TOKEN}
    old_key = config["encryption"]["master_key"]
    server = S3OrchProcess(workdir, config)
    server.start()
    try:
        s3 = boto_client(server.endpoint)
        for key, body in OBJECTS.items():
            s3.put_object(Bucket="test", Key=key, Body=body)
    finally:
        server.stop()
    config["encryption"] = {
        "enabled": True,
        "master_key": generate_key(),
        "previous_keys": [old_key],
    }
    server = S3OrchProcess(workdir, config)
    server.start()
    try:
        rotation = admin(server.endpoint, "rotate-encryption-key", "--old-key-id", "config-0")
        found = re.search(r"job (\S+) running", rotation.err)
        assert found, rotation
        yield Rotated(server, rotation, found.group(1))
    finally:
        server.stop()


def test_rotate_prints_progress_and_result(rotated: Rotated) -> None:
    """rotate-encryption-key follows its job and prints the API's result as JSON, exit 0."""
    rotation = rotated.rotation
    assert rotation.code == 0, rotation
    assert rotation.json() == {"status": "complete", "rotated": 5, "failed": 0, "total": 5}
    # Not a terminal: plain lines, ending with the job's final state.
    assert "\r" not in rotation.err
    assert rotation.err.splitlines()[-1].startswith("rotate-encryption-key  5/5  100%")
    assert rotation.err.splitlines()[-1].endswith("complete")


def test_rotated_objects_still_read(rotated: Rotated) -> None:
    """Every object reads back after the rotation."""
    s3 = boto_client(rotated.server.endpoint)
    for key, body in OBJECTS.items():
        assert s3.get_object(Bucket="test", Key=key)["Body"].read() == body


def test_rotate_again_finds_nothing(rotated: Rotated) -> None:
    """A second rotation of the same key has nothing left to do."""
    again = admin(rotated.server.endpoint, "rotate-encryption-key", "--old-key-id", "config-0")
    assert again.code == 0, again
    assert again.json() == {"status": "complete", "rotated": 0, "failed": 0, "total": 0}


def test_no_wait_then_follow(rotated: Rotated) -> None:
    """--no-wait prints the job id at once; job ID --follow waits for it and prints its view."""
    started = admin(
        rotated.server.endpoint, "rotate-encryption-key", "--old-key-id", "config-0", "--no-wait"
    )
    assert started.code == 0, started
    answer = started.json()
    assert answer["status"] == "running" and answer["id"]
    followed = admin(rotated.server.endpoint, "job", answer["id"], "--follow")
    assert followed.code == 0, followed
    view = followed.json()
    assert (view["id"], view["kind"], view["status"]) == (
        answer["id"],
        "rotate-encryption-key",
        "complete",
    )
    assert "complete" in followed.err.splitlines()[-1]


def test_encrypt_existing(rotated: Rotated) -> None:
    """encrypt-existing runs as a job too: nothing to convert when every object is sealed."""
    converted = admin(rotated.server.endpoint, "encrypt-existing")
    assert converted.code == 0, converted
    assert converted.json() == {"status": "complete", "converted": 0, "failed": 0, "total": 0}


def test_jobs_table(rotated: Rotated) -> None:
    """jobs prints an aligned table with the rotation's id, kind, status and counts."""
    listed = admin(rotated.server.endpoint, "jobs")
    assert listed.code == 0, listed
    header, *rows = listed.out.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "PROCESSED", "FAILED", "STARTED", "FINISHED"]
    row = next(r for r in rows if r.startswith(rotated.job_id))
    assert row.split()[:5] == [rotated.job_id, "rotate-encryption-key", "complete", "5/5", "0"]
    assert row.index("complete") == header.index("STATUS")
    assert row.index("5/5") == header.index("PROCESSED")


def test_jobs_json_with_filters(rotated: Rotated) -> None:
    """jobs --json --status --limit prints the API's answer for that query."""
    listed = admin(
        rotated.server.endpoint, "jobs", "--json", "--status", "complete", "--limit", "1"
    )
    assert listed.code == 0, listed
    jobs = listed.json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] == "complete"


def test_job_shows_view(rotated: Rotated) -> None:
    """job ID prints the job's view as indented JSON."""
    shown = admin(rotated.server.endpoint, "job", rotated.job_id)
    assert shown.code == 0, shown
    assert shown.out.startswith("{\n  ")
    view = shown.json()
    assert view["params"] == {"old_key_id": "config-0"}
    assert (view["rotated"], view["processed"], view["total"]) == (5, 5, 5)


def test_cancel_finished_job(rotated: Rotated) -> None:
    """Cancelling a job that has ended exits 1 with the server's 409 message."""
    cancelled = admin(rotated.server.endpoint, "cancel", rotated.job_id)
    assert cancelled.code == 1
    assert cancelled.out == ""
    assert f"HTTP 409: job {rotated.job_id} has already ended: complete" in cancelled.err


def test_unknown_job(rotated: Rotated) -> None:
    """job and cancel of an unknown id exit 1 with the server's 404 message."""
    for command in ("job", "cancel"):
        missing = admin(rotated.server.endpoint, command, "no-such-job")
        assert missing.code == 1
        assert "HTTP 404: no job no-such-job" in missing.err


def test_wrong_token(rotated: Rotated) -> None:
    """A wrong token exits 1 with the 401 and the server's message, never echoing the token."""
    refused = admin(rotated.server.endpoint, "jobs", token="not-the-token")
    assert refused.code == 1
    assert "HTTP 401: invalid admin token" in refused.err


# -- without a server, or with a scripted one --------------------------------------------------


def test_server_down() -> None:
    """Nothing listening: exit 1 with a message naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    down = admin(url, "jobs")
    assert down.code == 1
    assert f"cannot reach s3orch at {url}: Connection refused" in down.err


def test_token_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --token or S3ORCH_ADMIN_TOKEN the command refuses to start (exit 2)."""
    monkeypatch.delenv("S3ORCH_ADMIN_TOKEN", raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert main(["admin", "jobs"], stdout=out, stderr=err) == 2
    assert "S3ORCH_ADMIN_TOKEN" in err.getvalue()


def test_url_and_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3ORCH_URL and S3ORCH_ADMIN_TOKEN stand in for --url and --token."""
    with FakeAdmin({("GET", "/admin/api/jobs?limit=20"): [(200, {"jobs": []})]}) as fake:
        monkeypatch.setenv("S3ORCH_URL", fake.url + "/")
        monkeypatch.setenv("S3ORCH_ADMIN_TOKEN", TOKEN)
        out, err = io.StringIO(), io.StringIO()
        assert main(["admin", "jobs"], stdout=out, stderr=err) == 0
    assert out.getvalue() == "no jobs\n"
    assert fake.requests == [("GET", "/admin/api/jobs?limit=20", f"Bearer {TOKEN}", None)]


class FakeAdmin:
    """An HTTP server on 127.0.0.1 answering each (method, path) from its list of
    (status, body) in turn, the last one repeating; it records every request."""

    def __init__(self, answers: dict[tuple[str, str], list[tuple[int, Any]]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, str | None, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                key = (self.command, self.path)
                fake.requests.append((*key, self.headers.get("Authorization"), body))
                queue = fake.answers.get(key) or [(404, {"error": "not found"})]
                status, reply = queue.pop(0) if len(queue) > 1 else queue[0]
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeAdmin:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def view(status: str, processed: int, total: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "j1",
        "kind": "rotate-encryption-key",
        "status": status,
        "processed": processed,
        "failed": 0,
        "total": total,
        "last_errors": [],
        **extra,
    }


ADMIN_COMMAND = (sys.executable, "-m", "s3orch.cli", "admin")
STARTED = {("POST", "/admin/api/rotate-encryption-key"): [(202, {"id": "j1", "status": "running"})]}


@pytest.mark.parametrize(
    ("ended", "error"),
    [
        (view("failed", 3, 10, failed=1, last_errors=["boom"]), "job j1 failed: boom"),
        (view("cancelled", 3, 10), "job j1 was cancelled"),
    ],
)
def test_job_that_does_not_complete_exits_1(ended: dict[str, Any], error: str) -> None:
    """A job ending failed or cancelled prints the result with its error and exits 1."""
    polls = [(200, view("running", 3, 10)), (200, ended)]
    with FakeAdmin({**STARTED, ("GET", "/admin/api/jobs/j1"): polls}) as fake:
        outcome = admin(fake.url, "rotate-encryption-key", "--old-key-id", "k")
    assert outcome.code == 1
    result = outcome.json()
    assert (result["status"], result["id"], result["error"]) == (ended["status"], "j1", error)
    assert f"error: {error}" in outcome.err
    assert fake.requests[0] == (
        "POST",
        "/admin/api/rotate-encryption-key",
        f"Bearer {TOKEN}",
        {"old_key_id": "k", "wait": False},
    )


def test_progress_bar_on_a_terminal() -> None:
    """On a terminal the bar is redrawn in place and the last drawing ends the line."""
    polls = [
        (200, view("running", 0, None)),
        (200, view("running", 4, 10)),
        (200, view("complete", 10, 10)),
    ]
    err = TTY()
    with FakeAdmin({**STARTED, ("GET", "/admin/api/jobs/j1"): polls}) as fake:
        outcome = admin(fake.url, "rotate-encryption-key", "--old-key-id", "k", err=err)
    assert outcome.code == 0, outcome
    assert outcome.json() == {"status": "complete", "rotated": 10, "failed": 0, "total": 10}
    drawings = outcome.err.split("\r")
    assert drawings[0] == "rotate-encryption-key: job j1 running\n"
    assert re.match(r"rotate-encryption-key  \[-+\]  0/\?\x1b\[K$", drawings[1])
    assert re.match(r"rotate-encryption-key  \[#+-+\]  4/10  40%", drawings[2])
    assert re.match(
        r"rotate-encryption-key  \[#+\]  10/10  100%  .*complete\x1b\[K\n$", drawings[3]
    )


def test_progress_rate_and_eta() -> None:
    """The line shows the rate since the first poll and the time left at that rate."""
    now = [100.0]
    progress = Progress(io.StringIO(), "rotate-encryption-key", False, lambda: now[0])
    assert progress.describe(view("running", 0, 10_000), now[0]) == (
        "rotate-encryption-key  0/10,000  0%"
    )
    now[0] = 104.0
    assert progress.describe(view("running", 6_000, 10_000, failed=2), now[0]) == (
        "rotate-encryption-key  6,002/10,000  60%  2 failed  1,500/s  ETA 3s"
    )


def test_admin_api_off() -> None:
    """The 404 of a server without an admin token explains how to turn the API on."""
    with FakeAdmin({}) as fake:
        outcome = admin(fake.url, "jobs")
    assert outcome.code == 1
    assert "HTTP 404: not found (is the admin API on? it needs admin.token" in outcome.err


def test_answer_that_is_not_json() -> None:
    """Something other than s3orch answering is reported with its status and text."""
    with FakeAdmin({("GET", "/admin/api/jobs/x"): [(502, b"<html>Bad Gateway</html>")]}) as fake:
        outcome = admin(fake.url, "job", "x")
    assert outcome.code == 1
    assert "HTTP 502: answer is not a JSON object: '<html>Bad Gateway</html>'" in outcome.err


def test_ctrl_c_leaves_the_job_running() -> None:
    """Ctrl-C while following exits 130, says how to follow or cancel, and cancels nothing."""
    polls = [(200, view("running", 1, 10))]
    with FakeAdmin({**STARTED, ("GET", "/admin/api/jobs/j1"): polls}) as fake:
        process = subprocess.Popen(
            [*ADMIN_COMMAND, "--url", fake.url, "rotate-encryption-key", "--old-key-id", "k"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "S3ORCH_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"},
            cwd=Path(__file__).parents[2],
        )
        assert process.stderr is not None
        # The first progress line comes after the first poll: the CLI is in its loop.
        assert process.stderr.readline() == "rotate-encryption-key: job j1 running\n"
        assert process.stderr.readline().startswith("rotate-encryption-key  1/10  10%")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert out == ""
    assert "stopped following job j1; it continues on the server" in err
    assert "s3orch admin job j1 --follow" in err and "s3orch admin cancel j1" in err
    assert {method for method, *_ in fake.requests} == {"POST", "GET"}
