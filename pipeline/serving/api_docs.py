"""The OpenAPI document rendered as one HTML page, with no external assets (no Swagger UI
from a CDN: a hospital network may have no way out): the endpoints, the patient's fields
with their units and ranges, the answer, and the error body."""

from __future__ import annotations

import html
import json
from typing import Any


def _e(value: Any) -> str:
    return html.escape(str(value))


def _allowed(schema: dict[str, Any]) -> str:
    """A field's values in words: its range or its choices, and whether it may be null."""
    options = schema.get("anyOf", [schema])
    parts, nullable = [], False
    for option in options:
        if option.get("type") == "null":
            nullable = True
        elif "enum" in option:
            parts.append(" | ".join(json.dumps(v) for v in option["enum"]))
        elif option.get("type") == "number":
            parts.append(f"number {option.get('minimum', '')} to {option.get('maximum', '')}")
        elif option.get("type") == "boolean":
            parts.append("true | false")
        elif "anyOf" in option:
            parts.append(_allowed(option))
    return " or ".join(parts) + (" (or null)" if nullable else "")


def _rows(items: list[list[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in items)


def render(doc: dict[str, Any]) -> str:
    """The page for `doc` (an OpenAPI document of :mod:`pipeline.serving.openapi`)."""
    info, schemas = doc["info"], doc["components"]["schemas"]
    endpoints = [
        [f"<code>{_e(method.upper())}</code>", f"<code>{_e(path)}</code>", _e(op["summary"])]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]
    patient = schemas["Patient"]
    required = set(patient["required"])
    fields = [
        [
            f"<code>{_e(name)}</code>",
            _e(schema.get("description", "")),
            _e(_allowed(schema)),
            "required" if name in required else "optional",
        ]
        for name, schema in patient["properties"].items()
    ]
    answer = schemas["Answer"]["properties"]
    answers = [
        [f"<code>{_e(name)}</code>", _e(schema.get("description", _allowed(schema)))]
        for name, schema in answer.items()
    ]
    auth = (
        "<p>Every endpoint but the page, the health checks and this document needs "
        "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        if doc.get("security")
        else "<p>No token is configured: the service listens on loopback only.</p>"
    )
    return f"""<!doctype html><meta charset=utf-8><title>{_e(info["title"])}: API</title>
<style>body{{font:15px/1.5 system-ui;max-width:70rem;margin:24px auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td{{border-top:1px solid #ddd;padding:4px 8px;
vertical-align:top}}code{{font-size:90%}}</style>
<h1>{_e(info["title"])}</h1><p>{_e(info["description"])}</p>{auth}
<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI {_e(doc["openapi"])}).</p>
<h2>Endpoints</h2><table>{_rows(endpoints)}</table>
<h2>A patient</h2><p>Send patients to <code>POST /invocations</code> as
<code>{{"dataframe_records": [patient, ...]}}</code>, <code>{{"dataframe_split":
{{"columns": [...], "data": [[...]]}}}}</code>, <code>{{"instances": [...]}}</code> or
<code>{{"inputs": [...]}}</code> (records, or columns of equal length), or as CSV with a
header row. Every value is checked before the model runs; a broken rule is a 400 naming
the field and the rule.</p><table>{_rows(fields)}</table>
<h2>The answer</h2><p><code>{{"predictions": [answer, ...]}}</code>, one per patient, in
order.</p><table>{_rows(answers)}</table>
<h2>Errors</h2><p><code>{{"error_code", "message", "field", "rule", "allowed",
"errors": [...]}}</code>: the field and rule named, one entry per broken rule (at most 21),
never a value from the request.</p>
"""
