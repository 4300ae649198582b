"""A site's masks for the SUM calls of an XGBoost collective: the aggregator adds masked
vectors modulo 2^64 and only the total can be decoded.

Every SUM allreduce a site's XGBoost worker makes (gradient and hessian histograms,
gradient sums, the validation metric's numerator and denominator, row counts) is encoded
as 64-bit integers (floats in fixed point, :func:`encode_sum`) and masked here with
pairwise masks: for every other site of the attempt, a ChaCha20 stream under a key derived
(HKDF-SHA256) from the X25519 agreement of the two sites' signed job keys (the keys of
:mod:`pipeline.protocol.secure_sum`, verified against the site's own pins), the job and
the attempt, at a nonce that is the call's sequence number. The lower-named site adds
it, the other subtracts it, so the masks cancel in the sum of the attempt's sites and
nowhere else: a masked buffer alone is a uniformly random vector.

No dropout recovery: a collective that loses a rank fails as a whole, and the coordinator
retries with fresh attempt masks. Every rank decodes the same total, so every site ends
with the same booster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.protocol.secure_sum import (
    MIN_SITES,
    RosterError,
    SiteKeys,
    VerifiedRoster,
    frame,
)

_PROTOCOL = b"pipeline/collective-masks/v1"
# The data types of XGBoost's federated protocol (DataType in federated.proto) as numpy
# reads them; HALF and LONG_DOUBLE are refused.
DATA_TYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    4: np.dtype(np.int8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(np.uint8),
    9: np.dtype(np.uint16),
    10: np.dtype(np.uint32),
    11: np.dtype(np.uint64),
}
UINT64 = 11
_HEADROOM_BITS = 62  # a sum stays below 2^62 in magnitude: one bit spare under the sign


def fixed_point_scale(bound: float) -> int:
    """The largest power of two `s` with ``bound * s < 2^62``: the scale at which every
    value, and every sum, whose magnitude is at most `bound` is encoded without overflow.
    The resolution is then 1/s, at least 2^-20 for any bound up to 2^40."""
    if not bound > 0 or not math.isfinite(bound):
        raise ValueError(f"bound must be a positive number, got {bound!r}")
    return 2 ** max(0, _HEADROOM_BITS - 1 - math.ceil(math.log2(bound)))


def encode_sum(buffer: bytes, data_type: int, scale: int) -> np.ndarray:
    """One SUM contribution as uint64: floats in fixed point at `scale` (rounded), integers
    as themselves (two's complement). Refuses a type it cannot sum exactly, NaN or
    infinite values, and a value past the scale's range (the bound was wrong: better a
    failed job than a wrapped sum)."""
    dtype = DATA_TYPES.get(data_type)
    if dtype is None:
        raise ValueError(f"a SUM of data type {data_type} cannot be masked")
    values = np.frombuffer(buffer, dtype=dtype)
    if dtype.kind == "f":
        wide = values.astype(np.float64, copy=False)
        if wide.size:  # NaN makes both extremes NaN, an infinity one of them infinite
            low, high = float(wide.min()), float(wide.max())
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("a SUM holds NaN or infinite values")
            if max(-low, high) * scale >= 2.0**_HEADROOM_BITS:
                raise ValueError("a SUM value is past the fixed-point range of the job's scale")
        scaled = wide * scale
        np.rint(scaled, out=scaled)
        return scaled.astype(np.int64).view(np.uint64)
    if dtype.kind == "u":
        return values.astype(np.uint64)
    return values.astype(np.int64).view(np.uint64)


def decode_sum(total: np.ndarray, data_type: int, scale: int) -> bytes:
    """The total of :func:`encode_sum`'s contributions, back in the call's data type."""
    dtype = DATA_TYPES[data_type]
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    if dtype.kind == "f":
        return (signed.astype(np.float64) / scale).astype(dtype).tobytes()
    if dtype.kind == "u":
        return np.asarray(total, dtype=np.uint64).astype(dtype).tobytes()
    return signed.astype(dtype).tobytes()


class CollectiveMasks:
    """One site's pairwise masks for one attempt of a job's collective.

    Parameters
    ----------
    keys : SiteKeys
        The site's keys for the job.
    roster : VerifiedRoster
        The job's sites and signed job keys, verified against the site's pins.
    sites : sequence of str
        The attempt's sites (its ranks), every one in `roster`, this site among them.
    attempt : str
        Names the attempt: its masks are its own, so a retry never reuses a stream.
    min_sites : int
        The fewest sites this site's values may be summed with (never below three).
    """

    def __init__(
        self,
        keys: SiteKeys,
        roster: VerifiedRoster,
        sites: Sequence[str],
        attempt: str,
        min_sites: int = MIN_SITES,
    ) -> None:
        least = max(MIN_SITES, min_sites)
        if len(set(sites)) != len(sites) or keys.site not in sites:
            raise RosterError(f"site {keys.site!r}: the attempt's ranks do not name it once")
        if len(sites) < least:
            raise RosterError(
                f"site {keys.site!r}: a masked collective needs at least {least} sites, got "
                f"{len(sites)}: with two, each site learns the other's histograms from the sum"
            )
        unknown = sorted(set(sites) - set(roster.sites))
        if unknown:
            raise RosterError(f"sites {unknown} are not in the job's verified roster")
        # One ChaCha20 key per pair and attempt (HKDF of the pair's X25519 agreement);
        # each call's stream starts at its own nonce, the call's sequence number.
        self._keys: dict[str, tuple[bytes, bool]] = {}
        for peer in sites:
            if peer == keys.site:
                continue
            secret = keys.exchange_key.exchange(
                X25519PublicKey.from_public_bytes(roster.public_keys[peer])
            )
            low, high = sorted((keys.site, peer))
            info = frame(_PROTOCOL, roster.job_id, attempt, low, high)
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
            self._keys[peer] = (key, keys.site == low)

    def mask(self, sequence: int, encoded: np.ndarray) -> np.ndarray:
        """`encoded` (uint64) plus this site's pair masks for call `sequence`, mod 2^64."""
        out = np.array(encoded, dtype=np.uint64, copy=True)
        # ChaCha20's 16-byte nonce: a 4-byte block counter from 0, then the call's number.
        nonce = bytes(4) + int(sequence).to_bytes(12, "little")
        zeros = bytes(8 * out.size)
        stream_bytes = bytearray(8 * out.size + 63)  # update_into wants a block's slack
        mask = np.frombuffer(stream_bytes, dtype="<u8", count=out.size)
        for key, adds in self._keys.values():
            stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
            stream.update_into(zeros, stream_bytes)  # the key stream itself: zeros encrypted
            if adds:
                out += mask  # uint64 arithmetic wraps: addition mod 2^64
            else:
                out -= mask
        return out
