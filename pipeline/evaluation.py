"""Federated evaluation: metrics from the sites' sufficient statistics, never per-row
predictions.

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

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.federation.messages import EvalStats

SCORE_BINS = 100
LOGIT_RANGE = 8.0  # bins cover log-odds in [-8, 8]; the end bins also hold the tails
MIN_CELL = 11  # fewer patients than this in a class: suppressed
OVERALL = "all patients"
# Per bin: positives, negatives; per class the sum of log-odds and of their squares; the
# sum of risk. Then the log-loss and Brier sums.
_PER_BIN = 7
_SCALARS = 2


@dataclass(frozen=True)
class Metrics:
    """Metrics of one model on one group of held-out patients.

    ``calibration`` holds the curve's points as (summed risk, events, patients) per point.
    """

    auc: float
    log_loss: float
    brier: float
    n: int
    prevalence: float
    mean_predicted: float
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False)
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)
    auprc: float = float("nan")
    calibration_slope: float = float("nan")
    calibration_intercept: float = float("nan")
    oe_ratio: float = float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}auc": self.auc,
            f"{prefix}auprc": self.auprc,
            f"{prefix}log_loss": self.log_loss,
            f"{prefix}brier": self.brier,
            f"{prefix}calibration_slope": self.calibration_slope,
            f"{prefix}calibration_intercept": self.calibration_intercept,
            f"{prefix}oe_ratio": self.oe_ratio,
            f"{prefix}n": float(self.n),
            f"{prefix}prevalence": self.prevalence,
            f"{prefix}mean_predicted": self.mean_predicted,
        }

    def summary(self) -> dict[str, float]:
        """The scalar metrics, for JSON and the model card."""
        return {k: _finite(v) for k, v in self.as_dict().items()}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class Suppressed:
    """A group too small to report: fewer than ``MIN_CELL`` patients in a class."""

    reason: str = f"fewer than {MIN_CELL} patients in a class"

    def summary(self) -> dict[str, str]:
        return {"suppressed": self.reason}


@dataclass(frozen=True)
class Evaluation:
    """One model on the held-out rows of the sites that evaluated it.

    ``subgroups`` and ``sites`` hold :class:`Suppressed` where a group is too small; a
    site's entry is its own AUC, computed and suppressed at the site.
    """

    overall: Metrics
    subgroups: dict[str, Metrics | Suppressed]
    sites: dict[str, float | Suppressed]

    def to_dict(self) -> dict:
        return {
            "overall": self.overall.summary(),
            "subgroups": {g: m.summary() for g, m in self.subgroups.items()},
            "sites": {
                s: (v.summary() if isinstance(v, Suppressed) else {"auc": _finite(v)})
                for s, v in self.sites.items()
            },
            "calibration_curve": calibration_points(self.overall),
        }


def calibration_points(m: Metrics) -> list[dict[str, float]]:
    """The calibration curve as (mean predicted, observed, patients) points."""
    pred, true, count = m.calibration
    return [
        {"predicted": float(p / c), "observed": float(t / c), "patients": int(c)}
        for p, t, c in zip(pred, true, count, strict=True)
        if c > 0
    ]


# -- the site's summary vector ---------------------------------------------------------------
def group_width(bins: int = SCORE_BINS) -> int:
    """Length of one group's block in :func:`stats_vector`."""
    return _PER_BIN * bins + _SCALARS


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


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
    x = _logit(p)
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


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
        s = _sigmoid(z)
        return (
            a * n_pos
            + b * sx_pos
            - float((n * _softplus(z) + 0.5 * b * b * dev * s * (1 - s)).sum())
        )

    def newton(a: float, b: float, fit_slope: bool) -> tuple[float, float]:
        for _ in range(100):
            z = a + b * xbar
            s = _sigmoid(z)
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
    centres = _sigmoid(-LOGIT_RANGE + (np.arange(bins) + 0.5) * (2 * LOGIT_RANGE / bins))
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


def auc_from_histograms(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float:
    """Mann-Whitney AUC from per-bin class counts (ties within a bin count one half)."""
    pos, neg = hist_pos.astype(float), hist_neg.astype(float)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def combine(stats: Iterable[EvalStats]) -> Metrics:
    """Pool the sites' statistics into global metrics."""
    stats = list(stats)
    if not stats:
        raise ValueError("no evaluation statistics to combine")
    pos = sum(s.hist_pos for s in stats)
    neg = sum(s.hist_neg for s in stats)
    n = sum(s.n for s in stats)
    cal_pred = sum(s.calib_pred for s in stats)
    cal_true = sum(s.calib_true for s in stats)
    cal_count = sum(s.calib_count for s in stats)
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / max(neg.sum(), 1)])
    return Metrics(
        auc=auc_from_histograms(pos, neg),
        log_loss=sum(s.log_loss_sum for s in stats) / n,
        brier=sum(s.brier_sum for s in stats) / n,
        n=int(n),
        prevalence=float(pos.sum() / n),
        mean_predicted=float(cal_pred.sum() / n),
        roc=(fpr, tpr),
        calibration=(cal_pred, cal_true, cal_count),
    )


def joint_counts(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, bins: int = 100) -> np.ndarray:
    """Rows counted by (label, risk bin of model a, risk bin of model b): shape (2, bins,
    bins), a table whose size does not depend on the row count."""
    a = np.minimum((np.asarray(p_a) * bins).astype(int), bins - 1)
    b = np.minimum((np.asarray(p_b) * bins).astype(int), bins - 1)
    counts = np.zeros((2, bins, bins), dtype=np.int64)
    np.add.at(counts, (np.asarray(y).astype(int), a, b), 1)
    return counts


def paired_bootstrap_auc(
    joint: np.ndarray, *, draws: int = 500, seed: int = 0
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) of two models scored on the same held-out rows, with a paired 95 %
    percentile bootstrap interval.

    `joint` is the pooled :class:`JointStats` array of shape (2, bins, bins): counts of rows
    by (label, bin of model a's risk, bin of model b's risk). Resampling its cells with
    Poisson weights is the row bootstrap restricted to what the sites may release, and it
    keeps each row's two scores paired. Returns (difference, low, high).
    """
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


def pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(metrics: dict[str, Metrics], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in metrics.items():
        ax.plot(*m.roc, label=f"{name} (AUC {m.auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, held-out")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(metrics: dict[str, Metrics], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in metrics.items():
        pred, true, count = m.calibration
        ok = count > 0
        ax.plot(pred[ok] / count[ok], true[ok] / count[ok], "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted risk", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sites(per_site: dict[str, float | Suppressed], path: Path) -> Path:
    """Each site's own AUC; a suppressed site shows as an empty, labelled slot."""
    plt = pyplot()
    names = list(per_site)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.5))
    values = [np.nan if isinstance(per_site[n], Suppressed) else per_site[n] for n in names]
    ax.bar(names, values, color="tab:blue")
    for i, v in enumerate(values):
        if np.isnan(v):
            ax.text(i, 0.52, "suppressed", ha="center", rotation=90, fontsize=8)
    ax.set(ylabel="AUC", title="Held-out AUC at each site", ylim=(0.5, 1.0))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_subgroups(groups: dict[str, Metrics | Suppressed], path: Path) -> Path:
    """AUC and calibration slope per subgroup, side by side; suppressed groups labelled."""
    plt = pyplot()
    names = list(groups)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(names)), 3.8))
    aucs = [np.nan if isinstance(groups[g], Suppressed) else groups[g].auc for g in names]
    slopes = [
        np.nan if isinstance(groups[g], Suppressed) else groups[g].calibration_slope for g in names
    ]
    left.bar(names, aucs, color="tab:blue")
    left.set(ylabel="AUC", title="AUC by subgroup", ylim=(0.5, 1.0))
    right.bar(names, slopes, color="tab:orange")
    right.axhline(1.0, color="k", ls=":", lw=1)
    right.set(ylabel="calibration slope", title="Calibration slope by subgroup")
    for ax, values in ((left, aucs), (right, slopes)):
        ax.tick_params(axis="x", rotation=30)
        for i, v in enumerate(values):
            if np.isnan(v):
                ax.text(i, ax.get_ylim()[0], "suppressed", ha="center", rotation=90, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
