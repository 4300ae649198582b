"""Distributed noise: each site adds a share of a dp-fedavg release's noise and the secure
sum carries the whole of it. Measured on the discrete Gaussian sampler, on four site
actors (in-process, as plain objects) summing their masked shares, and checked against
the sites' policies; one end-to-end job on real Ray and MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.federation import make_config, secure_round_in_process, write_site_policy

from pipeline.config import load_config
from pipeline.errors import BudgetError, ConfigError
from pipeline.job import run_job
from pipeline.privacy.distributed import (
    GRID,
    discrete_gaussian,
    grid_sensitivity,
    noise_shares,
    noisy_clipped_share,
    share_std,
    sum_noise_multiplier,
)
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.protocol.secure_sum import decode, encode
from pipeline.site.actor import SiteActor
from pipeline.site.audit import audit_log_path
from pipeline.strategies.dp_fedavg.plan import plan_dp_fedavg
from pipeline.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent
SIGMA, CLIP = 3.0, 0.5


def test_the_discrete_gaussian_is_integer_with_its_nominal_std() -> None:
    for std in (0.9, 250.0, 1.2e5):
        draws = discrete_gaussian(60_000, std)
        assert draws.dtype == np.int64
        assert float(np.std(draws)) == pytest.approx(std, rel=0.03)
        assert abs(float(np.mean(draws))) < 4 * std / math.sqrt(60_000)
    assert not np.array_equal(discrete_gaussian(50, 100.0), discrete_gaussian(50, 100.0))


def test_a_share_lies_on_the_grid_and_the_secure_sum_carries_it_exactly() -> None:
    rows = np.random.default_rng(1).normal(size=(300, 7))
    share = noisy_clipped_share(rows, CLIP, SIGMA, shares=3)
    assert np.array_equal(share * GRID, np.rint(share * GRID))
    np.testing.assert_array_equal(decode(encode(share)), share)


def test_shares_sum_to_the_noise_of_one_release() -> None:
    rows = np.random.default_rng(2).normal(size=(200, 9))
    shares = 3
    totals = [
        sum(noisy_clipped_share(rows, CLIP, SIGMA, shares) for _ in range(shares))
        for _ in range(400)
    ]
    noise = np.array(totals) - np.mean(totals, axis=0)
    nominal = SIGMA * grid_sensitivity(CLIP, 9) / GRID
    assert float(np.std(noise)) == pytest.approx(nominal, rel=0.05)
    one_share = [noisy_clipped_share(rows, CLIP, SIGMA, shares) for _ in range(400)]
    spread = float(np.std(np.array(one_share) - np.mean(one_share, axis=0)))
    assert spread == pytest.approx(nominal / math.sqrt(shares), rel=0.05)


def test_the_accountant_charges_the_sum_as_one_gaussian_release_and_refuses_narrow_shares() -> None:
    std = share_std(SIGMA, CLIP, 24, 3)
    assert sum_noise_multiplier(std, 3, CLIP, 24) == pytest.approx(SIGMA, rel=1e-12)
    # Shares of a grid step or two: the sum is not quite a Gaussian, and is refused.
    assert sum_noise_multiplier(share_std(1.0, 1e-5, 1, 2), 2, 1e-5, 1) < 1.0 - 1e-10
    with pytest.raises(ValueError, match="too narrow"):
        noisy_clipped_share(np.ones((3, 1)), 1e-5, 1.0, shares=2)


def test_shares_are_sized_for_the_smallest_round_less_the_colluding_sites() -> None:
    assert noise_shares(4, 1) == 3
    assert noise_shares(2, 1) == 2  # secure aggregation needs three sites anyway
    with pytest.raises(ValueError, match="leaves 1 noise shares"):
        noise_shares(3, 2)


def test_distributed_noise_needs_secure_aggregation_and_a_share_left(
    small_federation: Path, tmp_path: Path
) -> None:
    path = make_config(
        small_federation,
        tmp_path,
        privacy={"noise": "distributed"},
        training={"secure_aggregation": False},
    )
    with pytest.raises(ConfigError, match="secure_aggregation"):
        load_config(path)
    path = make_config(small_federation, tmp_path, privacy={"noise": "distributed"}, min_sites=3)
    assert load_config(path).noise_shares() == 2
    path = make_config(
        small_federation,
        tmp_path,
        privacy={"noise": "distributed", "collusion_threshold": 2},
        min_sites=3,
    )
    with pytest.raises(ConfigError, match="collusion_threshold"):
        load_config(path)


def test_the_plan_with_shares_is_charged_alike_and_carries_less_noise_per_round() -> None:
    from pipeline.contract import load_contract

    heart = load_contract(ROOT / "schemas" / "heart_disease.yaml")
    counts = {"cleveland": 199, "hungary": 172, "switzerland": 30, "va": 85}
    args = dict(epsilon=1.0, delta=1e-5, counts=counts, contract=heart, max_rounds=60)
    alone, shared = plan_dp_fedavg(**args), plan_dp_fedavg(**args, noise_shares=3)
    assert shared.epsilon <= 1.0 + 1e-9 and alone.epsilon <= 1.0 + 1e-9
    assert shared.rounds >= alone.rounds and shared.noise_shares == 3
    per_round = shared.noise_to_signal / math.sqrt(shared.rounds + 0.5)
    assert per_round < alone.noise_to_signal / math.sqrt(alone.rounds + 0.5)


# -- four site actors summing their shares ------------------------------------------------
@pytest.fixture(scope="module")
def four_actors(tmp_path_factory: pytest.TempPathFactory) -> list[SiteActor]:
    config, _ = synthesize(tmp_path_factory.mktemp("four"), sites=4, rows=1600, seed=12)
    cfg = load_config(config)
    policies = [{"distributed_noise": True}] * 3 + [{}]  # the last site keeps its full noise
    for s, policy in zip(cfg.sites, policies, strict=True):
        write_site_policy(s.path, epsilon_budget=1000.0, **policy)
    actors = [SiteActor(s.name, str(s.path), str(cfg.contract)) for s in cfg.sites]
    for actor in actors:
        actor.load("j", "dp-fedavg", 0.2, 0)
    return actors


def _secure_round(actors: list[SiteActor], job: str, **request) -> np.ndarray:
    """One secure-sum gradient round over `actors`, as the coordinator runs it."""
    dim = actors[0].boundary.train_rows().linear.shape[1] + 1
    round_ = request.get("round_", 0)

    def ask(actor: SiteActor, secure: dict):
        return _gradient(actor, job, np.zeros(dim), secure=secure, **request)

    return secure_round_in_process(actors, job, round_, ask)[:-1]


def _gradient(actor: SiteActor, job: str, weights: np.ndarray, **request):
    """A DP-FedAvg gradient release, asked of the site as the coordinator asks it (its
    spend reserved in the site's own ledger first)."""
    if actor.boundary.ledger.entries_of(job, actor.site) is None:
        actor.reserve(job, "dp-fedavg", epsilon=request["epsilon"], delta=1e-5)
    return actor.handle("dp-fedavg", "logistic_gradient", job, weights, **request)


REQUEST = dict(
    epsilon=1.0,
    clip=CLIP,
    noise_multiplier=SIGMA,
    rounds=1,
    round_=0,
    noise_shares=3,
    collusion_threshold=1,
)


def test_the_secure_sum_of_shares_carries_the_planned_noise(four_actors: list[SiteActor]) -> None:
    """Three sites add a third of the noise variance, the fourth (whose policy does not
    accept distributed noise) all of it: the sum carries 1 + 1 = 2 releases' variance,
    where four full-noise sites would carry 4."""
    sums = np.array([_secure_round(four_actors, f"s{i}", **REQUEST) for i in range(60)])
    measured = float(np.std(sums - sums.mean(axis=0)))
    dim = sums.shape[1]
    nominal = SIGMA * CLIP * math.sqrt(2.0) * (1 + math.sqrt(dim) / (CLIP * GRID))
    assert measured == pytest.approx(nominal, rel=0.05)


def test_a_share_is_refused_outside_a_large_enough_secure_round(
    four_actors: list[SiteActor],
) -> None:
    sharing = four_actors[0]
    dim = sharing.boundary.train_rows().linear.shape[1] + 1
    with pytest.raises(BudgetError, match="only through secure aggregation"):
        _gradient(sharing, "plain", np.zeros(dim), **REQUEST)
    # A round that lost a site: three sites cannot hold three honest shares and one colluder.
    with pytest.raises(BudgetError, match="at least 4 sites"):
        _secure_round(four_actors[:3], "three", **REQUEST)
    # A site whose policy does not accept shares adds its full noise, and still releases
    # only through the secure sum (its policy's default).
    with pytest.raises(BudgetError, match="releases only through secure aggregation"):
        _gradient(four_actors[3], "full", np.zeros(dim), **REQUEST)


def test_a_job_cannot_ask_a_site_for_more_shares_than_it_declared(
    four_actors: list[SiteActor],
) -> None:
    _secure_round(four_actors, "declared", **{**REQUEST, "rounds": 2, "noise_shares": 2})
    with pytest.raises(BudgetError, match="less noise"):
        _secure_round(four_actors, "declared", **{**REQUEST, "rounds": 2, "round_": 1})


@pytest.mark.slow
def test_a_distributed_noise_job_is_charged_and_audited_per_site(
    ray_session, small_federation: Path, tmp_path: Path
) -> None:
    import yaml

    path = make_config(small_federation, tmp_path, privacy={"noise": "distributed"}, min_sites=3)
    raw = yaml.safe_load(path.read_text())
    for site in raw["sites"][:-1]:  # each hospital edits its own policy file
        write_site_policy(site["path"], epsilon_budget=1000.0, distributed_noise=True)
    cfg = load_config(path)
    result = run_job(cfg, strategy="dp-fedavg", register=False)
    import mlflow

    params = mlflow.MlflowClient(cfg.tracking_uri).get_run(result.run_id).data.params
    assert params["plan_noise_shares"] == "2" and params["plan_collusion_threshold"] == "1"
    entries = PrivacyLedger(cfg.privacy.ledger).entries()
    assert {e["site"] for e in entries} == {s.name for s in cfg.sites}
    mechanisms = {e["site"]: e["mechanism"] for e in entries}
    for site in cfg.sites[:-1]:
        assert "distributed noise: 2 shares, tolerates 1" in mechanisms[site.name]
    assert "full noise at this site" in mechanisms[cfg.sites[-1].name]
    for site, expected in zip(cfg.sites, (2, 2, 1), strict=True):
        audit = [json.loads(line) for line in audit_log_path(site.path).read_text().splitlines()]
        shares = {
            e["noise_shares"]
            for e in audit
            if e.get("job") == result.job_id and "noise_shares" in e
        }
        assert shares == {expected}, site.name
