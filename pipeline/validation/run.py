"""Running the suite with Great Expectations on a site's rows, and the site's Data Docs.

The full result, with GE's example values, is written beside the extract for the site's
staff; only the counts :func:`row_counts` reads from it are kept, and the allow-listed summary
built from them leaves the site.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.contract import Contract
from pipeline.extract import beside
from pipeline.validation.counts import RowCounts
from pipeline.validation.gx import import_gx

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx

_DOCS_SITE = "site_validation"


def default_docs_dir(path: str | Path) -> Path:
    """Where the site's full validation report goes: beside the extract."""
    return beside(path, "validation")


def ge_frame(table: pa.Table, contract: Contract, typed: set[str]) -> pd.DataFrame:
    """The rows as Great Expectations' pandas engine runs fastest on them.

    GE filters the whole frame once or twice per expectation, so every column must be cheap
    to take: one chunk per column, the contract's categories as pandas categoricals,
    integers as int64 (GE's vectorized range check), booleans with nulls as float, dates as
    datetime64. Values that are one of a feature's missing codes become missing. Values are
    otherwise unchanged.
    """
    for i, name in enumerate(table.column_names):
        col = table[name]
        if col.num_chunks > 1 and (
            pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        ):
            table = table.set_column(i, name, pa.chunked_array([col.combine_chunks()]))
    features = {f.name: f for f in contract.features}
    df = table.to_pandas(date_as_object=False)
    for name in table.column_names:
        typ = table.schema.field(name).type
        f = features.get(name)
        if pa.types.is_null(typ):
            df[name] = pd.Series(np.nan, index=df.index, dtype="float64")
        elif f is not None and f.kind == "categorical" and pa.types.is_string(typ):
            df[name] = table[name].dictionary_encode().to_pandas()
        elif pa.types.is_integer(typ) and df[name].dtype != np.int64:
            df[name] = df[name].astype(np.float64 if table[name].null_count else np.int64)
        elif pa.types.is_boolean(typ) and table[name].null_count:
            df[name] = table[name].cast(pa.float64()).to_pandas()
        if f is not None and f.missing_codes and name in typed:
            df[name] = df[name].mask(df[name].isin(f.missing_codes))
    return df


def row_counts(result: Any, n: int) -> list[RowCounts]:
    """GE's result for a suite of `n` row-by-row expectations -> their counts, in the
    suite's order (``meta["index"]``). Observed values, unexpected lists and exception
    messages are never read: they may quote row values."""
    out = [RowCounts(raised=True)] * n  # an expectation GE dropped could not be evaluated
    for r in result.results:
        out[int(r.expectation_config.meta["index"])] = RowCounts.from_ge(r)
    return out


def run_suite(
    df: pd.DataFrame, suite: gx.ExpectationSuite, docs_dir: Path | None
) -> tuple[Any, str | None]:
    """Validate with an ephemeral context; build Data Docs into `docs_dir`."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            _DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    batch_def = (
        context.data_sources.add_pandas("site")
        .add_dataframe_asset("extract")
        .add_batch_definition_whole_dataframe("whole extract")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="contract", data=batch_def, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "BASIC", "partial_unexpected_count": 20},
    )
    docs_error = None
    if docs_dir is not None:
        try:
            docs_dir.mkdir(parents=True, exist_ok=True)
            (docs_dir / "validation_result.json").write_text(
                json.dumps(result.to_json_dict(), indent=2, default=str)
            )
            # Only this run's validation page (and the index): the suite page adds nothing
            # the validation page does not show, and rendering it costs seconds.
            keys = context.validation_results_store.list_keys()
            context.build_data_docs(site_names=[_DOCS_SITE], resource_identifiers=keys)
        except Exception as exc:  # docs are a courtesy to the site's staff, never fatal
            docs_error = f"{docs_dir}: could not write the validation report ({type(exc).__name__})"
    return result, docs_error
