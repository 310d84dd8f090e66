"""``s3orch operator``: the keyring's seal ceremony, shaped like ``bao operator``.

The commands take Vault's single-dash flags (``-key-shares=5``; ``--key-shares 5`` works too)
and print the Key/Value tables ``bao`` prints (observed on OpenBao 2.7.2), through the admin
API of a running s3orch (``s3orch.admin.operator``), with the same ``--url``/``--token`` and
``S3ORCH_URL``/``S3ORCH_ADMIN_TOKEN`` as ``s3orch admin``. A key share left off the command
line is asked for without echo (``-`` reads it from standard input), so that it stays out of
shell history and process listings.

Exit statuses are Vault's: 0 done, 2 the server refused or could not be reached (and, for
``seal-status``, sealed; an error there is 1).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from s3orch.admin_cli import (
    AdminAPIError,
    AdminClient,
    Unreachable,
    UsageError,
    add_connection_options,
    client_from_args,
)
from s3orch.cli import Run, Streams

if TYPE_CHECKING:
    from s3orch.cli import _SubParsers

PRODUCT = "s3orch"
UNSEAL_PROMPT = "Unseal Key (will be hidden): "
KEY_PROMPT = "Key (will be hidden): "
ERROR = 2
STATUS_ERROR = 1
SEALED = 2

Command = Callable[[AdminClient, argparse.Namespace, Streams], int]


# -- output ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def columns(rows: Sequence[tuple[str, Any]]) -> list[str]:
    """Rows aligned as Vault's columnize does: the key column 4 wider than its longest."""
    width = max(len(key) for key, _ in rows) + 4
    return [f"{key:<{width}}{_text(value)}".rstrip() for key, value in rows]


def table(rows: Sequence[tuple[str, Any]]) -> list[str]:
    """Vault's Key/Value table (``bao status``, ``bao operator rekey -status``)."""
    return columns([("Key", "Value"), ("---", "-----"), *rows])


def install_time(value: Any) -> str:
    """An RFC 3339 time as Vault's key-status prints it (RFC 822: ``25 Nov 26 15:53 UTC``)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.strftime("%d %b %y %H:%M UTC")


def _progress(done: Any, of: Any) -> str:
    return f"{done}/{of}"


def seal_status_rows(status: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``bao status``: progress and nonce only while sealed."""
    rows: list[tuple[str, Any]] = [
        ("Seal Type", status.get("type")),
        ("Initialized", status.get("initialized")),
        ("Sealed", status.get("sealed")),
        ("Total Shares", status.get("n")),
        ("Threshold", status.get("t")),
    ]
    if status.get("sealed"):
        rows.append(("Unseal Progress", _progress(status.get("progress"), status.get("t"))))
        rows.append(("Unseal Nonce", status.get("nonce") or "n/a"))
    rows.append(("Version", status.get("version")))
    rows.append(("Storage Type", status.get("storage_type")))
    return rows


def rekey_status_rows(status: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``bao operator rekey -status``: just the nonce until a rekey is started."""
    rows: list[tuple[str, Any]] = [
        ("Nonce", status.get("nonce") or "n/a"),
        ("Started", status.get("started")),
    ]
    if status.get("started"):
        rows += [
            ("Progress", _progress(status.get("progress"), status.get("required"))),
            ("New Shares", status.get("n")),
            ("New Threshold", status.get("t")),
            ("Verification Required", status.get("verification_required")),
        ]
    return rows


def verify_status_rows(status: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``bao operator rekey -verify -status``."""
    return [
        ("Started", status.get("started")),
        ("New Shares", status.get("n")),
        ("New Threshold", status.get("t")),
        ("Verification Nonce", status.get("nonce") or "n/a"),
        ("Verification Progress", _progress(status.get("progress"), status.get("t"))),
    ]


def key_status_lines(status: Mapping[str, Any]) -> list[str]:
    """``bao operator key-status``: three rows, no header."""
    return columns(
        [
            ("Key Term", status.get("term")),
            ("Install Time", install_time(status.get("install_time"))),
            ("Encryption Count", status.get("encryptions")),
        ]
    )


def _say_all(streams: Streams, lines: Sequence[str]) -> None:
    for line in lines:
        streams.say(line)


def _json(streams: Streams, value: Any) -> None:
    streams.say(json.dumps(value, indent=2))


# -- reading a share --------------------------------------------------------------------------


def read_secret(prompt: str, streams: Streams) -> str:
    """A key share from the terminal without echo, else one line of standard input."""
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    streams.err.write(prompt)
    streams.err.flush()
    line = sys.stdin.readline() if sys.stdin is not None else ""
    streams.complain("")
    return line.strip()


def _share(given: str | None, prompt: str, streams: Streams) -> str:
    if given == "-":
        share = sys.stdin.readline().strip() if sys.stdin is not None else ""
    else:
        share = given or read_secret(prompt, streams)
    if not share:
        raise UsageError("no key share was entered")
    return share


# -- commands -------------------------------------------------------------------------------


def _init(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    body: dict[str, Any] = {}
    shares, threshold = args.key_shares, args.key_threshold
    _, status = client.call("GET", "seal-status")
    if status.get("type") != "auto" or shares is not None or threshold is not None:
        # Vault's defaults when the flags are left out.
        body = {
            "secret_shares": 5 if shares is None else shares,
            "secret_threshold": 3 if threshold is None else threshold,
        }
    _, answer = client.call("POST", "init", body)
    keys_b64: list[str] = list(answer.get("keys_base64") or [])
    keys_hex: list[str] = list(answer.get("keys") or [])
    if args.format == "json":
        _json(
            streams,
            {
                "unseal_keys_b64": keys_b64,
                "unseal_keys_hex": keys_hex,
                "unseal_shares": body.get("secret_shares", 1),
                "unseal_threshold": body.get("secret_threshold", 1),
            },
        )
        return 0
    if not keys_b64:
        streams.say(f"Success! {PRODUCT} is initialized")
        streams.say("")
        streams.say(f"{PRODUCT} unseals itself with its configured key (keyring.seal: auto).")
        return 0
    for number, key in enumerate(keys_b64, start=1):
        streams.say(f"Unseal Key {number}: {key}")
    n, t = body["secret_shares"], body["secret_threshold"]
    streams.say(
        f"""
{PRODUCT} initialized with {n} key shares and a key threshold of {t}. Please securely
distribute the key shares printed above. When {PRODUCT} is re-sealed, restarted, or
stopped, you must supply at least {t} of these keys to unseal it before it can start
servicing requests.

{PRODUCT} does not store the generated unseal key. Without at least {t} keys to
reconstruct the unseal key, {PRODUCT} will remain permanently sealed!

It is possible to generate new unseal keys, provided you have a quorum of
existing unseal keys shares. See "{PRODUCT} operator rekey" for more information."""
    )
    return 0


def _seal_status(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    _, status = client.call("GET", "seal-status")
    _print_seal_status(status, args, streams)
    return SEALED if status.get("sealed") else 0


def _print_seal_status(
    status: Mapping[str, Any], args: argparse.Namespace, streams: Streams
) -> None:
    if args.format == "json":
        _json(streams, status)
    else:
        _say_all(streams, table(seal_status_rows(status)))


def _unseal(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    if args.reset:
        _, status = client.call("POST", "unseal", {"reset": True})
    else:
        body: dict[str, Any] = {}
        _, status = client.call("GET", "seal-status")
        if status.get("type") != "auto" or args.key:
            body["key"] = _share(args.key, UNSEAL_PROMPT, streams)
        _, status = client.call("POST", "unseal", body)
    _print_seal_status(status, args, streams)
    return 0


def _seal(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    client.call("POST", "seal")
    streams.say(f"Success! {PRODUCT} is sealed.")
    return 0


def _rekey(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    if args.init:
        return _rekey_init(client, args, streams)
    if args.cancel:
        return _rekey_cancel(client, args, streams)
    if args.status:
        path = "rekey/verify" if args.verify else "rekey/init"
        _, status = client.call("GET", path)
        rows = verify_status_rows(status) if args.verify else rekey_status_rows(status)
        _print(streams, args, status, table(rows))
        return 0
    return _rekey_provide(client, args, streams)


def _print(
    streams: Streams, args: argparse.Namespace, answer: Mapping[str, Any], lines: Sequence[str]
) -> None:
    if args.format == "json":
        _json(streams, answer)
    else:
        _say_all(streams, lines)


def _rekey_init(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    if args.key_shares is None or args.key_threshold is None:
        raise UsageError("rekey -init needs -key-shares and -key-threshold")
    _, status = client.call(
        "POST",
        "rekey/init",
        {
            "secret_shares": args.key_shares,
            "secret_threshold": args.key_threshold,
            "require_verification": args.verify,
        },
    )
    streams.complain("WARNING! If you lose the keys after they are returned, there is no recovery.")
    if args.format != "json":
        streams.say("")
    _print(streams, args, status, table(rekey_status_rows(status)))
    return 0


def _rekey_cancel(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    if args.verify:
        client.call("DELETE", "rekey/verify")
    else:
        nonce = args.nonce
        if not nonce:
            _, status = client.call("GET", "rekey/init")
            nonce = status.get("nonce") or ""
        client.call("DELETE", "rekey/init", query={"nonce": nonce} if nonce else None)
    streams.say("Success! Canceled rekeying (if it was started)")
    return 0


def _rekey_provide(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    path = "rekey/verify" if args.verify else "rekey/init"
    _, status = client.call("GET", path)
    if not status.get("started"):
        what = "rekey verification" if args.verify else "rekey"
        streams.complain(
            f"No {what} is in progress. Start a rekey process by running "
            f'"{PRODUCT} operator rekey -init".'
        )
        return 1
    nonce = args.nonce or str(status.get("nonce") or "")
    key = _share(args.key, KEY_PROMPT, streams)
    if args.verify:
        _, answer = client.call("POST", "rekey/verify", {"key": key, "nonce": nonce})
        if answer.get("complete"):
            streams.say(
                "Rekey verification successful. The rekey operation is complete and the new\n"
                "keys are now active."
            )
            return 0
        _print(streams, args, answer, table(verify_status_rows(answer)))
        return 0
    _, answer = client.call("POST", "rekey/update", {"key": key, "nonce": nonce})
    if not answer.get("complete"):
        _print(streams, args, answer, table(rekey_status_rows(answer)))
        return 0
    if args.format == "json":
        _json(streams, answer)
        return 0
    _print_new_keys(client, answer, streams)
    return 0


def _print_new_keys(client: AdminClient, answer: Mapping[str, Any], streams: Streams) -> None:
    keys = list(answer.get("keys_base64") or [])
    streams.say("")
    for number, key in enumerate(keys, start=1):
        streams.say(f"Key {number}: {key}")
    streams.say("")
    streams.say(f"Operation nonce: {answer.get('nonce')}")
    streams.say("")
    if not answer.get("verification_required"):
        _, status = client.call("GET", "seal-status")
        n, t = status.get("n"), status.get("t")
        streams.say(
            f"{PRODUCT} unseal keys rekeyed to {n} key shares and a key threshold of {t}. "
            f"Please\nsecurely distribute the key shares printed above. When {PRODUCT} is "
            "re-sealed,\nrestarted, or stopped, you must supply at least "
            f"{t} of these keys to unseal it\nbefore it can start servicing requests."
        )
        return
    _, verify = client.call("GET", "rekey/verify")
    n, t = verify.get("n"), verify.get("t")
    streams.say(
        f"{PRODUCT} has created a new unseal key, split into {n} key shares and a key\n"
        f"threshold of {t}. These will not be active until after verification is complete.\n"
        f"Please securely distribute the key shares printed above. When {PRODUCT} is\n"
        f"re-sealed, restarted, or stopped, you must supply at least {t} of these keys to\n"
        "unseal it before it can start servicing requests."
    )
    streams.complain(
        "Again, these key shares are _not_ valid until verification is performed.\n"
        "Do not lose or discard your current key shares until after verification is\n"
        f"complete or you will be unable to unseal {PRODUCT}. If you cancel the rekey\n"
        f"process or seal {PRODUCT} before verification is complete the new shares will be\n"
        "discarded and the current shares will remain valid.\n\n"
        "The current verification status, including initial nonce, is shown below."
    )
    streams.say("")
    _say_all(streams, table(verify_status_rows(verify)))


def _rotate(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    _, status = client.call("POST", "rotate")
    if args.format == "json":
        _json(streams, status)
        return 0
    streams.say("Success! Rotated key")
    streams.say("")
    _say_all(streams, key_status_lines(status))
    return 0


def _key_status(client: AdminClient, args: argparse.Namespace, streams: Streams) -> int:
    _, status = client.call("GET", "key-status")
    _print(streams, args, status, key_status_lines(status))
    return 0


# -- plumbing -----------------------------------------------------------------------------------


def _command(command: Command, doing: str, failure: int = ERROR) -> Run:
    """A subcommand's ``run``: the client, and Vault's ``Error <doing>: <reason>``."""

    def run(args: argparse.Namespace, streams: Streams) -> int:
        try:
            client = client_from_args(args)
            return command(client, args, streams)
        except UsageError as e:
            streams.complain(f"Error {doing}: {e}")
            return ERROR
        except AdminAPIError as e:
            streams.complain(f"Error {doing}: Code: {e.status}. Errors:\n\n* {e.message}")
            return failure
        except Unreachable as e:
            streams.complain(f"Error {doing}: {e}")
            return failure
        except KeyboardInterrupt:
            streams.complain("interrupted")
            return ERROR

    return run


def _missing_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, streams: Streams
) -> int:
    parser.print_usage(streams.err)
    streams.complain(f"{parser.prog}: error: a command is required")
    return ERROR


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """A Vault-style flag: ``-name`` (and ``--name``)."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kwargs)


def _format_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "format",
        choices=("table", "json"),
        default="table",
        help="table (default) or json: the API's answer",
    )


def _subcommand(
    commands: _SubParsers, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=description, allow_abbrev=False)
    _format_flag(parser)
    return parser


def add_parser(subparsers: _SubParsers) -> None:
    """``s3orch operator`` and its commands."""
    parser = subparsers.add_parser(
        "operator",
        help="init, unseal, seal, rekey and rotate s3orch's keyring",
        description="Operate s3orch's own keyring (encryption.keyring) through the admin API "
        "of a running s3orch, as `bao operator` operates OpenBao: initialize it (the unseal "
        "key shares are printed once), unseal it with a threshold of shares after a start, "
        "seal it, replace the shares (rekey) and add a new key term (rotate).",
    )
    add_connection_options(parser)
    parser.set_defaults(run=partial(_missing_command, parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = _subcommand(
        commands,
        "init",
        "initialize the keyring and print the unseal key shares",
        "Make the keyring and its root key, split the unseal key into -key-shares shares of "
        "which -key-threshold open it, and print them (once: they are never stored). With "
        "keyring.seal: auto, no shares are made and s3orch unseals itself.",
    )
    _flag(init, "key-shares", type=int, metavar="N", help="shares to make (default 5)")
    _flag(init, "key-threshold", type=int, metavar="N", help="shares to unseal (default 3)")
    init.set_defaults(run=_command(_init, "initializing"))

    status = _subcommand(
        commands,
        "seal-status",
        "show whether s3orch is sealed",
        "Show the seal: type, initialized, sealed, shares, threshold and unseal progress. "
        "Exits 0 when unsealed, 2 when sealed, 1 on error.",
    )
    status.set_defaults(run=_command(_seal_status, "checking seal status", STATUS_ERROR))

    unseal = _subcommand(
        commands,
        "unseal",
        "give one unseal key share",
        "Give one unseal key share (hex or base64); s3orch unseals once -key-threshold "
        "different shares are in. Without KEY the share is asked for without echo; '-' reads "
        "it from standard input. With keyring.seal: auto, unseals through the configured key.",
    )
    unseal.add_argument("key", nargs="?", metavar="KEY", help="an unseal key share")
    _flag(unseal, "reset", action="store_true", help="forget the shares given so far")
    unseal.set_defaults(run=_command(_unseal, "unsealing"))

    seal = _subcommand(
        commands,
        "seal",
        "seal s3orch now",
        "Forget the root key and every key term: requests that need a key get 503 until "
        "s3orch is unsealed again. Cancels a rekey in progress.",
    )
    seal.set_defaults(run=_command(_seal, "sealing"))

    rekey = _subcommand(
        commands,
        "rekey",
        "replace the unseal key shares",
        "Replace the unseal key shares and the root key (the key terms stay). -init starts "
        "(a nonce is printed); each holder of a current share then runs `rekey -nonce=NONCE` "
        "and enters it; the last one prints the new shares. With -verify at -init, the new "
        "shares replace the old ones only after a threshold of them is entered with "
        "`rekey -verify -nonce=VERIFICATION_NONCE`. The old shares work until then.",
    )
    rekey.add_argument("key", nargs="?", metavar="KEY", help="a share (asked for if left out)")
    _flag(rekey, "init", action="store_true", help="start a rekey")
    _flag(rekey, "key-shares", type=int, metavar="N", help="new shares to make (with -init)")
    _flag(rekey, "key-threshold", type=int, metavar="N", help="new threshold (with -init)")
    _flag(
        rekey,
        "verify",
        action="store_true",
        help="with -init: require verification; otherwise: act on the verification",
    )
    _flag(rekey, "nonce", metavar="NONCE", help="the rekey (or verification) nonce")
    _flag(rekey, "status", action="store_true", help="show the rekey's progress")
    _flag(rekey, "cancel", action="store_true", help="cancel the rekey; old shares stay")
    rekey.set_defaults(run=_command(_rekey, "rekeying"))

    rotate = _subcommand(
        commands,
        "rotate",
        "add a new key term for new data keys",
        "Add a key term and make it active: new data keys are wrapped as keyring-<term>; "
        "older terms keep opening what they wrapped (re-wrap them with `s3orch admin "
        "rotate-encryption-key --old-key-id keyring-<old term>`).",
    )
    rotate.set_defaults(run=_command(_rotate, "rotating key"))

    key_status = _subcommand(
        commands,
        "key-status",
        "show the active key term",
        "Show the active key term, when it was installed, and how many data keys it wrapped.",
    )
    key_status.set_defaults(run=_command(_key_status, "reading key status"))
