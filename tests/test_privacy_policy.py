"""The consortium's privacy policy in the gate, on real Ray and MLflow: under
``gate.max_epsilon`` a better non-private model never becomes champion and the failed
criterion is named, in the registry, the model card and ``pipeline models``; a private
model within it does, recalibrated; without the policy the gate is what it was."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from rich.console import Console
from support.federation import make_config

from pipeline.champion import CHAMPION, alias_version
from pipeline.config import load_config
from pipeline.job import run_job
from pipeline.registry import list_versions
from pipeline.report import print_models

pytestmark = pytest.mark.slow
# The calibration criteria are widened here so that this test is about the privacy
# policy alone: a private model's calibration is a draw of its noise (bench/dp_utility.py
# measures how often it passes the gate's own criteria).
GATE = {"max_epsilon": 1.0, "calibration_slope": [0.3, 3.0], "calibration_intercept": 2.0}


def test_under_a_privacy_policy_only_a_private_model_becomes_champion(
    ray_session, four_sites: Path, tmp_path: Path
) -> None:
    config = make_config(four_sites, tmp_path, gate=GATE, privacy={"epsilon_per_job": 1.0})
    cfg = load_config(config)
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    name = cfg.mlflow.model_name

    first = run_job(cfg, strategy="logistic")  # no champion yet, and above the floor
    assert not first.decision.promote
    assert {c.name for c in first.decision.failed()} == {"privacy_policy"}
    assert alias_version(client, name, CHAMPION) is None

    private = run_job(cfg, strategy="dp-fedavg")
    assert private.decision.promote, private.decision.summary()
    assert alias_version(client, name, CHAMPION) == private.model_version
    run = client.get_run(private.run_id)
    card = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/model_card.md")
    assert "**Recalibrated** on the sites' training rows" in card
    assert "of the job's privacy cost" in card and "| privacy_policy | pass |" in card
    assert float(run.data.params["recalibration_slope"]) > 0

    better = run_job(cfg, strategy="logistic")  # ranks better than the private champion
    assert better.metrics.auc > better.champion_evaluation.overall.auc
    assert {c.name for c in better.decision.failed()} == {"privacy_policy"}
    tags = client.get_model_version(name, better.model_version).tags
    assert tags["gate.privacy_policy"].startswith("FAIL")
    assert "logistic: not differentially private" in tags["gate.privacy_policy"]
    assert alias_version(client, name, CHAMPION) == private.model_version
    shown = Console(record=True, width=250)  # what `pipeline models` prints
    print_models(shown, name, list_versions(client, name))
    assert "kept (privacy_policy failed)" in shown.export_text()

    # Without the policy the gate is today's: the better model replaces the private one.
    open_gate = cfg.model_copy(deep=True)
    open_gate.gate.max_epsilon = None
    today = run_job(open_gate, strategy="logistic")
    assert today.decision.promote, today.decision.summary()
    assert "privacy_policy" not in {c.name for c in today.decision.criteria}
