"""The CLI as a newcomer runs it: tables, exit codes, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.synth import synthesize

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PIPELINE, *args],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=cwd,
        env={"COLUMNS": "200", **__import__("os").environ},
    )


@pytest.mark.slow
def test_validate_reports_the_bad_site_and_exits_by_quorum(tmp_path: Path) -> None:
    config, _ = synthesize(tmp_path / "data", sites=3, rows=3000, seed=2)
    bad = next((config.parent / "riverside").rglob("*.parquet"))
    table = pq.read_table(bad)
    pq.write_table(table.drop_columns(["hba1c"]), bad)

    as_json = _run("validate", "--config", str(config), "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    summaries = json.loads(as_json.stdout)  # stdout holds the JSON alone
    assert "quorum met" in as_json.stderr
    assert summaries["riverside"]["passed"] is False
    assert summaries["northgate"]["passed"] is True

    raw = yaml.safe_load(config.read_text())
    raw["min_sites"] = 3
    config.write_text(yaml.safe_dump(raw))
    strict = _run("validate", "--config", str(config), cwd=tmp_path)
    assert strict.returncode == 1
    assert "quorum not met" in strict.stderr
    assert "riverside" in strict.stdout and "hba1c" in strict.stdout  # the table names both


def test_config_errors_are_one_readable_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("sites: []\n")
    done = _run("budget", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "fed.yaml" in done.stderr and "sites" in done.stderr
    assert "Traceback" not in done.stderr


def test_budget_starts_full_for_every_site(tmp_path: Path) -> None:
    config, _ = synthesize(tmp_path / "data", sites=3, rows=600, seed=1)
    done = _run("budget", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for site in ("northgate", "riverside", "st-jude"):
        assert site in done.stdout
    assert done.stdout.count(" 10 ") >= 3
