"""Jobs under the site's boundary (its own policy and ledger, set-up / input / reveal
rounds of the double-masked secure sum) against the same jobs at an earlier commit (one
masked answer per round, no site ledger), side by side in one run, alternating, on one
synthetic federation (8 sites, 1,000,000 rows by default).

Each job runs in a fresh process that starts embedded Ray first, so the figure is the
job's own wall time (`run_job`, without registration); the earlier commit's code is
checked out in a temporary git worktree and put first on the process's path. Goal: a job
no more than 10 % slower.

    .venv/bin/python bench/site_boundary_speed.py --before <commit> [--rows 1000000]
        [--sites 8] [--repeats 2] [--models logistic dp-fedavg]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

JOB = """
import json, sys, time
import ray
from pipeline.config import load_config
from pipeline.job import run_job
ray.init(include_dashboard=False, logging_level="ERROR")
cfg = load_config(sys.argv[1])
start = time.perf_counter()
result = run_job(cfg, strategy=sys.argv[2], register=False)
print(json.dumps({"seconds": time.perf_counter() - start, "auc": result.metrics.auc}))
"""


def job_seconds(code: Path, config: Path, model: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(config), model],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
    )
    if done.returncode != 0:
        raise SystemExit(f"{code}: {model} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["seconds"], out["auc"]


def config_for(base: Path, tmp: Path, name: str) -> Path:
    """A copy of the federation's config with a ledger of its own (every job reserves)."""
    import yaml

    raw = yaml.safe_load(base.read_text())
    raw["sites"] = [{**s, "path": str((base.parent / s["path"]).resolve())} for s in raw["sites"]]
    raw["privacy"] = {"ledger": str(tmp / f"{name}.sqlite"), "epsilon_budget": 1000.0}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/{name}/mlflow.db"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["logistic", "dp-fedavg"])
    args = parser.parse_args()

    from pipeline.site.policy import SitePolicy, write_policy
    from pipeline.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="boundary-bench-") as tmp_name:
        tmp = Path(tmp_name)
        before = tmp / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
            check=True,
            capture_output=True,
        )
        try:
            base, _ = synthesize(tmp / "data", sites=args.sites, rows=args.rows, seed=0)
            for site in (tmp / "data").iterdir():
                if site.is_dir():  # a budget no run of the bench reaches, at every site
                    write_policy(site, SitePolicy(epsilon_budget=1000.0))
            seconds: dict[tuple[str, str], list[float]] = {}
            for r in range(args.repeats):
                for model in args.models:
                    for label, code in (("before", before), ("now", ROOT)):
                        config = config_for(base, tmp, f"{label}-{model}-{r}")
                        s, auc = job_seconds(code, config, model)
                        seconds.setdefault((label, model), []).append(s)
                        print(f"{label:>6} {model:<10} run {r + 1}: {s:6.1f} s, AUC {auc:.4f}")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                check=False,
            )
    print(f"\n{args.sites} sites, {args.rows:,} rows; median of {args.repeats} runs")
    for model in args.models:
        b = statistics.median(seconds[("before", model)])
        n = statistics.median(seconds[("now", model)])
        print(f"{model:<10} before {b:6.1f} s  now {n:6.1f} s  ratio {n / b:.3f}")


if __name__ == "__main__":
    main()
