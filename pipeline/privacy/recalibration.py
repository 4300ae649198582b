"""Private logistic recalibration: a model's log-odds mapped by ``slope * (z - centre) +
intercept``, fitted from one noisy release of per-cell label counts.

Why a private model needs it: clipping every patient's gradient biases the weights
(clipped rows count by their direction, not their size; Bu, Wang, Zha & Karypis 2023,
"On the convergence and calibration of deep learning with differential privacy", TMLR),
and noise in the weights spreads the log-odds beyond what the data support, so the model
ranks patients well and states their risk badly: calibration slope 0.45-0.7 on the
synthetic federations, a predicted risk about half the observed. A fixed correction does
not travel (on the heart-disease hospitals the error goes the other way), so the map is
fitted for the sites the model was trained on: Platt's logistic recalibration (Platt
1999; Cox 1958's slope and calibration-in-the-large), fitted privately.

How, and why this way:

- **One release, sensitivity 1.** Each site places every training row in one of
  :data:`CELLS` cells of the model's log-odds (equal width over ``centre +- SPREAD *
  spread``, the ends open) and counts negatives and positives per cell: a row adds 1 to
  exactly one count, so the L2 sensitivity is 1 wherever the cells are, and the Gaussian
  mechanism adds ``noise_multiplier`` to each count once. The counts are the sufficient
  statistics of the two-parameter logistic likelihood on cell centres; the fit then takes
  Newton steps on them at the coordinator as often as it likes, free (post-processing).
  Releasing the gradient and Hessian at a few points instead (a Newton step per release)
  was measured noisier for the same budget: the slope's Hessian entry must be clipped to
  the log-odds range squared, and three releases split the budget three ways.
- **The cells come from the model, not the data.** ``centre`` (the log-odds of the
  contract's typical patient) and ``spread`` (the norm of the weights over the columns'
  scales, about the log-odds' standard deviation) are functions of the released model,
  so choosing the cells costs nothing; the cells reach 3 spreads out because rows lumped
  into an end cell's centre bias the slope upwards (at 2.5 spreads the recalibrated
  slope was 0.91 with no noise at all; at 3, 0.96).
- **Sparse end cells are merged** into their neighbour while their noisy count is below
  four times its noise, and negative noisy counts are taken as zero: a nearly empty cell
  holds noise and no signal.
- **Planned with the job.** Its noise is chosen so that the counts' noise (L2 over all
  cells and sites) is at most :data:`NOISE_TO_SIGNAL` of the rows, for at most
  :data:`MAX_SHARE` of the job's privacy cost; a federation too small for that even at
  the cap (noise more than 2.5 times the goal) is not recalibrated and the plan says why,
  with the numbers. Every site adds the full noise (measured in-process over 60 noise
  draws on the synthetic 4-site federation: calibration within the gate in 95 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.link import sigmoid

CELLS = 8
SPREAD = 3.0  # cells cover the model's log-odds within 3 spreads of its centre
NOISE_TO_SIGNAL = 0.01  # L2 noise of all cell counts over the training rows
MAX_SHARE = 0.25  # the largest share of the job's privacy cost recalibration may take
MAX_SHORTFALL = 2.5  # at the cap, noise above 2.5 times the goal: no recalibration
MERGE_BELOW = 4.0  # end cells with a noisy count below 4 of its noise std are merged
SLOPE_RANGE = (0.2, 5.0)  # what a fit may return; beyond, noise, not calibration
NEWTON_STEPS = 50


@dataclass(frozen=True)
class RecalibrationNoise:
    """What the plan decided for recalibration, from counts alone.

    Attributes
    ----------
    share : float
        Its part of the job's privacy cost (Renyi-DP adds per order, so a share of
        ``1 / sigma^2``); 0 when there is none.
    noise_to_signal : float
        Expected L2 noise of all cell counts over the training rows, at that share.
    reason : str
        Why there is none ("" when there is).
    """

    share: float
    noise_to_signal: float
    reason: str = ""

    @property
    def planned(self) -> bool:
        return self.share > 0


def wanted_noise(rows: int, sites: int, cells: int = CELLS) -> float:
    """The noise multiplier at which the counts' noise over the rows (``s * sqrt(sites *
    2 * cells) / rows``) is :data:`NOISE_TO_SIGNAL`."""
    if rows < 1 or sites < 1:
        raise ValueError("recalibration needs rows and sites")
    return NOISE_TO_SIGNAL * rows / math.sqrt(sites * 2 * cells)


def _decided(sigma: float, share: float, rows: int, sites: int, cells: int) -> RecalibrationNoise:
    at_share = NOISE_TO_SIGNAL * sigma / wanted_noise(rows, sites, cells)
    if at_share > MAX_SHORTFALL * NOISE_TO_SIGNAL:
        return RecalibrationNoise(
            0.0,
            at_share,
            f"not recalibrated: {rows} training rows are too few; with {MAX_SHARE:.0%} of "
            f"the budget the cell counts' noise would be {at_share:.3f} of the rows "
            f"({at_share / NOISE_TO_SIGNAL:.1f}x the {NOISE_TO_SIGNAL:g} a fit needs)",
        )
    return RecalibrationNoise(share, at_share)


def plan_noise(
    *, sigma_one: float, rows: int, sites: int, cells: int = CELLS
) -> RecalibrationNoise:
    """The recalibration's share of a job of Gaussian releases composed under Renyi DP
    whose whole budget is one release at `sigma_one`, for `rows` training rows over
    `sites` sites each adding the full noise: the goal's noise ``s`` costs ``(sigma_one /
    s)^2`` of the budget, at most :data:`MAX_SHARE`."""
    share = min((sigma_one / wanted_noise(rows, sites, cells)) ** 2, MAX_SHARE)
    return _decided(sigma_one / math.sqrt(share), share, rows, sites, cells)


def plan_epsilon(
    *, epsilon: float, delta: float, rows: int, sites: int, cells: int = CELLS
) -> tuple[RecalibrationNoise, float, float | None]:
    """For a job composed basically (epsilons add): the recalibration's (noise, epsilon
    at `delta`, noise multiplier or None). Its share is of `epsilon`, at most
    :data:`MAX_SHARE`."""
    from pipeline.privacy.accounting import calibrate_noise_scale, composed_gaussian_epsilon

    sigma = wanted_noise(rows, sites, cells)
    needed = composed_gaussian_epsilon([(sigma, 1, 1.0)], delta)
    spent = min(needed, MAX_SHARE * epsilon)
    if spent < needed:
        sigma = calibrate_noise_scale(spent, delta, [(1.0, 1, 1.0)])
    decided = _decided(sigma, spent / epsilon, rows, sites, cells)
    if not decided.planned:
        return decided, 0.0, None
    return decided, composed_gaussian_epsilon([(sigma, 1, 1.0)], delta), sigma


@dataclass(frozen=True)
class Cells:
    """The cells of the model's log-odds a site counts its rows in: ``cells`` equal
    widths over ``centre +- half_width``, the end cells open."""

    centre: float
    half_width: float
    cells: int = CELLS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.centre) and math.isfinite(self.half_width)):
            raise ValueError("cells need a finite centre and width")
        if self.half_width <= 0 or self.cells < 2:
            raise ValueError("cells need a positive width and at least two cells")

    @classmethod
    def around(cls, weights: np.ndarray, scales: np.ndarray, centres: np.ndarray) -> Cells:
        """Cells for the model with encoder `weights` (last: intercept): centred on the
        log-odds of the contract's typical row (`centres`), ``SPREAD`` times the norm of
        the weights over the columns' `scales` either side."""
        w = np.asarray(weights, dtype=np.float64)
        centre = float(w[:-1] @ np.asarray(centres, dtype=np.float64) + w[-1])
        spread = float(np.linalg.norm(w[:-1] * np.asarray(scales, dtype=np.float64)))
        return cls(centre, SPREAD * max(spread, 0.1))

    def index(self, log_odds: np.ndarray) -> np.ndarray:
        """The cell of every log-odds."""
        at = (np.asarray(log_odds, dtype=np.float64) - self.centre + self.half_width) / (
            2 * self.half_width
        )
        return np.clip(np.floor(at * self.cells), 0, self.cells - 1).astype(np.int64)

    def midpoints(self) -> np.ndarray:
        """Each cell's centre, relative to ``centre``."""
        edges = np.linspace(-self.half_width, self.half_width, self.cells + 1)
        return (edges[:-1] + edges[1:]) / 2

    def one_hot(self, log_odds: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One row per patient, a 1 in its cell's negatives or positives (L2 norm 1):
        what a site sums and noises."""
        index = self.index(log_odds) + self.cells * (np.asarray(y) > 0.5)
        out = np.zeros((len(index), 2 * self.cells))
        out[np.arange(len(index)), index] = 1.0
        return out

    def as_request(self) -> dict[str, float | int]:
        return {"centre": self.centre, "half_width": self.half_width, "cells": self.cells}


@dataclass(frozen=True)
class Recalibration:
    """The map ``z -> slope * (z - centre) + intercept`` of a model's log-odds
    (``intercept``: the recalibrated log-odds at ``centre``; the identity is
    ``(1, centre, centre)``)."""

    slope: float
    intercept: float
    centre: float

    def apply(self, weights: np.ndarray) -> np.ndarray:
        """Encoder weights (last: intercept) whose log-odds are the map of `weights`': a
        monotone map, so the model ranks every patient as before."""
        w = np.asarray(weights, dtype=np.float64)
        return np.append(self.slope * w[:-1], self.slope * (w[-1] - self.centre) + self.intercept)


def fit(noisy_counts: np.ndarray, cells: Cells, count_noise: float) -> Recalibration:
    """Platt's two parameters from the summed noisy counts (negatives per cell, then
    positives), `count_noise` the std of one summed count's noise. Newton's method on
    the cells' log-likelihood, from the identity map."""
    v = np.asarray(noisy_counts, dtype=np.float64)
    if v.shape != (2 * cells.cells,) or not np.all(np.isfinite(v)):
        raise ValueError(f"expected {2 * cells.cells} finite counts, got {v.shape}")
    neg, pos, u = _merged(
        v[: cells.cells], v[cells.cells :], cells.midpoints(), MERGE_BELOW * count_noise
    )
    neg, pos = np.maximum(neg, 0.0), np.maximum(pos, 0.0)
    n = neg + pos
    theta = np.array([1.0, cells.centre])  # slope, log-odds at the centre: the identity
    low, high = SLOPE_RANGE
    for _ in range(NEWTON_STEPS):
        p = sigmoid(theta[0] * u + theta[1])
        r, h = n * p - pos, n * p * (1 - p) + 1e-9
        g = np.array([r @ u, r.sum()])
        H = np.array([[h @ (u * u), h @ u], [h @ u, h.sum()]])
        step = np.linalg.solve(H + 1e-9 * np.eye(2), g)
        step *= min(1.0, 1.0 / max(abs(step[0]) / 0.5, abs(step[1]), 1e-12))
        theta = theta - step
        theta[0] = min(max(theta[0], low), high)
        if np.abs(step).max() < 1e-10:
            break
    return Recalibration(float(theta[0]), float(theta[1]), cells.centre)


def _merged(
    neg: np.ndarray, pos: np.ndarray, u: np.ndarray, least: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """End cells whose noisy count is below `least` merged inwards, their centre the
    count-weighted mean (at least two cells stay)."""
    neg, pos, u = list(neg), list(pos), list(u)
    for end, inner in ((0, 1), (-1, -2)):
        while len(u) > 2 and neg[end] + pos[end] < least:
            a, b = max(neg[end] + pos[end], 0.0), max(neg[inner] + pos[inner], 1e-9)
            u[inner] = (u[end] * a + u[inner] * b) / (a + b)
            neg[inner] += neg[end]
            pos[inner] += pos[end]
            del neg[end], pos[end], u[end]
    return np.array(neg), np.array(pos), np.array(u)
