"""Tests for `s3orch validate` and the command-line skeleton."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from s3orch.cli import main

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONF = REPO / "conf" / "s3orch.yaml"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s3orch.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


FULL = """
server:
  listen: "[::1]:9443"
database:
  driver: postgres
  host: db.internal
  database: meta
  user: s3o
  password: pg-s3cr3t
routing_strategy: spread
backends:
  - name: aws
    type: s3
    endpoint: https://s3.example
    bucket: real-bucket
    access_key_id: AKIABACKEND
    secret_access_key: backend-s3cr3t
    quota_bytes: 1536MiB
  - name: disk
    type: local
    path: /srv/s3orch
buckets:
  - name: photos
    credentials:
      - access_key_id: AKIAPHOTOS1
        secret_access_key: photos-s3cr3t
      - access_key_id: AKIAPHOTOS2
        secret_access_key: photos-s3cr3t-2
  - name: backups
    credentials:
      - token: t0ken-s3cr3t
admin:
  token: adm1n-s3cr3t
"""
SECRETS = (
    "pg-s3cr3t",
    "backend-s3cr3t",
    "photos-s3cr3t",
    "photos-s3cr3t-2",
    "t0ken-s3cr3t",
    "adm1n-s3cr3t",
)


def test_validate_default_config_succeeds_with_summary() -> None:
    """A valid config exits 0 and summarises listen, database, routing, backends and buckets."""
    status, out, err = run("validate", "--config", str(DEFAULT_CONF))
    assert (status, err) == (0, "")
    assert "127.0.0.1:9000" in out
    assert "sqlite var/s3orch.db" in out
    assert "routing:   pack" in out
    assert "local1  local  var/backends/local1  quota 1 GiB" in out
    assert "local2  local  var/backends/local2  quota 1 GiB" in out
    assert "demo  1 credential: access keys AKIAS3ORCHDEMO000001" in out
    assert "admin API: off" in out
    assert "relative paths are relative to the working directory" in out
    assert "s3orch-demo-secret-change-me" not in out


def test_validate_summary_shows_targets_and_never_secrets(tmp_path: Path) -> None:
    """The summary names endpoints, buckets, quotas and key ids, and no secret at all."""
    status, out, err = run("validate", "--config", write(tmp_path, FULL))
    assert (status, err) == (0, "")
    assert "[::1]:9443" in out
    assert "postgres meta on db.internal:5432 as s3o (sslmode prefer)" in out
    assert "routing:   spread" in out
    assert "https://s3.example bucket real-bucket" in out
    assert "quota 1.5 GiB" in out
    assert "disk  local  /srv/s3orch  quota unlimited" in out
    assert "photos   2 credentials: access keys AKIAPHOTOS1, AKIAPHOTOS2" in out
    assert "backups  1 credential: 1 token" in out
    assert "admin API: on" in out
    assert "relative paths" not in out
    for secret in SECRETS:
        assert secret not in out


def test_validate_failure_prints_every_error_on_its_own_line(tmp_path: Path) -> None:
    """An invalid config exits 1 with a header and one stderr line per problem."""
    text = FULL.replace("spread", "sprad").replace("type: local", "type: locl")
    text = text.replace("name: photos", "name: Photos").replace("9443", "99999")
    status, out, err = run("validate", "--config", write(tmp_path, text))
    assert (status, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].endswith("invalid (4 problems):")
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "server.listen",
        "backends[1].type",
        "routing_strategy",
        "buckets[0].name",
    ]


def test_validate_failure_never_prints_secrets(tmp_path: Path) -> None:
    """Errors about secret values on stderr do not contain them."""
    text = FULL.replace("adm1n-s3cr3t", "'adm1n-s3cr3t x'").replace(
        "- token: t0ken-s3cr3t", "- {token: t0ken-s3cr3t, access_key_id: AKIAX}"
    )
    status, out, err = run("validate", "--config", write(tmp_path, text))
    assert status == 1
    for secret in SECRETS:
        assert secret not in err + out


def test_validate_missing_file(tmp_path: Path) -> None:
    """A config file that cannot be read exits 1 and says why."""
    path = str(tmp_path / "absent.yaml")
    status, out, err = run("validate", "--config", path)
    assert (status, out) == (1, "")
    assert f"{path}: cannot read: No such file or directory" in err


def test_validate_expands_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate expands ${VAR} from the process environment, and reports unset ones."""
    path = write(tmp_path, FULL.replace("adm1n-s3cr3t", "${S3ORCH_TEST_ADMIN}"))
    status, _, err = run("validate", "--config", path)
    assert status == 1
    assert "admin.token: environment variable S3ORCH_TEST_ADMIN is not set" in err
    monkeypatch.setenv("S3ORCH_TEST_ADMIN", "from-env")
    assert run("validate", "--config", path)[0] == 0


def test_validate_defaults_to_conf_s3orch_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, validate reads conf/s3orch.yaml from the working directory."""
    monkeypatch.chdir(REPO)
    status, out, _ = run("validate")
    assert status == 0
    assert out.startswith("conf/s3orch.yaml: valid")


def test_no_command_is_a_usage_error() -> None:
    """`s3orch` alone prints usage to stderr and exits 2."""
    status, out, err = run()
    assert (status, out) == (2, "")
    assert "usage: s3orch" in err
    assert "a command is required" in err


def test_unknown_option_is_a_usage_error() -> None:
    """An unknown option exits 2 with argparse's message on stderr."""
    status, _, err = run("validate", "--bogus")
    assert status == 2
    assert "unrecognized arguments: --bogus" in err


def test_unknown_command_is_a_usage_error() -> None:
    """An unknown subcommand exits 2."""
    status, _, err = run("frobnicate")
    assert status == 2
    assert "invalid choice" in err


def test_help_lists_validate() -> None:
    """--help goes to the given stdout, lists the validate command and exits 0."""
    status, out, _ = run("--help")
    assert status == 0
    assert "validate" in out
    status, out, _ = run("validate", "--help")
    assert status == 0
    assert "--config PATH" in out
    assert "conf/s3orch.yaml" in out


def test_main_defaults_to_sys_streams(capsys: pytest.CaptureFixture[str]) -> None:
    """Without explicit streams, main writes to sys.stdout and sys.stderr."""
    assert main(["validate", "--config", str(DEFAULT_CONF)]) == 0
    assert "AKIAS3ORCHDEMO000001" in capsys.readouterr().out
