"""Utility of the logistic strategies at epsilon = 1 per site (8 sites, 200,000 rows).

Prints, side by side from one run: held-out AUC of non-private federated LR, DP-FedAvg
(FedAdam server, per-example clipping, Gaussian noise, secure aggregation) and one-shot
diffprivlib LR, and each one's paired bootstrap 95 % interval of the AUC difference
against the median site's local-only model, all evaluated on the pooled held-out rows of
every site from sufficient statistics.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.config import load_config
from pipeline.evaluation import combine, paired_bootstrap_auc
from pipeline.federation.runtime import SiteRuntime, ensure_ray
from pipeline.job import run_job
from pipeline.synth import synthesize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--epsilon", type=float, default=1.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dp-"))
    config, _ = synthesize(tmp / "data", sites=args.sites, rows=args.rows, seed=0)
    raw = yaml.safe_load(config.read_text())
    raw["privacy"] = {"epsilon_per_job": args.epsilon, "epsilon_budget": 100.0}
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlruns/mlflow.db"}
    raw["training"] = {"rounds": args.rounds, "round_timeout_s": 600}
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    ensure_ray()

    results = {}
    for strategy in ("logistic", "dp-fedavg", "dp-logistic"):
        start = time.perf_counter()
        results[strategy] = run_job(cfg, strategy=strategy)
        print(
            f"{strategy:12s} AUC {results[strategy].metrics.auc:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    with SiteRuntime(cfg.sites, str(cfg.contract), "bench-local", timeout_s=600) as runtime:
        runtime.call("load", cfg.training.test_fraction, cfg.training.seed)
        local = runtime.call("fit_local_logistic")
        local_auc = {}
        for site, update in local.ok.items():
            payload = {"kind": "logistic", "weights": update.vector}
            local_auc[site] = combine(runtime.call("evaluate", payload).ok.values()).auc
        order = sorted(local_auc, key=local_auc.get)
        median_site = order[len(order) // 2]
        median_model = {"kind": "logistic", "weights": local.ok[median_site].vector}
        print(
            "local-only AUC on pooled held-out rows: "
            + ", ".join(f"{s} {a:.4f}" for s, a in sorted(local_auc.items()))
        )
        rows = []
        for strategy, res in results.items():
            joint = runtime.call("evaluate_pair", res.model.site_payload(), median_model)
            counts = sum(j.counts for j in joint.ok.values())
            diff, low, high = paired_bootstrap_auc(counts)
            rows.append((strategy, res.metrics.auc, diff, low, high))

    base = results["logistic"].metrics.auc
    print(
        f"\n{args.sites} sites, {args.rows:,} rows, epsilon {args.epsilon:g} per site, "
        f"{args.rounds} rounds; median local-only site: {median_site} "
        f"(AUC {local_auc[median_site]:.4f})"
    )
    print(f"{'strategy':12s} {'AUC':>7s} {'vs non-private':>15s} {'vs median local [95% CI]':>32s}")
    for strategy, auc, diff, low, high in rows:
        print(
            f"{strategy:12s} {auc:7.4f} {auc - base:+15.4f} {diff:+10.4f} [{low:+.4f}, {high:+.4f}]"
        )
    ok = abs(results["dp-fedavg"].metrics.auc - base) <= 0.01
    print(f"\ndp-fedavg within 0.01 of non-private: {'PASS' if ok else 'FAIL'}")
    for strategy, _, _, low, _ in rows[:2]:
        print(f"{strategy} above median local (CI low > 0): {'PASS' if low > 0 else 'FAIL'}")


if __name__ == "__main__":
    main()
