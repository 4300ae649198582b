"""Scheduled retraining against a full `pipeline train`, side by side in one run, on the
bench federation (8 synthetic hospitals, 1,000,000 rows, seed 0; `--sites 4 --rows
40000` is the demo's), every command a fresh process as a scheduler would start it:

1. `pipeline train`        the first champion (the full-train baseline), then the same
                           train again on unchanged data (the sites answer validation
                           from their records);
2. `pipeline retrain`      twice, nothing new: the no-op a scheduler runs most nights
                           (the first one after a manual train also asks the registry);
3. one month appended (with drift at one site), then
   `pipeline retrain`      the one-month run;
4. `pipeline train`        a cold full train on the same 13 months (the sites' records
                           deleted first), for the fair comparison.

Goals: the second train's validation stage at most a tenth of the first's; the no-op
under 15 s; the one-month run at most 0.6 of a cold full train. Prints the
wall time of each command and of each stage (from the audit record and the MLflow runs).

    .venv/bin/python bench/retrain_speed.py [--model logistic] [--sites 8] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def run(*args: str, cwd: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [PIPELINE, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ}
    )
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr


def train_stages(tracking_uri: str, experiment: str) -> dict[str, float]:
    """Stage seconds of the newest training run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (latest,) = client.search_runs(exp.experiment_id, order_by=["start_time DESC"], max_results=1)
    return {
        k.removeprefix("seconds."): v
        for k, v in latest.data.metrics.items()
        if k.startswith("seconds.")
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="logistic")
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    from pipeline.config import load_config
    from pipeline.synth import append_month, synthesize

    with tempfile.TemporaryDirectory(prefix="retrain-bench-") as tmp:
        work = Path(tmp)
        config, _ = synthesize(work / "demo", sites=args.sites, rows=args.rows, seed=0)
        tracking = os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlruns/mlflow.db"
        cfg = load_config(config)
        experiment = cfg.mlflow.experiment or cfg.federation
        audit = cfg.privacy.ledger.parent / "retrain_audit.jsonl"
        rows = []

        seconds, code, out = run("train", "--config", str(config), "--model", args.model, cwd=work)
        assert code == 0, out[-3000:]
        rows.append(("full train (12 months)", seconds, code, train_stages(tracking, experiment)))

        # The same train again on unchanged data: every site answers from its records.
        seconds, code, out = run("train", "--config", str(config), "--model", args.model, cwd=work)
        assert code == 0, out[-3000:]
        rows.append(("again, nothing changed", seconds, code, train_stages(tracking, experiment)))

        seconds, code, out = run(
            "retrain", "--config", str(config), "--model", args.model, cwd=work
        )
        assert code == 3, out[-3000:]
        record = json.loads(audit.read_text().splitlines()[-1])
        rows.append(("retrain, nothing new", seconds, code, record["seconds"]))

        append_month(config, drift_site="lakeview")
        seconds, code, out = run(
            "retrain", "--config", str(config), "--model", args.model, cwd=work
        )
        assert code == 0, out[-3000:]
        record = json.loads(audit.read_text().splitlines()[-1])
        stages = {k: v for k, v in record["seconds"].items() if not isinstance(v, dict)}
        stages.update(record["seconds"].get(f"job {args.model}", {}))
        rows.append(("retrain, one new month", seconds, code, stages))

        # A cold full train of the same 13 months: the sites' records go first.
        for site in cfg.sites:
            shutil.rmtree(site.path.parent / f"{site.path.name}.records", ignore_errors=True)
        seconds, code, out = run("train", "--config", str(config), "--model", args.model, cwd=work)
        assert code == 0, out[-3000:]
        rows.append(("full train (13 months)", seconds, code, train_stages(tracking, experiment)))

    print(f"\nstrategy {args.model}, {args.sites} sites, {args.rows:,} rows + one month\n")
    print(f"{'command':28s} {'wall s':>8s} {'exit':>5s}  stages (s)")
    for name, seconds, code, stages in rows:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if isinstance(v, float | int))
        print(f"{name:28s} {seconds:8.1f} {code:5d}  {shown}")
    first, again = rows[0][3].get("validation", 0.0), rows[1][3].get("validation", 0.0)
    noop, month, full = rows[2][1], rows[3][1], rows[4][1]
    print(
        f"\nvalidation stage, second train / first on the same data: {again:.2f} / "
        f"{first:.2f} s = {again / first:.2f} (goal <= 0.10): "
        f"{'PASS' if again <= 0.1 * first else 'FAIL'}"
    )
    print(f"no-op run: {noop:.1f} s (goal < 15 s): {'PASS' if noop < 15 else 'FAIL'}")
    print(
        f"one-month run / cold full train on the same months: {month / full:.2f} "
        f"(goal <= 0.60): {'PASS' if month <= 0.6 * full else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
