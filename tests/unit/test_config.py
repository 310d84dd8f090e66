"""Tests for s3orch.config: YAML -> frozen config, with every problem reported at once."""

from __future__ import annotations

import base64
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import attrs
import psycopg.conninfo
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from s3orch.cli import summarise
from s3orch.config import (
    AdminConfig,
    BackendConfig,
    BucketConfig,
    Config,
    ConfigError,
    Credential,
    DatabaseConfig,
    EncryptionConfig,
    GiB,
    ServerConfig,
    VaultConfig,
    format_size,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    split_listen,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# The smallest valid configuration; tests append or replace sections.
BUCKETS = """
buckets:
  - name: demo
    credentials:
      - access_key_id: AKIDEMO
        secret_access_key: demo-secret
"""
BACKENDS = """
backends:
  - name: local1
    type: local
    path: var/b1
"""
MINIMAL = BUCKETS + BACKENDS


def parse(text: str, environ: Mapping[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), environ or {})


def errors(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return caught.value.errors


def only_error(text: str, environ: Mapping[str, str] | None = None) -> str:
    found = errors(text, environ)
    assert len(found) == 1, found
    return found[0]


def with_backend(body: str) -> str:
    """MINIMAL's buckets plus one backend described by ``body`` (YAML mapping lines)."""
    return BUCKETS + "backends:\n  - " + textwrap.indent(textwrap.dedent(body), "    ").lstrip()


def with_credentials(*creds: str) -> str:
    """One bucket whose credentials are the given YAML mappings (flow style)."""
    items = "".join(f"      - {c}\n" for c in creds)
    return f"buckets:\n  - name: demo\n    credentials:\n{items}" + BACKENDS


S3_BACKEND = """\
name: aws
type: s3
endpoint: https://s3.us-east-1.amazonaws.com
bucket: real-bucket
access_key_id: AKIABACKEND
secret_access_key: backend-secret
"""


# -- defaults ---------------------------------------------------------------------------------


def test_minimal_config_gets_documented_defaults() -> None:
    """Everything not given takes the default named in the design."""
    config = parse(MINIMAL)
    assert config.server == ServerConfig("127.0.0.1:9000", 5 * GiB, "info")
    assert config.database == DatabaseConfig(driver="sqlite", path="var/s3orch.db")
    assert config.routing_strategy == "pack"
    assert config.admin == AdminConfig(token="")
    assert not config.admin.enabled
    assert config.buckets == (BucketConfig("demo", (Credential("AKIDEMO", "demo-secret", None),)),)
    assert config.backends == (BackendConfig(name="local1", type="local", path="var/b1"),)
    assert config.backends[0].quota_bytes == 0


def test_s3_backend_defaults() -> None:
    """An s3 backend defaults to region us-east-1 and path-style addressing."""
    backend = parse(with_backend(S3_BACKEND)).backends[0]
    assert backend.region == "us-east-1"
    assert backend.force_path_style is True
    assert backend.quota_bytes == 0
    assert backend.path == ""


def test_empty_and_null_sections_take_defaults() -> None:
    """`server:` with nothing under it, or `{}`, means all defaults."""
    config = parse(MINIMAL + "server:\ndatabase: {}\nadmin:\n")
    assert config.server == ServerConfig()
    assert config.database == DatabaseConfig()
    assert config.admin == AdminConfig()


def test_config_values_are_frozen() -> None:
    """Config values cannot be changed after loading."""
    config = parse(MINIMAL)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.routing_strategy = "spread"  # type: ignore[misc]


def test_relative_paths_are_kept_as_written() -> None:
    """Relative sqlite and local paths are not resolved against the config file's directory."""
    config = parse(MINIMAL + "database:\n  path: ./data/meta.db\n")
    assert config.database.path == "./data/meta.db"
    assert config.backends[0].path == "var/b1"


# -- all problems at once ---------------------------------------------------------------------


def test_five_problems_give_five_messages() -> None:
    """Validation reports every problem at once rather than stopping at the first."""
    found = errors(
        """
        server:
          listen: nowhere
        routing_strategy: random
        buckets:
          - name: Bad_Name
            credentials:
              - access_key_id: AKIA1
                secret_access_key: s1
        backends:
          - name: b1
            type: local
            path: var/b1
            quota_bytes: -5
          - name: b2
            type: s3
            endpoint: https://e.example
            bucket: x
            access_key_id: k
        """
    )
    assert len(found) == 5, found
    assert [e.split(":")[0] for e in found] == [
        "server.listen",
        "backends[0].quota_bytes",
        "backends[1].secret_access_key",
        "routing_strategy",
        "buckets[0].name",
    ]


def test_error_str_lists_every_problem() -> None:
    """str(ConfigError) carries the count and one problem per line."""
    error = ConfigError(["a: one", "b: two"])
    assert str(error) == "invalid configuration (2 problems):\n  a: one\n  b: two"
    assert error.errors == ["a: one", "b: two"]


def test_empty_document_needs_buckets_and_backends() -> None:
    """An empty file is reported as missing its buckets and backends."""
    assert errors("") == [
        "backends: at least one backend is required",
        "buckets: at least one bucket is required",
    ]


def test_top_level_must_be_a_mapping() -> None:
    """A YAML list or scalar at the top level is rejected."""
    assert only_error("- a\n- b\n").startswith("(top level): must be a mapping")


# -- YAML ---------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line_and_not_its_content() -> None:
    """A YAML syntax error names line and column but never echoes the line (it may hold secrets)."""
    text = MINIMAL + "admin:\n  token: hunter2-secret: oops\n"
    message = only_error(text)
    assert message.startswith("line ")
    assert "invalid YAML" in message
    assert "hunter2" not in message


def test_duplicate_keys_are_errors() -> None:
    """A key given twice in one mapping is reported instead of silently taking the last."""
    message = only_error(MINIMAL + "routing_strategy: pack\nrouting_strategy: spread\n")
    assert "duplicate key 'routing_strategy'" in message
    assert message.startswith("line ")


def test_yaml_merge_keys_are_not_duplicates() -> None:
    """A `<<:` merge that an explicit key overrides is legitimate YAML, not a duplicate."""
    config = parse(
        BUCKETS
        + """
backends:
  - &common
    name: a
    type: local
    path: var/a
  - <<: *common
    name: b
    path: var/b
"""
    )
    assert [(b.name, b.path) for b in config.backends] == [("a", "var/a"), ("b", "var/b")]


# -- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_known_key() -> None:
    """A misspelt key is reported with its path and the key it probably meant."""
    message = only_error(with_backend("name: b\ntype: local\npath: p\nquota_byte: 10\n"))
    assert message == "backends[0].quota_byte: unknown key (did you mean quota_bytes?)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "routing: pack\n", "routing: unknown key"),
        (MINIMAL + "server:\n  listen_addr: 1.2.3.4:5\n", "server.listen_addr: unknown key"),
        (MINIMAL + "database:\n  drvier: sqlite\n", "database.drvier: unknown key"),
        (MINIMAL + "admin:\n  tokn: x\n", "admin.tokn: unknown key (did you mean token?)"),
        (
            with_credentials("{access_key_id: A1, secret_key: s}"),
            "buckets[0].credentials[0].secret_key: unknown key",
        ),
        (MINIMAL + "1: x\n", "1: unknown key"),
    ],
)
def test_unknown_keys_at_every_level(text: str, expected: str) -> None:
    """Unknown keys are errors wherever they appear, named by their full path."""
    assert any(e.startswith(expected) for e in errors(text)), errors(text)


def test_unknown_keys_are_not_expanded() -> None:
    """An unknown key's ${VAR} is not looked up: the only problem is the key itself."""
    assert errors(MINIMAL + "extra: ${NOT_SET}\n") == ["extra: unknown key"]


# -- types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "server:\n  listen: 9000\n", "server.listen: must be a string"),
        (MINIMAL + "database:\n  driver: 1\n", "database.driver: must be one of sqlite, postgres"),
        (MINIMAL + "server: [1]\n", "server: must be a mapping"),
        (MINIMAL.replace("name: demo", "name: 123"), "buckets[0].name: must be a string"),
        (
            with_credentials("{access_key_id: A1, secret_access_key: 12345}"),
            "buckets[0].credentials[0].secret_access_key: must be a string",
        ),
        (BACKENDS + "buckets: demo\n", "buckets: must be a list of buckets"),
        (BUCKETS + "backends:\n  - local1\n", "backends[0]: each backend must be a mapping"),
    ],
)
def test_types_are_checked(text: str, expected: str) -> None:
    """A value of the wrong YAML type is reported against its field."""
    assert any(e.startswith(expected) for e in errors(text)), errors(text)


def test_s3_checksum_is_none_unless_crc32_is_asked_for() -> None:
    """An s3 backend sends no trailing checksum by default; ``checksum: crc32`` turns it on,
    and any other value is refused naming the field and the choices."""
    assert parse(with_backend(S3_BACKEND)).backends[0].checksum == "none"
    text = with_backend(S3_BACKEND + "checksum: crc32\n")
    assert parse(text).backends[0].checksum == "crc32"
    error = only_error(with_backend(S3_BACKEND + "checksum: md5\n"))
    assert error.startswith("backends[0].checksum: ") and "crc32" in error, error


@pytest.mark.parametrize("value", ['"true"', "1", "0", '"yes"'])
def test_bool_fields_need_a_real_yaml_bool(value: str) -> None:
    """force_path_style accepts only a YAML boolean, not a string or an int."""
    text = with_backend(S3_BACKEND + f"force_path_style: {value}\n")
    assert only_error(text) == "backends[0].force_path_style: must be true or false"


@pytest.mark.parametrize("value", ["true", "false"])
def test_bool_fields_accept_yaml_bools(value: str) -> None:
    """force_path_style takes true and false."""
    text = with_backend(S3_BACKEND + f"force_path_style: {value}\n")
    assert parse(text).backends[0].force_path_style is (value == "true")


@pytest.mark.parametrize("value", ["true", '"5432"', "5432.0"])
def test_int_fields_reject_bools_strings_and_floats(value: str) -> None:
    """database.port is an integer; a bool, quoted string or float is an error."""
    text = MINIMAL + f"database:\n  driver: postgres\n  database: d\n  port: {value}\n"
    assert only_error(text) == "database.port: must be an integer"


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_database_port_range(port: int) -> None:
    """database.port must be 1..65535."""
    text = MINIMAL + f"database:\n  driver: postgres\n  database: d\n  port: {port}\n"
    assert only_error(text) == "database.port: must be from 1 to 65535"


# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (500, 500),
        ("500", 500),
        ("500B", 500),
        ("10KB", 10_000),
        ("10KiB", 10_240),
        ("5MB", 5_000_000),
        ("5MiB", 5 * 1024**2),
        ("1GB", 1_000_000_000),
        ("1GiB", 1024**3),
        ("2TiB", 2 * 1024**4),
        ("3TB", 3 * 1000**4),
        ("1PiB", 1024**5),
        ("1.5KiB", 1536),
        ("10 GiB", 10 * 1024**3),
        ("10gib", 10 * 1024**3),
    ],
)
def test_sizes_accept_ints_and_units(value: object, expected: int) -> None:
    """Sizes are ints or strings with decimal (KB) or binary (KiB) units."""
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", [-1, "-1", "10XB", "abc", "", True, 1.5, "0.5B", "1.0000001KB", None, "1e9", "GiB"]
)
def test_bad_sizes_are_rejected(value: object) -> None:
    """Negative numbers, unknown units, bools, floats and fractional bytes are not sizes."""
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("value", ["-1", "10XB", "true", "1.5"])
def test_bad_quota_message(value: str) -> None:
    """A bad quota_bytes gets the message that shows the accepted forms."""
    text = with_backend(f"name: b\ntype: local\npath: p\nquota_bytes: {value}\n")
    assert only_error(text) == (
        "backends[0].quota_bytes: must be a non-negative integer or size like '10GiB'"
    )


def test_quota_and_max_object_size_take_units() -> None:
    """quota_bytes and max_object_size accept size strings."""
    config = parse(
        with_backend("name: b\ntype: local\npath: p\nquota_bytes: 10GiB\n")
        + "server:\n  max_object_size: 100MB\n"
    )
    assert config.backends[0].quota_bytes == 10 * GiB
    assert config.server.max_object_size == 100_000_000


def test_max_object_size_must_be_positive() -> None:
    """max_object_size 0 would refuse every PUT, so it is an error."""
    text = MINIMAL + "server:\n  max_object_size: 0\n"
    assert only_error(text) == "server.max_object_size: must be greater than 0"


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "B", "KB", "KiB", "MB", "MiB", "GB", "GiB", "TB", "TiB"]),
)
def test_size_units_multiply(number: int, unit: str) -> None:
    """Every unit is an exact multiplier of the number in front of it."""
    multiplier = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "KiB": 2**10,
        "MB": 10**6,
        "MiB": 2**20,
        "GB": 10**9,
        "GiB": 2**30,
        "TB": 10**12,
        "TiB": 2**40,
    }[unit]
    assert parse_size(f"{number}{unit}") == number * multiplier


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (GiB, "1 GiB"), (2 * 1024**4, "2 TiB")],
)
def test_format_size(size: int, expected: str) -> None:
    """format_size writes sizes in binary units for people."""
    assert format_size(size) == expected


# -- listen -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port", "endpoint"),
    [
        ("127.0.0.1:9000", "127.0.0.1", 9000, "tcp:9000:interface=127.0.0.1"),
        ("0.0.0.0:80", "0.0.0.0", 80, "tcp:80:interface=0.0.0.0"),
        ("[::1]:9000", "::1", 9000, r"tcp6:9000:interface=\:\:1"),
        ("[::]:65535", "::", 65535, r"tcp6:65535:interface=\:\:"),
        ("[2001:db8::5]:1", "2001:db8::5", 1, r"tcp6:1:interface=2001\:db8\:\:5"),
    ],
)
def test_listen_forms(listen: str, host: str, port: int, endpoint: str) -> None:
    """listen takes IPv4 host:port and bracketed IPv6, and yields a strports description."""
    server = parse(MINIMAL + f'server:\n  listen: "{listen}"\n').server
    assert (server.listen, server.listen_host, server.listen_port) == (listen, host, port)
    assert server.listen_endpoint == endpoint


@pytest.mark.parametrize("listen", ["127.0.0.1:9000", "[::1]:9000", "[::]:9000"])
def test_listen_endpoint_is_understood_by_twisted(listen: str) -> None:
    """Twisted's strports parser reads listen_endpoint back to the same interface and port."""
    reactor = MemoryReactor()
    endpoint = serverFromString(reactor, ServerConfig(listen=listen).listen_endpoint)
    endpoint.listen(Factory.forProtocol(Protocol))
    port, _, _, interface = reactor.tcpServers[0]
    assert (interface, port) == split_listen(listen)


@pytest.mark.parametrize(
    "listen",
    [
        "9000",
        ":9000",
        "localhost:9000",
        "::1:9000",
        "[127.0.0.1]:9000",
        "[::1]9000",
        "[::1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "127.0.0.1:",
        "300.1.1.1:80",
    ],
)
def test_bad_listen_is_rejected(listen: str) -> None:
    """listen must be an IP literal and a port from 1 to 65535, IPv6 in brackets."""
    message = only_error(MINIMAL + f'server:\n  listen: "{listen}"\n')
    assert message.startswith(f"server.listen: {listen!r}: ")


def test_log_level_is_checked_with_suggestion() -> None:
    """log_level must be a twisted.logger level; a near miss gets a suggestion."""
    message = only_error(MINIMAL + "server:\n  log_level: warning\n")
    assert message == (
        "server.log_level: must be one of debug, info, warn, error, critical (did you mean warn?)"
    )


# -- buckets and credentials --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abc", "a" * 63, "my-bucket.example", "b1-2", "192.168.1.1x", "0abc"]
)
def test_valid_bucket_names(name: str) -> None:
    """Names that follow the S3 rules are accepted."""
    assert parse(MINIMAL.replace("name: demo", f"name: {name}")).buckets[0].name == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ab", "3 to 63"),
        ("a" * 64, "3 to 63"),
        ("Demo", "lowercase"),
        ("de_mo", "lowercase"),
        ("-demo", "start and end"),
        ("demo-", "start and end"),
        (".demo", "start and end"),
        ("de/mo", "lowercase"),
        ("a..b", "two dots"),
        ("192.168.1.1", "IP address"),
        ("health", "reserved"),
        ("metrics", "reserved"),
        ("admin", "reserved"),
    ],
)
def test_invalid_bucket_names(name: str, reason: str) -> None:
    """Bucket names break S3 rules or collide with our own endpoints."""
    message = only_error(MINIMAL.replace("name: demo", f'name: "{name}"'))
    assert message.startswith(f"buckets[0].name: {name!r} ")
    assert reason in message


def test_bucket_names_are_unique() -> None:
    """Two buckets may not share a name."""
    text = (
        "buckets:\n"
        "  - {name: demo, credentials: [{access_key_id: A1, secret_access_key: s}]}\n"
        "  - {name: demo, credentials: [{access_key_id: A2, secret_access_key: s}]}\n"
    ) + BACKENDS
    assert only_error(text) == "buckets[1].name: 'demo' is already used by buckets[0].name"


def test_bucket_needs_a_name() -> None:
    """A bucket without a name is reported."""
    text = "buckets:\n  - credentials: [{token: t0k3n}]\n" + BACKENDS
    assert only_error(text) == "buckets[0].name: required"


@pytest.mark.parametrize("credentials", ["", "credentials: []", "credentials:"])
def test_bucket_needs_a_credential(credentials: str) -> None:
    """Every bucket needs at least one credential."""
    text = f"buckets:\n  - name: demo\n    {credentials}\n" + BACKENDS
    assert only_error(text) == "buckets[0].credentials: at least one credential is required"


def test_token_credential() -> None:
    """A credential may be a token alone."""
    config = parse(with_credentials("{token: tok-1}"))
    assert config.buckets[0].credentials == (Credential(token="tok-1"),)


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (
            "{access_key_id: A1, secret_access_key: s, token: t}",
            "buckets[0].credentials[0]: give either access_key_id + secret_access_key or token,"
            " not both",
        ),
        (
            "{token: t, secret_access_key: s}",
            "buckets[0].credentials[0]: give either access_key_id + secret_access_key or token,"
            " not both",
        ),
        ("{}", "buckets[0].credentials[0]: needs access_key_id + secret_access_key, or token"),
        (
            "{access_key_id: A1}",
            "buckets[0].credentials[0].secret_access_key: required with access_key_id",
        ),
        (
            "{secret_access_key: s}",
            "buckets[0].credentials[0].access_key_id: required with secret_access_key",
        ),
        (
            "{access_key_id: A1, secret_access_key: ''}",
            "buckets[0].credentials[0].secret_access_key: must not be empty",
        ),
        ("{token: ''}", "buckets[0].credentials[0].token: must not be empty"),
        (
            "{token: 'a b'}",
            "buckets[0].credentials[0].token: must not contain whitespace or control characters",
        ),
        (
            '{access_key_id: A1, secret_access_key: "s\\n"}',
            "buckets[0].credentials[0].secret_access_key: must not contain whitespace or control"
            " characters",
        ),
        (
            "{access_key_id: 'A/1', secret_access_key: s}",
            "buckets[0].credentials[0].access_key_id: must be 1 to 128 letters, digits or"
            " '.', '_', '~', '-'",
        ),
    ],
)
def test_credential_rules(credential: str, expected: str) -> None:
    """A credential is a full key pair or a token, never both or neither, with usable values."""
    assert only_error(with_credentials(credential)) == expected


def test_access_key_ids_unique_across_buckets() -> None:
    """The same access key id in two buckets is an error naming the first use."""
    text = (
        "buckets:\n"
        "  - {name: one, credentials: [{access_key_id: AKIA1, secret_access_key: s1}]}\n"
        "  - {name: two, credentials: [{token: t}, {access_key_id: AKIA1, secret_access_key: s2}]}"
        "\n"
    ) + BACKENDS
    assert only_error(text) == (
        "buckets[1].credentials[1].access_key_id: 'AKIA1' is already used by"
        " buckets[0].credentials[0]"
    )


def test_tokens_unique_across_buckets_without_showing_them() -> None:
    """A token used twice is an error that names both places but not the token."""
    text = (
        "buckets:\n"
        "  - {name: one, credentials: [{token: sekrit-token}]}\n"
        "  - {name: two, credentials: [{token: sekrit-token}]}\n"
    ) + BACKENDS
    message = only_error(text)
    assert message == (
        "buckets[1].credentials[0].token: the same token is already used by"
        " buckets[0].credentials[0]"
    )


# -- backends -----------------------------------------------------------------------------------


def test_s3_backend_fields() -> None:
    """Every s3 field is read into BackendConfig."""
    backend = parse(
        with_backend(S3_BACKEND + "region: eu-west-1\nforce_path_style: false\nquota_bytes: 1TB\n")
    ).backends[0]
    assert backend == BackendConfig(
        name="aws",
        type="s3",
        quota_bytes=10**12,
        endpoint="https://s3.us-east-1.amazonaws.com",
        region="eu-west-1",
        bucket="real-bucket",
        access_key_id="AKIABACKEND",
        secret_access_key="backend-secret",
        force_path_style=False,
    )


def test_backends_required() -> None:
    """At least one backend is required."""
    assert only_error(BUCKETS + "backends: []\n") == "backends: at least one backend is required"


def test_s3_backend_required_fields() -> None:
    """An s3 backend needs endpoint, bucket, access_key_id and secret_access_key."""
    assert errors(with_backend("name: s\ntype: s3\n")) == [
        "backends[0].endpoint: required",
        "backends[0].bucket: required",
        "backends[0].access_key_id: required",
        "backends[0].secret_access_key: required",
    ]


def test_local_backend_needs_path() -> None:
    """A local backend needs a path."""
    assert only_error(with_backend("name: l\ntype: local\n")) == "backends[0].path: required"


def test_backend_needs_name_and_type() -> None:
    """A backend without name and type gets one message for each."""
    assert errors(with_backend("quota_bytes: 1\n")) == [
        "backends[0].name: required",
        "backends[0].type: required",
    ]


def test_backend_type_is_checked_with_suggestion() -> None:
    """An unknown backend type is reported with the nearest known type."""
    message = only_error(with_backend("name: l\ntype: locl\npath: p\n"))
    assert message == "backends[0].type: must be one of s3, local (did you mean local?)"


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "ünï"])
def test_backend_name_characters(name: str) -> None:
    """Backend names are non-empty [A-Za-z0-9_.-]+."""
    message = only_error(with_backend(f'name: "{name}"\ntype: local\npath: p\n'))
    assert message.startswith("backends[0].name: ")


def test_backend_names_unique() -> None:
    """Two backends may not share a name."""
    text = BUCKETS + (
        "backends:\n  - {name: b, type: local, path: p1}\n  - {name: b, type: local, path: p2}\n"
    )
    assert only_error(text) == "backends[1].name: 'b' is already used by backends[0].name"


def test_local_backends_may_not_share_a_directory() -> None:
    """Two local backends on one directory would overwrite each other's objects."""
    text = BUCKETS + (
        "backends:\n"
        "  - {name: a, type: local, path: var/x}\n"
        "  - {name: b, type: local, path: var/x/}\n"
    )
    assert only_error(text) == "backends[1].path: same directory as backends[0]"


def test_s3_backends_may_not_share_a_bucket() -> None:
    """Two s3 backends on one endpoint and bucket would delete each other's copies."""
    one = textwrap.dedent(S3_BACKEND).strip().replace("\n", ", ")
    text = BUCKETS + f"backends:\n  - {{{one}}}\n  - {{{one.replace('name: aws', 'name: b')}}}\n"
    assert only_error(text) == "backends[1].bucket: same endpoint and bucket as backends[0]"


def test_fields_of_the_other_backend_type_are_errors() -> None:
    """An s3 field on a local backend (or path on s3) signals a wrong type."""
    assert errors(with_backend("name: l\ntype: local\npath: p\nendpoint: https://x\n")) == [
        "backends[0].endpoint: not used by type local backends"
    ]
    assert errors(with_backend(S3_BACKEND + "path: p\n")) == [
        "backends[0].path: not used by type s3 backends"
    ]


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("s3.amazonaws.com", "http:// or https://"),
        ("ftp://s3.amazonaws.com", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https://host:99999", "http:// or https://"),
        ("https://key:pw-secret@host", "credentials"),
        ("https://host/?x=1", "query"),
    ],
)
def test_s3_endpoint_must_be_http_url(endpoint: str, reason: str) -> None:
    """endpoint is an http(s) URL without credentials; the value is never echoed."""
    message = only_error(
        with_backend(S3_BACKEND.replace("https://s3.us-east-1.amazonaws.com", endpoint))
    )
    assert message.startswith("backends[0].endpoint: ")
    assert reason in message
    assert "pw-secret" not in message


def test_s3_endpoint_may_be_plain_http_with_port() -> None:
    """MinIO on http with a port is a valid endpoint."""
    text = with_backend(S3_BACKEND.replace("https://s3.us-east-1.amazonaws.com", "http://m:9000"))
    assert parse(text).backends[0].endpoint == "http://m:9000"


def test_s3_backend_bucket_and_region_values() -> None:
    """The real bucket may not contain '/' and region may not be empty."""
    text = with_backend(S3_BACKEND.replace("real-bucket", "a/b") + 'region: ""\n')
    assert errors(text) == [
        "backends[0].region: must be a non-empty word, e.g. us-east-1",
        "backends[0].bucket: must be a non-empty bucket name without '/'",
    ]


# -- routing, database, admin -----------------------------------------------------------------


def test_routing_strategy_spread() -> None:
    """routing_strategy accepts spread."""
    assert parse(MINIMAL + "routing_strategy: spread\n").routing_strategy == "spread"


def test_routing_strategy_is_checked_with_suggestion() -> None:
    """An unknown routing strategy is reported with the nearest one."""
    assert only_error(MINIMAL + "routing_strategy: sprad\n") == (
        "routing_strategy: must be one of pack, spread (did you mean spread?)"
    )


def test_postgres_database() -> None:
    """A postgres database section is read in full."""
    config = parse(
        MINIMAL + "database:\n  driver: postgres\n  host: db.internal\n  port: 6432\n"
        "  database: meta\n  user: s3o\n  password: pw\n  sslmode: verify-full\n"
    )
    assert config.database == DatabaseConfig(
        driver="postgres",
        host="db.internal",
        port=6432,
        database="meta",
        user="s3o",
        password="pw",
        sslmode="verify-full",
    )


def test_postgres_needs_database_name() -> None:
    """driver postgres needs database."""
    text = MINIMAL + "database:\n  driver: postgres\n"
    assert only_error(text) == "database.database: required with driver postgres"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("driver: mysql", "database.driver: must be one of sqlite, postgres"),
        (
            "driver: postgres\n  database: d\n  sslmode: on",
            "database.sslmode: must be one of disable, allow, prefer, require, verify-ca,"
            " verify-full",
        ),
        ("driver: postgres\n  database: d\n  path: x.db", "database.path: not used with driver"),
        ("host: db", "database.host: not used with driver sqlite"),
        ("path: ''", "database.path: must not be empty"),
    ],
)
def test_database_rules(section: str, expected: str) -> None:
    """Driver, sslmode and driver-specific fields are checked."""
    assert only_error(MINIMAL + f"database:\n  {section}\n").startswith(expected)


def test_postgres_conninfo_quotes_values() -> None:
    """The conninfo string survives quotes, backslashes and spaces in values."""
    database = DatabaseConfig(
        driver="postgres",
        host="db host",
        port=6432,
        database="me'ta",
        user="u\\ser",
        password="p w'd\\",
        sslmode="require",
    )
    assert psycopg.conninfo.conninfo_to_dict(database.postgres_conninfo()) == {
        "host": "db host",
        "port": "6432",
        "dbname": "me'ta",
        "user": "u\\ser",
        "password": "p w'd\\",
        "sslmode": "require",
    }


def test_postgres_conninfo_leaves_out_empty_user_and_password() -> None:
    """Empty user and password are left to libpq's defaults (.pgpass, PGPASSWORD)."""
    conninfo = DatabaseConfig(driver="postgres", database="m").postgres_conninfo()
    assert psycopg.conninfo.conninfo_to_dict(conninfo) == {
        "host": "127.0.0.1",
        "port": "5432",
        "dbname": "m",
        "sslmode": "prefer",
    }


def test_admin_token_enables_admin_api() -> None:
    """A non-empty admin token turns the admin API on."""
    admin = parse(MINIMAL + "admin:\n  token: adm1n-t0ken\n").admin
    assert admin.token == "adm1n-t0ken"
    assert admin.enabled


def test_admin_token_without_whitespace() -> None:
    """An admin token with whitespace (e.g. a trailing newline from a file) is rejected."""
    text = MINIMAL + 'admin:\n  token: "tok\\n"\n'
    assert only_error(text) == "admin.token: must not contain whitespace or control characters"


# -- ${VAR} expansion -------------------------------------------------------------------------


def test_env_set() -> None:
    """${VAR} is replaced by the variable's value."""
    config = parse(MINIMAL + "admin:\n  token: ${TOK}\n", {"TOK": "from-env"})
    assert config.admin.token == "from-env"


def test_env_inside_text() -> None:
    """${VAR} can be part of a longer string."""
    text = MINIMAL.replace("var/b1", "${BASE}/b1")
    assert parse(text, {"BASE": "/srv"}).backends[0].path == "/srv/b1"


def test_env_unset_is_an_error_naming_field_and_variable() -> None:
    """An unset ${VAR} without default names the field and the variable."""
    message = only_error(MINIMAL + "admin:\n  token: ${NOPE}\n")
    assert message == "admin.token: environment variable NOPE is not set"


def test_env_set_but_empty_without_default_is_empty() -> None:
    """${VAR} set to the empty string expands to the empty string."""
    assert parse(MINIMAL + "admin:\n  token: ${TOK}\n", {"TOK": ""}).admin.token == ""


@pytest.mark.parametrize(
    ("environ", "expected"), [({}, "dflt"), ({"T": ""}, "dflt"), ({"T": "v"}, "v")]
)
def test_env_default(environ: dict[str, str], expected: str) -> None:
    """${VAR:-default} uses the default when VAR is unset or empty."""
    assert parse(MINIMAL + "admin:\n  token: ${T:-dflt}\n", environ).admin.token == expected


def test_env_empty_default() -> None:
    """${VAR:-} is the empty string when VAR is unset (the admin API stays off)."""
    assert parse(MINIMAL + "admin:\n  token: ${T:-}\n").admin.token == ""


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("a$$b", "a$b"),
        ("$${T}", "${T}"),
        ("$$$$", "$$"),
        ("a$b", "a$b"),
        ("end$", "end$"),
        ("${U:-x$$y}", "x$y"),
        ("${T}$${T}", "v${T}"),
    ],
)
def test_env_dollar_escape(written: str, expected: str) -> None:
    """$$ is a literal $, and a $ not starting ${ or $$ stays as it is."""
    text = with_credentials(f"{{access_key_id: A1, secret_access_key: '{written}'}}")
    secret = parse(text, {"T": "v"}).buckets[0].credentials[0].secret_access_key
    assert secret == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("${T", "unterminated '${'"),
        ("${}", "invalid reference"),
        ("${1X}", "invalid reference"),
        ("${T:x}", "invalid reference"),
        ("${T-x}", "invalid reference"),
        ("${T:-${U}}", "invalid reference"),
    ],
)
def test_env_bad_references(written: str, expected: str) -> None:
    """A malformed reference is reported, without quoting the value."""
    message = only_error(MINIMAL + f"admin:\n  token: '{written}'\n")
    assert message.startswith(f"admin.token: {expected}")
    assert written not in message


def test_env_values_are_not_parsed_as_yaml() -> None:
    """An expanded value with YAML syntax in it stays one literal string."""
    text = MINIMAL.replace("var/b1", "${P}")
    tricky = "x # not a comment\nkey: [1, 2]\n- item: {a: b}"
    for value in (tricky, "true", "123", "null", "~", "'quoted'"):
        assert parse(text, {"P": value}).backends[0].path == value


def test_env_in_number_and_bool_fields() -> None:
    """A ${VAR} in an int, bool or size field is read strictly from the expanded text."""
    text = (
        with_backend(S3_BACKEND + "force_path_style: ${FPS}\nquota_bytes: ${Q}\n")
        + "database:\n  driver: postgres\n  database: d\n  port: ${PORT:-5432}\n"
    )
    config = parse(text, {"FPS": "False", "Q": "10GiB"})
    assert config.backends[0].force_path_style is False
    assert config.backends[0].quota_bytes == 10 * GiB
    assert config.database.port == 5432
    assert parse(text, {"FPS": "true", "Q": "1", "PORT": "6432"}).database.port == 6432


def test_env_bad_number_is_a_type_error() -> None:
    """A ${VAR} in an int field that expands to a non-number is a type error."""
    text = MINIMAL + "database:\n  driver: postgres\n  database: d\n  port: ${PORT}\n"
    assert only_error(text, {"PORT": "54x"}) == "database.port: must be an integer"


def test_env_not_expanded_in_keys() -> None:
    """Keys are never expanded."""
    assert errors(MINIMAL + "${K}: 1\n", {"K": "routing_strategy"}) == ["${K}: unknown key"]


@given(st.text().filter(lambda s: "$" not in s))
def test_text_without_dollar_is_unchanged(text: str) -> None:
    """A value without '$' passes through expansion unchanged."""
    from s3orch.config import _expand

    assert _expand(text, {}) == (text, [])


@given(st.text())
def test_doubling_every_dollar_gives_the_literal_text(text: str) -> None:
    """Escaping every $ as $$ always yields the original text, whatever it contains."""
    from s3orch.config import _expand

    assert _expand(text.replace("$", "$$"), {"T": "v"}) == (text, [])


# -- secrets ----------------------------------------------------------------------------------


SECRETS = ("backend-s3cr3t", "bucket-s3cr3t", "t0ken-s3cr3t", "pg-s3cr3t", "adm1n-s3cr3t")


def full_config_text() -> str:
    return textwrap.dedent(
        """
        database:
          driver: postgres
          database: meta
          password: pg-s3cr3t
        backends:
          - name: aws
            type: s3
            endpoint: https://s3.example
            bucket: real
            access_key_id: AKIABACKEND
            secret_access_key: backend-s3cr3t
        buckets:
          - name: demo
            credentials:
              - access_key_id: AKIADEMO
                secret_access_key: bucket-s3cr3t
              - token: t0ken-s3cr3t
        admin:
          token: adm1n-s3cr3t
        """
    )


def test_secrets_absent_from_repr() -> None:
    """repr() of the loaded config shows no secret, only non-secret identifiers."""
    config = parse(full_config_text())
    text = repr(config)
    for secret in SECRETS:
        assert secret not in text
    assert "AKIADEMO" in text
    assert "AKIABACKEND" in text


def test_secrets_absent_from_errors() -> None:
    """Errors about secret fields never quote the secret."""
    text = """
        database:
          driver: postgres
          password: pg-s3cr3t
          port: true
        backends:
          - name: aws
            type: s3
            endpoint: https://user:backend-s3cr3t@s3.example
            bucket: real
            access_key_id: AKIABACKEND
            secret_access_key: "backend-s3cr3t "
        buckets:
          - name: demo
            credentials:
              - access_key_id: AKIADEMO
                secret_access_key: "bucket-s3cr3t\t"
                token: t0ken-s3cr3t
          - name: two
            credentials:
              - token: t0ken-s3cr3t
              - token: t0ken-s3cr3t
        admin:
          token: adm1n-s3cr3t x
        """
    with pytest.raises(ConfigError) as caught:
        parse(text)
    found = caught.value.errors
    assert len(found) == 9, found
    everything = "\n".join(found) + str(caught.value) + repr(caught.value)
    for secret in SECRETS:
        assert secret not in everything


def test_secret_with_yaml_special_characters() -> None:
    """A quoted secret holding ':' and '#' is read verbatim."""
    text = with_credentials("{access_key_id: A1, secret_access_key: 'a:b#c'}")
    assert parse(text).buckets[0].credentials[0].secret_access_key == "a:b#c"


# -- load_config and the shipped files ----------------------------------------------------------


def test_load_config_reads_file_and_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_config reads a file and expands from os.environ by default."""
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + "admin:\n  token: ${S3ORCH_TEST_TOKEN}\n", encoding="utf-8")
    monkeypatch.setenv("S3ORCH_TEST_TOKEN", "from-os-environ")
    assert load_config(path).admin.token == "from-os-environ"
    assert load_config(str(path), {"S3ORCH_TEST_TOKEN": "given"}).admin.token == "given"


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_load_config_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"admin:\n  token: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.errors == [f"{path}: not UTF-8 text"]


EXAMPLE_ENV = {
    "S3ORCH_AWS_ACCESS_KEY_ID": "AKIAAWS",
    "S3ORCH_AWS_SECRET_ACCESS_KEY": "aws-secret",
    "S3ORCH_B2_KEY_ID": "b2-key-id",
    "S3ORCH_B2_APPLICATION_KEY": "b2-secret",
    "S3ORCH_MINIO_ACCESS_KEY": "minio-key",
    "S3ORCH_MINIO_SECRET_KEY": "minio-secret",
    "S3ORCH_PHOTOS_SECRET": "photos-secret",
    "S3ORCH_BACKUPS_SECRET": "backups-secret",
    "S3ORCH_BACKUPS_TOKEN": "backups-token",
    "S3ORCH_PG_PASSWORD": "pg-password",
    "ENCRYPTION_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "VAULT_TOKEN": "vault-token",
}


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    """Every conf/*.yaml loads with the environment variables its comments name."""
    load_config(path, EXAMPLE_ENV)


def test_shipped_configs_exist() -> None:
    """The default and both examples are shipped."""
    names = {p.name for p in CONF_DIR.glob("*.yaml")}
    assert {"s3orch.yaml", "multi-backend-s3.example.yaml", "postgres.example.yaml"} <= names


def test_default_config_matches_the_readme() -> None:
    """conf/s3orch.yaml is the zero-setup default the README starts with."""
    config = load_config(CONF_DIR / "s3orch.yaml", {})
    assert config.server.listen == "127.0.0.1:9000"
    assert config.server.listen_endpoint == "tcp:9000:interface=127.0.0.1"
    assert config.database == DatabaseConfig(driver="sqlite", path="var/s3orch.db")
    assert config.routing_strategy == "pack"
    assert config.backends == (
        BackendConfig(name="local1", type="local", path="var/backends/local1", quota_bytes=GiB),
        BackendConfig(name="local2", type="local", path="var/backends/local2", quota_bytes=GiB),
    )
    assert config.buckets == (
        BucketConfig("demo", (Credential("AKIAS3ORCHDEMO000001", "s3orch-demo-secret-change-me"),)),
    )
    assert not config.admin.enabled
    assert load_config(CONF_DIR / "s3orch.yaml", {"S3ORCH_ADMIN_TOKEN": "t"}).admin.enabled


def test_multi_backend_example_shape() -> None:
    """The multi-backend example has three s3 backends, spread routing, and a token bucket."""
    config = load_config(CONF_DIR / "multi-backend-s3.example.yaml", EXAMPLE_ENV)
    assert [b.type for b in config.backends] == ["s3", "s3", "s3"]
    assert all(b.quota_bytes > 0 for b in config.backends)
    assert config.routing_strategy == "spread"
    assert len(config.buckets) == 2
    assert any(c.token == "backups-token" for b in config.buckets for c in b.credentials)


def test_postgres_example_uses_postgres() -> None:
    """The postgres example keeps its metadata in PostgreSQL, password from the environment."""
    config = load_config(CONF_DIR / "postgres.example.yaml", EXAMPLE_ENV)
    assert config.database.driver == "postgres"
    assert config.database.password == "pg-password"
    assert config.database.port == 5432


# -- encryption ---------------------------------------------------------------------------------

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
KEY_1_TEXT = base64.b64encode(KEY_1).decode()
KEY_2_TEXT = base64.b64encode(KEY_2).decode()


def with_encryption(body: str) -> str:
    """MINIMAL plus an encryption section made of ``body`` (YAML mapping lines)."""
    return MINIMAL + "encryption:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def write_key_file(tmp_path: Path, data: bytes = KEY_1, mode: int = 0o600) -> str:
    path = tmp_path / "master.key"
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_encryption_is_off_by_default() -> None:
    """Without an encryption section, encryption is disabled with a 64 KiB chunk size."""
    config = parse(MINIMAL)
    assert config.encryption == EncryptionConfig()
    assert not config.encryption.enabled
    assert config.encryption.chunk_size == 65536
    assert config.encryption.primary_key_id is None


def test_encryption_with_inline_keys_from_the_environment() -> None:
    """master_key and previous_keys are base64 from ${VAR}s, decoded to 32-byte keys."""
    text = with_encryption(
        """
        enabled: true
        chunk_size: 64KiB
        master_key: "${ENCRYPTION_KEY}"
        previous_keys: ["${OLD_KEY}"]
        """
    )
    encryption = parse(text, {"ENCRYPTION_KEY": KEY_1_TEXT, "OLD_KEY": KEY_2_TEXT}).encryption
    assert encryption.enabled
    assert encryption.chunk_size == 65536
    assert encryption.master_key == KEY_1
    assert encryption.previous_keys == (KEY_2,)
    assert encryption.primary_key_id == "config-0"
    assert encryption.previous_key_ids == ("config-1",)


def test_encryption_with_a_key_file(tmp_path: Path) -> None:
    """master_key_file names a 0600 file of 32 raw bytes; its id is file-0."""
    path = write_key_file(tmp_path)
    encryption = parse(with_encryption(f"enabled: true\nmaster_key_file: {path}\n")).encryption
    assert encryption.master_key_file == path
    assert encryption.master_key is None
    assert encryption.primary_key_id == "file-0"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "enabled: true",
            "encryption.enabled: needs a key: master_key, master_key_file, vault or keyring",
        ),
        ("master_key: not-base64!", "encryption.master_key: is not valid base64"),
        (
            f"master_key: {base64.b64encode(bytes(16)).decode()}",
            "encryption.master_key: decodes to 16 bytes",
        ),
        (
            f"previous_keys: [{KEY_2_TEXT}]",
            "encryption.previous_keys: decrypt-only keys need a primary key",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: {KEY_2_TEXT}",
            "encryption.previous_keys: must be a list",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: [{KEY_2_TEXT}, 12]",
            "encryption.previous_keys[1]: must be a string",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: [{KEY_2_TEXT}, short]",
            "encryption.previous_keys[1]: is not valid base64",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: ['']",
            "encryption.previous_keys[0]: must not be empty",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: [{KEY_1_TEXT}]",
            "encryption.previous_keys[0]: is the same key as encryption.master_key",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nprevious_keys: ['${{NOPE}}']",
            "encryption.previous_keys[0]: environment variable NOPE is not set",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nchunk_size: 65535",
            "encryption.chunk_size: must be a power of two from 4KiB (4096) to 1MiB",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nchunk_size: 2048",
            "encryption.chunk_size: must be a power of two",
        ),
        (
            f"master_key: {KEY_1_TEXT}\nchunk_size: 2MiB",
            "encryption.chunk_size: must be a power of two",
        ),
        (f"master_key: {KEY_1_TEXT}\nenabled: 'yes'", "encryption.enabled: must be true or false"),
        (
            f"master_key: {KEY_1_TEXT}\nmaster_keys: []",
            "encryption.master_keys: unknown key (did you mean master_key?)",
        ),
        (
            f"master_key: {KEY_1_TEXT}\ngenerate_key_file: true",
            "encryption.generate_key_file: only used with master_key_file",
        ),
    ],
)
def test_encryption_errors_name_the_field(body: str, expected: str) -> None:
    """Each bad encryption setting is one error naming its field, never quoting a key."""
    error = only_error(with_encryption(body))
    assert error.startswith(expected), error
    for key in (KEY_1_TEXT, KEY_2_TEXT, "not-base64!"):
        assert key not in error


def test_two_key_sources_are_an_error(tmp_path: Path) -> None:
    """master_key, master_key_file and vault are mutually exclusive."""
    path = write_key_file(tmp_path, KEY_2)
    error = only_error(with_encryption(f"master_key: {KEY_1_TEXT}\nmaster_key_file: {path}\n"))
    assert error == (
        "encryption: give only one of master_key, master_key_file or vault, "
        "not master_key and master_key_file"
    )
    vault = "vault: {address: 'https://vault:8200', token: t, key_name: k}\n"
    error = only_error(with_encryption(f"master_key: {KEY_1_TEXT}\n{vault}"))
    assert error.endswith("not master_key and vault")


def test_empty_master_key_means_none(tmp_path: Path) -> None:
    """master_key: "${KEY:-}" with KEY unset means no inline key (as in the Go system)."""
    assert parse(with_encryption('master_key: "${KEY:-}"\n')).encryption.master_key is None
    assert only_error(with_encryption('enabled: true\nmaster_key: "${KEY:-}"\n')).startswith(
        "encryption.enabled: needs a key"
    )


def test_unset_key_variable_is_one_error() -> None:
    """An unset ${VAR} for master_key reports the variable, not also a missing key."""
    error = only_error(with_encryption('enabled: true\nmaster_key: "${ENCRYPTION_KEY}"\n'))
    assert error == "encryption.master_key: environment variable ENCRYPTION_KEY is not set"


@pytest.mark.parametrize(
    ("data", "mode", "reason"),
    [
        (KEY_1, 0o644, "is accessible by group or others (mode 0644)"),
        (KEY_1, 0o660, "is accessible by group or others (mode 0660)"),
        (KEY_1[:16], 0o600, "holds 16 bytes"),
        (KEY_1_TEXT.encode() + b"\n", 0o600, "looks like base64 text"),
    ],
)
def test_bad_key_files_are_errors(tmp_path: Path, data: bytes, mode: int, reason: str) -> None:
    """A key file readable by others or of the wrong size stops the load."""
    path = write_key_file(tmp_path, data, mode)
    error = only_error(with_encryption(f"enabled: true\nmaster_key_file: {path}\n"))
    assert error.startswith(f"encryption.master_key_file: {path}: ")
    assert reason in error
    assert KEY_1_TEXT not in error


def test_missing_key_file_is_an_error_unless_it_will_be_generated(tmp_path: Path) -> None:
    """A missing key file fails, except with generate_key_file (the service creates it)."""
    path = str(tmp_path / "absent.key")
    error = only_error(with_encryption(f"enabled: true\nmaster_key_file: {path}\n"))
    assert error == f"encryption.master_key_file: {path}: does not exist"
    text = with_encryption(f"enabled: true\nmaster_key_file: {path}\ngenerate_key_file: true\n")
    encryption = parse(text).encryption
    assert encryption.generate_key_file
    assert not os.path.exists(path)
    # When the file does exist, it is checked like any other.
    bad = write_key_file(tmp_path, KEY_1, 0o644)
    text = with_encryption(f"enabled: true\nmaster_key_file: {bad}\ngenerate_key_file: true\n")
    assert "accessible by group or others" in only_error(text)


def test_file_key_repeated_in_previous_keys_is_an_error(tmp_path: Path) -> None:
    """The key file's key listed again in previous_keys is reported, without the key."""
    path = write_key_file(tmp_path)
    error = only_error(
        with_encryption(f"master_key_file: {path}\nprevious_keys: [{KEY_2_TEXT}, {KEY_1_TEXT}]\n")
    )
    assert error == "encryption.previous_keys[1]: is the same key as encryption.master_key_file"


def test_encryption_off_keeps_keys_for_reading() -> None:
    """With enabled false, configured keys are still validated and kept (to read old objects)."""
    encryption = parse(with_encryption(f"enabled: false\nmaster_key: {KEY_1_TEXT}\n")).encryption
    assert not encryption.enabled
    assert encryption.master_key == KEY_1


def test_vault_block_shape() -> None:
    """A vault block is accepted and read with its defaults."""
    text = with_encryption(
        """
        enabled: true
        vault:
          address: "https://vault:8200"
          token: "${VAULT_TOKEN}"
          key_name: s3-orchestrator
          ca_cert: /etc/s3orch/vault-ca.pem
          renew_interval: 90s
        previous_keys: ["${OLD_KEY}"]
        """
    )
    encryption = parse(text, {"VAULT_TOKEN": "hvs.s3cr3t", "OLD_KEY": KEY_2_TEXT}).encryption
    assert encryption.vault == VaultConfig(
        address="https://vault:8200",
        key_name="s3-orchestrator",
        token="hvs.s3cr3t",
        ca_cert="/etc/s3orch/vault-ca.pem",
        renew_interval=90.0,
    )
    assert encryption.vault.mount_path == "transit"
    assert (encryption.vault.dek_cache_ttl, encryption.vault.dek_cache_size) == (300.0, 10_000)
    assert encryption.primary_key_id == "s3-orchestrator"
    assert "hvs.s3cr3t" not in repr(encryption)


def test_vault_dek_cache_settings() -> None:
    """dek_cache_ttl takes a duration; dek_cache_size 0 turns the cache off."""
    vault = "{address: 'https://v', key_name: k, token: t, dek_cache_ttl: 30s, dek_cache_size: 0}"
    config = parse(with_encryption(f"enabled: true\nvault: {vault}\n")).encryption.vault
    assert config is not None
    assert (config.dek_cache_ttl, config.dek_cache_size) == (30.0, 0)


@pytest.mark.parametrize(
    ("vault", "expected"),
    [
        ("{token: t, key_name: k}", ["encryption.vault.address: required"]),
        (
            "{address: 'ftp://v', token: t, key_name: k}",
            ["encryption.vault.address: must be an http:// or https:// URL"],
        ),
        (
            "{address: 'https://u:p@v', token: t, key_name: k}",
            ["encryption.vault.address: must not contain credentials"],
        ),
        ("{address: 'https://v', token: t}", ["encryption.vault.key_name: required"]),
        (
            "{address: 'https://v', token: t, key_name: 'a/b'}",
            ["encryption.vault.key_name: must be a Transit key name"],
        ),
        ("{address: 'https://v', key_name: k}", ["encryption.vault: needs token or token_file"]),
        (
            "{address: 'https://v', key_name: k, token: t, token_file: /f}",
            ["encryption.vault: give either token or token_file, not both"],
        ),
        (
            "{address: 'https://v', key_name: k, token: 't x'}",
            ["encryption.vault.token: must not contain whitespace"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, renew_interval: soon}",
            ["encryption.vault.renew_interval: must be a duration"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, renew_interval: 0s}",
            ["encryption.vault.renew_interval: must be greater than 0"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, mount_path: ''}",
            ["encryption.vault.mount_path: must be a non-empty path"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, role: x}",
            ["encryption.vault.role: unknown key"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, rewrap_batch_size: 0}",
            ["encryption.vault.rewrap_batch_size: must be"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, dek_cache_ttl: 0s}",
            ["encryption.vault.dek_cache_ttl: must be greater than 0"],
        ),
        (
            "{address: 'https://v', key_name: k, token: t, dek_cache_size: -1}",
            ["encryption.vault.dek_cache_size: must be"],
        ),
        ("nope", ["encryption.vault: must be a mapping"]),
    ],
)
def test_vault_block_errors(vault: str, expected: list[str]) -> None:
    """Each malformed vault block field is reported by its path."""
    found = errors(with_encryption(f"enabled: true\nvault: {vault}\n"))
    assert len(found) == len(expected), found
    for error, prefix in zip(found, expected, strict=True):
        assert error.startswith(prefix), error


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), (1.5, 1.5), ("5m", 300.0), ("90s", 90.0), ("1h30m", 5400.0), ("250ms", 0.25)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Durations are seconds or Go-style strings."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5", "m5", "5 m", "5d", True, None, "1h 30m"])
def test_parse_duration_rejects(value: object) -> None:
    """Anything else is not a duration."""
    with pytest.raises(ValueError):
        parse_duration(value)


def test_encryption_keys_absent_from_repr_and_errors(tmp_path: Path) -> None:
    """Neither key text nor key bytes appear in repr() or in any error message."""
    text = with_encryption(
        f"enabled: true\nmaster_key: {KEY_1_TEXT}\nprevious_keys: [{KEY_2_TEXT}]\n"
    )
    config = parse(text)
    shown = repr(config)
    for secret in (KEY_1_TEXT, KEY_2_TEXT, repr(KEY_1), repr(KEY_2), KEY_1.hex()):
        assert secret not in shown
    bad_key = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(ConfigError) as caught:
        parse(with_encryption(f"master_key: {bad_key}\nprevious_keys: ['{bad_key}x']\n"))
    everything = str(caught.value) + repr(caught.value)
    assert bad_key not in everything
    assert len(caught.value.errors) == 2


def test_validate_summary_describes_encryption_without_keys(tmp_path: Path) -> None:
    """`s3orch validate` prints the key ids and sources, never the keys."""
    off = summarise(parse(MINIMAL), "c.yaml", "/")
    assert "encryption: off" in off
    text = with_encryption(
        f"enabled: true\nmaster_key: {KEY_1_TEXT}\nprevious_keys: [{KEY_2_TEXT}]\n"
    )
    lines = "\n".join(summarise(parse(text), "c.yaml", "/"))
    assert (
        "encryption: on, chunk 64 KiB, new objects use key config-0 (master_key); "
        "decrypt-only keys: config-1"
    ) in lines
    assert KEY_1_TEXT not in lines and KEY_2_TEXT not in lines
    path = str(tmp_path / "m.key")
    text = with_encryption(f"enabled: false\nmaster_key_file: {path}\ngenerate_key_file: true\n")
    lines = "\n".join(summarise(parse(text), "c.yaml", "/"))
    assert (
        f"encryption: off for new objects; existing ones decrypt with key file-0 "
        f"({path} (created on first start if missing)); decrypt-only keys: none"
    ) in lines
