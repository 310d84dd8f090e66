"""Run a real s3orch server (``twistd -n s3orch``) in its own process, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from s3orch.crypto.keys import generate_key
from s3orch.testing.processes import free_port, stop_process

DEMO_ACCESS_KEY = "AKIAS3ORCHTEST000001"
DEMO_SECRET_KEY = "s3orch-test-secret"


def twistd_command() -> list[str]:
    twistd = shutil.which("twistd")
    if twistd is not None:
        return [twistd]
    return [sys.executable, "-m", "twisted"]


class S3OrchProcess:
    """One s3orch server with its own directory, config file, port and log."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        config = dict(config)
        server = dict(config.get("server", {}))
        server["listen"] = f"127.0.0.1:{self.port}"
        config["server"] = server
        self.config = config
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "s3orch.log"
        self.config_path = workdir / "s3orch.yaml"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *twistd_command(),
                    "-n",
                    "--pidfile=",
                    "s3orch",
                    "--config",
                    str(self.config_path),
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.wait_healthy(timeout)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.endpoint + "/health", timeout=5) as response:
            report: dict[str, Any] = json.load(response)
            return report

    def wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.health().get("status") == "ok":
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            try:
                # Waiting on the process doubles as the pause between probes.
                code = self.process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"s3orch exited with {code}:\n{self.log_tail()}")
        raise RuntimeError(f"s3orch not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, timeout=15)
        self.process = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def local_config(
    workdir: Path,
    quotas: tuple[int, ...] = (0, 0),
    strategy: str = "pack",
    encrypted: bool = False,
) -> dict[str, Any]:
    """A config with local-directory backends and one bucket ``test`` (plus ``other``);
    ``encrypted`` turns encryption on with a fresh master key."""
    config = {
        "database": {"driver": "sqlite", "path": str(workdir / "meta.db")},
        "backends": [
            {
                "name": f"local{i + 1}",
                "type": "local",
                "path": str(workdir / f"b{i + 1}"),
                "quota_bytes": q,
            }
            for i, q in enumerate(quotas)
        ],
        "routing_strategy": strategy,
        "buckets": [
            {
                "name": "test",
                "credentials": [
                    {"access_key_id": DEMO_ACCESS_KEY, "secret_access_key": DEMO_SECRET_KEY},
                    {"token": "test-proxy-token-0123456789"},
                ],
            },
            {
                "name": "other",
                "credentials": [
                    {"access_key_id": "AKIAS3ORCHOTHER00001", "secret_access_key": "other-secret"}
                ],
            },
        ],
    }
    if encrypted:
        config["encryption"] = {"enabled": True, "master_key": generate_key()}
    return config
