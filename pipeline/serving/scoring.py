"""``POST /invocations``: validate first, then predict.

The body is read once, here (:mod:`pipeline.serving.body`): its depth and numbers before it
is parsed, its shape and row count before a row is built, every cell against the contract
before the model is called (:func:`pipeline.models.request.check_request`). Whatever fails
is a 4xx naming the field and the rule. Only rows that passed reach the model, so a
failure of the model itself is the one way left to a 500, and the tests hold that it
cannot happen for any rows the check admits.

The answer is MLflow's scoring protocol's: ``{"predictions": [record, ...]}``, written
with MLflow's own JSON encoder class (the same bytes as its ``predictions_to_json``) by
``json.dumps``, whose C encoder is several times faster than the ``json.dump`` MLflow
calls.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.models.request import RequestError
from pipeline.models.risk_model import RiskModel
from pipeline.serving.body import count_rows, parse_json, read_csv, read_frame
from pipeline.serving.errors import BadRequest

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)


def predictions_json(records: list[dict[str, Any]]) -> bytes:
    """MLflow's ``{"predictions": ...}`` answer for `records`."""
    from mlflow.utils.proto_json_utils import NumpyEncoder

    return json.dumps({"predictions": records}, cls=NumpyEncoder).encode()


def check_rows(rows: int, max_rows: int) -> None:
    """At least one row, at most `max_rows`: refused before any row is built."""
    if rows > max_rows:
        raise BadRequest(
            413,
            None,
            "rows",
            f"{rows} rows in one request; at most {max_rows} (rule: rows per request)",
            {"max_rows": max_rows},
        )
    if rows == 0:
        raise BadRequest(400, None, "rows", "the request has no rows (rule: at least 1)")


def score(model: RiskModel, body: bytes, mime: str, max_rows: int) -> tuple[bytes, int]:
    """The JSON answer to a scoring body, and its row count; :class:`BadRequest` for
    anything the contract or the protocol refuses."""
    if mime in CSV_TYPES:
        frame = read_csv(body)
        check_rows(len(frame), max_rows)
    else:
        doc = parse_json(body)
        check_rows(count_rows(doc), max_rows)
        frame = read_frame(doc)
    try:
        records = model.records(frame)
    except RequestError as exc:
        raise BadRequest.from_violations(exc.violations) from None
    return predictions_json(records), len(records)
