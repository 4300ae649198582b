"""The OpenAPI document is generated from the contract, valid OpenAPI 3, and says what the
service accepts: every column with its type, unit and range; the four request formats;
every error body; the CDS Hooks endpoints; the token when there is one."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate
from support import ROOT

from pipeline.contract import load_contract
from pipeline.serving import api_docs, openapi

CONTRACTS = sorted((ROOT / "schemas").glob("*.yaml"))


def _document(contract, *, auth_required: bool = False) -> dict:
    return openapi.document(
        contract,
        model_name="diabetes-risk",
        model_version="3",
        max_rows=100,
        public_url="https://cds.example.org/risk",
        auth_required=auth_required,
    )


@pytest.mark.parametrize("path", CONTRACTS, ids=[p.stem for p in CONTRACTS])
def test_the_document_is_valid_openapi_and_lists_every_column(path) -> None:
    contract = load_contract(path)
    doc = _document(contract)
    validate(doc)  # raises on an invalid document
    patient = doc["components"]["schemas"]["Patient"]
    assert set(patient["properties"]) == set(contract.feature_names)
    required = {f.name for f in contract.features if not f.nullable}
    assert set(patient["required"]) == required
    for f in contract.features:
        text = str(patient["properties"][f.name])
        if f.unit:
            assert f.unit in text
        if f.range is not None:
            schema = patient["properties"][f.name]
            assert f"'minimum': {f.range[0]}" in text and f"'maximum': {f.range[1]}" in text, schema
    assert doc["servers"] == [{"url": "https://cds.example.org/risk"}]


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def _patient(contract) -> dict:
    values = {
        "age": 58,
        "sex": "female",
        "bmi": 31.0,
    }
    row = {}
    for f in contract.features:
        if f.name in values:
            row[f.name] = values[f.name]
        elif f.kind == "categorical":
            row[f.name] = f.categories[0]
        elif f.kind == "boolean":
            row[f.name] = False
        else:
            row[f.name] = f.range[0]
    return row


def test_the_request_schema_admits_each_format_and_refuses_what_the_service_refuses() -> None:
    contract = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")
    doc = _document(contract)
    check = _validator(doc, "ScoringRequest")
    row = _patient(contract)
    cols = list(row)
    for body in (
        {"dataframe_records": [row]},
        {"instances": [row, row]},
        {"inputs": {c: [row[c]] for c in cols}},
        {"dataframe_split": {"columns": cols, "data": [[row[c] for c in cols]]}},
    ):
        assert not list(check.iter_errors(body)), body
    for bad in (
        {"instances": "x"},
        {"inputs": 5},
        {"dataframe_records": [{**row, "age": [58]}]},
        {"dataframe_records": [{**row, "age": 1e6}]},
        {"dataframe_records": [{**row, "sex": "unknown-category"}]},
        {"dataframe_records": [row], "instances": [row]},
        {"dataframe_records": [row] * 101},
        [row],
    ):
        assert list(check.iter_errors(bad)), bad


def test_every_error_status_has_the_error_body_and_auth_is_declared_when_required() -> None:
    contract = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")
    open_doc, locked = _document(contract), _document(contract, auth_required=True)
    for doc in (open_doc, locked):
        for ops in doc["paths"].values():
            for op in ops.values():
                for status, response in op["responses"].items():
                    if int(status) >= 400:
                        schema = response["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/Error"}
    assert "security" not in open_doc
    assert locked["security"] == [{"bearerAuth": []}]
    assert locked["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "401" in locked["paths"]["/invocations"]["post"]["responses"]
    assert locked["paths"]["/ping"]["get"]["security"] == []
    assert "/cds-services/{service}" in open_doc["paths"]


def test_the_rendered_docs_have_no_external_assets_and_name_every_column() -> None:
    contract = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")
    page = api_docs.render(_document(contract))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page
    for name in contract.feature_names:
        assert f"<code>{name}</code>" in page
