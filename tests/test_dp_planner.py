"""The privacy-utility planner and the private releases it plans: charged exactly, made
from counts and the contract only, and noised as declared. No Ray: the site actor class
is used in-process, as a plain object."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.errors import BudgetError
from pipeline.federation.aggregate import newton_step
from pipeline.federation.site import SiteActor
from pipeline.pooled import site_split, train_logistic
from pipeline.privacy.accounting import composed_gaussian_epsilon
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.objective import objective_perturbation_logistic
from pipeline.privacy.planner import plan_dp_fedavg, plan_dp_logistic
from pipeline.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")
HEART = load_contract(ROOT / "schemas" / "heart_disease.yaml")
HOSPITALS = {"cleveland": 199, "hungary": 172, "switzerland": 30, "va": 85}


def _plan(counts: dict[str, int], contract=CONTRACT, **kwargs):
    args = {"epsilon": 1.0, "delta": 1e-5, "contract": contract, "max_rounds": 60} | kwargs
    return plan_dp_fedavg(counts=counts, **args)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteActor:
    """One synthetic hospital's actor, in-process, with its rows loaded."""
    config, _ = synthesize(tmp_path_factory.mktemp("one"), sites=1, rows=1500, seed=4)
    cfg = load_config(config)
    actor = SiteActor(
        cfg.sites[0].name, str(cfg.sites[0].path), str(cfg.contract), {"max_epsilon_per_job": 1}
    )
    actor.load(0.2, 0)
    return actor


def test_the_ledger_records_what_the_accountant_charges_for_the_plan(tmp_path: Path) -> None:
    plan = _plan(HOSPITALS, HEART)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    sites = list(HOSPITALS)
    ledger.reserve(
        "job",
        {s: (plan.epsilon, plan.delta) for s in sites},
        dict.fromkeys(sites, 10.0),
        "dp-fedavg",
    )
    # The same releases composed directly with dp-accounting, outside the project's code.
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(plan.noise_multiplier), plan.rounds
        ),
        dp_accounting.GaussianDpEvent(plan.scale_noise_multiplier),
    ]
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    charged = accountant.get_epsilon(plan.delta)
    assert plan.sampling_rate == 1.0
    for s in sites:
        assert ledger.spent(s) == (plan.epsilon, plan.delta)
        assert ledger.spent(s)[0] == pytest.approx(charged, rel=1e-12)
    assert 0.998 <= plan.epsilon <= 1.0


def test_a_plan_is_a_function_of_counts_and_the_contract_alone() -> None:
    assert set(inspect.signature(plan_dp_fedavg).parameters) == {
        "epsilon",
        "delta",
        "counts",
        "contract",
        "max_rounds",
        "noise_to_signal",
        "clip",
    }
    assert set(inspect.signature(plan_dp_logistic).parameters) == {"epsilon", "counts", "contract"}
    assert _plan(HOSPITALS, HEART) == _plan(dict(HOSPITALS), HEART)
    renamed = dict(zip(["a", "b", "c", "d"], HOSPITALS.values(), strict=True))
    assert _plan(renamed, HEART) == _plan(HOSPITALS, HEART)


def test_fewer_rows_get_fewer_larger_steps_and_the_cap_holds() -> None:
    small = _plan(HOSPITALS, HEART)
    medium = _plan({"a": 400, "b": 900, "c": 1500, "d": 2400})
    large = _plan({f"s{i}": 20_000 for i in range(8)})
    assert small.rounds == 1  # a few hundred rows afford no more
    assert small.rounds < medium.rounds <= large.rounds == 60
    assert medium.noise_to_signal <= 0.1 < small.noise_to_signal  # one round is the floor
    assert small.noise_multiplier < medium.noise_multiplier
    assert large.momentum > small.momentum
    assert _plan({f"s{i}": 20_000 for i in range(8)}, max_rounds=10).rounds == 10
    assert small.learning_rate * small.clip == pytest.approx(1.0)


def test_a_contract_without_numeric_features_plans_no_scale_release() -> None:
    contract = HEART.model_copy(
        update={"features": [f for f in HEART.features if f.kind != "numeric"]}
    )
    plan = _plan(HOSPITALS, contract)
    assert plan.scale_noise_multiplier is None
    assert plan.releases() == [(plan.noise_multiplier, plan.rounds, 1.0)]
    assert plan.epsilon == composed_gaussian_epsilon(plan.releases(), plan.delta)


def test_one_shot_plan_names_the_sites_too_small_for_their_epsilon() -> None:
    plan = plan_dp_logistic(epsilon=1.0, counts={"big": 50_000, **HOSPITALS}, contract=HEART)
    assert plan.too_small == sorted(HOSPITALS)
    assert plan.noise_to_signal["big"] < 0.1 < plan.noise_to_signal["cleveland"]


def _noise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two releases of the same value differ by two independent noise draws."""
    return (a - b) / math.sqrt(2.0)


def test_gradient_release_noise_is_its_nominal_sigma(site: SiteActor) -> None:
    dim = site._train.linear.shape[1] + 1
    weights, sigma, clip = np.full(dim, 0.01), 3.0, 0.7
    scale = np.linspace(0.2, 0.6, dim - 1)
    kwargs = dict(
        strategy="dp-fedavg", epsilon=1.0, clip=clip, noise_multiplier=sigma, rounds=1, round_=0
    )
    noise = [
        _noise(
            site.logistic_gradient(f"a{i}", weights, column_scale=scale, **kwargs).vector,
            site.logistic_gradient(f"b{i}", weights, column_scale=scale, **kwargs).vector,
        )
        for i in range(150)
    ]
    measured = float(np.std(np.concatenate(noise)))
    assert measured == pytest.approx(sigma * clip, rel=0.05)


def test_scale_release_noise_is_its_nominal_sigma(site: SiteActor) -> None:
    sigma, bound = 9.0, 0.4
    kwargs = dict(strategy="dp-fedavg", epsilon=1.0, noise_multiplier=sigma, bound=bound)
    noise = [
        _noise(
            site.release_deviation(f"sa{i}", **kwargs).vector,
            site.release_deviation(f"sb{i}", **kwargs).vector,
        )
        for i in range(600)
    ]
    measured = float(np.std(np.concatenate(noise)))
    assert measured == pytest.approx(sigma * bound, rel=0.05)


def test_a_job_releases_scales_once_and_never_with_less_noise(site: SiteActor) -> None:
    kwargs = dict(strategy="dp-fedavg", epsilon=1.0, bound=0.4)
    first = site.release_deviation("once", noise_multiplier=9.0, **kwargs).vector
    again = site.release_deviation("once", noise_multiplier=9.0, **kwargs).vector
    np.testing.assert_array_equal(first, again)  # a restart reuses the release
    dim = site._train.linear.shape[1] + 1
    grad = dict(strategy="dp-fedavg", epsilon=1.0, clip=0.5, rounds=2)
    site.logistic_gradient("less", np.zeros(dim), noise_multiplier=5.0, round_=0, **grad)
    with pytest.raises(BudgetError, match="less noise"):
        site.logistic_gradient("less", np.zeros(dim), noise_multiplier=1.0, round_=1, **grad)
    with pytest.raises(BudgetError, match="after training"):
        site.release_deviation("less", noise_multiplier=9.0, **kwargs)


def test_newton_steps_on_pooled_statistics_reach_the_pooled_optimum(tmp_path: Path) -> None:
    config, _ = synthesize(tmp_path / "fed", sites=3, rows=1800, seed=8)
    cfg = load_config(config)
    actors = [SiteActor(s.name, str(s.path), str(cfg.contract), {}) for s in cfg.sites]
    for a in actors:
        a.load(cfg.training.test_fraction, cfg.training.seed)
    dim = actors[0]._train.linear.shape[1] + 1
    weights = np.zeros(dim)
    for _ in range(12):
        replies = [a.newton_statistics("n", weights) for a in actors]
        stats = sum(r.vector for r in replies)
        step, _ = newton_step(weights, stats, float(sum(r.n for r in replies)), cfg.training.l2)
        weights = weights - step
    from pipeline.features import FeatureEncoder

    enc = FeatureEncoder(load_contract(cfg.contract))
    parts = [site_split(cfg, s, load_contract(cfg.contract))[0] for s in cfg.sites]
    X = np.vstack([enc.transform(frame) for frame, _ in parts])
    y = np.concatenate([labels for _, labels in parts])
    pooled = train_logistic(X, y, l2=cfg.training.l2)
    np.testing.assert_allclose(weights, pooled, atol=1e-5)


def test_objective_perturbation_fits_a_one_class_site_and_is_never_reproducible() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-0.2, 0.2, size=(30, 6))
    y = np.ones(30)  # every patient positive, as at one of the real hospitals
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.random.seed(0)
        a = objective_perturbation_logistic(X, y, epsilon=1.0, data_norm=1.0, C=0.5)
        np.random.seed(0)
        b = objective_perturbation_logistic(X, y, epsilon=1.0, data_norm=1.0, C=0.5)
    assert a.shape == (7,) and np.all(np.isfinite(a))
    assert not np.allclose(a, b)
