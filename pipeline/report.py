"""Console output for operators: rich tables, nothing computed here. Every table goes
through `print_table`, so a log written by no terminal holds it whole."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.console import print_table
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
    print_table(console, table)


@contextlib.contextmanager
def site_progress(console: Console, what: str, sites: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over the sites; yields the callback that advances it per site."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(what, total=sites)
        yield lambda site: bar.update(task, advance=1, description=f"{what} ({site} done)")


def print_validation(console: Console, summaries: dict) -> None:
    """Site, rows, files validated now and answered from the site's records, passed, and
    each failure with its column and rule."""
    table = Table(title="validation at the sites (redacted summaries)")
    table.add_column("site")
    table.add_column("rows", justify="right")
    table.add_column("files: validated / from records", justify="right")
    table.add_column("passed")
    table.add_column("failures (column: rule)")
    for site, s in summaries.items():
        failures = s.reasons()
        shown = "\n".join(escape(f) for f in failures[:6]) + (
            f"\n… {len(failures) - 6} more" if len(failures) > 6 else ""
        )
        table.add_row(
            site,
            f"{s.rows:,}",
            f"{s.validated_files} / {s.recorded_files}",
            "[green]yes[/]" if s.passed else "[red]no[/]",
            shown or "-",
        )
    print_table(console, table)


def print_job(console: Console, result) -> None:  # noqa: ANN001
    """The job's model on the held-out rows (overall, by site, by subgroup) and, when it
    was registered, the gate's decision with each criterion."""
    from pipeline.evaluation import Suppressed

    m = result.metrics
    table = Table(title=f"job {result.job_id} ({result.strategy}): held-out rows")
    for col in ("site / group", "AUC", "calibration slope", "epsilon spent"):
        table.add_column(col, justify="left" if col == "site / group" else "right")
    for site, auc in result.per_site.items():
        eps = result.privacy.get(site, (0.0, 0.0))[0]
        shown = "suppressed" if isinstance(auc, Suppressed) else f"{auc:.3f}"
        table.add_row(site, shown, "", f"{eps:g}")
    if result.evaluation is not None:
        for group, g in result.evaluation.subgroups.items():
            if isinstance(g, Suppressed):
                table.add_row(f"[dim]{group}", "suppressed", "", "")
            else:
                table.add_row(f"[dim]{group}", f"{g.auc:.3f}", f"{g.calibration_slope:.2f}", "")
    table.add_row(
        "[bold]all patients", f"[bold]{m.auc:.3f}", f"[bold]{m.calibration_slope:.2f}", ""
    )
    print_table(console, table)
    console.print(
        f"{m.n:,} patients · AUPRC {m.auprc:.3f} · Brier {m.brier:.4f} · log loss "
        f"{m.log_loss:.4f} · calibration-in-the-large {m.calibration_intercept:+.3f} · "
        f"O/E {m.oe_ratio:.2f}"
    )
    for site, why in result.dropped.items():
        console.print(f"[yellow]dropped[/] {site}: {escape(str(why))}")
    if result.model_version:
        console.print(
            f"registered version [bold]{result.model_version}[/], MLflow run {result.run_id}"
        )
    if result.decision is not None:
        print_decision(console, result.decision, result.model_version)


def print_decision(console: Console, decision, version: str | None) -> None:  # noqa: ANN001
    colour = "green" if decision.promote else "yellow"
    verdict = "is the new champion" if decision.promote else "stays challenger"
    console.print(f"[bold {colour}]gate: version {version} {verdict}[/]")
    for c in decision.criteria:
        mark = "[green]pass[/]" if c.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {c.name}: {escape(c.value)}  [dim](rule: {escape(c.rule)})[/]")


def print_models(console: Console, model_name: str, rows) -> None:  # noqa: ANN001
    """`pipeline models`: every version with its aliases and what it was judged on."""
    table = Table(title=f"registered versions of {model_name}")
    for col in (
        "version",
        "aliases",
        "strategy",
        "epsilon",
        "sites",
        "AUC",
        "cal. slope",
        "cal. intercept",
        "gate",
        "created",
    ):
        table.add_column(col, justify="right" if col in ("version", "epsilon", "AUC") else "left")
    for r in rows:
        t = r.tags
        gate = t.get("gate.decision", "-")
        failed = [
            k.removeprefix("gate.")
            for k, v in t.items()
            if k.startswith("gate.") and v.startswith("FAIL")
        ]
        if failed:
            gate += f" ({', '.join(sorted(failed))} failed)"
        if t.get("promotion") == "manual":
            gate += " (promoted by hand)"
        aliases = ", ".join(f"[bold]{a}[/]" if a == "champion" else a for a in r.aliases)
        table.add_row(
            r.version,
            aliases or "-",
            t.get("strategy", "-"),
            t.get("epsilon", "-"),
            str(len(t["sites"].split(","))) if t.get("sites") else "-",
            t.get("test_auc", "-"),
            t.get("calibration_slope", "-"),
            t.get("calibration_intercept", "-"),
            gate,
            r.created.replace("T", " ").removesuffix("+00:00"),
        )
    print_table(console, table)


def print_retrain(console: Console, result) -> None:  # noqa: ANN001
    """A retraining run: new months and drift per site, then each retrained model's
    gate decision, then the outcome with its exit code."""
    from pipeline.evaluation.drift import level

    record = result.record
    drift = (record.get("drift") or {}).get("sites", {})
    if record.get("sites"):
        table = Table(title="new follow-up months and drift (PSI against the champion's data)")
        for col in ("site", "new months", "most shifted features (PSI)", "taken part"):
            table.add_column(col)
        for site, info in record["sites"].items():
            psi = {f: v for f, v in drift.get(site, {}).items() if v is not None}
            top = sorted(psi.items(), key=lambda kv: -kv[1])[:4]
            shown = ", ".join(
                f"{'[red]' if level(v) == 'shifted' else ''}{f} {v:.2f}"
                f"{'[/]' if level(v) == 'shifted' else ''}"
                for f, v in top
            )
            left_out = record.get("left_out", {}).get(site)
            table.add_row(
                site,
                ", ".join(info.get("new", [])) or "-",
                shown or "-",
                "yes" if info.get("trained", True) and not left_out else f"no: {left_out}",
            )
        print_table(console, table)
    for job in result.jobs:
        console.print(f"{job.strategy}: version {job.model_version}, AUC {job.metrics.auc:.3f}")
        if job.decision is not None:
            print_decision(console, job.decision, job.model_version)
    colour = "green" if result.code == 0 else "yellow"
    console.print(
        f"[bold {colour}]{result.status}[/] (exit {result.code}): {result.message}",
        highlight=False,
    )


@contextlib.contextmanager
def job_progress(
    console: Console,
) -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None]]]:
    """(say, on_round) for a job: stage messages as timed lines, training rounds as one
    progress bar (made when the first round ends)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("training rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task: list = []

    def on_round(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("rounds", total=total))
        bar.update(task[0], completed=done, total=total)
        if done >= total:
            bar.stop()

    try:
        # Progress lines carry what the sites report (quarantine reasons, which name an
        # extract's columns): printed as text, never as markup.
        yield (lambda msg: console.log(escape(msg))), on_round
    finally:
        bar.stop()


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
    print_table(console, table)
