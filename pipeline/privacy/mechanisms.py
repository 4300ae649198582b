"""Noise mechanisms for a site's private releases: per-example clipping plus Gaussian noise.

This is the release step of DP-SGD (Abadi et al. 2016, "Deep Learning with Differential
Privacy", CCS) and of DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", ICLR): clipping every example's contribution to L2 norm
``bound`` caps what any one patient can change in the sum at ``bound`` (the L2
sensitivity under adding or removing one record), so noise of std ``sigma * bound`` gives
the guarantee that ``accounting.gaussian_epsilon(sigma, ...)`` computes.

The clipping bound is a parameter that comes from the config or the data contract, never
from the data (a bound learned from the data leaks the data).

Noise comes from the operating system's randomness: every call builds a fresh
``numpy.random.Generator`` from ``os.urandom`` entropy, never from a user seed, and the
draws are never logged. A seeded DP release would let anyone with the seed subtract the
noise. Known limitation: floating-point Gaussian sampling is not an exact discrete
mechanism (Mironov 2012, "On Significance of the Least Significant Bits for
Differential Privacy"); the noise here is far larger than the float spacing it perturbs.
"""

from __future__ import annotations

import math

import numpy as np


def clip_rows(matrix: np.ndarray, bound: float) -> np.ndarray:
    """Scale every row whose L2 norm exceeds ``bound`` down to norm ``bound``.

    Rows within the bound are returned unchanged (no rescaling up), so clipping only ever
    removes influence. Returns a new float64 array; the input is not modified.
    """
    _check_bound(bound)
    rows = np.asarray(matrix, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"clip_rows expects a 2-D (examples x features) array, got {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError("clip_rows: the matrix holds NaN or infinite values")
    norms = np.linalg.norm(rows, axis=1)
    # bound / norm where norm > bound, else 1 (zero rows included: never divided).
    scale = np.ones_like(norms)
    over = norms > bound
    scale[over] = bound / norms[over]
    return rows * scale[:, None]


def clipped_sum(per_example: np.ndarray, bound: float) -> np.ndarray:
    """Sum over examples of their clipped rows: L2 sensitivity ``bound`` (add/remove one)."""
    return clip_rows(per_example, bound).sum(axis=0)


def gaussian_noise(shape: int | tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std^2) noise of ``shape`` from a generator seeded by the OS, fresh per call.

    ``np.random.default_rng()`` without a seed draws its entropy from ``os.urandom``; a
    new generator per call means no state is shared between releases or across ``fork``.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {std!r}")
    return np.random.default_rng().normal(0.0, std, size=shape)


def noisy_clipped_sum(per_example: np.ndarray, bound: float, noise_multiplier: float) -> np.ndarray:
    """The Gaussian mechanism on a clipped sum: sum of clipped rows + N(0, (sigma*bound)^2).

    ``noise_multiplier`` (sigma) is noise std over sensitivity; pass the value
    ``accounting.calibrate_noise_multiplier`` chose for the job, after the spend has been
    reserved in the ledger (check, compute, record: nothing is released unrecorded).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    total = clipped_sum(per_example, bound)
    return total + gaussian_noise(total.shape, noise_multiplier * bound)


def _check_bound(bound: float) -> None:
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"clipping bound must be finite and > 0, got {bound!r}")
