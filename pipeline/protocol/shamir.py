"""Shamir's secret sharing of byte strings, over the prime field of 2^521 - 1.

Used by the secure sum's dropout recovery: each site splits its round's self-mask seed
and its round's mask key into shares, one for every site of the round, so that any
`threshold` of them rebuild the secret and fewer learn nothing about it. A 32-byte secret
fits one field element; the coefficients come from the operating system's randomness.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1  # a Mersenne prime: every secret of up to 65 bytes is one element
_MAX_BYTES = 65


def split(secret: bytes, count: int, threshold: int) -> list[tuple[int, int]]:
    """`count` shares (x, y) of `secret`, x = 1..count; any `threshold` rebuild it."""
    if not 1 <= threshold <= count:
        raise ValueError(f"threshold must be in 1..{count}, got {threshold}")
    if len(secret) > _MAX_BYTES:
        raise ValueError(f"a secret holds at most {_MAX_BYTES} bytes")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [(x, _evaluate(coefficients, x)) for x in range(1, count + 1)]


def combine(shares: Sequence[tuple[int, int]], length: int) -> bytes:
    """The `length`-byte secret from shares (x, y) with distinct x (Lagrange at zero).
    Fewer shares than the threshold give a wrong value, not an error: the caller knows
    the threshold and checks the count."""
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not shares:
        raise ValueError("shares must have distinct x coordinates")
    total = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    if total >= 2 ** (8 * length):
        raise ValueError("the shares do not rebuild a secret of this length")
    return total.to_bytes(length, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value
