"""Shamir's secret sharing over GF(2^8), share for share compatible with Vault and OpenBao.

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1`` over the AES field (x^8 + x^4 + x^3 + x + 1). A share is the value of every
polynomial at one x, followed by that x as the trailing byte::

    share = y_0 || y_1 || ... || y_{L-1} || x            (one byte longer than the secret)

The x-coordinates are distinct, non-zero and random (a random sample of 1..255, as Vault takes
them), and every other coefficient is uniformly random, so any ``threshold - 1`` shares are
uniformly distributed whatever the secret is. Shares carry no integrity: a wrong or altered
share combines into a wrong secret without any error, so callers split a random key and keep
an authenticated ciphertext made with it (see ``s3orch.crypto.seal``), never raw data.

The arithmetic works on whole byte strings through a multiplication table (``bytes.translate``
multiplies every byte of a share by one field element), so nothing branches on secret data.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Final

MAX_PARTS: Final = 255
"""Non-zero x-coordinates available in GF(2^8)."""
SHARE_OVERHEAD: Final = 1
"""A share is the secret's length plus the trailing x-coordinate."""

_random = secrets.SystemRandom()


class ShamirError(ValueError):
    """Shares cannot be made or combined. The message never contains share or secret bytes."""


def _build_tables() -> tuple[tuple[bytes, ...], bytes]:
    """Multiplication rows (``rows[a][b] == a * b``) and inverses (``inverse[0] == 0``)."""
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        # Multiply by the generator 3: value * 2 (reduced by 0x11b) xor value.
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    rows = [bytes(256)]
    for a in range(1, 256):
        rows.append(bytes([0] + [exp[log[a] + log[b]] for b in range(1, 256)]))
    inverse = bytes([0] + [exp[255 - log[a]] for a in range(1, 256)])
    return tuple(rows), inverse


_MUL_ROWS, _INVERSE = _build_tables()


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8) (exposed for tests against independent arithmetic)."""
    return _MUL_ROWS[a][b]


def gf_div(a: int, b: int) -> int:
    """a / b in GF(2^8); b must not be zero."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    return _MUL_ROWS[a][_INVERSE[b]]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _scale(vector: bytes, factor: int) -> bytes:
    """Every byte of ``vector`` multiplied by ``factor``."""
    return vector.translate(_MUL_ROWS[factor])


def split(secret: bytes | bytearray | memoryview, parts: int, threshold: int) -> list[bytes]:
    """``parts`` shares of ``secret``, any ``threshold`` of which give it back.

    Validation follows Vault's ``shamir.Split``: 2 <= threshold <= parts <= 255 and a non-empty
    secret. The one exception is ``parts == threshold == 1``, which Vault's server handles on
    its own: the single "share" is then the secret itself (no x byte), and ``combine`` is not
    needed to use it.
    """
    secret = bytes(secret)
    if parts == 1 and threshold == 1:
        if not secret:
            raise ShamirError("cannot split an empty secret")
        return [secret]
    if parts < threshold:
        raise ShamirError("parts cannot be less than threshold")
    if parts > MAX_PARTS:
        raise ShamirError(f"parts cannot exceed {MAX_PARTS}")
    if threshold < 2:
        raise ShamirError("threshold must be at least 2")
    if threshold > MAX_PARTS:
        raise ShamirError(f"threshold cannot exceed {MAX_PARTS}")
    if not secret:
        raise ShamirError("cannot split an empty secret")

    size = len(secret)
    # coefficients[k] holds the x^k coefficient of every byte's polynomial.
    coefficients = [secret] + [secrets.token_bytes(size) for _ in range(threshold - 1)]
    shares = []
    for x in _random.sample(range(1, MAX_PARTS + 1), parts):
        value = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):  # Horner's method
            value = _xor(_scale(value, x), coefficient)
        shares.append(value + bytes([x]))
    return shares


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret that ``shares`` were split from (Lagrange interpolation at x = 0).

    Validation follows Vault's ``shamir.Combine``: at least two shares, all of one length of at
    least two bytes, no x-coordinate twice. Too few or wrong shares give a wrong secret, not an
    error: only an authenticated ciphertext can tell.
    """
    if len(shares) < 2:
        raise ShamirError("less than two parts cannot be used to reconstruct the secret")
    length = len(shares[0])
    if length < 2:
        raise ShamirError("parts must be at least two bytes")
    if any(len(share) != length for share in shares):
        raise ShamirError("all parts must be the same length")
    xs = [share[-1] for share in shares]
    if len(set(xs)) != len(xs):
        raise ShamirError("duplicate part detected")

    secret = bytes(length - 1)
    for i, share in enumerate(shares):
        basis = 1
        for j, x_j in enumerate(xs):
            if j != i:
                basis = _MUL_ROWS[basis][gf_div(x_j, xs[i] ^ x_j)]
        secret = _xor(secret, _scale(bytes(share[:-1]), basis))
    return secret
