"""The strategy registry and what reads it, and the pure parts of the strategies' maths,
without Ray: a name the registry does not hold is refused where it is written, a site
answers only the requests its strategy declares, the Newton statistics and per-example
gradients are the log-loss's, and a job's release record holds it to what it declared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import ROOT
from support.federation import write_site_policy

from pipeline import strategies
from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.errors import BudgetError, ConfigError
from pipeline.features import FeatureEncoder
from pipeline.link import sigmoid
from pipeline.models.kinds import from_payload, from_spec
from pipeline.models.logistic import LogisticModel
from pipeline.privacy.releases import Declared, JobReleases
from pipeline.site.actor import SiteActor
from pipeline.site.policy import SitePolicy
from pipeline.strategies.dp_fedavg.gradient import per_example_gradients, standardized
from pipeline.strategies.logistic.newton import newton_step, site_statistics
from pipeline.synth import synthesize

CONTRACT = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")


# -- the registry --------------------------------------------------------------------------
def test_the_registry_names_every_strategy_once_and_refuses_others() -> None:
    names = strategies.names()
    assert len(set(names)) == len(names) == 4
    assert strategies.DEFAULT in names and set(strategies.demo_names()) <= set(names)
    assert strategies.help_text() == " | ".join(names)
    with pytest.raises(ConfigError, match="unknown strategy 'fedprox'") as err:
        strategies.get("fedprox")
    assert all(name in str(err.value) for name in names)


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("training: {model: fedprox}\n", "training.model"),
        ("retrain: {strategies: [logistic, fedprox]}\n", "retrain.strategies.1"),
        ("", "sites.0.policy.strategies.0"),
    ],
)
def test_a_config_naming_an_unknown_strategy_is_refused_with_file_and_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    policy = "{strategies: [fedprox]}" if field.startswith("sites") else "{}"
    path = tmp_path / "fed.yaml"
    path.write_text(f"sites:\n  - {{name: a, path: a, policy: {policy}}}\n" + yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "fed.yaml" in message and field in message and "unknown strategy 'fedprox'" in message


def test_every_registered_strategy_is_accepted_by_the_config(tmp_path: Path) -> None:
    for name in strategies.names():
        path = tmp_path / "fed.yaml"
        path.write_text(f"sites:\n  - {{name: a, path: a}}\ntraining: {{model: {name}}}\n")
        assert load_config(path).training.model == name
    assert load_config(path).sites[0].policy is None  # the site's own file decides
    assert SitePolicy().strategies == list(strategies.names())


# -- a site answers only what its strategies declare ---------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteActor:
    config, _ = synthesize(tmp_path_factory.mktemp("one"), sites=1, rows=1200, seed=9)
    cfg = load_config(config)
    # One site alone can take no part in a secure sum: a site of a trusted cluster.
    write_site_policy(cfg.sites[0].path, secure_aggregation=False)
    actor = SiteActor(cfg.sites[0].name, str(cfg.sites[0].path), str(cfg.contract))
    actor.load("j", "logistic", 0.2, 0)
    return actor


def test_a_site_answers_only_the_requests_a_strategy_declares(site: SiteActor) -> None:
    with pytest.raises(BudgetError, match="strategy 'logistic' has no 'fit_dp_logistic'"):
        site.handle("logistic", "fit_dp_logistic", "job")
    with pytest.raises(BudgetError, match="has no '_accepted_shares'"):
        site.handle("dp-fedavg", "_accepted_shares", "job", 3, 1, None)
    with pytest.raises(BudgetError, match="refuses strategy 'fedprox'"):
        site.handle("fedprox", "fit", "job")  # no policy lists a name the registry lacks


def test_the_newton_request_is_the_sum_of_the_sites_rows(site: SiteActor) -> None:
    rows = site.boundary.train_rows()
    w = np.linspace(-0.2, 0.2, rows.linear.shape[1] + 1)
    reply = site.handle("logistic", "newton_statistics", "newton", w)
    np.testing.assert_array_equal(reply.vector, site_statistics(rows.linear, rows.y, w))
    assert reply.n == len(rows)


# -- the pure maths ------------------------------------------------------------------------
def _log_loss(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    z = X @ w[:-1] + w[-1]
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def _rows(n: int = 300, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < sigmoid(X @ rng.normal(size=d))).astype(float)
    return X, y


def test_site_statistics_are_the_gradient_and_hessian_of_the_log_loss() -> None:
    X, y = _rows()
    w = np.array([0.3, -0.2, 0.1, 0.0, -0.5])
    stats = site_statistics(X, y, w)
    dim, eps = len(w), 1e-6
    numeric = np.array(
        [
            (_log_loss(X, y, w + eps * e) - _log_loss(X, y, w - eps * e)) / (2 * eps)
            for e in np.eye(dim)
        ]
    )
    np.testing.assert_allclose(stats[:dim], numeric, rtol=1e-6, atol=1e-6)
    upper = np.zeros((dim, dim))
    upper[np.triu_indices(dim)] = stats[dim:]
    Xb = np.hstack([X, np.ones((len(X), 1))])
    p = sigmoid(Xb @ w)
    np.testing.assert_allclose(upper, np.triu((Xb * (p * (1 - p))[:, None]).T @ Xb), rtol=1e-12)
    # Two sites' statistics add up to the pooled rows'.
    halves = site_statistics(X[:100], y[:100], w) + site_statistics(X[100:], y[100:], w)
    np.testing.assert_allclose(halves, stats, rtol=1e-12)


def test_newton_steps_on_the_pooled_statistics_stop_at_the_optimum() -> None:
    X, y = _rows()
    w = np.zeros(X.shape[1] + 1)
    for _ in range(20):
        step, decrement = newton_step(w, site_statistics(X, y, w), float(len(y)), l2=0.0)
        w = w - step
    assert decrement < 1e-20
    gradient = site_statistics(X, y, w)[: len(w)]
    assert np.abs(gradient).max() < 1e-8


def test_per_example_gradients_sum_to_the_gradient_in_standardized_coordinates() -> None:
    X, y = _rows(seed=1)
    centre, scale = X.mean(axis=0), X.std(axis=0) * 2
    Z = standardized(X, centre, scale)
    np.testing.assert_allclose(Z, (X - centre) / scale)
    w = np.array([0.2, 0.1, -0.3, 0.4, 0.05])
    per_example = per_example_gradients(Z, y, w)
    assert per_example.shape == (len(y), len(w))
    np.testing.assert_allclose(
        per_example.sum(axis=0), site_statistics(Z, y, w)[: len(w)], rtol=1e-12
    )
    assert standardized(X) is X


# -- a job's release record ----------------------------------------------------------------
def test_a_job_is_held_to_the_first_release_it_declared() -> None:
    job = JobReleases("north", "job", "dp-fedavg", 1.0)
    first = job.hold_to("gradient", Declared(noise_multiplier=3.0, bound=0.5, count=4))
    assert job.hold_to("gradient", Declared(3.0, 0.5, 4)) == first
    assert job.hold_to("gradient", Declared(4.0, 0.25, 2)) == first  # more noise, smaller
    for looser, why in (
        (Declared(2.9, 0.5, 4), "less noise"),
        (Declared(3.0, 0.6, 4), "larger bound"),
        (Declared(3.0, None, 4), "larger bound"),
        (Declared(3.0, 0.5, 4, noise_shares=2), "less noise"),
        (Declared(3.0, 0.5, 5), "more gradient releases"),
    ):
        with pytest.raises(BudgetError, match=why):
            job.hold_to("gradient", looser)
    assert job.declared == {"gradient": first}


# -- the models' kinds ---------------------------------------------------------------------
def test_a_payload_rebuilds_the_model_a_site_scores() -> None:
    w = np.linspace(-1, 1, FeatureEncoder(CONTRACT).n_features_out + 1)
    model = LogisticModel(CONTRACT, w)
    rebuilt = from_payload(CONTRACT, model.site_payload())
    assert isinstance(rebuilt, LogisticModel)
    np.testing.assert_array_equal(rebuilt.weights, model.weights)


def test_a_version_registered_before_the_kinds_were_renamed_still_loads() -> None:
    """Its ``model.json`` named the strategy family; what it holds tells the class."""
    w = np.linspace(-1, 1, FeatureEncoder(CONTRACT).n_features_out + 1)
    legacy = {"kind": "linear-regression-of-old", "weights": w.tolist()}
    assert isinstance(from_spec(CONTRACT, legacy, {}), LogisticModel)
    with pytest.raises(ValueError, match="unknown model kind"):
        from_spec(CONTRACT, {"kind": "forest"}, {})


def test_earlier_versions_find_the_risk_model_where_their_pickle_names_it() -> None:
    from pipeline.models.risk_model import RiskModel
    from pipeline.serving.model import RiskModel as Pickled

    assert Pickled is RiskModel
