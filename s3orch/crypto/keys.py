"""Master keys: what wraps each object's data key (DEK), and how a wrapped DEK names its key.

A wrapped DEK records two names for the key that wrapped it. ``key_id`` is the label the operator
sees (``config-0``, ``config-1``…, ``file-0``, later a Vault key name or ``keyring-<term>``); it
follows the key's position in the configuration, so it goes stale when keys move. ``fingerprint``
is derived from the key itself and is what unwrapping goes by: moving the primary key into
``previous_keys`` changes its label, never its fingerprint, so every DEK stays readable. A
fingerprint no provider knows is an ``UnknownKey`` error, never a guess with another key. (DEKs
the Go system wrapped carry no fingerprint at all: see ``LocalKeys._unwrap_senc1``.)

Providers implement ``IKeyProvider``. Its methods are async because remote providers (Vault
Transit, over HTTP) come later; ``LocalKeys`` does its work synchronously (``wrap_sync``,
``unwrap_sync``, for batch jobs) and wraps that in the async methods.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from attrs import field, frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from s3orch.config import EncryptionConfig

BytesLike = bytes | bytearray | memoryview

KEY_SIZE: Final = 32
"""Bytes in a master key and in a DEK (AES-256)."""
DEK_SIZE: Final = 32

LOCAL_FINGERPRINT_PREFIX: Final = "local:"
SENC1_FINGERPRINT_PREFIX: Final = "senc1:"
"""Marks a DEK wrapped by the Go system, which recorded only a positional key id (senc1.py)."""

_FINGERPRINT_LABEL: Final = b"s3orch key id"
_WRAP_AAD_LABEL: Final = b"s3orch DEK wrap v1\x00"
GCM_NONCE_SIZE: Final = 12
GCM_TAG_SIZE: Final = 16
LOCAL_WRAPPED_SIZE: Final = GCM_NONCE_SIZE + DEK_SIZE + GCM_TAG_SIZE
"""A locally wrapped DEK: nonce (12) || AES-256-GCM(DEK) (32) || tag (16), for both formats."""


# -- errors ---------------------------------------------------------------------------------


class KeyProviderError(Exception):
    """A DEK could not be wrapped or unwrapped. Messages never contain key material."""


class UnknownKey(KeyProviderError, LookupError):
    """The DEK was wrapped by a key that is not configured (count it, never fall back)."""

    def __init__(self, key_id: str, fingerprint: str, detail: str = "") -> None:
        super().__init__(key_id, fingerprint)
        self.key_id = key_id
        self.fingerprint = fingerprint
        self.detail = detail

    def __str__(self) -> str:
        message = (
            f"the data key was wrapped by master key {self.key_id} ({self.fingerprint}), "
            "which is not configured"
        )
        return f"{message}: {self.detail}" if self.detail else message


class InvalidWrappedKey(KeyProviderError):
    """The wrapped DEK is malformed, or failed authentication under the key it names."""


class KeyUnavailable(KeyProviderError):
    """The key exists but cannot be used right now (a remote provider is down or sealed);
    a retry may succeed, so requests that need it get 503, not 500."""


class KeyMaterialError(ValueError):
    """A configured key (text or file) is unusable. The message never quotes the key."""


# -- the cipher -------------------------------------------------------------------------------


class AesGcm:
    """AES-256-GCM under one key, 96-bit nonces, 128-bit tags: the one cipher s3orch uses.

    Built on OpenSSL through ``cryptography``, which sets a key up once and then costs
    about a microsecond per call: 64 KiB chunks seal and open at about 9 GB/s here.
    pycryptodome (DESIGN.md's first choice) builds a new cipher object per message, which
    held a 64 KiB chunk to about 0.5 GB/s and encrypted GETs to under half the speed of
    plaintext ones; it remains the independent oracle in the tests.
    """

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"an AES-256 key is {KEY_SIZE} bytes, not {len(key)}")
        self._cipher = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return "<AesGcm>"

    def seal(self, nonce: bytes, plaintext: BytesLike, aad: bytes = b"") -> bytes:
        """ciphertext || tag."""
        return self._cipher.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: BytesLike, aad: bytes = b"") -> bytes | None:
        """The plaintext of ciphertext || tag, or None if it is not authentic. Nothing is
        returned before the tag has been checked."""
        if len(sealed) < GCM_TAG_SIZE:
            return None
        try:
            return self._cipher.decrypt(nonce, sealed, aad)
        except InvalidTag:
            return None


# -- values and the provider seam -------------------------------------------------------------


def _short_blob(blob: bytes) -> str:
    return f"<{len(blob)} bytes>"


@frozen
class WrappedKey:
    """A DEK as a provider wrapped it; stored in the metadata DB and in the object header.

    ``blob`` is the provider's own format (AES-GCM for local keys, a ``vault:vN:…`` string for
    Vault Transit). It is not secret, but it is long, so ``repr`` shows only its length.
    """

    key_id: str
    fingerprint: str
    blob: bytes = field(repr=_short_blob)


class IKeyProvider(Interface):
    """Wraps and unwraps DEKs with master keys. Implementations never log key material."""

    primary_id = Attribute("The operator-facing id of the key that wraps new DEKs (str).")

    async def wrap(dek: bytes) -> WrappedKey:
        """Wrap a 32-byte DEK with the primary key."""

    async def unwrap(wrapped: WrappedKey) -> bytes:
        """The DEK inside ``wrapped``, found by its fingerprint.

        Raises UnknownKey if no configured key has that fingerprint, InvalidWrappedKey if the
        blob is malformed or fails authentication, KeyUnavailable if the key cannot be reached.
        """

    def key_ids() -> dict[str, str]:
        """Every configured key: fingerprint -> operator-facing id (for metrics and checks)."""


# -- key material ----------------------------------------------------------------------------


def generate_key() -> str:
    """A new master key as standard base64 of 32 random bytes (what ``s3orch keygen`` prints)."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def fingerprint(key: bytes) -> str:
    """What a local key is, without revealing it: ``local:`` + 128 bits of HMAC-SHA256."""
    digest = hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()
    return LOCAL_FINGERPRINT_PREFIX + digest[:32]


def vault_fingerprint(mount_path: str, key_name: str) -> str:
    """The fingerprint a Vault Transit provider must use: ``vault:<mount>/<key>``.

    It equals the key id the Go system stored for Vault-wrapped DEKs, so those rows need no
    translation (Transit ciphertexts carry their key version themselves).
    """
    return f"vault:{mount_path.strip('/')}/{key_name}"


def decode_key(text: str) -> bytes:
    """A master key from standard, padded base64 (as ``openssl rand -base64 32`` prints)."""
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyMaterialError(
            "is not valid base64 (generate a key with `s3orch keygen` or `openssl rand -base64 32`)"
        ) from None
    if len(key) != KEY_SIZE:
        raise KeyMaterialError(
            f"decodes to {len(key)} bytes; a key must be exactly {KEY_SIZE} bytes "
            "(generate one with `s3orch keygen` or `openssl rand -base64 32`)"
        )
    return key


def read_private_file(path: str, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of a regular file nobody but its owner may read or write
    (a key file, a Vault token file); KeyMaterialError saying what is wrong otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise KeyMaterialError(_os_problem(e)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyMaterialError("is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyMaterialError(
                f"is accessible by group or others (mode {mode:04o}); "
                f"run chmod 600 on it (0600 or stricter)"
            )
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def read_key_file(path: str) -> bytes:
    """The 32 raw bytes of a key file, which nobody but its owner may read or write."""
    data = read_private_file(path, KEY_SIZE + 63)
    if len(data) != KEY_SIZE:
        hint = ""
        try:
            if len(decode_key(data.strip().decode("ascii"))) == KEY_SIZE:
                hint = "; it looks like base64 text: store the raw bytes (base64 -d)"
        except (KeyMaterialError, UnicodeDecodeError):
            pass
        size = f"{len(data)}" if len(data) <= KEY_SIZE else f"more than {KEY_SIZE}"
        raise KeyMaterialError(
            f"holds {size} bytes; it must hold exactly {KEY_SIZE} raw bytes "
            f"(e.g. head -c 32 /dev/urandom){hint}"
        )
    return data


def create_key_file(path: str) -> bool:
    """Create ``path`` holding a new random key, mode 0600, unless it exists already.

    Returns whether it was created. Never overwrites: losing a key file loses the data.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
        )
    except FileExistsError:
        return False
    try:
        os.write(fd, secrets.token_bytes(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _os_problem(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "does not exist"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    return f"cannot be read: {e.strerror or e}"


# -- local keys -------------------------------------------------------------------------------


@frozen
class _LocalKey:
    key_id: str
    fingerprint: str
    cipher: AesGcm = field(repr=False)
    aad: bytes = field(repr=False)


@implementer(IKeyProvider)
class LocalKeys:
    """Master keys held in memory: the primary wraps, every key unwraps what it wrapped.

    Wrapping is AES-256-GCM with a random 96-bit nonce; the additional data binds a purpose
    label and the key's fingerprint, so a blob cannot be passed off as another key's.
    """

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """``keys`` are (operator-facing id, 32-byte key); the first is the primary."""
        if not keys:
            raise ValueError("at least one key is required")
        entries: list[_LocalKey] = []
        by_fingerprint: dict[str, _LocalKey] = {}
        for key_id, key in keys:
            if len(key) != KEY_SIZE:
                raise ValueError(f"key {key_id} is {len(key)} bytes, not {KEY_SIZE}")
            key_fingerprint = fingerprint(key)
            entry = _LocalKey(key_id, key_fingerprint, AesGcm(key), _wrap_aad(key_fingerprint))
            if entry.fingerprint in by_fingerprint:
                other = by_fingerprint[entry.fingerprint].key_id
                raise ValueError(f"key {key_id} is the same key as {other}")
            if any(e.key_id == key_id for e in entries):
                raise ValueError(f"key id {key_id} is used twice")
            by_fingerprint[entry.fingerprint] = entry
            entries.append(entry)
        self._entries: tuple[_LocalKey, ...] = tuple(entries)
        self._by_fingerprint = by_fingerprint
        self._primary = entries[0]
        self.primary_id: str = self._primary.key_id
        self.primary_fingerprint: str = self._primary.fingerprint

    @classmethod
    def from_config(cls, config: EncryptionConfig) -> LocalKeys:
        """``config-0`` (master_key) or ``file-0`` (master_key_file, read now), then
        ``config-1``… for previous_keys in order. Raises KeyMaterialError for a bad file."""
        keys: list[tuple[str, bytes]] = []
        if config.master_key is not None:
            keys.append(("config-0", config.master_key))
        elif config.master_key_file:
            try:
                keys.append(("file-0", read_key_file(config.master_key_file)))
            except KeyMaterialError as e:
                raise KeyMaterialError(f"encryption.master_key_file {e}") from None
        else:
            raise ValueError("no local master key is configured (master_key or master_key_file)")
        keys.extend((f"config-{i}", key) for i, key in enumerate(config.previous_keys, start=1))
        return cls(keys)

    def __repr__(self) -> str:
        listed = ", ".join(f"{e.key_id}={e.fingerprint}" for e in self._entries)
        return f"<LocalKeys primary={self.primary_id} {listed}>"

    def key_ids(self) -> dict[str, str]:
        return {e.fingerprint: e.key_id for e in self._entries}

    async def wrap(self, dek: bytes) -> WrappedKey:
        return self.wrap_sync(dek)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        return self.unwrap_sync(wrapped)

    def wrap_sync(self, dek: bytes) -> WrappedKey:
        """Wrap ``dek`` with the primary key."""
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a DEK is {DEK_SIZE} bytes, not {len(dek)}")
        primary = self._primary
        nonce = os.urandom(GCM_NONCE_SIZE)
        blob = nonce + primary.cipher.seal(nonce, dek, primary.aad)
        return WrappedKey(primary.key_id, primary.fingerprint, blob)

    def unwrap_sync(self, wrapped: WrappedKey) -> bytes:
        """The DEK in ``wrapped``, opened with the key its fingerprint names."""
        if wrapped.fingerprint.startswith(SENC1_FINGERPRINT_PREFIX):
            return self._unwrap_senc1(wrapped)
        entry = self._by_fingerprint.get(wrapped.fingerprint)
        if entry is None:
            raise UnknownKey(wrapped.key_id, wrapped.fingerprint, self._configured())
        dek = _open_wrapped(entry.cipher, wrapped.blob, entry.aad)
        if dek is None:
            raise InvalidWrappedKey(
                f"the wrapped data key failed authentication under master key {entry.key_id} "
                f"({entry.fingerprint}): the key material was altered or truncated"
            )
        return dek

    def _unwrap_senc1(self, wrapped: WrappedKey) -> bytes:
        """A DEK the Go system wrapped (no additional data, positional key id only).

        Its ``config-N`` label follows config positions, which shift when keys are rotated, so
        it cannot identify the key. AES-GCM authentication can: the key the label names is
        tried first, then each other configured key; a wrong key fails the tag (forgery
        probability 2^-128), so this never yields a wrong DEK.
        """
        label = wrapped.fingerprint[len(SENC1_FINGERPRINT_PREFIX) :]
        if len(wrapped.blob) != LOCAL_WRAPPED_SIZE:
            raise InvalidWrappedKey(
                f"a SENC v1 locally wrapped data key is {LOCAL_WRAPPED_SIZE} bytes, "
                f"not {len(wrapped.blob)}"
            )
        ordered = sorted(self._entries, key=lambda e: e.key_id != label)
        for entry in ordered:
            dek = _open_wrapped(entry.cipher, wrapped.blob, b"")
            if dek is not None:
                return dek
        raise UnknownKey(
            wrapped.key_id,
            wrapped.fingerprint,
            "no configured key opens this SENC v1 data key (the key that wrapped it is not "
            f"configured, or the stored key material is damaged); {self._configured()}",
        )

    def _configured(self) -> str:
        return "configured keys: " + ", ".join(
            f"{e.key_id} ({e.fingerprint})" for e in self._entries
        )


def _wrap_aad(key_fingerprint: str) -> bytes:
    return _WRAP_AAD_LABEL + key_fingerprint.encode("ascii")


def _open_wrapped(cipher: AesGcm, blob: bytes, aad: bytes) -> bytes | None:
    """nonce || ciphertext || tag opened; None if malformed or not authentic."""
    if len(blob) != LOCAL_WRAPPED_SIZE:
        return None
    return cipher.open(blob[:GCM_NONCE_SIZE], blob[GCM_NONCE_SIZE:], aad)
