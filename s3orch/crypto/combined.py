"""Several key providers as one: the primary wraps, whichever holds the key unwraps.

This is how key sources are migrated (reference/anchor-encryption.md: the Go system could not):
with Vault as the new primary and the old local keys kept decrypt-only, every existing DEK stays
readable until rotation has re-wrapped it, and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from s3orch.crypto.keys import (
    IKeyProvider,
    KeyUnavailable,
    UnknownKey,
    WrappedKey,
)


@implementer(IKeyProvider)
class CombinedKeys:
    """``primary`` wraps new DEKs; a DEK is unwrapped by the provider that has its fingerprint.

    A fingerprint no provider has is ``UnknownKey``: nothing is tried at random. DEKs the Go
    system wrapped name their key only by position (``senc1:`` fingerprints), so those go to
    each provider in turn, which identifies its keys by authentication (``LocalKeys``) or
    refuses with ``UnknownKey``.

    A provider's keys may change after construction (the keyring gains a term when rotated
    and lists none while sealed), so a fingerprint not listed then is offered to each provider,
    which opens it if it is its own and refuses it otherwise: a sealed keyring answers
    ``Sealed`` (raised if no other provider has the key), one that meets a term made by
    another instance reloads first. ``key_ids`` is read live.
    """

    def __init__(self, primary: IKeyProvider, others: Sequence[IKeyProvider] = ()) -> None:
        self.primary = primary
        self.providers: tuple[IKeyProvider, ...] = (primary, *others)
        by_fingerprint: dict[str, IKeyProvider] = {}
        ids: dict[str, str] = {}
        for provider in self.providers:
            for key_fingerprint, key_id in provider.key_ids().items():
                if key_fingerprint in by_fingerprint:
                    raise ValueError(
                        f"key {key_id} ({key_fingerprint}) is configured twice "
                        f"(also as {ids[key_fingerprint]})"
                    )
                by_fingerprint[key_fingerprint] = provider
                ids[key_fingerprint] = key_id
        self._by_fingerprint = by_fingerprint

    @property
    def primary_id(self) -> str:
        key_id: str = self.primary.primary_id
        return key_id

    def __repr__(self) -> str:
        return f"<CombinedKeys {' + '.join(repr(p) for p in self.providers)}>"

    def key_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        for provider in self.providers:
            for key_fingerprint, key_id in provider.key_ids().items():
                ids.setdefault(key_fingerprint, key_id)
        return ids

    async def wrap(self, dek: bytes) -> WrappedKey:
        return await self.primary.wrap(dek)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        provider = self._by_fingerprint.get(wrapped.fingerprint)
        if provider is not None:
            return await provider.unwrap(wrapped)
        # A key no provider listed when combined: one that came later (a keyring term), one
        # behind a seal, or a Go-era positional id. Each provider refuses keys not its own.
        unavailable: KeyUnavailable | None = None
        for candidate in self.providers:
            try:
                return await candidate.unwrap(wrapped)
            except UnknownKey:
                continue
            except KeyUnavailable as e:  # e.g. a sealed keyring: it might hold the key
                unavailable = e
        if unavailable is not None:
            raise unavailable
        raise UnknownKey(wrapped.key_id, wrapped.fingerprint, self._configured())

    def _configured(self) -> str:
        return "configured keys: " + ", ".join(
            f"{key_id} ({key_fingerprint})" for key_fingerprint, key_id in self.key_ids().items()
        )
