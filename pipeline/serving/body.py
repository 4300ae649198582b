"""Reading a scoring request's body, once, as MLflow's REST protocol has it:
``dataframe_split``, ``dataframe_records``, ``inputs`` or ``instances`` in JSON, or CSV.

Every limit applies before the work it limits: the nesting depth is measured before the
JSON is parsed, integers too long for any measurement become infinities (which the
contract check refuses) instead of costing a big-number conversion, NaN and Infinity
literals are refused, the shape and the row count are checked before a row is built, and
only then are the rows read into a frame by MLflow's own parser (what ``mlflow models
serve`` does with the same body). Anything that parser cannot read is a 400 naming the
rule, never its message: MLflow's errors quote the request.
"""

from __future__ import annotations

import io
import json
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models.request import safe_name
from pipeline.serving.errors import BadRequest, Receive

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
MAX_DEPTH = 32  # a scoring document needs 4 levels; a cell holding more is refused anyway
MAX_INT_DIGITS = 19  # longer integers are read as floats (an infinity past 1e308)


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


class _Marker:
    """Stands for a NaN/Infinity literal while looking for where it was (error path)."""


def _marker(name: str) -> _Marker:
    return _Marker()


def _marked_fields(doc: Any) -> list[str]:
    """Columns whose values hold a NaN/Infinity literal (walks the request: error path)."""
    found: set[str] = set()

    def walk(node: Any, column: str | None) -> None:
        if isinstance(node, _Marker):
            found.add(column or "(unknown)")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, k if isinstance(k, str) and k not in FORMATS else column)
        elif isinstance(node, list):
            for v in node:
                walk(v, column)

    if isinstance(doc, dict) and isinstance(doc.get("dataframe_split"), dict):
        split = doc["dataframe_split"]
        columns = split.get("columns") or []
        for row in split.get("data") or []:
            for i, v in enumerate(row if isinstance(row, list) else []):
                if isinstance(v, _Marker):
                    found.add(columns[i] if i < len(columns) else "(unknown)")
    else:
        walk(doc, None)
    return sorted(found)


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of brackets and braces in `body`, counted without parsing
    (brackets inside strings count too: no scoring document has any there)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    steps = np.zeros(len(raw), dtype=np.int32)
    steps[(raw == 0x5B) | (raw == 0x7B)] = 1
    steps[(raw == 0x5D) | (raw == 0x7D)] = -1
    return int(np.cumsum(steps).max(initial=0))


def _int(text: str) -> int | float:
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


def parse_json(body: bytes) -> Any:
    """The request document; NaN and Infinity literals refused with the field named, a
    document nested deeper than :data:`MAX_DEPTH` refused before it is parsed."""
    if nesting_depth(body) > MAX_DEPTH:
        raise BadRequest(
            400,
            None,
            "depth",
            f"the JSON is nested more than {MAX_DEPTH} levels deep (rule: rows of scalar values)",
        )
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_int=_int)
    except _NonFinite:
        fields = _marked_fields(json.loads(body, parse_constant=_marker, parse_int=_int))
        shown = ", ".join(f for f in fields if _safe(f)) or "a field"
        raise BadRequest(
            400,
            fields[0] if fields and _safe(fields[0]) else None,
            "finite",
            f"{shown}: NaN and Infinity are not numbers (rule: finite numbers; send null "
            "for a missing value)",
        ) from None
    except RecursionError:
        raise BadRequest(
            400, None, "depth", "the JSON is nested too deeply (rule: rows of scalar values)"
        ) from None
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(
            400, None, "json", "the body is not valid JSON (rule: UTF-8 JSON)"
        ) from None


def _safe(name: object) -> bool:
    return safe_name(name) is not None


def count_rows(doc: Any) -> int:
    """Rows of an MLflow scoring document, checking its shape (builtins only)."""
    shape = (
        "rule: a JSON object with exactly one of dataframe_split, dataframe_records, inputs, "
        "instances"
    )
    if not isinstance(doc, dict):
        raise BadRequest(400, None, "shape", f"the body is not a JSON object ({shape})")
    keys = set(doc) - {"params"}
    unknown = keys - set(FORMATS)
    if unknown:
        names = sorted(k for k in unknown if _safe(k))
        raise BadRequest(
            400,
            names[0] if names else None,
            "shape",
            f"unknown key {', '.join(map(repr, names)) or '(name withheld)'} ({shape})",
            {"keys": [*FORMATS, "params"]},
        )
    if len(keys) != 1:
        raise BadRequest(400, None, "shape", f"no or several input keys ({shape})")
    if "params" in doc and not isinstance(doc["params"], dict):
        raise BadRequest(400, "params", "shape", "params must be a JSON object (rule: object)")
    fmt = keys.pop()
    data = doc[fmt]
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or set(data) - {"columns", "data", "index"}:
            raise BadRequest(
                400,
                fmt,
                "shape",
                f"{fmt} must be an object with columns and data "
                '(rule: {"columns": [names], "data": [[values]]})',
            )
        columns, rows = data.get("columns"), data.get("data")
        if not isinstance(columns, list) or not all(map(isinstance, columns, repeat(str))):
            raise BadRequest(400, f"{fmt}.columns", "shape", "columns must be a list of names")
        if not isinstance(rows, list) or set(map(type, rows)) - {list}:
            raise BadRequest(400, f"{fmt}.data", "shape", "data must be a list of rows (arrays)")
        if set(map(len, rows)) - {len(columns)}:
            raise BadRequest(
                400, f"{fmt}.data", "shape", "every row must have one value per column"
            )
        return len(rows)
    if isinstance(data, list):
        if set(map(type, data)) - {dict}:
            raise BadRequest(400, fmt, "shape", f"{fmt} must be a list of objects (records)")
        return len(data)
    if fmt != "dataframe_records" and isinstance(data, dict):
        lists = list(data.values())
        if set(map(type, lists)) - {list} or len(set(map(len, lists))) > 1:
            raise BadRequest(
                400, fmt, "shape", f"{fmt} as columns must map each name to a list of equal length"
            )
        return len(lists[0]) if lists else 0
    raise BadRequest(400, fmt, "shape", f"{fmt} must be a list of records")


def read_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """The rows of a document whose shape :func:`count_rows` checked, read by MLflow's own
    parser (the same frame ``mlflow models serve`` builds), as a frame of columns."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    from pipeline.models.risk_model import as_frame

    data = {k: v for k, v in doc.items() if k in FORMATS}
    try:
        return as_frame(infer_and_parse_data(data))
    except Exception:  # noqa: BLE001 - MLflow's message quotes the request: never shown
        fmt = next(iter(data))
        raise BadRequest(
            400,
            fmt,
            "format",
            f"{fmt} could not be read as rows of named values (rule: MLflow's scoring "
            "format; every record with the same names)",
        ) from None


def read_csv(body: bytes) -> pd.DataFrame:
    """The rows of a CSV body with a header row, as MLflow's scoring server reads them."""
    import pandas as pd

    try:
        return pd.read_csv(io.StringIO(body.decode("utf-8")))
    except Exception:  # noqa: BLE001 - pandas' message may quote a cell: never shown
        raise BadRequest(
            400,
            None,
            "format",
            "the body could not be read as CSV with a header row (rule: UTF-8 CSV, one header row)",
        ) from None


def too_large(limit: int) -> BadRequest:
    return BadRequest(
        413,
        None,
        "body size",
        f"the body is larger than {limit} bytes (rule: body size)",
        {"max_bytes": limit},
    )


async def read_body(receive: Receive, limit: int, declared: bytes | None = None) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed `limit`: from
    its declared ``Content-Length`` before a byte is read, else while it is read."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await drain(receive, int(declared))
        raise too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, None, "body", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def drain(receive: Receive, length: int, cap: int = 64 * 1024 * 1024) -> None:
    """Read and drop a refused body (up to ``cap`` bytes) so the client, still sending,
    reads the 413 instead of a reset connection."""
    if length > cap:
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
