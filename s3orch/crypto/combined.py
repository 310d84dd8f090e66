"""Several key providers as one: the primary wraps, whichever holds the key unwraps.

This is how key sources are migrated (reference/anchor-encryption.md: the Go system could not):
with Vault as the new primary and the old local keys kept decrypt-only, every existing DEK stays
readable until rotation has re-wrapped it, and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from s3orch.crypto.keys import (
    SENC1_FINGERPRINT_PREFIX,
    IKeyProvider,
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
        self._ids = ids

    @property
    def primary_id(self) -> str:
        key_id: str = self.primary.primary_id
        return key_id

    def __repr__(self) -> str:
        return f"<CombinedKeys {' + '.join(repr(p) for p in self.providers)}>"

    def key_ids(self) -> dict[str, str]:
        return dict(self._ids)

    async def wrap(self, dek: bytes) -> WrappedKey:
        return await self.primary.wrap(dek)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        provider = self._by_fingerprint.get(wrapped.fingerprint)
        if provider is not None:
            return await provider.unwrap(wrapped)
        if wrapped.fingerprint.startswith(SENC1_FINGERPRINT_PREFIX):
            for candidate in self.providers:
                try:
                    return await candidate.unwrap(wrapped)
                except UnknownKey:
                    continue
        raise UnknownKey(wrapped.key_id, wrapped.fingerprint, self._configured())

    def _configured(self) -> str:
        return "configured keys: " + ", ".join(
            f"{key_id} ({key_fingerprint})" for key_fingerprint, key_id in self._ids.items()
        )
