"""The CLI's and the demo's tables stay whole in a log: printed where no terminal is (cron,
a RayJob's log, ``pipeline demo | cat``) a table gets the width its content needs, while
COLUMNS, when set, and a terminal's width are honoured."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from pipeline.evaluation import Suppressed
from pipeline.registry import VersionRow
from pipeline.report import (
    print_budget,
    print_job,
    print_models,
    print_retrain,
    print_sites,
    print_validation,
)
from pipeline.synth import SiteSummary

PIPELINE = str(Path(sys.executable).parent / "pipeline")
LONG_SITE = "st-jude-childrens-research-hospital-memphis-north-campus"


def _no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as cron starts it: no terminal on any standard stream, no COLUMNS."""
    for var in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)

    def no_size(fd: int = 1) -> os.terminal_size:
        raise OSError(f"fd {fd} is not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_size)


def _log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, log_path=False), out


def _sites(console: Console, tmp_path: Path) -> list[str]:
    path = tmp_path / "consortium" / "extracts" / LONG_SITE
    print_sites(console, [SiteSummary(LONG_SITE, path, 12_345, 2_469)], tmp_path / "f.yaml")
    return [LONG_SITE, str(path)]


def _validation(console: Console, tmp_path: Path) -> list[str]:
    failure = "hba1c: expect_column_values_to_be_between [3.0, 20.0] (12 rows outside)"
    summary = SimpleNamespace(
        rows=9_876, passed=False, reasons=lambda: [failure], validated_files=1, recorded_files=12
    )
    print_validation(console, {LONG_SITE: summary})
    return [LONG_SITE, failure, "1 / 12"]


def _job(console: Console, tmp_path: Path) -> list[str]:
    group = "age 65 and over, female, on statins, body-mass index 35 or more"
    metrics = SimpleNamespace(
        auc=0.8234,
        calibration_slope=0.98,
        n=12_000,
        auprc=0.5,
        brier=0.1,
        log_loss=0.3,
        calibration_intercept=0.01,
        oe_ratio=1.0,
    )
    result = SimpleNamespace(
        metrics=metrics,
        job_id="job-2026-10-01T03-00-00-a1b2c3",
        strategy="dp-fedavg",
        per_site={LONG_SITE: 0.8123, "riverside": Suppressed()},
        privacy={LONG_SITE: (0.75, 1e-5)},
        evaluation=SimpleNamespace(
            subgroups={group: SimpleNamespace(auc=0.79, calibration_slope=1.02)}
        ),
        dropped={},
        model_version=None,
        decision=None,
    )
    print_job(console, result)
    return [LONG_SITE, group, "0.812", "suppressed"]


def _models(console: Console, tmp_path: Path) -> list[str]:
    row = VersionRow(
        version="12",
        aliases=["champion", "previous-champion"],
        created="2026-10-01T03:04:05.678+00:00",
        tags={
            "strategy": "dp-fedavg",
            "epsilon": "1.0",
            "sites": "northgate,riverside,st-jude,lakeview",
            "test_auc": "0.8234",
            "calibration_slope": "0.9876",
            "calibration_intercept": "+0.0123",
            "gate.decision": "promoted",
            "promotion": "manual",
        },
    )
    print_models(console, "diabetes-risk", [row])
    return [
        "version",
        "aliases",
        "cal. intercept",
        "champion, previous-champion",
        "0.8234",
        "+0.0123",
        "promoted (promoted by hand)",
        "2026-10-01 03:04:05.678",
    ]


def _retrain(console: Console, tmp_path: Path) -> list[str]:
    left_out = "budget exhausted: 9.5 of 10 spent, the job needs 1"
    record = {
        "sites": {LONG_SITE: {"new": ["2026-09", "2026-10"]}},
        "drift": {"sites": {LONG_SITE: {"fasting_glucose": 0.31, "hba1c": 0.27, "age": 1.16}}},
        "left_out": {LONG_SITE: left_out},
    }
    result = SimpleNamespace(record=record, jobs=[], code=5, status="budget", message="-")
    print_retrain(console, result)
    return [LONG_SITE, "2026-09, 2026-10", "age 1.16, fasting_glucose 0.31", f"no: {left_out}"]


def _budget(console: Console, tmp_path: Path) -> list[str]:
    cfg = SimpleNamespace(
        privacy=SimpleNamespace(ledger=tmp_path / "privacy_ledger.sqlite"),
        sites=[SimpleNamespace(name=f"{LONG_SITE}-{i}") for i in range(2)],
        site_budget=lambda name: 10.0,
    )
    print_budget(console, cfg)
    return [f"{LONG_SITE}-0", "epsilon spent", "remaining"]


TABLES: dict[str, Callable[[Console, Path], list[str]]] = {
    "sites": _sites,
    "validation": _validation,
    "job": _job,
    "models": _models,
    "retrain": _retrain,
    "budget": _budget,
}


def _widest(text: str) -> int:
    return max(cell_len(line) for line in text.splitlines())


@pytest.mark.parametrize("table", TABLES)
def test_tables_printed_to_a_log_are_whole(
    table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_terminal(monkeypatch)
    console, out = _log_console()
    assert console.width == 80  # what rich gives a log: the case that cut cells
    cells = TABLES[table](console, tmp_path)
    text = out.getvalue()
    assert "…" not in text, text
    assert _widest(text) > 80  # the content needs more than rich's fallback
    lines = text.splitlines()
    for cell in cells:
        assert any(cell in line for line in lines), (cell, text)  # whole, on one line


def test_columns_when_set_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_terminal(monkeypatch)
    monkeypatch.setenv("COLUMNS", "60")
    console, out = _log_console()
    _models(console, tmp_path)
    assert _widest(out.getvalue()) <= 60  # the reader asked for 60 columns: cells are cut
    monkeypatch.setenv("COLUMNS", "300")
    console, out = _log_console()
    cells = _models(console, tmp_path)
    text = out.getvalue()
    assert "…" not in text and _widest(text) <= 300
    assert all(cell in text for cell in cells)


def test_a_terminal_keeps_its_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_terminal(monkeypatch)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    _models(console, tmp_path)
    assert _widest(out.getvalue()) <= 100


def test_an_unattended_cli_run_prints_whole_tables_and_no_store_noise(tmp_path: Path) -> None:
    """`pipeline models` as cron runs it (no terminal, no COLUMNS) on a new MLflow store:
    the header is whole and MLflow's store-creation INFO lines do not appear."""
    from pipeline.synth import synthesize

    config, _ = synthesize(tmp_path / "data", sites=3, rows=600, seed=1)
    # mlflow.set_tracking_uri in an earlier test exports MLFLOW_TRACKING_URI: not ours
    unset = ("COLUMNS", "FORCE_COLOR", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [PIPELINE, "models", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mlruns" / "mlflow.db").exists()  # the store was created by this run
    assert "cal. intercept" in done.stdout and "…" not in done.stdout, done.stdout
    output = done.stdout + done.stderr
    assert "INFO mlflow.store" not in output and "Creating initial" not in output, output


def test_print_table_leaves_the_callers_table_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.console import print_table

    _no_terminal(monkeypatch)
    table = Table("a column header wider than the fallback width " * 3)
    console, out = _log_console()
    print_table(console, table)
    assert table.width is None and "…" not in out.getvalue()
