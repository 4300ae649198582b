"""Secure aggregation: the coordinator learns the sum of the sites' updates, not any one.

A simplified form of Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS). Every pair of sites agrees on a secret (X25519
key exchange) and expands it into a pseudo-random mask vector; the lower-named site of the
pair adds the mask, the higher-named one subtracts it, modulo 2^64. Each masked update
looks uniformly random to the coordinator, and in the sum of all sites every mask cancels.

Simplifications against the paper, and why they are safe here:

- No secret sharing of the mask keys, so no dropout recovery. If a site drops after keys
  were exchanged, the coordinator restarts the round without it (``attempt`` + 1, roster
  ``without`` the dropped site): every mask is derived from (job, round, attempt, pair),
  so the restart uses fresh, independent masks, and the abandoned attempt's vectors stay
  hidden by their masks with the dropped site, which never cancel (but see the limit
  below). The cost is a repeated round, which is cheap with a handful of hospitals.
- Keys are authenticated without a PKI: each site signs its per-job X25519 public key with
  its long-lived Ed25519 identity, whose public key every site pins in its config. A
  coordinator cannot substitute its own key for a site's (the man-in-the-middle that would
  let it unmask that site), and a key signed for one job cannot be replayed in another.
- The threat model is an honest-but-curious coordinator that follows the protocol but
  would like to read single sites' updates. Known limit of dropping double masking: a
  restart reveals the survivors' sum, so a coordinator that also kept the masked vector of
  the site it dropped (a late reply) could subtract and read that site's update. The
  coordinator must discard replies from the abandoned attempt; the paper's secret-shared
  self-masks are what remove this assumption. Each site's own DP noise (added before
  masking) still bounds what such a leak reveals about its patients; under distributed
  noise (:mod:`pipeline.privacy.distributed`) a site adds only a share, so there the
  assumption carries its guarantee.
- A site masks at most one update per (round, attempt) with its job keys: two maskings
  under the same masks would hand the coordinator the exact difference of two updates.
- A site that sends garbage breaks the sum (as in the paper without its extra rounds).

At least three sites are required: with two, each site learns the other's update by
subtracting its own from the sum.

Values travel as fixed-point integers modulo 2^64 (two's complement), so masking is exact.
With ``scale`` = 2^24 the decoded sum is exact to 2^-25 per site and per coordinate, and
correct as long as the true sum's magnitude stays below ``max_abs_sum(scale)`` = 2^63 /
scale (about 5.5e11 for the default scale); each encoded value must itself be below that.

All key material comes from the operating system through ``cryptography``; it is never
seeded, logged or returned in an error message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import PipelineError

DEFAULT_SCALE = 2**24
MIN_SITES = 3
_PROTOCOL = b"pipeline/secure-sum/v1"
_KEY_BYTES = 32
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class RosterError(PipelineError):
    """A site's public key failed authentication, or the roster does not match the sites."""


def max_abs_sum(scale: int = DEFAULT_SCALE) -> float:
    """The largest magnitude a decoded sum (and any one encoded value) may have at ``scale``."""
    return 2.0**63 / scale


def encode(vector: np.ndarray, scale: int = DEFAULT_SCALE) -> np.ndarray:
    """Fixed-point encode floats as uint64: round(x * scale), two's complement mod 2^64.

    Raises ``ValueError`` for NaN, infinities, or a value at or beyond ``max_abs_sum``.
    """
    _check_scale(scale)
    values = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("secure sum: the update holds NaN or infinite values")
    limit = max_abs_sum(scale)
    if values.size and np.max(np.abs(values)) >= limit:
        raise ValueError(f"secure sum: a value exceeds the fixed-point range |x| < {limit:g}")
    return np.rint(values * scale).astype(np.int64).view(np.uint64)


def decode(sum_uint64: np.ndarray, scale: int = DEFAULT_SCALE) -> np.ndarray:
    """Invert ``encode`` on a sum mod 2^64: read as signed 64-bit, divide by ``scale``."""
    _check_scale(scale)
    return np.asarray(sum_uint64, dtype=np.uint64).view(np.int64).astype(np.float64) / scale


@dataclass(frozen=True)
class SignedPublicKey:
    """A site's per-job X25519 public key, signed by the site's Ed25519 identity.

    The signature covers (protocol, job_id, site, public key), so the key cannot be
    moved to another site or replayed in another job. Plain bytes and strings: safe to
    send through Ray or JSON (hex) as is.
    """

    site: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class SiteKeys:
    """One site's keys for one job: a fresh X25519 pair and its Ed25519 signing identity.

    Lives only inside the site (its Ray actor); only ``signed_public_key`` and
    ``identity_public_bytes`` leave it. ``repr`` shows no key material. It remembers which
    (round, attempt) pairs it has masked, so ``mask_update`` uses each mask once.
    """

    site: str
    exchange_key: X25519PrivateKey = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)
    _masked: set[tuple[int, int]] = field(
        default_factory=set, init=False, repr=False, compare=False
    )

    @classmethod
    def generate(cls, site: str, signing_key: Ed25519PrivateKey | None = None) -> SiteKeys:
        """New per-job X25519 keys for ``site``, from the OS's randomness.

        Pass the site's long-lived Ed25519 ``signing_key`` (whose public half the other
        sites pin); without one a fresh identity is made, useful for tests and demos.
        """
        if not site or not isinstance(site, str):
            raise ValueError("site must be a non-empty string")
        return cls(
            site=site,
            exchange_key=X25519PrivateKey.generate(),
            signing_key=signing_key if signing_key is not None else Ed25519PrivateKey.generate(),
        )

    def identity_public_bytes(self) -> bytes:
        """The Ed25519 public key other sites pin for this site (32 raw bytes)."""
        return self.signing_key.public_key().public_bytes(*_RAW)

    def exchange_public_bytes(self) -> bytes:
        """This job's X25519 public key (32 raw bytes)."""
        return self.exchange_key.public_key().public_bytes(*_RAW)

    def signed_public_key(self, job_id: str) -> SignedPublicKey:
        """This site's X25519 public key for ``job_id``, signed with its identity."""
        public = self.exchange_public_bytes()
        signature = self.signing_key.sign(_signed_message(job_id, self.site, public))
        return SignedPublicKey(site=self.site, public_key=public, signature=signature)


@dataclass(frozen=True)
class VerifiedRoster:
    """The X25519 public keys of a job's sites, every one checked against its pinned identity.

    Build it only with ``verify_roster`` (or ``without`` on a verified one): ``mask_update``
    accepts nothing but this type, so a site cannot mask against unauthenticated keys by
    accident.
    """

    job_id: str
    public_keys: Mapping[str, bytes]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(sorted(self.public_keys))

    def without(self, dropped: Iterable[str]) -> VerifiedRoster:
        """The roster for a restarted round after ``dropped`` sites left (still >= 3 sites)."""
        gone = set(dropped)
        unknown = gone - set(self.public_keys)
        if unknown:
            raise RosterError(f"cannot drop sites not in the roster: {sorted(unknown)}")
        kept = {s: k for s, k in self.public_keys.items() if s not in gone}
        _check_site_count(kept)
        return VerifiedRoster(job_id=self.job_id, public_keys=kept)


def verify_roster(
    roster: Iterable[SignedPublicKey], pinned: Mapping[str, bytes], job_id: str
) -> VerifiedRoster:
    """Check every site's signed key against the site's pinned Ed25519 public key.

    Raises ``RosterError`` naming the site whose key is not pinned, not validly signed for
    this job (tampered with, substituted or replayed), or listed twice; ``ValueError`` for
    fewer than three sites.
    """
    keys: dict[str, bytes] = {}
    for entry in roster:
        if entry.site in keys:
            raise RosterError(f"site {entry.site!r} appears twice in the key roster")
        if entry.site not in pinned:
            raise RosterError(f"site {entry.site!r} has no pinned identity key; refusing it")
        if len(entry.public_key) != _KEY_BYTES:
            raise RosterError(f"site {entry.site!r}: public key is not 32 bytes")
        try:
            identity = Ed25519PublicKey.from_public_bytes(pinned[entry.site])
            identity.verify(entry.signature, _signed_message(job_id, entry.site, entry.public_key))
        except (InvalidSignature, ValueError) as exc:
            raise RosterError(
                f"site {entry.site!r}: public key signature does not verify against its "
                f"pinned identity for job {job_id!r}; the key was tampered with or replaced"
            ) from exc
        keys[entry.site] = bytes(entry.public_key)
    _check_site_count(keys)
    return VerifiedRoster(job_id=job_id, public_keys=keys)


def mask_update(
    vector: np.ndarray,
    own_keys: SiteKeys,
    roster: VerifiedRoster,
    job_id: str,
    round: int,
    attempt: int = 0,
    *,
    scale: int = DEFAULT_SCALE,
) -> np.ndarray:
    """A site's update, fixed-point encoded and masked with one mask per other site.

    For every other site j, the mask is the ChaCha20 keystream under
    HKDF-SHA256(X25519(own, j), info = protocol|job_id|round|attempt|sorted pair); the site
    adds it if its name sorts before j's and subtracts it otherwise, mod 2^64. ChaCha20
    (a cryptographic PRG) rather than a statistical one such as PCG64, whose state can be
    recovered from its outputs. The key is unique per (job, round, attempt, pair), so the
    fixed nonce is never reused under one key.

    Raises ``RosterError`` if ``own_keys`` already masked an update for this (round,
    attempt): a retried round must use the next attempt.
    """
    if not isinstance(roster, VerifiedRoster):
        raise TypeError("mask_update needs the VerifiedRoster returned by verify_roster")
    if roster.job_id != job_id:
        raise RosterError(f"the roster was verified for job {roster.job_id!r}, not {job_id!r}")
    _check_site_count(roster.public_keys)
    _check_counter("round", round)
    _check_counter("attempt", attempt)
    me = own_keys.site
    if roster.public_keys.get(me) != own_keys.exchange_public_bytes():
        raise RosterError(f"site {me!r}: its own key is missing from the roster or differs")

    masked = encode(vector, scale).ravel().copy()
    if (round, attempt) in own_keys._masked:
        raise RosterError(
            f"site {me!r} already masked an update for round {round}, attempt {attempt}; "
            "a mask is used once (retry with the next attempt)"
        )
    own_keys._masked.add((round, attempt))
    n = masked.size
    for peer in roster.sites:
        if peer == me:
            continue
        secret = own_keys.exchange_key.exchange(
            X25519PublicKey.from_public_bytes(roster.public_keys[peer])
        )
        mask = _mask(secret, job_id, round, attempt, me, peer, n)
        if me < peer:
            masked += mask
        else:
            masked -= mask
    return masked.reshape(np.shape(vector))


def unmask_sum(
    masked_vectors: Mapping[str, np.ndarray],
    roster: VerifiedRoster,
    *,
    scale: int = DEFAULT_SCALE,
) -> np.ndarray:
    """The coordinator's side: add every site's masked vector mod 2^64 and decode.

    Masks cancel only when every roster site contributed, so a missing site is refused
    with ``RosterError`` naming it (the caller restarts the round ``roster.without`` it),
    rather than returning a random-looking sum.
    """
    expected, got = set(roster.public_keys), set(masked_vectors)
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise RosterError(
            f"secure sum needs exactly the roster's sites; missing {missing}, unexpected {extra}"
            " (restart the round without the missing sites)"
        )
    arrays = [np.asarray(masked_vectors[s]) for s in roster.sites]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or any(a.dtype != np.uint64 for a in arrays):
        raise ValueError(f"masked vectors must be uint64 arrays of one shape, got {shapes}")
    total = np.zeros(arrays[0].shape, dtype=np.uint64)
    for a in arrays:
        total += a  # uint64 arithmetic wraps: addition mod 2^64.
    return decode(total, scale)


def _mask(
    secret: bytes, job_id: str, round: int, attempt: int, a: str, b: str, n: int
) -> np.ndarray:
    low, high = sorted((a, b))
    info = _frame(_PROTOCOL, job_id, str(round), str(attempt), low, high)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)


def _signed_message(job_id: str, site: str, public_key: bytes) -> bytes:
    return _frame(_PROTOCOL, b"x25519-key", job_id, site, public_key)


def _frame(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation: no two different part lists give the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _check_site_count(keys: Mapping[str, bytes]) -> None:
    if len(keys) < MIN_SITES:
        raise ValueError(
            f"secure sum needs at least {MIN_SITES} sites, got {len(keys)}: with two, each "
            "site learns the other's update by subtracting its own from the sum"
        )


def _check_counter(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if not math.log2(scale).is_integer():
        raise ValueError(f"scale must be a power of two (exact in float64), got {scale}")
