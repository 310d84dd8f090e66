"""A real S3 server for tests: moto's server mode in its own process on 127.0.0.1.

Tests talk to it over the network exactly as they would to AWS or MinIO, so
connection handling, signing and streaming are exercised for real. The
process is started on a free loopback port, polled until it answers (with a
deadline, never a fixed sleep) and stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from s3orch.testing.processes import free_port, stop_process

DEFAULT_ACCESS_KEY = "testing"
DEFAULT_SECRET_KEY = "testing"
DEFAULT_REGION = "us-east-1"

_POLL_INTERVAL = 0.05


class MotoServerError(Exception):
    """The moto server did not start or answered unexpectedly."""


class MotoServer:
    """One ``python -m moto.server`` process.

    ``access_key``/``secret_key`` are what clients should sign with: any key
    works until ``enable_auth`` is called, after which only the returned key
    pair (which may do anything on S3) is accepted and signatures are checked.
    """

    def __init__(self, host: str = "127.0.0.1", region: str = DEFAULT_REGION) -> None:
        self.host = host
        self.port = 0
        self.region = region
        self.access_key = DEFAULT_ACCESS_KEY
        self.secret_key = DEFAULT_SECRET_KEY
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start the process and return once it answers HTTP; retries if the port was taken."""
        failure = "not started"
        for _ in range(attempts):
            self.port = free_port(self.host)
            log_fd, log_name = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
            self._log_path = Path(log_name)
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            finally:
                os.close(log_fd)
            failure = self._wait_ready(timeout)
            if not failure:
                return
            self.stop()
        raise MotoServerError(f"moto server did not start: {failure}")

    def _wait_ready(self, timeout: float) -> str:
        """'' once the server answers, else why not (process exited, or the deadline passed)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=2)
                try:
                    connection.request("GET", "/moto-api/data.json")
                    connection.getresponse().read()
                finally:
                    connection.close()
                return ""
            except OSError:
                pass
            try:
                # Waiting on the process doubles as the poll interval and notices an early exit.
                code = self.process.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            return f"exited with status {code}: {self.log_tail()}"
        return f"no answer within {timeout:g} s: {self.log_tail()}"

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes()[-size:].decode("utf-8", "replace")

    def stop(self) -> None:
        """Stop the process (by its pid) and remove its log."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for this server, signing with the current key pair."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (if it does not exist yet) and return its name."""
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=name)
        return name

    def enable_auth(self) -> tuple[str, str]:
        """Make the server check every signature from now on; return the one valid key pair.

        Moto then verifies SigV4 like AWS does (and the key's IAM policy), so
        this is how a test proves our signing is accepted by a real server. It
        cannot be undone short of a restart: use a server of your own.
        """
        iam = self.client("iam")
        iam.create_user(UserName="s3orch-test")
        iam.put_user_policy(
            UserName="s3orch-test",
            PolicyName="all-s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="s3orch-test")["AccessKey"]
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("POST", "/moto-api/reset-auth", body=b"0")
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise MotoServerError(f"reset-auth answered {response.status}")
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]
        return self.access_key, self.secret_key


def start_moto_server(timeout: float = 30.0) -> MotoServer:
    """A started moto server; call ``stop()`` when done."""
    server = MotoServer()
    server.start(timeout)
    return server
