"""Scheduled retraining on real Ray and MLflow: a second run on the same data does
nothing, a new month is trained with its drift measured, and a site without budget is
left out (or the job refused). Runs killed at every point, and the lock that keeps them
from overlapping: tests/test_chaos.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from support.federation import make_config

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.evaluation.drift import histogram_vector
from pipeline.extract import read_months
from pipeline.federation import runtime
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.protocol import messages
from pipeline.protocol.secure_sum import encode
from pipeline.retrain import (
    BUDGET_EXHAUSTED,
    NOTHING_NEW,
    TRAINED,
    audit_path,
    run_retrain,
)
from pipeline.synth import append_month, synthesize

pytestmark = pytest.mark.slow
PIPELINE = str(Path(sys.executable).parent / "pipeline")
INDEPENDENT = ("sex", "smoking_status", "physical_activity")  # not drawn from age or BMI


def _jobs_of_epsilon_one(eps: float, jobs: int = 1) -> bool:
    """The ledger charges what the accountant computes for the plan: at most the target,
    within 0.1 % of it."""
    return jobs * 0.999 <= eps <= jobs * (1.0 + 1e-9)


def _versions(cfg) -> int:
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    return len(client.search_model_versions(f"name='{cfg.mlflow.model_name}'"))


def _spent(cfg) -> dict[str, float]:
    ledger = PrivacyLedger(cfg.privacy.ledger)
    return {s.name: ledger.spent(s.name)[0] for s in cfg.sites}


def _audit(cfg) -> list[dict]:
    return [json.loads(line) for line in audit_path(cfg).read_text().splitlines()]


def test_a_rerun_does_nothing_and_a_new_month_is_trained_with_its_drift(
    ray_session, four_sites_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = four_sites_copy
    cfg = load_config(make_config(base, tmp_path, training={"rounds": 10}))

    first = run_retrain(cfg, strategies=["dp-fedavg"])
    assert first.code == TRAINED, first.message
    assert _versions(cfg) == 1
    spent = _spent(cfg)
    assert all(_jobs_of_epsilon_one(eps) for eps in spent.values()), spent

    again = run_retrain(cfg, strategies=["dp-fedavg"])
    assert again.code == NOTHING_NEW and "nothing new" in again.message
    assert _versions(cfg) == 1 and _spent(cfg) == spent  # nothing registered, nothing spent
    assert [r["status"] for r in _audit(cfg)] == ["trained", "nothing new"]

    month, _ = append_month(base, rows=4000, drift_site="riverside")
    replies: list[object] = []
    checked = messages.check_reply
    monkeypatch.setattr(runtime, "check_reply", lambda r: replies.append(r) or checked(r))
    third = run_retrain(cfg, strategies=["logistic"])
    assert third.code == TRAINED, third.message
    record = _audit(cfg)[-1]
    assert record["window"] == {"first": "2025-10", "last": month}
    assert all(site["new"] == [month] for site in record["sites"].values())
    # Each site validated the new month only: the others' counts came from its records.
    for site in record["sites"].values():
        assert (site["validated_files"], site["recorded_files"]) == (1, len(site["partitions"]) - 1)
    assert record["jobs"][0]["version"] == "2" and record["jobs"][0]["decision"]
    assert set(record["privacy"]) == {s.name for s in cfg.sites}
    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(third.jobs[0].run_id)
    logged = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/retrain_audit.json"))
    assert logged["window"]["last"] == month

    # Drift: the drifted site's age and BMI have shifted; nothing else has.
    drift = record["drift"]["sites"]
    assert drift["riverside"]["age"] > 0.2 and drift["riverside"]["bmi"] > 0.2
    for feature in INDEPENDENT:
        assert drift["riverside"][feature] < 0.1, feature
    for site, per in drift.items():
        if site != "riverside":
            assert max(v for v in per.values() if v is not None) < 0.1, (site, per)
    assert record["drift"]["pooled"]["age"] > 0.02  # the federation moved less than one site

    # What reached the coordinator: masked histograms, never a site's own.
    contract = load_contract(cfg.contract)
    drift_replies = [r for r in replies if isinstance(r, messages.DriftReply)]
    assert sorted(r.site for r in drift_replies) == sorted(s.name for s in cfg.sites)
    for reply in drift_replies:
        path = cfg.site(reply.site).path
        months = sorted({p.parent.name.split("=")[1] for p in path.rglob("*.parquet")})
        plain = np.concatenate(
            [
                histogram_vector(read_months(path, "followup_month", months[:-1]), contract),
                histogram_vector(read_months(path, "followup_month", [month]), contract),
            ]
        )
        assert reply.masked.dtype == np.uint64
        assert np.mean(reply.masked == encode(plain)) < 0.01


def test_a_site_without_budget_is_left_out_and_too_few_refuse_the_job(
    ray_session, tmp_path: Path
) -> None:
    base, _ = synthesize(tmp_path / "data", sites=4, rows=6000, seed=5)
    raw = yaml.safe_load(base.read_text())
    raw["sites"][0]["epsilon_budget"] = 1.5  # pays for one job of epsilon 1, not two
    base.write_text(yaml.safe_dump(raw))
    cfg = load_config(make_config(base, tmp_path, training={"rounds": 5}))
    poor = cfg.sites[0].name
    assert run_retrain(cfg, strategies=["dp-fedavg"]).code == TRAINED

    append_month(base, rows=2000)
    second = run_retrain(cfg, strategies=["dp-fedavg"])
    assert second.code == TRAINED, second.message
    record = _audit(cfg)[-1]
    assert "budget is exhausted" in record["left_out"][poor]
    assert record["sites"][poor]["trained"] is False
    assert _jobs_of_epsilon_one(record["privacy"][poor]["epsilon_spent"])
    others = [s.name for s in cfg.sites if s.name != poor]
    assert all(_jobs_of_epsilon_one(record["privacy"][s]["epsilon_spent"], 2) for s in others)

    append_month(base, rows=2000)
    strict = load_config(make_config(base, tmp_path, min_sites=4, training={"rounds": 5}))
    before = _spent(strict)
    refused = run_retrain(strict, strategies=["dp-fedavg"])
    assert refused.code == BUDGET_EXHAUSTED and "before any noise" in refused.message
    assert _spent(strict) == before
    assert _audit(strict)[-1]["status"] == "budget exhausted"
    # No site released a gradient for the refused job.
    for site in strict.sites:
        log = site.path.parent / f"{site.path.name}.audit.jsonl"
        releases = [json.loads(x) for x in log.read_text().splitlines()]
        assert releases[-1]["request"] != "logistic_gradient"
