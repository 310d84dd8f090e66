"""Tests for s3orch.crypto.shamir: Vault-compatible Shamir secret sharing over GF(2^8)."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3orch.crypto.shamir import MAX_PARTS, ShamirError, combine, gf_div, gf_mul, split

# Three shares of the unseal key of a real OpenBao 2.7.2 server (`PUT sys/init` with
# secret_shares=3, secret_threshold=2). Every pair combines into KNOWN_KEY, and the same server
# unsealed with shares that `split(KNOWN_KEY, 4, 2)` made (checked by hand when this was written;
# tests/integration is the place for a live contract test).
OPENBAO_SHARES = [
    bytes.fromhex("759d22648322825b4d1a04373d31e9dbe4dfdc8f17d8fb4cdcfbe620068e1cb6ea"),
    bytes.fromhex("6b5e1b7972862e97278b5695dc20f53499180ecc05252ad5586798f2c5fec07984"),
    bytes.fromhex("67200182b6609fefea862586b62aaafcabc07ab5f810a98ff93f5d86bb9916f6ef"),
]
KNOWN_KEY = bytes.fromhex("b53c994d77c0679a29ca751cc7916eefe9f0dd5e5ea5139b220c0221a7a4d39e")


def slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication reduced by x^8 + x^4 + x^3 + x + 1: an independent oracle."""
    product = 0
    for _ in range(8):
        if b & 1:
            product ^= a
        carry = a & 0x80
        a = (a << 1) & 0xFF
        if carry:
            a ^= 0x1B
        b >>= 1
    return product


def slow_inverse(a: int) -> int:
    """a^254, the inverse in GF(2^8), by repeated oracle multiplication."""
    result = 1
    for _ in range(254):
        result = slow_mul(result, a)
    return result


def interpolate(points: list[tuple[int, bytes]], at: int) -> bytes:
    """Byte-wise Lagrange interpolation at ``at`` with the oracle arithmetic."""
    size = len(points[0][1])
    out = bytearray(size)
    for i, (x_i, y_i) in enumerate(points):
        basis = 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                basis = slow_mul(basis, slow_mul(at ^ x_j, slow_inverse(x_i ^ x_j)))
        for k in range(size):
            out[k] ^= slow_mul(y_i[k], basis)
    return bytes(out)


def as_points(shares: list[bytes]) -> list[tuple[int, bytes]]:
    return [(share[-1], share[:-1]) for share in shares]


# -- the field --------------------------------------------------------------------------------


def test_multiplication_matches_the_aes_field_for_every_pair() -> None:
    """gf_mul agrees with bitwise multiplication modulo 0x11b on all 65,536 pairs."""
    for a in range(256):
        for b in range(256):
            assert gf_mul(a, b) == slow_mul(a, b)


def test_field_values_from_vaults_tests() -> None:
    """The values Vault's own field tests expect: 3*7=9, 0/7=0, 3/3=1, 6/3=2."""
    assert gf_mul(3, 7) == 9
    assert gf_mul(3, 0) == 0 and gf_mul(0, 3) == 0
    assert gf_div(0, 7) == 0
    assert gf_div(3, 3) == 1
    assert gf_div(6, 3) == 2


def test_division_inverts_multiplication() -> None:
    """(a*b)/b == a for every a and non-zero b; dividing by zero is an error."""
    for a in range(256):
        for b in range(1, 256):
            assert gf_div(gf_mul(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        gf_div(1, 0)


# -- split ------------------------------------------------------------------------------------


def test_split_shape_is_vaults() -> None:
    """Each share is the secret's length plus a trailing, distinct, non-zero x-coordinate."""
    secret = os.urandom(32)
    shares = split(secret, 5, 3)
    assert len(shares) == 5
    assert all(len(share) == 33 for share in shares)
    xs = [share[-1] for share in shares]
    assert len(set(xs)) == 5
    assert 0 not in xs


def test_x_coordinates_are_random_not_sequential() -> None:
    """As OpenBao does, x-coordinates are a random sample of 1..255, not 1..n."""
    seen = {tuple(share[-1] for share in split(b"k" * 16, 5, 3)) for _ in range(20)}
    assert len(seen) > 1
    assert seen != {(1, 2, 3, 4, 5)}


def test_split_never_returns_the_secret_and_differs_each_time() -> None:
    """Shares are freshly random: two splits of one secret share no share."""
    secret = os.urandom(32)
    first, second = split(secret, 3, 2), split(secret, 3, 2)
    assert set(first).isdisjoint(second)
    assert all(secret not in share for share in first)


def test_split_accepts_a_bytearray_and_leaves_it_alone() -> None:
    """A mutable secret is read, not modified."""
    secret = bytearray(b"0123456789abcdef")
    shares = split(secret, 3, 2)
    assert secret == bytearray(b"0123456789abcdef")
    assert combine(shares[:2]) == bytes(secret)


@pytest.mark.parametrize(
    ("parts", "threshold", "message"),
    [
        (0, 0, "threshold must be at least 2"),
        (2, 3, "parts cannot be less than threshold"),
        (1000, 3, "parts cannot exceed 255"),
        (256, 2, "parts cannot exceed 255"),
        (10, 1, "threshold must be at least 2"),
        (1, 0, "threshold must be at least 2"),
        (1, 2, "parts cannot be less than threshold"),
    ],
)
def test_split_validation_is_vaults(parts: int, threshold: int, message: str) -> None:
    """Out-of-range parts and thresholds are refused with Vault's messages."""
    with pytest.raises(ShamirError, match=message):
        split(b"test", parts, threshold)


def test_split_refuses_an_empty_secret() -> None:
    """An empty secret is refused, for 1/1 too."""
    for parts, threshold in ((3, 2), (1, 1)):
        with pytest.raises(ShamirError, match="cannot split an empty secret"):
            split(b"", parts, threshold)


def test_one_share_of_one_is_the_secret_itself() -> None:
    """parts == threshold == 1 gives the secret unsplit, as Vault's server does for 1/1."""
    secret = os.urandom(32)
    assert split(secret, 1, 1) == [secret]


def test_255_shares_with_threshold_255() -> None:
    """The largest configuration works and needs every share."""
    secret = os.urandom(32)
    shares = split(secret, MAX_PARTS, MAX_PARTS)
    assert sorted(share[-1] for share in shares) == list(range(1, 256))
    assert combine(list(reversed(shares))) == secret
    assert combine(shares[:-1]) != secret


# -- combine ----------------------------------------------------------------------------------


def test_every_three_of_five_in_every_order_recover_the_secret() -> None:
    """Vault's own combine test: all 5*4*3 ordered choices of three shares."""
    secret = b"test"
    shares = split(secret, 5, 3)
    for chosen in itertools.permutations(shares, 3):
        assert combine(list(chosen)) == secret


@settings(max_examples=150, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    parts=st.integers(min_value=2, max_value=24),
    data=st.data(),
)
def test_any_threshold_subset_recovers_the_secret(
    secret: bytes, parts: int, data: st.DataObject
) -> None:
    """Any threshold (or more) shares, in any order, give the secret back."""
    threshold = data.draw(st.integers(min_value=2, max_value=parts), label="threshold")
    shares = split(secret, parts, threshold)
    count = data.draw(st.integers(min_value=threshold, max_value=parts), label="count")
    chosen = data.draw(st.permutations(shares), label="order")[:count]
    assert combine(chosen) == secret


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), parts=st.integers(min_value=2, max_value=10))
def test_shares_lie_on_one_polynomial_per_byte(secret: bytes, parts: int) -> None:
    """Independent interpolation through any threshold shares yields every other share."""
    threshold = max(2, parts // 2)
    shares = split(secret, parts, threshold)
    points = as_points(shares[:threshold])
    assert interpolate(points, 0) == secret
    for share in shares[threshold:]:
        assert interpolate(points, share[-1]) == share[:-1]


@settings(max_examples=80, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=32),
    other=st.binary(min_size=1, max_size=32),
    parts=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_fewer_than_threshold_shares_fit_any_secret(
    secret: bytes, other: bytes, parts: int, data: st.DataObject
) -> None:
    """threshold-1 shares of one secret also complete, with one more share, to any other."""
    other = (other * len(secret))[: len(secret)]
    threshold = data.draw(st.integers(min_value=2, max_value=parts), label="threshold")
    shares = split(secret, parts, threshold)
    known = shares[: threshold - 1]
    used = {share[-1] for share in known}
    x = data.draw(st.sampled_from([x for x in range(1, 256) if x not in used]), label="x")
    # The polynomial through the known shares and (0, other) gives a consistent extra share.
    extra = interpolate([(0, other), *as_points(known)], x) + bytes([x])
    assert combine([*known, extra]) == other


def test_one_share_is_uniform_whatever_the_secret() -> None:
    """With threshold 2 a share's bytes spread evenly, and equal the secret byte ~1/256 of
    the time (Vault's coefficients may be zero; forcing them non-zero would leak)."""
    rounds = 4096
    for secret in (b"\x00", b"\xff"):
        values = [split(secret, 2, 2)[0][0] for _ in range(rounds)]
        assert 0 < values.count(secret[0]) < 60
        buckets = Counter(value >> 4 for value in values)
        assert len(buckets) == 16
        assert all(150 < count < 370 for count in buckets.values())


def test_too_few_shares_give_a_wrong_secret_without_error() -> None:
    """Shares carry no integrity: below the threshold combine just returns garbage."""
    secret = os.urandom(32)
    shares = split(secret, 5, 3)
    assert combine(shares[:2]) != secret


def test_a_corrupted_share_gives_a_wrong_secret_without_error() -> None:
    """A flipped bit in a share changes the result silently."""
    secret = os.urandom(32)
    shares = split(secret, 3, 2)
    damaged = bytes([shares[0][0] ^ 1]) + shares[0][1:]
    assert combine([damaged, shares[1]]) != secret


def test_combine_validation_is_vaults() -> None:
    """Too few parts, unequal lengths, one-byte parts and duplicates are refused."""
    with pytest.raises(ShamirError, match="less than two parts"):
        combine([])
    with pytest.raises(ShamirError, match="less than two parts"):
        combine([b"abc"])
    with pytest.raises(ShamirError, match="all parts must be the same length"):
        combine([b"foo", b"ba"])
    with pytest.raises(ShamirError, match="parts must be at least two bytes"):
        combine([b"f", b"b"])
    with pytest.raises(ShamirError, match="duplicate part detected"):
        combine([b"foo", b"foo"])
    with pytest.raises(ShamirError, match="duplicate part detected"):
        combine([b"aao", b"bbo"])  # different values, same x


def test_error_messages_never_contain_share_bytes() -> None:
    """A refused combination says why, never what the shares were."""
    shares = split(os.urandom(32), 3, 2)
    with pytest.raises(ShamirError) as caught:
        combine([shares[0], shares[0]])
    assert shares[0].hex() not in str(caught.value)
    assert repr(shares[0]) not in str(caught.value)


# -- compatibility ----------------------------------------------------------------------------


def test_openbao_shares_combine_into_one_key() -> None:
    """Every pair of a real OpenBao 2/3 share set yields the same 32-byte unseal key."""
    for pair in itertools.permutations(OPENBAO_SHARES, 2):
        assert combine(list(pair)) == KNOWN_KEY
    assert combine(OPENBAO_SHARES) == KNOWN_KEY


def test_our_split_of_the_openbao_key_recombines() -> None:
    """Any two of our 4 shares of OpenBao's key give it back (OpenBao unsealed with such)."""
    ours = split(KNOWN_KEY, 4, 2)
    for pair in itertools.combinations(ours, 2):
        assert combine(list(pair)) == KNOWN_KEY


def test_a_single_byte_secret_round_trips_through_every_x() -> None:
    """Shares at every x in 1..255 are consistent (255-way split, threshold 2)."""
    secret = bytes([random.randrange(256)])
    shares = split(secret, 255, 2)
    for first, second in itertools.pairwise(shares):
        assert combine([first, second]) == secret
