"""What a federated evaluation reports: metrics of one model on one group of held-out
patients, the marker of a group too small to report, and one model's evaluation overall,
by subgroup and by site."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_CELL = 11  # fewer patients than this in a class: suppressed


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
