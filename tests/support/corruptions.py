"""A corpus of ways a hospital extract goes wrong, each applied to a copy of a clean one.

Every corruption reads a clean site extract (`src`), breaks it one way, writes the result
under `dst` and returns the path to validate. It declares what a useful rejection names:
the column (or None for a file-level problem, which must name the file instead) and a
fragment of the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.extract import read_table

Maker = Callable[[Path, Path], Path]


@dataclass(frozen=True)
class Corruption:
    name: str
    make: Maker
    column: str | None  # the failure starts "column: " ("table: "); None: names the file
    rule: str  # a fragment of the rule the failure must state

    def __str__(self) -> str:  # readable pytest ids
        return self.name


def write(table: pa.Table, dst: Path) -> Path:
    """One-file extract folder (the layout a site may well ship)."""
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "part-0.parquet")
    return dst


def rows_where(n: int, every: int = 7, offset: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[offset::every] = True
    return mask


def set_values(table: pa.Table, name: str, values: pa.Array | np.ndarray | list) -> pa.Table:
    """Replace one column, keeping its place and (unless the values force it) its type."""
    i = table.schema.get_field_index(name)
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    return table.set_column(i, name, arr)


def replace_where(table: pa.Table, name: str, mask: np.ndarray, value: object) -> pa.Table:
    col = table[name].combine_chunks()
    new = pc.if_else(pa.array(mask), pa.scalar(value, type=col.type), col)
    return set_values(table, name, new)


def scale(table: pa.Table, name: str, factor: float, offset: float = 0.0) -> pa.Table:
    col = table[name].combine_chunks()
    return set_values(table, name, pc.add(pc.multiply(col, factor), offset))


def _with(transform: Callable[[pa.Table], pa.Table]) -> Maker:
    def make(src: Path, dst: Path) -> Path:
        return write(transform(read_table(src)), dst)

    return make


def _label(table: pa.Table) -> np.ndarray:
    return table["diabetes_5y"].to_numpy(zero_copy_only=False).astype(float)


def _leak_into_hdl(table: pa.Table) -> pa.Table:
    """HDL secretly derived from the outcome: inside its range, almost perfectly predictive."""
    y = _label(table)
    noise = np.random.default_rng(5).normal(0, 1.0, len(y))
    return set_values(table, "hdl", np.round(45 + 30 * y + noise, 0))


def _leak_column(table: pa.Table) -> pa.Table:
    y = _label(table)
    noise = np.random.default_rng(6).normal(0, 0.05, len(y))
    return table.append_column("outcome_score", pa.array(y + noise))


def _leak_string_column(table: pa.Table) -> pa.Table:
    """A discharge code that is only filled in for the cases: text, and missing otherwise."""
    y = _label(table)
    return table.append_column("discharge_code", pa.array(["E11" if v else None for v in y]))


def _duplicate_keys(table: pa.Table) -> pa.Table:
    keys = table["patient_key"].to_pylist()
    for i in range(1, len(keys), 10):
        keys[i] = keys[i - 1]
    return set_values(table, "patient_key", pa.array(keys, pa.string()))


def _mixed_partitions(src: Path, dst: Path) -> Path:
    """Two partition files that disagree on a column's physical type."""
    table = read_table(src)
    half = table.num_rows // 2
    first, second = table.slice(0, half), table.slice(half)
    second = set_values(second, "age", second["age"].combine_chunks().cast(pa.int64()))
    for part, name in ((first, "followup_month=2026-01"), (second, "followup_month=2026-02")):
        (dst / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, dst / name / "part-0.parquet")
    return dst


def _partition_lacks_column(src: Path, dst: Path) -> Path:
    """One partition file of two lost a column (read together it would look like nulls)."""
    table = read_table(src)
    half = table.num_rows // 2
    first, second = table.slice(0, half), table.slice(half).drop_columns(["hba1c"])
    for part, name in ((first, "followup_month=2026-01"), (second, "followup_month=2026-02")):
        (dst / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, dst / name / "part-0.parquet")
    return dst


def _empty(src: Path, dst: Path) -> Path:
    return write(read_table(src).slice(0, 0), dst)


def _not_parquet(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "part-0.parquet").write_text("patient_key,age\nabc,50\n")
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    write(read_table(src), dst)
    f = dst / "part-0.parquet"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return dst


def _missing_path(src: Path, dst: Path) -> Path:
    return dst / "no-such-extract"


def _single_file(src: Path, dst: Path) -> Path:
    """A zero-byte file passed as the extract itself."""
    dst.mkdir(parents=True, exist_ok=True)
    f = dst / "extract.parquet"
    f.write_bytes(b"")
    return f


def _nulls(name: str, every: int) -> Callable[[pa.Table], pa.Table]:
    def transform(table: pa.Table) -> pa.Table:
        mask = rows_where(table.num_rows, every)
        col = table[name].combine_chunks()
        return set_values(
            table, name, pc.if_else(pa.array(mask), pa.nulls(len(col), col.type), col)
        )

    return transform


CORRUPTIONS: list[Corruption] = [
    Corruption(
        "missing_column", _with(lambda t: t.drop_columns(["bmi"])), "bmi", "column required"
    ),
    Corruption(
        "age_as_string",
        _with(lambda t: set_values(t, "age", t["age"].combine_chunks().cast(pa.string()))),
        "age",
        "physical type int16",
    ),
    Corruption(
        "sbp_as_int64",
        _with(lambda t: set_values(t, "sbp", t["sbp"].combine_chunks().cast(pa.int64()))),
        "sbp",
        "physical type double",
    ),
    Corruption(
        "mixed_partition_types",
        _mixed_partitions,
        None,
        "column 'age' has physical type int64, the contract requires int16 (rule: column type)",
    ),
    Corruption(
        "bmi_out_of_range",
        _with(lambda t: replace_where(t, "bmi", rows_where(t.num_rows, 50), 250.0)),
        "bmi",
        "range [12, 70] kg/m2",
    ),
    Corruption(
        "age_out_of_range",
        _with(lambda t: replace_where(t, "age", rows_where(t.num_rows, 40), 150)),
        "age",
        "range [18, 90] years",
    ),
    Corruption(
        "bad_category",
        _with(lambda t: replace_where(t, "sex", rows_where(t.num_rows, 9), "M")),
        "sex",
        "categories ['female', 'male']",
    ),
    Corruption("too_many_nulls", _with(_nulls("bmi", 3)), "bmi", "missing rate <= 0.1"),
    Corruption("nulls_in_non_nullable", _with(_nulls("age", 25)), "age", "not null"),
    Corruption("null_labels", _with(_nulls("diabetes_5y", 30)), "diabetes_5y", "not null"),
    Corruption("null_keys", _with(_nulls("patient_key", 30)), "patient_key", "not null"),
    Corruption("duplicate_keys", _with(_duplicate_keys), "patient_key", "unique"),
    Corruption(
        "single_label_class",
        _with(lambda t: set_values(t, "diabetes_5y", pa.array(np.zeros(t.num_rows, np.int8)))),
        "diabetes_5y",
        "both label classes",
    ),
    Corruption(
        "identifier_ssn",
        _with(
            lambda t: t.append_column(
                "ssn", pa.array([f"123-45-{i:04d}" for i in range(t.num_rows)])
            )
        ),
        "ssn",
        "identifiers_denylist",
    ),
    Corruption(
        "identifier_mrn_upper_case",
        _with(lambda t: t.append_column("MRN", pa.array(np.arange(t.num_rows)))),
        "MRN",
        "identifiers_denylist",
    ),
    Corruption(
        "unknown_extra_column",
        _with(lambda t: t.append_column("favourite_colour", pa.array(["blue"] * t.num_rows))),
        "favourite_colour",
        "unknown column",
    ),
    Corruption(
        "glucose_in_mmol_per_l",
        _with(lambda t: scale(t, "fasting_glucose", 1 / 18.016)),
        "fasting_glucose",
        "median outside plausible range [70, 120] for mg/dL: unit looks wrong",
    ),
    Corruption(
        "hba1c_in_mmol_per_mol",
        _with(lambda t: scale(t, "hba1c", 10.929, -10.929 * 2.15)),
        "hba1c",
        "median outside plausible range [4.5, 6.3] for %: unit looks wrong",
    ),
    Corruption(
        "bmi_holding_height_in_metres",
        _with(lambda t: scale(t, "bmi", 0.0, 1.72)),
        "bmi",
        "for kg/m2: unit looks wrong",
    ),
    Corruption(
        "cohort_hba1c_7",
        _with(lambda t: replace_where(t, "hba1c", rows_where(t.num_rows, 20), 7.0)),
        "hba1c",
        "cohort: rows with hba1c >= 6.5 must be excluded",
    ),
    Corruption(
        "cohort_hba1c_at_threshold",
        _with(lambda t: replace_where(t, "hba1c", rows_where(t.num_rows, 20), 6.5)),
        "hba1c",
        "cohort: rows with hba1c >= 6.5 must be excluded",
    ),
    Corruption(
        "cohort_paediatric",
        _with(lambda t: replace_where(t, "age", rows_where(t.num_rows, 30), 12)),
        "age",
        "cohort: rows with age < 18 must be excluded",
    ),
    Corruption("leakage_in_contract_column", _with(_leak_into_hdl), "hdl", "label leakage"),
    Corruption("leakage_extra_column", _with(_leak_column), "outcome_score", "label leakage"),
    Corruption(
        "leakage_text_column", _with(_leak_string_column), "discharge_code", "label leakage"
    ),
    Corruption("too_few_rows", _with(lambda t: t.slice(0, 50)), "table", "at least 100 rows"),
    Corruption(
        "partition_lacks_column",
        _partition_lacks_column,
        "hba1c",
        "missing in partition file followup_month=2026-02",
    ),
    Corruption("empty_file", _empty, None, "zero rows"),
    Corruption("not_parquet", _not_parquet, None, "not a readable Parquet file"),
    Corruption("truncated_parquet", _truncated, None, "not a readable Parquet file"),
    Corruption("zero_byte_file", _single_file, None, "not a readable Parquet file"),
    Corruption("missing_path", _missing_path, None, "extract not found"),
]
