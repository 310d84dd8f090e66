"""The aws-chunked body decoder: framing, chunk and trailer signatures, limits."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import io
import time
import zlib
from collections.abc import Sequence

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.s3api.chunked import MAX_LINE, ChunkedDecoder
from s3orch.sigv4 import (
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    AuthResult,
    SignedRequest,
    SigV4Error,
    authenticate,
    sign_request,
    signing_key,
)
from s3orch.testing.aws_chunked import ChunkSigning, encode_aws_chunked

AK = "AKIDCHUNKED"
SK = "chunked-secret/+="
REGION = "us-east-1"
NOW = float(calendar.timegm((2026, 11, 25, 12, 0, 0)))
SIGNED_MODES = [STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER]
ALL_MODES = [*SIGNED_MODES, STREAMING_UNSIGNED_PAYLOAD_TRAILER]


def auth_for(mode: str) -> AuthResult:
    """A real AuthResult, from a request signed for this streaming mode."""
    headers = {"host": "s3.test", "content-encoding": "aws-chunked"}
    headers.update(sign_request("PUT", "http://s3.test/b/k", headers, mode, AK, SK, REGION, NOW))
    return authenticate(SignedRequest("PUT", "/b/k", "", headers), {AK: SK}.get, NOW)


def _hmac(auth: AuthResult, text: str) -> str:
    return hmac.new(auth.signing_key, text.encode(), hashlib.sha256).hexdigest()


def encode(
    payload: bytes,
    chunk_size: int,
    mode: str,
    auth: AuthResult | None = None,
    trailers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Frame ``payload`` with the shared encoder, signed as ``mode`` requires."""
    signing = None
    if mode != STREAMING_UNSIGNED_PAYLOAD_TRAILER:
        assert auth is not None
        signing = ChunkSigning(auth.signing_key, auth.timestamp, auth.scope, auth.signature)
    return encode_aws_chunked(
        payload, chunk_size, signing, trailers, sign_trailers=mode == STREAMING_PAYLOAD_TRAILER
    )


def decode(
    body: bytes,
    mode: str,
    auth: AuthResult | None,
    length: int | None,
    splits: Sequence[int] = (),
) -> tuple[bytes, dict[str, str]]:
    decoder = ChunkedDecoder(mode, auth, length)
    out = bytearray()
    start = 0
    for cut in [*sorted(splits), len(body)]:
        out += decoder.feed(body[start:cut])
        start = cut
    return bytes(out), decoder.finish()


def expect(error: type[SigV4Error], code: str, status: int, fn: object) -> None:
    assert callable(fn)
    with pytest.raises(error) as info:
        fn()
    assert (info.value.code, info.value.status) == (code, status), info.value.message


@pytest.fixture(scope="module")
def auths() -> dict[str, AuthResult]:
    return {mode: auth_for(mode) for mode in SIGNED_MODES}


# -- known answers ---------------------------------------------------------------------

DOC_KEY = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")


def doc_auth(mode: str, seed: str) -> AuthResult:
    return AuthResult(
        access_key="AKIAIOSFODNN7EXAMPLE",
        date="20130524",
        region="us-east-1",
        service="s3",
        timestamp="20130524T000000Z",
        payload_hash=mode,
        signature=seed,
        signing_key=DOC_KEY,
        presigned=False,
    )


def test_aws_documentation_streaming_example() -> None:
    """The chunked-upload example from the AWS documentation decodes."""
    auth = doc_auth(
        STREAMING_PAYLOAD, "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    )
    body = (
        b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        b"\r\n" + b"a" * 65536 + b"\r\n"
        b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        b"\r\n" + b"a" * 1024 + b"\r\n"
        b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        b"\r\n\r\n"
    )
    assert len(body) == 66824  # the example's Content-Length
    assert decode(body, STREAMING_PAYLOAD, auth, 66560) == (b"a" * 66560, {})


def test_aws_documentation_trailer_example() -> None:
    """The signed-trailer example from the AWS documentation decodes."""
    auth = doc_auth(
        STREAMING_PAYLOAD_TRAILER,
        "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
    )
    body = (
        b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"
        b"\r\n" + b"a" * 65536 + b"\r\n"
        b"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"
        b"\r\n" + b"a" * 1024 + b"\r\n"
        b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
        b"\r\n"
        b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
        b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
        b"\r\n\r\n"
    )
    payload, trailers = decode(body, STREAMING_PAYLOAD_TRAILER, auth, 66560)
    assert payload == b"a" * 66560
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}


def test_botocore_unsigned_trailer_body() -> None:
    """A body from botocore's AwsChunkedWrapper (what aws cli sends) decodes with its CRC32."""
    payload = bytes(range(256)) * 300
    wrapper = AwsChunkedWrapper(
        io.BytesIO(payload),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=8192,
    )
    body = wrapper.read()
    out, trailers = decode(body, STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, len(payload))
    assert out == payload
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    assert trailers == {"x-amz-checksum-crc32": crc}


def test_botocore_unsigned_body_without_checksum() -> None:
    """botocore's aws-chunked framing with no trailer at all decodes."""
    wrapper = AwsChunkedWrapper(io.BytesIO(b"hello world"), chunk_size=4)
    body = wrapper.read()
    assert decode(body, STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, 11) == (b"hello world", {})


# -- round trips -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(ALL_MODES),
    payload=st.binary(max_size=3000),
    chunk_size=st.integers(1, 1200),
    splits=st.lists(st.integers(0, 4000), max_size=12),
    with_trailer=st.booleans(),
)
def test_round_trip_with_arbitrary_splits(
    auths: dict[str, AuthResult],
    mode: str,
    payload: bytes,
    chunk_size: int,
    splits: list[int],
    with_trailer: bool,
) -> None:
    """Any body decodes to its payload however the bytes are split across feeds."""
    auth = auths.get(mode)
    trailers = [("x-amz-checksum-sha256", "abc=")] if with_trailer and mode in ALL_MODES[1:] else []
    body = encode(payload, chunk_size, mode, auth, trailers)
    cuts = [min(s, len(body)) for s in splits]
    assert decode(body, mode, auth, len(payload), cuts) == (payload, dict(trailers))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_one_byte_at_a_time(auths: dict[str, AuthResult], mode: str) -> None:
    """Feeding one byte at a time gives the same payload and trailers."""
    auth = auths.get(mode)
    payload = bytes(range(256)) * 5
    trailers = [] if mode == STREAMING_PAYLOAD else [("x-amz-checksum-crc32", "AAAAAA==")]
    body = encode(payload, 300, mode, auth, trailers)
    assert decode(body, mode, auth, len(payload), range(len(body))) == (payload, dict(trailers))


def test_empty_payload(auths: dict[str, AuthResult]) -> None:
    """A body that is only the final chunk decodes to nothing."""
    auth = auths[STREAMING_PAYLOAD]
    assert decode(encode(b"", 10, STREAMING_PAYLOAD, auth), STREAMING_PAYLOAD, auth, 0) == (
        b"",
        {},
    )


def test_unknown_decoded_length_is_not_checked(auths: dict[str, AuthResult]) -> None:
    """Without x-amz-decoded-content-length any total is accepted."""
    auth = auths[STREAMING_PAYLOAD]
    body = encode(b"abc" * 10, 7, STREAMING_PAYLOAD, auth)
    assert decode(body, STREAMING_PAYLOAD, auth, None)[0] == b"abc" * 10


def test_several_trailers_in_either_canonical_order(auths: dict[str, AuthResult]) -> None:
    """Signed trailers verify whether the signer hashed them as sent or sorted."""
    auth = auths[STREAMING_PAYLOAD_TRAILER]
    trailers = [("x-amz-checksum-sha256", "b"), ("x-amz-checksum-crc32", "a")]
    body = encode(b"data", 4, STREAMING_PAYLOAD_TRAILER, auth, trailers)
    assert decode(body, STREAMING_PAYLOAD_TRAILER, auth, 4)[1] == dict(trailers)
    # A signer that sorted before hashing: re-sign the trailer part that way.
    head = body[: body.index(b"x-amz-checksum-sha256")]
    last_signature = head.rsplit(b"chunk-signature=", 1)[1][:64].decode()
    canonical = b"x-amz-checksum-crc32:a\nx-amz-checksum-sha256:b\n"
    signature = _hmac(
        auth,
        f"AWS4-HMAC-SHA256-TRAILER\n{auth.timestamp}\n{auth.scope}\n{last_signature}\n"
        f"{hashlib.sha256(canonical).hexdigest()}",
    )
    sorted_body = (
        head
        + b"x-amz-checksum-sha256:b\r\nx-amz-checksum-crc32:a\r\n"
        + f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()
    )
    assert decode(sorted_body, STREAMING_PAYLOAD_TRAILER, auth, 4)[1] == dict(trailers)


def test_expected_trailers_are_enforced() -> None:
    """Declared x-amz-trailer names must be exactly the trailers sent."""
    body = encode(
        b"x", 1, STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, [("x-amz-checksum-crc32", "a")]
    )
    ok = ChunkedDecoder(
        STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, 1, expected_trailers=["X-Amz-Checksum-CRC32"]
    )
    ok.feed(body)
    assert ok.finish() == {"x-amz-checksum-crc32": "a"}
    other = ChunkedDecoder(
        STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, 1, expected_trailers=["x-amz-checksum-sha1"]
    )
    other.feed(body)
    expect(SigV4Error, "MalformedTrailerError", 400, other.finish)


def test_large_chunks_decode_quickly(auths: dict[str, AuthResult]) -> None:
    """8 MiB in 1 MiB signed chunks, fed in 64 KiB pieces, decodes in well under a second."""
    auth = auths[STREAMING_PAYLOAD]
    payload = bytes(range(256)) * (8 * 4096)
    body = encode(payload, 1 << 20, STREAMING_PAYLOAD, auth)
    started = time.perf_counter()
    out, _ = decode(body, STREAMING_PAYLOAD, auth, len(payload), range(0, len(body), 65536))
    assert time.perf_counter() - started < 1.0
    assert out == payload


def test_feed_returns_input_without_copy_for_pure_data(auths: dict[str, AuthResult]) -> None:
    """A feed that holds only chunk data is returned as the very same bytes object."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    decoder.feed(b"10\r\n")
    piece = b"0123456789abcdef"
    assert decoder.feed(piece) is piece


# -- signature failures ----------------------------------------------------------------


@pytest.mark.parametrize("mode", SIGNED_MODES)
def test_tampered_chunk_data(auths: dict[str, AuthResult], mode: str) -> None:
    """Changing one byte of chunk data is 403 SignatureDoesNotMatch."""
    auth = auths[mode]
    body = bytearray(encode(b"hello world, hello chunks", 8, mode, auth))
    body[body.index(b"ello")] ^= 0x20
    expect(SigV4Error, "SignatureDoesNotMatch", 403, lambda: decode(bytes(body), mode, auth, 25))


@pytest.mark.parametrize("mode", SIGNED_MODES)
def test_tampered_chunk_signature(auths: dict[str, AuthResult], mode: str) -> None:
    """A wrong chunk signature is 403 SignatureDoesNotMatch."""
    auth = auths[mode]
    body = encode(b"hello", 8, mode, auth)
    at = body.index(b"chunk-signature=") + len(b"chunk-signature=")
    flipped = body[:at] + (b"0" if body[at : at + 1] != b"0" else b"1") + body[at + 1 :]
    expect(SigV4Error, "SignatureDoesNotMatch", 403, lambda: decode(flipped, mode, auth, 5))


def test_reordered_chunks(auths: dict[str, AuthResult]) -> None:
    """Swapping two validly signed chunks breaks the signature chain."""
    auth = auths[STREAMING_PAYLOAD]
    body = encode(b"AAAABBBB", 4, STREAMING_PAYLOAD, auth)
    first_end = body.index(b"\r\n", body.index(b"\r\n") + 2) + 2
    second_end = body.index(b"\r\n", body.index(b"\r\n", first_end) + 2) + 2
    swapped = body[first_end:second_end] + body[:first_end] + body[second_end:]
    expect(
        SigV4Error,
        "SignatureDoesNotMatch",
        403,
        lambda: decode(swapped, STREAMING_PAYLOAD, auth, 8),
    )


def test_chunks_from_another_request(auths: dict[str, AuthResult]) -> None:
    """Chunks signed for one request do not verify under another's seed signature."""
    other = auth_for(STREAMING_PAYLOAD_TRAILER)
    body = encode(b"data", 4, STREAMING_PAYLOAD, auths[STREAMING_PAYLOAD])
    expect(
        SigV4Error,
        "SignatureDoesNotMatch",
        403,
        lambda: decode(body, STREAMING_PAYLOAD, other, 4),
    )


def test_tampered_signed_trailer(auths: dict[str, AuthResult]) -> None:
    """Changing a signed trailer's value is 403 SignatureDoesNotMatch."""
    auth = auths[STREAMING_PAYLOAD_TRAILER]
    body = encode(b"data", 4, STREAMING_PAYLOAD_TRAILER, auth, [("x-amz-checksum-crc32", "AAAA")])
    tampered = body.replace(b"crc32:AAAA", b"crc32:BBBB")
    expect(
        SigV4Error,
        "SignatureDoesNotMatch",
        403,
        lambda: decode(tampered, STREAMING_PAYLOAD_TRAILER, auth, 4),
    )


def test_missing_trailer_signature(auths: dict[str, AuthResult]) -> None:
    """A signed-trailer body without x-amz-trailer-signature is 400 MalformedTrailerError."""
    auth = auths[STREAMING_PAYLOAD_TRAILER]
    body = encode(b"data", 4, STREAMING_PAYLOAD_TRAILER, auth, [("x-amz-checksum-crc32", "AAAA")])
    start = body.index(b"x-amz-trailer-signature")
    stripped = body[:start] + b"\r\n"
    expect(
        SigV4Error,
        "MalformedTrailerError",
        400,
        lambda: decode(stripped, STREAMING_PAYLOAD_TRAILER, auth, 4),
    )


def test_trailer_after_signature_is_rejected(auths: dict[str, AuthResult]) -> None:
    """A trailer line after x-amz-trailer-signature (so unsigned) is 400 MalformedTrailerError."""
    auth = auths[STREAMING_PAYLOAD_TRAILER]
    body = encode(b"data", 4, STREAMING_PAYLOAD_TRAILER, auth, [("x-amz-checksum-crc32", "AAAA")])
    injected = body[:-2] + b"x-amz-checksum-sha1:evil\r\n\r\n"
    expect(
        SigV4Error,
        "MalformedTrailerError",
        400,
        lambda: decode(injected, STREAMING_PAYLOAD_TRAILER, auth, 4),
    )


def test_trailers_in_a_mode_without_them(auths: dict[str, AuthResult]) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD bodies may not carry (unsigned) trailers."""
    auth = auths[STREAMING_PAYLOAD]
    body = encode(b"data", 4, STREAMING_PAYLOAD, auth)
    injected = body[:-2] + b"x-amz-checksum-crc32:AAAA\r\n\r\n"
    expect(
        SigV4Error,
        "IncompleteBody",
        400,
        lambda: decode(injected, STREAMING_PAYLOAD, auth, 4),
    )


def test_missing_chunk_signature_in_signed_mode(auths: dict[str, AuthResult]) -> None:
    """An unsigned chunk inside a signed stream is 400 IncompleteBody."""
    auth = auths[STREAMING_PAYLOAD]
    expect(
        SigV4Error,
        "IncompleteBody",
        400,
        lambda: decode(b"4\r\ndata\r\n0\r\n\r\n", STREAMING_PAYLOAD, auth, 4),
    )


# -- framing and limits ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_truncation_is_rejected(auths: dict[str, AuthResult], mode: str) -> None:
    """A body cut short at any byte is rejected, never accepted as complete."""
    auth = auths.get(mode)
    trailers = [] if mode == STREAMING_PAYLOAD else [("x-amz-checksum-crc32", "AAAA")]
    body = encode(b"0123456789" * 3, 7, mode, auth, trailers)
    for cut in range(len(body)):
        decoder = ChunkedDecoder(mode, auth, None)
        with pytest.raises(SigV4Error) as info:
            decoder.feed(body[:cut])
            decoder.finish()
        assert info.value.code in ("IncompleteBody", "MalformedTrailerError"), cut


@pytest.mark.parametrize("declared", [29, 31, 0])
def test_decoded_length_mismatch(auths: dict[str, AuthResult], declared: int) -> None:
    """A total different from x-amz-decoded-content-length is 400 IncompleteBody."""
    auth = auths[STREAMING_PAYLOAD]
    body = encode(b"x" * 30, 8, STREAMING_PAYLOAD, auth)
    expect(
        SigV4Error,
        "IncompleteBody",
        400,
        lambda: decode(body, STREAMING_PAYLOAD, auth, declared),
    )


@pytest.mark.parametrize(
    "body",
    [
        b"4\ndata\r\n0\r\n\r\n",  # bare LF
        b"4\r\ndataXY0\r\n\r\n",  # no CRLF after data
        b"g\r\n",  # not hex
        b"-4\r\n",
        b" 4\r\n",
        b"0x4\r\n",
        b"\r\n",  # empty size
        b"11111111111111111\r\n",  # 17 hex digits
        b"ffffffffffffffff\r\n",  # absurd size
        b"0\r\n\r\nextra",  # data after the end
        b"0\r\nno-colon\r\n\r\n",
        b"0\r\n:value\r\n\r\n",
        b"0\r\nx-amz-checksum-crc32:a\r\nx-amz-checksum-crc32:b\r\n\r\n",
        b"0\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n",  # not a signed mode
        b"0\r\nx-amz-checksum-crc32:a\n\r\n",
    ],
)
def test_malformed_unsigned_framing(body: bytes) -> None:
    """Broken aws-chunked framing is rejected with a 400."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    with pytest.raises(SigV4Error) as info:
        decoder.feed(body)
        decoder.finish()
    assert info.value.code in ("IncompleteBody", "MalformedTrailerError")
    assert info.value.status == 400


def test_long_size_line_is_rejected_without_buffering() -> None:
    """A chunk-size line longer than MAX_LINE fails, even fed byte by byte."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    with pytest.raises(SigV4Error) as info:
        for _ in range(MAX_LINE + 1):
            decoder.feed(b"0")
    assert info.value.code == "IncompleteBody"
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    expect(SigV4Error, "IncompleteBody", 400, lambda: decoder.feed(b"1;" + b"x" * 10**6))


def test_endless_trailers_are_rejected() -> None:
    """A never-ending trailer section fails once past the trailer budget."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    decoder.feed(b"0\r\n")
    with pytest.raises(SigV4Error) as info:
        for i in range(10_000):
            decoder.feed(f"x-amz-meta-{i}:{'v' * 100}\r\n".encode())
    assert info.value.code == "MalformedTrailerError"


def test_chunk_larger_than_declared_length_fails_early() -> None:
    """A chunk header announcing more than x-amz-decoded-content-length fails at once."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, 10)
    expect(SigV4Error, "IncompleteBody", 400, lambda: decoder.feed(b"400\r\n"))


def test_errors_are_sticky() -> None:
    """After an error every later call raises the same error."""
    decoder = ChunkedDecoder(STREAMING_UNSIGNED_PAYLOAD_TRAILER, None, None)
    with pytest.raises(SigV4Error) as first:
        decoder.feed(b"zz\r\n")
    with pytest.raises(SigV4Error) as again:
        decoder.feed(b"0\r\n\r\n")
    assert again.value is first.value
    with pytest.raises(SigV4Error):
        decoder.finish()


def test_constructor_rejects_misuse() -> None:
    """Non-streaming payload hashes, and signed modes without auth, are programming errors."""
    with pytest.raises(ValueError):
        ChunkedDecoder("UNSIGNED-PAYLOAD", None, None)
    with pytest.raises(ValueError):
        ChunkedDecoder(STREAMING_PAYLOAD, None, None)
