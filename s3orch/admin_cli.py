"""``s3orch admin``: drive the admin API of a running s3orch from a shell.

A plain blocking client (urllib): this is a short-lived command, not the server, so there is no
reactor to keep free. Long operations are started with ``"wait": false`` and then followed by
polling their job, so no HTTP connection has to outlive a proxy's idle timeout, a dropped
connection costs nothing, and Ctrl-C leaves the job running on the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from attrs import define, field, frozen

from s3orch.cli import Run, Streams

if TYPE_CHECKING:
    from s3orch.cli import _SubParsers

DEFAULT_URL = "http://127.0.0.1:9000"
URL_VARIABLE = "S3ORCH_URL"
TOKEN_VARIABLE = "S3ORCH_ADMIN_TOKEN"
REQUEST_TIMEOUT = 30.0
POLL_INTERVAL = 0.5
# Without a terminal, a progress line this often: enough for a log, not a flood.
LINE_INTERVAL = 5.0
# A server restarting under a running job comes back with the job; wait that long for it.
RECONNECT_PATIENCE = 60.0
STATUSES = ("running", "complete", "failed", "cancelled")
RUNNING, COMPLETE = "running", "complete"
INTERRUPTED = 130

# What each operation's result calls the processed count (the API's own short answer).
_PROCESSED_AS = {
    "rotate-encryption-key": "rotated",
    "encrypt-existing": "converted",
    "decrypt-existing": "converted",
}


class AdminAPIError(Exception):
    """The server refused the request: its status and ``{"error"}`` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """No HTTP answer from ``url`` at all."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach s3orch at {url}: {reason} "
            f"(is it running there? set --url or {URL_VARIABLE})"
        )
        self.url = url
        self.reason = reason


class UsageError(Exception):
    """The command line cannot work: exit 2."""


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _decode(status: int, data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data) if data.strip() else {}
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        # Not s3orch answering: a proxy, or another program on that port.
        text = data[:200].decode("utf-8", "replace").strip()
        raise AdminAPIError(status, f"answer is not a JSON object: {text!r}")
    return body


@frozen
class AdminClient:
    """Calls /admin/api/ on ``url`` with the bearer ``token``; never shows the token."""

    url: str
    token: str = field(repr=False)
    timeout: float = REQUEST_TIMEOUT

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one request; return the status and JSON object of a 2xx answer.

        Raises AdminAPIError for any other answer and Unreachable when none comes.
        """
        target = f"{self.url}/admin/api/{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(target, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status: int = response.status
                return status, _decode(status, response.read())
        except urllib.error.HTTPError as e:
            try:
                with e:
                    answer = e.read()
            except (OSError, http.client.HTTPException):
                answer = b""
            error = _decode(e.code, answer).get("error") if answer.strip() else None
            message = error if isinstance(error, str) and error else e.reason
            raise AdminAPIError(e.code, str(message)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise Unreachable(self.url, _reason(e)) from None

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", "jobs/" + urllib.parse.quote(job_id, safe=""))[1]


# -- progress -------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _count(view: Mapping[str, Any], name: str) -> int:
    value = view.get(name)
    return value if isinstance(value, int) else 0


@define
class Progress:
    """Shows a job's progress on ``err``: a bar redrawn in place on a terminal, otherwise a
    plain line every LINE_INTERVAL seconds and one when the job ends."""

    err: TextIO
    label: str
    tty: bool
    clock: Callable[[], float] = time.monotonic
    _first: tuple[float, int] | None = None
    _last_line: float | None = None
    _drawn: bool = False

    def update(self, view: Mapping[str, Any]) -> None:
        now = self.clock()
        if self.tty:
            self._draw(self.describe(view, now, bar=True))
        elif self._last_line is None or now - self._last_line >= LINE_INTERVAL:
            self._last_line = now
            print(self.describe(view, now), file=self.err, flush=True)

    def finish(self, view: Mapping[str, Any]) -> None:
        line = self.describe(view, self.clock(), bar=self.tty, ended=True)
        if self.tty:
            self._draw(line)
            self.leave()
        else:
            print(line, file=self.err, flush=True)

    def leave(self) -> None:
        """End the line being redrawn, so that what follows starts on a line of its own."""
        if self._drawn:
            print(file=self.err, flush=True)
            self._drawn = False

    def _draw(self, line: str) -> None:
        self.err.write("\r" + line + "\x1b[K")
        self.err.flush()
        self._drawn = True

    def describe(
        self, view: Mapping[str, Any], now: float, *, bar: bool = False, ended: bool = False
    ) -> str:
        """``rotate-encryption-key  [####----]  6,000/10,000  60%  1,234/s  ETA 3s``."""
        failed = _count(view, "failed")
        done = _count(view, "processed") + failed
        total = view.get("total")
        if not isinstance(total, int):
            total = None
        if self._first is None:
            self._first = (now, done)
        parts = [f"{done:,}/{'?' if total is None else f'{total:,}'}"]
        fraction = None
        if total is not None:
            fraction = 1.0 if total <= 0 else min(done / total, 1.0)
            parts.append(f"{fraction:.0%}")
        if failed:
            parts.append(f"{failed:,} failed")
        since, done_then = self._first
        rate = (done - done_then) / (now - since) if now - since >= 1.0 else 0.0
        if rate > 0:
            parts.append(f"{rate:,.0f}/s")
            if total is not None and not ended:
                parts.append(f"ETA {_duration(max(total - done, 0) / rate)}")
        if ended:
            parts.append(str(view.get("status")))
        if bar:
            columns = shutil.get_terminal_size((100, 24)).columns
            text_width = len(self.label) + sum(len(p) + 2 for p in parts) + 4
            width = max(10, min(40, columns - text_width - 1))
            filled = 0 if fraction is None else int(width * fraction)
            parts.insert(0, "[" + "#" * filled + "-" * (width - filled) + "]")
        return "  ".join([self.label, *parts])


# -- following a job --------------------------------------------------------------------------


@define
class Follower:
    """Polls a job until it ends, showing its progress; the clock and sleep are injectable."""

    client: AdminClient
    streams: Streams
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def follow(self, job_id: str, label: str | None = None) -> dict[str, Any] | None:
        """The job's view once it has ended, or None after Ctrl-C (the job goes on)."""
        progress: Progress | None = None
        lost_since: float | None = None
        try:
            while True:
                try:
                    view = self.client.job(job_id)
                except Unreachable as e:
                    # The job survives a server restart: wait for the server to come back.
                    now = self.clock()
                    if lost_since is None:
                        lost_since = now
                        if progress is not None:
                            progress.leave()
                        self.streams.complain(f"{e}; retrying")
                    elif now - lost_since > RECONNECT_PATIENCE:
                        self._detached(job_id, progress)
                        raise
                    self.sleep(POLL_INTERVAL * 4)
                    continue
                lost_since = None
                if progress is None:
                    progress = Progress(
                        self.streams.err,
                        label or str(view.get("kind", "job")),
                        _is_tty(self.streams.err),
                        self.clock,
                    )
                if view.get("status") != RUNNING:
                    progress.finish(view)
                    return view
                progress.update(view)
                self.sleep(POLL_INTERVAL)
        except KeyboardInterrupt:
            self._detached(job_id, progress)
            return None

    def _detached(self, job_id: str, progress: Progress | None) -> None:
        if progress is not None:
            progress.leave()
        self.streams.complain(
            f"stopped following job {job_id}; it continues on the server.\n"
            f"  follow it:  s3orch admin job {job_id} --follow\n"
            f"  cancel it:  s3orch admin cancel {job_id}"
        )


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- commands ---------------------------------------------------------------------------------

Command = Callable[[AdminClient, argparse.Namespace, Streams], int]


def client_from_args(args: argparse.Namespace) -> AdminClient:
    """The client that ``--url``/``--token`` (or their environment variables) name."""
    url: str = (args.url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    token: str = args.token or os.environ.get(TOKEN_VARIABLE) or ""
    if not token:
        raise UsageError(
            f"an admin token is required: set {TOKEN_VARIABLE} (or pass --token); "
            "it is admin.token in the server's configuration"
        )
    return AdminClient(url, token)


def _command(command: Command) -> Run:
    """A subcommand's ``run``: builds the client and turns failures into exit statuses."""

    def run(args: argparse.Namespace, streams: Streams) -> int:
        try:
            client = client_from_args(args)
        except UsageError as e:
            streams.complain(f"s3orch admin: error: {e}")
            return 2
        try:
            return command(client, args, streams)
        except AdminAPIError as e:
            hint = ""
            if e.status == 404 and e.message == "not found":
                hint = " (is the admin API on? it needs admin.token in the server's configuration)"
            streams.complain(f"error: {e}{hint}")
            return 1
        except Unreachable as e:
            streams.complain(f"error: {e}")
            return 1
        except KeyboardInterrupt:
            streams.complain("interrupted")
            return INTERRUPTED

    return run


def _print_json(streams: Streams, value: Any, *, pretty: bool = False) -> None:
    streams.say(json.dumps(value, indent=2 if pretty else None))


def result_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """What the API answers for ``"wait": true``:
    ``{"status": "complete", "rotated": N, "failed": F, "total": T}``, with ``id`` and ``error``
    added when the job did not complete."""
    kind = str(view.get("kind"))
    processed, failed = _count(view, "processed"), _count(view, "failed")
    total = view.get("total")
    result: dict[str, Any] = {
        "status": view.get("status"),
        _PROCESSED_AS.get(kind, "processed"): processed,
        "failed": failed,
        "total": total if isinstance(total, int) else processed + failed,
    }
    if view.get("status") != COMPLETE:
        job_id = view.get("id")
        result["id"] = job_id
        if view.get("status") == "cancelled":
            result["error"] = f"job {job_id} was cancelled"
        else:
            errors = view.get("last_errors") or ["no error recorded"]
            result["error"] = f"job {job_id} {view.get('status')}: {errors[-1]}"
    return result


def _start(kind: str, params: Callable[[argparse.Namespace], dict[str, Any]]) -> Command:
    def start(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
        _, answer = client.call("POST", kind, {**params(args), "wait": False})
        job_id = answer.get("id")
        if args.no_wait or not isinstance(job_id, str) or answer.get("status") != RUNNING:
            _print_json(streams, answer)
            return 0 if answer.get("status") in (RUNNING, COMPLETE) else 1
        streams.complain(f"{kind}: job {job_id} running")
        view = Follower(client, streams).follow(job_id, kind)
        if view is None:
            return INTERRUPTED
        result = result_of(view)
        _print_json(streams, result)
        if result["status"] != COMPLETE:
            streams.complain(f"error: {result['error']}")
            return 1
        return 0

    return start


def _jobs(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    query = {"limit": str(args.limit)}
    if args.status:
        query["status"] = args.status
    _, answer = client.call("GET", "jobs", query=query)
    if args.json:
        _print_json(streams, answer, pretty=True)
        return 0
    jobs = answer.get("jobs") or []
    if not jobs:
        streams.say("no jobs")
        return 0
    for line in jobs_table(jobs):
        streams.say(line)
    return 0


def _time(value: Any) -> str:
    """``2024-05-01T12:00:00.123Z`` as ``2024-05-01 12:00:00Z``."""
    if not isinstance(value, str) or not value:
        return "-"
    date, _, rest = value.partition("T")
    return f"{date} {rest.split('.')[0].rstrip('Z')}Z" if rest else value


def jobs_table(jobs: list[Mapping[str, Any]]) -> list[str]:
    """One line per job under a header, columns aligned."""
    rows = [("ID", "KIND", "STATUS", "PROCESSED", "FAILED", "STARTED", "FINISHED")]
    for job in jobs:
        total = job.get("total")
        total_text = f"{total:,}" if isinstance(total, int) else "?"
        status = str(job.get("status"))
        if job.get("cancel_requested") and status == RUNNING:
            status += " (cancelling)"
        rows.append(
            (
                str(job.get("id")),
                str(job.get("kind")),
                status,
                f"{_count(job, 'processed'):,}/{total_text}",
                f"{_count(job, 'failed'):,}",
                _time(job.get("started")),
                _time(job.get("finished")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _job(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    if not args.follow:
        _print_json(streams, client.job(args.id), pretty=True)
        return 0
    view = Follower(client, streams).follow(args.id)
    if view is None:
        return INTERRUPTED
    _print_json(streams, view, pretty=True)
    return 0 if view.get("status") == COMPLETE else 1


def _cancel(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    job_id: str = args.id
    _, view = client.call("DELETE", "jobs/" + urllib.parse.quote(job_id, safe=""))
    _print_json(streams, view, pretty=True)
    if view.get("status") == "cancelled":
        streams.complain(f"job {job_id} cancelled")
        return 0
    if view.get("status") == RUNNING:
        # Another s3orch instance runs it and stops it after its current batch.
        streams.complain(f"cancel of job {job_id} requested; it stops after its current batch")
        return 0
    streams.complain(f"job {job_id} ended {view.get('status')} before the cancel took effect")
    return 1


# -- parser -----------------------------------------------------------------------------------


def _missing_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, streams: Streams
) -> int:
    parser.print_usage(streams.err)
    streams.complain(f"{parser.prog}: error: a command is required")
    return 2


def _add_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="print the job id as JSON and return at once instead of following the job",
    )


_FOLLOWS = (
    "Starts the job and follows it: a progress bar on stderr (plain lines when stderr is not "
    "a terminal), then the result as JSON on stdout; exits 0 if it completed, 1 if it failed "
    "or was cancelled. Ctrl-C stops following but never the job."
)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, read by ``client_from_args``."""
    parser.add_argument(
        "--url",
        help=f"s3orch's address (default: ${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        help=f"the admin token (default: ${TOKEN_VARIABLE}; prefer it: arguments are "
        "visible to other users of the machine)",
    )


def add_parser(subparsers: _SubParsers) -> None:
    """``s3orch admin`` and its commands."""
    parser = subparsers.add_parser(
        "admin",
        help="drive the admin API of a running s3orch",
        description="Call the admin API (/admin/api/) of a running s3orch: key rotation, "
        "encrypting or decrypting existing objects, and the jobs that run them.",
    )
    add_connection_options(parser)
    parser.set_defaults(run=partial(_missing_command, parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    rotate = commands.add_parser(
        "rotate-encryption-key",
        help="re-wrap the data keys of an old master key with the primary key",
        description="Re-wrap every data key wrapped by the old key with the primary master key "
        "(metadata only; object data is not rewritten). " + _FOLLOWS,
    )
    rotate.add_argument(
        "--old-key-id",
        required=True,
        metavar="ID",
        help="the key id the data keys were wrapped with: config-0, file-0, a Vault key name...",
    )
    _add_wait_option(rotate)
    rotate.set_defaults(
        run=_command(_start("rotate-encryption-key", lambda a: {"old_key_id": a.old_key_id}))
    )

    for kind, summary in (
        ("encrypt-existing", "encrypt the objects stored in plaintext"),
        ("decrypt-existing", "decrypt the encrypted objects"),
    ):
        convert = commands.add_parser(
            kind, help=summary, description=f"{summary.capitalize()}. {_FOLLOWS}"
        )
        _add_wait_option(convert)
        convert.set_defaults(run=_command(_start(kind, lambda a: {})))

    jobs = commands.add_parser(
        "jobs", help="list recent jobs", description="List recent jobs, newest first."
    )
    jobs.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    jobs.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N jobs (default 20)"
    )
    jobs.add_argument("--json", action="store_true", help="print the API's JSON answer")
    jobs.set_defaults(run=_command(_jobs))

    job = commands.add_parser(
        "job",
        help="show one job",
        description="Print a job as JSON. With --follow, show its progress until it ends; "
        "then exit 0 if it completed, 1 otherwise.",
    )
    job.add_argument("id", metavar="ID")
    job.add_argument("--follow", action="store_true", help="show progress until the job ends")
    job.set_defaults(run=_command(_job))

    cancel = commands.add_parser(
        "cancel",
        help="cancel a running job",
        description="Cancel a job: it stops at its next batch boundary, keeping what it did. "
        "Exits 1 if the job does not exist or has already ended.",
    )
    cancel.add_argument("id", metavar="ID")
    cancel.set_defaults(run=_command(_cancel))
