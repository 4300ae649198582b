"""`pipeline` command line. Each command parses its options, calls one function of the
package, and turns the project's errors into a readable message and an exit code."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

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
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="federation config YAML")]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's own errors to exit code 2 and a message without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@_friendly
def synth(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/synthetic"),
    sites: Annotated[int, typer.Option(min=1, help="number of hospitals")] = 4,
    rows: Annotated[int, typer.Option(min=100, help="rows over all hospitals")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    months: Annotated[int, typer.Option(min=1, help="follow-up-close months")] = 12,
    until: Annotated[str, typer.Option(help="last follow-up-close month, YYYY-MM")] = "2026-09",
) -> None:
    """Write synthetic hospital extracts and a federation config pointing at them."""
    from pipeline.report import print_sites
    from pipeline.synth import synthesize

    config, written = synthesize(out, sites=sites, rows=rows, seed=seed, months=months, until=until)
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
    config, written = run_import(contract, sources, out)
    print_sites(console, written, config)


@app.command()
@_friendly
def validate(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the redacted summaries")] = False,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
) -> None:
    """Validate every site's extract inside the site; exit 0 when the quorum holds."""
    from pipeline.config import load_config
    from pipeline.report import print_validation, site_progress
    from pipeline.validation_job import run_validation

    cfg = load_config(config)
    with site_progress(console, "validating at the sites", len(cfg.sites)) as advance:
        summaries, admitted, quarantined = run_validation(
            cfg, ray_address=ray_address, on_site=advance
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
    console.print(f"[green]quorum met:[/] {len(admitted)} of {len(cfg.sites)} sites admitted")


@app.command()
@_friendly
def train(
    config: ConfigOpt,
    model: Annotated[
        str | None, typer.Option(help="logistic | dp-logistic | dp-fedavg | xgboost")
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="training rounds")] = None,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
) -> None:
    """Train a global model across the sites, track it in MLflow and register it."""
    from pipeline.config import STRATEGIES, load_config
    from pipeline.job import run_job
    from pipeline.report import print_job

    if model is not None and model not in STRATEGIES:
        raise typer.BadParameter(f"--model must be one of {', '.join(STRATEGIES)}")
    cfg = load_config(config)
    result = run_job(
        cfg,
        strategy=model,
        rounds=rounds,
        ray_address=ray_address,
        progress=lambda msg: console.log(msg),
    )
    print_job(console, result)


@app.command()
@_friendly
def budget(config: ConfigOpt) -> None:
    """Privacy budget per site: spent and remaining, from the persistent ledger."""
    from pipeline.config import load_config
    from pipeline.report import print_budget

    print_budget(console, load_config(config))


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
    from pipeline.serving.app import serve_config

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
