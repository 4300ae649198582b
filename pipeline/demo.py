"""`pipeline demo`: every stage that exists, on synthetic hospitals, with no configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline import strategies
from pipeline.config import FederationConfig, load_config
from pipeline.report import (
    job_progress,
    print_job,
    print_models,
    print_retrain,
    print_sites,
    print_validation,
    site_progress,
)
from pipeline.synth import append_month, synthesize


def run_demo(console: Console, *, out: Path, sites: int, rows: int, seed: int) -> None:
    """Two cycles of the consortium's year, on synthetic hospitals.

    First cycle: synthesize the hospitals, validate them at the sites, then train and
    register the non-private and the differentially private federated logistic
    regressions and the federated gradient-boosted trees, each judged by the promotion
    gate against the champion of the moment. Second cycle: a new month of closed
    follow-ups arrives, with an older, heavier population at one site; the scheduled
    retraining reports the drift, retrains the champion's strategy and promotes or keeps
    it. Ends with the registry and how to serve the champion."""
    from pipeline.federation.ray_session import ensure_ray
    from pipeline.job import run_job
    from pipeline.retrain import run_retrain
    from pipeline.validation_job import run_validation

    console.rule("[bold]1. synthetic hospitals")
    config, written = synthesize(out, sites=sites, rows=rows, seed=seed)
    print_sites(console, written, config)
    cfg = load_config(config)

    owns_ray = ensure_ray(
        cfg.ray.address, cfg.ray.num_cpus, allow_unauthenticated=cfg.ray.allow_unauthenticated
    )
    try:
        console.rule("[bold]2. validation inside each site")
        with site_progress(console, "validating at the sites", len(cfg.sites)) as advance:
            summaries, admitted, _ = run_validation(cfg, on_site=advance)
        print_validation(console, summaries)

        results = {}
        trained = strategies.demo_names()
        for step, strategy in enumerate(trained, start=3):
            console.rule(f"[bold]{step}. federated training: {strategy}")
            with job_progress(console) as (say, on_round):
                results[strategy] = run_job(cfg, strategy=strategy, progress=say, on_round=on_round)
            print_job(console, results[strategy])
        console.rule("[bold]the registry after the first cycle")
        champion_strategy = _print_registry(console, cfg)

        step = 3 + len(trained)
        drifted = cfg.sites[-1].name
        console.rule(f"[bold]{step}. a new month arrives, with drift at {drifted}")
        month, added = append_month(config, drift_site=drifted)
        print_sites(console, added, config)
        console.print(
            f"follow-up month {month} closed at every site; {drifted}'s new patients are "
            "older and heavier"
        )
        console.rule(f"[bold]{step + 1}. scheduled retraining (pipeline retrain)")
        # The champion's strategy; with no champion, the last one the demo trained.
        again = [champion_strategy or trained[-1]]
        with job_progress(console) as (say, on_round):
            retrained = run_retrain(cfg, strategies=again, progress=say, on_round=on_round)
        print_retrain(console, retrained)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    console.rule("[bold]the registry after the second cycle")
    _print_registry(console, cfg)
    console.rule("[bold]done")
    console.print(
        f"MLflow store: {cfg.tracking_uri}  (browse: .venv/bin/mlflow ui --backend-store-uri "
        f"{cfg.tracking_uri})\nprivacy ledger: {cfg.privacy.ledger}\n"
        f"retraining audit: {cfg.privacy.ledger.parent / 'retrain_audit.jsonl'}",
        soft_wrap=True,  # paths and commands stay whole in a log, to be copied
    )
    print_how_to_serve(console, cfg)


def _print_registry(console: Console, cfg: FederationConfig) -> str | None:
    """The versions table and where the champion's card is; returns its strategy."""
    from pipeline.champion import CHAMPION, alias_version
    from pipeline.registry import list_versions, registry_client

    client = registry_client(cfg.tracking_uri)
    name = cfg.mlflow.model_name
    rows = list_versions(client, name)
    print_models(console, name, rows)
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        console.print("[yellow]no version passed the promotion gate: there is no champion[/]")
        return None
    run = client.get_run(client.get_model_version(name, champion).run_id)
    card = f"{run.info.artifact_uri}/model_card.md".removeprefix("file://")
    console.print(
        f"champion: [bold]{name} version {champion}[/]; model card: {card}", soft_wrap=True
    )
    return next((r.tags.get("strategy") for r in rows if r.version == champion), None)


def print_how_to_serve(console: Console, cfg: FederationConfig) -> None:
    """How to serve the registered model to clinicians and score a patient."""
    from pipeline.champion import CHAMPION, alias_version
    from pipeline.registry import CHALLENGER, registry_client

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
        f"http://127.0.0.1:5001/); a running server follows the {alias} alias, so the next "
        f"retraining's promotion reaches it without a restart:\n"
        f"  .venv/bin/pipeline serve --config {cfg.path} --alias {alias}\n"
        f"and score patients from another terminal:\n"
        f"  .venv/bin/pipeline score --url http://127.0.0.1:5001 {example}",
        highlight=False,
        soft_wrap=True,
    )
