"""Configuration: a YAML file in, frozen values out, every problem reported at once.

The file is parsed as YAML first and ``${VAR}`` / ``${VAR:-default}`` are expanded afterwards,
in string values only, so a value holding ``#``, ``:`` or a newline can never change the shape
of the document around it. ``$$`` is a literal ``$``; a ``$`` not followed by ``{`` or ``$`` is
kept as it is. A number or boolean field may be written as a ``${VAR}`` reference: the expanded
text is then read strictly (``5432``, ``true``), whereas a quoted literal stays a type error.

Relative paths (``database.path``, a local backend's ``path``) are kept exactly as written and
are therefore relative to the working directory of the process (``WorkingDirectory=`` under
systemd), not to the directory of the configuration file.

Secrets (``secret_access_key``, ``token``, ``password``, encryption keys) are never quoted in an
error and are left out of the ``repr()`` of every value below. The one file read while loading
is an encryption ``master_key_file``, so that a bad key stops startup with the others.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Collection, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import yaml
from attrs import field, frozen

from s3orch.crypto.envelope import DEFAULT_CHUNK_SIZE, check_chunk_size
from s3orch.crypto.keyring import (
    DEFAULT_MAX_OPERATIONS,
    KEY_ID_PREFIX,
    MIN_MAX_OPERATIONS,
    MIN_ROTATION_INTERVAL,
    RotationConfig,
)
from s3orch.crypto.keys import KeyMaterialError, decode_key, fingerprint, read_key_file

KiB: Final = 1024
MiB: Final = 1024**2
GiB: Final = 1024**3

DEFAULT_CONFIG_PATH: Final = "conf/s3orch.yaml"

ROUTING_STRATEGIES: Final = ("pack", "spread")
DATABASE_DRIVERS: Final = ("sqlite", "postgres")
BACKEND_TYPES: Final = ("s3", "local")
# twisted.logger.LogLevel names.
LOG_LEVELS: Final = ("debug", "info", "warn", "error", "critical")
# libpq's sslmode values.
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Bucket names that would shadow our own endpoints on the main listener.
RESERVED_BUCKET_NAMES: Final = frozenset({"health", "metrics", "admin"})


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds every problem found, one per entry.

    Each entry starts with the path of the field it is about, e.g. ``backends[1].quota_bytes:``.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        count = len(self.errors)
        noun = "problem" if count == 1 else "problems"
        return f"invalid configuration ({count} {noun}):\n" + "\n".join(
            f"  {e}" for e in self.errors
        )


# -- values ---------------------------------------------------------------------------------


@frozen
class ServerConfig:
    listen: str = "127.0.0.1:9000"
    max_object_size: int = 5 * GiB
    log_level: str = "info"
    multipart_max_age: float = 24 * 3600.0  # seconds before an unfinished upload is aborted

    @property
    def listen_host(self) -> str:
        """The interface address, without IPv6 brackets."""
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def listen_endpoint(self) -> str:
        r"""The strports description for ``strports.service``: ``tcp:9000:interface=127.0.0.1``,
        or ``tcp6:9000:interface=\:\:1`` with an IPv6 address's colons escaped for strports."""
        host, port = split_listen(self.listen)
        kind = "tcp6" if ipaddress.ip_address(host).version == 6 else "tcp"
        return f"{kind}:{port}:interface={_strports_quote(host)}"


@frozen
class Credential:
    """Either a SigV4 key pair (``access_key_id`` + ``secret_access_key``) or a ``token``."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


@frozen
class BucketConfig:
    name: str
    credentials: tuple[Credential, ...]
    max_multipart_uploads: int = 1000  # uploads in progress at once; 0 = unlimited


@frozen
class DatabaseConfig:
    driver: str = "sqlite"
    path: str = "var/s3orch.db"
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    sslmode: str = "prefer"

    def postgres_conninfo(self) -> str:
        """A libpq/psycopg conninfo string with every value quoted.

        Empty ``user`` and ``password`` are left out so libpq applies its own defaults
        (the OS user name, ``~/.pgpass``, ``PGPASSWORD``).
        """
        pairs = [("host", self.host), ("port", str(self.port)), ("dbname", self.database)]
        if self.user:
            pairs.append(("user", self.user))
        if self.password:
            pairs.append(("password", self.password))
        pairs.append(("sslmode", self.sslmode))
        return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in pairs)


@frozen
class BackendConfig:
    name: str
    type: str
    quota_bytes: int = 0
    path: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    bucket: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    force_path_style: bool = True
    checksum: str = "none"
    """``crc32``: every body written to the backend carries a CRC32 the backend verifies."""


# What an ``s3`` backend's ``checksum`` may name. Off by default: several S3-compatible
# services refuse aws-chunked bodies with a trailing checksum.
BACKEND_CHECKSUMS: Final = ("none", "crc32")


@frozen
class AdminConfig:
    token: str = field(default="", repr=False)

    @property
    def enabled(self) -> bool:
        """The admin API is served only when a token is configured."""
        return bool(self.token)


REWRAP_BATCH_SIZE: Final = 100
"""Ciphertexts per Transit rewrap request: OpenBao refuses JSON with over 1000 strings by
default."""


@frozen
class VaultConfig:
    """Vault Transit as the master key source (validated here, implemented separately)."""

    address: str
    key_name: str
    token: str = field(default="", repr=False)
    token_file: str = ""
    mount_path: str = "transit"
    ca_cert: str = ""
    namespace: str = ""
    renew_interval: float = 300.0
    decrypt_only: bool = False
    """Vault only unwraps what it wrapped (moving away from Vault); another source wraps."""
    rewrap_batch_size: int = REWRAP_BATCH_SIZE
    """DEKs per Transit ``rewrap`` request, and per batch, when rotating the Vault key."""
    dek_cache_ttl: float = 300.0
    """Seconds a DEK Vault wrapped or unwrapped is kept in memory (crypto/dek_cache.py)."""
    dek_cache_size: int = 10_000
    """DEKs kept at most; 0 turns the cache off (every read then calls Vault)."""


SEAL_TYPES: Final = ("shamir", "auto")


@frozen
class KeyringConfig:
    """s3orch's own keyring as the key that wraps new DEKs (``keyring-<term>``).

    ``seal`` says what opens it after a start: Shamir key shares (``s3orch operator unseal``),
    or ``auto``: the configured master_key, master_key_file or Vault key, which then seals
    the keyring's root key and wraps no DEK. ``rotation``, when given, is the automatic
    rotation policy and is stored into the keyring at every unseal; when absent the policy
    stored in the keyring applies (Vault's defaults, or what ``POST rotate/config`` set).
    """

    seal: str = "shamir"
    rotation: RotationConfig | None = None
    decrypt_only: bool = False
    """The keyring only unwraps what it wrapped (moving away from it: master_key,
    master_key_file or vault wraps new DEKs); it is still unsealed with its key shares."""


@frozen
class EncryptionConfig:
    """Envelope encryption. Keys are decoded and checked at load; ``master_key_file`` is
    read again when the keys are built. With ``enabled`` false, configured keys still
    decrypt existing objects; only new objects are stored in plaintext."""

    enabled: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    master_key: bytes | None = field(default=None, repr=False)
    master_key_file: str = ""
    generate_key_file: bool = False
    previous_keys: tuple[bytes, ...] = field(default=(), repr=False)
    vault: VaultConfig | None = None
    keyring: KeyringConfig | None = None

    @property
    def primary_key_id(self) -> str | None:
        """The operator-facing id new DEKs are wrapped with, None without a key. With the
        keyring it is ``keyring-<term>``: the term is known only once unsealed."""
        if self.keyring is not None and not self.keyring.decrypt_only:
            return KEY_ID_PREFIX + "<term>"
        if self.master_key is not None:
            return "config-0"
        if self.master_key_file:
            return "file-0"
        if self.vault is not None and not self.vault.decrypt_only:
            return self.vault.key_name
        return None

    @property
    def previous_key_ids(self) -> tuple[str, ...]:
        return tuple(f"config-{i}" for i in range(1, len(self.previous_keys) + 1))


@frozen(kw_only=True)
class Config:
    server: ServerConfig = field(factory=ServerConfig)
    buckets: tuple[BucketConfig, ...]
    database: DatabaseConfig = field(factory=DatabaseConfig)
    backends: tuple[BackendConfig, ...]
    routing_strategy: str = "pack"
    admin: AdminConfig = field(factory=AdminConfig)
    encryption: EncryptionConfig = field(factory=EncryptionConfig)


# -- public entry points -------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the file at ``path``; ``environ`` defaults to ``os.environ``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{os.fspath(path)}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{os.fspath(path)}: not UTF-8 text"]) from None
    return parse_config(text, os.environ if environ is None else environ)


def parse_config(text: str, environ: Mapping[str, str]) -> Config:
    """Validate a YAML document; raise ConfigError listing all problems at once."""
    problems = _Problems()
    tree = _load_yaml(text, problems)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        problems.add("(top level)", "must be a mapping of sections (server, buckets, backends…)")
        raise ConfigError(problems.messages)
    root = _Section(tree, "", problems, environ, _field_names(Config))
    # Read in the order a config file is usually written, so the errors follow the file.
    server = _read_server(root.mapping("server", _field_names(ServerConfig)))
    database = _read_database(root.mapping("database", _field_names(DatabaseConfig)))
    backends = _read_backends(root)
    routing_strategy = root.choice("routing_strategy", ROUTING_STRATEGIES, default="pack")
    buckets = _read_buckets(root)
    admin = _read_admin(root.mapping("admin", _field_names(AdminConfig)))
    encryption = _read_encryption(root.mapping("encryption", _field_names(EncryptionConfig)))
    config = Config(
        server=server,
        buckets=buckets,
        database=database,
        backends=backends,
        routing_strategy=routing_strategy or "pack",
        admin=admin,
        encryption=encryption,
    )
    if problems.messages:
        raise ConfigError(problems.messages)
    return config


# -- sizes and addresses --------------------------------------------------------------------

_SIZE_UNITS: Final = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "KIB": KiB,
    "MIB": MiB,
    "GIB": GiB,
    "TIB": 1024**4,
    "PIB": 1024**5,
}
_SIZE_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: object) -> int:
    """Bytes from an int or a string like ``"500"``, ``"10KB"`` (10**3) or ``"10KiB"`` (2**10).

    Raises ValueError for anything else, including a negative number, a bool, or a fraction
    that is not a whole number of bytes.
    """
    if isinstance(value, bool):
        raise ValueError("a bool is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError("not a size")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.upper())
    if multiplier is None:
        raise ValueError("unknown unit")
    try:
        amount = Decimal(number) * multiplier
    except InvalidOperation:
        raise ValueError("not a size") from None
    if amount != amount.to_integral_value():
        raise ValueError("not a whole number of bytes")
    return int(amount)


def format_size(size: int) -> str:
    """Bytes in binary units for people: ``1 GiB``, ``1.5 MiB``, ``512 B``."""
    for unit, scale in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB)):
        if size >= scale:
            return f"{_trim(size / scale)} {unit}"
    if size >= KiB:
        return f"{_trim(size / KiB)} KiB"
    return f"{size} B"


def _trim(number: float) -> str:
    return f"{number:.2f}".rstrip("0").rstrip(".")


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9000"`` or ``"[::1]:9000"`` -> (address, port); ValueError otherwise."""
    if listen.startswith("["):
        close = listen.find("]")
        if close < 0 or listen[close + 1 : close + 2] != ":":
            raise ValueError("must be [IPv6]:port, e.g. [::1]:9000")
        host, port_text = listen[1:close], listen[close + 2 :]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("the address in brackets must be an IPv6 address") from None
        if address.version != 6:
            raise ValueError("only an IPv6 address goes in brackets, e.g. [::1]:9000")
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not host:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9000, 0.0.0.0:9000 or [::1]:9000")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets, e.g. [::1]:9000")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                "the host must be an IP address, e.g. 127.0.0.1, 0.0.0.0 or [::1]"
            ) from None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port_text)


def _strports_quote(value: str) -> str:
    # Same escaping as twisted.internet.endpoints.quoteStringArgument, which is untyped.
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- YAML -----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that notes duplicate keys, which plain YAML loading silently collapses."""

    duplicate_keys: list[tuple[int, str]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    self.duplicate_keys.append((key_node.start_mark.line + 1, key_node.value))
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, problems: _Problems) -> object:
    loader = _StrictLoader(text)
    loader.duplicate_keys = []
    try:
        tree: object = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # Never str(e): it quotes the offending line, which may hold a secret.
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        detail = e.problem or "invalid YAML"
        if e.context:
            detail = f"{detail} ({e.context})"
        raise ConfigError([f"{where}: invalid YAML: {detail}"]) from None
    except yaml.YAMLError:
        raise ConfigError(["invalid YAML"]) from None
    finally:
        loader.dispose()
    for line, key in loader.duplicate_keys:
        problems.add(f"line {line}", f"duplicate key {key!r} (the later value would win)")
    return tree


# -- ${VAR} expansion -----------------------------------------------------------------------


class _Expanded(str):
    """A string that came out of a ``${VAR}`` reference, so it may stand for a number or bool."""


_REFERENCE_RE: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^$]|\$\$)*))?")


def _expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand one string value; returns the result and problems (which never quote ``text``)."""
    problems: list[str] = []
    out: list[str] = []
    expanded = False
    i = 0
    while i < len(text):
        dollar = text.find("$", i)
        if dollar < 0:
            out.append(text[i:])
            break
        out.append(text[i:dollar])
        following = text[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            i = dollar + 2
            continue
        if following != "{":
            out.append("$")
            i = dollar + 1
            continue
        close = text.find("}", dollar + 2)
        if close < 0:
            problems.append("unterminated '${' (write '$$' for a literal '$')")
            break
        match = _REFERENCE_RE.fullmatch(text, dollar + 2, close)
        i = close + 1
        if match is None:
            problems.append(
                "invalid reference: use ${NAME} or ${NAME:-default} (write '$$' for a literal '$')"
            )
            continue
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if default is not None and not value:
            value = default.replace("$$", "$")
        if value is None:
            problems.append(f"environment variable {name} is not set")
            continue
        out.append(value)
        expanded = True
    result = "".join(out)
    return (_Expanded(result) if expanded else result), problems


# -- reading --------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.messages.append(f"{where}: {message}")


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(a.name for a in attrs.fields(cls))


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _Section:
    """One YAML mapping being read. Readers record problems and return None, never raise,
    so that one pass finds everything; None also means "absent and no default"."""

    def __init__(
        self,
        node: Mapping[Any, Any],
        path: str,
        problems: _Problems,
        environ: Mapping[str, str],
        known: Collection[str],
    ) -> None:
        self.node = node
        self.path = path
        self.problems = problems
        self.environ = environ
        for key in node:
            if key not in known:
                shown = key if isinstance(key, str) else repr(key)
                suggestion = _suggest(key, known) if isinstance(key, str) else ""
                self.problems.add(self.where(shown), f"unknown key{suggestion}")

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.add(self.where(key), message)

    def has(self, key: str) -> bool:
        return self.node.get(key) is not None

    def value(self, key: str) -> object:
        """The value with ``${VAR}`` expanded; None when absent or null."""
        value = self.node.get(key)
        if isinstance(value, str):
            value, problems = _expand(value, self.environ)
            for message in problems:
                self.problem(key, message)
            if problems:
                return None
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if not self.has(key):
            if required:
                self.problem(key, "required")
            return default
        value = self.value(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, "must be a string (quote the value in YAML)")
            return None
        return str(value)

    def duration(self, key: str, default: float) -> float | None:
        """Seconds from a number or a duration such as ``"24h"`` (must be positive)."""
        if not self.has(key):
            return default
        value = self.value(key)
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.problem(key, "must be a duration such as '90s', '30m' or '24h'")
            return None
        if seconds <= 0:
            self.problem(key, "must be greater than 0")
            return None
        return seconds

    def integer(self, key: str, default: int, low: int, high: int) -> int | None:
        if not self.has(key):
            return default
        value = self.value(key)
        if value is None:
            return None
        if isinstance(value, _Expanded) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, "must be an integer")
            return None
        if not low <= value <= high:
            self.problem(key, f"must be from {low} to {high}")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool | None:
        if not self.has(key):
            return default
        value = self.value(key)
        if value is None:
            return None
        if isinstance(value, _Expanded) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return None
        return value

    def size(self, key: str, default: int) -> int | None:
        if not self.has(key):
            return default
        value = self.value(key)
        if value is None:
            return None
        try:
            return parse_size(value)
        except ValueError:
            self.problem(key, "must be a non-negative integer or size like '10GiB'")
            return None

    def choice(self, key: str, choices: Collection[str], default: str) -> str | None:
        if not self.has(key):
            return default
        value = self.value(key)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            suggestion = _suggest(value, choices) if isinstance(value, str) else ""
            self.problem(key, f"must be one of {', '.join(choices)}{suggestion}")
            return None
        return str(value)

    def mapping(self, key: str, known: Collection[str]) -> _Section | None:
        """The nested section; an empty one when absent, None when it is not a mapping."""
        value = self.node.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.problem(key, "must be a mapping")
            return None
        return _Section(value, self.where(key), self.problems, self.environ, known)

    def sequence(self, key: str, what: str) -> list[object]:
        """The list under ``key``; reports it when absent, empty or not a list."""
        value = self.node.get(key)
        if value is None or value == []:
            self.problem(key, f"at least one {what} is required")
            return []
        if not isinstance(value, list):
            self.problem(key, f"must be a list of {what}s")
            return []
        return value

    def items(self, key: str, what: str, known: Collection[str]) -> list[_Section | None]:
        """One section per list entry (None for an entry that is not a mapping)."""
        sections: list[_Section | None] = []
        for index, entry in enumerate(self.sequence(key, what)):
            path = f"{self.where(key)}[{index}]"
            if isinstance(entry, dict):
                sections.append(_Section(entry, path, self.problems, self.environ, known))
            else:
                self.problems.add(path, f"each {what} must be a mapping")
                sections.append(None)
        return sections


# -- sections -------------------------------------------------------------------------------


def _read_server(section: _Section | None) -> ServerConfig:
    default = ServerConfig()
    if section is None:
        return default
    listen = section.string("listen", default.listen)
    if listen is not None:
        try:
            split_listen(listen)
        except ValueError as e:
            section.problem("listen", f"{listen!r}: {e}")
    max_object_size = section.size("max_object_size", default.max_object_size)
    if max_object_size == 0:
        section.problem("max_object_size", "must be greater than 0")
    log_level = section.choice("log_level", LOG_LEVELS, default.log_level)
    max_age = section.duration("multipart_max_age", default.multipart_max_age)
    return ServerConfig(
        listen=listen or default.listen,
        max_object_size=max_object_size or default.max_object_size,
        log_level=log_level or default.log_level,
        multipart_max_age=max_age or default.multipart_max_age,
    )


_BUCKET_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
_IPV4_LIKE_RE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def _bucket_name_problem(name: str) -> str | None:
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters long"
    if not _BUCKET_NAME_RE.fullmatch(name):
        return (
            "may hold only lowercase letters, digits, dots and hyphens, "
            "and must start and end with a letter or digit"
        )
    if ".." in name:
        return "must not contain two dots in a row"
    if _IPV4_LIKE_RE.fullmatch(name):
        return "must not look like an IP address"
    if name in RESERVED_BUCKET_NAMES:
        return f"is reserved for s3orch's own /{name} endpoint"
    return None


# Letters, digits and URI-unreserved marks: safe inside a SigV4 Credential= field and a
# presigned URL, and unambiguous in logs.
_ACCESS_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_WHITESPACE_OR_CONTROL_RE: Final = re.compile(r"[\s\x00-\x1f\x7f]")


def _read_buckets(root: _Section) -> tuple[BucketConfig, ...]:
    buckets: list[BucketConfig] = []
    names: dict[str, str] = {}
    access_keys: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for section in root.items("buckets", "bucket", _field_names(BucketConfig)):
        if section is None:
            continue
        name = section.string("name", required=True)
        if name is not None:
            problem = _bucket_name_problem(name)
            if problem:
                section.problem("name", f"{name!r} {problem}")
            elif name in names:
                section.problem("name", f"{name!r} is already used by {names[name]}")
            else:
                names[name] = section.where("name")
        credentials = []
        for credential in section.items("credentials", "credential", _field_names(Credential)):
            if credential is not None:
                credentials.append(_read_credential(credential, access_keys, tokens))
        max_uploads = section.integer("max_multipart_uploads", 1000, 0, 1_000_000)
        buckets.append(
            BucketConfig(
                name=name or "",
                credentials=tuple(credentials),
                max_multipart_uploads=1000 if max_uploads is None else max_uploads,
            )
        )
    return tuple(buckets)


def _read_credential(
    section: _Section, access_keys: dict[str, str], tokens: dict[str, str]
) -> Credential:
    access_key_id = section.string("access_key_id")
    secret = section.string("secret_access_key")
    token = section.string("token")
    has_pair = section.has("access_key_id") or section.has("secret_access_key")
    if has_pair and section.has("token"):
        section.problems.add(
            section.path, "give either access_key_id + secret_access_key or token, not both"
        )
    elif not has_pair and not section.has("token"):
        section.problems.add(section.path, "needs access_key_id + secret_access_key, or token")
    elif has_pair:
        if not section.has("access_key_id"):
            section.problem("access_key_id", "required with secret_access_key")
        if not section.has("secret_access_key"):
            section.problem("secret_access_key", "required with access_key_id")

    if access_key_id is not None:
        if not _ACCESS_KEY_ID_RE.fullmatch(access_key_id):
            section.problem(
                "access_key_id",
                "must be 1 to 128 letters, digits or '.', '_', '~', '-'",
            )
        elif access_key_id in access_keys:
            section.problem(
                "access_key_id",
                f"{access_key_id!r} is already used by {access_keys[access_key_id]}",
            )
        else:
            access_keys[access_key_id] = section.path
    if secret is not None:
        _check_secret(section, "secret_access_key", secret)
    if token is not None and _check_secret(section, "token", token):
        if token in tokens:
            section.problem("token", f"the same token is already used by {tokens[token]}")
        else:
            tokens[token] = section.path
    return Credential(access_key_id=access_key_id, secret_access_key=secret, token=token)


def _check_secret(section: _Section, key: str, secret: str) -> bool:
    """Checks that never quote the secret itself; True if it is usable."""
    if not secret:
        section.problem(key, "must not be empty")
        return False
    if _WHITESPACE_OR_CONTROL_RE.search(secret):
        section.problem(key, "must not contain whitespace or control characters")
        return False
    return True


_POSTGRES_ONLY: Final = ("host", "port", "database", "user", "password", "sslmode")
_SQLITE_ONLY: Final = ("path",)


def _read_database(section: _Section | None) -> DatabaseConfig:
    default = DatabaseConfig()
    if section is None:
        return default
    driver = section.choice("driver", DATABASE_DRIVERS, default.driver)
    # With an unknown driver, read everything so that all other problems still show.
    path = host = user = password = database = sslmode = None
    port = None
    if driver == "sqlite":
        _reject_keys(section, _POSTGRES_ONLY, "not used with driver sqlite")
    else:
        host = section.string("host", default.host)
        if host == "":
            section.problem("host", "must not be empty")
        port = section.integer("port", default.port, 1, 65535)
        database = section.string("database", "")
        if driver == "postgres" and database == "":
            section.problem("database", "required with driver postgres")
        user = section.string("user", default.user)
        password = section.string("password", default.password)
        sslmode = section.choice("sslmode", SSL_MODES, default.sslmode)
    if driver == "postgres":
        _reject_keys(section, _SQLITE_ONLY, "not used with driver postgres")
    else:
        path = section.string("path", default.path)
        if path == "":
            section.problem("path", "must not be empty")
    return DatabaseConfig(
        driver=driver or default.driver,
        path=path or default.path,
        host=host or default.host,
        port=port or default.port,
        database=database or "",
        user=user or "",
        password=password or "",
        sslmode=sslmode or default.sslmode,
    )


_BACKEND_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_S3_ONLY: Final = (
    "endpoint",
    "region",
    "bucket",
    "access_key_id",
    "secret_access_key",
    "force_path_style",
    "checksum",
)
_LOCAL_ONLY: Final = ("path",)


def _read_backends(root: _Section) -> tuple[BackendConfig, ...]:
    backends: list[BackendConfig] = []
    names: dict[str, str] = {}
    local_paths: dict[str, str] = {}
    s3_targets: dict[tuple[str, str], str] = {}
    for section in root.items("backends", "backend", _field_names(BackendConfig)):
        if section is None:
            continue
        name = section.string("name", required=True)
        if name is not None:
            if not _BACKEND_NAME_RE.fullmatch(name):
                section.problem("name", f"{name!r} may hold only letters, digits and '_', '.', '-'")
            elif name in names:
                section.problem("name", f"{name!r} is already used by {names[name]}")
            else:
                names[name] = section.where("name")
        kind = section.string("type", required=True)
        if kind is not None and kind not in BACKEND_TYPES:
            section.problem(
                "type", f"must be one of {', '.join(BACKEND_TYPES)}{_suggest(kind, BACKEND_TYPES)}"
            )
            kind = None
        quota = section.size("quota_bytes", 0)
        if kind == "local":
            backend = _read_local_backend(section, name or "", quota or 0, local_paths)
        elif kind == "s3":
            backend = _read_s3_backend(section, name or "", quota or 0, s3_targets)
        else:
            backend = BackendConfig(name=name or "", type=kind or "", quota_bytes=quota or 0)
        backends.append(backend)
    return tuple(backends)


def _reject_keys(section: _Section, keys: Collection[str], message: str) -> None:
    """Fields that belong to another driver or backend type usually mean a wrong type."""
    for key in keys:
        if key in section.node:
            section.problem(key, message)


def _read_local_backend(
    section: _Section, name: str, quota: int, seen: dict[str, str]
) -> BackendConfig:
    _reject_keys(section, _S3_ONLY, "not used by type local backends")
    path = section.string("path", required=True)
    if path == "":
        section.problem("path", "must not be empty")
    elif path is not None:
        normalized = os.path.normpath(path)
        if normalized in seen:
            section.problem("path", f"same directory as {seen[normalized]}")
        else:
            seen[normalized] = section.path
    return BackendConfig(name=name, type="local", quota_bytes=quota, path=path or "")


def _read_s3_backend(
    section: _Section, name: str, quota: int, seen: dict[tuple[str, str], str]
) -> BackendConfig:
    _reject_keys(section, _LOCAL_ONLY, "not used by type s3 backends")
    default = BackendConfig(name=name, type="s3")
    endpoint = section.string("endpoint", required=True)
    if endpoint is not None:
        problem = _endpoint_problem(endpoint)
        if problem:
            section.problem("endpoint", problem)
    region = section.string("region", default.region)
    if region is not None and (not region or _WHITESPACE_OR_CONTROL_RE.search(region)):
        section.problem("region", "must be a non-empty word, e.g. us-east-1")
    bucket = section.string("bucket", required=True)
    if bucket is not None and (not bucket or "/" in bucket):
        section.problem("bucket", "must be a non-empty bucket name without '/'")
    if endpoint and bucket:
        target = (endpoint.rstrip("/").lower(), bucket)
        if target in seen:
            section.problem("bucket", f"same endpoint and bucket as {seen[target]}")
        else:
            seen[target] = section.path
    access_key_id = section.string("access_key_id", required=True)
    if access_key_id == "":
        section.problem("access_key_id", "must not be empty")
    secret = section.string("secret_access_key", required=True)
    if secret is not None:
        _check_secret(section, "secret_access_key", secret)
    force_path_style = section.boolean("force_path_style", default.force_path_style)
    checksum = section.choice("checksum", BACKEND_CHECKSUMS, default.checksum)
    return BackendConfig(
        name=name,
        type="s3",
        quota_bytes=quota,
        endpoint=endpoint or "",
        region=region or default.region,
        bucket=bucket or "",
        access_key_id=access_key_id or "",
        secret_access_key=secret or "",
        force_path_style=default.force_path_style if force_path_style is None else force_path_style,
        checksum=checksum or default.checksum,
    )


def _url_problem(url_text: str, example: str, credentials_hint: str) -> str | None:
    """Why ``url_text`` is not a usable http(s) URL. Never quotes it: it might carry userinfo."""
    try:
        url = urlsplit(url_text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "must be an http:// or https:// URL"
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"must be an http:// or https:// URL, e.g. {example}"
    if url.username is not None or url.password is not None:
        return f"must not contain credentials; use {credentials_hint}"
    if url.query or url.fragment:
        return "must not have a query or fragment"
    return None


def _endpoint_problem(endpoint: str) -> str | None:
    return _url_problem(
        endpoint, "https://s3.us-east-1.amazonaws.com", "access_key_id and secret_access_key"
    )


def _read_admin(section: _Section | None) -> AdminConfig:
    if section is None:
        return AdminConfig()
    token = section.string("token", "")
    if token:
        _check_secret(section, "token", token)
    return AdminConfig(token=token or "")


# -- encryption -----------------------------------------------------------------------------

_KEY_SOURCES: Final = ("master_key", "master_key_file", "vault")
_DURATION_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from an int/float or a Go-style duration such as ``"90s"``, ``"5m"``,
    ``"1h30m"``. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a duration")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a duration")
    text = value.strip()
    total, pos = 0.0, 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            raise ValueError("not a duration")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError("not a duration")
    return total


def _read_encryption(section: _Section | None) -> EncryptionConfig:
    default = EncryptionConfig()
    if section is None:
        return default
    enabled = section.boolean("enabled", default.enabled)
    chunk_size = section.size("chunk_size", default.chunk_size)
    if chunk_size is not None:
        try:
            check_chunk_size(chunk_size)
        except ValueError:
            section.problem("chunk_size", "must be a power of two from 4KiB (4096) to 1MiB")
            chunk_size = None

    # Keys seen so far, by fingerprint, to report one key configured twice.
    seen: dict[str, str] = {}
    # An empty value (e.g. "${ENCRYPTION_KEY:-}") means no inline key, as in the Go system.
    master_text = section.string("master_key")
    has_master_key = section.has("master_key") and master_text != ""
    master_key = _read_key_text(section, "master_key", master_text or None, seen)
    key_file = section.string("master_key_file", "")
    generate = section.boolean("generate_key_file", default.generate_key_file)
    if key_file:
        _check_key_file(section, key_file, bool(generate), seen)
    elif generate:
        section.problem("generate_key_file", "only used with master_key_file")
    vault = _read_vault(section) if section.has("vault") else None
    previous = _read_previous_keys(section, seen)
    # A bare ``keyring:`` (null) turns the keyring on with its defaults.
    keyring = _read_keyring(section) if "keyring" in section.node else None

    vault_wraps = vault is None or not vault.decrypt_only
    present = (has_master_key, bool(key_file), section.has("vault") and vault_wraps)
    sources = [name for name, given in zip(_KEY_SOURCES, present, strict=True) if given]
    if len(sources) > 1:
        section.problems.add(
            section.path,
            f"give only one of master_key, master_key_file or vault, not {' and '.join(sources)}",
        )
    elif keyring is not None and not keyring.decrypt_only:
        _check_keyring_sources(section, keyring, sources)
    elif not sources and keyring is not None:
        section.problem(
            "keyring.decrypt_only",
            "a decrypt-only keyring needs a primary key: master_key, master_key_file or vault",
        )
    elif not sources and enabled:
        section.problem("enabled", "needs a key: master_key, master_key_file, vault or keyring")
    elif not sources and section.has("previous_keys"):
        section.problem(
            "previous_keys",
            "decrypt-only keys need a primary key: master_key, master_key_file, vault or keyring",
        )
    return EncryptionConfig(
        enabled=default.enabled if enabled is None else enabled,
        chunk_size=chunk_size or default.chunk_size,
        master_key=master_key,
        master_key_file=key_file or "",
        generate_key_file=bool(generate),
        previous_keys=tuple(previous),
        vault=vault,
        keyring=keyring,
    )


def _check_keyring_sources(section: _Section, keyring: KeyringConfig, sources: list[str]) -> None:
    """With the keyring, the one other key source (if any) is its auto-unseal key."""
    if keyring.seal == "auto":
        if not sources:
            section.problem(
                "keyring.seal",
                "auto needs the key that unseals the keyring: master_key, master_key_file or vault",
            )
        return
    for source in sources:
        if source == "vault":
            section.problem(
                "vault",
                "with keyring.seal: shamir the keyring wraps new data keys; Vault can only "
                "be kept decrypt_only: true (to read what it wrapped), or be the auto-unseal "
                "key with keyring.seal: auto",
            )
        else:
            section.problem(
                source,
                "with keyring.seal: shamir the keyring wraps new data keys; move this key to "
                "previous_keys to read what it wrapped, or make it the auto-unseal key with "
                "keyring.seal: auto",
            )


def _read_keyring(section: _Section) -> KeyringConfig | None:
    keyring = section.mapping("keyring", _field_names(KeyringConfig))
    if keyring is None:
        return None
    default = KeyringConfig()
    seal = keyring.choice("seal", SEAL_TYPES, default=default.seal)
    rotation = None
    if keyring.has("rotation"):
        rotation = _read_rotation(keyring.mapping("rotation", _ROTATION_FIELDS))
    decrypt_only = bool(keyring.boolean("decrypt_only", default.decrypt_only))
    if decrypt_only and seal == "auto":
        keyring.problem(
            "seal", "a decrypt-only keyring is unsealed with its key shares: use shamir"
        )
    if decrypt_only and keyring.has("rotation"):
        keyring.problem("rotation", "a decrypt-only keyring wraps nothing: it is not rotated")
    return KeyringConfig(seal=seal or default.seal, rotation=rotation, decrypt_only=decrypt_only)


_ROTATION_FIELDS: Final = ("max_operations", "interval", "enabled")


def _read_rotation(section: _Section | None) -> RotationConfig | None:
    """Vault's ``sys/rotate/config`` bounds: max_operations in [10^6, 0.9*2^32], interval
    0 (off) or at least 24h."""
    if section is None:
        return None
    max_operations = section.integer(
        "max_operations", DEFAULT_MAX_OPERATIONS, MIN_MAX_OPERATIONS, DEFAULT_MAX_OPERATIONS
    )
    interval: float | None = 0.0
    if section.has("interval"):
        try:
            interval = parse_duration(section.value("interval"))
        except ValueError:
            section.problem("interval", "must be a duration such as '24h' or '720h', or 0")
            interval = None
        else:
            if interval != 0 and not interval >= MIN_ROTATION_INTERVAL:
                section.problem("interval", "must be at least 24h, or 0 for no time-based rotation")
                interval = None
    enabled = section.boolean("enabled", True)
    if max_operations is None or interval is None or enabled is None:
        return None
    return RotationConfig(max_operations, interval, enabled)


def _read_key_text(
    section: _Section, where: str, text: str | None, seen: dict[str, str]
) -> bytes | None:
    """A base64 key from ``text``; problems are reported at ``where``, never quoting it."""
    if text is None:
        return None
    try:
        key = decode_key(text)
    except KeyMaterialError as e:
        section.problems.add(section.where(where), str(e))
        return None
    _note_key(section, where, key, seen)
    return key


def _note_key(section: _Section, where: str, key: bytes, seen: dict[str, str]) -> None:
    identity = fingerprint(key)
    if identity in seen:
        section.problems.add(section.where(where), f"is the same key as {seen[identity]}")
    else:
        seen[identity] = section.where(where)


def _check_key_file(section: _Section, path: str, generate: bool, seen: dict[str, str]) -> None:
    if generate and not os.path.lexists(path):
        return  # created (mode 0600) when the service first starts
    try:
        key = read_key_file(path)
    except KeyMaterialError as e:
        section.problem("master_key_file", f"{path}: {e}")
        return
    _note_key(section, "master_key_file", key, seen)


def _read_previous_keys(section: _Section, seen: dict[str, str]) -> list[bytes]:
    value = section.node.get("previous_keys")
    if value is None:
        return []
    if not isinstance(value, list):
        section.problem("previous_keys", "must be a list of base64 keys")
        return []
    keys: list[bytes] = []
    for index, item in enumerate(value):
        where = f"previous_keys[{index}]"
        if not isinstance(item, str):
            section.problem(where, "must be a string (a base64 key)")
            continue
        text, problems = _expand(item, section.environ)
        for message in problems:
            section.problem(where, message)
        if problems:
            continue
        if not text:
            section.problem(where, "must not be empty")
            continue
        key = _read_key_text(section, where, text, seen)
        if key is not None:
            keys.append(key)
    return keys


def _read_vault(section: _Section) -> VaultConfig | None:
    vault = section.mapping("vault", _field_names(VaultConfig))
    if vault is None:
        return None
    default = VaultConfig(address="", key_name="")
    address = vault.string("address", required=True)
    if address is not None:
        problem = _vault_address_problem(address)
        if problem:
            vault.problem("address", problem)
    key_name = vault.string("key_name", required=True)
    if key_name is not None and (
        not key_name or "/" in key_name or _WHITESPACE_OR_CONTROL_RE.search(key_name)
    ):
        vault.problem("key_name", "must be a Transit key name without '/' or whitespace")
    token = vault.string("token")
    token_file = vault.string("token_file")
    if vault.has("token") and vault.has("token_file"):
        vault.problems.add(vault.path, "give either token or token_file, not both")
    elif not vault.has("token") and not vault.has("token_file"):
        vault.problems.add(vault.path, "needs token or token_file")
    if token is not None:
        _check_secret(vault, "token", token)
    if token_file == "":
        vault.problem("token_file", "must not be empty")
    mount_path = vault.string("mount_path", default.mount_path)
    if mount_path is not None and (
        not mount_path.strip("/") or _WHITESPACE_OR_CONTROL_RE.search(mount_path)
    ):
        vault.problem("mount_path", "must be a non-empty path without whitespace, e.g. transit")
    ca_cert = vault.string("ca_cert", default.ca_cert)
    namespace = vault.string("namespace", default.namespace)
    renew_interval: float | None = default.renew_interval
    if vault.has("renew_interval"):
        try:
            renew_interval = parse_duration(vault.value("renew_interval"))
        except ValueError:
            vault.problem("renew_interval", "must be a duration like '5m' or '300s'")
            renew_interval = None
        else:
            if renew_interval <= 0:
                vault.problem("renew_interval", "must be greater than 0")
    dek_cache_size = vault.integer("dek_cache_size", default.dek_cache_size, 0, MAX_DEK_CACHE)
    return VaultConfig(
        address=address or "",
        key_name=key_name or "",
        token=token or "",
        token_file=token_file or "",
        mount_path=(mount_path or default.mount_path).strip("/") or default.mount_path,
        ca_cert=ca_cert or "",
        namespace=namespace or "",
        renew_interval=renew_interval or default.renew_interval,
        decrypt_only=bool(vault.boolean("decrypt_only", default.decrypt_only)),
        rewrap_batch_size=vault.integer(
            "rewrap_batch_size", default.rewrap_batch_size, 1, MAX_REWRAP_BATCH
        )
        or default.rewrap_batch_size,
        dek_cache_ttl=vault.duration("dek_cache_ttl", default.dek_cache_ttl)
        or default.dek_cache_ttl,
        dek_cache_size=default.dek_cache_size if dek_cache_size is None else dek_cache_size,
    )


# OpenBao takes larger batch_input lists, but a failed request then costs more work again.
MAX_REWRAP_BATCH: Final = 1000
MAX_DEK_CACHE: Final = 1_000_000


def _vault_address_problem(address: str) -> str | None:
    return _url_problem(address, "https://vault:8200", "token or token_file")
