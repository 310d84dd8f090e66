"""Who is asking: SigV4 (header, presigned, streaming) or a legacy X-Proxy-Token."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from attrs import frozen

from s3orch.config import BucketConfig
from s3orch.s3api.errors import S3Error
from s3orch.sigv4 import AuthResult, SignedRequest, SigV4Error, authenticate


@frozen
class Principal:
    """An authenticated caller and the buckets its credential reaches."""

    name: str  # access key id, or "token" for a proxy token (never the token itself)
    buckets: frozenset[str]
    sigv4: AuthResult | None = None


class Credentials:
    """Every configured credential, looked up without leaking timing about secrets."""

    def __init__(self, buckets: Sequence[BucketConfig]) -> None:
        self._secrets: dict[str, tuple[str, str]] = {}
        self._tokens: dict[bytes, tuple[bytes, str]] = {}
        for bucket in buckets:
            for cred in bucket.credentials:
                if cred.access_key_id and cred.secret_access_key:
                    self._secrets[cred.access_key_id] = (cred.secret_access_key, bucket.name)
                if cred.token:
                    token = cred.token.encode()
                    self._tokens[hashlib.sha256(token).digest()] = (token, bucket.name)

    def secret(self, access_key: str) -> str | None:
        entry = self._secrets.get(access_key)
        return entry[0] if entry else None

    def authenticate(self, request: SignedRequest, now: float) -> Principal:
        """Authenticate ``request`` or raise the S3Error AWS would answer."""
        token = request.headers.get("x-proxy-token")
        if token is not None and "authorization" not in request.headers:
            return self._by_token(token.encode())
        if "authorization" not in request.headers and "X-Amz-Algorithm" not in request.raw_query:
            raise S3Error("AccessDenied", "Access Denied")
        try:
            result = authenticate(request, self.secret, now)
        except SigV4Error as e:
            raise S3Error(e.code, e.message, e.status) from None
        bucket = self._secrets[result.access_key][1]
        return Principal(result.access_key, frozenset([bucket]), result)

    def _by_token(self, token: bytes) -> Principal:
        # Look up by digest so the dict probe reveals nothing useful about the
        # token, then confirm in constant time.
        entry = self._tokens.get(hashlib.sha256(token).digest())
        expected = entry[0] if entry else b"\0" * 32
        if not hmac.compare_digest(expected, token) or entry is None:
            raise S3Error("AccessDenied", "Access Denied")
        return Principal("token", frozenset([entry[1]]))
