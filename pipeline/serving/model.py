"""The served risk model: one MLflow pyfunc for every strategy.

`load_context` loads the contract and the model once; `predict` checks the request
against the contract, then answers each patient with the risk, its band (the contract's
thresholds, which the model card quotes) and the factors behind it as a clinician reads
them. Input is the contract's feature columns in clinical units, exactly as a site's
extract holds them. Everything is computed over whole columns: the cost of a request
does not grow with a Python loop per patient.

A request that breaks the contract raises :class:`RequestError`, whose violations name
the field, the rule and what is allowed, never the value that was sent. Under
``pipeline serve`` the server reads them from the request's :data:`REQUEST_STATE` and
answers a clean 4xx; MLflow's own error body (which echoes the request) never leaves it.
"""

from __future__ import annotations

import contextvars
import json
import re
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.contract import Contract, Feature, load_contract

TOP_FACTORS = 3
MAX_REPORTED_ROWS = 5
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_NUMBER_TYPES = {"integer", "floating", "mixed-integer-float", "decimal", "empty"}


@dataclass(frozen=True)
class Violation:
    """One broken rule: which field, which rule, what is allowed, in which row positions
    (positions, never values)."""

    field: str | None
    rule: str
    message: str
    allowed: Any = None
    rows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule, "message": self.message}
        if self.allowed is not None:
            out["allowed"] = self.allowed
        if self.rows:
            out["rows"] = list(self.rows)
        return out


class RequestError(ValueError):
    """A scoring request that does not meet the contract."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(v.message for v in violations))


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


# -- the contract check ----------------------------------------------------------------
def _positions(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask)[:MAX_REPORTED_ROWS])


def _allowed(f: Feature) -> dict[str, Any]:
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        return {"min": lo, "max": hi, "unit": f.unit, "nullable": f.nullable}
    if f.kind == "categorical":
        return {"categories": list(f.categories or []), "nullable": f.nullable}
    return {"values": [True, False], "nullable": f.nullable}


def _name(column: object) -> str | None:
    """A column name safe to repeat in an error (a name, not a value), else None."""
    return column if isinstance(column, str) and _SAFE_NAME.match(column) else None


def _is_scalar_mask(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(lambda v: not isinstance(v, list | dict | tuple | set), 1, 1)(
        values
    ).astype(bool)


def _is_bool_mask(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(lambda v: isinstance(v, bool | np.bool_), 1, 1)(values).astype(bool)


def _is_boolean_value(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return True
    return isinstance(v, int | float) and v in (0, 1)


def _why_not_numbers(values: np.ndarray) -> tuple[str, str, np.ndarray]:
    """For an object column that is not all numbers: the rule, the reason, the rows (the
    error path only, so it may look at each value)."""
    present = ~pd.isna(values)
    nested = present & ~_is_scalar_mask(values)
    if nested.any():
        return "scalar", "a list or object is not a value", nested
    bools = present & _is_bool_mask(values)
    if bools.any():
        return "number", "true/false is not a number", bools
    junk = present & pd.isna(pd.to_numeric(pd.Series(values), errors="coerce")).to_numpy()
    return "number", "not a number", junk


class _Checker:
    """Checks one feature column into the canonical form of
    :meth:`pipeline.features.FeatureEncoder.canonical`, recording violations."""

    def __init__(self, f: Feature, out: list[Violation]) -> None:
        self.f = f
        self.out = out
        self.label = f"field {f.name!r}"

    def fail(self, rule: str, why: str, rows: np.ndarray | None = None) -> None:
        self.out.append(
            Violation(
                self.f.name,
                rule,
                f"{self.label}: {why} (rule: {rule})",
                _allowed(self.f),
                _positions(rows) if rows is not None else (),
            )
        )

    def numbers(self, col: pd.Series) -> np.ndarray | None:
        """float64, NaN where missing; None (and a violation) when not all numbers."""
        f, dtype = self.f, col.dtype
        unit = f"a number in {f.unit}" if f.unit else "a number"
        if pd.api.types.is_bool_dtype(dtype):
            self.fail("number", f"true/false is not a number; expected {unit}", col.notna())
            return None
        if pd.api.types.is_numeric_dtype(dtype):
            x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = col.to_numpy(dtype=object)
            if pd.api.types.infer_dtype(values, skipna=True) not in _NUMBER_TYPES:
                rule, why, rows = _why_not_numbers(values)
                self.fail(rule, f"{why}; expected {unit}", rows)
                return None
            x = values.astype(np.float64)
        if np.isinf(x).any():
            self.fail("finite", "Infinity is not a measurement", np.isinf(x))
            return None
        if f.missing_codes:
            x = np.where(np.isin(x, f.missing_codes), np.nan, x)
        return x

    def check(self, col: pd.Series) -> np.ndarray | None:
        f = self.f
        if f.kind == "categorical":
            codes = self.codes(col)
            if codes is None:
                return None
            missing = codes < 0
        elif f.kind == "boolean":
            x = self.booleans(col)
            if x is None:
                return None
            missing = np.isnan(x)
            codes = x
        else:
            x = self.numbers(col)
            if x is None:
                return None
            lo, hi = f.range  # type: ignore[misc]
            with np.errstate(invalid="ignore"):
                bad = (x < lo) | (x > hi)
            if bad.any():
                unit = f" {f.unit}" if f.unit else ""
                self.fail("range", f"{f.label} outside [{lo:g}, {hi:g}]{unit}", bad)
                return None
            missing = np.isnan(x)
            codes = x
        if not f.nullable and missing.any():
            self.fail("not null", f"{f.label} is required", missing)
            return None
        return codes

    def booleans(self, col: pd.Series) -> np.ndarray | None:
        if pd.api.types.is_bool_dtype(col.dtype):
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        values = col.to_numpy(dtype=object)
        if pd.api.types.infer_dtype(values, skipna=True) in ("boolean", "empty"):
            missing = pd.isna(values)
            return np.where(missing, np.nan, np.where(missing, False, values).astype(bool))
        if pd.api.types.infer_dtype(values, skipna=True) not in _NUMBER_TYPES:
            ok = np.frompyfunc(_is_boolean_value, 1, 1)(values).astype(bool)
            self.fail("boolean", "not true/false", ~pd.isna(values) & ~ok)
            return None
        x = self.numbers(col)  # 0/1 is accepted for true/false
        if x is None:
            return None
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(x) & (x != 0) & (x != 1)
        if bad.any():
            self.fail("boolean", "not true/false", bad)
            return None
        return x

    def codes(self, col: pd.Series) -> np.ndarray | None:
        """Index into the contract's categories, -1 where missing."""
        f = self.f
        cats = list(f.categories or [])
        if f.dtype == "string":
            values = col.to_numpy(dtype=object)
            missing = pd.isna(values)
            keys = np.where(missing, "", values).astype(str)
            table = np.array([str(c) for c in cats])
        else:
            x = self.numbers(col)
            if x is None:
                return None
            missing = np.isnan(x)
            keys = np.where(missing, 0.0, x)
            table = np.array([float(c) for c in cats])
        order = np.argsort(table)
        pos = np.searchsorted(table[order], keys).clip(max=len(cats) - 1)
        hit = table[order][pos] == keys
        unknown = ~hit & ~missing
        if unknown.any():
            self.fail("category", f"not one of {cats}", unknown)
            return None
        return np.where(missing, -1, order[pos]).astype(np.int64)


def check_request(contract: Contract, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Check a request against the contract and return its features in the canonical form
    of :meth:`pipeline.features.FeatureEncoder.canonical` (floats for numbers and booleans,
    category indexes, NaN / -1 for missing).

    Raises :class:`RequestError` naming every broken field and rule. A nullable feature
    may be absent (then it is missing for every patient); an undeclared column is refused,
    so a misspelt feature or an identifier column never passes silently.
    """
    out: list[Violation] = []
    n = len(df)
    if n == 0:
        raise RequestError([Violation(None, "rows", "request has no rows (rule: at least 1)")])
    if not all(isinstance(c, str) for c in df.columns):
        raise RequestError(
            [
                Violation(
                    None,
                    "shape",
                    "values without feature names (rule: records are objects keyed by "
                    "feature name; dataframe_split names its columns)",
                )
            ]
        )
    declared = set(contract.feature_names)
    identifiers = {d.lower() for d in contract.identifiers_denylist} | {contract.key.name}
    if contract.index_date is not None:
        identifiers.add(contract.index_date.name)
    for column in df.columns:
        if column not in declared:
            out.append(_undeclared(column, identifiers, contract))
    if len(set(df.columns)) != len(df.columns):
        out.append(Violation(None, "duplicate", "a column is given twice (rule: unique columns)"))
        raise RequestError(out)
    cols: dict[str, np.ndarray] = {}
    for f in contract.features:
        if f.name not in df.columns:
            if f.nullable:
                cols[f.name] = np.full(n, -1) if f.kind == "categorical" else np.full(n, np.nan)
            else:
                out.append(
                    Violation(
                        f.name,
                        "required",
                        f"field {f.name!r}: {f.label} is missing (rule: required)",
                        _allowed(f),
                    )
                )
            continue
        checked = _Checker(f, out).check(df[f.name])
        if checked is not None:
            cols[f.name] = checked
    if out:
        raise RequestError(out)
    return cols


def _undeclared(column: object, identifiers: set[str], contract: Contract) -> Violation:
    name = _name(column)
    shown = repr(name) if name else "(name withheld)"
    lowered = column.lower() if isinstance(column, str) else ""
    is_id = lowered in identifiers or any(t in identifiers for t in lowered.split("_"))
    if is_id:
        return Violation(
            name,
            "no identifiers",
            f"column {shown}: an identifier; the model takes no identifiers (rule: no identifiers)",
            {"features": contract.feature_names},
        )
    return Violation(
        name,
        "declared features",
        f"column {shown}: not a model input (rule: declared features only)",
        {"features": contract.feature_names},
    )


# -- the answer --------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Explainer:
    """Probability and per-feature contributions (log-odds) for checked rows, one model
    kind at a time, computed from one encoding of the rows.

    Logistic models: coefficient x encoded value, summed over each feature's encoded
    columns (numbers are centred on the contract's typical value, so a number's
    contribution is relative to a typical patient); a category's contribution is taken
    relative to the mean over its categories, so a category the model does not
    distinguish is no factor. Trees: TreeSHAP contributions (Lundberg et al. 2020),
    relative to the average prediction.
    """

    def __init__(self, contract: Contract, model: Any) -> None:
        self.contract = contract
        self.model = model
        if model.kind == "logistic":
            names = model.encoder.feature_names_out
            owners = [n.split("=")[0].removesuffix("__missing") for n in names]
            index = {f: j for j, f in enumerate(contract.feature_names)}
            owner = np.zeros((len(names), len(index)))
            owner[np.arange(len(names)), [index[o] for o in owners]] = 1.0
            self.owner_ = owner
            w = model.weights[:-1]
            centre = np.zeros(len(index))
            for f in contract.features:
                if f.kind == "categorical":
                    cols = [j for j, n in enumerate(names) if n.startswith(f"{f.name}=")]
                    centre[index[f.name]] = float(np.mean(w[cols]))
            self.centre_ = centre

    def explain(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and contributions (rows x contract features) of canonical
        columns (:func:`check_request`)."""
        m = self.model
        if m.kind == "logistic":
            X = m.encoder.encode(cols)
            w = m.weights
            p = _sigmoid(X @ w[:-1] + w[-1])
            contrib = (X * w[:-1]) @ self.owner_
            for j, f in enumerate(self.contract.features):
                if self.centre_[j]:
                    contrib[:, j] -= (cols[f.name] >= 0) * self.centre_[j]
            return p, contrib
        from pipeline.models import trees

        T = m.encoder.tree_encode(cols)
        p = trees.predict_proba(m.booster_, T).astype(np.float64)
        return p, trees.contributions(m.booster_, T)[:, :-1].astype(np.float64)


def _objects(x: np.ndarray, integral: bool) -> np.ndarray:
    """Floats as JSON-ready Python numbers (ints where the feature is integral), None
    where missing; numpy's conversion to object does it without a Python loop."""
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    obj = (filled.astype(np.int64) if integral else np.round(filled, 4)).astype(object)
    obj[missing] = None
    return obj


def _display_values(contract: Contract, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Each patient's value per feature, JSON-ready (None when missing)."""
    out = []
    for f in contract.features:
        x = cols[f.name]
        if f.kind == "categorical":
            out.append(np.array([*(f.categories or []), None], dtype=object)[x])
        elif f.kind == "boolean":
            obj = (x == 1.0).astype(object)
            obj[np.isnan(x)] = None
            out.append(obj)
        else:
            out.append(_objects(x, f.dtype.startswith("int")))
    return np.column_stack(out)


_FACTOR_KEYS = ("feature", "name", "value", "unit", "effect")


ANSWER_COLUMNS = ("risk_probability", "risk_band", "top_factors", "model_name", "model_version")


def answer_records(
    contract: Contract,
    explainer: Explainer,
    cols: dict[str, np.ndarray],
    *,
    model_name: str,
    model_version: str | None,
) -> list[dict[str, Any]]:
    """The clinician-facing answer for checked rows, one record per patient: probability,
    band, the top factors (display name, the patient's value and unit, whether it raises
    or lowers the risk) and the model's identity. Whole columns at a time: the factors are
    gathered with numpy and zipped into records by builtins, with no Python loop per
    patient."""
    p, contrib = explainer.explain(cols)
    n, k = len(p), min(TOP_FACTORS, contrib.shape[1])
    top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
    at = np.arange(n)[:, None]
    values = _display_values(contract, cols)[at, top]
    effect = np.where(contrib[at, top] > 0, "raises", "lowers").astype(object)
    features = np.array(contract.feature_names, dtype=object)[top]
    labels = np.array([f.label for f in contract.features], dtype=object)[top]
    units = np.array(
        [f.unit if f.kind == "numeric" else None for f in contract.features], dtype=object
    )[top]
    units[pd.isna(values)] = None
    # One record per (patient, factor): dict(zip(keys, fields)) mapped by builtins.
    fields = np.stack([features, labels, values, units, effect], axis=-1).reshape(n * k, 5)
    records = list(map(dict, map(zip, repeat(_FACTOR_KEYS), fields.tolist())))
    factors = list(map(list, zip(*[iter(records)] * k, strict=True))) if k else [[]] * n
    rows = zip(
        p.tolist(),
        contract.risk_band(p).tolist(),
        factors,
        repeat(model_name),
        repeat(model_version),
    )
    return list(map(dict, map(zip, repeat(ANSWER_COLUMNS), rows)))


def answer(
    contract: Contract,
    explainer: Explainer,
    cols: dict[str, np.ndarray],
    *,
    model_name: str,
    model_version: str | None,
    index: pd.Index | None = None,
) -> pd.DataFrame:
    """:func:`answer_records` as a DataFrame (what the pyfunc returns in process)."""
    records = answer_records(
        contract, explainer, cols, model_name=model_name, model_version=model_version
    )
    frame = pd.DataFrame.from_records(records, columns=list(ANSWER_COLUMNS))
    if index is not None:
        frame.index = index
    return frame


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
        self.model = build_model(self.contract, spec, context.artifacts)
        self.explainer = Explainer(self.contract, self.model)
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
                    self.explainer,
                    cols,
                    model_name=self.model_name,
                    model_version=self.model_version,
                )
            return answer(
                self.contract,
                self.explainer,
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


def build_model(contract: Contract, spec: dict, artifacts: dict[str, str]) -> Any:
    if spec["kind"] == "logistic":
        from pipeline.models.logistic import LogisticModel

        return LogisticModel(contract, np.asarray(spec["weights"]))
    if spec["kind"] == "xgboost":
        from pipeline.models.tree_model import TreeModel

        return TreeModel.load(contract, artifacts["booster"])
    raise ValueError(f"unknown model kind {spec['kind']!r}")


def score(contract: Contract, model: Any, df: pd.DataFrame) -> pd.DataFrame:
    """The answer for a request, in process (raises :class:`RequestError`)."""
    frame = as_frame(df)
    cols = check_request(contract, frame)
    return answer(
        contract,
        Explainer(contract, model),
        cols,
        model_name=contract.name,
        model_version=None,
        index=frame.index,
    )
