"""Synthetic federations on disk: every hospital's extract in the contract's schema, one
Parquet file per follow-up month, and the federation config that names them (each site's
identity key pinned); later months appended the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import yaml

from pipeline.config import DEFAULT_CONTRACT
from pipeline.contract import load_contract
from pipeline.errors import DataError
from pipeline.synth.population import (
    add_months,
    close_months,
    generate_site,
    site_names,
    site_profiles,
)


@dataclass(frozen=True)
class SiteSummary:
    """What a data-generating step wrote for one site (for the operator's console)."""

    name: str
    path: Path
    rows: int
    positives: int


def write_site(
    table: pa.Table, month_idx: np.ndarray, closes: list[tuple[int, int]], out: Path, partition: str
) -> None:
    """Write one Parquet file per follow-up-close month (hive layout)."""
    bounds = np.searchsorted(month_idx, np.arange(len(closes) + 1))
    for i, (y, m) in enumerate(closes):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        if part.num_rows == 0:
            continue
        folder = out / f"{partition}={y:04d}-{m:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, folder / "part-0.parquet", compression="zstd")


def synthesize(
    out: str | Path,
    *,
    sites: int = 4,
    rows: int = 20_000,
    seed: int = 0,
    months: int = 12,
    until: str = "2026-09",
    contract_path: str | Path = DEFAULT_CONTRACT,
    sizes: Sequence[int] | None = None,
    site_effects: Sequence[float] | None = None,
) -> tuple[Path, list[SiteSummary]]:
    """Write `sites` hospital extracts under `out` plus `out/federation.yaml`.

    `sizes` fixes each site's row count (then `rows` is ignored) and `site_effects` each
    site's unmeasured effect on the log-odds (sets its prevalence; drawn from N(0, 0.25)
    otherwise), for federations shaped like a benchmark needs them. Returns the config
    path and what was written per site. Deterministic: the same arguments give
    byte-identical files.
    """
    contract = load_contract(contract_path)
    if contract.cohort.follow_up_months is None or contract.cohort.partition is None:
        raise ValueError(f"{contract_path}: synthetic data needs a follow-up and partition key")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    closes = close_months(until, months)
    if sizes is not None:
        if len(sizes) != sites or min(sizes) < 100:
            raise ValueError("sizes: one row count of at least 100 per site")
        rows = int(sum(sizes))
    profiles = site_profiles(sites, rows, rng)
    if sizes is not None:
        profiles = [replace(p, rows=int(n)) for p, n in zip(profiles, sizes, strict=True)]
    if site_effects is not None:
        if len(site_effects) != sites:
            raise ValueError("site_effects: one value per site")
        effects = zip(profiles, site_effects, strict=True)
        profiles = [replace(p, site_effect=float(e)) for p, e in effects]
    site_rngs = rng.spawn(len(profiles))
    written = []
    for profile, site_rng in zip(profiles, site_rngs, strict=True):
        table, month_idx = generate_site(profile, contract, closes, site_rng)
        write_site(table, month_idx, closes, out / profile.name, contract.cohort.partition)
        positives = int(pa.compute.sum(table[contract.label.name]).as_py())
        written.append(SiteSummary(profile.name, out / profile.name, table.num_rows, positives))
    config = {
        "federation": f"synthetic-{sites}x{rows}-seed{seed}",
        "contract": str(Path(contract_path).resolve()),
        "sites": [site_entry(p.name, out / p.name) for p in profiles],
        "training": {"seed": seed},
    }
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path, written


def site_entry(name: str, extract: Path) -> dict:
    """A config entry for a site, pinning the identity key created at the site; the site
    gets its own policy file beside the extract (the defaults, for the hospital to edit)
    unless it has one."""
    from pipeline.protocol.identity import load_or_create_identity, public_hex
    from pipeline.site.policy import read_policy

    read_policy(extract)
    return {
        "name": name,
        "path": name,
        "identity_key": public_hex(load_or_create_identity(extract)),
    }


# An older, heavier population at one site: what ageing catchments and obesity trends do.
DRIFT_AGE_YEARS = 15.0
DRIFT_BMI = 4.0


def append_month(
    config: str | Path,
    *,
    rows: int | None = None,
    month: str | None = None,
    drift_site: str | None = None,
) -> tuple[str, list[SiteSummary]]:
    """Append one month of newly closed follow-ups to a synthetic federation made by
    :func:`synthesize`: a new ``followup_month=<month>`` partition at every site.

    `month` defaults to the month after the newest one present; `rows` (over all sites,
    split as the sites' sizes are) to the federation's average month. `drift_site` draws
    that site's new patients from an older, heavier population (+15 years of mean age,
    +4 kg/m2 BMI). The same federation, month and options give the same files. Returns
    the month and what was written per site."""
    from pipeline.config import load_config
    from pipeline.extract import partition_values, read_table

    cfg = load_config(config)
    contract = load_contract(cfg.contract)
    key = contract.cohort.partition
    names = [s.name for s in cfg.sites]
    if key is None or names != site_names(len(names)):
        raise DataError(
            f"{config}: appending a month needs a synthetic federation made by "
            "`pipeline synth` (its sites and partitions)"
        )
    months = sorted({m for s in cfg.sites for m in partition_values(s.path, key)})
    if month is None:
        y, m = (int(x) for x in months[-1].split("-"))
        month = "{:04d}-{:02d}".format(*add_months(y, m, 1))
    if month in months:
        raise DataError(f"{config}: the sites already hold {key}={month}; nothing appended")
    if rows is None:
        total = sum(read_table(s.path).num_rows for s in cfg.sites)
        rows = max(100 * len(names), total // max(len(months), 1))
    if drift_site is not None and drift_site not in names:
        raise DataError(f"--drift-site {drift_site!r} is not a site of {config} ({names})")
    seed = cfg.training.seed
    profiles = site_profiles(len(names), rows, np.random.default_rng(seed))
    y, m = (int(x) for x in month.split("-"))
    site_rngs = np.random.default_rng([seed, y, m]).spawn(len(profiles))
    written = []
    for profile, site_rng, site in zip(profiles, site_rngs, cfg.sites, strict=True):
        if profile.name == drift_site:
            profile = replace(
                profile, age_mean=profile.age_mean + DRIFT_AGE_YEARS, bmi_shift=DRIFT_BMI
            )
        table, month_idx = generate_site(profile, contract, [(y, m)], site_rng)
        write_site(table, month_idx, [(y, m)], site.path, key)
        positives = int(pa.compute.sum(table[contract.label.name]).as_py())
        written.append(SiteSummary(profile.name, site.path, table.num_rows, positives))
    return month, written
