"""`pipeline` command line. Each command parses its options, calls one function of the
package, and turns the project's errors into a readable message and an exit code."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline import strategies
from pipeline.console import quiet_library_logs
from pipeline.errors import PipelineError

for _var, _value in (
    ("GX_ANALYTICS_ENABLED", "false"),
    ("MLFLOW_ENABLE_TELEMETRY", "false"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("DO_NOT_TRACK", "1"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ.setdefault(_var, _value)

app = typer.Typer(
    help="Federated diabetes-risk pipeline: validate extracts in place, train across "
    "hospitals, track and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    callback=quiet_library_logs,  # before every command: libraries' INFO noise off
)
console = Console(log_path=False)
err_console = Console(stderr=True, log_path=False)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="federation config YAML")]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's own errors to exit code 2 and a message without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@_friendly
def synth(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/synthetic"),
    sites: Annotated[int, typer.Option(min=1, help="number of hospitals")] = 4,
    rows: Annotated[
        int | None,
        typer.Option(
            min=100,
            help="rows over all hospitals [default: 20000; with --append: an average month]",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    months: Annotated[int, typer.Option(min=1, help="follow-up-close months")] = 12,
    until: Annotated[str, typer.Option(help="last follow-up-close month, YYYY-MM")] = "2026-09",
    append: Annotated[
        bool, typer.Option("--append", help="add one month of newly closed follow-ups to OUT")
    ] = False,
    month: Annotated[
        str | None, typer.Option(help="with --append: the month, YYYY-MM [default: the next]")
    ] = None,
    drift_site: Annotated[
        str | None,
        typer.Option(help="with --append: this site's new patients are older and heavier"),
    ] = None,
) -> None:
    """Write synthetic hospital extracts and a federation config pointing at them, or
    (--append) a new month of them."""
    from pipeline.report import print_sites
    from pipeline.synth import append_month, synthesize

    if append:
        config = out / "federation.yaml"
        added, written = append_month(config, rows=rows, month=month, drift_site=drift_site)
        print_sites(console, written, config)
        console.print(
            f"appended follow-up month {added}"
            + (f" (drift at {drift_site})" if drift_site else "")
        )
        return
    config, written = synthesize(
        out, sites=sites, rows=rows or 20_000, seed=seed, months=months, until=until
    )
    print_sites(console, written, config)


@app.command("import-csv")
@_friendly
def import_csv(
    contract: Annotated[Path, typer.Option(help="contract YAML with a `source` section")],
    site: Annotated[
        list[str], typer.Option(help="NAME=PATH of one site's CSV file; repeat per site")
    ],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/imported"),
) -> None:
    """Turn each hospital's raw CSV into a site Parquet extract under the contract."""
    from pipeline.importer import import_csv as run_import
    from pipeline.report import print_sites

    sources = {}
    for item in site:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--site expects NAME=PATH, got {item!r}")
        sources[name] = Path(path)
    config, written = run_import(contract, sources, out)  # checks the names first
    print_sites(console, written, config)


@app.command()
@_friendly
def validate(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the redacted summaries")] = False,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="validate again, ignoring the sites' records")
    ] = False,
) -> None:
    """Validate every site's extract inside the site; exit 0 when the quorum holds. A
    site whose extract, contract and settings are unchanged since it was last validated
    answers from its validation records (--json counts its files: validated_files,
    recorded_files)."""
    from pipeline.config import load_config
    from pipeline.console import stdout_to_stderr
    from pipeline.report import print_validation, site_progress
    from pipeline.validation_job import run_validation

    cfg = load_config(config)
    out = err_console if as_json else console  # under --json, stdout holds the JSON alone
    with (
        stdout_to_stderr() if as_json else contextlib.nullcontext(),
        site_progress(out, "validating at the sites", len(cfg.sites)) as advance,
    ):
        summaries, admitted, quarantined = run_validation(
            cfg, ray_address=ray_address, on_site=advance, fresh=fresh
        )
    if as_json:
        import json

        print(json.dumps({s: v.to_dict() for s, v in summaries.items()}, indent=2))
    else:
        print_validation(console, summaries)
    if len(admitted) < cfg.quorum:
        err_console.print(
            f"[bold red]quorum not met:[/] {len(admitted)} of {len(cfg.sites)} sites passed, "
            f"{cfg.quorum} needed"
        )
        raise typer.Exit(1)
    out.print(f"[green]quorum met:[/] {len(admitted)} of {len(cfg.sites)} sites admitted")


def _train_help() -> str:
    listed = "\n\n".join(f"{s.name}: {s.summary}" for s in strategies.REGISTRY.values())
    return (
        "Train a global model across the sites, track it in MLflow, register it as the "
        "challenger and let the promotion gate decide whether it becomes the champion. "
        "The strategies (--model; default: the config's training.model):\n\n" + listed
    )


@app.command(help=_train_help())
@_friendly
def train(
    config: ConfigOpt,
    model: Annotated[str | None, typer.Option(help=strategies.help_text())] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="training rounds")] = None,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
) -> None:
    from pipeline.config import load_config
    from pipeline.job import run_job
    from pipeline.report import job_progress, print_job

    _check_strategies([model] if model else [])
    cfg = load_config(config)
    with job_progress(console) as (say, on_round):
        result = run_job(
            cfg,
            strategy=model,
            rounds=rounds,
            ray_address=ray_address,
            progress=say,
            on_round=on_round,
        )
    print_job(console, result)


def _check_strategies(names: list[str]) -> None:
    for name in names:
        if name not in strategies.names():
            raise typer.BadParameter(f"--model must be one of {', '.join(strategies.names())}")


def _retrain_help() -> str:
    from pipeline.retrain import EXIT_CODES

    codes = "\n\n".join(
        f"{code}: {status}: {what}" for code, (status, what) in sorted(EXIT_CODES.items())
    )
    return (
        "Scheduled retraining: train on newly closed follow-up months, measure drift, let "
        "the gate decide, write an audit record. For a scheduler: one run at a time, and "
        "exit codes to act on:\n\n" + codes
    )


@app.command(help=_retrain_help())
def retrain(
    config: ConfigOpt,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help=f"strategy to retrain (repeat; {strategies.help_text()}); default: "
            "retrain.strategies"
        ),
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the audit record")] = False,
) -> None:
    from pipeline.config import load_config
    from pipeline.console import stdout_to_stderr
    from pipeline.report import job_progress, print_retrain
    from pipeline.retrain import BAD_INPUT, run_retrain

    _check_strategies(model or [])
    try:
        cfg = load_config(config)
    except PipelineError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(BAD_INPUT) from None
    out = err_console if as_json else console
    with (
        stdout_to_stderr() if as_json else contextlib.nullcontext(),
        job_progress(out) as (say, on_round),
    ):
        result = run_retrain(
            cfg, strategies=model, ray_address=ray_address, progress=say, on_round=on_round
        )
    print_retrain(out, result)
    if as_json:
        import json

        print(json.dumps(result.record, indent=2, default=str))
    raise typer.Exit(result.code)


@app.command()
@_friendly
def budget(config: ConfigOpt) -> None:
    """Privacy budget per site: spent and remaining, from the persistent ledger."""
    from pipeline.config import load_config
    from pipeline.report import print_budget

    print_budget(console, load_config(config))


@app.command()
@_friendly
def models(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the versions as JSON")] = False,
) -> None:
    """Registered versions with their aliases, strategy, epsilon, sites, AUC and
    calibration, newest first."""
    from pipeline.config import load_config
    from pipeline.registry import list_versions, registry_client
    from pipeline.report import print_models

    cfg = load_config(config)
    rows = list_versions(registry_client(cfg.tracking_uri), cfg.mlflow.model_name)
    if as_json:
        import json

        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print_models(console, cfg.mlflow.model_name, rows)


@app.command()
@_friendly
def promote(
    config: ConfigOpt,
    version: Annotated[str, typer.Option(help="the version to make the champion")],
    reason: Annotated[str, typer.Option(help="why, for the record (required)")],
) -> None:
    """Make a version the champion by hand, past the gate; recorded as such."""
    from pipeline.config import load_config
    from pipeline.stages.promotion import promote as promote_version

    cfg = load_config(config)
    former = promote_version(cfg, version, reason)
    console.print(
        f"version [bold]{version}[/] is the champion (promoted by hand)"
        + (f"; version {former} is previous-champion" if former and former != version else "")
    )


@app.command()
@_friendly
def rollback(config: ConfigOpt) -> None:
    """Move the champion back to the previous champion."""
    from pipeline.config import load_config
    from pipeline.stages.promotion import rollback as roll_back

    restored, demoted = roll_back(load_config(config))
    console.print(
        f"version [bold]{restored}[/] is the champion again"
        + (f"; version {demoted} is previous-champion" if demoted else "")
    )


@app.command()
@_friendly
def demo(
    out: Annotated[Path, typer.Option(help="where the demo's synthetic data goes")] = Path(
        "data/demo"
    ),
    sites: Annotated[int, typer.Option(min=3)] = 4,
    rows: Annotated[int, typer.Option(min=1000)] = 40_000,
    seed: int = 0,
) -> None:
    """Run the whole pipeline on synthetic hospitals, with no configuration."""
    from pipeline.demo import run_demo

    run_demo(console, out=out, sites=sites, rows=rows, seed=seed)


@app.command()
@_friendly
def serve(
    config: ConfigOpt,
    alias: Annotated[str, typer.Option(help="registry alias to serve and follow")] = "champion",
    host: Annotated[str, typer.Option(help="address to bind (off loopback: token)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5001,
) -> None:
    """Serve the registered model to clinicians: REST, CDS Hooks and a page."""
    from pipeline.config import load_config
    from pipeline.serving.server import serve_config

    serve_config(load_config(config), alias=alias, host=host, port=port, console=console)


@app.command()
@_friendly
def score(
    patients: Annotated[Path, typer.Argument(help="patients.json or patients.csv")],
    url: Annotated[str, typer.Option(help="the service")] = "http://127.0.0.1:5001",
    token_file: Annotated[Path | None, typer.Option(help="bearer token file")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA bundle for an https service")] = None,
) -> None:
    """Score patients with a running service and print a table."""
    from pipeline.serving.client import score_file

    score_file(console, url, patients, token_file=token_file, cafile=cafile)


if __name__ == "__main__":  # pragma: no cover
    app()
