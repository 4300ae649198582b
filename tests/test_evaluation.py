"""Metrics from pooled sufficient statistics against the row-level figures, and the
small-cell rule, without Ray: the arithmetic the sites and the coordinator share."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from pipeline.evaluation import (
    MIN_CELL,
    Suppressed,
    group_width,
    pooled_metrics,
    site_auc,
    split_groups,
    stats_vector,
)


def _row_level_calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    x = np.log(p / (1 - p))
    slope = LogisticRegression(penalty=None).fit(x[:, None], y).coef_[0, 0]
    a = 0.0
    for _ in range(100):  # calibration-in-the-large: intercept with the log-odds as offset
        s = 1 / (1 + np.exp(-(a + x)))
        a += (y - s).sum() / (s * (1 - s)).sum()
    return float(slope), float(a)


def _scores(n: int, seed: int, spread: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """A risk model whose true log-odds are `spread` x its own plus `shift`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-2.0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(spread * x + shift)))).astype(int)
    return y, 1 / (1 + np.exp(-x))


@pytest.mark.parametrize(("spread", "shift"), [(1.0, 0.0), (0.6, 0.4), (1.4, -0.3)])
def test_summed_site_vectors_give_the_row_level_metrics(spread: float, shift: float) -> None:
    y, p = _scores(20_000, seed=int(spread * 10), spread=spread, shift=shift)
    parts = np.array_split(np.arange(len(y)), 4)  # four "sites"
    total = sum(stats_vector(y[i], p[i], []) for i in parts)
    m = pooled_metrics(split_groups(total, 0)[0])
    slope, citl = _row_level_calibration(y, p)
    assert m.auc == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert m.brier == pytest.approx(brier_score_loss(y, p), abs=2e-3)
    assert m.log_loss == pytest.approx(log_loss(y, p), abs=1e-9)
    assert m.calibration_slope == pytest.approx(slope, abs=2e-3)
    assert m.calibration_intercept == pytest.approx(citl, abs=2e-3)
    assert m.oe_ratio == pytest.approx(y.sum() / p.sum(), rel=1e-9)
    assert m.n == len(y)


def test_a_group_with_few_patients_in_a_class_is_suppressed() -> None:
    y, p = _scores(3000, seed=1, spread=1.0, shift=0.0)
    few_pos = np.zeros(len(y), bool)
    few_pos[np.flatnonzero(y == 1)[: MIN_CELL - 1]] = True
    few_pos[np.flatnonzero(y == 0)[:500]] = True
    enough = np.zeros(len(y), bool)
    enough[np.flatnonzero(y == 1)[:MIN_CELL]] = True
    enough[np.flatnonzero(y == 0)[:MIN_CELL]] = True
    blocks = split_groups(stats_vector(y, p, [few_pos, enough]), 2)
    assert isinstance(pooled_metrics(blocks[1]), Suppressed)
    assert not isinstance(pooled_metrics(blocks[2]), Suppressed)
    assert len(blocks[0]) == group_width()


def test_calibration_points_never_hold_fewer_than_eleven_of_a_class() -> None:
    y, p = _scores(2000, seed=5, spread=1.0, shift=0.0)
    m = pooled_metrics(split_groups(stats_vector(y, p, []), 0)[0])
    pred, events, count = m.calibration
    assert len(count) >= 3
    assert (events >= MIN_CELL).all() and ((count - events) >= MIN_CELL).all()
    assert count.sum() == len(y) and events.sum() == y.sum()


def test_a_site_auc_is_exact_or_suppressed() -> None:
    y, p = _scores(800, seed=2, spread=1.0, shift=0.0)
    assert site_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    small = np.flatnonzero(y == 1)[: MIN_CELL - 1].tolist() + np.flatnonzero(y == 0).tolist()
    assert site_auc(y[small], p[small]) is None


def test_the_vector_has_the_same_length_whatever_the_row_count() -> None:
    small = stats_vector(*_scores(50, 1, 1.0, 0.0), [np.ones(50, bool)])
    large = stats_vector(*_scores(50_000, 1, 1.0, 0.0), [np.ones(50_000, bool)])
    assert small.shape == large.shape == (2 * group_width(),)
