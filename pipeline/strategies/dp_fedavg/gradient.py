"""The per-example gradients a DP-FedAvg round clips and noises (DP-SGD, Abadi et al.
2016), in the standardized coordinates the job trains in. Pure functions on arrays,
tested without Ray."""

from __future__ import annotations

import numpy as np

from pipeline.link import sigmoid


def standardized(
    X: np.ndarray, centre: np.ndarray | None = None, scale: np.ndarray | None = None
) -> np.ndarray:
    """Encoded columns less their centres (from the contract), over their scales (from
    the job's private scale release); either may be absent."""
    if centre is not None:
        X = X - np.asarray(centre, dtype=np.float64)
    if scale is not None:
        X = X / np.asarray(scale, dtype=np.float64)
    return X


def per_example_gradients(X: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row's gradient of the log-loss at `weights` (last entry: intercept), one row
    per example: what a round clips to a bound before summing."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    return Xb * (sigmoid(Xb @ weights) - y)[:, None]


def poisson_sample(n: int, rate: float) -> np.ndarray:
    """Which of `n` rows take part in a round, each with probability `rate`, drawn from
    the operating system's randomness (Poisson sampling, as the accountant assumes)."""
    return np.random.default_rng().random(n) < rate
