"""`pipeline score`: send patients from a JSON or CSV file to a running service and print
the answers as a table a person can read."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.console import print_table
from pipeline.errors import PipelineError


class ScoreError(PipelineError):
    """The file could not be read or the service refused the request."""


def read_patients(path: Path) -> list[dict[str, Any]]:
    """Patients from a CSV file (a header row; empty cells are missing) or a JSON file (a
    list of records, one record, or an MLflow ``dataframe_records`` / ``dataframe_split``
    document)."""
    import pandas as pd

    if not path.exists():
        raise ScoreError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as exc:
            raise ScoreError(f"{path}: not a CSV file with a header row ({exc})") from None
        return frame.astype(object).where(frame.notna(), None).to_dict("records")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScoreError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and "dataframe_records" in doc:
        doc = doc["dataframe_records"]
    elif isinstance(doc, dict) and "dataframe_split" in doc:
        split = doc["dataframe_split"]
        doc = [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
        raise ScoreError(f"{path}: expected a list of patient records")
    return doc


def post(url: str, records: list[dict[str, Any]], token: str | None, cafile: Path | None) -> Any:
    """POST the records to ``{url}/invocations``; the service's error message on a 4xx."""
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read())
            messages = [e["message"] for e in detail.get("errors", [])] or [detail["message"]]
        except (ValueError, KeyError, TypeError):
            messages = [exc.reason]
        raise ScoreError(
            f"the service refused the request ({exc.code}):\n  " + "\n  ".join(messages)
        ) from None
    except urllib.error.URLError as exc:
        raise ScoreError(f"cannot reach {url}: {exc.reason}") from None


def _shown(factor: dict[str, Any]) -> str:
    value, unit = factor.get("value"), factor.get("unit")
    if value is None:
        text = "not recorded"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
        text = f"{text} {unit}" if unit else text
    arrow = "↑" if factor.get("effect") == "raises" else "↓"
    return f"{arrow} {factor['name']} {text}"


def print_scores(console: Console, answers: list[dict[str, Any]]) -> None:
    colours = {"low": "green", "moderate": "yellow", "high": "red"}
    first = answers[0] if answers else {}
    table = Table(
        title=f"{first.get('model_name', '?')} version {first.get('model_version', '?')}",
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("risk", justify="right")
    table.add_column("band")
    table.add_column("main factors (↑ raises, ↓ lowers the risk)")
    for i, a in enumerate(answers):
        band = a["risk_band"]
        table.add_row(
            str(i),
            f"{a['risk_probability']:.1%}",
            f"[{colours.get(band, 'white')}]{band}[/]",
            "; ".join(_shown(f) for f in a["top_factors"]),
        )
    print_table(console, table)


def score_file(
    console: Console,
    url: str,
    patients: Path,
    *,
    token_file: Path | None = None,
    token_env: str = "PIPELINE_SERVE_TOKEN",
    cafile: Path | None = None,
) -> list[dict[str, Any]]:
    """Score every patient of the file and print the table."""
    records = read_patients(patients)
    token = token_file.read_text().strip() if token_file else os.environ.get(token_env)
    answers = post(url, records, token, cafile)["predictions"]
    print_scores(console, answers)
    return answers
