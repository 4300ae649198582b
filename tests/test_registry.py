"""The MLflow tracker's registry step on a real sqlite store: versions, alias, and a
terminal left to the job's own progress lines."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
from support.federation import ROOT

from pipeline.contract import load_contract
from pipeline.features import FeatureEncoder
from pipeline.models.logistic import LogisticModel
from pipeline.registry import CHALLENGER, JobTracker

CONTRACT = ROOT / "schemas" / "diabetes_ehr.yaml"


def test_registering_twice_makes_two_versions_and_prints_nothing(tmp_path: Path, capsys) -> None:
    contract = load_contract(CONTRACT)
    width = FeatureEncoder(contract).n_features_out + 1
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    mlflow_logger = logging.getLogger("mlflow")
    level_before = mlflow_logger.level
    capsys.readouterr()

    versions = []
    for seed in (1, 2):
        model = LogisticModel(contract, np.random.default_rng(seed).normal(size=width))
        with JobTracker(uri, "registry-test", f"job-{seed}") as tracker:
            versions.append(tracker.register(model, str(CONTRACT), "risk-test"))

    printed = capsys.readouterr()
    assert versions == ["1", "2"]
    client = mlflow.MlflowClient(uri, uri)
    assert str(client.get_model_version_by_alias("risk-test", CHALLENGER).version) == "2"
    # MLflow's own "Registered model ... already exists" / "Created version" lines.
    assert "risk-test" not in printed.err + printed.out
    assert mlflow_logger.level == level_before
