"""The registered model's MLflow signature and input example, from the contract alone.

The contract stays the one check of a request (:mod:`pipeline.models.request`); the
signature describes the columns to MLflow and its tools without changing what the
contract decides. MLflow's parsers cast every value to its column's declared type before
the model sees it, so each feature gets the most specific type that carries every value the
contract accepts through unchanged, in all four JSON input formats:

- numbers and integer-coded categories: ``double`` (a JSON integer is read as a float; a
  null becomes NaN, which the contract reads as missing);
- required text categories: ``string``;
- nullable text categories and booleans: ``Any``. MLflow turns a null into the text
  ``"None"`` for a ``string`` column (``instances``, ``inputs``) and into ``false`` for a
  ``boolean`` one (every format), which would change a missing value into another one.

A feature is optional (``required=False``) exactly where the contract makes it nullable,
so MLflow lets a request leave it out, as the contract does.

The input example is two typical patients built from the contract, never from data.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Object, Property, Schema

from pipeline.contract import Contract, Feature


def column_type(feature: Feature) -> DataType | AnyType:
    """The MLflow type of a feature's column: the most specific one MLflow's parsers pass
    every value the contract accepts through unchanged (see the module docstring)."""
    if feature.kind == "numeric":
        return DataType.double
    if feature.kind == "categorical" and feature.dtype != "string":
        return DataType.double
    if feature.kind == "categorical" and not feature.nullable:
        return DataType.string
    return AnyType()


def input_schema(contract: Contract) -> Schema:
    """Every contract feature a column, in contract order, optional where it is nullable."""
    return Schema(
        [ColSpec(column_type(f), f.name, required=not f.nullable) for f in contract.features]
    )


def output_schema() -> Schema:
    """What every version answers per patient (:mod:`pipeline.models.answer`): the
    probability, its band, the top factors as a clinician reads them, and the model's
    identity (its version is unknown outside ``pipeline serve``)."""
    factor = Object(
        [
            Property("feature", DataType.string),
            Property("name", DataType.string),
            Property("value", AnyType(), required=False),
            Property("unit", DataType.string, required=False),
            Property("effect", DataType.string),
        ]
    )
    return Schema(
        [
            ColSpec(DataType.double, "risk_probability"),
            ColSpec(DataType.string, "risk_band"),
            ColSpec(Array(factor), "top_factors"),
            ColSpec(DataType.string, "model_name"),
            ColSpec(DataType.string, "model_version", required=False),
        ]
    )


def model_signature(contract: Contract) -> ModelSignature:
    """The signature a version is logged with."""
    return ModelSignature(inputs=input_schema(contract), outputs=output_schema())


def typical_value(feature: Feature) -> Any:
    """A feature's typical value as a request carries it: the contract's fill value for a
    number, its first category, false for a boolean. Numbers and integer codes are floats,
    the type their columns are declared with."""
    if feature.kind == "numeric":
        return feature.impute_value
    if feature.kind == "categorical":
        first = (feature.categories or [])[0]
        return first if feature.dtype == "string" else float(first)
    return False


def input_example(contract: Contract) -> pd.DataFrame:
    """Two typical patients: every feature at its typical value, then the same patient
    with every optional feature missing. Columns of Python objects, so a missing value is
    written as JSON null (a float column would write ``NaN``, which the contract refuses
    in a request); their names too (MLflow compares them with a range, which pandas
    deprecates for a column index of its string type)."""
    full = {f.name: typical_value(f) for f in contract.features}
    sparse = {f.name: None if f.nullable else full[f.name] for f in contract.features}
    columns = pd.Index(contract.feature_names, dtype=object)
    return pd.DataFrame([full, sparse], columns=columns, dtype=object)
