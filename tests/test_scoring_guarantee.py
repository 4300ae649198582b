"""The one 500 left is the model failing on rows that passed the contract check, and it
cannot happen: for any body at all, the scoring path either refuses it with a 4xx naming
a rule or answers every patient with a finite probability; for any rows the check admits,
in any of MLflow's four formats or CSV, both model kinds answer. Hypothesis generates
the bodies; the path is the server's own (:func:`pipeline.serving.scoring.score`)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.serving import CONTRACT, PATIENT, fitted_logistic

from pipeline.contract import Feature, load_contract
from pipeline.models.risk_model import RiskModel
from pipeline.serving.errors import BadRequest
from pipeline.serving.scoring import score

contract = load_contract(CONTRACT)
MAX_ROWS = 50
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _risk_model(model: Any) -> RiskModel:
    risk = RiskModel()
    risk.contract, risk.model = contract, model
    risk.model_name, risk.model_version = "diabetes-risk", "1"
    return risk


@pytest.fixture(scope="module", params=["logistic", "trees"])
def served(request, tmp_path_factory: pytest.TempPathFactory) -> RiskModel:
    model, frame = fitted_logistic(tmp_path_factory.mktemp("extract"), rows=2000)
    if request.param == "logistic":
        return _risk_model(model)
    from support.serving import write_config

    from pipeline.config import load_config
    from pipeline.features import FeatureEncoder
    from pipeline.models.tree_model import TreeModel
    from pipeline.pooled import train_xgboost

    tmp = tmp_path_factory.mktemp("trees")
    cfg = load_config(write_config(tmp, f"sqlite:///{tmp}/m.db"))
    cfg.training.xgboost.rounds = 10
    T = FeatureEncoder(contract).tree_matrix(frame)
    booster = train_xgboost(contract, cfg, [(T, contract.labels(frame))], nthread=1)
    return _risk_model(TreeModel(contract, bytes(booster.save_raw("ubj"))))


def admissible(f: Feature) -> st.SearchStrategy:
    """Every value the contract admits for `f`, in the JSON types a client may use."""
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        values = st.floats(lo, hi, allow_nan=False) | st.integers(math.ceil(lo), math.floor(hi))
        if f.missing_codes:
            values |= st.sampled_from(list(f.missing_codes))
    elif f.kind == "categorical":
        values = st.sampled_from(list(f.categories or []))
    else:
        values = st.booleans() | st.sampled_from([0, 1])
    return values | st.none() if f.nullable else values


patients = st.fixed_dictionaries(
    {f.name: admissible(f) for f in contract.features if not f.nullable},
    optional={f.name: admissible(f) for f in contract.features if f.nullable},
)


def _columns(rows: list[dict]) -> list[str]:
    """Every key of `rows`: the contract's features in its order, then any other."""
    order = {name: i for i, name in enumerate(contract.feature_names)}
    keys = {k for row in rows for k in row}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def document(rows: list[dict], fmt: str, *, fill: bool = True) -> dict:
    """`rows` in one of MLflow's JSON formats. Formats of columns need every key in every
    row (nulls are written); records are written as they are unless `fill`."""
    cols = _columns(rows)
    full = [{c: row.get(c) for c in cols} for row in rows]
    records = full if fill else rows
    return {
        "dataframe_records": {"dataframe_records": records},
        "dataframe_split": {
            "dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in full]}
        },
        "instances": {"instances": records},
        "inputs": {"inputs": {c: [r[c] for r in full] for c in cols}},
        # MLflow reads records naming different features under inputs (not instances)
        "inputs records": {"inputs": rows},
    }[fmt]


def as_body(rows: list[dict], fmt: str) -> tuple[bytes, str]:
    """`rows` as a request body in one of MLflow's formats, or CSV."""
    if fmt != "csv":
        return json.dumps(document(rows, fmt)).encode(), "application/json"
    cols = _columns(rows)
    # a CSV writes a column's true/false one way: 1 and 0 here
    full = [{c: int(v) if isinstance(v, bool) else v for c, v in r.items()} for r in rows]
    buffer = io.StringIO()
    pd.DataFrame(full, columns=cols).to_csv(buffer, index=False)
    return buffer.getvalue().encode(), "text/csv"


FORMATS = ["dataframe_records", "dataframe_split", "instances", "inputs", "csv", "inputs records"]


def _check_answers(raw: bytes, n: int) -> None:
    answers = json.loads(raw)["predictions"]
    assert len(answers) == n
    for a in answers:
        p = a["risk_probability"]
        assert isinstance(p, float) and 0.0 <= p <= 1.0 and math.isfinite(p)
        assert a["risk_band"]
        assert len(a["top_factors"]) == 3
        for factor in a["top_factors"]:
            assert factor["feature"] in contract.feature_names
            assert factor["effect"] in ("raises", "lowers")


@PROPERTY
@given(rows=st.lists(patients, min_size=1, max_size=12), fmt=st.sampled_from(FORMATS))
def test_rows_the_contract_admits_are_always_answered(served, rows, fmt) -> None:
    body, mime = as_body(rows, fmt)
    answer, n = score(served, body, mime, MAX_ROWS)
    assert n == len(rows)
    _check_answers(answer, len(rows))


MARK = "Zelda-Quux-7731"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.just(MARK),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
names = st.sampled_from(contract.feature_names) | st.sampled_from(
    ["patient_id", "mrn", "favourite_colour", MARK, ""]
)
hostile_patients = st.builds(
    lambda base, changes, dropped: {
        **{k: v for k, v in base.items() if k not in dropped},
        **changes,
    },
    patients,
    st.dictionaries(names, json_values, max_size=3),
    st.sets(st.sampled_from(contract.feature_names), max_size=2),
)


def _must_refuse_or_answer(served: RiskModel, body: bytes, mime: str, n: int | None) -> None:
    try:
        answer, rows = score(served, body, mime, MAX_ROWS)
    except BadRequest as exc:
        assert 400 <= exc.status < 500
        text = json.dumps(exc.body())
        assert MARK not in text
        assert exc.rule
        return
    _check_answers(answer, rows)
    if n is not None:
        assert rows == n


@PROPERTY
@given(
    rows=st.lists(hostile_patients, min_size=1, max_size=6),
    fmt=st.sampled_from([*FORMATS[:4], "inputs records"]),  # CSV: bytes, below
)
def test_any_cell_is_refused_with_a_rule_or_answered(served, rows, fmt) -> None:
    """A cell of any JSON type or shape, an undeclared or identifier column, a required
    column left out: a 4xx naming the rule, or an answer; never another exception."""
    doc = document(rows, fmt, fill=False)
    _must_refuse_or_answer(served, json.dumps(doc).encode(), "application/json", len(rows))


@PROPERTY
@given(
    doc=json_values
    | st.dictionaries(
        st.sampled_from(
            ["dataframe_records", "dataframe_split", "instances", "inputs", "params", MARK]
        ),
        json_values,
        max_size=2,
    )
)
def test_any_json_document_is_refused_with_a_rule_or_answered(served, doc) -> None:
    _must_refuse_or_answer(served, json.dumps(doc).encode(), "application/json", None)


@PROPERTY
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_refused_with_a_rule_or_answered(served, raw) -> None:
    for mime in ("application/json", "text/csv"):
        _must_refuse_or_answer(served, raw, mime, None)


def test_a_patient_is_answered_the_same_in_every_format(served) -> None:
    answers = set()
    for fmt in FORMATS:
        body, mime = as_body([PATIENT], fmt)
        answer, _ = score(served, body, mime, MAX_ROWS)
        answers.add(round(json.loads(answer)["predictions"][0]["risk_probability"], 12))
    assert len(answers) == 1
    assert np.isfinite(list(answers)).all()
