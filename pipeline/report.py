"""Console output for operators: rich tables, nothing computed here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.synth import SiteSummary


def print_sites(console: Console, sites: Sequence[SiteSummary], config: Path) -> None:
    table = Table(title=f"site extracts ({config})")
    table.add_column("site")
    table.add_column("rows", justify="right")
    table.add_column("prevalence", justify="right")
    table.add_column("path")
    for s in sites:
        prevalence = s.positives / s.rows if s.rows else float("nan")
        table.add_row(s.name, f"{s.rows:,}", f"{prevalence:.1%}", str(s.path))
    console.print(table)


@contextlib.contextmanager
def site_progress(console: Console, what: str, sites: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over the sites; yields the callback that advances it per site."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(what, total=sites)
        yield lambda site: bar.update(task, advance=1, description=f"{what} ({site} done)")


def print_validation(console: Console, summaries: dict) -> None:
    """Site, rows, passed, and each failure with its column and rule."""
    table = Table(title="validation at the sites (redacted summaries)")
    table.add_column("site")
    table.add_column("rows", justify="right")
    table.add_column("passed")
    table.add_column("failures (column: rule)")
    for site, s in summaries.items():
        failures = s.reasons()
        shown = "\n".join(failures[:6]) + (
            f"\n… {len(failures) - 6} more" if len(failures) > 6 else ""
        )
        table.add_row(
            site, f"{s.rows:,}", "[green]yes[/]" if s.passed else "[red]no[/]", shown or "-"
        )
    console.print(table)


def print_job(console: Console, result) -> None:  # noqa: ANN001
    m = result.metrics
    table = Table(title=f"job {result.job_id} ({result.strategy})")
    table.add_column("site")
    table.add_column("held-out rows", justify="right")
    table.add_column("AUC", justify="right")
    table.add_column("epsilon spent", justify="right")
    for site, sm in result.per_site.items():
        eps = result.privacy.get(site, (0.0, 0.0))[0]
        table.add_row(site, f"{sm.n:,}", f"{sm.auc:.3f}", f"{eps:g}")
    table.add_row("[bold]all sites", f"[bold]{m.n:,}", f"[bold]{m.auc:.3f}", "")
    console.print(table)
    console.print(
        f"log loss {m.log_loss:.4f} · Brier {m.brier:.4f} · prevalence {m.prevalence:.3f} · "
        f"mean predicted {m.mean_predicted:.3f}"
    )
    for site, why in result.dropped.items():
        console.print(f"[yellow]dropped[/] {site}: {why}")
    if result.model_version:
        console.print(
            f"registered version [bold]{result.model_version}[/] (alias challenger), "
            f"MLflow run {result.run_id}"
        )


def print_budget(console: Console, cfg) -> None:  # noqa: ANN001
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    table = Table(title=f"privacy budget ({cfg.privacy.ledger})")
    for col in ("site", "epsilon spent", "delta spent", "budget", "remaining", "jobs"):
        table.add_column(col, justify="right" if col != "site" else "left")
    for site in cfg.sites:
        eps, delta = ledger.spent(site.name)
        budget = cfg.site_budget(site.name)
        jobs = len({e["job_id"] for e in ledger.entries(site.name)})
        table.add_row(
            site.name,
            f"{eps:g}",
            f"{delta:g}",
            f"{budget:g}",
            f"{ledger.remaining(site.name, budget):g}",
            str(jobs),
        )
    console.print(table)
