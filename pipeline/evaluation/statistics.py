"""Metrics from the sites' sufficient statistics, never per-row predictions.

A site summarises (label, predicted risk) pairs into a fixed-size vector
(:func:`stats_vector`): per patient group (everyone, then the contract's subgroups), class
counts over ``SCORE_BINS`` bins of the predicted log-odds and, per bin and class, the sums
of the log-odds and of their squares, the sum of the risk per bin, and loss sums. The
vectors are summed through secure aggregation, so the coordinator only ever decodes the
pooled one (:func:`pooled_metrics`). From it:

- AUC (Mann-Whitney over bins; the pairs inside a bin ordered by a normal approximation
  from each class's mean and spread there, within 1e-3 of the row-level AUC where ties
  alone are off by several thousandths) and average precision;
- log loss and Brier score (exact sums);
- calibration slope and calibration-in-the-large, the logistic recalibration of the label
  on the log-odds (Cox 1958; Steyerberg, "Clinical Prediction Models", 2nd ed., ch. 15).
  Its log-likelihood needs each row's log-odds only through ``log(1 + e^(a + b x))``,
  expanded to second order around each bin's mean log-odds: the bin's count, sum and sum
  of squares give it to within the fourth power of a bin's width;
- observed / expected events, and a calibration curve whose points each hold at least
  ``MIN_CELL`` patients of either class (neighbouring bins are merged until they do).

Bins are equal-width on the log-odds scale (``LOGIT_RANGE``), where scores of a rare
outcome spread out instead of crowding the first bins of the probability scale.

A group with fewer than ``MIN_CELL`` patients in a class is reported as suppressed, not as
numbers (the small-cell rule of health-statistics disclosure control).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import MIN_CELL, Metrics, Suppressed
from pipeline.link import logit, sigmoid

SCORE_BINS = 100
LOGIT_RANGE = 8.0  # bins cover log-odds in [-8, 8]; the end bins also hold the tails
# Per bin: positives, negatives; per class the sum of log-odds and of their squares; the
# sum of risk. Then the log-loss and Brier sums.
_PER_BIN = 7
_SCALARS = 2


def group_width(bins: int = SCORE_BINS) -> int:
    """Length of one group's block in :func:`stats_vector`."""
    return _PER_BIN * bins + _SCALARS


def score_bin(x: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Bin index of each log-odds value (equal width over ``LOGIT_RANGE``; tails clipped)."""
    width = 2 * LOGIT_RANGE / bins
    return np.clip(((x + LOGIT_RANGE) / width).astype(np.int64), 0, bins - 1)


def stats_vector(
    y: np.ndarray, p: np.ndarray, groups: list[np.ndarray], bins: int = SCORE_BINS
) -> np.ndarray:
    """A site's fixed-size summary of (label, risk) pairs: one block for every patient,
    then one per group mask, each :func:`group_width` long. Meant to be summed across
    sites before anyone reads it."""
    y = np.asarray(y).astype(np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    x = logit(p)
    k = score_bin(x, bins)
    blocks = []
    for mask in [np.ones(len(y), dtype=bool), *groups]:
        yk, xk, pk, kk = y[mask], x[mask], p[mask], k[mask]
        pos = yk == 1
        per_bin = [
            np.bincount(kk[pos], minlength=bins),
            np.bincount(kk[~pos], minlength=bins),
            np.bincount(kk[pos], weights=xk[pos], minlength=bins),
            np.bincount(kk[~pos], weights=xk[~pos], minlength=bins),
            np.bincount(kk[pos], weights=xk[pos] ** 2, minlength=bins),
            np.bincount(kk[~pos], weights=xk[~pos] ** 2, minlength=bins),
            np.bincount(kk, weights=pk, minlength=bins),
        ]
        scalars = [
            -(np.log(pk[pos]).sum() + np.log1p(-pk[~pos]).sum()),
            ((pk - yk) ** 2).sum(),
        ]
        blocks.append(np.concatenate([*(b.astype(np.float64) for b in per_bin), scalars]))
    return np.concatenate(blocks)


def split_groups(vector: np.ndarray, n_groups: int, bins: int = SCORE_BINS) -> list[np.ndarray]:
    """The blocks of a (pooled) :func:`stats_vector`: every patient first, then the groups."""
    width = group_width(bins)
    if vector.shape != ((n_groups + 1) * width,):
        raise ValueError(
            f"evaluation vector has {vector.size} values, expected {(n_groups + 1) * width}"
        )
    return [vector[i * width : (i + 1) * width] for i in range(n_groups + 1)]


def pooled_metrics(block: np.ndarray, bins: int = SCORE_BINS) -> Metrics | Suppressed:
    """Metrics from one pooled group block, or :class:`Suppressed` for a small group."""
    pos, neg, sx_p, sx_n, sxx_p, sxx_n, sp = (
        np.rint(block[i * bins : (i + 1) * bins]) if i < 2 else block[i * bins : (i + 1) * bins]
        for i in range(_PER_BIN)
    )
    ll_sum, brier_sum = block[_PER_BIN * bins :]
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos < MIN_CELL or n_neg < MIN_CELL:
        return Suppressed()
    n = n_pos + n_neg
    count = pos + neg
    slope, intercept = recalibration(count, n_pos, sx_p + sx_n, sxx_p + sxx_n, sx_p.sum())
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / n_neg])
    return Metrics(
        auc=binned_auc(pos, neg, (sx_p, sxx_p), (sx_n, sxx_n)),
        log_loss=float(ll_sum / n),
        brier=float(brier_sum / n),
        n=int(n),
        prevalence=float(n_pos / n),
        mean_predicted=float(sp.sum() / n),
        roc=(fpr, tpr),
        calibration=_merged_curve(pos, neg, sp),
        auprc=average_precision(pos, neg),
        calibration_slope=slope,
        calibration_intercept=intercept,
        oe_ratio=float(n_pos / sp.sum()) if sp.sum() > 0 else float("nan"),
    )


def binned_auc(
    pos: np.ndarray,
    neg: np.ndarray,
    sums_pos: tuple[np.ndarray, np.ndarray],
    sums_neg: tuple[np.ndarray, np.ndarray],
) -> float:
    """Mann-Whitney AUC over bins, with the pairs inside a bin ordered by each class's
    mean and spread of log-odds there (a normal approximation of their difference)
    rather than counted as ties: on a few thousand patients, whose scores crowd a few
    bins, ties alone move the AUC by about 0.001."""
    from scipy.special import ndtr

    neg_below = np.cumsum(neg) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, mean_n = sums_pos[0] / pos, sums_neg[0] / neg
        var_p = np.maximum(sums_pos[1] / pos - mean_p**2, 0.0)
        var_n = np.maximum(sums_neg[1] / neg - mean_n**2, 0.0)
        spread = np.sqrt(var_p + var_n)
        z = (mean_p - mean_n) / spread
    within = np.where(
        spread > 1e-12, ndtr(z), np.where(mean_p > mean_n, 1.0, np.where(mean_p < mean_n, 0.0, 0.5))
    )
    within = np.where((pos > 0) & (neg > 0), within, 0.0)
    pairs = (pos * neg_below).sum() + (pos * neg * within).sum()
    return float(pairs / (pos.sum() * neg.sum()))


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision over the bins' thresholds, highest risk first (a bin is one
    threshold, as tied scores are for sklearn's ``average_precision_score``)."""
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    total = tp[-1]
    if total == 0:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return float((pos[::-1] / total * precision).sum())


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def recalibration(
    count: np.ndarray, n_pos: float, sx: np.ndarray, sxx: np.ndarray, sx_pos: float
) -> tuple[float, float]:
    """(calibration slope, calibration-in-the-large) from binned sums.

    The slope is b of ``logit P(y) = a + b x``; calibration-in-the-large is a with b fixed
    at 1 (the log-odds as an offset). Both maximise the binned second-order likelihood
    (see the module docstring) by Newton's method."""
    used = count > 0
    n, s1, s2 = count[used], sx[used], sxx[used]
    xbar = s1 / n
    dev = np.maximum(s2 - n * xbar**2, 0.0)  # within-bin sum of squared deviations

    def loglik(a: float, b: float) -> float:
        z = a + b * xbar
        s = sigmoid(z)
        return (
            a * n_pos
            + b * sx_pos
            - float((n * _softplus(z) + 0.5 * b * b * dev * s * (1 - s)).sum())
        )

    def newton(a: float, b: float, fit_slope: bool) -> tuple[float, float]:
        for _ in range(100):
            z = a + b * xbar
            s = sigmoid(z)
            w = s * (1 - s)
            w2 = w * (1 - 2 * s)  # d w / d z
            w3 = w * (1 - 6 * s + 6 * s * s)  # d2 w / d z2
            # d/da and d/db of the correction term 0.5 b^2 dev w(z)
            c = 0.5 * dev
            ga = n_pos - (n * s).sum() - (c * b * b * w2).sum()
            gb = sx_pos - (n * s * xbar).sum() - (c * (2 * b * w + b * b * w2 * xbar)).sum()
            haa = -(n * w).sum() - (c * b * b * w3).sum()
            hab = -(n * w * xbar).sum() - (c * (2 * b * w2 + b * b * w3 * xbar)).sum()
            hbb = (
                -(n * w * xbar * xbar).sum()
                - (c * (2 * w + 4 * b * w2 * xbar + b * b * w3 * xbar * xbar)).sum()
            )
            if fit_slope:
                step = np.linalg.solve(np.array([[haa, hab], [hab, hbb]]), np.array([ga, gb]))
            else:
                step = np.array([ga / haa, 0.0])
            # Damped: halve the step until the likelihood does not fall.
            before, t = loglik(a, b), 1.0
            while t > 1e-6 and loglik(a - t * step[0], b - t * step[1]) < before - 1e-12:
                t /= 2
            a, b = a - t * step[0], b - t * step[1]
            if np.abs(t * step).max() < 1e-10:
                break
        return float(a), float(b)

    _, slope = newton(0.0, 1.0, True)
    citl, _ = newton(0.0, 1.0, False)
    return slope, citl


def _merged_curve(
    pos: np.ndarray, neg: np.ndarray, sp: np.ndarray, points: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration points over tenths of predicted risk, merging neighbouring bins until
    each point holds at least ``MIN_CELL`` patients of either class (a short last point
    joins the one before it)."""
    bins = len(pos)
    centres = sigmoid(-LOGIT_RANGE + (np.arange(bins) + 0.5) * (2 * LOGIT_RANGE / bins))
    target = np.minimum((centres * points).astype(int), points - 1)
    groups: list[list[int]] = []
    current: list[int] = []
    for i in range(bins):
        current.append(i)
        last = i == bins - 1 or target[i + 1] != target[i]
        if last and pos[current].sum() >= MIN_CELL and neg[current].sum() >= MIN_CELL:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    pred = np.array([sp[g].sum() for g in groups])
    true = np.array([pos[g].sum() for g in groups])
    count = np.array([(pos[g] + neg[g]).sum() for g in groups])
    return pred, true, count


def site_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """A site's own row-level AUC (ties count one half), or None when the site holds
    fewer than ``MIN_CELL`` patients in a class: the site suppresses it before replying."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < MIN_CELL or n_neg < MIN_CELL:
        return None
    ranks = pd.Series(np.asarray(p, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
