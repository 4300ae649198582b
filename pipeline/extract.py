"""Reading a site's Parquet extract. Runs inside the site: nothing here leaves it.

Every way a file can be unreadable becomes a :class:`DataError` that names the path and
what is wrong, so one broken extract is reported, not raised through the whole job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline.errors import DataError

if TYPE_CHECKING:  # imported where files are read, not by a site that only lists them
    import pandas as pd


def beside(extract: str | Path, suffix: str) -> Path:
    """A file the site keeps beside its extract (``<extract>.<suffix>``): its identity,
    policy, pins, ledger, audit log, trained months and validation report."""
    extract = Path(extract)
    return extract.parent / f"{extract.name}.{suffix}"


@dataclass(frozen=True)
class Window:
    """The partitions a job reads: those whose hive partition `key` (``key=value``
    folders) is before `before`. Partitions are follow-up-close months (YYYY-MM), which
    sort as strings, so "before the current month" means "closed"."""

    key: str
    before: str

    def admits(self, relative: Path) -> bool:
        value = _value(relative, self.key)
        return value is None or value < self.before


def current_month() -> str:
    """This month (UTC) as YYYY-MM: partitions of earlier months are closed."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m")


def list_partitions(path: str | Path, window: Window | None = None) -> list[str]:
    """Parquet files of an extract (a file, or a hive-partitioned folder), sorted; with
    `window`, only the files of partitions inside it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: extract not found")
    if path.is_file():
        return [str(path)]
    files = sorted(
        str(p)
        for p in path.rglob("*.parquet")
        if window is None or window.admits(p.relative_to(path))
    )
    if not files:
        within = f" before {window.key}={window.before}" if window else ""
        raise DataError(f"{path}: no Parquet files in the extract folder{within}")
    return files


def partition_values(path: str | Path, key: str, window: Window | None = None) -> tuple[str, ...]:
    """The sorted values of hive partition `key` (``key=value`` folders) among an
    extract's files (inside `window`); empty for a single file or an unpartitioned folder."""
    root = Path(path)
    if not root.is_dir():
        return ()
    values = {_value(Path(f).relative_to(root), key) for f in list_partitions(root, window)}
    return tuple(sorted(v for v in values if v is not None))


@dataclass(frozen=True)
class Part:
    """One file of an extract as read: its name within the extract, the SHA-256 of the
    very bytes its rows were parsed from (so the two cannot disagree), and its rows."""

    name: str
    file: str
    digest: str
    table: pa.Table


def read_parts(path: str | Path, window: Window | None = None) -> list[Part]:
    """Every file of the extract (inside `window`), in listing order, each read whole."""
    import hashlib

    import pyarrow.parquet as pq

    root = Path(path)
    parts = []
    for f in list_partitions(root, window):
        name = str(Path(f).relative_to(root)) if root.is_dir() else Path(f).name
        try:
            data = Path(f).read_bytes()
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({_short(exc)})") from exc
        parts.append(Part(name, f, hashlib.sha256(data).hexdigest(), table))
    return parts


def concat_parts(path: str | Path, tables: list[pa.Table]) -> pa.Table:
    """The files' rows as one table (a column one file lacks is null there)."""
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{path}: partitions have incompatible schemas ({_short(exc)})") from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: the extract has zero rows")
    return table


def read_table(
    path: str | Path, schema: pa.Schema | None = None, window: Window | None = None
) -> pa.Table:
    """The extract as one Arrow table (hive partition keys are not columns); with
    `window`, only the partitions inside it.

    With `schema`, each file's physical type is checked per column so a file whose column
    has the wrong type is named, not silently cast.
    """
    files = list_partitions(path, window)
    return concat_parts(path, [_read_file(f, schema) for f in files])


def read_months(
    path: str | Path, key: str, values: set[str] | list[str], schema: pa.Schema | None = None
) -> pd.DataFrame:
    """The rows of the partitions whose `key` is one of `values` (possibly none: an empty
    frame with the schema's columns)."""
    root, wanted = Path(path), set(values)
    files = [
        f
        for f in list_partitions(root)
        if root.is_dir() and _value(Path(f).relative_to(root), key) in wanted
    ]
    if not files:
        import pandas as pd

        return pd.DataFrame({n: [] for n in (schema.names if schema is not None else [])})
    tables = [_read_file(f, schema) for f in files]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _read_file(file: str, schema: pa.Schema | None) -> pa.Table:
    """One Parquet file's rows (DataError naming it when it cannot be read); with
    `schema`, each column's physical type checked against it."""
    import pyarrow.dataset as ds

    try:
        table = ds.dataset(file, format="parquet").to_table()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataError(f"{file}: not a readable Parquet file ({_short(exc)})") from exc
    if schema is not None:
        check_types(file, table.schema, schema)
    return table


def _value(relative: Path, key: str) -> str | None:
    for part in relative.parts[:-1]:
        name, sep, value = part.partition("=")
        if sep and name == key:
            return value
    return None


def read_frame(
    path: str | Path, schema: pa.Schema | None = None, window: Window | None = None
) -> pd.DataFrame:
    return read_table(path, schema, window).to_pandas()


def check_types(file: str, actual: pa.Schema, expected: pa.Schema) -> None:
    """A file's column whose physical type is not the contract's, named (DataError)."""
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0:
            continue  # a missing column is the validation suite's finding, with its rule
        got = actual.field(idx).type
        if got != field.type and not (pa.types.is_null(got)):
            raise DataError(
                f"{file}: column {field.name!r} has physical type {got}, "
                f"the contract requires {field.type} (rule: column type)"
            )


def _short(exc: Exception) -> str:
    """Arrow's message without any file contents it may quote."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
