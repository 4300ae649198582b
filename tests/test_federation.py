"""The federation runtime on real Ray with real MLflow: jobs, dropouts, quorum, budget,
site policy, reply sizes, and the registered model reloaded in a fresh process."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from support.federation import (
    make_config,
    served_probabilities,
    unseen_hospital_rows,
    write_site_policy,
)

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.errors import BudgetError, QuorumError
from pipeline.features import FeatureEncoder
from pipeline.federation.rounds import open_secure_session, secure_sum_round
from pipeline.federation.runtime import Replies, SiteRuntime
from pipeline.job import run_job
from pipeline.models.logistic import LogisticModel
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.site.policy import SitePolicy
from pipeline.stages.sites import runtime_for
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow


def _kill_site_at_round(ray, site: str, at: int) -> tuple[list[str], callable]:
    """An `on_round` callback that kills `site`'s actor once round `at` has ended."""
    said: list[str] = []

    def on_round(done: int, total: int) -> None:
        said.append(f"round {done}/{total}")
        if done == at and not any("killed" in s for s in said):
            for actor in ray.util.list_named_actors(all_namespaces=True):
                name = actor["name"] if isinstance(actor, dict) else actor
                if name.endswith(f":{site}"):
                    ray.kill(ray.get_actor(name, namespace=actor.get("namespace")))
                    said.append(f"killed {name}")

    return said, on_round


def test_logistic_job_registers_a_model_that_reloads_identically(
    ray_session, four_sites: Path, tmp_path: Path
) -> None:
    cfg = load_config(make_config(four_sites, tmp_path))
    result = run_job(cfg, strategy="logistic")
    assert result.model_version == "1"
    assert result.metrics.auc > 0.72
    assert set(result.per_site) == {s.name for s in cfg.sites}

    # Raw rows of a hospital the model never saw, in clinical units with nulls.
    features, rows = unseen_hospital_rows(tmp_path, result.model.contract.feature_names)
    got = served_probabilities(cfg.tracking_uri, rows)
    expected = result.model.predict_proba(features)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_killed_site_is_dropped_and_the_job_finishes(ray_session, four_sites, tmp_path) -> None:
    # Noise allowed up to the signal, so the planner takes all 10 rounds and the kill lands.
    cfg = load_config(
        make_config(
            four_sites,
            tmp_path,
            min_sites=2,
            training={"rounds": 10},
            privacy={"noise_to_signal": 100.0},
        )
    )
    victim = cfg.sites[1].name
    said, on_round = _kill_site_at_round(ray_session, victim, 5)
    result = run_job(cfg, strategy="dp-fedavg", on_round=on_round)
    assert any(s.startswith("killed") for s in said)
    assert victim in result.dropped
    assert victim not in result.per_site
    assert result.model_version is not None
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert victim in run.data.tags["dropped_sites"]
    # A private job's run holds row counts of the sites, never a count of their labels.
    artifacts = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=run.info.artifact_uri, dst_path=str(tmp_path / "artifacts")
        )
    )
    sites = json.loads((artifacts / "sites.json").read_text())
    assert sites and all("positive" not in " ".join(v) for v in sites.values()), sites
    assert not [p.name for p in artifacts.rglob("*.json") if "positives_train" in p.read_text()]


def test_unmet_quorum_fails_cleanly_and_registers_nothing(ray_session, four_sites, tmp_path):
    cfg = load_config(make_config(four_sites, tmp_path, min_sites=4))
    said, on_round = _kill_site_at_round(ray_session, cfg.sites[0].name, 2)  # Newton: few rounds
    with pytest.raises(QuorumError, match="quorum is 4"):
        run_job(cfg, strategy="logistic", on_round=on_round)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    runs = client.search_runs(client.get_experiment_by_name("tests").experiment_id)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "quorum" in runs[0].data.tags["failure_reason"]
    assert client.search_model_versions("name='diabetes-risk'") == []


def test_ledger_refuses_an_over_budget_job_before_training(ray_session, four_sites, tmp_path):
    cfg = load_config(
        make_config(four_sites, tmp_path, privacy={"epsilon_budget": 1.5}, training={"rounds": 3})
    )
    run_job(cfg, strategy="dp-fedavg")
    ledger = PrivacyLedger(cfg.privacy.ledger)
    before = {s.name: ledger.spent(s.name) for s in cfg.sites}
    # What the accountant charges for the planned releases: at most 1, within 0.1 %.
    assert all(eps == pytest.approx(1.0, rel=1e-3) and eps <= 1.0 for eps, _ in before.values())
    with pytest.raises(BudgetError, match="budget"):
        run_job(cfg, strategy="dp-fedavg")
    assert {s.name: ledger.spent(s.name) for s in cfg.sites} == before
    client = mlflow.MlflowClient(cfg.tracking_uri)
    assert len(client.search_model_versions("name='diabetes-risk'")) == 1


def test_site_refuses_a_request_outside_its_policy(ray_session, four_sites_copy, tmp_path) -> None:
    cfg = load_config(make_config(four_sites_copy, tmp_path))
    site = cfg.sites[0]
    write_site_policy(site.path, strategies=["dp-fedavg"], max_epsilon_per_job=0.5)
    with runtime_for([site], cfg.contract, "policy-test") as runtime:
        runtime.call("load", "job-a", "dp-fedavg", 0.2, 0)
        dim = FeatureEncoder(load_contract(cfg.contract)).n_features_out
        fit = dict(
            epsilon=0.5,
            delta=1e-5,
            regularization=30.0,
            count_epsilon=0.05,
            clip_fraction=0.5,
            intercept=0.3,
        )
        strat = runtime.call(
            "handle", "dp-logistic", "fit_dp_logistic", "job-a", drop_failed=False, **fit
        )
        eps = runtime.call(
            "handle",
            "dp-fedavg",
            "logistic_gradient",
            "job-b",
            np.zeros(dim + 1),
            epsilon=1.0,
            drop_failed=False,
            clip=1.0,
            noise_multiplier=5.0,
            rounds=3,
            round_=0,
        )
    assert "refuses strategy 'dp-logistic'" in strat.failed[site.name]
    assert "at most 0.5" in eps.failed[site.name]
    audit = [
        json.loads(line)
        for line in (site.path.parent / f"{site.path.name}.audit.jsonl").read_text().splitlines()
    ]
    assert sum(e["request"] == "refused" for e in audit) >= 2


def test_reply_size_does_not_grow_with_the_row_count(ray_session, tmp_path) -> None:
    small, _ = synthesize(tmp_path / "small", sites=1, rows=2_000, seed=5)
    large, _ = synthesize(tmp_path / "large", sites=1, rows=20_000, seed=5)
    third, _ = synthesize(tmp_path / "third", sites=1, rows=2_000, seed=6)
    sites = [load_config(small).sites[0], load_config(large).sites[0], load_config(third).sites[0]]
    sites[1].name, sites[2].name = "large", "third"  # a secure sum takes three
    for site in sites:  # sites of one trusted cluster: updates may go in the clear
        write_site_policy(site.path, secure_aggregation=False)
    contract = load_contract(load_config(small).contract)
    sizes: dict[str, list[int]] = {}
    with runtime_for(sites, contract.path, "size-test") as runtime:
        w = np.zeros(FeatureEncoder(contract).n_features_out + 1)
        replies = [
            runtime.call("validate", "j", min_rows=100),
            runtime.call("load", "j", "dp-fedavg", 0.2, 0),
            runtime.call("reserve", "j", "dp-fedavg", epsilon=1.0, delta=1e-5),
            runtime.call(
                "handle",
                "dp-fedavg",
                "logistic_gradient",
                "j",
                w,
                epsilon=1.0,
                clip=1.0,
                noise_multiplier=3.0,
                rounds=1,
                round_=0,
            ),
        ]
        payload = {"m": LogisticModel(contract, w).site_payload()}
        runtime.call("fix_model", "j", payload["m"])  # a site scores only its job's model

        def evaluate(secure: dict | None) -> Replies:
            replies.append(runtime.call("evaluate_models", "j:eval", payload, secure=secure))
            return replies[-1]

        secure_sum_round(runtime, open_secure_session(runtime, "j:eval", 3), 0, 3, evaluate)
    for r in replies:
        assert not r.failed, r.failed
        for site, reply in r.ok.items():
            sizes.setdefault(site, []).append(len(pickle.dumps(reply)))
    small_sizes, large_sizes = sizes[sites[0].name], sizes["large"]
    for a, b in zip(small_sizes, large_sizes, strict=True):
        assert abs(a - b) <= 64, (small_sizes, large_sizes)


def test_a_job_trains_on_exactly_the_rows_that_passed_validation(ray_session, tmp_path):
    """Rows kept at validation are the ones loaded: a partition landing between the two
    calls is not read; a later load without kept rows reads the extract again."""
    cfg = load_config(synthesize(tmp_path / "one", sites=1, rows=2_000, seed=7)[0])
    site = cfg.sites[0]
    with runtime_for([site], cfg.contract, "prepare-test") as runtime:
        checked = runtime.call(
            "validate",
            "prepare-test",
            "logistic",
            min_rows=100,
            keep=True,
        )
        summary = checked.ok[site.name].summary
        assert summary["passed"], summary
        first = sorted(Path(site.path).rglob("*.parquet"))[0]
        late = Path(site.path) / "followup_month=2026-10" / first.name
        late.parent.mkdir()
        shutil.copy(first, late)
        prepared = runtime.call("load", "prepare-test", "logistic", 0.2, 0)
        reread = runtime.call("load", "prepare-test", "logistic", 0.2, 0)
    assert prepared.ok[site.name].rows == summary["rows"]
    assert reread.ok[site.name].rows > summary["rows"]


def test_same_seed_gives_the_same_model_with_privacy_off(ray_session, four_sites, tmp_path):
    cfg = load_config(make_config(four_sites, tmp_path, training={"rounds": 4}))
    a = run_job(cfg, strategy="logistic", register=False)
    b = run_job(cfg, strategy="logistic", register=False)
    np.testing.assert_array_equal(a.model.weights, b.model.weights)


def test_a_later_job_reuses_healthy_site_processes_with_nothing_of_the_last_job(
    ray_session, four_sites, tmp_path
) -> None:
    """A site actor of a finished job serves the next job of the same federation in this
    process, holding none of the last job's rows but all of its releases; a dropped site
    and a site whose config changed get a fresh one."""
    cfg = load_config(make_config(four_sites, tmp_path))
    names = [s.name for s in cfg.sites]

    def pids(runtime: SiteRuntime) -> dict[str, int]:
        return runtime.call("pid", raw=True).ok

    with runtime_for(cfg.sites, cfg.contract, "reuse-1") as runtime:
        first = pids(runtime)
        runtime.call("load", "one-shot", "dp-logistic", 0.2, 0)
        fit = dict(
            epsilon=1.0,
            delta=1e-5,
            regularization=30.0,
            count_epsilon=0.1,
            clip_fraction=0.5,
            intercept=0.3,
        )
        runtime.call("reserve", "one-shot", "dp-logistic", epsilon=1.0, delta=1e-5)
        assert runtime.call("handle", "dp-logistic", "fit_dp_logistic", "one-shot", **fit).ok
        runtime.drop(names[0], "dropped by the test")
    changed = cfg.model_copy(deep=True)
    changed.sites[1].policy = SitePolicy(max_epsilon_per_job=0.5)
    with runtime_for(changed.sites, cfg.contract, "reuse-2") as runtime:
        second = pids(runtime)
        assert second[names[0]] != first[names[0]]  # dropped: a fresh process
        assert second[names[1]] != first[names[1]]  # another policy: a fresh process
        assert all(second[n] == first[n] for n in names[2:])  # the rest served again
        gone = runtime.call(
            "handle",
            "dp-fedavg",
            "logistic_gradient",
            "j",
            np.zeros(1),
            drop_failed=False,
            epsilon=0.0,
            clip=None,
            noise_multiplier=0.0,
            rounds=1,
            round_=0,
            sites=[names[2]],
        )
        assert "not loaded" in gone.failed[names[2]]  # the last job's rows are gone
        runtime.call("load", "again", "dp-logistic", 0.2, 0, sites=[names[2]])
        again = runtime.call(
            "handle",
            "dp-logistic",
            "fit_dp_logistic",
            "one-shot",
            **fit,
            sites=[names[2]],
            drop_failed=False,
        )
        assert "already released" in again.failed[names[2]]  # its releases are remembered
