"""The served risk model: one MLflow pyfunc for every strategy.

`load_context` loads the contract and the model once; `predict` checks the request
against the contract (so a bad request is a 400 naming the column and rule, never a 500),
then returns the risk, a risk band and the factors behind it. Input is the contract's
feature columns in clinical units, exactly as a site's extract holds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.contract import Contract, load_contract
from pipeline.features import missing_mask

# Bands for 5-year risk, after the ADA/NICE practice of flagging >= 10 % and >= 25 %.
RISK_BANDS = ((0.10, "low"), (0.25, "moderate"), (1.01, "high"))
TOP_FACTORS = 3


class RequestError(ValueError):
    """A scoring request that does not meet the contract."""


def check_request(contract: Contract, df: pd.DataFrame) -> None:
    """Every feature present, typed and within the contract; errors name column and rule."""
    if len(df) == 0:
        raise RequestError("request has no rows")
    missing = [f.name for f in contract.features if f.name not in df.columns]
    if missing:
        raise RequestError(f"missing required column(s): {missing} (rule: required column)")
    for f in contract.features:
        values = df[f.name]
        absent = missing_mask(f, values)
        if absent.any() and not f.nullable:
            raise RequestError(f"column {f.name!r}: null not allowed (rule: not null)")
        present = values[~absent]
        if f.kind == "numeric":
            x = pd.to_numeric(present, errors="coerce")
            if x.isna().any():
                raise RequestError(f"column {f.name!r}: not a number (rule: numeric {f.unit})")
            lo, hi = f.range  # type: ignore[misc]
            if ((x < lo) | (x > hi)).any():
                raise RequestError(
                    f"column {f.name!r}: outside [{lo:g}, {hi:g}] {f.unit or ''} (rule: range)"
                )
        elif f.kind == "categorical":
            allowed = set(f.categories or [])
            if f.dtype != "string":
                allowed |= {float(c) for c in allowed}
            if not present.isin(allowed).all():
                raise RequestError(
                    f"column {f.name!r}: not one of {list(f.categories or [])} (rule: category)"
                )
        elif not present.isin([True, False, 0, 1]).all():
            raise RequestError(f"column {f.name!r}: not a boolean (rule: boolean)")


def risk_band(p: np.ndarray) -> np.ndarray:
    edges = np.array([e for e, _ in RISK_BANDS])
    names = np.array([n for _, n in RISK_BANDS])
    return names[np.searchsorted(edges, p, side="right").clip(max=len(names) - 1)]


class RiskModel(mlflow.pyfunc.PythonModel):
    """Contract-checked input -> risk_probability, risk_band, top_factors."""

    def load_context(self, context: Any) -> None:
        self.contract = load_contract(context.artifacts["contract"])
        spec = json.loads(Path(context.artifacts["model"]).read_text())
        self.model = build_model(self.contract, spec, context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):
        return score(self.contract, self.model, model_input)


def build_model(contract: Contract, spec: dict, artifacts: dict[str, str]) -> Any:
    if spec["kind"] == "logistic":
        from pipeline.models.logistic import LogisticModel

        return LogisticModel(contract, np.asarray(spec["weights"]))
    if spec["kind"] == "xgboost":
        from pipeline.models.tree_model import TreeModel

        return TreeModel.load(contract, artifacts["booster"])
    raise ValueError(f"unknown model kind {spec['kind']!r}")


def score(contract: Contract, model: Any, df: pd.DataFrame) -> pd.DataFrame:
    """The clinician-facing answer for each row of a checked request."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    try:
        check_request(contract, df)
    except RequestError as exc:
        raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
    p = model.predict_proba(df)
    contrib = model.contributions(df)
    top = [
        ", ".join(row.sort_values(ascending=False).index[:TOP_FACTORS])
        for _, row in contrib.iterrows()
    ]
    return pd.DataFrame(
        {"risk_probability": p, "risk_band": risk_band(p), "top_factors": top}, index=df.index
    )
