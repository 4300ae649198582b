"""`pipeline demo`: every stage that exists, on synthetic hospitals, with no configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.config import load_config
from pipeline.report import (
    job_progress,
    print_job,
    print_models,
    print_sites,
    print_validation,
    site_progress,
)
from pipeline.synth import synthesize


def run_demo(console: Console, *, out: Path, sites: int, rows: int, seed: int) -> None:
    """Synthesize hospitals, validate them at the sites, then train and register the
    non-private and the differentially private federated logistic regressions and the
    federated gradient-boosted trees, each judged by the promotion gate against the
    champion of the moment; ends with the registry's versions and the champion."""
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
            with job_progress(console) as (say, on_round):
                result = run_job(cfg, strategy=strategy, progress=say, on_round=on_round)
            print_job(console, result)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    console.rule("[bold]the registry")
    _print_registry(console, cfg)
    console.rule("[bold]done")
    console.print(
        f"MLflow store: {cfg.tracking_uri}  (browse: .venv/bin/mlflow ui --backend-store-uri "
        f"{cfg.tracking_uri})\nprivacy ledger: {cfg.privacy.ledger}"
    )


def _print_registry(console: Console, cfg) -> None:  # noqa: ANN001
    from pipeline.registry import CHAMPION, alias_version, list_versions, registry_client

    client = registry_client(cfg.tracking_uri)
    name = cfg.mlflow.model_name
    print_models(console, name, list_versions(client, name))
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        console.print("[yellow]no version passed the promotion gate: there is no champion[/]")
    else:
        run = client.get_run(client.get_model_version(name, champion).run_id)
        card = f"{run.info.artifact_uri}/model_card.md".removeprefix("file://")
        console.print(f"champion: [bold]{name} version {champion}[/]; model card: {card}")
