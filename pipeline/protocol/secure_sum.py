"""Secure aggregation: the coordinator learns the sum of the sites' updates, not any one,
and a site that drops out mid-round is recovered without any site answering twice.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), with double masking as Flower's SecAgg+ implements it. Per job, each site
signs an X25519 key with its long-lived Ed25519 identity (pinned at every other site, so
the coordinator cannot stand in for a site); those keys encrypt the shares below. Each
round then runs in four steps, each answered at most once by a site:

1. **Set-up** (:meth:`SecureSumSite.setup`): the site draws a fresh round mask key and a
   fresh self-mask seed, signs the round key, and splits both secrets with Shamir's scheme
   (:mod:`pipeline.protocol.shamir`, threshold :func:`threshold`), one share
   pair per site, each encrypted to its recipient (ChaCha20-Poly1305 under the pair's job
   keys): the coordinator relays shares it cannot read.
2. **Masked input** (:meth:`SecureSumSite.mask`): the update, fixed-point encoded, plus the
   self mask (a ChaCha20 stream of the seed) plus, for every other site of the round, the
   pair mask of their round keys' agreement (added by the lower-named site, subtracted by
   the other), mod 2^64. Alone it looks uniformly random; in a sum the pair masks cancel.
3. **Confirm** (:meth:`SecureSumSite.confirm`): told which sites' inputs arrived, a site
   signs that list with its identity.
4. **Reveal** (:meth:`SecureSumSite.reveal`): shown a threshold of signatures on the
   same list (Bonawitz et al.'s consistency check), a site gives its shares of the
   survivors' self-mask seeds, and of the round keys of the sites that did not send an
   input. The coordinator (:func:`unmask`) removes the self masks and the dropped sites'
   pair masks and decodes the survivors' sum.

A site never reveals both secrets of one site in a round (it answers the reveal once, and
a site is named either a survivor or dropped in it); every reveal is for the one survivor
list a threshold of sites signed; and the threshold, above (sites + 1) / 2, is more than
a site's round partners and a survivor set without them can both reach. So a site's
masked input stays hidden even when the coordinator claims it dropped; a second input at
the same round is refused, which is what stops the differencing of a full sum against a
sum without one site.

At least three sites are required: with two, each site learns the other's update by
subtracting its own from the sum.

Values travel as fixed-point integers modulo 2^64 (two's complement), so masking is exact.
With ``scale`` = 2^24 the decoded sum is exact to 2^-25 per site and per coordinate, and
correct as long as the true sum's magnitude stays below ``max_abs_sum(scale)`` = 2^63 /
scale (about 5.5e11 for the default scale); each encoded value must itself be below that.

All key material comes from the operating system through ``cryptography``; it is never
seeded, logged or returned in an error message. The site's side and the coordinator's
side of the protocol are one piece, kept in one module so that they are read together.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import PipelineError
from pipeline.protocol import shamir

DEFAULT_SCALE = 2**24
MIN_SITES = 3
_PROTOCOL = b"pipeline/secure-sum/v2"
_KEY_BYTES = 32
_SHARE_BYTES = 66  # one element of shamir's field
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class RosterError(PipelineError):
    """A key failed authentication, a roster is too small or inconsistent, or a site was
    asked for a second answer in a round."""


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


def threshold(sites: int) -> int:
    """Shares that rebuild a secret of a round of `sites`: more than (sites + 1) / 2, so
    no coordinator can gather a threshold of both a site's seed and its key, nor make a
    site's round partners and a survivor set without them both reach the threshold
    (which would let it remove every mask of that site's input)."""
    return (sites + 1) // 2 + 1


@dataclass(frozen=True)
class SignedPublicKey:
    """A site's X25519 public key for one job (or one round of it), signed by the site's
    Ed25519 identity.

    The signature covers (protocol, job_id, round, site, public key), so the key cannot be
    moved to another site, round or job. Plain bytes and strings: safe to send through
    Ray or JSON (hex) as is.
    """

    site: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class RoundSetup:
    """A site's first answer in a round: its signed round key, and its share pair of the
    round's secrets for every other site, each encrypted to that site."""

    key: SignedPublicKey
    shares: dict[str, bytes]


@dataclass(frozen=True)
class Confirmation:
    """A site's signature on the survivor list of a round: a reveal needs a threshold of
    them on one list, so a coordinator cannot tell different sites different stories."""

    signature: bytes


@dataclass(frozen=True)
class Reveal:
    """A site's last answer in a round: its shares of the survivors' self-mask seeds and
    of the dropped sites' round keys, as (x, y) points."""

    seeds: dict[str, tuple[int, int]]
    keys: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class SiteKeys:
    """One site's keys for one job: a fresh X25519 pair (it encrypts the round's shares)
    and its Ed25519 signing identity.

    Lives only inside the site (its Ray actor); only ``signed_public_key`` and
    ``identity_public_bytes`` leave it. ``repr`` shows no key material.
    """

    site: str
    exchange_key: X25519PrivateKey = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)

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
        return self.sign(job_id, None, self.exchange_public_bytes())

    def sign(self, job_id: str, round_: int | None, public: bytes) -> SignedPublicKey:
        signature = self.signing_key.sign(_signed_message(job_id, round_, self.site, public))
        return SignedPublicKey(site=self.site, public_key=public, signature=signature)


@dataclass(frozen=True)
class VerifiedRoster:
    """The X25519 job keys of a job's sites, every one checked against its pinned identity.

    Build it only with ``verify_roster``: a site sends shares to nothing but this type, so
    it cannot encrypt to an unauthenticated key by accident.
    """

    job_id: str
    public_keys: Mapping[str, bytes]
    identities: Mapping[str, bytes] = field(repr=False)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(sorted(self.public_keys))

    def x(self, site: str) -> int:
        """The site's point in the round's secret sharing."""
        return self.sites.index(site) + 1


def verify_roster(
    roster: Iterable[SignedPublicKey], pinned: Mapping[str, bytes], job_id: str
) -> VerifiedRoster:
    """Check every site's signed job key against the site's pinned Ed25519 public key.

    Raises ``RosterError`` naming the site whose key is not pinned, not validly signed for
    this job (tampered with, substituted or replayed), or listed twice, and for fewer
    than three sites.
    """
    keys: dict[str, bytes] = {}
    for entry in roster:
        if entry.site in keys:
            raise RosterError(f"site {entry.site!r} appears twice in the key roster")
        if entry.site not in pinned:
            raise RosterError(f"site {entry.site!r} has no pinned identity key; refusing it")
        _verify(entry, pinned[entry.site], job_id, None)
        keys[entry.site] = bytes(entry.public_key)
    _check_site_count(len(keys))
    return VerifiedRoster(job_id=job_id, public_keys=keys, identities={s: pinned[s] for s in keys})


@dataclass
class _Round:
    """What a site holds of one round, between its three answers."""

    sites: tuple[str, ...]
    mask_key: X25519PrivateKey = field(repr=False)
    seed: bytes = field(repr=False)
    held: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # s-shares
    seeds: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # b-shares
    masked_with: tuple[str, ...] | None = None
    min_survivors: int = MIN_SITES
    confirmed: tuple[str, ...] | None = None
    revealed: bool = False


class SecureSumSite:
    """One site's side of the secure sum for one job (or one evaluation): its job keys,
    the verified roster, and each round's secrets. Every step answers once per round.

    Parameters
    ----------
    keys : SiteKeys
        The site's keys for the job.
    roster : VerifiedRoster
        The job's sites and their job keys, verified against the site's own pins.
    min_roster : int
        The fewest sites a sum this site takes part in may cover (never below three).
    """

    def __init__(self, keys: SiteKeys, roster: VerifiedRoster, min_roster: int = MIN_SITES):
        if roster.public_keys.get(keys.site) != keys.exchange_public_bytes():
            raise RosterError(f"site {keys.site!r}: its own key is missing from the roster")
        self.keys = keys
        self.roster = roster
        self.min_roster = max(MIN_SITES, int(min_roster))
        self.rounds: dict[int, _Round] = {}

    @property
    def job_id(self) -> str:
        return self.roster.job_id

    def setup(self, round_: int) -> RoundSetup:
        """Step 1: a fresh round key and self-mask seed, shared among the roster."""
        _check_counter("round", round_)
        if round_ in self.rounds:
            raise RosterError(f"site {self.keys.site!r} already set up round {round_}")
        sites = self.roster.sites
        _check_site_count(len(sites), self.min_roster)
        mask_key, seed = X25519PrivateKey.generate(), secrets.token_bytes(_KEY_BYTES)
        state = _Round(sites=sites, mask_key=mask_key, seed=seed)
        raw = mask_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        t = threshold(len(sites))
        key_shares = shamir.split(raw, len(sites), t)
        seed_shares = shamir.split(seed, len(sites), t)
        me = self.keys.site
        out = {}
        for i, peer in enumerate(sites):
            pair = (key_shares[i][1], seed_shares[i][1])
            if peer == me:
                state.held[me], state.seeds[me] = key_shares[i], seed_shares[i]
                continue
            out[peer] = self._seal(round_, me, peer, pair)
        self.rounds[round_] = state
        public = mask_key.public_key().public_bytes(*_RAW)
        return RoundSetup(key=self.keys.sign(self.job_id, round_, public), shares=out)

    def mask(
        self,
        round_: int,
        vector: np.ndarray,
        round_keys: Mapping[str, SignedPublicKey],
        shares: Mapping[str, bytes],
        *,
        min_survivors: int = MIN_SITES,
        scale: int = DEFAULT_SCALE,
    ) -> np.ndarray:
        """Step 2: `vector` encoded and double-masked, among the sites whose set-up
        arrived (`round_keys`, each checked against its pinned identity), after opening
        the shares they sent this site. A site masks once per round; `min_survivors`:
        the fewest sites whose sum it will later help reveal."""
        state = self._state(round_)
        me = self.keys.site
        if state.masked_with is not None:
            raise RosterError(
                f"site {me!r} already sent its input for round {round_}: a site answers a "
                "round once"
            )
        sites = tuple(sorted(round_keys))
        if me not in sites or not set(sites) <= set(state.sites):
            raise RosterError(f"round {round_}: the round's sites are not the job's roster")
        _check_site_count(len(sites), max(self.min_roster, threshold(len(state.sites))))
        public = {}
        for site in sites:
            entry = round_keys[site]
            if entry.site != site:
                raise RosterError(f"round {round_}: a round key is listed under another site")
            _verify(entry, self.roster.identities[site], self.job_id, round_)
            public[site] = bytes(entry.public_key)
        if public[me] != state.mask_key.public_key().public_bytes(*_RAW):
            raise RosterError(f"site {me!r}: its own round key differs in the roster")
        for peer in sites:
            if peer != me:
                if peer not in shares:
                    raise RosterError(f"round {round_}: no shares from site {peer!r}")
                key_y, seed_y = self._open(round_, peer, me, shares[peer])
                x = self.roster.x(me)
                state.held[peer], state.seeds[peer] = (x, key_y), (x, seed_y)
        masked = encode(vector, scale).ravel().copy()
        masked += keystream(_self_info(self.job_id, round_, me), state.seed, masked.size)
        for peer in sites:
            if peer == me:
                continue
            secret = state.mask_key.exchange(X25519PublicKey.from_public_bytes(public[peer]))
            mask = _pair_mask(secret, self.job_id, round_, me, peer, masked.size)
            if me < peer:
                masked += mask
            else:
                masked -= mask
        state.masked_with = sites
        state.min_survivors = max(self.min_roster, threshold(len(state.sites)), min_survivors)
        return masked.reshape(np.shape(vector))

    def confirm(self, round_: int, survivors: Sequence[str]) -> Confirmation:
        """Step 3: sign the list of sites whose input arrived, with the sites this site
        masked with, once per round. Refused unless this site is on it and it holds
        enough sites."""
        state = self._state(round_)
        me = self.keys.site
        if state.masked_with is None:
            raise RosterError(f"site {me!r} sent no input in round {round_}")
        if state.confirmed is not None:
            raise RosterError(f"site {me!r} already confirmed round {round_}'s survivors")
        alive = tuple(sorted(set(survivors)))
        if me not in alive or not set(alive) <= set(state.masked_with):
            raise RosterError(f"round {round_}: the survivors are not among the round's sites")
        if len(alive) < state.min_survivors:
            raise RosterError(
                f"site {me!r} reveals a sum of at least {state.min_survivors} sites, this "
                f"round kept {len(alive)}"
            )
        state.confirmed = alive
        message = _survivors_message(self.job_id, round_, alive, state.masked_with)
        return Confirmation(signature=self.keys.signing_key.sign(message))

    def reveal(
        self,
        round_: int,
        survivors: Sequence[str],
        dropped: Sequence[str],
        confirmations: Mapping[str, Confirmation],
    ) -> Reveal:
        """Step 4: shares of the survivors' seeds and of the dropped sites' round keys.
        Refused unless this site confirmed exactly these survivors, a threshold of the
        round's sites signed the same list with the same round's sites (a coordinator
        that told sites different rounds cannot make them count for each other), the
        two lists split the round's sites, and the round was not revealed before."""
        state = self._state(round_)
        me = self.keys.site
        if state.masked_with is None:
            raise RosterError(f"site {me!r} sent no input in round {round_}")
        if state.revealed:
            raise RosterError(f"site {me!r} already revealed round {round_}")
        alive, gone = tuple(sorted(set(survivors))), set(dropped)
        if state.confirmed != alive:
            raise RosterError(f"round {round_}: site {me!r} confirmed other survivors")
        if set(alive) & gone or set(alive) | gone != set(state.masked_with):
            raise RosterError(
                f"round {round_}: survivors and dropped sites must split the round's sites"
            )
        message = _survivors_message(self.job_id, round_, alive, state.masked_with)
        signed = 0
        for site, confirmation in confirmations.items():
            if site in alive:
                key = Ed25519PublicKey.from_public_bytes(self.roster.identities[site])
                try:
                    key.verify(bytes(confirmation.signature), message)
                except InvalidSignature:
                    continue
                signed += 1
        need = threshold(len(state.sites))
        if signed < need:
            raise RosterError(
                f"round {round_}: {signed} site(s) confirmed these survivors, {need} must"
            )
        state.revealed = True
        return Reveal(
            seeds={s: state.seeds[s] for s in alive},
            keys={s: state.held[s] for s in sorted(gone)},
        )

    def _state(self, round_: int) -> _Round:
        _check_counter("round", round_)
        if round_ not in self.rounds:
            raise RosterError(f"site {self.keys.site!r} did not set up round {round_}")
        return self.rounds[round_]

    def _cipher(self, a: str, b: str) -> ChaCha20Poly1305:
        peer = b if a == self.keys.site else a
        secret = self.keys.exchange_key.exchange(
            X25519PublicKey.from_public_bytes(self.roster.public_keys[peer])
        )
        low, high = sorted((a, b))
        info = frame(_PROTOCOL, b"shares", self.job_id, low, high)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
        return ChaCha20Poly1305(key)

    def _seal(self, round_: int, sender: str, to: str, pair: tuple[int, int]) -> bytes:
        aad = frame(self.job_id, str(round_), sender, to)
        plain = b"".join(v.to_bytes(_SHARE_BYTES, "big") for v in pair)
        return self._cipher(sender, to).encrypt(_nonce(aad), plain, aad)

    def _open(self, round_: int, sender: str, to: str, sealed: bytes) -> tuple[int, int]:
        aad = frame(self.job_id, str(round_), sender, to)
        try:
            plain = self._cipher(sender, to).decrypt(_nonce(aad), bytes(sealed), aad)
        except InvalidTag as exc:
            raise RosterError(
                f"round {round_}: the shares from site {sender!r} do not open"
            ) from exc
        return (
            int.from_bytes(plain[:_SHARE_BYTES], "big"),
            int.from_bytes(plain[_SHARE_BYTES:], "big"),
        )


def unmask(
    masked: Mapping[str, np.ndarray],
    roster: VerifiedRoster,
    round_: int,
    round_keys: Mapping[str, SignedPublicKey],
    reveals: Mapping[str, Reveal],
    *,
    scale: int = DEFAULT_SCALE,
) -> np.ndarray:
    """The coordinator's side: the decoded sum of the `masked` inputs of a round whose
    sites set up with `round_keys`, from a threshold of the survivors' `reveals`."""
    survivors = sorted(masked)
    dropped = sorted(set(round_keys) - set(masked))
    need = threshold(len(roster.sites))
    if len(reveals) < need:
        raise RosterError(
            f"round {round_}: {len(reveals)} site(s) revealed their shares, {need} are needed"
        )
    arrays = [np.asarray(masked[s]) for s in survivors]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or any(a.dtype != np.uint64 for a in arrays):
        raise ValueError(f"masked vectors must be uint64 arrays of one shape, got {shapes}")
    total = np.zeros(arrays[0].size, dtype=np.uint64)
    for a in arrays:
        total += a.ravel()  # uint64 arithmetic wraps: addition mod 2^64.
    for site in survivors:
        seed = shamir.combine([r.seeds[site] for r in reveals.values()], _KEY_BYTES)
        total -= keystream(_self_info(roster.job_id, round_, site), seed, total.size)
    for gone in dropped:
        raw = shamir.combine([r.keys[gone] for r in reveals.values()], _KEY_BYTES)
        key = X25519PrivateKey.from_private_bytes(raw)
        if key.public_key().public_bytes(*_RAW) != bytes(round_keys[gone].public_key):
            raise RosterError(f"round {round_}: the shares of site {gone!r}'s key do not agree")
        for site in survivors:
            peer = X25519PublicKey.from_public_bytes(bytes(round_keys[site].public_key))
            mask = _pair_mask(key.exchange(peer), roster.job_id, round_, site, gone, total.size)
            if site < gone:  # the survivor added this mask; take it away
                total -= mask
            else:
                total += mask
    return decode(total, scale).reshape(arrays[0].shape)


def _verify(entry: SignedPublicKey, identity: bytes, job_id: str, round_: int | None) -> None:
    if len(entry.public_key) != _KEY_BYTES:
        raise RosterError(f"site {entry.site!r}: public key is not 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(
            entry.signature, _signed_message(job_id, round_, entry.site, entry.public_key)
        )
    except (InvalidSignature, ValueError) as exc:
        raise RosterError(
            f"site {entry.site!r}: public key signature does not verify against its "
            f"pinned identity for job {job_id!r}; the key was tampered with or replaced"
        ) from exc


def _survivors_message(
    job_id: str, round_: int, survivors: Sequence[str], view: Sequence[str]
) -> bytes:
    """What a confirmation signs: the survivors and the sites the signer masked with, so
    only sites that were told the same round count for each other."""
    return frame(_PROTOCOL, b"survivors", job_id, str(round_), ",".join(survivors), *view)


def _pair_mask(secret: bytes, job_id: str, round_: int, a: str, b: str, n: int) -> np.ndarray:
    low, high = sorted((a, b))
    return keystream(frame(_PROTOCOL, b"pair", job_id, str(round_), low, high), secret, n)


def _self_info(job_id: str, round_: int, site: str) -> bytes:
    return frame(_PROTOCOL, b"self", job_id, str(round_), site)


def keystream(info: bytes, secret: bytes, n: int) -> np.ndarray:
    """A ChaCha20 keystream of `n` uint64 under HKDF-SHA256(secret, info): a
    cryptographic PRG (a statistical one such as PCG64 has a recoverable state). The key
    is unique per (job, round, pair or site), so the fixed nonce is never reused."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)


def _nonce(aad: bytes) -> bytes:
    return hashlib.sha256(aad).digest()[:12]


def _signed_message(job_id: str, round_: int | None, site: str, public_key: bytes) -> bytes:
    purpose = b"x25519-key" if round_ is None else b"round-key"
    return frame(
        _PROTOCOL, purpose, job_id, "" if round_ is None else str(round_), site, public_key
    )


def frame(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation: no two different part lists give the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _check_site_count(count: int, least: int = MIN_SITES) -> None:
    least = max(least, MIN_SITES)
    if count < least:
        raise RosterError(
            f"secure sum needs at least {least} sites, got {count}: with two, each "
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
