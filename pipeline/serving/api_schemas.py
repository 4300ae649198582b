"""The JSON Schemas of what the service takes and answers, from the contract: a patient
(each feature's type, unit, range or categories, and whether it may be missing), the four
scoring request formats, an answer, an error body, a CDS Hooks call and its card."""

from __future__ import annotations

from typing import Any

from pipeline.contract import Contract, Feature
from pipeline.serving.cds_hooks import HOOK

SCALAR = {"type": ["number", "string", "boolean", "null"]}
REF = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def feature_schema(f: Feature) -> dict[str, Any]:
    """One column's values as the contract checks them."""
    doc = (
        f"{f.label}"
        + (f" ({f.unit})" if f.unit else "")
        + (f": {f.description}" if f.description else "")
    )
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        values: dict[str, Any] = {"type": "number", "minimum": lo, "maximum": hi}
        if f.missing_codes:  # a declared missing code is read as missing
            values = {"anyOf": [values, {"enum": list(f.missing_codes)}]}
    elif f.kind == "categorical":
        values = {"enum": list(f.categories or [])}
    else:
        values = {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]}
    if f.nullable:
        values = {"anyOf": [values, {"type": "null"}]}
    return {**values, "description": doc}


def patient_schema(contract: Contract) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One patient: the contract's features in clinical units. Optional "
        "features may be null or absent; no other key is accepted (identifiers included).",
        "properties": {f.name: feature_schema(f) for f in contract.features},
        "required": [f.name for f in contract.features if not f.nullable],
        "additionalProperties": False,
    }


def full_patient_schema(contract: Contract) -> dict[str, Any]:
    """A patient in ``instances`` or ``inputs`` records: MLflow reads those records as
    columns, so each one names every feature (null for a missing optional one)."""
    return {
        **patient_schema(contract),
        "description": "One patient, every feature named (null for a missing optional "
        "one): MLflow reads instances and inputs records as columns.",
        "required": list(contract.feature_names),
    }


def columns_schema(contract: Contract, max_rows: int) -> dict[str, Any]:
    """``instances`` or ``inputs`` as columns: each feature a list of its values."""
    return {
        "type": "object",
        "properties": {
            f.name: {
                "type": "array",
                "items": feature_schema(f),
                "minItems": 1,
                "maxItems": max_rows,
            }
            for f in contract.features
        },
        "required": [f.name for f in contract.features if not f.nullable],
        "additionalProperties": False,
        "description": "Columns: every list of the same length, one value per patient.",
    }


def request_schema(contract: Contract, max_rows: int) -> dict[str, Any]:
    rows = {"type": "array", "items": ref("Patient"), "minItems": 1, "maxItems": max_rows}
    full_rows = {**rows, "items": ref("FullPatient")}
    params = {"type": "object", "description": "accepted and ignored, as MLflow does"}

    def body(key: str, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {key: value, "params": params},
            "required": [key],
            "additionalProperties": False,
        }

    split = {
        "type": "object",
        "properties": {
            "columns": {
                "type": "array",
                "items": {"enum": contract.feature_names},
                "uniqueItems": True,
            },
            "data": {
                "type": "array",
                "items": {"type": "array", "items": SCALAR},
                "minItems": 1,
                "maxItems": max_rows,
            },
            "index": {"type": "array"},
        },
        "required": ["columns", "data"],
        "additionalProperties": False,
        "description": "pandas' split orient: each row one value per column, in order.",
    }
    return {
        "oneOf": [
            body("dataframe_split", split),
            body("dataframe_records", rows),
            body("instances", {"oneOf": [full_rows, columns_schema(contract, max_rows)]}),
            body("inputs", {"oneOf": [full_rows, columns_schema(contract, max_rows)]}),
        ]
    }


def answer_schema(contract: Contract) -> dict[str, Any]:
    factor = {
        "type": "object",
        "properties": {
            "feature": {"enum": contract.feature_names},
            "name": {"type": "string", "description": "the feature's display name"},
            "value": {**SCALAR, "description": "the patient's value (null: not recorded)"},
            "unit": {"type": ["string", "null"]},
            "effect": {"enum": ["raises", "lowers"]},
        },
        "required": ["feature", "name", "value", "unit", "effect"],
    }
    return {
        "type": "object",
        "properties": {
            "risk_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "risk_band": {
                "enum": [b.name for b in contract.risk_bands],
                "description": "; ".join(f"{b.name}: {b.meaning}" for b in contract.risk_bands),
            },
            "top_factors": {"type": "array", "items": factor},
            "model_name": {"type": "string"},
            "model_version": {"type": ["string", "null"]},
        },
        "required": ["risk_probability", "risk_band", "top_factors", "model_name"],
    }


def error_schema() -> dict[str, Any]:
    entry = {
        "type": "object",
        "properties": {
            "field": {"type": ["string", "null"], "description": "a name, never a value"},
            "rule": {"type": "string"},
            "message": {"type": "string"},
            "allowed": {"description": "what the rule allows (ranges, categories, names)"},
            "rows": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["rule", "message"],
    }
    return {
        "type": "object",
        "description": "MLflow's error convention (error_code, message), with the field and "
        "the rule named; one entry per broken rule in `errors`, at most 21. Never an echo of "
        "the request, never a trace: a 500 carries a reference to the server's log instead.",
        "properties": {
            "error_code": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": ["string", "null"]},
            "rule": {"type": "string"},
            "allowed": {},
            "errors": {"type": "array", "items": entry, "maxItems": 21},
            "reference": {"type": "string"},
        },
        "required": ["error_code", "message"],
    }


def hook_request_schema() -> dict[str, Any]:
    bundle = {"type": "object", "description": "a FHIR R4 searchset Bundle (or one resource)"}
    return {
        "type": "object",
        "properties": {
            "hook": {"enum": [HOOK]},
            "hookInstance": {"type": "string"},
            "context": {
                "type": "object",
                "properties": {"patientId": {"type": "string"}},
                "required": ["patientId"],
            },
            "prefetch": {
                "type": "object",
                "properties": {
                    "patient": {"type": "object", "description": "the FHIR R4 Patient"},
                    "observations": bundle,
                    "conditions": bundle,
                    "medications": bundle,
                    "familyHistory": bundle,
                },
                "required": ["patient"],
            },
        },
        "required": ["hook", "hookInstance", "context", "prefetch"],
    }


def card_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "uuid": {"type": "string"},
            "summary": {"type": "string", "maxLength": 140},
            "indicator": {"enum": ["info", "warning", "critical"]},
            "detail": {"type": "string"},
            "source": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "url": {"type": "string"}},
                "required": ["label"],
            },
        },
        "required": ["summary", "indicator", "source"],
    }
