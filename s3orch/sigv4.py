"""AWS Signature Version 4 for S3: verify what clients send, sign what we send to backends.

Pure functions over strings and bytes: no reactor, no I/O, no clock. Callers pass
``now`` (epoch seconds) so tests and the server agree on time.

Both directions share one canonicalisation, so a request we sign is a request we
would accept. The canonical URI and query are built by percent-decoding what was
sent and re-encoding it once with AWS's rules: that is what S3 itself does, and
it makes the result independent of how a client (or treq) chose to escape
characters that did not need escaping.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from attrs import frozen

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "STREAMING_PAYLOAD",
    "STREAMING_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_PAYLOAD_TRAILER",
    "UNSIGNED_PAYLOAD",
    "AuthResult",
    "SigV4Error",
    "SignedRequest",
    "authenticate",
    "canonical_query",
    "canonical_uri",
    "presign_url",
    "sign_request",
    "signing_key",
    "uri_encode",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MAX_PRESIGN_EXPIRES = 604800  # one week, AWS's limit
SIGNING_KEY_CACHE_SIZE = 1024

_SPECIAL_PAYLOADS = frozenset(
    {
        UNSIGNED_PAYLOAD,
        STREAMING_PAYLOAD,
        STREAMING_PAYLOAD_TRAILER,
        STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    }
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_YYYYMMDD = re.compile(r"\d{8}")
_SPACES = re.compile(r"[ \t\r\n\x0b\x0c]+")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
_UNRESERVED_SLASH = re.compile(r"[A-Za-z0-9._~/-]*")

# Headers a signer must never sign: hop-by-hop ones that proxies rewrite, and
# user-agent (botocore's list, so our signatures match its byte for byte).
_UNSIGNABLE = frozenset(
    {
        "authorization",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

# x-amz-* headers that proxies add in front of S3 (CloudFront's request id);
# S3 accepts them unsigned, so we must too.
_UNSIGNED_AMZ_ALLOWED = frozenset({"x-amz-cf-id"})

_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)

# The HTTP status AWS answers with for each code we raise.
_STATUS = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "IncompleteBody": 400,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidRequest": 400,
    "MalformedTrailerError": 400,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
}

_MSG_HEADER_MALFORMED = "The authorization header is malformed; "
_MSG_CREDENTIAL_FORM = (
    'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
)
_MSG_QUERY_CREDENTIAL = "Error parsing the X-Amz-Credential parameter; "
_MSG_NO_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_MSG_NOT_SIGNED = "There were headers present in the request which were not signed"
_MSG_MECHANISM = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_MSG_BAD_PAYLOAD_HASH = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
    "or a valid sha256 value."
)


class SigV4Error(Exception):
    """An authentication failure, carrying the S3 error AWS would answer with.

    ``details`` holds the extra XML elements AWS adds (``HeadersNotSigned``,
    ``StringToSign``...). Nothing here ever contains a secret key.
    """

    code: str
    message: str
    status: int
    details: dict[str, str]

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else _STATUS.get(code, 400)
        self.details = dict(details or {})


@frozen
class SignedRequest:
    """A request as it arrived, before anything decoded it.

    ``raw_path`` and ``raw_query`` are the request-target exactly as sent. The
    signature covers bytes, and non-ASCII text here is encoded back as UTF-8: so
    decode the request-target and header values from the wire with
    ``.decode("utf-8", "surrogateescape")`` (not latin-1), which round-trips any bytes.
    """

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, str]  # lowercased names; repeated headers joined with ','


@frozen
class AuthResult:
    """Who signed a request, and what the body checks downstream need."""

    access_key: str
    date: str
    region: str
    service: str
    timestamp: str
    payload_hash: str  # lowercased when it is a hex digest
    signature: str
    signing_key: bytes
    presigned: bool

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


# -- canonical forms ---------------------------------------------------------------


def uri_encode(value: str | bytes, *, encode_slash: bool = True) -> str:
    """Percent-encode with AWS's rules: only A-Za-z0-9-._~ (and maybe '/') stay as is.

    Build backend URLs with it (``uri_encode(key, encode_slash=False)`` for a
    path): the URL sent is then already canonical, whatever the key holds.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return quote_from_bytes(raw, safe="" if encode_slash else "/")


def _reencode(raw: str, *, encode_slash: bool) -> str:
    # Decode exactly once ('+' stays '+'), then encode exactly once. Most names
    # and values are already canonical: skip the round trip for those.
    if (_UNRESERVED if encode_slash else _UNRESERVED_SLASH).fullmatch(raw):
        return raw
    return quote_from_bytes(
        unquote_to_bytes(raw.encode("utf-8", "surrogateescape")),
        safe="" if encode_slash else "/",
    )


def canonical_uri(raw_path: str) -> str:
    """The CanonicalURI S3 computes for a path as sent (S3 does not normalise '.'/'//')."""
    if not raw_path:
        return "/"
    return _reencode(raw_path, encode_slash=False)


def _split_query(raw_query: str) -> list[tuple[str, str]]:
    """Encoded (name, value) pairs, each decoded and re-encoded once."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_reencode(name, encode_slash=True), _reencode(value, encode_slash=True)))
    return pairs


def canonical_query(raw_query: str, *, drop: str | None = None) -> str:
    """The CanonicalQueryString for a query as sent, optionally without one parameter."""
    pairs = _split_query(raw_query)
    if drop is not None:
        pairs = [p for p in pairs if p[0] != drop]
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def _trim(value: str) -> str:
    # Trimall: strip, and collapse inner runs of whitespace to one space.
    if (
        "  " not in value
        and "\t" not in value
        and "\n" not in value
        and "\r" not in value
        and "\x0b" not in value
        and "\x0c" not in value
        and value.strip(" ") == value
    ):
        return value
    return _SPACES.sub(" ", value).strip(" ")


def _canonical_headers(headers: Mapping[str, str], names: Iterable[str]) -> str:
    lines = []
    for name in names:
        value = headers.get(name)
        if value is None:
            # Proxies drop "Expect: 100-continue"; anything else missing simply
            # signs as empty and fails to match.
            value = "100-continue" if name == "expect" else ""
        lines.append(f"{name}:{_trim(value)}\n")
    return "".join(lines)


def _canonical_request(
    method: str,
    uri: str,
    query: str,
    canonical_headers: str,
    signed_headers: str,
    payload_hash: str,
) -> str:
    return "\n".join((method, uri, query, canonical_headers, signed_headers, payload_hash))


def _string_to_sign(timestamp: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


# -- signing keys --------------------------------------------------------------------

_key_cache: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
_key_cache_lock = threading.Lock()


def _derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    key = hmac.digest(key, region.encode(), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one scope; cached, since every request needs one."""
    cache_key = (secret, date, region, service)
    with _key_cache_lock:
        key = _key_cache.get(cache_key)
        if key is not None:
            _key_cache.move_to_end(cache_key)
            return key
    key = _derive_signing_key(secret, date, region, service)
    with _key_cache_lock:
        _key_cache[cache_key] = key
        while len(_key_cache) > SIGNING_KEY_CACHE_SIZE:
            _key_cache.popitem(last=False)
    return key


def _sign(key: bytes, string_to_sign: str) -> str:
    return hmac.digest(key, string_to_sign.encode("utf-8", "surrogateescape"), "sha256").hex()


# -- verification --------------------------------------------------------------------

# Stands in for the secret of an unknown access key, so that rejecting one costs
# the same work as checking a real signature.
_DUMMY_SECRET = "s3orch-unknown-access-key-dummy-secret-0000000"


@frozen
class _Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@frozen
class _Parsed:
    """The parts of a signature, from either the header or the query."""

    credential: _Credential
    signed_headers: str
    signature: str
    timestamp: str
    when: float
    payload_hash: str
    canonical_query: str
    presigned: bool


@functools.lru_cache(maxsize=256)  # requests arriving in the same second share a date
def _parse_amz_date(value: str) -> float | None:
    m = _AMZ_DATE.fullmatch(value)
    if m is None:
        return None
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        return datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _format_amz_date(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def _parse_credential(value: str, malformed: Callable[[str], SigV4Error]) -> _Credential:
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or not _YYYYMMDD.fullmatch(parts[1]) or not parts[2]:
        raise malformed(_MSG_CREDENTIAL_FORM)
    access_key, date, region, service, terminal = parts
    if terminal != "aws4_request":
        raise malformed(f'incorrect terminal "{terminal}". This endpoint uses "aws4_request".')
    return _Credential(access_key, date, region, service)


def _check_scope(
    cred: _Credential,
    region: str | None,
    service: str,
    malformed: Callable[[str], SigV4Error],
) -> None:
    if cred.service != service:
        raise malformed(
            f'incorrect service "{cred.service}". This endpoint belongs to "{service}".'
        )
    if region is not None and cred.region != region:
        err = malformed(f"the region '{cred.region}' is wrong; expecting '{region}'")
        err.details["Region"] = region
        raise err


def _check_payload_hash(value: str) -> str:
    if value in _SPECIAL_PAYLOADS:
        return value
    if _HEX64.fullmatch(value):
        return value
    raise SigV4Error("InvalidArgument", _MSG_BAD_PAYLOAD_HASH)


def _split_signed_headers(value: str) -> list[str]:
    return value.split(";")


def _parse_header_auth(
    request: SignedRequest, authorization: str, region: str | None, service: str
) -> _Parsed:
    def malformed(detail: str) -> SigV4Error:
        return SigV4Error("AuthorizationHeaderMalformed", _MSG_HEADER_MALFORMED + detail)

    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS" or algorithm.startswith("AWS4-"):
            raise SigV4Error("InvalidRequest", _MSG_MECHANISM)
        # No ArgumentValue: the header may be a bare token, never echo it.
        raise SigV4Error(
            "InvalidArgument",
            "Unsupported Authorization Type",
            details={"ArgumentName": "Authorization"},
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in ("Credential", "SignedHeaders", "Signature") or name in fields:
            raise malformed(
                "the authorization header requires three components: "
                "Credential, SignedHeaders, and Signature."
            )
        fields[name] = value.strip()
    if len(fields) != 3:
        raise malformed(
            "the authorization header requires three components: "
            "Credential, SignedHeaders, and Signature."
        )
    cred = _parse_credential(fields["Credential"], malformed)
    _check_scope(cred, region, service, malformed)
    if not fields["SignedHeaders"]:
        raise malformed("SignedHeaders must not be empty.")

    declared = request.headers.get("x-amz-content-sha256")
    if declared is None:
        raise SigV4Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    payload_hash = _check_payload_hash(declared)

    timestamp, when = _header_timestamp(request.headers)
    if timestamp[:8] != cred.date:
        raise malformed("Invalid credential date. Date is not the same as X-Amz-Date.")
    return _Parsed(
        credential=cred,
        signed_headers=fields["SignedHeaders"],
        signature=fields["Signature"],
        timestamp=timestamp,
        when=when,
        payload_hash=payload_hash,
        canonical_query=canonical_query(request.raw_query),
        presigned=False,
    )


def _header_timestamp(headers: Mapping[str, str]) -> tuple[str, float]:
    """The signing time from x-amz-date, or else from Date (RFC 1123), as botocore allows."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        when = _parse_amz_date(amz_date.strip())
        if when is None:
            raise SigV4Error("AccessDenied", _MSG_NO_DATE)
        return amz_date.strip(), when
    date = headers.get("date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            # HTTP dates are GMT; "-0000" parses as naive.
            when = parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()
            return _format_amz_date(when), when
    raise SigV4Error("AccessDenied", _MSG_NO_DATE)


def _query_params(raw_query: str) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_to_bytes(name).decode("utf-8", "replace")
        params.setdefault(key, []).append(unquote_to_bytes(value).decode("utf-8", "replace"))
    return params


def _parse_query_auth(
    request: SignedRequest,
    params: Mapping[str, list[str]],
    now: float,
    max_skew: float,
    region: str | None,
    service: str,
) -> _Parsed:
    def error(detail: str) -> SigV4Error:
        return SigV4Error("AuthorizationQueryParametersError", detail)

    def malformed(detail: str) -> SigV4Error:
        return error(_MSG_QUERY_CREDENTIAL + detail)

    if any(len(params.get(name, ())) != 1 for name in _PRESIGN_PARAMS):
        raise error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters."
        )
    single = {name: params[name][0] for name in _PRESIGN_PARAMS}
    if single["X-Amz-Algorithm"] != ALGORITHM:
        raise error(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    cred = _parse_credential(single["X-Amz-Credential"], malformed)
    _check_scope(cred, region, service, malformed)

    timestamp = single["X-Amz-Date"]
    when = _parse_amz_date(timestamp)
    if when is None:
        raise error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if timestamp[:8] != cred.date:
        raise malformed("Invalid credential date. Date is not the same as X-Amz-Date.")

    raw_expires = single["X-Amz-Expires"]
    if not re.fullmatch(r"-?\d{1,12}", raw_expires):
        raise error("X-Amz-Expires should be a number")
    expires = int(raw_expires)
    if expires < 0:
        raise error("X-Amz-Expires must be non-negative")
    if expires > MAX_PRESIGN_EXPIRES:
        raise error(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given "
            "X-Amz-Expires must be less than 604800 seconds"
        )
    if when - now > max_skew:
        raise SigV4Error("AccessDenied", "Request is not valid yet")
    if expires == 0 or now > when + expires:
        raise SigV4Error(
            "AccessDenied",
            "Request has expired",
            details={
                "X-Amz-Expires": str(expires),
                "Expires": _iso(when + expires),
                "ServerTime": _iso(now),
            },
        )
    if not single["X-Amz-SignedHeaders"]:
        raise error("X-Amz-SignedHeaders must not be empty.")

    # Payload: the query's X-Amz-Content-Sha256 (aws-sdk-js v3), else a signed
    # x-amz-content-sha256 header (botocore signs it when present), else unsigned.
    signed = _split_signed_headers(single["X-Amz-SignedHeaders"].lower())
    if "X-Amz-Content-Sha256" in params:
        payload_hash = _check_payload_hash(params["X-Amz-Content-Sha256"][0])
    elif "x-amz-content-sha256" in signed and "x-amz-content-sha256" in request.headers:
        payload_hash = _check_payload_hash(request.headers["x-amz-content-sha256"])
    else:
        payload_hash = UNSIGNED_PAYLOAD
    return _Parsed(
        credential=cred,
        signed_headers=single["X-Amz-SignedHeaders"],
        signature=single["X-Amz-Signature"],
        timestamp=timestamp,
        when=when,
        payload_hash=payload_hash,
        canonical_query=canonical_query(request.raw_query, drop="X-Amz-Signature"),
        presigned=True,
    )


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _check_signed_headers(headers: Mapping[str, str], signed: list[str]) -> None:
    """``host`` and every x-amz-* header must be covered by the signature."""
    covered = set(signed)
    missing = ["host"] if "host" not in covered else []
    missing += sorted(
        n
        for n in headers
        if n.startswith("x-amz-") and n not in covered and n not in _UNSIGNED_AMZ_ALLOWED
    )
    if missing:
        raise SigV4Error(
            "AccessDenied", _MSG_NOT_SIGNED, details={"HeadersNotSigned": ", ".join(missing)}
        )


def authenticate(
    request: SignedRequest,
    lookup_secret: Callable[[str], str | None],
    now: float,
    max_skew: float = 900.0,
    *,
    region: str | None = None,
    service: str = "s3",
) -> AuthResult:
    """Check a request's SigV4 signature (header or presigned) and say who signed it.

    ``region``, when given, is the only region accepted in the credential scope;
    ``None`` accepts any (clients are often configured with an arbitrary one).
    The payload itself is not checked here: the caller compares the body with
    ``payload_hash`` or feeds an aws-chunked body to ``ChunkedDecoder``.
    Raises ``SigV4Error`` carrying the code AWS S3 would answer with.
    """
    authorization = request.headers.get("authorization")
    params = _query_params(request.raw_query) if "X-Amz-" in request.raw_query else {}
    query_auth = any(
        name in params for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
    )
    if authorization is not None and query_auth:
        raise SigV4Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            details={"ArgumentName": "Authorization"},
        )
    if authorization is not None:
        parsed = _parse_header_auth(request, authorization, region, service)
        if abs(now - parsed.when) > max_skew:
            raise SigV4Error(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                details={
                    "RequestTime": parsed.timestamp,
                    "ServerTime": _iso(now),
                    "MaxAllowedSkewMilliseconds": str(int(max_skew * 1000)),
                },
            )
    elif query_auth:
        parsed = _parse_query_auth(request, params, now, max_skew, region, service)
    elif "AWSAccessKeyId" in request.raw_query and "Signature" in request.raw_query:
        raise SigV4Error("InvalidRequest", _MSG_MECHANISM)
    else:
        raise SigV4Error("AccessDenied", "Access Denied")

    signed = _split_signed_headers(parsed.signed_headers.lower())
    _check_signed_headers(request.headers, signed)

    cred = parsed.credential
    secret = lookup_secret(cred.access_key)
    key = signing_key(
        secret if secret is not None else _DUMMY_SECRET, cred.date, cred.region, cred.service
    )
    canonical_request = _canonical_request(
        request.method,
        canonical_uri(request.raw_path),
        parsed.canonical_query,
        _canonical_headers(request.headers, signed),
        parsed.signed_headers,
        parsed.payload_hash,
    )
    string_to_sign = _string_to_sign(parsed.timestamp, cred.scope, canonical_request)
    expected = _sign(key, string_to_sign)
    provided = parsed.signature.encode("utf-8", "surrogateescape")
    matches = hmac.compare_digest(expected.encode(), provided)
    if secret is None:
        raise SigV4Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            details={"AWSAccessKeyId": cred.access_key},
        )
    if not matches:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            details={
                "AWSAccessKeyId": cred.access_key,
                "StringToSign": string_to_sign,
                "SignatureProvided": parsed.signature,
                "CanonicalRequest": canonical_request,
            },
        )
    payload_hash = parsed.payload_hash
    if _HEX64.fullmatch(payload_hash):
        payload_hash = payload_hash.lower()
    return AuthResult(
        access_key=cred.access_key,
        date=cred.date,
        region=cred.region,
        service=cred.service,
        timestamp=parsed.timestamp,
        payload_hash=payload_hash,
        signature=expected,
        signing_key=key,
        presigned=parsed.presigned,
    )


# -- signing -------------------------------------------------------------------------


def _host_from_url(url: str) -> tuple[str, str, str]:
    """(host header, raw path, raw query) for a URL; the host as botocore and Agent send it."""
    parts = urlsplit(url)
    host = parts.hostname or ""  # lowercased, userinfo dropped
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{port}"
    return host, parts.path, parts.query


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_hash: str,
    access_key: str,
    secret_key: str,
    region: str,
    now: float,
    service: str = "s3",
) -> dict[str, str]:
    """The headers to add so that an S3 server accepts this request.

    Returns ``authorization``, ``x-amz-date`` and ``x-amz-content-sha256``;
    any of those already in ``headers`` are replaced. Every other header given
    is signed, except hop-by-hop ones and user-agent; ``host`` is taken from the
    URL unless given. Send the URL exactly as passed (see ``uri_encode``).
    """
    host, raw_path, raw_query = _host_from_url(url)
    timestamp = _format_amz_date(now)
    date = timestamp[:8]
    to_sign: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _UNSIGNABLE or lname in ("x-amz-date", "x-amz-content-sha256"):
            continue
        to_sign[lname] = value
    to_sign.setdefault("host", host)
    to_sign["x-amz-date"] = timestamp
    to_sign["x-amz-content-sha256"] = payload_hash
    names = sorted(to_sign)
    signed_headers = ";".join(names)
    scope = f"{date}/{region}/{service}/aws4_request"
    canonical_request = _canonical_request(
        method.upper(),
        canonical_uri(raw_path),
        canonical_query(raw_query),
        _canonical_headers(to_sign, names),
        signed_headers,
        payload_hash,
    )
    signature = _sign(
        signing_key(secret_key, date, region, service),
        _string_to_sign(timestamp, scope, canonical_request),
    )
    return {
        "authorization": (
            f"{ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        ),
        "x-amz-date": timestamp,
        "x-amz-content-sha256": payload_hash,
    }


def presign_url(
    method: str,
    url: str,
    access_key: str,
    secret_key: str,
    region: str,
    now: float,
    expires: int,
    service: str = "s3",
) -> str:
    """A presigned URL (only ``host`` signed, payload unsigned), like botocore's."""
    host, raw_path, raw_query = _host_from_url(url)
    timestamp = _format_amz_date(now)
    date = timestamp[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    auth_query = "&".join(
        f"{name}={uri_encode(value)}"
        for name, value in (
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{access_key}/{scope}"),
            ("X-Amz-Date", timestamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        )
    )
    query = f"{raw_query}&{auth_query}" if raw_query else auth_query
    canonical_request = _canonical_request(
        method.upper(),
        canonical_uri(raw_path),
        canonical_query(query),
        _canonical_headers({"host": host}, ["host"]),
        "host",
        UNSIGNED_PAYLOAD,
    )
    signature = _sign(
        signing_key(secret_key, date, region, service),
        _string_to_sign(timestamp, scope, canonical_request),
    )
    base = url.split("#", 1)[0].split("?", 1)[0]
    return f"{base}?{query}&X-Amz-Signature={signature}"
