"""Shared fixtures: small synthetic federations made by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent.parent
HEART_DATA = ROOT.parent / "shared" / "data" / "heart_disease"
HEART_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}


@pytest.fixture(scope="session")
def small_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic hospitals, 6,000 rows in all; returns the federation config path."""
    from pipeline.synth import synthesize

    config, _ = synthesize(tmp_path_factory.mktemp("fed3"), sites=3, rows=6000, seed=11)
    return config


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray session shared by every test that needs one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def make_config(base: Path, tmp: Path, **overrides) -> Path:
    """A copy of a synthetic federation config with its own ledger and MLflow store."""
    import yaml

    raw = yaml.safe_load(base.read_text())
    raw["sites"] = [{**s, "path": str((base.parent / s["path"]).resolve())} for s in raw["sites"]]
    raw["contract"] = str(Path(raw["contract"]).resolve())
    raw.setdefault("privacy", {})["ledger"] = str(tmp / "ledger.sqlite")
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db", "experiment": "tests"}
    raw.setdefault("training", {}).update({"rounds": 8, "round_timeout_s": 60})
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = tmp / "federation.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
