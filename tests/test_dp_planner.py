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
from support.federation import write_site_policy

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.errors import BudgetError
from pipeline.features import EncodedRows, FeatureEncoder
from pipeline.federation.optimizers import DampedNewton
from pipeline.pooled import site_split, train_logistic
from pipeline.privacy.accounting import composed_gaussian_epsilon
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.objective import minimise, perturbation, perturbed_logistic
from pipeline.site.actor import SiteActor
from pipeline.strategies.dp_fedavg.plan import plan_dp_fedavg
from pipeline.strategies.dp_logistic.plan import ONE_SHOT_NOISE_LIMIT, plan_dp_logistic
from pipeline.strategies.logistic.newton import newton_step
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
    # Alone, it answers in the clear (a site of a trusted cluster), with a budget for the
    # thousands of releases the noise is measured from.
    write_site_policy(cfg.sites[0].path, secure_aggregation=False, epsilon_budget=1e6)
    actor = SiteActor(cfg.sites[0].name, str(cfg.sites[0].path), str(cfg.contract))
    actor.load("j", "dp-fedavg", 0.2, 0)
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
        "noise_shares",
        "collusion_threshold",
    }
    assert set(inspect.signature(plan_dp_logistic).parameters) == {
        "epsilon",
        "delta",
        "counts",
        "contract",
    }
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


def _one_shot(counts: dict[str, int], contract=HEART, epsilon: float = 1.0):
    return plan_dp_logistic(epsilon=epsilon, delta=1e-5, counts=counts, contract=contract)


def test_one_shot_plan_names_the_sites_too_small_for_their_epsilon() -> None:
    plan = _one_shot({"big": 50_000, **HOSPITALS})
    limit = ONE_SHOT_NOISE_LIMIT
    assert plan.noise_to_signal["big"] < plan.noise_to_signal["cleveland"] < limit
    assert plan.too_small == sorted(s for s, r in plan.noise_to_signal.items() if r > limit)
    assert "switzerland" in plan.too_small and "big" not in plan.too_small
    assert _one_shot({"big": 50_000, **HOSPITALS}, epsilon=0.1).too_small == sorted(HOSPITALS)


def test_one_shot_noise_meets_delta_by_an_independent_accountant() -> None:
    """The objective perturbation's delta at its epsilon is twice the Gaussian
    mechanism's delta after the regulariser's share (Redberg et al. 2023): computed here
    with dp-accounting's privacy-loss distributions, not with the code under test."""
    plan = _one_shot(HOSPITALS)
    assert plan.epsilon == 1.0 and plan.delta == 1e-5
    jacobian = -math.log(1.0 - 0.25 / plan.regularization)
    remaining = plan.objective_epsilon - jacobian

    def delta_at(sigma: float) -> float:
        accountant = dp_accounting.pld.PLDAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(sigma))
        return 2.0 * accountant.get_delta(remaining)

    assert delta_at(plan.noise_multiplier) == pytest.approx(plan.delta, rel=0.02)
    assert delta_at(plan.noise_multiplier * 0.97) > plan.delta  # the smallest sigma that meets it
    # The regulariser matches the expected noise norm, as the plan says.
    ratio = plan.regularization / plan.noise_multiplier
    assert ratio**2 == pytest.approx(FeatureEncoder(HEART).n_features_out + 1, rel=1e-6)


def test_one_shot_noise_is_its_nominal_sigma() -> None:
    plan = _one_shot(HOSPITALS)
    args = (plan.objective_epsilon, plan.delta, plan.regularization)
    draws = np.concatenate([perturbation(40, *args) for _ in range(100)])
    assert float(np.std(draws)) == pytest.approx(plan.noise_multiplier, rel=0.05)
    assert abs(float(np.mean(draws))) < 0.1 * plan.noise_multiplier


def test_the_perturbed_objective_is_minimised_exactly() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 8))
    X /= np.maximum(1.0, np.linalg.norm(X, axis=1))[:, None]
    y = (rng.random(200) < 0.2).astype(float)
    linear, lam, offset = rng.normal(0, 4, 8), 20.0, -1.3
    w = minimise(X, y, regularization=lam, linear=linear, offset=offset)
    p = 1.0 / (1.0 + np.exp(-(X @ w + offset)))
    assert np.linalg.norm(X.T @ (p - y) + lam * w + linear) < 1e-9


def test_objective_perturbation_refuses_rows_outside_the_unit_ball() -> None:
    with pytest.raises(ValueError, match="norm at most 1"):
        perturbed_logistic(
            np.full((5, 2), 0.9), np.ones(5), epsilon=1, delta=1e-5, regularization=9
        )


def _ask(site: SiteActor, strategy: str, request: str, job: str, *args, **kwargs):
    """A request of `strategy`'s site handler, asked as the coordinator asks it: a
    private job's spend reserved at the site first."""
    epsilon = kwargs.get("epsilon", 0.0)
    if epsilon > 0 and site.boundary.ledger.entries_of(job, site.site) is None:
        site.reserve(job, strategy, epsilon=epsilon, delta=1e-5)
    return site.handle(strategy, request, job, *args, **kwargs)


def _noise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two releases of the same value differ by two independent noise draws."""
    return (a - b) / math.sqrt(2.0)


def test_gradient_release_noise_is_its_nominal_sigma(site: SiteActor) -> None:
    dim = site.boundary.train_rows().linear.shape[1] + 1
    weights, sigma, clip = np.full(dim, 0.01), 3.0, 0.7
    scale = np.linspace(0.2, 0.6, dim - 1)
    kwargs = dict(epsilon=1.0, clip=clip, noise_multiplier=sigma, rounds=1, round_=0)
    noise = [
        _noise(
            _ask(
                site,
                "dp-fedavg",
                "logistic_gradient",
                f"a{i}",
                weights,
                column_scale=scale,
                **kwargs,
            ).vector,
            _ask(
                site,
                "dp-fedavg",
                "logistic_gradient",
                f"b{i}",
                weights,
                column_scale=scale,
                **kwargs,
            ).vector,
        )
        for i in range(150)
    ]
    measured = float(np.std(np.concatenate(noise)))
    assert measured == pytest.approx(sigma * clip, rel=0.05)


def test_scale_release_noise_is_its_nominal_sigma(site: SiteActor) -> None:
    sigma, bound = 9.0, 0.4
    kwargs = dict(epsilon=1.0, noise_multiplier=sigma, bound=bound)
    noise = [
        _noise(
            _ask(site, "dp-fedavg", "release_deviation", f"sa{i}", **kwargs).vector,
            _ask(site, "dp-fedavg", "release_deviation", f"sb{i}", **kwargs).vector,
        )
        for i in range(600)
    ]
    measured = float(np.std(np.concatenate(noise)))
    assert measured == pytest.approx(sigma * bound, rel=0.05)


def test_a_job_gets_no_more_gradient_rounds_than_it_declared(site: SiteActor) -> None:
    dim = site.boundary.train_rows().linear.shape[1] + 1
    grad = dict(epsilon=1.0, clip=0.5, noise_multiplier=5.0, rounds=2)
    gradient = ("dp-fedavg", "logistic_gradient", "two-rounds")
    for round_ in (0, 1):
        _ask(site, *gradient, np.full(dim, 0.01 * round_), round_=round_, **grad)
    with pytest.raises(BudgetError, match="more rounds than it declared"):
        _ask(site, *gradient, np.full(dim, 0.5), round_=2, **grad)


def test_a_job_releases_scales_once_and_never_with_less_noise(site: SiteActor) -> None:
    kwargs = dict(epsilon=1.0, bound=0.4)
    scales = ("dp-fedavg", "release_deviation")
    _ask(site, *scales, "once", noise_multiplier=9.0, **kwargs)
    with pytest.raises(BudgetError, match="has its feature scales already"):
        _ask(site, *scales, "once", noise_multiplier=9.0, **kwargs)  # never a second draw
    dim = site.boundary.train_rows().linear.shape[1] + 1
    grad = dict(epsilon=1.0, clip=0.5, rounds=2)
    gradient = ("dp-fedavg", "logistic_gradient", "less", np.zeros(dim))
    _ask(site, *gradient, noise_multiplier=5.0, round_=0, **grad)
    with pytest.raises(BudgetError, match="less noise"):
        _ask(site, *gradient, noise_multiplier=1.0, round_=1, **grad)
    with pytest.raises(BudgetError, match="after training"):
        _ask(site, *scales, "less", noise_multiplier=9.0, **kwargs)


def test_newton_steps_on_pooled_statistics_reach_the_pooled_optimum(tmp_path: Path) -> None:
    config, _ = synthesize(tmp_path / "fed", sites=3, rows=1800, seed=8)
    cfg = load_config(config)
    for s in cfg.sites:  # the sums are taken here in the clear: sites of a trusted cluster
        write_site_policy(s.path, secure_aggregation=False)
    actors = [SiteActor(s.name, str(s.path), str(cfg.contract)) for s in cfg.sites]
    for a in actors:
        a.load("n", "logistic", cfg.training.test_fraction, cfg.training.seed)
    dim = actors[0].boundary.train_rows().linear.shape[1] + 1
    weights = np.zeros(dim)
    for _ in range(12):
        replies = [_ask(a, "logistic", "newton_statistics", "n", weights) for a in actors]
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


def test_a_one_class_site_fits_once_and_is_never_reproducible(site: SiteActor) -> None:
    """A site whose training rows are all positive (as at one of the heart hospitals)
    still releases a model; its noise comes from the OS, so seeding NumPy changes
    nothing; and it releases once per job."""
    train, test = site.boundary.rows
    plan = plan_dp_logistic(
        epsilon=1.0, delta=1e-5, counts={site.site: len(train)}, contract=site.contract
    )
    fit = plan.site_request()
    one_shot = ("dp-logistic", "fit_dp_logistic")
    site.boundary.rows = EncodedRows(train.frame, np.ones_like(train.y), site.contract), test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.random.seed(0)
            a = _ask(site, *one_shot, "one-class-a", **fit).vector
            np.random.seed(0)
            b = _ask(site, *one_shot, "one-class-b", **fit).vector
        with pytest.raises(BudgetError, match="already released"):
            _ask(site, *one_shot, "one-class-a", **fit)
    finally:
        site.boundary.rows = train, test
    assert a.shape == (FeatureEncoder(site.contract).n_features_out + 1,)
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)
    assert a[-1] > 0  # the intercept follows the (noisy) count: nearly every row positive


def test_a_single_round_takes_the_damped_newton_step() -> None:
    """From all predictions at the prevalence, in standardized coordinates with
    independent features, the Hessian is p(1 - p) I: the damped step goes in the
    gradient's direction, shortened by 1 / (1 + decrement), and lowers the loss."""
    rng = np.random.default_rng(5)
    n, p = 4000, 0.3
    Z = rng.normal(size=(n, 4))
    y = (rng.random(n) < 1 / (1 + np.exp(-(np.log(p / (1 - p)) + Z @ [0.8, -0.5, 0.3, 0])))) * 1.0
    Zb = np.hstack([Z, np.ones((n, 1))])
    w0 = np.append(np.zeros(4), np.log(y.mean() / (1 - y.mean())))

    def loss(w):
        z = Zb @ w
        return float(np.mean(np.logaddexp(0, z) - y * z))

    gradient = Zb.T @ (1 / (1 + np.exp(-(Zb @ w0))) - y) / n
    h = y.mean() * (1 - y.mean())
    stepped = DampedNewton(curvature=h, gradient_scale=1.0).step(w0, gradient)
    decrement = np.linalg.norm(gradient) / np.sqrt(h)
    np.testing.assert_allclose(w0 - stepped, gradient / (h * (1 + decrement)), atol=1e-12)
    assert loss(stepped) < loss(w0 - gradient) < loss(w0)  # further than a unit step
    clipped = DampedNewton(curvature=h, gradient_scale=0.25).step(w0, 0.25 * gradient)
    np.testing.assert_allclose(clipped, stepped, atol=1e-12)
    one = _plan(HOSPITALS, HEART)
    assert one.rounds == 1 and one.clip_fraction == pytest.approx(0.5)
