"""The private recalibration: planned from counts alone and charged with the job, one
release of training rows only, and a fit that recovers a known miscalibration. No Ray: the
site actor class is used in-process, as a plain object."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from support.federation import write_site_policy

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.errors import BudgetError
from pipeline.features import FeatureEncoder
from pipeline.link import sigmoid
from pipeline.privacy.recalibration import (
    MAX_SHARE,
    Cells,
    Recalibration,
    fit,
    plan_noise,
)
from pipeline.site.actor import SiteActor
from pipeline.strategies.dp_fedavg.plan import plan_dp_fedavg
from pipeline.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")
SYNTH = {"a": 415, "b": 900, "c": 1500, "d": 2416}
RECALIBRATE = ("dp-fedavg", "recalibration_counts")


def _plan(counts: dict[str, int], **kwargs):
    args = {"epsilon": 1.0, "delta": 1e-5, "contract": CONTRACT, "max_rounds": 60} | kwargs
    return plan_dp_fedavg(counts=counts, **args)


def test_the_plan_charges_recalibration_exactly_with_the_job() -> None:
    plan = _plan(SYNTH)
    assert plan.recalibration_noise_multiplier is not None
    # The job's releases composed directly with dp-accounting, outside the project's code.
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(plan.noise_multiplier), plan.rounds
        ),
        dp_accounting.GaussianDpEvent(plan.scale_noise_multiplier),
        dp_accounting.GaussianDpEvent(plan.recalibration_noise_multiplier),
    ]
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    assert plan.epsilon == pytest.approx(accountant.get_epsilon(plan.delta), rel=1e-12)
    assert plan.epsilon <= 1.0
    # Its share of the cost (RDP adds 1 / sigma^2 per order) is the one planned.
    cost = [plan.rounds / plan.noise_multiplier**2, 1 / plan.scale_noise_multiplier**2]
    mine = 1 / plan.recalibration_noise_multiplier**2
    assert mine / (sum(cost) + mine) == pytest.approx(plan.recalibration_share, rel=1e-6)
    assert 0 < plan.recalibration_share <= MAX_SHARE


def test_recalibration_is_planned_from_counts_alone_and_skipped_when_too_noisy() -> None:
    assert set(inspect.signature(plan_noise).parameters) == {"sigma_one", "rows", "sites", "cells"}
    renamed = dict(zip("wxyz", SYNTH.values(), strict=True))
    assert _plan(renamed) == _plan(SYNTH)
    large = _plan({f"s{i}": 8000 for i in range(4)})
    assert large.recalibration_share < _plan(SYNTH).recalibration_share  # more rows: cheaper
    small = _plan({"cleveland": 199, "hungary": 172, "switzerland": 30, "va": 85})
    assert small.recalibration_noise_multiplier is None and small.recalibration_share == 0
    assert "too few" in small.recalibration_note and "0.01 a fit needs" in small.recalibration_note
    assert (
        small.releases()
        == _plan({"cleveland": 199, "hungary": 172, "switzerland": 30, "va": 85}).releases()
    )
    assert len(small.releases()) == 2  # rounds and scales: nothing charged for it


def test_the_fit_recovers_a_known_miscalibration_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-1.5, 2.0, 200_000)  # an over-confident model's log-odds
    true = Recalibration(slope=0.6, intercept=-1.0, centre=-1.5)
    y = (rng.random(len(z)) < sigmoid(true.slope * (z - true.centre) + true.intercept)) * 1.0
    cells = Cells(centre=-1.5, half_width=6.0)
    counts = cells.one_hot(z, y).sum(axis=0)
    got = fit(counts, cells, count_noise=0.0)
    assert got.slope == pytest.approx(0.6, abs=0.03)
    assert got.intercept == pytest.approx(-1.0, abs=0.03)
    weights = np.array([2.0, -1.0, 0.5])
    X = rng.normal(size=(50, 2))
    before = X @ weights[:-1] + weights[-1]
    mapped = got.apply(weights)
    after = X @ mapped[:-1] + mapped[-1]
    np.testing.assert_allclose(after, got.slope * (before - got.centre) + got.intercept)
    assert (np.argsort(after) == np.argsort(before)).all()
    identity = Recalibration(1.0, 0.7, 0.7)
    np.testing.assert_allclose(identity.apply(weights), weights)


def test_each_row_is_in_exactly_one_count() -> None:
    cells = Cells(centre=0.0, half_width=3.0, cells=8)
    z = np.array([-100.0, -3.0, -0.1, 0.0, 2.99, 3.0, 55.0])
    one_hot = cells.one_hot(z, np.array([0, 1, 0, 1, 0, 1, 1]))
    np.testing.assert_array_equal(np.linalg.norm(one_hot, axis=1), 1.0)  # sensitivity 1
    assert cells.index(z).tolist() == [0, 0, 3, 4, 7, 7, 7]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """One synthetic hospital's actor, in-process, its training split loaded; and its
    config, to read its held-out rows independently."""
    config, _ = synthesize(tmp_path_factory.mktemp("one"), sites=1, rows=1500, seed=4)
    cfg = load_config(config)
    write_site_policy(cfg.sites[0].path, secure_aggregation=False, epsilon_budget=1e6)
    actor = SiteActor(cfg.sites[0].name, str(cfg.sites[0].path), str(cfg.contract))
    actor.load("j", "dp-fedavg", 0.2, 0)
    return actor, cfg


def _trained(actor: SiteActor, job: str, dim: int) -> None:
    """The job's one gradient round (a recalibration comes after training)."""
    actor.reserve(job, "dp-fedavg", epsilon=1.0, delta=1e-5)
    actor.handle(
        "dp-fedavg",
        "logistic_gradient",
        job,
        np.zeros(dim),
        epsilon=1.0,
        clip=1.0,
        noise_multiplier=5.0,
        rounds=1,
        round_=0,
    )


def test_the_site_counts_its_training_rows_only_once_per_job_after_training(site) -> None:
    actor, cfg = site
    dim = FeatureEncoder(load_contract(cfg.contract)).n_features_out + 1
    weights = np.append(np.linspace(-0.3, 0.3, dim - 1), -1.5)
    cells = Cells(centre=-1.5, half_width=4.0)
    ask = dict(epsilon=1.0, noise_multiplier=1e-9, **cells.as_request())
    actor.reserve("early", "dp-fedavg", epsilon=1.0, delta=1e-5)
    with pytest.raises(BudgetError, match="once, after it trained"):
        actor.handle(*RECALIBRATE, "early", weights, **ask)
    _trained(actor, "r", dim)
    released = actor.handle(*RECALIBRATE, "r", weights, **ask).vector
    # Exactly the training split's counts (noise 1e-9): the held-out rows never enter.
    train, test = actor.boundary.train_rows(), actor.boundary.test_rows()
    expected = cells.one_hot(train.linear @ weights[:-1] + weights[-1], train.y)
    np.testing.assert_allclose(released, expected.sum(axis=0), atol=1e-6)
    both = np.vstack([train.linear, test.linear]) @ weights[:-1] + weights[-1]
    pooled = cells.one_hot(both, np.concatenate([train.y, test.y])).sum(axis=0)
    assert len(test) > 0 and np.abs(released - pooled).max() >= 1
    with pytest.raises(BudgetError, match="once, after it trained"):
        actor.handle(*RECALIBRATE, "r", weights, **ask)  # never a second draw


def test_the_sites_recalibration_noise_is_its_nominal_sigma(site) -> None:
    actor, _ = site
    dim = actor.boundary.train_rows().linear.shape[1] + 1
    weights, sigma = np.zeros(dim), 7.0
    cells = Cells(centre=0.0, half_width=4.0)
    draws = []
    for i in range(120):
        _trained(actor, f"n{i}", dim)
        draws.append(
            actor.handle(
                *RECALIBRATE,
                f"n{i}",
                weights,
                epsilon=1.0,
                noise_multiplier=sigma,
                **cells.as_request(),
            ).vector
        )
    exact = cells.one_hot(
        np.full(len(actor.boundary.train_rows().y), 0.0), actor.boundary.train_rows().y
    )
    noise = np.array(draws) - exact.sum(axis=0)
    assert float(np.std(noise)) == pytest.approx(sigma, rel=0.06)
    assert math.isfinite(float(np.mean(noise))) and abs(float(np.mean(noise))) < 0.5


def test_dp_logistic_charges_its_recalibration_within_the_job() -> None:
    from pipeline.privacy.objective import noise_std
    from pipeline.strategies.dp_logistic.plan import plan_dp_logistic

    plan = plan_dp_logistic(
        epsilon=1.0, delta=1e-5, counts={f"s{i}": 8000 for i in range(4)}, contract=CONTRACT
    )
    assert plan.recalibration_noise_multiplier is not None
    # The recalibration's epsilon at half of delta, by dp-accounting directly.
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(plan.recalibration_noise_multiplier))
    assert plan.recalibration_epsilon == pytest.approx(accountant.get_epsilon(5e-6), rel=1e-9)
    # Basic composition: the parts add up to the job's epsilon and delta.
    assert plan.count_epsilon + plan.objective_epsilon + plan.recalibration_epsilon == (
        pytest.approx(plan.epsilon, rel=1e-12)
    )
    assert plan.objective_delta == pytest.approx(plan.delta / 2)
    assert plan.site_request()["delta"] == plan.objective_delta
    assert plan.noise_multiplier == pytest.approx(
        noise_std(plan.objective_epsilon, plan.objective_delta, plan.regularization)
    )
    assert plan.recalibration_epsilon <= MAX_SHARE * plan.epsilon
