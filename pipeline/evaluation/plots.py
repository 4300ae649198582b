"""The plots a job logs on its run: ROC and calibration curves, each site's AUC, each
subgroup's AUC and calibration slope, and the trees' feature importance. Drawn on the
file-only Agg backend: jobs run without a display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import Metrics, Suppressed


def pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write a figure once laid out, and free it (pyplot keeps every open figure)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(metrics: dict[str, Metrics], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in metrics.items():
        ax.plot(*m.roc, label=f"{name} (AUC {m.auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, held-out")
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


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
    return _save(plt, fig, path)


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
    return _save(plt, fig, path)


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
    return _save(plt, fig, path)


def plot_importance(importance: dict[str, float], path: Path) -> Path:
    """Horizontal bars of global feature importance (average gain per split)."""
    plt = pyplot()
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set(xlabel="average gain per split", title="Federated XGBoost: feature importance")
    return _save(plt, fig, path)
