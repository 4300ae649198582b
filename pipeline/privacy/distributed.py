"""Distributed noise: each site adds a share of a release's noise, secure aggregation sums it.

With every site adding the full noise its own guarantee needs, a sum over ``k`` sites
carries ``sqrt(k)`` times the noise one release needs: on a few hundred rows per site that
extra noise is what separates a private model from the non-private one. Under secure
aggregation (:mod:`pipeline.protocol.secure_sum`) the coordinator sees only the sum, so
each site can add a share, variance ``1/m`` of the release's, and the sum still carries the
whole noise. This is distributed differential privacy with secure aggregation (Truex et
al. 2019, "A Hybrid Approach to Privacy-Preserving Federated Learning", AISec; Kairouz,
Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML), made for a few hospitals rather than millions of phones.

What a site then trusts, and what it does not
---------------------------------------------
A site's guarantee rests on at least ``m`` shares in the sum that it does not know and
the coordinator cannot remove: its own and those of sites that neither collude with the
coordinator nor send a vector without their share. The job declares how many such sites
it tolerates, ``collusion_threshold`` ``t``, and sizes the shares for the smallest round
it may run, ``m = max(quorum, 3) - t`` (:func:`noise_shares`); a site refuses to mask a
share into a round of fewer than ``m + t`` sites. A site whose policy does not accept
this (``distributed_noise: false``, the default, or a threshold below its own minimum)
adds its full noise, as without distributed noise: its guarantee never depends on
another site, and the extra noise only adds to everyone else's. Secure aggregation's own
assumptions (an honest-but-curious coordinator that discards replies of an abandoned
attempt) become privacy assumptions here, where without shares they only guard the
update.

Why discrete
------------
Secure aggregation sums integers modulo 2^64. A share of continuous Gaussian noise,
rounded to the fixed-point grid, leaves a rounding error that depends on the site's
value, and with small shares that error is not covered by noise the site added alone.
So a site rounds its clipped sum to the grid first (a deterministic rounding moves every
coordinate by less than one grid step, so adding or removing one row changes the rounded
sum by at most ``clip * GRID + sqrt(dim)`` in L2, :func:`grid_sensitivity`) and then adds
discrete Gaussian noise (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for
Differential Privacy", NeurIPS). A sum of discrete Gaussians is not exactly one, but
Kairouz, Liu & Steinke 2021 bound its Renyi divergence by the Gaussian's plus
a term ``tau`` that vanishes when each share's std is many grid steps
(:func:`sum_noise_multiplier`): here shares are thousands of steps wide and ``tau`` is
zero in double precision, so the accountant charges the sum as one Gaussian release at
the plan's noise multiplier; shares too narrow for that are refused.

The sampler is written here: diffprivlib's ``GaussianDiscrete`` calibrates from (epsilon,
delta) by a search whose sum gives up beyond a std of about 26,000 grid steps, and draws
with a Python loop of about one pass per unit of std, where a share is 10^3-10^6 steps
wide. It is Canonne et al.'s Algorithm 3 vectorized with NumPy (discrete Laplace
proposals, Gaussian-ratio acceptance in floating point, not their exact rational
arithmetic), drawing from the operating system's randomness, never seeded or logged.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.privacy.mechanisms import clipped_sum
from pipeline.protocol.secure_sum import MIN_SITES as MIN_ROUND

GRID = 2**16  # grid steps per unit of a clipped sum; divides the secure sum's 2^24


def noise_shares(smallest_round: int, collusion_threshold: int) -> int:
    """How many shares make a release's noise: ``max(smallest_round, 3) - t``.

    Raises ``ValueError`` when the threshold leaves fewer than two shares (one share is
    each site adding its full noise: configure that instead).
    """
    if isinstance(collusion_threshold, bool) or collusion_threshold < 0:
        raise ValueError(f"collusion_threshold must be >= 0, got {collusion_threshold!r}")
    shares = max(int(smallest_round), MIN_ROUND) - int(collusion_threshold)
    if shares < 2:
        raise ValueError(
            f"distributed noise: tolerating {collusion_threshold} colluding sites in rounds "
            f"of {max(int(smallest_round), MIN_ROUND)} leaves {max(shares, 0)} noise shares; "
            "raise the quorum (min_sites) or lower privacy.collusion_threshold"
        )
    return shares


def grid_sensitivity(bound: float, dim: int) -> float:
    """L2 sensitivity, in grid steps, of a clipped sum rounded to the grid."""
    return bound * GRID + math.sqrt(dim)


def share_std(noise_multiplier: float, bound: float, dim: int, shares: int) -> float:
    """The std, in grid steps, of one site's share: ``m`` shares make the release's noise."""
    return noise_multiplier * grid_sensitivity(bound, dim) / math.sqrt(shares)


def sum_noise_multiplier(std: float, shares: int, bound: float, dim: int) -> float:
    """The noise multiplier the accountant may charge for ``shares`` discrete Gaussian
    shares of ``std`` grid steps each (Kairouz, Liu & Steinke 2021, their Renyi bound for
    a sum of discrete Gaussians, which needs ``std >= 1/2``).

    For sensitivity ``D`` the sum is ``eps^2 / 2``-concentrated DP with
    ``eps = D / (sqrt(m) s) + tau sqrt(d)``, ``tau = 10 sum_{k<m} exp(-2 pi^2 s^2 k/(k+1))``;
    a Gaussian release at noise multiplier ``z`` is ``1 / (2 z^2)``-concentrated, so the
    answer is ``1 / eps``.
    """
    if std < 0.5:
        return 0.0  # outside the bound's conditions: nothing may be charged for it
    tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * std**2 * k / (k + 1)) for k in range(1, shares))
    eps = grid_sensitivity(bound, dim) / (math.sqrt(shares) * std) + tau * math.sqrt(dim)
    return 1.0 / eps


def discrete_gaussian(shape: int | tuple[int, ...], std: float) -> np.ndarray:
    """Integers from the discrete Gaussian N_Z(0, std^2), from the OS's randomness.

    Canonne, Kamath & Steinke 2020, Algorithm 3: propose from the discrete Laplace of
    scale ``t = floor(std) + 1`` (the difference of two geometric variables), accept with
    probability ``exp(-(|y| - std^2 / t)^2 / (2 std^2))``; about half the proposals pass.
    """
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"discrete Gaussian std must be finite and > 0, got {std!r}")
    size = int(np.prod(shape))
    rng = np.random.default_rng()
    t = math.floor(std) + 1
    p = -math.expm1(-1.0 / t)  # 1 - exp(-1/t), without cancellation for large t
    out = np.empty(0, dtype=np.int64)
    while out.size < size:
        batch = 2 * (size - out.size) + 16
        y = rng.geometric(p, batch).astype(np.int64) - rng.geometric(p, batch)
        keep = rng.random(batch) < np.exp(-((np.abs(y) - std**2 / t) ** 2) / (2.0 * std**2))
        out = np.concatenate([out, y[keep]])
    return out[:size].reshape(shape)


def noisy_clipped_share(
    per_example: np.ndarray, bound: float, noise_multiplier: float, shares: int
) -> np.ndarray:
    """A site's share of a distributed release: its clipped sum on the grid plus one
    discrete Gaussian share, as floats on the grid (exact in the secure sum's fixed point).

    Raises ``ValueError`` if the accountant could not charge the sum of ``shares`` such
    shares at ``noise_multiplier`` (shares too narrow for :func:`sum_noise_multiplier`).
    """
    if shares < 1:
        raise ValueError(f"shares must be >= 1, got {shares}")
    total = clipped_sum(per_example, bound)
    dim = total.size
    std = share_std(noise_multiplier, bound, dim, shares)
    if sum_noise_multiplier(std, shares, bound, dim) < noise_multiplier * (1.0 - 1e-12):
        raise ValueError(
            f"distributed noise: shares of std {std:.3g} grid steps are too narrow for "
            f"noise multiplier {noise_multiplier:g}; raise the clip or the noise"
        )
    on_grid = np.rint(total * GRID)
    return (on_grid + discrete_gaussian(total.shape, std)) / GRID
