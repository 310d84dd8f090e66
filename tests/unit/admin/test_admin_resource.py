"""The admin API over real HTTP on 127.0.0.1: auth, routing, errors and the job endpoints."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq
from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from s3orch.admin.resource import (
    AdminResource,
    Answer,
    Call,
    counters_view,
    job_routes,
    start_job,
    wait_requested,
)
from s3orch.jobs.runner import JobRunner
from s3orch.store.db import Database
from s3orch.store.jobs import Job, JobStore
from tests.unit.jobs.list_kind import ListKind

TOKEN = "s3cr3t-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@frozen
class Admin:
    """A listening admin API, its runner and the job kind behind its test route."""

    url: str
    client: HTTPClient
    runner: JobRunner
    kind: ListKind

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        """Send a request; return status, parsed JSON body and the response."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        response = await self.client.request(
            method, self.url + path, data=data, headers=BEARER if headers is None else headers
        )
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, json.loads(await treq.content(response)), response


@pytest_twisted.async_yield_fixture
async def admin(reactor: IReactorCore, tmp_path: os.PathLike[str]) -> AsyncIterator[Admin]:
    """The admin API with the job routes and POST list-job, plus a token-less copy at
    /admin-off, on a port of its own."""
    db = Database.sqlite(os.path.join(tmp_path, "s3orch.sqlite3"), reactor=reactor)
    await db.migrate()
    kind = ListKind(250)
    runner = JobRunner(JobStore(db), {"list": kind}, reactor, batch_size=100, retry_delays=(0.0,))
    runner.startService()

    async def list_job(call: Call) -> Answer:
        return await start_job(
            runner,
            "list",
            {"note": call.body.get("note", "")},
            lock_key=call.body.get("lock"),
            wait=wait_requested(call.body),
            view=counters_view("listed"),
        )

    async def broken(call: Call) -> Answer:
        raise RuntimeError("handler bug")

    resource = AdminResource(TOKEN, job_routes(runner, {"list": "listed"}))
    resource.route("POST", "list-job", list_job)
    resource.route("GET", "broken", broken)
    root = Resource()
    root.putChild(b"admin", resource)
    root.putChild(b"admin-off", AdminResource("", job_routes(runner)))
    port: IListeningPort = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        yield Admin(f"http://127.0.0.1:{port.getHost().port}", client, runner, kind)
    finally:
        await runner.stopService()
        await port.stopListening()
        db.close()


@pytest_twisted.ensureDeferred
async def test_no_token_configured_is_404(admin: Admin) -> None:
    """Without a configured token every admin path answers 404, whatever is sent."""
    for method, path in [("GET", "/admin-off/api/jobs"), ("POST", "/admin-off/api/x")]:
        status, body, _ = await admin.call(method, path)
        assert (status, body) == (404, {"error": "not found"})


@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_token_is_401(admin: Admin) -> None:
    """A missing, wrong or non-bearer credential gets 401 JSON with a Bearer challenge."""
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-Admin-Token": TOKEN + "x"},
        {"Authorization": "Bearer "},
    ]:
        status, body, response = await admin.call("GET", "/admin/api/jobs", headers=headers)
        assert status == 401, headers
        assert set(body) == {"error"}
        assert response.headers.getRawHeaders(b"www-authenticate") == [
            b'Bearer realm="s3orch-admin"'
        ]


@pytest_twisted.ensureDeferred
async def test_bearer_and_x_admin_token_are_accepted(admin: Admin) -> None:
    """Both Authorization: Bearer and X-Admin-Token carry the token."""
    for headers in [BEARER, {"Authorization": f"bearer {TOKEN}"}, {"X-Admin-Token": TOKEN}]:
        status, body, _ = await admin.call("GET", "/admin/api/jobs", headers=headers)
        assert (status, body) == (200, {"jobs": []})


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods(admin: Admin) -> None:
    """Unknown paths are 404 and known paths with another method 405 with Allow, as JSON."""
    for path in ["/admin/api/nope", "/admin/other", "/admin", "/admin/api/jobs/a/b"]:
        status, body, _ = await admin.call("GET", path)
        assert status == 404 and "error" in body, path
    status, body, response = await admin.call("PUT", "/admin/api/jobs", {})
    assert status == 405 and "error" in body
    assert response.headers.getRawHeaders(b"allow") == [b"GET"]
    status, _, response = await admin.call("POST", "/admin/api/jobs/abc", {})
    assert status == 405
    assert response.headers.getRawHeaders(b"allow") == [b"DELETE, GET"]


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_400(admin: Admin) -> None:
    """Invalid JSON, non-object JSON, bodies over 1 MiB and a non-boolean wait are refused."""
    for body in [b"{nope", b"[1, 2]", b'"text"', b"\xff\xfe", b" " + b"{}" * (512 * 1024)]:
        status, answer, _ = await admin.call("POST", "/admin/api/list-job", body)
        assert status == 400 and set(answer) == {"error"}, body[:10]
    status, answer, _ = await admin.call("POST", "/admin/api/list-job", {"wait": "yes"})
    assert (status, answer) == (400, {"error": '"wait" must be true or false'})
    assert admin.kind.counts == 0


@pytest_twisted.ensureDeferred
async def test_post_waits_for_the_job_and_answers_its_counters(admin: Admin) -> None:
    """By default the POST answers when the job is complete, with renamed counters."""
    status, body, _ = await admin.call("POST", "/admin/api/list-job", b"")
    assert (status, body) == (200, {"status": "complete", "listed": 250, "failed": 0, "total": 250})


@pytest_twisted.ensureDeferred
async def test_post_without_wait_answers_202_and_the_job_can_be_read(admin: Admin) -> None:
    """wait false answers 202 with the job id at once; the job is then readable by id."""
    status, body, _ = await admin.call("POST", "/admin/api/list-job", {"wait": False, "note": "n1"})
    assert status == 202 and body["status"] == "running" and set(body) == {"id", "status"}
    await admin.runner.wait(body["id"])
    status, view, _ = await admin.call("GET", f"/admin/api/jobs/{body['id']}")
    assert status == 200
    assert {k: view[k] for k in ("id", "kind", "status", "processed", "listed", "failed")} == {
        "id": body["id"],
        "kind": "list",
        "status": "complete",
        "processed": 250,
        "listed": 250,
        "failed": 0,
    }
    assert (view["total"], view["params"], view["last_errors"]) == (250, {"note": "n1"}, [])
    assert view["started"].endswith("Z") and view["finished"].endswith("Z")
    assert view["started"] <= view["finished"]


@pytest_twisted.ensureDeferred
async def test_jobs_list_order_filter_and_limit(admin: Admin) -> None:
    """GET jobs lists newest first, filters by status, honours limit and refuses bad values."""
    ids = []
    for note in ["a", "b", "c"]:
        _, body, _ = await admin.call("POST", "/admin/api/list-job", {"wait": False, "note": note})
        await admin.runner.wait(body["id"])
        ids.append(body["id"])
    _, listed, _ = await admin.call("GET", "/admin/api/jobs")
    assert [j["id"] for j in listed["jobs"]] == ids[::-1]
    _, limited, _ = await admin.call("GET", "/admin/api/jobs?limit=2")
    assert [j["id"] for j in limited["jobs"]] == ids[:0:-1]
    _, complete, _ = await admin.call("GET", "/admin/api/jobs?status=complete")
    assert len(complete["jobs"]) == 3
    _, running, _ = await admin.call("GET", "/admin/api/jobs?status=running")
    assert running == {"jobs": []}
    for query in ["status=bogus", "limit=0", "limit=abc", "limit=100000"]:
        status, body, _ = await admin.call("GET", f"/admin/api/jobs?{query}")
        assert status == 400 and "error" in body, query


@pytest_twisted.ensureDeferred
async def test_unknown_job_is_404(admin: Admin) -> None:
    """GET and DELETE of a job id that does not exist answer 404."""
    for method in ["GET", "DELETE"]:
        status, body, _ = await admin.call(method, "/admin/api/jobs/0123456789abcdef")
        assert (status, body) == (404, {"error": "no job 0123456789abcdef"})


@pytest_twisted.ensureDeferred
async def test_delete_cancels_a_running_job(admin: Admin) -> None:
    """DELETE stops a running job after its batch (200, cancelled); the waiting POST answers
    409; a second DELETE is 409."""
    entered, gate = admin.kind.hold(100)
    waiting = Deferred.fromCoroutine(admin.call("POST", "/admin/api/list-job", {"lock": "L"}))
    await entered
    (job,) = await admin.runner.recent()
    store = admin.runner.store
    recorded: Deferred[None] = Deferred()
    request_cancel = store.request_cancel

    async def spy(job_id: str, now: float) -> Job:
        cancelled = await request_cancel(job_id, now)
        recorded.callback(None)
        return cancelled

    store.request_cancel = spy  # type: ignore[method-assign]
    deleting = Deferred.fromCoroutine(admin.call("DELETE", f"/admin/api/jobs/{job.id}"))
    await recorded  # let the batch go only once the cancel is in the database
    gate.callback(None)
    status, view, _ = await deleting
    assert (status, view["status"], view["processed"], view["cancel_requested"]) == (
        200,
        "cancelled",
        200,
        True,
    )
    status, answer, _ = await waiting
    assert status == 409
    assert answer == {
        "status": "cancelled",
        "listed": 200,
        "failed": 0,
        "total": 250,
        "id": job.id,
        "error": f"job {job.id} was cancelled",
    }
    status, body, _ = await admin.call("DELETE", f"/admin/api/jobs/{job.id}")
    assert (status, body) == (409, {"error": f"job {job.id} has already ended: cancelled"})


@pytest_twisted.ensureDeferred
async def test_handler_error_is_500_json(admin: Admin) -> None:
    """A handler that raises answers 500 with a JSON error that reveals nothing."""
    status, body, _ = await admin.call("GET", "/admin/api/broken")
    assert (status, body) == (500, {"error": "internal error; see the server log"})
