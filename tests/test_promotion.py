"""Champion and challenger on real Ray and MLflow: the gate promotes a better model and
keeps a worse one with the failed criterion named, previous-champion follows, a failed
job moves nothing, rollback and promotion by hand are one command each, and every
registered version has a model card."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from support.federation import make_config

from pipeline.champion import CHAMPION, PREVIOUS_CHAMPION, alias_version
from pipeline.config import load_config
from pipeline.errors import BudgetError
from pipeline.job import run_job
from pipeline.registry import CHALLENGER

pytestmark = pytest.mark.slow
PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [PIPELINE, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _aliases(client, name: str = "diabetes-risk") -> dict[str, str | None]:
    return {a: alias_version(client, name, a) for a in (CHAMPION, PREVIOUS_CHAMPION, CHALLENGER)}


def test_the_gate_promotes_better_models_keeps_worse_ones_and_rollback_restores(
    ray_session, four_sites: Path, tmp_path: Path
) -> None:
    base = four_sites
    config = make_config(base, tmp_path, training={"rounds": 60})
    cfg = load_config(config)
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)

    # 1. The first model, trained from the CLI: above the floor and calibrated.
    train = _cli("train", "--config", str(config), "--model", "logistic", cwd=tmp_path)
    assert "gate: version 1 is the new champion" in train.stdout
    assert "auc_floor" in train.stdout
    bar = re.search(r"training rounds\s.*?(\d+)/(\d+)", train.stdout)
    assert bar and bar.group(1) == bar.group(2), train.stdout  # one bar, run to its end
    assert "round 5/" not in train.stdout  # one bar, not a line every five rounds
    assert ".py:" not in train.stdout  # no source path at the end of progress lines
    assert _aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: None, CHALLENGER: "1"}
    first_auc = client.get_run(client.get_model_version("diabetes-risk", "1").run_id).data
    first_auc = first_auc.metrics["test_auc"]

    # 2. A clearly worse challenger (boosted trees of one stump) stays challenger.
    stump = cfg.model_copy(deep=True)
    stump.training.xgboost.rounds, stump.training.xgboost.max_depth = 1, 1
    worse = run_job(stump, strategy="xgboost")
    assert worse.model_version == "2" and not worse.decision.promote
    assert "auc" in {c.name for c in worse.decision.failed()}
    # Judged against the champion on the very rows the champion was first evaluated on.
    assert worse.champion_evaluation.overall.auc == pytest.approx(first_auc, abs=1e-9)
    tags = client.get_model_version("diabetes-risk", "2").tags
    assert tags["gate.decision"] == "kept" and tags["gate.auc"].startswith("FAIL")
    assert _aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: None, CHALLENGER: "2"}

    # 3. A better one becomes champion; the former champion is previous-champion.
    better = run_job(cfg, strategy="xgboost")
    assert better.decision.promote, better.decision.summary()
    assert better.metrics.auc > better.champion_evaluation.overall.auc
    assert _aliases(client) == {CHAMPION: "3", PREVIOUS_CHAMPION: "1", CHALLENGER: "3"}
    run = client.get_run(better.run_id)
    assert run.data.tags["gate.decision"] == "promoted"
    gate = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/gate.json"))
    assert {c["name"] for c in gate["criteria"]} == {
        "auc",
        "calibration_slope",
        "calibration_intercept",
        "validation",
        "privacy_budget",
    }
    card = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/model_card.md")
    for section in ("Intended use", "Data window", "sex female", "age 65 to 90", "Risk bands"):
        assert section in card, section
    assert "**promoted** (compared with champion version 1)" in card
    assert "gradient and hessian histograms" in card  # what the aggregator sees, for trees
    assert "each site's masked by its own relay" in card  # trained under `secure`

    # 4. A failed job registers nothing and moves no alias.
    over = load_config(make_config(base, tmp_path, privacy={"epsilon_budget": 0.5}))
    with pytest.raises(BudgetError):
        run_job(over, strategy="dp-fedavg")
    assert len(client.search_model_versions("name='diabetes-risk'")) == 3
    assert _aliases(client) == {CHAMPION: "3", PREVIOUS_CHAMPION: "1", CHALLENGER: "3"}

    # 5. Rollback: the former champion is back, in one command.
    back = _cli("rollback", "--config", str(config), cwd=tmp_path)
    assert "version 1 is the champion again" in back.stdout
    assert _aliases(client)[CHAMPION] == "1" and _aliases(client)[PREVIOUS_CHAMPION] == "3"

    # 6. Promotion by hand, past the gate, recorded as such; the listing shows it all.
    _cli("promote", "--config", str(config), "--version", "2", "--reason", "audit", cwd=tmp_path)
    assert _aliases(client)[CHAMPION] == "2"
    tags = client.get_model_version("diabetes-risk", "2").tags
    assert tags["promotion"] == "manual" and tags["promotion.reason"] == "audit"
    listed = json.loads(_cli("models", "--config", str(config), "--json", cwd=tmp_path).stdout)
    assert [v["version"] for v in listed] == ["3", "2", "1"]
    by_version = {v["version"]: v for v in listed}
    assert by_version["2"]["aliases"] == [CHAMPION]
    assert by_version["1"]["aliases"] == [PREVIOUS_CHAMPION]
    assert by_version["3"]["aliases"] == [CHALLENGER]
    assert (
        by_version["3"]["strategy"] == "xgboost" and by_version["3"]["gate.decision"] == "promoted"
    )
    table = _cli("models", "--config", str(config), cwd=tmp_path).stdout
    assert "champion" in table and "promoted by hand" in table

    # 7. A site scores only models of jobs it trained in (by digest): to a site without
    # the champion on its record (one that joined later, or a champion the coordinator
    # crafted), the champion is not comparable, and the gate keeps the challenger out.
    site = cfg.sites[0]
    record = site.path.parent / f"{site.path.name}.models.json"
    kept = json.loads(record.read_text())
    try:
        record.write_text("{}")
        newer = run_job(cfg, strategy="logistic")
    finally:
        record.write_text(json.dumps({**kept, **json.loads(record.read_text())}))
    assert newer.champion_evaluation is None and not newer.decision.promote
    (auc,) = [c for c in newer.decision.failed() if c.name == "auc"]
    assert f"champion 2 not comparable: site(s) {site.name} did not train it" in auc.value
    assert _aliases(client)[CHAMPION] == "2"


def test_a_promotion_racing_a_job_is_refused_and_an_alias_moved_around_the_lock_stands(
    ray_session, four_sites: Path, tmp_path: Path
) -> None:
    """While a job holds the federation's lock, `pipeline promote` is refused and does
    nothing. A process that moves the champion without the lock (the MLflow UI, an old
    client) after the job read it is not overwritten either: the job's alias move is a
    compare-and-set, so it is kept with the reason named."""
    config = make_config(four_sites, tmp_path)
    cfg = load_config(config)
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    assert run_job(cfg, strategy="logistic").decision.promote  # version 1
    stump = cfg.model_copy(deep=True)
    stump.training.xgboost.rounds, stump.training.xgboost.max_depth = 1, 1
    assert not run_job(stump, strategy="xgboost").decision.promote  # version 2, kept
    raced: list[subprocess.CompletedProcess] = []

    def progress(message: str) -> None:
        # The job has read champion 1 and evaluates against it: now two other processes.
        if message.startswith("evaluating the model and champion 1") and not raced:
            promote = ("promote", "--config", str(config), "--version", "2", "--reason", "race")
            raced.append(
                subprocess.run([PIPELINE, *promote], capture_output=True, text=True, timeout=300)
            )
            moved = (
                "import mlflow, sys; c = mlflow.MlflowClient(sys.argv[1], sys.argv[1]); "
                "c.set_registered_model_alias('diabetes-risk', 'champion', '2')"
            )
            raced.append(
                subprocess.run(
                    [sys.executable, "-c", moved, cfg.tracking_uri],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            )

    third = run_job(cfg, strategy="logistic", progress=progress)
    refused, around = raced
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert (
        "another run holds" in refused.stderr and "promotion by hand did nothing" in refused.stderr
    )
    assert around.returncode == 0, around.stderr
    assert third.model_version == "3" and not third.decision.promote
    assert {c.name for c in third.decision.failed()} == {"champion_unchanged"}
    assert "it is version 2, the gate compared against version 1" in third.decision.summary()
    assert _aliases(client)[CHAMPION] == "2"
    tags = client.get_model_version("diabetes-risk", "3").tags
    assert tags["gate.decision"] == "kept" and tags["gate.champion_unchanged"].startswith("FAIL")
    assert "promotion" not in client.get_model_version("diabetes-risk", "2").tags  # refused
