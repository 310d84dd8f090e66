"""The seal: the root key that protects the keyring, and Vault's init / unseal / rekey ceremony.

The hierarchy is Vault's (reference/vault.md §2.1)::

    unseal key (split into Shamir shares; or an auto-unseal IKeyProvider)
        -> root key          (SealState.root: AES-256-GCM under the unseal key, or the
                              provider's wrapping of it)
        -> keyring           (SealState.keyring_blob: AES-256-GCM under the root key)
        -> term keys -> DEKs

Shares carry no integrity (shamir.py), so a wrong share shows only when the combined unseal
key fails to open the stored root key. Rekeying makes a new unseal key *and* a new root key and
re-encrypts the keyring; the term keys, hence every wrapped DEK, stay as they are.

Persistence is one frozen value, ``SealState``, read and written through ``ISealStore``: the
database layer implements ``load`` and a compare-and-swap ``replace`` on ``generation``, which
every change increments. ``Seal`` writes before it changes anything in memory, so a crash or a
failed write at any point leaves the stored state (and the shares that open it) as it was. When
several instances share the store, each is unsealed on its own; ``Seal.refresh`` (run every few
seconds, and by ``KeyringKeys.unwrap`` on meeting a term it does not know) picks up what others
changed. After a rekey elsewhere, an unsealed instance still holds the old root key: the state
then carries ``root_link``, the new root key encrypted under the old one, for
``ROOT_LINK_LIFETIME`` seconds, so that it can follow.

Unseal progress and rekey progress live in memory only, as in Vault: a restart comes up
sealed, and a rekey interrupted before its final write leaves the old shares valid.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import struct
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

from attrs import define, evolve, field, frozen
from twisted.logger import Logger
from zope.interface import Interface, implementer

from s3orch.crypto.keyring import (
    Keyring,
    KeyringCorrupt,
    KeyringKeys,
    KeyStatus,
    RotationConfig,
    Sealed,
)
from s3orch.crypto.keys import (
    GCM_NONCE_SIZE,
    GCM_TAG_SIZE,
    KEY_SIZE,
    AesGcm,
    IKeyProvider,
    WrappedKey,
)
from s3orch.crypto.shamir import MAX_PARTS, SHARE_OVERHEAD, ShamirError, combine, split

log = Logger()

SealType = Literal["shamir", "auto"]
SHAMIR: Final = "shamir"
AUTO: Final = "auto"

MIN_SHARE_SIZE: Final = 16
"""Vault refuses shorter keys at submission ("invalid key: key is shorter than minimum …")."""
MAX_SHARE_SIZE: Final = KEY_SIZE + SHARE_OVERHEAD
ROOT_LINK_LIFETIME: Final = 3600.0
"""Seconds during which a rekeyed state carries the new root key under the old one."""

SHAMIR_ROOT_ID: Final = "shamir"
"""``key_id`` and ``fingerprint`` of a root key sealed with Shamir shares."""
_ROOT_FORMAT: Final = b"\x01"
_ROOT_AAD: Final = b"s3orch root key\x00"
_LINK_AAD: Final = b"s3orch root key link\x00"
_WRITE_ATTEMPTS: Final = 5


# -- errors ---------------------------------------------------------------------------------


class SealError(Exception):
    """An operator request cannot be carried out (the admin API answers 400 with the message,
    which never contains a share or a key)."""


class NotInitialized(SealError):
    def __init__(self) -> None:
        super().__init__("s3orch is not initialized")


class AlreadyInitialized(SealError):
    def __init__(self) -> None:
        super().__init__("s3orch is already initialized")


class SealConfigError(SealError, ValueError):
    """Share count or threshold out of bounds; messages as Vault's ``sys/init``."""


class InvalidShare(SealError, ValueError):
    """A submitted share cannot be a share at all (undecodable, too short or too long)."""


class UnsealFailed(SealError):
    """The threshold was reached but the shares do not open the root key; progress is reset."""


class RekeyError(SealError):
    """A rekey request is out of turn, has a wrong nonce or share, or failed verification."""


class StaleState(SealError):
    """``ISealStore.replace`` found another generation than expected (someone else wrote)."""


# -- configuration and share text -------------------------------------------------------------


def validate_seal_config(shares: int, threshold: int) -> None:
    """Vault's checks on (key shares, key threshold), with its messages."""
    problem = None
    if shares < 1:
        problem = "shares must be at least one"
    elif threshold < 1:
        problem = "threshold must be at least one"
    elif shares > 1 and threshold == 1:
        problem = "threshold must be greater than one for multiple shares"
    elif shares > MAX_PARTS:
        problem = f"shares must be less than {MAX_PARTS + 1}"
    elif threshold > MAX_PARTS:
        problem = f"threshold must be less than {MAX_PARTS + 1}"
    elif threshold > shares:
        problem = "threshold cannot be larger than shares"
    if problem is not None:
        raise SealConfigError(f"invalid seal configuration: {problem}")


def decode_share(text: str) -> bytes:
    """A share as an operator types it: hex, else standard base64 (Vault tries hex first)."""
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidShare("key must be a valid hex or base64 string") from None


def _check_share_size(share: bytes) -> None:
    if len(share) < MIN_SHARE_SIZE:
        raise InvalidShare(f"invalid key: key is shorter than minimum {MIN_SHARE_SIZE} bytes")
    if len(share) > MAX_SHARE_SIZE:
        raise InvalidShare(f"invalid key: key is longer than maximum {MAX_SHARE_SIZE} bytes")


def _unseal_key_from(shares: list[bytes], threshold: int) -> bytes | None:
    """The unseal key the shares combine into; None if they cannot be combined at all."""
    if threshold == 1:
        return shares[0]
    try:
        return combine(shares)
    except ShamirError:
        return None


# -- sealing the root key -------------------------------------------------------------------


def _seal_root(unseal_key: bytes, root: bytes) -> WrappedKey:
    nonce = os.urandom(GCM_NONCE_SIZE)
    sealed = AesGcm(unseal_key).seal(nonce, root, _ROOT_AAD + _ROOT_FORMAT)
    return WrappedKey(SHAMIR_ROOT_ID, SHAMIR_ROOT_ID, _ROOT_FORMAT + nonce + sealed)


def _open_root(unseal_key: bytes, sealed: WrappedKey) -> bytes | None:
    """The root key, or None if ``unseal_key`` does not open it (or is not a key at all)."""
    blob = sealed.blob
    if (
        len(unseal_key) != KEY_SIZE
        or blob[:1] != _ROOT_FORMAT
        or len(blob) < 1 + GCM_NONCE_SIZE + GCM_TAG_SIZE
    ):
        return None
    nonce, rest = blob[1 : 1 + GCM_NONCE_SIZE], blob[1 + GCM_NONCE_SIZE :]
    root = AesGcm(unseal_key).open(nonce, rest, _ROOT_AAD + _ROOT_FORMAT)
    return root if root is not None and len(root) == KEY_SIZE else None


def _link_aad(generation: int) -> bytes:
    return _LINK_AAD + struct.pack(">Q", generation)


def _make_link(old_root: bytes, new_root: bytes, generation: int) -> bytes:
    nonce = os.urandom(GCM_NONCE_SIZE)
    return nonce + AesGcm(old_root).seal(nonce, new_root, _link_aad(generation))


def _follow_link(old_root: bytes, link: bytes, generation: int) -> bytes | None:
    if len(link) < GCM_NONCE_SIZE + GCM_TAG_SIZE:
        return None
    new_root = AesGcm(old_root).open(
        link[:GCM_NONCE_SIZE], link[GCM_NONCE_SIZE:], _link_aad(generation)
    )
    return new_root if new_root is not None and len(new_root) == KEY_SIZE else None


def _open_stored(stored: SealState, root: bytes) -> tuple[bytes, Keyring] | None:
    """(root key, keyring) of ``stored`` for an instance holding ``root``: the same root key,
    or the one ``root_link`` gives it after a rekey. None if neither opens the keyring."""
    for candidate in (root, _follow_link(root, stored.root_link, stored.generation)):
        if candidate is None:
            continue
        try:
            return candidate, Keyring.decrypt(stored.keyring_blob, candidate, stored.generation)
        except KeyringCorrupt:
            continue
    return None


# -- the stored state -----------------------------------------------------------------------


def _short(blob: bytes) -> str:
    return f"<{len(blob)} bytes>"


@frozen
class SealState:
    """Everything stored for the keyring, as one record. Nothing in it is usable without the
    unseal key (or the auto-unseal provider).

    ``shares``/``threshold`` describe the current unseal shares (1/1 for auto-unseal, as Vault
    reports). ``root_link`` is empty except for ``ROOT_LINK_LIFETIME`` seconds after a rekey.
    """

    seal_type: SealType
    shares: int
    threshold: int
    root: WrappedKey
    keyring_blob: bytes = field(repr=_short)
    generation: int
    root_link: bytes = field(default=b"", repr=False)
    root_link_expires: float = 0.0

    def to_bytes(self) -> bytes:
        """One JSON document, for a store that keeps a single column."""
        document = {
            "format": 1,
            "seal_type": self.seal_type,
            "shares": self.shares,
            "threshold": self.threshold,
            "root": {
                "key_id": self.root.key_id,
                "fingerprint": self.root.fingerprint,
                "blob": _b64(self.root.blob),
            },
            "keyring": _b64(self.keyring_blob),
            "generation": self.generation,
            "root_link": _b64(self.root_link),
            "root_link_expires": self.root_link_expires,
        }
        return json.dumps(document, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> SealState:
        """Parse ``to_bytes`` output; SealError for anything else."""
        try:
            document: Any = json.loads(data)
            if document["format"] != 1:
                raise ValueError("unknown format")
            seal_type = document["seal_type"]
            if seal_type not in (SHAMIR, AUTO):
                raise ValueError("unknown seal type")
            root = document["root"]
            return cls(
                seal_type,
                int(document["shares"]),
                int(document["threshold"]),
                WrappedKey(str(root["key_id"]), str(root["fingerprint"]), _unb64(root["blob"])),
                _unb64(document["keyring"]),
                int(document["generation"]),
                _unb64(document["root_link"]),
                float(document["root_link_expires"]),
            )
        except (ValueError, TypeError, KeyError, binascii.Error) as e:
            raise SealError(f"the stored seal state is malformed ({type(e).__name__})") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


class ISealStore(Interface):
    """Where the one ``SealState`` record lives (the metadata DB; ``MemorySealStore`` in tests)."""

    async def load() -> SealState | None:
        """The stored state, or None before init."""

    async def replace(expected_generation: int | None, state: SealState) -> None:
        """Store ``state`` if the stored generation is ``expected_generation`` (None: if nothing
        is stored yet), atomically; raise StaleState otherwise."""


@implementer(ISealStore)
class MemorySealStore:
    """An ``ISealStore`` in memory: for tests, and to show the contract the DB must keep."""

    def __init__(self, state: SealState | None = None) -> None:
        self.state = state
        self.writes = 0

    async def load(self) -> SealState | None:
        return self.state

    async def replace(self, expected_generation: int | None, state: SealState) -> None:
        current = None if self.state is None else self.state.generation
        if current != expected_generation:
            raise StaleState(f"the stored generation is {current}, not {expected_generation}")
        self.state = state
        self.writes += 1


# -- what the operations return -----------------------------------------------------------


def _hidden_keys(keys: tuple[bytes, ...]) -> str:
    return f"<{len(keys)} key shares>"


@frozen
class SealStatus:
    """``seal-status``: Vault's fields (t, n, progress, nonce) under plain names."""

    seal_type: SealType
    initialized: bool
    sealed: bool
    threshold: int
    shares: int
    progress: int
    nonce: str
    generation: int


@frozen
class InitResult:
    """The unseal key shares, handed out once (none with auto-unseal); never stored."""

    keys: tuple[bytes, ...] = field(repr=_hidden_keys)
    shares: int
    threshold: int


@frozen
class RekeyStatus:
    """``rekey -status``: the new configuration (shares/threshold), progress towards
    ``required`` (the current threshold) of current shares."""

    started: bool
    nonce: str
    shares: int
    threshold: int
    progress: int
    required: int
    verification_required: bool


@frozen
class RekeyUpdate:
    """After one current share: progress, or (``complete``) the new shares. With verification
    they take effect only once ``rekey_verify`` has seen ``threshold`` of them."""

    nonce: str
    complete: bool
    progress: int
    required: int
    keys: tuple[bytes, ...] = field(repr=_hidden_keys)
    verification_required: bool
    verification_nonce: str


@frozen
class RekeyVerifyStatus:
    """Verification of the new shares: progress towards the new threshold, ``complete`` once
    the new shares have replaced the old ones."""

    started: bool
    nonce: str
    shares: int
    threshold: int
    progress: int
    complete: bool


# -- the state machine ------------------------------------------------------------------------


@define
class _Rekey:
    nonce: str
    shares: int
    threshold: int
    verify: bool
    collected: list[bytes] = field(factory=list, repr=False)
    new_unseal_key: bytes | None = field(default=None, repr=False)
    new_root: bytes | None = field(default=None, repr=False)
    verify_nonce: str = ""
    verify_collected: list[bytes] = field(factory=list, repr=False)
    # The root key that the current shares opened: the rekey replaces that one or nothing.
    authorized_root: bytes = field(default=b"", repr=False)
    committing: bool = False


def _new_nonce() -> str:
    return str(uuid.uuid4())


def _has(collected: list[bytes], share: bytes) -> bool:
    found = False
    for other in collected:
        found |= hmac.compare_digest(other, share)
    return found


@define(eq=False, repr=False)
class Seal:
    """The keyring's seal for one process: the stored state, and, while unsealed, the root key
    and the keyring (loaded into ``keys``, the ``IKeyProvider`` to give the object layer).

    ``auto_unseal`` is a key provider (local master key or Vault Transit) that wraps the root
    key instead of Shamir shares. Every method that takes ``now`` wants unix seconds from the
    caller's clock. Methods that may write are async; the rest are plain.
    """

    store: ISealStore
    auto_unseal: IKeyProvider | None = None
    keys: KeyringKeys = field(init=False)
    _state: SealState | None = field(init=False, default=None)
    _root: bytes | None = field(init=False, default=None)
    _unseal_shares: list[bytes] = field(init=False, factory=list)
    _unseal_nonce: str = field(init=False, default="")
    _rekey: _Rekey | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.keys = KeyringKeys(refresh=self.refresh)

    def __repr__(self) -> str:
        state = self._state
        if state is None:
            return "<Seal uninitialized>"
        where = "sealed" if self._root is None else "unsealed"
        return f"<Seal {state.seal_type} {where} generation={state.generation}>"

    @property
    def state(self) -> SealState | None:
        """The stored state as last read or written here."""
        return self._state

    @property
    def sealed(self) -> bool:
        return self._root is None

    def status(self) -> SealStatus:
        state = self._state
        if state is None:
            seal_type: SealType = AUTO if self.auto_unseal is not None else SHAMIR
            return SealStatus(seal_type, False, True, 0, 0, 0, "", 0)
        return SealStatus(
            state.seal_type,
            True,
            self._root is None,
            state.threshold,
            state.shares,
            len(self._unseal_shares),
            self._unseal_nonce,
            state.generation,
        )

    def key_status(self) -> KeyStatus:
        """Active term, its installation time and wraps under it; Sealed while sealed."""
        return self.keys.key_status()

    # -- reading the store ------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Read the stored state and adopt it if it changed (True then).

        While unsealed that means loading the stored keyring (another instance rotated, or
        rekeyed: then through ``root_link``). If this instance cannot open it, it seals itself
        and raises Sealed: an operator must unseal it with the current shares.
        """
        stored = await self.store.load()
        current = self._state
        if stored == current:
            return False
        if stored is not None and current is not None and stored.generation < current.generation:
            # A read that began before our own write: never step back.
            return False
        if stored is None or self._root is None:
            if stored is None:
                self.seal()
            self._state = stored
            return True
        opened = _open_stored(stored, self._root)
        if opened is None:
            self.seal()
            self._state = stored
            log.error(
                "the stored keyring (generation {generation}) does not open with this "
                "instance's root key; sealed until unsealed with the current key shares",
                generation=stored.generation,
            )
            raise Sealed(
                "s3orch is sealed: the seal was rekeyed by another instance and this one "
                "could not follow; unseal it with the current key shares"
            )
        self._state, (self._root, keyring) = stored, opened
        self.keys.load(keyring)
        return True

    async def _current(self) -> SealState:
        await self.refresh()
        if self._state is None:
            raise NotInitialized()
        return self._state

    # -- init -------------------------------------------------------------------------------

    async def init(
        self, now: float, shares: int | None = None, threshold: int | None = None
    ) -> InitResult:
        """Make the root key and the keyring (term 1, installed at ``now``) and store them.

        With Shamir (no ``auto_unseal``), ``shares``/``threshold`` are required, the unseal key
        is split and the shares returned, and s3orch stays sealed (as Vault does). With
        auto-unseal they must be omitted, and s3orch is unsealed at once.
        """
        await self.refresh()
        if self._state is not None:
            raise AlreadyInitialized()
        root = secrets.token_bytes(KEY_SIZE)
        keyring = Keyring.new(now)
        keys: tuple[bytes, ...] = ()
        if self.auto_unseal is None:
            if shares is None or threshold is None:
                raise SealConfigError(
                    "invalid seal configuration: the number of key shares and the key "
                    "threshold are required"
                )
            validate_seal_config(shares, threshold)
            unseal_key = secrets.token_bytes(KEY_SIZE)
            keys = tuple(split(unseal_key, shares, threshold))
            sealed_root = _seal_root(unseal_key, root)
            seal_type: SealType = SHAMIR
        else:
            if shares is not None or threshold is not None:
                raise SealConfigError(
                    "invalid seal configuration: key shares cannot be used with auto-unseal"
                )
            sealed_root = await self.auto_unseal.wrap(root)
            shares = threshold = 1
            seal_type = AUTO
        state = SealState(seal_type, shares, threshold, sealed_root, keyring.encrypt(root, 1), 1)
        try:
            await self.store.replace(None, state)
        except StaleState:
            await self.refresh()
            raise AlreadyInitialized() from None
        self._state = state
        if seal_type == AUTO:
            self._unsealed(state, root, keyring)
        log.info("initialized the keyring seal ({seal_type})", seal_type=seal_type)
        return InitResult(keys, shares, threshold)

    # -- unseal and seal --------------------------------------------------------------------

    async def submit(self, share: bytes) -> SealStatus:
        """One unseal key share (``unseal KEY``). As Vault: a share already given is ignored;
        at the threshold the shares are combined, and if they do not open the stored root key
        progress resets and UnsealFailed is raised. Already unsealed: just the status."""
        state = self._state or await self._current()
        if self._root is not None:
            return self.status()
        if state.seal_type != SHAMIR:
            raise SealError("this seal is unsealed automatically; it takes no key shares")
        share = bytes(share)
        _check_share_size(share)
        if _has(self._unseal_shares, share):
            return self.status()
        if not self._unseal_nonce:
            self._unseal_nonce = _new_nonce()
        self._unseal_shares.append(share)
        if len(self._unseal_shares) < state.threshold:
            return self.status()

        collected, nonce = self._unseal_shares, self._unseal_nonce
        self.reset_unseal()
        state = await self._current()  # another instance may have rekeyed meanwhile
        if self._root is not None:
            return self.status()
        if len(collected) < state.threshold:
            self._unseal_shares, self._unseal_nonce = collected, nonce
            return self.status()
        unseal_key = _unseal_key_from(collected, state.threshold)
        root = None if unseal_key is None else _open_root(unseal_key, state.root)
        if root is None:
            raise UnsealFailed(
                "unseal failed: the key shares do not open the stored root key (message "
                "authentication failed); unseal progress was reset"
            )
        self._unsealed(state, root, Keyring.decrypt(state.keyring_blob, root, state.generation))
        log.info("unsealed with key shares")
        return self.status()

    def reset_unseal(self) -> SealStatus:
        """Forget the shares given so far (``unseal -reset``)."""
        self._unseal_shares = []
        self._unseal_nonce = ""
        return self.status()

    async def unseal_auto(self) -> SealStatus:
        """Unseal through ``auto_unseal`` (at startup, and whenever sealed). Provider errors
        pass through: KeyUnavailable means try again later."""
        state = await self._current()
        if self._root is not None:
            return self.status()
        if state.seal_type != AUTO:
            raise SealError("the stored seal uses key shares: unseal it with them")
        if self.auto_unseal is None:
            raise SealError(
                "the stored seal unseals automatically, but no auto-unseal key is configured"
            )
        root = await self.auto_unseal.unwrap(state.root)
        if len(root) != KEY_SIZE:
            raise KeyringCorrupt("the auto-unseal provider returned a root key of a wrong size")
        self._unsealed(state, root, Keyring.decrypt(state.keyring_blob, root, state.generation))
        log.info("unsealed automatically")
        return self.status()

    def _unsealed(self, state: SealState, root: bytes, keyring: Keyring) -> None:
        self._state, self._root = state, root
        self.keys.load(keyring)
        self.reset_unseal()

    def seal(self) -> None:
        """Forget the root key and the keyring; cancels unseal and rekey progress (as Vault)."""
        self._root = None
        self.keys.clear()
        self.reset_unseal()
        self._rekey = None

    # -- writing ----------------------------------------------------------------------------

    def _unsealed_parts(self) -> tuple[SealState, bytes, Keyring]:
        if self._state is None:
            raise NotInitialized()
        if self._root is None:
            raise Sealed()
        return self._state, self._root, self.keys.keyring

    async def _write(
        self,
        build: Callable[[SealState, bytes, Keyring], tuple[SealState, bytes, Keyring] | None],
    ) -> SealState | None:
        """Store what ``build`` makes of the current (state, root key, keyring); on a
        concurrent write, refresh and build again. ``build`` returns None to give up."""
        for _ in range(_WRITE_ATTEMPTS):
            state, root, keyring = self._unsealed_parts()
            built = build(state, root, keyring)
            if built is None:
                return None
            new_state, new_root, new_keyring = built
            try:
                await self.store.replace(state.generation, new_state)
            except StaleState:
                await self.refresh()
                continue
            self._state = new_state
            if self._root is not None:
                self._root = new_root
                self.keys.load(new_keyring)
            return new_state
        raise StaleState("the stored seal state kept changing; try again")

    @staticmethod
    def _carry_link(state: SealState, now: float) -> dict[str, Any]:
        if state.root_link and now < state.root_link_expires:
            return {"root_link": state.root_link, "root_link_expires": state.root_link_expires}
        return {"root_link": b"", "root_link_expires": 0.0}

    # -- rotation ---------------------------------------------------------------------------

    async def rotate(self, now: float) -> KeyStatus:
        """Add a term, installed at ``now``, and make it active (``operator rotate``)."""

        def build(
            state: SealState, root: bytes, keyring: Keyring
        ) -> tuple[SealState, bytes, Keyring]:
            return self._with_keyring(state, root, keyring.rotated(now), now)

        await self._write(build)
        log.info("rotated the keyring to term {term}", term=self.keys.keyring.active_term)
        return self.key_status()

    async def rotate_if_due(self, now: float) -> str | None:
        """Rotate if the active term is due (KeyringKeys.rotation_reason); the reason if so.

        Another instance may rotate at the same moment: the store's compare-and-swap lets one
        win, and the other sees the new term (no longer due) when it builds again.
        """
        if self._root is None or self.keys.rotation_reason(now) is None:
            return None
        reason: list[str] = []

        def build(
            state: SealState, root: bytes, keyring: Keyring
        ) -> tuple[SealState, bytes, Keyring] | None:
            why = self.keys.rotation_reason(now)
            if why is None:
                return None
            reason[:] = [why]
            return self._with_keyring(state, root, keyring.rotated(now), now)

        if await self._write(build) is None:
            return None
        log.info(
            "rotated the keyring to term {term}: {reason}",
            term=self.keys.keyring.active_term,
            reason=reason[0],
        )
        return reason[0]

    async def set_rotation_config(self, config: RotationConfig, now: float) -> None:
        """Store new automatic rotation settings (``sys/rotate/config``)."""

        def build(
            state: SealState, root: bytes, keyring: Keyring
        ) -> tuple[SealState, bytes, Keyring]:
            return self._with_keyring(state, root, keyring.with_rotation(config), now)

        await self._write(build)

    def _with_keyring(
        self, state: SealState, root: bytes, keyring: Keyring, now: float
    ) -> tuple[SealState, bytes, Keyring]:
        generation = state.generation + 1
        new_state = evolve(
            state,
            keyring_blob=keyring.encrypt(root, generation),
            generation=generation,
            **self._carry_link(state, now),
        )
        return new_state, root, keyring

    def _with_root(
        self,
        state: SealState,
        root: bytes,
        keyring: Keyring,
        new_root: bytes,
        sealed_root: WrappedKey,
        shares: int,
        threshold: int,
        now: float,
    ) -> tuple[SealState, bytes, Keyring]:
        generation = state.generation + 1
        new_state = SealState(
            state.seal_type,
            shares,
            threshold,
            sealed_root,
            keyring.encrypt(new_root, generation),
            generation,
            _make_link(root, new_root, generation),
            now + ROOT_LINK_LIFETIME,
        )
        return new_state, new_root, keyring

    async def rotate_root(self, now: float) -> None:
        """Auto-unseal only: a new root key, wrapped by the provider's primary key, and the
        keyring re-encrypted under it (Vault's ``sys/rotate/root``). With Shamir, rekey."""
        state, _, _ = self._unsealed_parts()
        if state.seal_type != AUTO or self.auto_unseal is None:
            raise SealError("the root key of a Shamir seal changes by rekeying")
        new_root = secrets.token_bytes(KEY_SIZE)
        sealed_root = await self.auto_unseal.wrap(new_root)

        def build(
            state: SealState, root: bytes, keyring: Keyring
        ) -> tuple[SealState, bytes, Keyring]:
            return self._with_root(state, root, keyring, new_root, sealed_root, 1, 1, now)

        await self._write(build)
        log.info("replaced the root key")

    # -- rekey ------------------------------------------------------------------------------

    def rekey_status(self) -> RekeyStatus:
        required = self._state.threshold if self._state is not None else 0
        rekey = self._rekey
        if rekey is None:
            return RekeyStatus(False, "", 0, 0, 0, required, False)
        return RekeyStatus(
            True,
            rekey.nonce,
            rekey.shares,
            rekey.threshold,
            len(rekey.collected),
            required,
            rekey.verify,
        )

    def rekey_init(self, shares: int, threshold: int, verify: bool = False) -> RekeyStatus:
        """Start replacing the unseal shares (``rekey -init``); returns the nonce that every
        ``rekey_update`` must quote. Needs an unsealed Shamir seal and no rekey under way."""
        state, _, _ = self._unsealed_parts()
        if state.seal_type != SHAMIR:
            raise SealError("rekey needs a seal with key shares; with auto-unseal use rotate_root")
        if self._rekey is not None:
            raise RekeyError("rekey already in progress")
        validate_seal_config(shares, threshold)
        self._rekey = _Rekey(_new_nonce(), shares, threshold, verify)
        log.info("rekey started")
        return self.rekey_status()

    def rekey_cancel(self, nonce: str) -> None:
        """Abandon the rekey (``rekey -cancel``); the current shares stay. The nonce is
        required, as recent Vault requires it. Nothing to cancel: nothing happens."""
        rekey = self._rekey
        if rekey is None:
            return
        self._check_nonce(rekey.nonce, nonce, "rekey")
        if rekey.committing:
            raise RekeyError("the rekey is being completed and can no longer be cancelled")
        self._rekey = None
        log.info("rekey cancelled")

    def _rekey_under_way(self) -> _Rekey:
        rekey = self._rekey
        if rekey is None:
            raise RekeyError("no rekey in progress")
        return rekey

    @staticmethod
    def _check_nonce(expected: str, given: str, what: str) -> None:
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise RekeyError(
                f'incorrect nonce supplied; nonce for this {what} operation is "{expected}"'
            )

    async def rekey_update(self, nonce: str, share: bytes, now: float) -> RekeyUpdate:
        """One current share for the rekey (``rekey -nonce=…``).

        A share given twice is refused. At the current threshold the shares must open the
        stored root key (else RekeyError, progress reset, the rekey stays open); then a new
        unseal key and root key are made and the new shares returned. Without verification
        they are stored at once; with it, they wait for ``rekey_verify``.
        """
        rekey = self._rekey_under_way()
        self._check_nonce(rekey.nonce, nonce, "rekey")
        if rekey.committing:
            raise RekeyError("the rekey is being completed; wait for it")
        if rekey.new_unseal_key is not None:
            raise RekeyError(
                "rekey operation already finished; verification must be performed; nonce "
                f'for the verification operation is "{rekey.verify_nonce}"'
            )
        state, _, _ = self._unsealed_parts()
        share = bytes(share)
        _check_share_size(share)
        if _has(rekey.collected, share):
            raise RekeyError("given key has already been provided during this generation operation")
        rekey.collected.append(share)
        if len(rekey.collected) < state.threshold:
            return self._rekey_update(rekey, False, ())

        collected, rekey.collected = rekey.collected, []
        rekey.committing = True
        try:
            state = await self._current()
            _, root, _ = self._unsealed_parts()
            if self._rekey is not rekey:
                raise RekeyError("the rekey was cancelled")
            unseal_key = _unseal_key_from(collected, state.threshold)
            opened = None if unseal_key is None else _open_root(unseal_key, state.root)
            if opened is None or not hmac.compare_digest(opened, root):
                raise RekeyError(
                    "root key verification failed: the key shares do not open the stored root "
                    "key (message authentication failed); rekey progress was reset"
                )
            rekey.authorized_root = opened
            new_unseal_key = secrets.token_bytes(KEY_SIZE)
            new_root = secrets.token_bytes(KEY_SIZE)
            keys = tuple(split(new_unseal_key, rekey.shares, rekey.threshold))
            if rekey.verify:
                rekey.new_unseal_key, rekey.new_root = new_unseal_key, new_root
                rekey.verify_nonce = _new_nonce()
                log.info("rekey: new key shares made, waiting for their verification")
                return self._rekey_update(rekey, True, keys)
            await self._commit_rekey(rekey, new_unseal_key, new_root, now)
            return self._rekey_update(rekey, True, keys)
        finally:
            rekey.committing = False

    def _rekey_update(self, rekey: _Rekey, complete: bool, keys: tuple[bytes, ...]) -> RekeyUpdate:
        required = self._state.threshold if self._state is not None else 0
        return RekeyUpdate(
            rekey.nonce,
            complete,
            len(rekey.collected),
            required,
            keys,
            rekey.verify,
            rekey.verify_nonce,
        )

    def rekey_verify_status(self) -> RekeyVerifyStatus:
        rekey = self._rekey
        if rekey is None or rekey.new_unseal_key is None:
            return RekeyVerifyStatus(False, "", 0, 0, 0, False)
        return RekeyVerifyStatus(
            True,
            rekey.verify_nonce,
            rekey.shares,
            rekey.threshold,
            len(rekey.verify_collected),
            False,
        )

    def rekey_verify_restart(self) -> RekeyVerifyStatus:
        """Drop verification progress and issue a new verification nonce; the pending new
        shares stay (Vault's ``DELETE sys/rekey/verify``)."""
        rekey = self._rekey
        if rekey is None or rekey.new_unseal_key is None or rekey.committing:
            raise RekeyError("no rekey verification in progress")
        rekey.verify_collected = []
        rekey.verify_nonce = _new_nonce()
        return self.rekey_verify_status()

    async def rekey_verify(self, nonce: str, share: bytes, now: float) -> RekeyVerifyStatus:
        """One of the *new* shares, proving it was received (``rekey -verify``). At the new
        threshold, if they combine into the new unseal key, the new shares and root key are
        stored and replace the old ones; if not, RekeyError and a new verification nonce."""
        rekey = self._rekey
        if rekey is None or rekey.new_unseal_key is None or rekey.committing:
            raise RekeyError("no rekey verification in progress")
        self._check_nonce(rekey.verify_nonce, nonce, "verify")
        share = bytes(share)
        _check_share_size(share)
        if _has(rekey.verify_collected, share):
            raise RekeyError("given key has already been provided during this verify operation")
        rekey.verify_collected.append(share)
        if len(rekey.verify_collected) < rekey.threshold:
            return self.rekey_verify_status()

        collected, rekey.verify_collected = rekey.verify_collected, []
        candidate = _unseal_key_from(collected, rekey.threshold)
        if candidate is None or not hmac.compare_digest(candidate, rekey.new_unseal_key):
            rekey.verify_nonce = _new_nonce()
            raise RekeyError("rekey verification failed; incorrect key shares supplied")
        assert rekey.new_root is not None
        rekey.committing = True
        try:
            await self._commit_rekey(rekey, rekey.new_unseal_key, rekey.new_root, now)
        finally:
            rekey.committing = False
        return RekeyVerifyStatus(True, rekey.verify_nonce, rekey.shares, rekey.threshold, 0, True)

    async def _commit_rekey(
        self, rekey: _Rekey, new_unseal_key: bytes, new_root: bytes, now: float
    ) -> None:
        sealed_root = _seal_root(new_unseal_key, new_root)

        def build(
            state: SealState, root: bytes, keyring: Keyring
        ) -> tuple[SealState, bytes, Keyring]:
            if self._rekey is not rekey:
                raise RekeyError("the rekey was cancelled")
            if not hmac.compare_digest(root, rekey.authorized_root):
                self._rekey = None
                raise RekeyError(
                    "the seal was rekeyed by another instance meanwhile; this rekey is "
                    "cancelled: start again with the current key shares"
                )
            return self._with_root(
                state, root, keyring, new_root, sealed_root, rekey.shares, rekey.threshold, now
            )

        await self._write(build)
        if self._rekey is rekey:
            self._rekey = None
        log.info(
            "rekeyed: {shares} new key shares, threshold {threshold}",
            shares=rekey.shares,
            threshold=rekey.threshold,
        )
