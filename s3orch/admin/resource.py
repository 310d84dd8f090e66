"""The admin API: JSON over HTTP under /admin/api/, behind one bearer token.

One leaf resource authenticates every request, then sends it to the route
whose method and path match. Routes are registered by the modules that own
the operations (rotation, encrypt-existing...); the job endpoints are here.
A handler is an async function of a ``Call`` returning ``(status, body)``;
it refuses a request by raising ``AdminError``. Every answer, error or not,
is a JSON object; errors are ``{"error": "..."}``.

Without a configured token the whole tree answers 404, as if it did not exist.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from s3orch.httputil import finish_with, serve_async
from s3orch.jobs.runner import JobRunner, RunnerNotRunning, UnknownJobKind
from s3orch.store.jobs import CANCELLED, COMPLETE, STATUSES, Job, JobFinished, UnknownJob

log = Logger()

MAX_BODY = 1024 * 1024
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class AdminError(Exception):
    """Refuse an admin request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class Call:
    """One authenticated admin request.

    ``args`` holds the values of the route's ``{name}`` path segments;
    ``query`` the first value of each query parameter; ``body`` the JSON
    object sent (empty if none; only POST, PUT and PATCH bodies are read).
    """

    method: str
    path: str
    args: Mapping[str, str]
    query: Mapping[str, str]
    body: Mapping[str, Any]


Answer = tuple[int, Mapping[str, Any]]
Handler = Callable[[Call], Awaitable[Answer]]


@frozen
class Route:
    """``handler`` answers ``method`` on /admin/api/``pattern``.

    ``pattern`` is segments separated by ``/``; a segment ``{name}`` matches
    any one segment and passes it as ``args[name]``.
    """

    method: str
    pattern: str
    handler: Handler

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        parts = self.pattern.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        args = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                if not segment:
                    return None
                args[part[1:-1]] = segment
            elif part != segment:
                return None
        return args


def _provided_token(request: Request) -> bytes | None:
    authorization = request.getHeader(b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip()
    token = request.getHeader(b"x-admin-token")
    if token is not None and token.strip():
        return token.strip()
    return None


def _send(request: Request, status: int, body: Mapping[str, Any]) -> None:
    encoded = json.dumps(body, separators=(",", ":")).encode()
    request.setHeader(b"Cache-Control", b"no-store")
    finish_with(request, encoded, b"application/json", status)


def _read_body(request: Request) -> Mapping[str, Any]:
    length = request.getHeader(b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        raise AdminError(400, f"request body over {MAX_BODY} bytes")
    content = request.content
    if content is None:
        return {}
    content.seek(0)
    data = content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise AdminError(400, f"request body over {MAX_BODY} bytes")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise AdminError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise AdminError(400, "request body must be a JSON object")
    return body


class AdminResource(Resource):
    """Everything under /admin: mount it as the child ``admin`` of the root.

    With an empty ``token`` every request answers 404.
    """

    isLeaf = True

    def __init__(self, token: str, routes: Iterable[Route] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._token = token.encode()
        self._routes: list[Route] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Register a route; a second route for one method and pattern is a mistake."""
        for existing in self._routes:
            if (existing.method, existing.pattern) == (route.method, route.pattern):
                raise ValueError(f"{route.method} {route.pattern} is already routed")
        self._routes.append(route)

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on /admin/api/``pattern``."""
        self.add(Route(method.upper(), pattern.strip("/"), handler))

    def render(self, request: Request) -> Any:
        return serve_async(request, self._serve(request))

    async def _serve(self, request: Request) -> None:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        try:
            status, body = await self._dispatch(request, method)
        except CancelledError:
            log.info("admin {method} {path}: client went away", method=method, path=path)
            return
        except AdminError as e:
            status, body = e.status, {"error": e.message}
        except Exception:
            log.failure("admin {method} {path} failed", method=method, path=path)
            status, body = 500, {"error": "internal error; see the server log"}
        # Never the headers: they carry the token.
        log.info(
            "admin {method} {path}: {status} {error}",
            method=method,
            path=path,
            status=status,
            error=body.get("error", ""),
        )
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="s3orch-admin"')
        if not request.finished and not request._disconnected:
            try:
                _send(request, status, body)
            except (TypeError, ValueError):
                log.failure("admin {method} {path}: answer is not JSON", method=method, path=path)
                _send(request, 500, {"error": "internal error; see the server log"})

    async def _dispatch(self, request: Request, method: str) -> Answer:
        if not self._token:
            raise AdminError(404, "not found")
        provided = _provided_token(request)
        if provided is None:
            raise AdminError(401, "admin token required")
        if not hmac.compare_digest(provided, self._token):
            raise AdminError(401, "invalid admin token")
        try:
            segments = tuple(s.decode("utf-8") for s in request.postpath or ())
        except UnicodeDecodeError:
            raise AdminError(404, "not found") from None
        if segments and segments[-1] == "":
            segments = segments[:-1]
        if not segments or segments[0] != "api":
            raise AdminError(404, "not found")
        segments = segments[1:]
        allowed = []
        for route in self._routes:
            args = route.match(segments)
            if args is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            body = _read_body(request) if method in _BODY_METHODS else {}
            query = {
                k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in (request.args or {}).items()
                if v
            }
            call = Call(method, "/".join(segments), args, query, body)
            return await route.handler(call)
        if allowed:
            request.setHeader(b"Allow", ", ".join(sorted(set(allowed))).encode())
            raise AdminError(405, f"method {method} not allowed here")
        raise AdminError(404, f"no admin endpoint /admin/api/{'/'.join(segments)}")


# -- jobs ----------------------------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(job: Job, processed_as: str | None = None) -> dict[str, Any]:
    """A job as the API shows it; ``processed_as`` also names the processed count
    the way its kind speaks of it (``rotated``)."""
    view: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "processed": job.processed,
        "failed": job.failed,
        "total": job.total,
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "last_errors": list(job.last_errors),
        "params": job.params,
        "cancel_requested": job.cancel_requested,
    }
    if processed_as is not None:
        view[processed_as] = job.processed
    return view


def counters_view(processed_as: str) -> Callable[[Job], dict[str, Any]]:
    """The short answer of an operation run as a job:
    ``{"status": "complete", "<processed_as>": N, "failed": F, "total": T}``."""

    def view(job: Job) -> dict[str, Any]:
        return {
            "status": job.status,
            processed_as: job.processed,
            "failed": job.failed,
            "total": job.total if job.total is not None else job.processed + job.failed,
        }

    return view


def wait_requested(body: Mapping[str, Any]) -> bool:
    """The request's ``"wait"`` (default true); anything but a boolean is refused."""
    wait = body.get("wait", True)
    if not isinstance(wait, bool):
        raise AdminError(400, '"wait" must be true or false')
    return wait


async def start_job(
    runner: JobRunner,
    kind: str,
    params: Mapping[str, Any],
    *,
    lock_key: str | None = None,
    wait: bool = True,
    view: Callable[[Job], Mapping[str, Any]] = job_view,
) -> Answer:
    """Start a job (or join the running one holding ``lock_key``) and answer.

    With ``wait``, answer when it ends: 200 with ``view(job)`` if complete,
    409 if cancelled, 500 if failed (both with ``error`` and ``id`` added).
    Without, answer 202 ``{"id": ..., "status": "running"}`` at once.
    Closing the connection while waiting leaves the job running.
    """
    job = await begin_job(runner, kind, params, lock_key)
    return await job_answer(runner, job, wait, view)


async def begin_job(
    runner: JobRunner, kind: str, params: Mapping[str, Any], lock_key: str | None
) -> Job:
    """Start a job, or join the running one holding ``lock_key`` (whatever its kind)."""
    try:
        return await runner.start(kind, params, lock_key)
    except UnknownJobKind:
        raise AdminError(400, f"unknown job kind {kind!r}") from None
    except RunnerNotRunning:
        raise AdminError(503, "s3orch is starting or stopping; try again shortly") from None


async def job_answer(
    runner: JobRunner,
    job: Job,
    wait: bool = True,
    view: Callable[[Job], Mapping[str, Any]] = job_view,
) -> Answer:
    """See ``start_job``: 202 at once, or the job's end as 200, 409 or 500."""
    if not wait:
        return 202, {"id": job.id, "status": "running"}
    ended = await runner.wait(job.id)
    body = dict(view(ended))
    if ended.status == COMPLETE:
        return 200, body
    body["id"] = ended.id
    if ended.status == CANCELLED:
        body["error"] = f"job {ended.id} was cancelled"
        return 409, body
    last = ended.last_errors[-1] if ended.last_errors else "no error recorded"
    body["error"] = f"job {ended.id} {ended.status}: {last}"
    return 500, body


def job_routes(runner: JobRunner, processed_as: Mapping[str, str] | None = None) -> list[Route]:
    """GET jobs, GET jobs/{id}, DELETE jobs/{id} (cancel).

    ``processed_as`` maps a job kind to the name its views also give the
    processed count (``{"rotate-encryption-key": "rotated"}``).
    """
    names = dict(processed_as or {})

    def show(job: Job) -> dict[str, Any]:
        return job_view(job, names.get(job.kind))

    async def list_jobs(call: Call) -> Answer:
        status = call.query.get("status") or None
        if status is not None and status not in STATUSES:
            raise AdminError(400, f"status must be one of {', '.join(STATUSES)}")
        raw_limit = call.query.get("limit", str(DEFAULT_LIST_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise AdminError(400, "limit must be an integer") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise AdminError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}")
        jobs = await runner.recent(status, limit)
        return 200, {"jobs": [show(job) for job in jobs]}

    async def get_job(call: Call) -> Answer:
        job_id = call.args["id"]
        try:
            job = await runner.get(job_id)
        except UnknownJob:
            raise AdminError(404, f"no job {job_id}") from None
        return 200, show(job)

    async def cancel_job(call: Call) -> Answer:
        job_id = call.args["id"]
        try:
            job = await runner.cancel(job_id)
        except UnknownJob:
            raise AdminError(404, f"no job {job_id}") from None
        except JobFinished as e:
            raise AdminError(409, f"job {job_id} has already ended: {e.job.status}") from None
        # Still running: another process runs it and stops it after its current batch.
        return (202 if job.running else 200), show(job)

    return [
        Route("GET", "jobs", list_jobs),
        Route("GET", "jobs/{id}", get_job),
        Route("DELETE", "jobs/{id}", cancel_job),
    ]
