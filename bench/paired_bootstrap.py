"""A paired bootstrap of the difference in AUC between two models scored on the same rows,
for the benches (the pipeline's own evaluation reports each model through the secure sum,
never two models' joint scores)."""

from __future__ import annotations

import numpy as np


def joint_counts(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, bins: int = 100) -> np.ndarray:
    """Rows counted by (label, risk bin of model a, risk bin of model b): shape (2, bins,
    bins), a table whose size does not depend on the row count."""
    a = np.minimum((np.asarray(p_a) * bins).astype(int), bins - 1)
    b = np.minimum((np.asarray(p_b) * bins).astype(int), bins - 1)
    counts = np.zeros((2, bins, bins), dtype=np.int64)
    np.add.at(counts, (np.asarray(y).astype(int), a, b), 1)
    return counts


def auc_from_histograms(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float:
    """Mann-Whitney AUC from per-bin class counts (ties within a bin count one half)."""
    pos, neg = hist_pos.astype(float), hist_neg.astype(float)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def paired_bootstrap_auc(
    joint: np.ndarray, *, draws: int = 500, seed: int = 0
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) with a paired 95 % percentile bootstrap interval, from
    :func:`joint_counts`. Resampling the cells with Poisson weights keeps each row's two
    scores paired. Returns (difference, low, high); seeded, as a bench's statistics are."""
    rng = np.random.default_rng(seed)

    def diff(counts: np.ndarray) -> float:
        pos, neg = counts[1], counts[0]
        return auc_from_histograms(pos.sum(1), neg.sum(1)) - auc_from_histograms(
            pos.sum(0), neg.sum(0)
        )

    point = diff(joint)
    cells = np.flatnonzero(joint)
    diffs = np.empty(draws)
    for i in range(draws):
        sample = np.zeros(joint.size)
        sample[cells] = rng.poisson(joint.ravel()[cells])
        diffs[i] = diff(sample.reshape(joint.shape))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(low), float(high)
