"""Shared fixtures: small synthetic federations made by the tests themselves, and one Ray
session. Helpers live in :mod:`support`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def small_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic hospitals, 6,000 rows in all; returns the federation config path."""
    from pipeline.synth import synthesize

    config, _ = synthesize(tmp_path_factory.mktemp("fed3"), sites=3, rows=6000, seed=11)
    return generous(config)


@pytest.fixture(scope="session")
def four_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic hospitals, 8,000 rows in all, for the tests that train, promote and
    retrain on real Ray; returns the federation config path. Read only: a test that adds
    data works on :func:`four_sites_copy`."""
    from pipeline.synth import synthesize

    config, _ = synthesize(tmp_path_factory.mktemp("fed4"), sites=4, rows=8000, seed=21)
    return generous(config)


def generous(config: Path) -> Path:
    """Sites that many tests share agree to a lifetime budget no run of the suite reaches
    (each keeps its own ledger beside its extract); a test of a site's own budget makes
    a federation of its own."""
    import yaml
    from support.federation import write_site_policy

    for site in yaml.safe_load(config.read_text())["sites"]:
        write_site_policy(config.parent / site["path"], epsilon_budget=1000.0)
    return config


@pytest.fixture
def four_sites_copy(four_sites: Path, tmp_path: Path) -> Path:
    """A copy of :func:`four_sites` of this test's own, to add months to: the extracts
    and the sites' identity keys (the config pins them), not their audit logs or
    validation reports. Returns its config path."""
    data = tmp_path / "data"
    shutil.copytree(
        four_sites.parent,
        data,
        ignore=shutil.ignore_patterns("*.audit.jsonl", "*.validation", "*.ledger.sqlite"),
    )
    return data / four_sites.name


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray session shared by every test that needs one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
