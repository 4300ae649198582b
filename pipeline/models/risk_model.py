"""The served risk model: one MLflow pyfunc for every model kind.

`load_context` loads the contract and the model once; `predict` checks the request
against the contract (:mod:`pipeline.models.request`), then answers each patient
(:mod:`pipeline.models.answer`). Input is the contract's feature columns in clinical
units, exactly as a site's extract holds them.

``pipeline serve`` reads and checks a request itself and asks :meth:`RiskModel.records`
for the answer of rows that passed; MLflow's own scoring server calls :meth:`RiskModel.
predict`, which checks the same way and raises MLflow's invalid-parameter error naming
the fields and rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.contract import Contract, load_contract
from pipeline.models.answer import answer, answer_records
from pipeline.models.kinds import from_spec
from pipeline.models.request import RequestError, check_request


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


_unwrap = np.frompyfunc(_scalar, 1, 1)


def _column(v: Any) -> Any:
    """A column as MLflow's ``inputs``/``instances`` parsers give it: an array, sometimes
    of 0-d arrays (a null among them), which become plain values."""
    arr = np.atleast_1d(v) if not isinstance(v, list) else np.array(v, dtype=object)
    if arr.dtype == object and arr.size and any(isinstance(x, np.ndarray) for x in arr[:1]):
        arr = _unwrap(arr)
    return arr


def as_frame(model_input: Any) -> pd.DataFrame:
    """What MLflow's parsers hand the model (a DataFrame, a dict of columns, a list of
    records) as a DataFrame."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame({k: _column(v) for k, v in model_input.items()})
    # Records (``inputs`` whose records name different features): a record without a
    # feature leaves a NaN among the 0-d arrays, so every object column is unwrapped.
    frame = pd.DataFrame(list(model_input))
    for name in [c for c, t in frame.dtypes.items() if pd.api.types.is_object_dtype(t)]:
        frame[name] = _unwrap(frame[name].to_numpy())
    return frame


class RiskModel(mlflow.pyfunc.PythonModel):
    """Contract-checked input -> risk_probability, risk_band, top_factors, model_name,
    model_version. The server that loads a registered version sets ``model_name`` and
    ``model_version``; elsewhere the name is the contract's and the version unknown."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """The contract and the model, from the version's logged artifacts, once."""
        self.contract = load_contract(context.artifacts["contract"])
        spec = json.loads(Path(context.artifacts["model"]).read_text())
        self.model = from_spec(self.contract, spec, context.artifacts)
        self.model_name = self.contract.name
        self.model_version: str | None = None

    def records(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """The answer for rows already read into `frame`, one record per patient, as the
        scoring protocol returns them; raises :class:`RequestError` for rows that break
        the contract (nothing is scored then)."""
        cols = check_request(self.contract, frame)
        return answer_records(
            self.contract,
            self.model,
            cols,
            model_name=self.model_name,
            model_version=self.model_version,
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The answer for `model_input`, which MLflow hands over as a frame of the logged
        signature's columns. A frame is a hint MLflow infers no signature from, so the
        signature logged from the contract (:mod:`pipeline.models.signature`) stays the
        one MLflow serves with, and every JSON input format keeps working; other inputs
        (a dict of columns, a list of records) are read as MLflow's parsers give them."""
        frame = as_frame(model_input)
        try:
            cols = check_request(self.contract, frame)
        except RequestError as exc:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return answer(
            self.contract,
            self.model,
            cols,
            model_name=self.model_name,
            model_version=self.model_version,
            index=frame.index,
        )


def score(contract: Contract, model: Any, df: pd.DataFrame) -> pd.DataFrame:
    """The answer for a request, in process (raises :class:`RequestError`)."""
    frame = as_frame(df)
    cols = check_request(contract, frame)
    return answer(
        contract,
        model,
        cols,
        model_name=contract.name,
        model_version=None,
        index=frame.index,
    )
