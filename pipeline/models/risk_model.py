"""The served risk model: one MLflow pyfunc for every model kind.

`load_context` loads the contract and the model once; `predict` checks the request
against the contract (:mod:`pipeline.models.request`), then answers each patient
(:mod:`pipeline.models.answer`). Input is the contract's feature columns in clinical
units, exactly as a site's extract holds them.

Under ``pipeline serve`` the server reads a refused request's violations from the
request's :data:`REQUEST_STATE` and answers a clean 4xx; MLflow's own error body (which
echoes the request) never leaves it.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.contract import Contract, load_contract
from pipeline.models.answer import answer, answer_records
from pipeline.models.kinds import from_spec
from pipeline.models.request import RequestError, Violation, check_request


@dataclass
class RequestState:
    """What the model tells the server about one request (set by the server per request;
    shared with the thread MLflow predicts in)."""

    rows: int | None = None
    max_rows: int | None = None
    violations: list[Violation] = field(default_factory=list)
    predicted: bool = False
    failed: BaseException | None = None


REQUEST_STATE: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "pipeline_request_state", default=None
)


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
    frame = pd.DataFrame(list(model_input))
    for name in [c for c, t in frame.dtypes.items() if pd.api.types.is_object_dtype(t)]:
        frame[name] = _column(frame[name].to_numpy())
    return frame


class RiskModel(mlflow.pyfunc.PythonModel):
    """Contract-checked input -> risk_probability, risk_band, top_factors, model_name,
    model_version. The server that loads a registered version sets ``model_name`` and
    ``model_version``; elsewhere the name is the contract's and the version unknown."""

    def load_context(self, context: Any) -> None:
        self.contract = load_contract(context.artifacts["contract"])
        spec = json.loads(Path(context.artifacts["model"]).read_text())
        self.model = from_spec(self.contract, spec, context.artifacts)
        self.model_name = self.contract.name
        self.model_version: str | None = None

    # No type hints on predict: MLflow would infer a signature from them (and enforce it
    # before the contract check, with its own error messages).
    def predict(self, context, model_input, params=None):
        state = REQUEST_STATE.get()
        if state is not None:
            state.predicted = True
        try:
            frame = as_frame(model_input)
            if state is not None:
                state.rows = len(frame)
                if state.max_rows is not None and len(frame) > state.max_rows:
                    raise RequestError(
                        [
                            Violation(
                                None,
                                "rows",
                                f"{len(frame)} rows in one request; at most {state.max_rows} "
                                "(rule: rows per request)",
                                {"max_rows": state.max_rows},
                            )
                        ]
                    )
            cols = check_request(self.contract, frame)
            if state is not None:
                # Under `pipeline serve`: records, which MLflow's scoring app writes as
                # they are (a DataFrame would first go through pandas' to_dict).
                return answer_records(
                    self.contract,
                    self.model,
                    cols,
                    model_name=self.model_name,
                    model_version=self.model_version,
                )
            return answer(
                self.contract,
                self.model,
                cols,
                model_name=self.model_name,
                model_version=self.model_version,
                index=frame.index,
            )
        except RequestError as exc:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            if state is not None:
                state.violations = exc.violations
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as exc:
            if state is not None:
                state.failed = exc
            raise


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
