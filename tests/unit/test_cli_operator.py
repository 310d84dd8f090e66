"""``s3orch operator``: Vault's flag style and the Key/Value tables bao prints."""

from __future__ import annotations

import io
import textwrap

import pytest

from s3orch.cli import build_parser, main
from s3orch.operator_cli import (
    install_time,
    key_status_lines,
    rekey_status_rows,
    seal_status_rows,
    table,
    verify_status_rows,
)


def block(text: str) -> list[str]:
    return textwrap.dedent(text).strip("\n").splitlines()


def test_sealed_status_table_is_baos() -> None:
    """seal-status prints bao status's table: progress and nonce while sealed."""
    status = {
        "type": "shamir",
        "initialized": True,
        "sealed": True,
        "t": 3,
        "n": 5,
        "progress": 1,
        "nonce": "cb0639a9-1a44-93dd-f7df-256eadc91d8f",
        "version": "0.1.0",
        "storage_type": "sqlite",
    }
    assert table(seal_status_rows(status)) == block(
        """
        Key                Value
        ---                -----
        Seal Type          shamir
        Initialized        true
        Sealed             true
        Total Shares       5
        Threshold          3
        Unseal Progress    1/3
        Unseal Nonce       cb0639a9-1a44-93dd-f7df-256eadc91d8f
        Version            0.1.0
        Storage Type       sqlite
        """
    )
    unsealed = {**status, "sealed": False, "progress": 0, "nonce": ""}
    assert table(seal_status_rows(unsealed)) == block(
        """
        Key             Value
        ---             -----
        Seal Type       shamir
        Initialized     true
        Sealed          false
        Total Shares    5
        Threshold       3
        Version         0.1.0
        Storage Type    sqlite
        """
    )


def test_rekey_tables_are_baos() -> None:
    """rekey -status before and during a rekey, and the verification table, as bao prints."""
    assert table(rekey_status_rows({"nonce": "", "started": False})) == block(
        """
        Key        Value
        ---        -----
        Nonce      n/a
        Started    false
        """
    )
    started = {
        "nonce": "728e4662-db19-4491-8b31-528ff7f75c32",
        "started": True,
        "t": 2,
        "n": 3,
        "progress": 1,
        "required": 3,
        "verification_required": True,
    }
    assert table(rekey_status_rows(started)) == block(
        """
        Key                      Value
        ---                      -----
        Nonce                    728e4662-db19-4491-8b31-528ff7f75c32
        Started                  true
        Progress                 1/3
        New Shares               3
        New Threshold            2
        Verification Required    true
        """
    )
    verify = {"nonce": "712abf18", "started": True, "t": 2, "n": 3, "progress": 0}
    assert table(verify_status_rows(verify)) == block(
        """
        Key                      Value
        ---                      -----
        Started                  true
        New Shares               3
        New Threshold            2
        Verification Nonce       712abf18
        Verification Progress    0/2
        """
    )


def test_key_status_lines_are_baos() -> None:
    """key-status: three rows without a header; the time as RFC 822 in UTC."""
    status = {"term": 2, "install_time": "2026-11-25T15:53:01.123456Z", "encryptions": 24}
    assert key_status_lines(status) == block(
        """
        Key Term            2
        Install Time        25 Nov 26 15:53 UTC
        Encryption Count    24
        """
    )
    assert install_time("not a time") == "not a time"


@pytest.mark.parametrize(
    "argv",
    [
        ["operator", "init", "-key-shares=5", "-key-threshold=3"],
        ["operator", "init", "--key-shares", "5", "--key-threshold", "3"],
        ["operator", "init", "-key-shares", "5", "-key-threshold", "3"],
    ],
)
def test_vault_flag_style(argv: list[str]) -> None:
    """-flag=value, -flag value and --flag value all parse the same."""
    args = build_parser().parse_args(argv)
    assert (args.key_shares, args.key_threshold, args.format) == (5, 3, "table")


def test_rekey_flags() -> None:
    """rekey takes Vault's -init, -verify, -nonce, -status, -cancel and a positional key."""
    args = build_parser().parse_args(
        ["operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2", "-verify"]
    )
    assert (args.init, args.verify, args.key_shares, args.key_threshold) == (True, True, 3, 2)
    args = build_parser().parse_args(["operator", "rekey", "-nonce=abc", "c2hhcmU="])
    assert (args.nonce, args.key, args.init, args.cancel) == ("abc", "c2hhcmU=", False, False)
    args = build_parser().parse_args(["operator", "unseal", "-reset"])
    assert args.reset and args.key is None


def test_abbreviations_are_refused() -> None:
    """-key-share (a prefix) is not taken for -key-shares."""
    err = io.StringIO()
    assert main(["operator", "init", "-key-share=5"], stdout=io.StringIO(), stderr=err) == 2
    assert "unrecognized arguments" in err.getvalue()


def test_missing_token_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --token or S3ORCH_ADMIN_TOKEN the command explains where the token is."""
    monkeypatch.delenv("S3ORCH_ADMIN_TOKEN", raising=False)
    err = io.StringIO()
    assert main(["operator", "seal-status"], stdout=io.StringIO(), stderr=err) == 2
    assert "S3ORCH_ADMIN_TOKEN" in err.getvalue()


def test_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server: Vault's "Error <doing>: ..." and exit 2 (1 for seal-status)."""
    monkeypatch.setenv("S3ORCH_ADMIN_TOKEN", "t0ken-0123456789abcdef")
    err = io.StringIO()
    argv = ["operator", "--url", "http://127.0.0.1:9", "seal"]
    assert main(argv, stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith("Error sealing: cannot reach s3orch at http://127.0.0.1:9")
    argv = ["operator", "--url", "http://127.0.0.1:9", "seal-status"]
    assert main(argv, stdout=io.StringIO(), stderr=io.StringIO()) == 1


def test_operator_without_command_is_a_usage_error() -> None:
    """`s3orch operator` alone prints its usage."""
    err = io.StringIO()
    assert main(["operator"], stdout=io.StringIO(), stderr=err) == 2
    assert "a command is required" in err.getvalue()
