"""`pipeline demo`: every stage that exists, on synthetic hospitals, with no configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.config import FederationConfig, load_config
from pipeline.report import print_job, print_sites, print_validation, site_progress
from pipeline.synth import synthesize


def run_demo(console: Console, *, out: Path, sites: int, rows: int, seed: int) -> None:
    """Synthesize hospitals, validate them at the sites, then train and register the
    non-private and the differentially private federated logistic regressions and the
    federated gradient-boosted trees."""
    from pipeline.federation.runtime import ensure_ray
    from pipeline.job import run_job
    from pipeline.validation_job import run_validation

    console.rule("[bold]1. synthetic hospitals")
    config, written = synthesize(out, sites=sites, rows=rows, seed=seed)
    print_sites(console, written, config)
    cfg = load_config(config)

    owns_ray = ensure_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        console.rule("[bold]2. validation inside each site")
        with site_progress(console, "validating at the sites", len(cfg.sites)) as advance:
            summaries, admitted, _ = run_validation(cfg, on_site=advance)
        print_validation(console, summaries)

        for step, strategy in enumerate(("logistic", "dp-fedavg", "xgboost"), start=3):
            console.rule(f"[bold]{step}. federated training: {strategy}")
            result = run_job(cfg, strategy=strategy, progress=lambda m: console.log(m))
            print_job(console, result)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    console.rule("[bold]done")
    console.print(
        f"MLflow store: {cfg.tracking_uri}  (browse: .venv/bin/mlflow ui --backend-store-uri "
        f"{cfg.tracking_uri})\nprivacy ledger: {cfg.privacy.ledger}"
    )
    print_how_to_serve(console, cfg)


def print_how_to_serve(console: Console, cfg: FederationConfig) -> None:
    """How to serve the registered model to clinicians and score a patient."""
    from pipeline.registry import CHALLENGER, CHAMPION, alias_version, registry_client

    name = cfg.mlflow.model_name
    client = registry_client(cfg.tracking_uri)
    alias = CHAMPION if alias_version(client, name, CHAMPION) is not None else CHALLENGER
    version = alias_version(client, name, alias)
    if version is None:
        return
    example = Path(__file__).resolve().parent.parent / "docs" / "patients.json"
    console.rule("[bold]serve it to clinicians")
    console.print(
        f"{name} version {version} is the {alias}. Serve it (REST, CDS Hooks, a page at "
        f"http://127.0.0.1:5001/):\n"
        f"  .venv/bin/pipeline serve --config {cfg.path} --alias {alias}\n"
        f"and score patients from another terminal:\n"
        f"  .venv/bin/pipeline score --url http://127.0.0.1:5001 {example}",
        highlight=False,
    )
