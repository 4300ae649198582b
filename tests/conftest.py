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
