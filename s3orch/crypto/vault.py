"""Vault Transit as the master key: Vault wraps and unwraps DEKs, the key never leaves it.

Every call is an HTTP request over treq on the reactor, bounded by a timeout on the injected
clock. Failures that a moment may cure (connection errors, timeouts, 5xx, 429) are retried a
few times with a short backoff; everything else is answered at once. How errors map, so that
S3 requests get the right status:

- Transit refused a ciphertext (400 from decrypt or rewrap): ``InvalidWrappedKey``, unless the
  Transit key itself is gone, which is ``VaultUnavailable`` like every other problem of Vault
  (down, sealed, 403 permission denied, mount or key missing): a ``KeyUnavailable``, 503.
- A fingerprint other than this provider's: ``UnknownKey``; Vault is not even asked.

Encrypting to a missing Transit key *creates* it when the token may (reference/vault.md,
"upsert trap"), so a typo in ``key_name`` would silently mint a new master key. The first wrap
therefore reads the key and refuses to go on if it does not exist.

The token comes from the config or from ``token_file``, which an agent may rewrite: the file
is read at construction, again by ``renew()``, and again once when Vault answers 403. Messages
and logs never contain the token, a DEK, or a response body (renew-self answers with the token).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any, Final, cast
from urllib.parse import quote

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from s3orch.config import REWRAP_BATCH_SIZE, VaultConfig
from s3orch.crypto.dek_cache import DekCache
from s3orch.crypto.keys import (
    DEK_SIZE,
    IKeyProvider,
    InvalidWrappedKey,
    KeyMaterialError,
    KeyProviderError,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
    read_private_file,
    vault_fingerprint,
)
from s3orch.httputil import describe_failure

log = Logger()

REQUEST_TIMEOUT: Final = 10.0
"""Seconds one Vault request may take, connecting included."""
RETRY_DELAYS: Final = (0.2, 1.0)
"""Backoff before each retry of a transient failure (so two retries)."""
RESPONSE_LIMIT: Final = 1024 * 1024
TOKEN_FILE_LIMIT: Final = 64 * 1024
POOLED_CONNECTION_IDLE: Final = 30

_CIPHERTEXT_PREFIX: Final = "vault:v"
_CIPHERTEXT_VERSION: Final = re.compile(rb"vault:v([1-9][0-9]{0,9}):")
_PEM_CERTIFICATE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class VaultUnavailable(KeyUnavailable):
    """Vault could not do what was asked: unreachable, sealed, refusing the token, or
    missing the mount or key. ``status`` is Vault's HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@frozen
class TransitKeyInfo:
    """A Transit key's versions, as the rotation job needs them."""

    name: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    min_available_version: int


@frozen
class TokenInfo:
    """The token after a ``renew()``: ``ttl`` seconds left (0: it does not expire)."""

    renewable: bool
    ttl: int


@frozen
class _Reply:
    status: int
    body: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data")
        return data if isinstance(data, dict) else {}


class _Transient(Exception):
    """No usable answer, but a retry may get one (connection error, timeout)."""


# -- helpers --------------------------------------------------------------------------------


def ciphertext_version(blob: bytes) -> int:
    """The Transit key version N of a ``vault:vN:…`` blob (which rotation must re-wrap)."""
    match = _CIPHERTEXT_VERSION.match(blob)
    if match is None:
        raise InvalidWrappedKey("a Vault Transit wrapped data key must start with 'vault:v<N>:'")
    return int(match.group(1))


def read_token_file(path: str) -> str:
    """The token in ``path``, stripped; the file must be private to its owner (0600)."""
    data = read_private_file(path, TOKEN_FILE_LIMIT)
    if len(data) > TOKEN_FILE_LIMIT:
        raise KeyMaterialError(f"is larger than {TOKEN_FILE_LIMIT} bytes: not a token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyMaterialError("does not hold an ASCII token") from None
    if not token:
        raise KeyMaterialError("is empty")
    return token


def load_ca_certificates(path: str) -> Any:
    """A TLS trust root made of every PEM certificate in ``path`` (one CA or a bundle)."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise KeyMaterialError(f"cannot be read: {e.strerror or e}") from None
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise KeyMaterialError("holds no PEM certificate")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise KeyMaterialError(f"holds a certificate that cannot be loaded: {e}") from None
    return trustRootFromCertificates(certificates)


def make_vault_http_client(
    reactor: Any, ca_cert: str = "", pool: HTTPConnectionPool | None = None
) -> HTTPClient:
    """A treq client for Vault: with ``ca_cert``, https is verified against that CA only
    (otherwise against the system's CAs); plain http works too, for dev servers."""
    trust_root = None
    if ca_cert:
        try:
            trust_root = load_ca_certificates(ca_cert)
        except KeyMaterialError as e:
            raise KeyMaterialError(f"encryption.vault.ca_cert {e}") from None
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust_root), pool=pool)
    return HTTPClient(agent)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VaultUnavailable(f"Vault answered a malformed key: {name} is not a number")
    return value


# -- the provider ---------------------------------------------------------------------------


@implementer(IKeyProvider)
@define
class VaultTransitKeys:
    """DEKs wrapped by one Vault Transit key; the key id is the key name.

    The fingerprint (``vault:<mount>/<key>``) stays the same across Transit key versions: the
    version is inside each ciphertext, so a ``rotate`` in Vault needs no change here, and
    ``rewrap`` moves old ciphertexts to the latest version without exposing a DEK.
    """

    address: str
    key_name: str
    http_client: HTTPClient
    clock: IReactorTime
    token: str = field(default="", repr=False, kw_only=True)
    token_file: str = field(default="", kw_only=True)
    mount_path: str = field(default="transit", kw_only=True)
    namespace: str = field(default="", kw_only=True)
    timeout: float = field(default=REQUEST_TIMEOUT, kw_only=True)
    retry_delays: Sequence[float] = field(default=RETRY_DELAYS, kw_only=True)
    rewrap_batch_size: int = field(default=REWRAP_BATCH_SIZE, kw_only=True)
    dek_cache: DekCache | None = field(default=None, kw_only=True)
    """DEKs this provider wrapped or unwrapped lately; without it every unwrap calls Vault."""
    pool: HTTPConnectionPool | None = field(default=None, kw_only=True)
    """A connection pool this provider owns and ``close()`` closes."""
    _key_checked: bool = field(default=False, init=False)
    _base: str = field(default="", init=False)
    _key_path: str = field(default="", init=False)

    def __attrs_post_init__(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            raise ValueError("the Vault address must be an http:// or https:// URL")
        if not self.key_name or not self.mount_path.strip("/"):
            raise ValueError("a Transit key name and mount path are required")
        if self.token_file and not self.token:
            try:
                self.token = read_token_file(self.token_file)
            except KeyMaterialError as e:
                raise KeyMaterialError(f"encryption.vault.token_file {e}") from None
        if not self.token:
            raise ValueError("a Vault token (token or token_file) is required")
        if self.rewrap_batch_size < 1:
            raise ValueError("rewrap_batch_size must be at least 1")
        self._base = self.address.rstrip("/") + "/v1/"
        self.mount_path = self.mount_path.strip("/")
        self._key_path = quote(self.key_name, safe="")

    @classmethod
    def from_config(
        cls, config: VaultConfig, reactor: Any, http_client: HTTPClient | None = None
    ) -> VaultTransitKeys:
        """The provider ``encryption.vault`` describes; reads ``token_file`` and ``ca_cert`` now
        (KeyMaterialError if they are unusable). Without ``http_client`` it makes its own, with
        a connection pool that ``close()`` closes. A given client must already trust
        ``ca_cert``, so giving both is refused."""
        pool = None
        if http_client is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.cachedConnectionTimeout = POOLED_CONNECTION_IDLE
            http_client = make_vault_http_client(reactor, config.ca_cert, pool)
        elif config.ca_cert:
            raise ValueError(
                "encryption.vault.ca_cert is set: let from_config make the HTTP client "
                "(make_vault_http_client) so that it trusts that CA"
            )
        return cls(
            config.address,
            config.key_name,
            http_client,
            reactor,
            token=config.token,
            token_file=config.token_file,
            mount_path=config.mount_path,
            namespace=config.namespace,
            pool=pool,
            rewrap_batch_size=config.rewrap_batch_size,
            dek_cache=(
                DekCache(config.dek_cache_ttl, config.dek_cache_size, reactor)
                if config.dek_cache_size
                else None
            ),
        )

    def __repr__(self) -> str:
        return f"<VaultTransitKeys {self.fingerprint} at {self.address}>"

    @property
    def fingerprint(self) -> str:
        return vault_fingerprint(self.mount_path, self.key_name)

    @property
    def primary_id(self) -> str:
        return self.key_name

    @property
    def primary_fingerprint(self) -> str:
        return self.fingerprint

    def key_ids(self) -> dict[str, str]:
        return {self.fingerprint: self.key_name}

    def close(self) -> Deferred[None]:
        """Close the connections of the pool this provider owns (at service stop)."""
        if self.pool is None:
            return succeed(None)
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d

    # -- IKeyProvider --------------------------------------------------------------------

    async def wrap(self, dek: bytes) -> WrappedKey:
        """Encrypt ``dek`` with the latest version of the Transit key."""
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        await self._check_key()
        doing = "wrapping a data key"
        reply = await self._call("POST", self._transit("encrypt"), {"plaintext": _b64(dek)}, doing)
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        wrapped = self._wrapped(reply.data.get("ciphertext"), doing)
        if self.dek_cache is not None:
            self.dek_cache.put(wrapped, dek)  # the object is likely read back soon
        return wrapped

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        ciphertext = self._ciphertext_of(wrapped)
        cached = self.dek_cache.get(wrapped) if self.dek_cache is not None else None
        if cached is not None:
            return cached
        doing = "unwrapping a data key"
        reply = await self._call(
            "POST", self._transit("decrypt"), {"ciphertext": ciphertext}, doing
        )
        if reply.status == 400:
            raise await self._refused(reply, doing)
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        plaintext = reply.data.get("plaintext")
        try:
            dek = base64.b64decode(str(plaintext).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise VaultUnavailable(
                f"{doing}: Vault answered without a base64 plaintext", reply.status
            ) from None
        if len(dek) != DEK_SIZE:
            raise InvalidWrappedKey(
                f"the data key wrapped by Vault Transit key {self.fingerprint} is "
                f"{len(dek)} bytes, not {DEK_SIZE}"
            )
        if self.dek_cache is not None:
            self.dek_cache.put(wrapped, dek)
        return dek

    # -- rotation ------------------------------------------------------------------------

    async def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        """``wrapped`` re-encrypted by Vault with the latest key version; the DEK never
        leaves Vault."""
        ciphertext = self._ciphertext_of(wrapped)
        doing = "re-wrapping a data key"
        reply = await self._call("POST", self._transit("rewrap"), {"ciphertext": ciphertext}, doing)
        if reply.status == 400:
            raise await self._refused(reply, doing)
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        return self._wrapped(reply.data.get("ciphertext"), doing)

    async def rewrap_batch(
        self, wrapped: Sequence[WrappedKey]
    ) -> list[WrappedKey | KeyProviderError]:
        """Each of ``wrapped`` re-wrapped with the latest key version, in order, in requests
        of ``rewrap_batch_size``. An item Vault refuses (or that is not this key's) gets its
        error in its place; a failure of a whole request raises (VaultUnavailable)."""
        results: list[WrappedKey | KeyProviderError] = []
        for start in range(0, len(wrapped), self.rewrap_batch_size):
            results.extend(
                await self._rewrap_chunk(wrapped[start : start + self.rewrap_batch_size])
            )
        return results

    async def _rewrap_chunk(
        self, chunk: Sequence[WrappedKey]
    ) -> list[WrappedKey | KeyProviderError]:
        results: list[WrappedKey | KeyProviderError | None] = []
        sent: list[int] = []
        items: list[dict[str, str]] = []
        for wrapped in chunk:
            try:
                ciphertext = self._ciphertext_of(wrapped)
            except KeyProviderError as e:
                results.append(e)
                continue
            sent.append(len(results))
            results.append(None)
            items.append({"ciphertext": ciphertext})
        if items:
            doing = f"re-wrapping {len(items)} data keys"
            reply = await self._call("POST", self._transit("rewrap"), {"batch_input": items}, doing)
            batch = reply.data.get("batch_results")
            if reply.status not in (200, 400) or not isinstance(batch, list):
                if reply.status == 400:
                    raise await self._refused(reply, doing, batch=True)
                raise self._unavailable(reply, doing)
            if len(batch) != len(items):
                raise VaultUnavailable(
                    f"{doing}: Vault answered {len(batch)} results", reply.status
                )
            for position, item in zip(sent, batch, strict=True):
                results[position] = self._batch_item(item, doing)
        return [r for r in results if r is not None]

    def _batch_item(self, item: object, doing: str) -> WrappedKey | KeyProviderError:
        if not isinstance(item, dict):
            return VaultUnavailable(f"{doing}: Vault answered a malformed result")
        if item.get("error"):
            return InvalidWrappedKey(
                f"Vault Transit key {self.fingerprint} refused the wrapped data key: "
                f"{self._clean(str(item['error']))}"
            )
        try:
            return self._wrapped(item.get("ciphertext"), doing)
        except KeyProviderError as e:
            return e

    async def key_versions(self) -> TransitKeyInfo:
        """The Transit key's versions (GET ``<mount>/keys/<key>``); VaultUnavailable with
        status 404 if the key does not exist."""
        doing = f"reading Transit key {self.fingerprint}"
        reply = await self._call("GET", f"{self.mount_path}/keys/{self._key_path}", None, doing)
        if reply.status == 404:
            raise VaultUnavailable(
                f"Vault Transit key {self.mount_path}/{self.key_name} does not exist, or no "
                f"Transit engine is mounted at {self.mount_path}/ (create the key with: "
                f"bao write -f {self.mount_path}/keys/{self.key_name})",
                404,
            )
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        data = reply.data
        return TransitKeyInfo(
            name=str(data.get("name", self.key_name)),
            latest_version=_int(data, "latest_version"),
            min_decryption_version=_int(data, "min_decryption_version"),
            min_encryption_version=_int(data, "min_encryption_version"),
            min_available_version=_int(data, "min_available_version"),
        )

    # -- the token -----------------------------------------------------------------------

    async def renew(self) -> TokenInfo:
        """Keep the token alive; the service runs this every ``renew_interval``.

        Re-reads ``token_file`` first (an agent may have replaced the token), then renews
        the token if Vault says it is renewable. Raises VaultUnavailable if Vault cannot be
        asked or refuses.
        """
        if self.token_file:
            self._reload_token()
        doing = "looking up the Vault token"
        reply = await self._call("GET", "auth/token/lookup-self", None, doing)
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        renewable = reply.data.get("renewable") is True
        ttl = reply.data.get("ttl")
        ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else 0
        if not renewable:
            log.debug("the Vault token is not renewable (ttl {ttl} s)", ttl=ttl)
            return TokenInfo(renewable=False, ttl=ttl)
        doing = "renewing the Vault token"
        reply = await self._call("POST", "auth/token/renew-self", {}, doing)
        if reply.status != 200:
            raise self._unavailable(reply, doing)
        auth = reply.body.get("auth")
        lease = auth.get("lease_duration") if isinstance(auth, dict) else None
        ttl = lease if isinstance(lease, int) and not isinstance(lease, bool) else ttl
        log.info("renewed the Vault token; it now expires in {ttl} s", ttl=ttl)
        return TokenInfo(renewable=True, ttl=ttl)

    def _reload_token(self) -> bool:
        """Read ``token_file`` again; True if it holds a new token."""
        try:
            token = read_token_file(self.token_file)
        except KeyMaterialError as e:
            log.warn(
                "cannot re-read encryption.vault.token_file {path}: {problem}; "
                "keeping the current token",
                path=self.token_file,
                problem=str(e),
            )
            return False
        if token == self.token:
            return False
        self.token = token
        log.info("read a new Vault token from {path}", path=self.token_file)
        return True

    # -- requests ------------------------------------------------------------------------

    def _transit(self, operation: str) -> str:
        return f"{self.mount_path}/{operation}/{self._key_path}"

    def _ciphertext_of(self, wrapped: WrappedKey) -> str:
        if wrapped.fingerprint != self.fingerprint:
            raise UnknownKey(
                wrapped.key_id,
                wrapped.fingerprint,
                f"configured key: {self.key_name} ({self.fingerprint})",
            )
        ciphertext_version(wrapped.blob)
        try:
            return wrapped.blob.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidWrappedKey("a Vault Transit wrapped data key must be ASCII") from None

    def _wrapped(self, ciphertext: object, doing: str) -> WrappedKey:
        if not isinstance(ciphertext, str) or not ciphertext.startswith(_CIPHERTEXT_PREFIX):
            raise VaultUnavailable(f"{doing}: Vault answered without a vault:v<N>: ciphertext")
        return WrappedKey(self.key_name, self.fingerprint, ciphertext.encode("ascii"))

    async def _check_key(self) -> None:
        """Before the first wrap: make sure the key exists, as encrypting would create it."""
        if self._key_checked:
            return
        try:
            await self.key_versions()
        except VaultUnavailable as e:
            if e.status != 403:
                raise
            log.warn(
                "cannot read Transit key {key} to check that it exists (grant the token "
                "'read' on {mount}/keys/{name}); wrapping without that check",
                key=self.fingerprint,
                mount=self.mount_path,
                name=self.key_name,
            )
        self._key_checked = True

    async def _refused(self, reply: _Reply, doing: str, batch: bool = False) -> KeyProviderError:
        """What a 400 from decrypt or rewrap means: the ciphertext is bad, unless the key
        is missing (Vault says 400 for both; its messages are not an API)."""
        try:
            await self.key_versions()
        except VaultUnavailable as e:
            if e.status == 404:
                return VaultUnavailable(f"{doing}: {e}", 404)
        text = self._errors(reply)
        if batch:
            return VaultUnavailable(f"{doing}: Vault refused the request: {text}", 400)
        return InvalidWrappedKey(
            f"Vault Transit key {self.fingerprint} refused the wrapped data key: {text}"
        )

    def _unavailable(self, reply: _Reply, doing: str) -> VaultUnavailable:
        status = reply.status
        text = self._errors(reply)
        if status == 403:
            problem = "permission denied (the token is invalid, expired or lacks a policy)"
        elif status == 404:
            problem = f"not found (is Transit mounted at {self.mount_path}/?)"
        elif status == 503:
            problem = "Vault is sealed or has no active node"
        else:
            problem = f"Vault answered {status}"
        return VaultUnavailable(f"{doing} at {self.address}: {problem}: {text}", status)

    def _errors(self, reply: _Reply) -> str:
        errors = reply.body.get("errors")
        if not isinstance(errors, list) or not errors:
            return "no details"
        return self._clean("; ".join(str(e) for e in errors))

    def _clean(self, text: str) -> str:
        """Vault's text, one line, short, and never the token."""
        text = " ".join(text.split())
        if self.token:
            text = text.replace(self.token, "<token>")
        return text[:300]

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, doing: str
    ) -> _Reply:
        """One Vault request, retried on transient failures; any other answer is returned.

        A 403 with ``token_file`` set re-reads the file once and, if it holds a new token,
        tries again with it.
        """
        url = self._base + path
        reloaded = False
        attempt = 0
        while True:
            status: int | None = None
            try:
                reply = await self._exchange(method, url, body)
            except _Transient as e:
                problem = f"{doing}: cannot reach Vault at {self.address}: {e}"
            else:
                if reply.status == 403 and self.token_file and not reloaded:
                    reloaded = True
                    if self._reload_token():
                        continue
                if reply.status < 500 and reply.status != 429:
                    warnings = reply.body.get("warnings")
                    if warnings:
                        log.warn(
                            "Vault warned while {doing}: {warnings}",
                            doing=doing,
                            warnings=self._clean(str(warnings)),
                        )
                    return reply
                status = reply.status
                problem = str(self._unavailable(reply, doing))
            if attempt >= len(self.retry_delays):
                raise VaultUnavailable(problem, status)
            delay = self.retry_delays[attempt]
            attempt += 1
            log.info(
                "{problem}; retry {attempt} in {delay} s",
                problem=problem,
                attempt=attempt,
                delay=delay,
            )
            await deferLater(self.clock, delay)

    async def _exchange(self, method: str, url: str, body: dict[str, Any] | None) -> _Reply:
        headers: dict[bytes | str, bytes | str] = {"X-Vault-Token": self.token}
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        d = Deferred.fromCoroutine(self._send(method, url, headers, body))
        d.addTimeout(self.timeout, self.clock)
        try:
            status, content = await d
        except (CancelledError, VaultUnavailable):
            raise
        except DeferredTimeout:
            raise _Transient(f"no answer within {self.timeout:g} s") from None
        except Exception as e:
            raise _Transient(self._clean(describe_failure(e))) from None
        if status == 204 or not content:
            return _Reply(status, {})
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if status == 200:
                raise VaultUnavailable(f"Vault at {self.address} answered a body that is not JSON")
            parsed = {}
        return _Reply(status, parsed)

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[bytes | str, bytes | str],
        body: dict[str, Any] | None,
    ) -> tuple[int, bytes]:
        if body is None:
            response = await self.http_client.request(method, url, headers=headers)
        else:
            response = await self.http_client.request(method, url, headers=headers, json=body)
        length = response.length
        if isinstance(length, int) and length > RESPONSE_LIMIT:
            response.deliverBody(_Hangup())
            raise VaultUnavailable(f"Vault at {self.address} answered over {RESPONSE_LIMIT} bytes")
        content: bytes = await response.content()
        return response.code, content


class _Hangup(Protocol):
    """Closes the connection of a body too large to read."""

    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()
