"""Federated evaluation: metrics from the sites' sufficient statistics, never per-row
predictions. Sites return per-class histograms of the predicted risk (1,000 bins) and loss
sums; AUC from the pooled histograms differs from the row-level AUC only by ties inside a
bin (at most half a bin's pairs), which is below 1e-3 here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.federation.messages import EvalStats


@dataclass(frozen=True)
class Metrics:
    auc: float
    log_loss: float
    brier: float
    n: int
    prevalence: float
    mean_predicted: float
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False)
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}auc": self.auc,
            f"{prefix}log_loss": self.log_loss,
            f"{prefix}brier": self.brier,
            f"{prefix}n": float(self.n),
            f"{prefix}prevalence": self.prevalence,
            f"{prefix}mean_predicted": self.mean_predicted,
        }


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


def plot_sites(per_site: dict[str, Metrics], path: Path) -> Path:
    plt = pyplot()
    names = list(per_site)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.5))
    ax.bar(names, [per_site[n].auc for n in names], color="tab:blue")
    ax.set(ylabel="AUC", title="Global model, held-out AUC per site", ylim=(0.5, 1.0))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
