"""`pipeline serve` for real: a registered champion served on loopback and queried over
HTTP; bad requests of every kind; access control; metrics; the access log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.serving import (
    CONTRACT,
    MODEL_NAME,
    PATIENT,
    fitted_logistic,
    free_port,
    register,
    running_server,
    write_config,
)

from pipeline.champion import move_champion
from pipeline.contract import load_contract
from pipeline.registry import registry_client

pytestmark = pytest.mark.slow

# Values no error body, log line or metric may ever contain.
MARK_TEXT = "Zelda-Quux-7731"
MARK_NUMBER = 987.654321
MARKS = (MARK_TEXT, "987.654321", "987.65")
TOKEN = "s3rving-t0ken-for-tests-0123456789"
contract = load_contract(CONTRACT)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    """A fitted logistic model registered as version 1 and made champion."""
    tmp = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    model, frame = fitted_logistic(tmp / "extract")
    version = register(uri, model)
    move_champion(registry_client(uri), MODEL_NAME, version)
    return tmp, uri, model, frame


@pytest.fixture(scope="module")
def server(champion):
    tmp, uri, _, _ = champion
    with running_server(write_config(tmp, uri)) as s:
        yield s


def _records(frame, n: int) -> list[dict]:
    rows = frame[contract.feature_names].head(n)
    return json.loads(rows.to_json(orient="records"))


def test_valid_patients_get_probabilities_bands_and_factors(server, champion) -> None:
    _, _, model, frame = champion
    records = _records(frame, 40)
    status, body = server.score(records)
    assert status == 200
    answers = body["predictions"]
    p = np.array([a["risk_probability"] for a in answers])
    assert ((p >= 0) & (p <= 1)).all()
    expected = model.predict_proba(frame[contract.feature_names].head(40))
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-9)
    assert [a["risk_band"] for a in answers] == list(contract.risk_band(p))
    labels = {f.label for f in contract.features}
    for a in answers:
        assert a["model_name"] == MODEL_NAME and a["model_version"] == "1"
        assert len(a["top_factors"]) == 3
        assert {f["name"] for f in a["top_factors"]} <= labels
        assert {f["effect"] for f in a["top_factors"]} <= {"raises", "lowers"}


def test_every_mlflow_input_format_gives_the_same_answer(server) -> None:
    cols = list(PATIENT)
    bodies = [
        {"dataframe_records": [PATIENT, PATIENT]},
        {"dataframe_split": {"columns": cols, "data": [[PATIENT[c] for c in cols]] * 2}},
        {"inputs": {c: [PATIENT[c]] * 2 for c in cols}},
        {"instances": [PATIENT, PATIENT]},
    ]
    answers = []
    for body in bodies:
        status, headers, raw = server.request("POST", "/invocations", body)
        assert status == 200, raw[:500]
        assert headers["x-model-version"] == "1"
        answers.append(json.loads(raw)["predictions"])
    for other in answers[1:]:
        assert other == answers[0]
    csv = (
        ",".join(cols)
        + "\n"
        + ",".join("" if PATIENT[c] is None else str(PATIENT[c]) for c in cols)
    )
    status, _, raw = server.request("POST", "/invocations", csv, content_type="text/csv")
    assert status == 200, raw[:500]
    assert json.loads(raw)["predictions"][0]["risk_probability"] == pytest.approx(
        answers[0][0]["risk_probability"], abs=1e-12
    )


def _hook(prefetch: dict) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": prefetch,
    }


_PATIENT_RES = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "birthDate": "1970-03-02",
}
_BAD_FHIR = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "valueQuantity": {"value": MARK_TEXT, "unit": "%"},
            }
        }
    ],
}


def _without(key: str) -> dict:
    return {k: v for k, v in PATIENT.items() if k != key}


BAD = [
    # (id, path, body, content type, status, field, rule)
    ("empty body", "/invocations", b"", "application/json", 400, None, "body"),
    ("not JSON", "/invocations", b"{'age': 58,", "application/json", 400, None, "json"),
    ("not UTF-8", "/invocations", b"\xff\xfe{\x00", "application/json", 400, None, "json"),
    ("a bare list", "/invocations", [PATIENT], "application/json", 400, None, "shape"),
    (
        "unknown key",
        "/invocations",
        {"patients": [PATIENT]},
        "application/json",
        400,
        "patients",
        "shape",
    ),
    (
        "two formats",
        "/invocations",
        {"inputs": [PATIENT], "instances": [PATIENT]},
        "application/json",
        400,
        None,
        "shape",
    ),
    (
        "ragged split",
        "/invocations",
        {"dataframe_split": {"columns": ["age", "sex"], "data": [[58]]}},
        "application/json",
        400,
        "dataframe_split.data",
        "shape",
    ),
    (
        "records not objects",
        "/invocations",
        {"dataframe_records": [[58, "female"]]},
        "application/json",
        400,
        "dataframe_records",
        "shape",
    ),
    (
        "missing field",
        "/invocations",
        {"dataframe_records": [_without("sex")]},
        "application/json",
        400,
        "sex",
        "required",
    ),
    (
        "null required",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "age": None}]},
        "application/json",
        400,
        "age",
        "not null",
    ),
    (
        "wrong type",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "bmi": MARK_TEXT}]},
        "application/json",
        400,
        "bmi",
        "number",
    ),
    (
        "out of range",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "hba1c": MARK_NUMBER}]},
        "application/json",
        400,
        "hba1c",
        "range",
    ),
    (
        "unknown category",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "smoking_status": MARK_TEXT}]},
        "application/json",
        400,
        "smoking_status",
        "category",
    ),
    (
        "NaN",
        "/invocations",
        b'{"dataframe_records": [{"bmi": NaN, "age": 987.654321}]}',
        "application/json",
        400,
        "bmi",
        "finite",
    ),
    (
        "Infinity",
        "/invocations",
        b'{"dataframe_split": {"columns": ["age", "sbp"], "data": [[987.654321, -Infinity]]}}',
        "application/json",
        400,
        "sbp",
        "finite",
    ),
    (
        "overflowing number",
        "/invocations",
        json.dumps({"dataframe_records": [{**PATIENT, "sbp": 1}]}).replace(
            '"sbp": 1', '"sbp": 1e999'
        ),
        "application/json",
        400,
        "sbp",
        "finite",
    ),
    (
        "boolean for a number",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "sbp": True}]},
        "application/json",
        400,
        "sbp",
        "number",
    ),
    (
        "nested value",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "bmi": [[[MARK_NUMBER]]]}]},
        "application/json",
        400,
        "bmi",
        "scalar",
    ),
    ("deep nesting", "/invocations", b"[" * 200_000, "application/json", 400, None, "depth"),
    (
        "huge batch",
        "/invocations",
        {"dataframe_split": {"columns": ["age"], "data": [[MARK_NUMBER]] * 10_001}},
        "application/json",
        413,
        None,
        "rows",
    ),
    (
        "body too large",
        "/invocations",
        b" " * (17 * 1024 * 1024),
        "application/json",
        413,
        None,
        "body size",
    ),
    (
        "identifier column",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "patient_name": MARK_TEXT}]},
        "application/json",
        400,
        "patient_name",
        "no identifiers",
    ),
    (
        "undeclared column",
        "/invocations",
        {"dataframe_records": [{**PATIENT, "favourite_colour": MARK_TEXT}]},
        "application/json",
        400,
        "favourite_colour",
        "declared features",
    ),
    (
        "wrong media type",
        "/invocations",
        MARK_TEXT.encode(),
        "text/plain",
        415,
        "Content-Type",
        "media type",
    ),
    ("bad CSV", "/invocations", b'age,sex\n"58,female\n', "text/csv", 400, None, None),
    (
        "hook not an object",
        "/cds-services/diabetes-risk",
        [1, 2],
        "application/json",
        400,
        "(body)",
        "object",
    ),
    (
        "bad hook name",
        "/cds-services/diabetes-risk",
        {**_hook({"patient": _PATIENT_RES}), "hook": "order-sign"},
        "application/json",
        400,
        "hook",
        "hook",
    ),
    (
        "hook without context",
        "/cds-services/diabetes-risk",
        {k: v for k, v in _hook({}).items() if k != "context"},
        "application/json",
        400,
        "context",
        "required",
    ),
    (
        "hook without prefetch",
        "/cds-services/diabetes-risk",
        {k: v for k, v in _hook({}).items() if k != "prefetch"},
        "application/json",
        400,
        "prefetch",
        "required",
    ),
    (
        "hook patient not a Patient",
        "/cds-services/diabetes-risk",
        _hook({"patient": {"resourceType": "Observation"}}),
        "application/json",
        400,
        "prefetch.patient",
        "resourceType",
    ),
    (
        "another patient's Patient",
        "/cds-services/diabetes-risk",
        _hook({"patient": {**_PATIENT_RES, "id": "p-99"}}),
        "application/json",
        400,
        "prefetch.patient.id",
        "patient",
    ),
    (
        "malformed FHIR resource",
        "/cds-services/diabetes-risk",
        _hook({"patient": _PATIENT_RES, "observations": _BAD_FHIR}),
        "application/json",
        400,
        None,
        "fhir",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "field", "rule"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_a_bad_request_is_a_4xx_naming_field_and_rule_and_echoing_nothing(
    server, path, body, content_type, status, field, rule
) -> None:
    got, _, raw = server.request("POST", path, body, content_type=content_type)
    assert got == status, raw[:800]
    text = raw.decode()
    error = json.loads(text)
    assert error["message"] and error["errors"]
    if rule is not None:
        assert error["rule"] == rule
    if field is not None:
        assert error["field"] == field
    for mark in MARKS:
        assert mark not in text
    assert "Traceback" not in text and 'File "' not in text


def test_at_least_twenty_kinds_of_bad_request_are_covered() -> None:
    assert len(BAD) >= 20


def test_methods_and_unknown_paths_are_4xx(server) -> None:
    assert server.request("GET", "/invocations")[0] == 405
    status, _, raw = server.request("GET", f"/{MARK_TEXT}")
    assert status == 404 and MARK_TEXT not in raw.decode()
    assert server.request("POST", "/cds-services/other-model", _hook({}))[0] == 404


def test_mlflow_protocol_endpoints_answer(server) -> None:
    import mlflow

    assert server.request("GET", "/ping")[0] == 200
    assert server.request("GET", "/health")[0] == 200
    status, _, raw = server.request("GET", "/version")
    assert status == 200 and raw.decode() == mlflow.__version__


def test_no_patient_value_reaches_the_access_log(server) -> None:
    for case in BAD:
        server.request("POST", case[1], case[2], content_type=case[3])
    server.score([{**PATIENT, "bmi": MARK_NUMBER}])
    log = server.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    assert lines, log[-2000:]
    assert {"time", "model_version", "rows", "status", "latency_ms", "caller"} <= set(lines[0])
    assert any(line["status"] == 200 and line["rows"] == 40 for line in lines)
    for mark in MARKS:
        assert mark not in log


def test_metrics_count_requests_by_status_and_show_the_version(server) -> None:
    server.score([PATIENT])
    status, _, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200
    assert 'pipeline_serving_requests_total{endpoint="/invocations",status="200"}' in text
    assert 'pipeline_serving_requests_total{endpoint="/invocations",status="400"}' in text
    assert "pipeline_serving_request_seconds_bucket" in text
    assert (
        f'pipeline_serving_model_version{{alias="champion",model_name="{MODEL_NAME}"}} 1.0' in text
    )
    assert 'status="5' not in text


def test_a_version_without_a_model_card_answers_404_saying_so(server) -> None:
    status, _, raw = server.request("GET", "/model-card")
    assert status == 404
    assert "has no model card" in json.loads(raw)["message"]


def test_the_page_is_self_contained(server) -> None:
    status, headers, raw = server.request("GET", "/")
    page = raw.decode()
    assert status == 200 and "<form" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    for f in contract.features:
        assert f.label in page
    assert "mg/dL, 40-126" in page and "optional" in page


# -- access control ----------------------------------------------------------------------
def test_binding_beyond_loopback_without_a_token_refuses_to_start(champion) -> None:
    tmp, uri, _, _ = champion
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--config",
            str(write_config(tmp, uri)),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in __import__("os").environ.items() if k != "PIPELINE_SERVE_TOKEN"},
    )
    assert done.returncode == 2
    assert "needs a bearer token" in done.stderr


def test_a_server_beyond_loopback_refuses_requests_without_the_token(champion) -> None:
    tmp, uri, _, _ = champion
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = write_config(tmp, uri, token_file=token_file)
    with running_server(config, host="0.0.0.0") as s:
        status, headers, raw = s.request("POST", "/invocations", {"dataframe_records": [PATIENT]})
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
        assert json.loads(raw)["rule"] == "bearer token"
        wrong = s.request("POST", "/invocations", {"dataframe_records": [PATIENT]}, token="x" * 34)
        assert wrong[0] == 401
        assert s.request("GET", "/metrics")[0] == 401
        assert s.request("GET", "/cds-services")[0] == 401
        assert s.request("GET", "/ping")[0] == 200  # health checks stay open
        status, body = s.score([PATIENT], token=TOKEN)
        assert status == 200 and body["predictions"][0]["model_version"] == "1"
        assert TOKEN not in s.log.read_text()


def test_tls_is_served_when_given_a_certificate(champion, tmp_path: Path) -> None:
    from pipeline.protocol.tls import JobPKI

    _, uri, _, _ = champion
    with JobPKI.create(tmp_path / "pki", ["client"]) as pki:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        config = write_config(
            tmp_path, uri, token_file=token_file, tls_cert=pki.server_cert, tls_key=pki.server_key
        )
        with running_server(config, host="0.0.0.0", tls_ca=pki.ca_cert) as s:
            assert s.url.startswith("https://")
            status, body = s.score([PATIENT], token=TOKEN)
            assert status == 200 and body["predictions"][0]["risk_band"]
            assert s.score([PATIENT])[0] == 401


# -- pipeline score ----------------------------------------------------------------------
def test_pipeline_score_prints_a_table_from_json_and_csv(server, tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from pipeline.cli import app

    example = Path(__file__).resolve().parent.parent / "docs" / "patients.json"
    csv = tmp_path / "patients.csv"
    pd.DataFrame(json.loads(example.read_text())).to_csv(csv, index=False)
    runner = CliRunner()
    outputs = []
    for path in (example, csv):
        result = runner.invoke(app, ["score", "--url", server.url, str(path)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        assert f"{MODEL_NAME} version 1" in result.output
        assert "high" in result.output or "moderate" in result.output or "low" in result.output
    assert outputs[0] == outputs[1]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**PATIENT, "hba1c": MARK_NUMBER}]))
    result = runner.invoke(app, ["score", "--url", server.url, str(bad)])
    assert result.exit_code == 2
    assert "hba1c" in result.output and "rule: range" in result.output


def test_the_demo_ends_by_saying_how_to_serve_and_score(champion) -> None:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.demo import print_how_to_serve

    tmp, uri, _, _ = champion
    console = Console(record=True, width=200)
    print_how_to_serve(console, load_config(write_config(tmp, uri)))
    text = console.export_text()
    assert f"{MODEL_NAME} version 1 is the champion" in text
    assert "pipeline serve --config" in text and "pipeline score --url" in text


def test_a_request_over_the_deadline_is_refused_in_time(champion) -> None:
    import time

    tmp, uri, _, frame = champion
    config = write_config(tmp, uri, deadline_s=0.05)
    rows = _records(frame, 4000) * 2
    with running_server(config) as s:
        started = time.monotonic()
        status, headers, raw = s.request("POST", "/invocations", {"dataframe_records": rows})
        assert status == 503 and headers.get("retry-after") == "1"
        assert json.loads(raw)["rule"] == "deadline"
        assert time.monotonic() - started < 5
        # and the server goes on: the refused batch's scoring thread may still hold the CPU
        # for a moment, so a 50 ms deadline can refuse the next request too, not later ones
        answered = time.monotonic() + 10
        while (status := s.score([PATIENT])[0]) == 503 and time.monotonic() < answered:
            time.sleep(0.2)
        assert status == 200
