"""Federated XGBoost against pooled XGBoost, side by side in one run on the same cores.

At 1,000,000 synthetic rows over 8 hospitals (``--rows`` for a smaller trial) it measures:

* pooled ``xgboost.train`` on the sites' train rows pooled (same params, same contract
  grid, same validation rows and early stopping, ``nthread`` = all cores), matrix
  building included, three times (before, between and after the jobs; the ratios use
  the median, as one measurement varies by a fifth on this machine);
* the federated collective (the sites' actors as ranks, matrix building included) for
  each communicator: ``secure`` (every site's histograms masked by its relay, only their
  sum decoded), ``federated`` (the same aggregator, histograms in the clear) and
  ``rabit``, with the time the relays spent masking; and the whole job (``run_job``:
  actors, validation, loading, training, evaluation, registration); the first job
  (``secure``) validates cold, the later ones answer from the sites' validation records,
  and the secure job runs a second time on the same data, side by side with the first,
  followed by the plaintext job again (the secure / plaintext ratio is of the median of
  two runs each, alternating);
* test AUCs on the same held-out rows: federated vs pooled XGBoost, the non-private
  federated logistic regression (``run_job(strategy="logistic")``) and the median site's
  local-only XGBoost.

The bench reads the extracts itself to build the pooled baseline: a measurement, never
something a job does. Run: ``.venv/bin/python bench/xgboost_speed.py [--rows 100000]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CORES = 2


def _config(base: Path, out: Path, communicator: str, tracking_uri: str):
    """The bench federation's config for `communicator`; the sites' policies allow a
    collective in the clear only for the clear communicators."""
    import yaml

    from pipeline.config import load_config
    from pipeline.site.policy import SitePolicy, write_policy

    raw = yaml.safe_load(base.read_text())
    raw["sites"] = [{**s, "path": str((base.parent / s["path"]).resolve())} for s in raw["sites"]]
    raw["contract"] = str(Path(raw["contract"]).resolve())
    raw.setdefault("privacy", {})["ledger"] = str(out / "ledger.sqlite")
    raw["mlflow"] = {"tracking_uri": tracking_uri, "experiment": "bench"}
    raw.setdefault("training", {}).update(
        {"round_timeout_s": 3600, "xgboost": {"communicator": communicator, "timeout_s": 3600}}
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"federation-{communicator}.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    clear = communicator in ("federated", "rabit")
    for site in cfg.sites:
        write_policy(site.path, SitePolicy(epsilon_budget=1e6, secure_aggregation=not clear))
    return cfg


def _masking_seconds(cfg, job_id: str) -> list[float]:
    """Each site's time in its relay's encoding, masking and decoding (its audit log)."""
    import json

    from pipeline.site.audit import audit_log_path

    out = []
    for site in cfg.sites:
        for line in audit_log_path(site.path).read_text().splitlines():
            entry = json.loads(line)
            if entry["request"] == "xgb_collective" and entry["job"] == job_id:
                out.append(float(entry["mask_s"]))
    return out


def _train_pooled(contract, cfg, parts, nthread: int):
    """Pooled XGBoost on (tree matrix, labels) parts, timed: (booster, seconds)."""
    from pipeline.pooled import train_xgboost

    start = time.perf_counter()
    booster = train_xgboost(contract, cfg, parts, nthread=nthread)
    return booster, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mlflow
    import ray
    from paired_bootstrap import joint_counts, paired_bootstrap_auc
    from sklearn.metrics import roc_auc_score

    from pipeline.features import FeatureEncoder
    from pipeline.job import run_job
    from pipeline.models import trees
    from pipeline.pooled import site_rows
    from pipeline.registry import use_tracking
    from pipeline.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="xgb-bench-") as tmp:
        out = Path(tmp)
        base, written = synthesize(out / "data", sites=args.sites, rows=args.rows, seed=args.seed)
        print(f"data: {args.rows:,} rows over {args.sites} sites; {CORES} cores")
        ray.init(num_cpus=CORES, include_dashboard=False, logging_level="WARNING")
        # One tracking store for every job, created before any clock starts.
        tracking_uri = f"sqlite:///{out}/mlruns/mlflow.db"
        use_tracking(tracking_uri)
        mlflow.MlflowClient().search_experiments()
        try:
            cfg = _config(base, out, "federated", tracking_uri)
            contract, rows = site_rows(cfg)
            encoder = FeatureEncoder(contract)
            held_out = pd.concat([r.test for r in rows], ignore_index=True)
            y_test = np.concatenate([r.test_y for r in rows])
            T_test = encoder.tree_matrix(held_out)

            parts = [(r.train_T, r.train_y) for r in rows]
            pooled_runs: list[float] = []

            def pooled_run():
                booster, seconds = _train_pooled(contract, cfg, parts, CORES)
                pooled_runs.append(seconds)
                print(f"pooled xgboost: {seconds:.2f} s, {booster.num_boosted_rounds()} trees")
                return booster

            pooled = pooled_run()
            auc = {"pooled xgboost": roc_auc_score(y_test, trees.predict_proba(pooled, T_test))}

            times, predictions, stages, boosters, masking = {}, {}, {}, {}, []

            def timed_job(label: str, communicator: str):
                """One XGBoost job, its collective and whole-job seconds kept as `label`."""
                c = _config(base, out / communicator, communicator, tracking_uri)
                start = time.perf_counter()
                result = run_job(c, strategy="xgboost")
                times[label] = (result.model.training_.seconds, time.perf_counter() - start)
                stages[label] = result.seconds
                return c, result

            for communicator in ("secure", "federated", "rabit"):
                c, result = timed_job(communicator, communicator)
                train_s, job_s = times[communicator]
                predictions[communicator] = result.model.predict_proba(held_out)
                boosters[communicator] = result.model.booster_
                if communicator == "secure":
                    masking = _masking_seconds(c, result.job_id)
                auc[f"federated xgboost ({communicator})"] = roc_auc_score(
                    y_test, predictions[communicator]
                )
                print(
                    f"federated xgboost ({communicator}): collective {train_s:.2f} s, "
                    f"whole job {job_s:.2f} s, {result.model.booster_.num_boosted_rounds()} trees"
                )
                # The same pooled training again between and after the jobs: one
                # measurement on this machine varies by 20 %, the median of three less.
                pooled_run()

            # The secure job again on the same data: the sites answer from their records.
            # Then the plaintext job again, so that secure and plaintext collectives
            # alternate and their ratio is of two runs each, not of one pair.
            timed_job("secure, again", "secure")
            timed_job("federated, again", "federated")

            c = _config(base, out / "logistic", "auto", tracking_uri)
            start = time.perf_counter()
            logistic = run_job(c, strategy="logistic")
            logistic_s = time.perf_counter() - start
            predictions["logistic"] = logistic.model.predict_proba(held_out)
            auc["federated logistic (non-private)"] = roc_auc_score(y_test, predictions["logistic"])
            print(f"federated logistic: whole job {logistic_s:.2f} s")

            local = {}
            for r in rows:
                booster, _ = _train_pooled(contract, cfg, [(r.train_T, r.train_y)], CORES)
                local[r.name] = trees.predict_proba(booster, T_test)
            local_auc = {s: roc_auc_score(y_test, p) for s, p in local.items()}
            order = sorted(local_auc, key=local_auc.get)
            median_site = order[len(order) // 2]
            auc[f"median site's local-only xgboost ({median_site})"] = local_auc[median_site]
        finally:
            ray.shutdown()

    fed_p = predictions["secure"]
    versus = {
        "federated logistic": paired_bootstrap_auc(
            joint_counts(y_test, fed_p, predictions["logistic"])
        ),
        f"median local-only xgboost ({median_site})": paired_bootstrap_auc(
            joint_counts(y_test, fed_p, local[median_site])
        ),
    }

    pooled_s = float(np.median(pooled_runs))
    runs = ", ".join(f"{s:.2f}" for s in pooled_runs)
    print(f"\npooled xgboost.train: median {pooled_s:.2f} s of {len(pooled_runs)} runs ({runs})")
    print("wall time ratios (pooled xgboost.train, median = 1):")
    for communicator, (train_s, job_s) in times.items():
        print(f"  federated collective / pooled ({communicator}): {train_s / pooled_s:.2f}")
        print(f"  whole job / pooled ({communicator}):            {job_s / pooled_s:.2f}")
    print(f"  logistic whole job / pooled:                  {logistic_s / pooled_s:.2f}")
    secure_runs = [times["secure"][0], times["secure, again"][0]]
    plain_runs = [times["federated"][0], times["federated, again"][0]]
    secure_s = times["secure"][0]
    secure_ratio = float(np.median(secure_runs) / np.median(plain_runs))
    pairs = ", ".join(f"{a / b:.2f}" for a, b in zip(secure_runs, plain_runs, strict=True))
    print(
        f"  secure collective / federated (plaintext) collective: {secure_ratio:.2f} "
        f"(two runs each, alternating; pair by pair {pairs})"
    )
    if masking:
        print(
            f"  masking in the relays: {np.median(masking):.2f} s per site (median; "
            f"{min(masking):.2f}-{max(masking):.2f}), of the secure collective's {secure_s:.2f} s"
        )
    same = [
        float(np.max(np.abs(predictions["secure"] - predictions[c])))
        for c in ("federated", "rabit")
    ]
    dumps = {c: b.get_dump() for c, b in boosters.items()}
    print(
        "  secure vs plaintext: largest difference in a held-out prediction "
        f"{max(same):.2e}; same trees as federated: {dumps['secure'] == dumps['federated']}"
    )
    print("\nwhere a whole job's time goes, seconds (validation includes the site actors'")
    print("processes starting and importing Great Expectations, all on the same cores):")
    for communicator, seconds in stages.items():
        parts = ", ".join(f"{stage} {s:.1f}" for stage, s in seconds.items())
        print(f"  {communicator}: {parts}")
    print(f"\ntest AUC on the same {len(y_test):,} held-out rows:")
    for name, value in auc.items():
        print(f"  {name:<48} {value:.4f}")
    print("\nfederated xgboost (secure communicator) against, paired bootstrap 95 % CI:")
    for name, (diff, low, high) in versus.items():
        print(f"  {name:<48} {diff:+.4f} [{low:+.4f}, {high:+.4f}]")

    checks = {}
    for communicator in ("secure", "federated", "rabit"):
        gap = auc[f"federated xgboost ({communicator})"] - auc["pooled xgboost"]
        checks[f"lossless ({communicator}): |AUC - pooled| = {abs(gap):.4f} <= 0.002"] = (
            abs(gap) <= 0.002
        )
        train_ratio = times[communicator][0] / pooled_s
        job_ratio = times[communicator][1] / pooled_s
        checks[f"training ({communicator}) {train_ratio:.2f}x pooled <= 1.5x"] = train_ratio <= 1.5
        checks[f"whole job ({communicator}) {job_ratio:.2f}x pooled <= 3x"] = job_ratio <= 3
    first_v, again_v = stages["secure"]["validation"], stages["secure, again"]["validation"]
    checks[
        f"validation of unchanged data {again_v:.2f} s <= a tenth of the first's {first_v:.2f} s"
    ] = again_v <= 0.1 * first_v
    again_ratio = times["secure, again"][1] / pooled_s
    checks[f"second job on the same data {again_ratio:.2f}x pooled <= 2.5x"] = again_ratio <= 2.5
    checks[f"secure collective {secure_ratio:.2f}x the plaintext collective <= 1.3x"] = (
        secure_ratio <= 1.3
    )
    gap = abs(auc["federated xgboost (secure)"] - auc["federated xgboost (federated)"])
    checks[f"secure AUC = plaintext AUC: |difference| {gap:.5f} <= 0.0005"] = gap <= 0.0005
    lr_gap = versus["federated logistic"][0]
    checks[f"beats federated logistic by {lr_gap:+.4f} >= 0.02"] = lr_gap >= 0.02
    low = versus[f"median local-only xgboost ({median_site})"][1]
    checks[f"beats the median site's local-only xgboost (CI low {low:+.4f} > 0)"] = low > 0
    print()
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
