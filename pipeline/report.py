"""Console output for operators: rich tables, nothing computed here."""

from __future__ import annotations

from collections.abc import Sequence
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
