"""s3orch's own keyring: numbered key terms that wrap DEKs, stored encrypted with the root key.

This is Vault's barrier keyring (reference/vault.md §2.1) applied to DEK wrapping. Each term is
a random 256-bit key with a term number (1, 2, …) and an installation time. The active term
wraps new DEKs (key id ``keyring-<term>``); older terms stay in the keyring for ever and keep
unwrapping what they wrapped. Rotating adds term N+1 and makes it active; nothing is
re-encrypted (re-wrapping old DEKs is the rotation job's business, as for any key source).

The keyring is stored as one blob, AES-256-GCM under the root key::

    blob = "S3KR" | format 0x01 | generation (u64) | nonce (12) | GCM(root, nonce, aad, json)
    aad  = "s3orch keyring" 0x00 | the first 13 bytes of the blob

The additional data binds the purpose and the generation (the number of the stored seal state
that holds the blob), so a blob cannot be passed off as another record or as another state's.

``KeyringKeys`` is the ``IKeyProvider`` over the current keyring. It stays the same object for
the life of the process: the seal loads a keyring into it when unsealed and clears it when
sealed (then every wrap and unwrap raises ``Sealed``, a ``KeyUnavailable``, so requests get
503). It counts wraps per term, for key-status and automatic rotation; the counts are not
secret and live outside the keyring (the service adds ``take_unflushed()`` to the database now
and then and reports the totals back with ``record_persisted``), so counting never rewrites the
encrypted keyring. Like Vault's, the counts may undercount after a crash: the default limit
keeps Vault's 10 % margin below the AES-GCM bound.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import math
import os
import secrets
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from attrs import evolve, field, frozen
from zope.interface import implementer

from s3orch.crypto.keys import (
    DEK_SIZE,
    GCM_NONCE_SIZE,
    GCM_TAG_SIZE,
    KEY_SIZE,
    LOCAL_WRAPPED_SIZE,
    AesGcm,
    IKeyProvider,
    InvalidWrappedKey,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
)

KEY_ID_PREFIX: Final = "keyring-"
FINGERPRINT_PREFIX: Final = "keyring:"

DEFAULT_MAX_OPERATIONS: Final = int(0.9 * 2**32)
"""3,865,470,566 wraps per term: Vault's default, 10 % under NIST's 2^32 for random nonces."""
MIN_MAX_OPERATIONS: Final = 1_000_000
MIN_ROTATION_INTERVAL: Final = 24 * 3600.0
"""Seconds; Vault refuses a shorter automatic rotation interval."""

REASON_MAX_OPERATIONS: Final = "reached max operations"
REASON_INTERVAL: Final = "rotation interval reached"

BLOB_MAGIC: Final = b"S3KR"
BLOB_FORMAT: Final = 1
_BLOB_HEADER: Final = struct.Struct(">4sBQ")
BLOB_HEADER_SIZE: Final = _BLOB_HEADER.size
_BLOB_AAD_LABEL: Final = b"s3orch keyring\x00"
_TERM_ID_LABEL: Final = b"s3orch keyring term id"
_WRAP_AAD_LABEL: Final = b"s3orch DEK wrap v1\x00"  # the local DEK wrap of keys.py


# -- errors ---------------------------------------------------------------------------------


class KeyringError(Exception):
    """The keyring cannot be used. Messages never contain key material."""


class KeyringCorrupt(KeyringError):
    """A stored keyring blob is malformed or fails authentication under the root key given."""


class RotationConfigError(KeyringError, ValueError):
    """Automatic rotation settings out of Vault's bounds (the message is Vault's)."""


class Sealed(KeyUnavailable):
    """The keyring is sealed: nothing can be wrapped or unwrapped until it is unsealed."""

    def __init__(self, message: str = "s3orch is sealed") -> None:
        super().__init__(message)


# -- values ---------------------------------------------------------------------------------


def _check_max_operations(_: object, __: object, value: int) -> None:
    if not MIN_MAX_OPERATIONS <= value <= DEFAULT_MAX_OPERATIONS:
        raise RotationConfigError(
            f"max_operations must be in the range [{MIN_MAX_OPERATIONS},{DEFAULT_MAX_OPERATIONS}]"
        )


def _check_interval(_: object, __: object, value: float) -> None:
    if not math.isfinite(value) or (value != 0 and value < MIN_ROTATION_INTERVAL):
        raise RotationConfigError("interval must be greater or equal to 24h0m0s")


@frozen
class RotationConfig:
    """When the active term is replaced automatically (Vault's ``sys/rotate/config``).

    ``interval`` is in seconds, 0 for no time-based rotation. With ``enabled`` false nothing
    rotates automatically, but wraps are still counted.
    """

    max_operations: int = field(default=DEFAULT_MAX_OPERATIONS, validator=_check_max_operations)
    interval: float = field(default=0.0, validator=_check_interval)
    enabled: bool = True


def term_fingerprint(term: int, key: bytes) -> str:
    """``keyring:<term>:`` + 128 bits of HMAC-SHA256: names a term key without revealing it."""
    digest = hmac.new(key, _TERM_ID_LABEL, hashlib.sha256).hexdigest()
    return f"{FINGERPRINT_PREFIX}{term}:{digest[:32]}"


def term_key_id(term: int) -> str:
    """The operator's name for a term: ``keyring-<term>``."""
    return f"{KEY_ID_PREFIX}{term}"


@frozen
class KeyTerm:
    """One key of the keyring. ``install_time`` is unix seconds from the caller's clock."""

    term: int
    key: bytes = field(repr=False)
    install_time: float

    def __attrs_post_init__(self) -> None:
        if self.term < 1:
            raise ValueError(f"a key term is at least 1, not {self.term}")
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"a term key is {KEY_SIZE} bytes, not {len(self.key)}")

    @property
    def key_id(self) -> str:
        return term_key_id(self.term)

    @property
    def fingerprint(self) -> str:
        return term_fingerprint(self.term, self.key)


@frozen
class KeyStatus:
    """What ``key-status`` shows: the active term, when it was installed, wraps under it."""

    term: int
    install_time: float
    encryptions: int


def _keyring_repr(terms: tuple[KeyTerm, ...]) -> str:
    return f"<{len(terms)} terms>"


@frozen
class Keyring:
    """Every key term (ascending), the active one, and the automatic rotation settings.

    Immutable: ``rotated`` and ``with_rotation`` return a new keyring for the caller to store.
    """

    terms: tuple[KeyTerm, ...] = field(repr=_keyring_repr)
    active_term: int
    rotation: RotationConfig = RotationConfig()

    def __attrs_post_init__(self) -> None:
        numbers = [t.term for t in self.terms]
        if not numbers:
            raise ValueError("a keyring has at least one term")
        if any(a >= b for a, b in itertools.pairwise(numbers)):
            raise ValueError("keyring terms must be unique and in ascending order")
        if self.active_term not in numbers:
            raise ValueError(f"the active term {self.active_term} is not in the keyring")

    @classmethod
    def new(cls, now: float, rotation: RotationConfig | None = None) -> Keyring:
        """A keyring with one fresh term, term 1, active."""
        first = KeyTerm(1, secrets.token_bytes(KEY_SIZE), now)
        return cls((first,), 1, rotation or RotationConfig())

    @property
    def active(self) -> KeyTerm:
        return self.term(self.active_term)

    def term(self, number: int) -> KeyTerm:
        """The term numbered ``number``; LookupError if there is none."""
        for term in self.terms:
            if term.term == number:
                return term
        raise LookupError(f"the keyring has no term {number}")

    def rotated(self, now: float) -> Keyring:
        """This keyring plus a new random term, numbered after the highest, made active."""
        number = self.terms[-1].term + 1
        new_term = KeyTerm(number, secrets.token_bytes(KEY_SIZE), now)
        return evolve(self, terms=(*self.terms, new_term), active_term=number)

    def with_rotation(self, rotation: RotationConfig) -> Keyring:
        return evolve(self, rotation=rotation)

    # -- storage ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The plaintext serialization (JSON); only ever stored encrypted (``encrypt``)."""
        document = {
            "active_term": self.active_term,
            "terms": [
                {
                    "term": t.term,
                    "key": base64.b64encode(t.key).decode("ascii"),
                    "install_time": t.install_time,
                }
                for t in self.terms
            ],
            "rotation": {
                "max_operations": self.rotation.max_operations,
                "interval": self.rotation.interval,
                "enabled": self.rotation.enabled,
            },
        }
        return json.dumps(document, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyring:
        """Parse ``to_bytes`` output; KeyringCorrupt for anything else."""
        try:
            document = json.loads(data)
            terms = tuple(
                KeyTerm(
                    _int(t["term"]),
                    base64.b64decode(_str(t["key"]), validate=True),
                    _float(t["install_time"]),
                )
                for t in document["terms"]
            )
            rotation = document["rotation"]
            return cls(
                terms,
                _int(document["active_term"]),
                RotationConfig(
                    _int(rotation["max_operations"]),
                    _float(rotation["interval"]),
                    _bool(rotation["enabled"]),
                ),
            )
        except (ValueError, TypeError, KeyError, LookupError, binascii.Error) as e:
            # Only reachable with an authentic blob, i.e. a bug: say what, never the content.
            raise KeyringCorrupt(
                f"the keyring is not in the expected form ({type(e).__name__})"
            ) from None

    def encrypt(self, root_key: bytes, generation: int) -> bytes:
        """The blob to store: this keyring under ``root_key``, bound to ``generation``."""
        header = _BLOB_HEADER.pack(BLOB_MAGIC, BLOB_FORMAT, generation)
        nonce = os.urandom(GCM_NONCE_SIZE)
        sealed = AesGcm(root_key).seal(nonce, self.to_bytes(), _BLOB_AAD_LABEL + header)
        return header + nonce + sealed

    @classmethod
    def decrypt(cls, blob: bytes, root_key: bytes, generation: int | None = None) -> Keyring:
        """The keyring in ``blob``. KeyringCorrupt if it is malformed, not authentic under
        ``root_key`` (a wrong root key looks the same as an altered blob), or was stored for
        another generation than ``generation`` (when given)."""
        blob_generation = blob_generation_of(blob)
        if generation is not None and blob_generation != generation:
            raise KeyringCorrupt(
                f"the keyring blob belongs to generation {blob_generation}, not {generation}"
            )
        header = blob[:BLOB_HEADER_SIZE]
        nonce = blob[BLOB_HEADER_SIZE : BLOB_HEADER_SIZE + GCM_NONCE_SIZE]
        try:
            cipher = AesGcm(root_key)
        except ValueError:
            raise KeyringCorrupt("the root key has the wrong length") from None
        plaintext = cipher.open(
            nonce, blob[BLOB_HEADER_SIZE + GCM_NONCE_SIZE :], _BLOB_AAD_LABEL + header
        )
        if plaintext is None:
            raise KeyringCorrupt(
                "the keyring failed authentication under the root key "
                "(a wrong root key, or the stored keyring was altered)"
            )
        return cls.from_bytes(plaintext)


def blob_generation_of(blob: bytes) -> int:
    """The generation a keyring blob was stored for (its header is not secret)."""
    if len(blob) < BLOB_HEADER_SIZE + GCM_NONCE_SIZE + GCM_TAG_SIZE:
        raise KeyringCorrupt(f"a keyring blob cannot be {len(blob)} bytes long")
    magic, version, generation = _BLOB_HEADER.unpack_from(blob)
    if magic != BLOB_MAGIC:
        raise KeyringCorrupt("not a keyring blob (wrong magic)")
    if version != BLOB_FORMAT:
        raise KeyringCorrupt(f"keyring blob format {version} is not supported")
    return int(generation)


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


def _float(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise TypeError("expected a number")
    return float(value)


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError("expected a boolean")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("expected a string")
    return value


# -- the key provider -------------------------------------------------------------------------


@frozen
class _Entry:
    term: int
    key_id: str
    fingerprint: str
    cipher: AesGcm = field(repr=False)
    aad: bytes = field(repr=False)


def parse_fingerprint_term(fingerprint: str) -> int | None:
    """The term number in a ``keyring:<term>:<id>`` fingerprint, or None if it is not one."""
    if not fingerprint.startswith(FINGERPRINT_PREFIX):
        return None
    number, sep, _ = fingerprint[len(FINGERPRINT_PREFIX) :].partition(":")
    if not sep or not number.isdigit() or len(number) > 12:
        return None
    return int(number)


@implementer(IKeyProvider)
class KeyringKeys:
    """``IKeyProvider`` over the current keyring: the active term wraps, every term unwraps.

    Wrapping is the local DEK wrap of ``keys.py`` under the term key: nonce (12) ||
    AES-256-GCM(term key, nonce, aad = label || fingerprint, DEK) || tag. Unwrapping goes by
    fingerprint only. ``refresh``, when given, is awaited once by ``unwrap`` when a DEK names a
    term newer than any this keyring has (another instance rotated a moment ago) before the
    lookup is retried.
    """

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        refresh: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._refresh = refresh
        self._keyring: Keyring | None = None
        self._entries: dict[str, _Entry] = {}
        self._active: _Entry | None = None
        self._persisted: dict[int, int] = {}
        self._unflushed: dict[int, int] = {}
        if keyring is not None:
            self.load(keyring)

    def __repr__(self) -> str:
        if self._active is None:
            return "<KeyringKeys sealed>"
        return f"<KeyringKeys active={self._active.key_id} terms={len(self._entries)}>"

    # -- loading ----------------------------------------------------------------------------

    def load(self, keyring: Keyring) -> None:
        """Use ``keyring`` from now on (unseal, rotation, or a change made by another instance).
        Wrap counts carry over: they are per term."""
        entries = {}
        for term in keyring.terms:
            fp = term.fingerprint
            entries[fp] = _Entry(
                term.term,
                term.key_id,
                fp,
                AesGcm(term.key),
                _WRAP_AAD_LABEL + fp.encode("ascii"),
            )
        self._entries = entries
        self._active = entries[keyring.active.fingerprint]
        self._keyring = keyring

    def clear(self) -> None:
        """Forget every key (seal). Unflushed counts are kept for the next flush."""
        self._keyring = None
        self._entries = {}
        self._active = None

    @property
    def sealed(self) -> bool:
        return self._keyring is None

    @property
    def keyring(self) -> Keyring:
        """The loaded keyring; Sealed if there is none."""
        if self._keyring is None:
            raise Sealed()
        return self._keyring

    # -- IKeyProvider -----------------------------------------------------------------------

    @property
    def primary_id(self) -> str:
        """``keyring-<active term>``, or ``keyring`` while sealed."""
        return self._active.key_id if self._active is not None else KEY_ID_PREFIX.rstrip("-")

    @property
    def primary_fingerprint(self) -> str:
        return self._require_active().fingerprint

    def key_ids(self) -> dict[str, str]:
        """fingerprint -> ``keyring-<term>`` for every term (empty while sealed)."""
        return {e.fingerprint: e.key_id for e in self._entries.values()}

    async def wrap(self, dek: bytes) -> WrappedKey:
        return self.wrap_sync(dek)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        if (
            self._refresh is not None
            and self._keyring is not None
            and wrapped.fingerprint not in self._entries
        ):
            number = parse_fingerprint_term(wrapped.fingerprint)
            if number is not None and number > self._keyring.terms[-1].term:
                await self._refresh()
        return self.unwrap_sync(wrapped)

    def wrap_sync(self, dek: bytes) -> WrappedKey:
        """Wrap ``dek`` with the active term, and count it against that term."""
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        active = self._require_active()
        nonce = os.urandom(GCM_NONCE_SIZE)
        blob = nonce + active.cipher.seal(nonce, dek, active.aad)
        self._unflushed[active.term] = self._unflushed.get(active.term, 0) + 1
        return WrappedKey(active.key_id, active.fingerprint, blob)

    def unwrap_sync(self, wrapped: WrappedKey) -> bytes:
        """The DEK in ``wrapped``, opened with the term its fingerprint names."""
        self._require_active()
        entry = self._entries.get(wrapped.fingerprint)
        if entry is None:
            raise UnknownKey(
                wrapped.key_id,
                wrapped.fingerprint,
                f"the keyring has terms 1 to {self.keyring.terms[-1].term}, "
                "none with this fingerprint",
            )
        blob = wrapped.blob
        dek = None
        if len(blob) == LOCAL_WRAPPED_SIZE:
            dek = entry.cipher.open(blob[:GCM_NONCE_SIZE], blob[GCM_NONCE_SIZE:], entry.aad)
        if dek is None:
            raise InvalidWrappedKey(
                f"the wrapped data key failed authentication under {entry.key_id} "
                f"({entry.fingerprint}): the key material was altered or truncated"
            )
        return dek

    def _require_active(self) -> _Entry:
        if self._active is None:
            raise Sealed()
        return self._active

    # -- counting and rotation --------------------------------------------------------------

    def encryptions(self, term: int | None = None) -> int:
        """Wraps under ``term`` (default: the active one): the stored total last reported
        with ``record_persisted`` plus this process's wraps not yet flushed."""
        if term is None:
            term = self._require_active().term
        return self._persisted.get(term, 0) + self._unflushed.get(term, 0)

    def take_unflushed(self) -> dict[int, int]:
        """{term: wraps} counted here since the last call; the caller adds them to the stored
        totals (then ``record_persisted``), or hands them back with ``restore_unflushed``."""
        taken, self._unflushed = self._unflushed, {}
        return taken

    def restore_unflushed(self, counts: Mapping[int, int]) -> None:
        """Put back counts that ``take_unflushed`` returned and that could not be stored."""
        for term, count in counts.items():
            self._unflushed[term] = self._unflushed.get(term, 0) + count

    def record_persisted(self, term: int, total: int) -> None:
        """The stored total of wraps under ``term`` (all instances), as just read or written."""
        self._persisted[term] = total

    def key_status(self) -> KeyStatus:
        """Active term, its installation time, wraps under it (``key-status``)."""
        active = self.keyring.active
        return KeyStatus(active.term, active.install_time, self.encryptions(active.term))

    def rotation_reason(self, now: float) -> str | None:
        """Why the active term should be rotated now, or None (also None if disabled).

        Vault's rule: after ``max_operations`` wraps, or once the term is older than
        ``interval`` (if one is set). ``now`` is unix seconds from the caller's clock.
        """
        keyring = self.keyring
        config = keyring.rotation
        if not config.enabled:
            return None
        if self.encryptions(keyring.active_term) >= config.max_operations:
            return REASON_MAX_OPERATIONS
        if config.interval and now - keyring.active.install_time >= config.interval:
            return REASON_INTERVAL
        return None

    def rotation_due(self, now: float) -> bool:
        return self.rotation_reason(now) is not None
