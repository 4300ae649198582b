"""Import raw site files (CSV) into contract-conformant Parquet extracts.

Driven by the contract's `source` section, so a new task's import is a YAML change: the
column order, missing-value markers, how the label is derived, and (for sources with no
patient key) a stable derived key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.config import SITE_NAME_RULE, valid_site_name
from pipeline.contract import COMPARISONS, Contract, load_contract
from pipeline.errors import ContractError, DataError
from pipeline.features import missing_mask
from pipeline.synth import SiteSummary, site_entry


def derived_key(contract: Contract, site: str, row: int) -> str:
    """Stable pseudonymous key for sources without one: the same file gives the same keys."""
    digest = hashlib.sha256(f"{contract.name}/{site}/{row}".encode()).hexdigest()
    return digest[:20]


def csv_to_table(contract: Contract, site: str, csv_path: Path) -> pa.Table:
    """One site's CSV as an Arrow table in the contract's schema."""
    src = contract.source
    if src is None:
        raise ContractError(f"{contract.path}: the contract has no `source` section to import by")
    try:
        raw = pd.read_csv(
            csv_path,
            header=0 if src.header else None,
            names=src.columns,
            na_values=src.na_values,
            keep_default_na=True,
        )
    except FileNotFoundError as exc:
        raise DataError(f"{csv_path}: file not found") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({exc})") from exc
    if raw.empty:
        raise DataError(f"{csv_path}: no rows")

    columns: dict[str, pa.Array] = {}
    if contract.key.derive == "hash":
        columns[contract.key.name] = pa.array(
            [derived_key(contract, site, i) for i in range(len(raw))]
        )
    for f in contract.features:
        if f.name not in raw:
            raise DataError(f"{csv_path}: source has no column {f.name!r}")
        values = raw[f.name] if f.dtype == "string" else _numbers(raw[f.name], f.name, csv_path)
        values = values.mask(missing_mask(f, values))
        try:
            columns[f.name] = pa.array(values, from_pandas=True).cast(f.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
            # Arrow's message quotes the cell: a patient's value never goes in an error.
            raise DataError(
                f"{csv_path}: column {f.name!r} does not fit the contract's {f.dtype} "
                "(a value out of its type's range or precision)"
            ) from None
    rule = src.label_from
    if rule is None:
        raise ContractError(f"{contract.path}: source.label_from is required to derive the label")
    label_src = _numbers(raw[rule.column], rule.column, csv_path)
    if label_src.isna().any():
        raise DataError(f"{csv_path}: column {rule.column!r} has missing labels")
    label = np.where(
        COMPARISONS[rule.op](label_src, rule.value),
        contract.label.positive,
        contract.label.negative,
    )
    columns[contract.label.name] = pa.array(
        label, type=contract.arrow_schema.field(contract.label.name).type
    )
    schema = contract.arrow_schema
    return pa.table([columns[f.name] for f in schema], schema=schema)


def _numbers(values: pd.Series, column: str, csv_path: Path) -> pd.Series:
    """A column as numbers; cells that are there but are not numbers are reported (file,
    column, how many rows and the first row numbers), never silently made missing and
    never quoted."""
    numbers = pd.to_numeric(values, errors="coerce")
    unreadable = numbers.isna() & values.notna()
    if unreadable.any():
        rows = (np.flatnonzero(unreadable.to_numpy()) + 1).tolist()
        first = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise DataError(
            f"{csv_path}: column {column!r} has {len(rows)} row(s) whose value is not a "
            f"number nor a missing-value marker (data rows {first})"
        )
    return numbers


def import_csv(
    contract_path: str | Path, sources: dict[str, Path], out: str | Path
) -> tuple[Path, list[SiteSummary]]:
    """Write one Parquet extract per site under `out` and a federation config."""
    bad = [name for name in sources if not valid_site_name(name)]
    if bad:  # checked before any path is made from a name
        raise DataError(f"--site {', '.join(repr(b) for b in bad)}: {SITE_NAME_RULE}")
    contract = load_contract(contract_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sites = []
    written = []
    for site, csv_path in sources.items():
        table = csv_to_table(contract, site, Path(csv_path))
        folder = out / site
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet", compression="zstd")
        sites.append(site_entry(site, folder))
        positives = int((contract.labels(table.select([contract.label.name]).to_pandas())).sum())
        written.append(SiteSummary(site, folder, table.num_rows, positives))
    config = {
        "federation": f"{contract.name}-import",
        "contract": str(Path(contract_path).resolve()),
        "sites": sites,
        "validation": {"min_rows": 50},
        # One registered model per task: a heart-disease model never becomes a version
        # of the diabetes model.
        "mlflow": {"model_name": f"{contract.name.replace('_', '-')}-risk"},
    }
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path, written
