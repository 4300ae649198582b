"""Reading a scoring request's body as MLflow's REST protocol has it: ``dataframe_split``,
``dataframe_records``, ``inputs`` or ``instances`` in JSON (or CSV), with NaN and Infinity
refused and the shape checked before MLflow parses it, the field named when it is not."""

from __future__ import annotations

import json
import re
from itertools import repeat
from typing import Any

from pipeline.models.request import safe_name
from pipeline.serving.errors import BadRequest, Receive

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


# A NaN or Infinity literal where a JSON value may start (false positives, inside text,
# only cost a full parse).
NON_FINITE = re.compile(rb"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")


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


def parse_json(body: bytes) -> Any:
    """The request document; NaN and Infinity literals refused with the field named."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except _NonFinite:
        fields = _marked_fields(json.loads(body, parse_constant=_marker))
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


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, None, "body", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(
                413,
                None,
                "body size",
                f"the body is larger than {limit} bytes (rule: body size)",
                {"max_bytes": limit},
            )
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
