"""`pipeline demo`: every stage that exists, on synthetic hospitals, with no configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.report import print_sites
from pipeline.synth import synthesize


def run_demo(console: Console, *, out: Path, sites: int, rows: int, seed: int) -> None:
    console.rule("[bold]1. synthetic hospitals")
    config, written = synthesize(out, sites=sites, rows=rows, seed=seed)
    print_sites(console, written, config)
