"""An in-process Vault Transit server for fast tests: OpenBao's answers, without the process.

``FakeVault`` is a twisted.web resource. Serve it with treq's ``StubTreq`` and a
``VaultTransitKeys`` talks to it in memory, on a ``Clock``. It imitates what s3orch uses of
OpenBao 2.7.2 (the shapes and status codes of reference/vault.md, checked against the real
server):

- Transit ``encrypt``, ``decrypt`` and ``rewrap`` (single and ``batch_input``), ``keys/<name>``
  (create, read, delete), ``keys/<name>/rotate`` and ``keys/<name>/config``, with real
  AES-256-GCM under versioned keys and ``vault:v<N>:`` ciphertexts;
- tokens: ``auth/token/lookup-self``, ``renew-self``, ``create`` and ``revoke``, TTLs counted
  on the injected clock;
- ``sys/mounts/<path>`` (Transit only), ``sys/namespaces/<name>`` with ``X-Vault-Namespace``,
  ``sys/seal``, ``sys/unseal``, ``sys/health``.

The order of checks is OpenBao's: JSON parsing and its complexity limit, then the seal (503
``Vault is sealed`` on every authenticated path), the namespace (404), the token (403
``permission denied``, never 401), the route (404, or 405 for a wrong method), then the
endpoint. Every token may do everything, as the root policy allows: so encrypting to a missing
key creates it, as it does in OpenBao with a token that has ``create``.

Not imitated: policies and capabilities, derived, convergent and non-AES keys, ``datakey``,
``trim``, key listing, path-prefixed namespaces, the dev server's other mounts (``secret/``,
``cubbyhole/``), request size limits. tests/integration/test_vault_contract.py runs one suite
against this fake and a real OpenBao, so what is imitated cannot drift.

Fault injection: answers given to the constructor, or appended to ``script``, are returned
first, one per HTTP request, whatever the request. ``requests`` records every HTTP request.
``CannedVault`` answers with fixed replies instead of Transit's, for tests of the client's
plumbing only.

The helpers ``request``, ``call``, ``create_key``, ``rotate_key``, ``seal`` and the like match
``s3orch.testing.openbao.OpenBaoServer``'s, so a test can set up either server the same way.
They go through the same endpoints as HTTP requests, without the script and without being
recorded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import string
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast
from urllib.parse import unquote

from attrs import define, field
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from s3orch.testing.openbao import TransitAdmin

Json = dict[str, Any]
T = TypeVar("T")

DEFAULT_ROOT_TOKEN: Final = "s3orch-test-root-token"
DEFAULT_ADDRESS: Final = "http://vault.test:8200"
DEFAULT_MAX_TTL: Final = 768 * 3600
"""OpenBao's system max TTL (32 days): no token lives longer."""
MAX_JSON_STRINGS: Final = 1000
"""OpenBao >= 2.4 refuses a request with more strings (keys and values) than this."""
VERSION: Final = "2.7.2"


def run_stubbed(
    coro: Coroutine[Any, Any, T],
    flush: Callable[[], object],
    clock: Clock,
    step: float,
    rounds: int,
) -> T:
    """Run ``coro`` (a client of a Vault behind a ``treq.testing.StubTreq``) to its end:
    ``flush`` the stub's in-memory connections and advance ``clock`` by ``step``, at most
    ``rounds`` times."""
    d = Deferred.fromCoroutine(coro)
    for _ in range(rounds):
        flush()
        if d.called:
            break
        clock.advance(step)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the call never finished"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return cast(T, results[0])


_NONCE_SIZE: Final = 12
_KEY_NAME: Final = r"\w(?:[\w.-]*\w)?"
_KEY_PATH: Final = re.compile(rf"keys/(?P<name>{_KEY_NAME})(?:/(?P<op>rotate|config))?")
_OPERATION_PATH: Final = re.compile(rf"(?P<op>encrypt|decrypt|rewrap)/(?P<name>{_KEY_NAME})")
_GO_INT: Final = re.compile(r"[+-]?[0-9]+")
_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|h|m|s)")
_DURATION_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_B64_ALPHABET: Final = {
    c: i
    for i, c in enumerate(
        (string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/").encode()
    )
}
_WRONG_METHOD: Final = "1 error occurred:\n\t* unsupported operation\n\n"
_UNSUPPORTED_PATH: Final = "1 error occurred:\n\t* unsupported path\n\n"

_KNOWN_PARAMETERS: Final = {
    "encrypt": {
        "plaintext",
        "context",
        "key_version",
        "nonce",
        "type",
        "convergent_encryption",
        "batch_input",
        "associated_data",
        "partial_failure_response_code",
    },
    "decrypt": {
        "ciphertext",
        "context",
        "nonce",
        "batch_input",
        "associated_data",
        "partial_failure_response_code",
    },
    "rewrap": {"ciphertext", "context", "key_version", "nonce", "batch_input"},
    "create": {
        "type",
        "derived",
        "convergent_encryption",
        "exportable",
        "allow_plaintext_backup",
        "auto_rotate_period",
        "key_size",
    },
    "config": {
        "min_decryption_version",
        "min_encryption_version",
        "deletion_allowed",
        "exportable",
        "allow_plaintext_backup",
        "auto_rotate_period",
    },
    "rotate": {"managed_key_name", "managed_key_id"},
}


class _Refusal(Exception):
    """An error answer: ``{"errors": [...]}`` with ``status``, or a whole ``body``."""

    def __init__(self, status: int, *errors: str, body: Json | None = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.body: Json = body if body is not None else {"errors": list(errors)}


class _ItemError(Exception):
    """What Transit says about one item (one ciphertext or plaintext); 400 for a single one."""


class _Base64Error(_ItemError):
    """Go's base64 error, with the offset Go reports."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"illegal base64 data at input byte {offset}")


# -- helpers ---------------------------------------------------------------------------------


def go_b64decode(text: str) -> bytes:
    """Decode standard, padded base64 as Go's ``base64.StdEncoding`` does: strict padding,
    CR and LF skipped, and on error the same offset (``_Base64Error``)."""
    src = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    si = 0
    while True:
        quantum = [0, 0, 0, 0]
        length = 4
        j = 0
        while j < 4:
            if si == len(src):
                if j == 0:
                    return bytes(out)
                raise _Base64Error(si - j)
            char = src[si]
            si += 1
            value = _B64_ALPHABET.get(char)
            if value is not None:
                quantum[j] = value
                j += 1
                continue
            if char in b"\r\n":
                continue
            if char != ord("="):
                raise _Base64Error(si - 1)
            if j in (0, 1):
                raise _Base64Error(si - 1)
            if j == 2:
                while si < len(src) and src[si] in b"\r\n":
                    si += 1
                if si == len(src):
                    raise _Base64Error(len(src))
                if src[si] != ord("="):
                    raise _Base64Error(si - 1)
                si += 1
            while si < len(src) and src[si] in b"\r\n":
                si += 1
            if si < len(src):
                raise _Base64Error(si)
            length = j
            break
        bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += bits.to_bytes(3, "big")[: length - 1]
        if length < 4:
            return bytes(out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _count_strings(value: object) -> int:
    """Keys and string values in a JSON document, as OpenBao counts them."""
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        return sum(1 + _count_strings(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_strings(v) for v in value)
    return 0


def _text(value: object, name: str = "") -> str:
    """A parameter as a string, converting scalars the way OpenBao's weak decoding does."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, int | float | str):
        return str(value)
    raise _Refusal(
        400,
        f"Field validation failed: error converting input for field \"{name}\": '' expected "
        f"type 'string', got unconvertible type '{_go_type(value)}'",
    )


def _integer(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _GO_INT.fullmatch(value):
        return int(value)
    raise _Refusal(
        400,
        f"error converting input for field \"{name}\": '' cannot parse value as 'int': "
        "strconv.ParseInt: invalid syntax",
    )


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "t", "true")
    return bool(value)


def parse_duration(value: object) -> int:
    """Seconds in an OpenBao duration: a number of seconds, or Go's ``1h30m``, ``10s``."""
    if isinstance(value, bool):
        raise ValueError("a duration cannot be a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip()
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f'time: invalid duration "{text}"')
    return int(total)


def _format_duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _envelope(
    data: Json | None = None, *, auth: Json | None = None, warnings: list[str] | None = None
) -> Json:
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings or None,
        "auth": auth,
    }


def _unknown_parameters(body: Json, endpoint: str) -> list[str]:
    unknown = sorted(set(body) - _KNOWN_PARAMETERS[endpoint])
    if not unknown:
        return []
    return [f"Endpoint ignored these unrecognized parameters: [{' '.join(unknown)}]"]


def _random_id(length: int = 24) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


# -- state -----------------------------------------------------------------------------------


@define
class TransitKey:
    """One aes256-gcm96 Transit key: version N is a random 256-bit AES key."""

    name: str
    versions: dict[int, bytes] = field(factory=dict)
    created: dict[int, int] = field(factory=dict)
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    min_available_version: int = 0
    deletion_allowed: bool = False
    exportable: bool = False
    allow_plaintext_backup: bool = False
    auto_rotate_period: int = 0

    @property
    def latest_version(self) -> int:
        return max(self.versions)

    def rotate(self, now: float) -> None:
        version = max(self.versions, default=0) + 1
        self.versions[version] = os.urandom(32)
        self.created[version] = int(now)

    def describe(self) -> Json:
        """The ``data`` of a key read: ``keys`` lists only versions >= min_decryption_version."""
        return {
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "auto_rotate_period": self.auto_rotate_period,
            "deletion_allowed": self.deletion_allowed,
            "derived": False,
            "exportable": self.exportable,
            "imported_key": False,
            "keys": {
                str(v): self.created[v]
                for v in sorted(self.versions)
                if v >= self.min_decryption_version
            },
            "latest_version": self.latest_version,
            "min_available_version": self.min_available_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "name": self.name,
            "soft_deleted": False,
            "supports_decryption": True,
            "supports_derivation": True,
            "supports_encryption": True,
            "supports_signing": False,
            "type": "aes256-gcm96",
        }

    def encrypt(self, plaintext: bytes, version: int, aad: bytes | None) -> tuple[str, int]:
        """``(vault:vN:<base64 nonce‖ciphertext‖tag>, N)``; version 0 is the latest."""
        if version == 0:
            version = self.latest_version
        elif version < 0:
            raise _ItemError("requested version for encryption is negative")
        elif version > self.latest_version:
            raise _ItemError(
                "requested version for encryption is higher than the latest key version"
            )
        elif version < self.min_encryption_version:
            raise _ItemError(
                "requested version for encryption is less than the minimum encryption key version"
            )
        nonce = os.urandom(_NONCE_SIZE)
        sealed = AESGCM(self.versions[version]).encrypt(nonce, plaintext, aad)
        return f"vault:v{version}:{_b64(nonce + sealed)}", version

    def decrypt(self, ciphertext: str, aad: bytes | None) -> bytes:
        """The plaintext of ``ciphertext``, or _ItemError with OpenBao's message."""
        if not ciphertext:
            raise _ItemError("missing ciphertext to decrypt")
        if not ciphertext.startswith("vault:v"):
            raise _ItemError("invalid ciphertext: no prefix")
        fields = ciphertext[len("vault:v") :].split(":", 1)
        if len(fields) != 2:
            raise _ItemError("invalid ciphertext: wrong number of fields")
        if not _GO_INT.fullmatch(fields[0]):
            raise _ItemError("invalid ciphertext: version number could not be decoded")
        version = int(fields[0]) or 1  # v0 is v1, for Vault's first releases
        if version > self.latest_version:
            raise _ItemError("invalid ciphertext: version is too new")
        if version < self.min_decryption_version or version < self.min_available_version:
            raise _ItemError("ciphertext or signature version is disallowed by policy (too old)")
        try:
            raw = go_b64decode(fields[1])
        except _Base64Error:
            raise _ItemError("invalid ciphertext: could not decode base64") from None
        if len(raw) < _NONCE_SIZE:
            raise _ItemError("invalid ciphertext length")
        try:
            return AESGCM(self.versions[version]).decrypt(raw[:_NONCE_SIZE], raw[_NONCE_SIZE:], aad)
        except (InvalidTag, ValueError):
            raise _ItemError("cipher: message authentication failed") from None


@define
class _Token:
    id: str
    accessor: str
    policies: list[str]
    issued: float
    ttl: int
    """The TTL it was created with (0: it does not expire)."""
    renewable: bool
    orphan: bool
    expires: float | None
    display_name: str = "token"
    renewed: float | None = None


# -- the resource ----------------------------------------------------------------------------


class FakeVaultError(Exception):
    """A helper's request to the fake did not succeed."""


class FakeVault(Resource, TransitAdmin):
    """A Vault Transit server in memory (see the module's docstring for what it imitates).

    ``script``: answers ``(status, body)`` for the next HTTP requests, before Transit's.
    ``clock``: where token TTLs are counted (default: a Clock of its own that only moves when
    advanced, so tokens outlive the test unless it advances the clock).
    """

    isLeaf = True

    failure = FakeVaultError

    def __init__(
        self,
        *script: tuple[int, Json],
        root_token: str = DEFAULT_ROOT_TOKEN,
        clock: IReactorTime | None = None,
        address: str = DEFAULT_ADDRESS,
        max_ttl: int = DEFAULT_MAX_TTL,
        max_json_strings: int = MAX_JSON_STRINGS,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.script: list[tuple[int, Json]] = list(script)
        self.requests: list[Json] = []
        self.root_token = root_token
        self.clock: IReactorTime = clock if clock is not None else Clock()
        self.address = address
        self.max_ttl = max_ttl
        self.max_json_strings = max_json_strings
        self.sealed = False
        self.unseal_key = _b64(os.urandom(32))
        self.cluster_name = f"vault-cluster-{secrets.token_hex(4)}"
        self.cluster_id = str(uuid.uuid4())
        self.namespaces: dict[str, dict[str, dict[str, TransitKey]]] = {"": {}}
        """Namespace ("" is the root) -> Transit mount path -> key name -> key."""
        self.tokens: dict[str, _Token] = {}
        now = self.now()
        self.tokens[root_token] = _Token(
            id=root_token,
            accessor=_random_id(),
            policies=["root"],
            issued=now,
            ttl=0,
            renewable=False,
            orphan=True,
            expires=None,
        )

    def now(self) -> float:
        return self.clock.seconds()

    @property
    def paths(self) -> list[str]:
        """The paths of the recorded HTTP requests."""
        return [str(r["path"]) for r in self.requests]

    # -- HTTP ------------------------------------------------------------------------------

    def render(self, request: Request) -> bytes:
        raw = request.content.read() if request.content is not None else b""
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        token = _header(request, "X-Vault-Token")
        namespace = _header(request, "X-Vault-Namespace")
        try:
            body: object = json.loads(raw) if raw.strip() else None
        except ValueError as e:
            body = e
        self.requests.append(
            {
                "method": method,
                "path": path,
                "token": token,
                "namespace": namespace,
                "body": None if isinstance(body, ValueError) else body,
            }
        )
        if self.script:
            status, answer = self.script.pop(0)
        elif not path.startswith("/v1/"):
            status, answer = 404, {"errors": []}
        elif isinstance(body, ValueError):
            status, answer = 400, {"errors": [f"failed to decode JSON input: {body}"]}
        elif body is not None and not isinstance(body, dict):
            status, answer = 400, {"errors": ["failed to decode JSON input: not an object"]}
        else:
            status, answer = self.handle(
                method,
                unquote(path[len("/v1/") :]),
                cast("Json | None", body),
                token=token,
                namespace=namespace,
            )
        request.setResponseCode(status)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Type", b"application/json")
        if status == 204:
            return b""
        return json.dumps(answer).encode() + b"\n"

    def handle(
        self,
        method: str,
        path: str,
        body: Json | None,
        *,
        token: str | None = None,
        namespace: str | None = None,
    ) -> tuple[int, Json]:
        """``(status, body)`` of one request to ``/v1/<path>``, without the script."""
        try:
            return self._route(method.upper(), path, body or {}, token or "", namespace or "")
        except _Refusal as e:
            return e.status, e.body
        except _ItemError as e:
            return 400, {"errors": [str(e)]}

    # -- routing ---------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, body: Json, token: str, namespace: str
    ) -> tuple[int, Json]:
        if _count_strings(body) > self.max_json_strings:
            raise _Refusal(
                400, "refused JSON input due to high complexity: exceeded maximum number of strings"
            )
        if path == "sys/health":
            return self._health()
        if path == "sys/unseal":
            _methods(method, "PUT", "POST")
            return self._unseal(body)
        if self.sealed:
            raise _Refusal(503, "Vault is sealed")
        namespace = namespace.strip("/")
        if namespace not in self.namespaces:
            raise _Refusal(404, "namespace not found")
        caller = self._authenticate(token)
        if path.startswith("auth/token/"):
            return self._token_endpoint(method, path[len("auth/token/") :], body, caller)
        if path == "sys/seal":
            if method not in ("PUT", "POST"):
                raise _Refusal(405)
            self.sealed = True
            return 204, {}
        if path.startswith("sys/mounts/"):
            _methods(method, "PUT", "POST")
            return self._mount(namespace, path[len("sys/mounts/") :], body)
        if path.startswith("sys/namespaces/"):
            _methods(method, "PUT", "POST")
            return self._create_namespace(namespace, path[len("sys/namespaces/") :])
        mounts = self.namespaces[namespace]
        for mount in sorted(mounts, key=len, reverse=True):
            if path.startswith(mount + "/"):
                return self._transit(method, mounts[mount], path[len(mount) + 1 :], body)
        raise _Refusal(404, f'no handler for route "{path}". route entry not found.')

    def _authenticate(self, token: str) -> _Token:
        found = self.tokens.get(token)
        if found is None:
            raise _Refusal(403, "permission denied")
        if found.expires is not None and found.expires <= self.now():
            del self.tokens[token]
            raise _Refusal(403, "permission denied")
        return found

    # -- Transit ---------------------------------------------------------------------------

    def _transit(
        self, method: str, keys: dict[str, TransitKey], rest: str, body: Json
    ) -> tuple[int, Json]:
        operation = _OPERATION_PATH.fullmatch(rest)
        if operation is not None:
            _methods(method, "PUT", "POST")
            name = operation.group("name")
            op = operation.group("op")
            if op == "encrypt":
                return self._encrypt(keys, name, body)
            key = keys.get(name)
            if key is None:
                raise _Refusal(400, "encryption key not found")
            if op == "decrypt":
                return self._decrypt(key, body)
            return self._rewrap(key, body)
        match = _KEY_PATH.fullmatch(rest)
        if match is None:
            raise _Refusal(404, _UNSUPPORTED_PATH)
        name, op = match.group("name"), match.group("op")
        if op == "rotate":
            _methods(method, "PUT", "POST")
            key = keys.get(name)
            if key is None:
                raise _Refusal(400, "key not found")
            key.rotate(self.now())
            return 200, _envelope(key.describe(), warnings=_unknown_parameters(body, "rotate"))
        if op == "config":
            _methods(method, "PUT", "POST")
            return self._configure(keys, name, body)
        if method == "GET":
            key = keys.get(name)
            if key is None:
                raise _Refusal(404)
            return 200, _envelope(key.describe())
        if method == "DELETE":
            key = keys.get(name)
            if key is not None:
                if not key.deletion_allowed:
                    raise _Refusal(
                        400, f"error deleting policy {name}: deletion is not allowed for this key"
                    )
                del keys[name]
            return 204, {}
        _methods(method, "PUT", "POST")
        return self._create(keys, name, body)

    def _create(self, keys: dict[str, TransitKey], name: str, body: Json) -> tuple[int, Json]:
        key = keys.get(name)
        if key is None:
            key = self._new_key(keys, name, body)
        return 200, _envelope(key.describe(), warnings=_unknown_parameters(body, "create"))

    def _new_key(self, keys: dict[str, TransitKey], name: str, body: Json) -> TransitKey:
        kind = _text(body.get("type")) or "aes256-gcm96"
        if kind != "aes256-gcm96":
            raise _Refusal(400, f"fake_vault imitates aes256-gcm96 keys only, not {kind}")
        if _flag(body.get("derived")) or _flag(body.get("convergent_encryption")):
            raise _Refusal(400, "fake_vault does not imitate derived or convergent keys")
        key = TransitKey(
            name,
            exportable=_flag(body.get("exportable")),
            allow_plaintext_backup=_flag(body.get("allow_plaintext_backup")),
        )
        key.rotate(self.now())
        keys[name] = key
        return key

    def _configure(self, keys: dict[str, TransitKey], name: str, body: Json) -> tuple[int, Json]:
        key = keys.get(name)
        if key is None:
            raise _Refusal(400, f"no existing key named {name} could be found")
        warnings = _unknown_parameters(body, "config")
        min_decryption = key.min_decryption_version
        min_encryption = key.min_encryption_version
        if "min_decryption_version" in body:
            wanted = _integer(body["min_decryption_version"], "min_decryption_version")
            if wanted < 0:
                raise _Refusal(400, "min decryption version cannot be negative")
            if wanted == 0:
                wanted = 1
                warnings.append(
                    "since Vault 0.3 (prior to the OpenBao fork), transit key numbering "
                    "starts at 1; forcing minimum to 1"
                )
            if wanted != min_decryption:
                if wanted > key.latest_version:
                    raise _Refusal(
                        400,
                        f"cannot set min decryption version of {wanted}, latest key version "
                        f"is {key.latest_version}",
                    )
                min_decryption = wanted
        if "min_encryption_version" in body:
            wanted = _integer(body["min_encryption_version"], "min_encryption_version")
            if wanted < 0:
                raise _Refusal(400, "min encryption version cannot be negative")
            if wanted != min_encryption:
                if wanted > key.latest_version:
                    raise _Refusal(
                        400,
                        f"cannot set min encryption version of {wanted}, latest key version "
                        f"is {key.latest_version}",
                    )
                min_encryption = wanted
        if 0 < min_encryption < min_decryption:
            raise _Refusal(
                400,
                "cannot set min encryption/decryption values; min encryption version of "
                f"{min_encryption} must be greater than or equal to min decryption version "
                f"of {min_decryption}",
            )
        key.min_decryption_version = min_decryption
        key.min_encryption_version = min_encryption
        for flag in ("deletion_allowed", "exportable", "allow_plaintext_backup"):
            if flag in body:
                setattr(key, flag, _flag(body[flag]))
        return 200, _envelope(key.describe(), warnings=warnings)

    def _encrypt(self, keys: dict[str, TransitKey], name: str, body: Json) -> tuple[int, Json]:
        batch = _batch(body, "encrypt")
        if batch is None and "plaintext" not in body:
            raise _Refusal(400, "missing plaintext to encrypt")
        key = keys.get(name)
        if key is None:  # the upsert: every token here may create
            key = self._new_key(keys, name, body)
        warnings = _unknown_parameters(body, "encrypt")
        if batch is None:
            ciphertext, version = _encrypt_item(key, body, body.get("key_version"))
            return 200, _envelope(
                {"ciphertext": ciphertext, "key_version": version}, warnings=warnings
            )
        results: list[Json] = []
        for item in batch:
            reference = _text(item.get("reference"))
            try:
                ciphertext, version = _encrypt_item(key, item, item.get("key_version"))
            except _ItemError as e:
                results.append({"error": str(e), "reference": reference})
            else:
                results.append(
                    {"ciphertext": ciphertext, "key_version": version, "reference": reference}
                )
        return _batch_status(results, body), _envelope(
            {"batch_results": results}, warnings=warnings
        )

    def _decrypt(self, key: TransitKey, body: Json) -> tuple[int, Json]:
        batch = _batch(body, "decrypt")
        warnings = _unknown_parameters(body, "decrypt")
        if batch is None:
            plaintext = key.decrypt(_text(body.get("ciphertext"), "ciphertext"), _aad(body))
            return 200, _envelope({"plaintext": _b64(plaintext)}, warnings=warnings)
        results: list[Json] = []
        for item in batch:
            reference = _text(item.get("reference"))
            try:
                plaintext = key.decrypt(_text(item.get("ciphertext"), "ciphertext"), _aad(item))
            except _ItemError as e:
                results.append({"plaintext": "", "error": str(e), "reference": reference})
            else:
                results.append({"plaintext": _b64(plaintext), "reference": reference})
        return _batch_status(results, body), _envelope(
            {"batch_results": results}, warnings=warnings
        )

    def _rewrap(self, key: TransitKey, body: Json) -> tuple[int, Json]:
        batch = _batch(body, "rewrap")
        warnings = _unknown_parameters(body, "rewrap")
        if batch is None:
            ciphertext, version = _rewrap_item(key, body)
            return 200, _envelope(
                {"ciphertext": ciphertext, "key_version": version}, warnings=warnings
            )
        # A top-level key_version is ignored in batch mode; failed items do not fail the
        # request: 200 even when every item failed (OpenBao 2.7.2).
        results: list[Json] = []
        for item in batch:
            reference = _text(item.get("reference"))
            try:
                ciphertext, version = _rewrap_item(key, item)
            except _ItemError as e:
                results.append({"error": str(e), "reference": reference})
            else:
                results.append(
                    {"ciphertext": ciphertext, "key_version": version, "reference": reference}
                )
        return 200, _envelope({"batch_results": results}, warnings=warnings)

    # -- tokens ----------------------------------------------------------------------------

    def _token_endpoint(
        self, method: str, operation: str, body: Json, caller: _Token
    ) -> tuple[int, Json]:
        if operation == "lookup-self":
            _methods(method, "GET", "PUT", "POST")
            return 200, _envelope(self._lookup(caller))
        if operation == "renew-self":
            _methods(method, "PUT", "POST")
            return self._renew(caller, body)
        if operation == "create":
            _methods(method, "PUT", "POST")
            return self._create_token(caller, body)
        if operation == "revoke":
            _methods(method, "PUT", "POST")
            self.tokens.pop(_text(body.get("token")), None)
            return 204, {}
        raise _Refusal(404, _UNSUPPORTED_PATH)

    def _lookup(self, token: _Token) -> Json:
        now = self.now()
        data: Json = {
            "accessor": token.accessor,
            "creation_time": int(token.issued),
            "creation_ttl": token.ttl,
            "display_name": token.display_name,
            "entity_id": "",
            "expire_time": None if token.expires is None else _rfc3339(token.expires),
            "explicit_max_ttl": 0,
            "id": token.id,
            "issue_time": _rfc3339(token.issued),
            "meta": None,
            "num_uses": 0,
            "orphan": token.orphan,
            "path": "auth/token/create",
            "policies": list(token.policies),
            "renewable": token.renewable,
            "ttl": 0 if token.expires is None else max(0, int(token.expires - now)),
            "type": "service",
        }
        if token.renewed is not None:
            data["last_renewal"] = _rfc3339(token.renewed)
            data["last_renewal_time"] = int(token.renewed)
        return dict(sorted(data.items()))

    def _auth(self, token: _Token, lease: int) -> Json:
        return {
            "client_token": token.id,
            "accessor": token.accessor,
            "policies": list(token.policies),
            "token_policies": list(token.policies),
            "metadata": None,
            "lease_duration": lease,
            "renewable": token.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": token.orphan,
            "mfa_requirement": None,
            "num_uses": 0,
        }

    def _renew(self, token: _Token, body: Json) -> tuple[int, Json]:
        if not token.renewable:
            raise _Refusal(400, "lease is not renewable")
        raw = body.get("increment")
        try:
            increment = parse_duration(raw) if raw not in (None, "") else token.ttl
        except ValueError as e:
            raise _Refusal(
                400,
                f'Field validation failed: error converting input for field "increment": {e}',
            ) from None
        now = self.now()
        remaining = round(token.issued + self.max_ttl - now)
        warnings = []
        if increment > remaining:
            shown = raw if isinstance(raw, str) else f"{increment}s"
            warnings.append(
                f'TTL of "{shown}" exceeded the effective max_ttl of '
                f'"{_format_duration(self.max_ttl)}"; TTL value is capped accordingly'
            )
            increment = remaining
        token.expires = now + increment
        token.renewed = now
        return 200, _envelope(None, auth=self._auth(token, increment), warnings=warnings)

    def _create_token(self, parent: _Token, body: Json) -> tuple[int, Json]:
        try:
            ttl = parse_duration(body.get("ttl") or 0)
        except ValueError as e:
            raise _Refusal(400, str(e)) from None
        ttl = min(ttl, self.max_ttl)
        policies = body.get("policies")
        now = self.now()
        token = _Token(
            id="s." + _random_id(),
            accessor=_random_id(),
            policies=[str(p) for p in policies] if isinstance(policies, list) else parent.policies,
            issued=now,
            ttl=ttl,
            renewable=ttl > 0 and _flag(body.get("renewable", True)),
            orphan=False,
            expires=now + ttl if ttl else None,
            display_name=_text(body.get("display_name")) or "token",
        )
        self.tokens[token.id] = token
        return 200, _envelope(None, auth=self._auth(token, ttl))

    # -- sys -------------------------------------------------------------------------------

    def _mount(self, namespace: str, path: str, body: Json) -> tuple[int, Json]:
        path = path.strip("/")
        kind = _text(body.get("type"))
        if kind != "transit":
            raise _Refusal(400, f"fake_vault imitates transit mounts only, not {kind!r}")
        mounts = self.namespaces[namespace]
        for existing in mounts:
            if path == existing or path.startswith(existing + "/"):
                raise _Refusal(400, f"path is already in use at {existing}/")
        mounts[path] = {}
        return 204, {}

    def _create_namespace(self, parent: str, name: str) -> tuple[int, Json]:
        full = f"{parent}/{name.strip('/')}" if parent else name.strip("/")
        if full not in self.namespaces:
            self.namespaces[full] = {}
        data = {
            "custom_metadata": {},
            "id": _random_id(6),
            "locked": False,
            "path": full + "/",
            "tainted": False,
            "uuid": str(uuid.uuid4()),
        }
        return 200, _envelope(data)

    def _seal_status(self) -> Json:
        return {
            "type": "shamir",
            "initialized": True,
            "sealed": self.sealed,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": VERSION,
            "migration": False,
            "recovery_seal": False,
            "storage_type": "inmem",
        }

    def _unseal(self, body: Json) -> tuple[int, Json]:
        if self.sealed:
            given = _text(body.get("key"))
            if given != self.unseal_key:
                raise _Refusal(
                    400,
                    "unable to retrieve stored keys: invalid key: failed to decrypt keys from "
                    "storage: cipher: message authentication failed",
                )
            self.sealed = False
        return 200, self._seal_status()

    def _health(self) -> tuple[int, Json]:
        body = {
            "initialized": True,
            "sealed": self.sealed,
            "standby": self.sealed,
            "replication_performance_mode": "unknown" if self.sealed else "disabled",
            "replication_dr_mode": "unknown" if self.sealed else "disabled",
            "server_time_utc": int(self.now()),
            "version": VERSION,
        }
        if not self.sealed:
            body["cluster_name"] = self.cluster_name
            body["cluster_id"] = self.cluster_id
        return (503 if self.sealed else 200), body

    # -- the helpers OpenBaoServer has -----------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        token: str | bool = True,
        namespace: str = "",
    ) -> tuple[int, Json]:
        """(status, JSON body) of ``method /v1/<path>``; ``token`` True sends the root token.
        Not recorded, and the script is not consulted."""
        sent = self.root_token if token is True else (token or None)
        wire = json.loads(json.dumps(body)) if body is not None else None
        status, answer = self.handle(method, path, wire, token=sent, namespace=namespace)
        parsed: Json = json.loads(json.dumps(answer))
        return status, parsed


class CannedVault(FakeVault):
    """Not Transit: after the script, every key read, encrypt and decrypt gets one fixed
    reply, whatever the token, namespace, mount or ciphertext (anything else: 404).

    For unit tests of the client's plumbing (headers, retries, timeouts, error mapping),
    which must not depend on Transit's semantics; the contract suite does not cover it.
    """

    CANNED_DEK: Final = bytes(range(32))
    KEY_READ: Final[Json] = {
        "data": {"name": "k", "latest_version": 1, "min_decryption_version": 1}
    }

    def handle(
        self,
        method: str,
        path: str,
        body: Json | None,
        *,
        token: str | None = None,
        namespace: str | None = None,
    ) -> tuple[int, Json]:
        path = "/" + path
        if "/keys/" in path:
            return 200, self.KEY_READ
        if "/encrypt/" in path:
            return 200, {"data": {"ciphertext": "vault:v1:ZmFrZQ==", "key_version": 1}}
        if "/decrypt/" in path:
            return 200, {"data": {"plaintext": _b64(self.CANNED_DEK)}}
        return 404, {"errors": []}


# -- small pieces ----------------------------------------------------------------------------


def _header(request: Request, name: str) -> str | None:
    value = request.getHeader(name.encode("ascii"))
    return value.decode("utf-8", "replace") if value is not None else None


def _methods(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _Refusal(405, _WRONG_METHOD)


def _batch(body: Json, endpoint: str) -> list[Json] | None:
    """``batch_input``'s items, None without one. Empty: 400; not a list of objects, or an
    item without its required field (except in rewrap): 500, with OpenBao's messages."""
    if "batch_input" not in body or body["batch_input"] is None:
        return None
    batch = body["batch_input"]
    rewrap = endpoint == "rewrap"
    if not isinstance(batch, list):
        raise _Refusal(
            500,
            _go_errors(
                "failed to parse batch input: "
                f"{chr(39) * 2 + ' ' if rewrap else ''}source data must be an array or slice, "
                f"got {_go_type(batch)}"
            ),
        )
    if not batch:
        raise _Refusal(400, "missing batch input to process")
    for index, item in enumerate(batch):
        if not isinstance(item, dict):
            problem = (
                "decoding failed due to the following error(s):\n\n"
                f"'[{index}]' expected a map or struct, got \"{_go_type(item)}\""
                if rewrap
                else f"[{index}] expected a map, got '{_go_type(item)}'"
            )
            raise _Refusal(500, _go_errors(f"failed to parse batch input: {problem}"))
        required = {"encrypt": "plaintext", "decrypt": "ciphertext"}.get(endpoint)
        if required is not None and not item.get(required):
            verb = "encrypt" if endpoint == "encrypt" else "decrypt"
            raise _Refusal(
                500,
                _go_errors(
                    f"failed to parse batch input: '[{index}].{required}' missing {required} "
                    f"to {verb}"
                ),
            )
    return cast("list[Json]", batch)


def _go_errors(message: str) -> str:
    """An error as Go's multierror prints it, the way OpenBao wraps internal errors."""
    return f"1 error occurred:\n\t* {message}\n\n"


def _go_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "<nil>"


def _batch_status(results: list[Json], body: Json) -> int:
    """Encrypt and decrypt: 200, or 400 if any item failed (``partial_failure_response_code``
    instead when only some failed)."""
    failed = sum(1 for r in results if "error" in r)
    if not failed:
        return 200
    if failed < len(results) and body.get("partial_failure_response_code"):
        return _integer(body["partial_failure_response_code"], "partial_failure_response_code")
    return 400


def _aad(item: Json) -> bytes | None:
    value = item.get("associated_data")
    if not value:
        return None
    try:
        return go_b64decode(_text(value))
    except _Base64Error as e:
        raise _ItemError(str(e)) from None


def _encrypt_item(key: TransitKey, item: Json, version: object) -> tuple[str, int]:
    plaintext = go_b64decode(_text(item.get("plaintext"), "plaintext"))
    return key.encrypt(plaintext, _integer(version, "key_version"), _aad(item))


def _rewrap_item(key: TransitKey, item: Json) -> tuple[str, int]:
    """Rewrap takes no associated_data (it would be an unrecognized parameter)."""
    plaintext = key.decrypt(_text(item.get("ciphertext"), "ciphertext"), None)
    return key.encrypt(plaintext, _integer(item.get("key_version"), "key_version"), None)


__all__ = [
    "DEFAULT_ROOT_TOKEN",
    "CannedVault",
    "FakeVault",
    "FakeVaultError",
    "TransitKey",
    "go_b64decode",
    "parse_duration",
]
