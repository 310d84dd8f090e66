"""The ``s3orch`` command.

Each subcommand is a function that adds its parser to the subparsers and sets ``run``; adding a
subcommand means writing one such function and listing it in ``_SUBCOMMANDS``. Output goes to
the streams handed to ``main`` so that tests can capture it without patching ``sys``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import TYPE_CHECKING, TextIO

from attrs import frozen

from s3orch.config import (
    DEFAULT_CONFIG_PATH,
    BackendConfig,
    BucketConfig,
    Config,
    ConfigError,
    EncryptionConfig,
    KeyringConfig,
    VaultConfig,
    format_size,
    load_config,
)

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


@frozen
class Streams:
    """Where a subcommand writes: results to ``out``, problems to ``err``."""

    out: TextIO
    err: TextIO

    def say(self, line: str = "") -> None:
        print(line, file=self.out)

    def complain(self, line: str) -> None:
        print(line, file=self.err)


Run = Callable[[argparse.Namespace, Streams], int]


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one ``s3orch`` subcommand and return its exit status (2 for a usage error)."""
    streams = Streams(out=stdout or sys.stdout, err=stderr or sys.stderr)
    parser = build_parser()
    # argparse prints help and usage errors to sys.stdout/sys.stderr and then exits.
    with redirect_stdout(streams.out), redirect_stderr(streams.err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    run: Run | None = args.run
    if run is None:
        parser.print_usage(streams.err)
        streams.complain(f"{parser.prog}: error: a command is required")
        return 2
    return run(args, streams)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3orch",
        description="S3 orchestrator: many S3-compatible backends behind one endpoint. "
        "The server itself runs under twistd: twistd -n s3orch --config PATH.",
    )
    parser.set_defaults(run=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The ``--config`` option every subcommand that reads the configuration shares."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=DEFAULT_CONFIG_PATH,
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
    )


# -- validate -------------------------------------------------------------------------------


def _add_validate(subparsers: _SubParsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a configuration file and summarise it",
        description="Check a configuration file, with ${VAR} references expanded from the "
        "environment. Exits 0 and prints a summary (never a secret) when it is valid, "
        "or exits 1 and prints every problem.",
    )
    add_config_option(parser)
    parser.set_defaults(run=_validate)


def _validate(args: argparse.Namespace, streams: Streams) -> int:
    path: str = args.config
    try:
        config = load_config(path)
    except ConfigError as e:
        count = len(e.errors)
        streams.complain(f"{path}: invalid ({count} problem{'' if count == 1 else 's'}):")
        for error in e.errors:
            streams.complain(f"  {error}")
        return 1
    for line in summarise(config, path, os.getcwd()):
        streams.say(line)
    return 0


def summarise(config: Config, path: str, cwd: str) -> list[str]:
    """What ``validate`` prints: addresses, targets, quotas and key ids, never a secret."""
    server, database = config.server, config.database
    lines = [
        f"{path}: valid",
        f"listen:    {server.listen} (max object size {format_size(server.max_object_size)}, "
        f"log level {server.log_level})",
    ]
    relative = False
    if database.driver == "sqlite":
        relative |= not os.path.isabs(database.path)
        lines.append(f"database:  sqlite {database.path}")
    else:
        user = f" as {database.user}" if database.user else ""
        lines.append(
            f"database:  postgres {database.database} on {database.host}:{database.port}"
            f"{user} (sslmode {database.sslmode})"
        )
    lines.append(f"routing:   {config.routing_strategy}")
    lines.append(f"backends:  {len(config.backends)}")
    width = max(len(b.name) for b in config.backends)
    for backend in config.backends:
        if backend.type == "local":
            relative |= not os.path.isabs(backend.path)
        lines.append(f"  {backend.name:<{width}}  {_describe_backend(backend)}")
    lines.append(f"buckets:   {len(config.buckets)}")
    width = max(len(b.name) for b in config.buckets)
    for bucket in config.buckets:
        lines.append(f"  {bucket.name:<{width}}  {_describe_bucket(bucket)}")
    lines.append(f"admin API: {'on' if config.admin.enabled else 'off'}")
    lines.append(f"encryption: {_describe_encryption(config.encryption)}")
    if relative:
        lines.append(f"relative paths are relative to the working directory: {cwd}")
    return lines


def _describe_backend(backend: BackendConfig) -> str:
    quota = "unlimited" if backend.quota_bytes == 0 else format_size(backend.quota_bytes)
    if backend.type == "local":
        target = backend.path
    else:
        style = "path-style" if backend.force_path_style else "virtual-hosted"
        target = f"{backend.endpoint} bucket {backend.bucket} (region {backend.region}, {style})"
    return f"{backend.type:<5}  {target}  quota {quota}"


def _describe_encryption(encryption: EncryptionConfig) -> str:
    """Key ids and where the primary comes from; never key material."""
    primary = encryption.primary_key_id
    if primary is None:
        return "on" if encryption.enabled else "off"
    if encryption.keyring is not None and not encryption.keyring.decrypt_only:
        return _describe_keyring(encryption, encryption.keyring)
    if encryption.vault is not None and not encryption.vault.decrypt_only:
        source = _vault_name(encryption.vault)
    elif encryption.master_key_file:
        source = encryption.master_key_file
        if encryption.generate_key_file:
            source += " (created on first start if missing)"
    else:
        source = "master_key"
    previous = ", ".join(_decrypt_only_keys(encryption)) or "none"
    return f"{_state(encryption)} key {primary} ({source}); decrypt-only keys: {previous}"


def _state(encryption: EncryptionConfig) -> str:
    if encryption.enabled:
        return f"on, chunk {format_size(encryption.chunk_size)}, new objects use"
    return "off for new objects; existing ones decrypt with"


def _vault_name(vault: VaultConfig) -> str:
    return f"Vault Transit {vault.mount_path}/{vault.key_name} at {vault.address}"


def _describe_keyring(encryption: EncryptionConfig, keyring: KeyringConfig) -> str:
    """The keyring, what unseals it, its rotation policy and the decrypt-only keys."""
    vault = encryption.vault
    if keyring.seal == "shamir":
        seal = "unsealed with key shares: s3orch operator unseal"
    elif encryption.master_key is not None:
        seal = "unsealed automatically by master_key"
    elif encryption.master_key_file:
        seal = f"unsealed automatically by {encryption.master_key_file}"
    else:
        seal = f"unsealed automatically by {_vault_name(vault) if vault else '?'}"
    rotation = keyring.rotation
    if rotation is None:
        policy = "as stored in the keyring (operator API rotate/config)"
    elif not rotation.enabled:
        policy = "off"
    else:
        policy = f"after {rotation.max_operations:,} data keys"
        if rotation.interval:
            policy += f" or every {rotation.interval / 3600:g}h"
    decrypt_only = ", ".join(_decrypt_only_keys(encryption)) or "none"
    return (
        f"{_state(encryption)} key keyring-<term> (s3orch's keyring, {seal}); "
        f"automatic rotation: {policy}; decrypt-only keys: {decrypt_only}"
    )


def _decrypt_only_keys(encryption: EncryptionConfig) -> list[str]:
    """The keys that only unwrap what they wrapped."""
    keys = list(encryption.previous_key_ids)
    vault, keyring = encryption.vault, encryption.keyring
    if vault is not None and vault.decrypt_only:
        keys.append(f"{vault.key_name} ({_vault_name(vault)})")
    if keyring is not None and keyring.decrypt_only:
        keys.append("keyring-<term> (s3orch's keyring, unsealed with key shares)")
    return keys


def _describe_bucket(bucket: BucketConfig) -> str:
    count = len(bucket.credentials)
    key_ids = [c.access_key_id for c in bucket.credentials if c.access_key_id is not None]
    tokens = sum(1 for c in bucket.credentials if c.token is not None)
    parts = []
    if key_ids:
        parts.append("access keys " + ", ".join(key_ids))
    if tokens:
        parts.append(f"{tokens} token{'' if tokens == 1 else 's'}")
    return f"{count} credential{'' if count == 1 else 's'}: {'; '.join(parts)}"


def _add_keygen(subparsers: _SubParsers) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="print a new master key",
        description="Print a new random 256-bit master key as base64, the form encryption."
        "master_key and previous_keys take (the same as `openssl rand -base64 32`).",
    )
    parser.set_defaults(run=_keygen)


def _keygen(args: argparse.Namespace, streams: Streams) -> int:
    from s3orch.crypto.keys import generate_key

    print(generate_key(), file=streams.out)
    return 0


def _add_admin(subparsers: _SubParsers) -> None:
    from s3orch.admin_cli import add_parser

    add_parser(subparsers)


def _add_operator(subparsers: _SubParsers) -> None:
    from s3orch.operator_cli import add_parser

    add_parser(subparsers)


_SUBCOMMANDS: tuple[Callable[[_SubParsers], None], ...] = (
    _add_validate,
    _add_keygen,
    _add_admin,
    _add_operator,
)


if __name__ == "__main__":
    raise SystemExit(main())
