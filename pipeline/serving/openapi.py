"""The service's OpenAPI 3.1 document, generated from the contract.

What an EHR integrator, a client generator or an API gateway reads: the four request
formats of MLflow's scoring protocol with the contract's columns, types, units and ranges;
the answer (probability, band, factors); every error body; the CDS Hooks endpoints; the
bearer token. It says what the service accepts, no more and no less: a request the schema
admits is scored (a ``dataframe_split`` row's cells are the exception, JSON Schema cannot
tie a cell to its column, and the service checks them), and one it refuses gets a 4xx. The
fuzz test holds the service to that.
"""

from __future__ import annotations

from typing import Any

from pipeline.contract import Contract
from pipeline.serving import api_schemas as schemas
from pipeline.serving.api_schemas import ref
from pipeline.serving.cds_hooks import service_id

OPENAPI = "3.1.0"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(media: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "the request breaks a rule: the field and the rule are named",
        401: "missing or wrong bearer token",
        404: "no such endpoint or CDS service",
        405: "this endpoint does not take that method",
        413: "too large: body bytes or rows",
        415: "not JSON or CSV in UTF-8",
        500: "the model failed on rows that passed every check (a reference to the log)",
        503: "no model loaded yet, or over the deadline: retry",
    }
    return {str(s): _json(ref("Error"), why[s]) for s in statuses}


def document(
    contract: Contract,
    *,
    model_name: str,
    model_version: str,
    max_rows: int,
    public_url: str | None,
    auth_required: bool,
) -> dict[str, Any]:
    """The OpenAPI document of the service serving `model_name` (its current version)."""
    invocations = {
        "post": {
            "summary": "Score patients (MLflow's REST scoring protocol)",
            "description": "Send the contract's features in one of MLflow's four JSON "
            f"formats, or CSV with a header row; at most {max_rows} patients. Every value "
            "is checked against the contract before the model is called.",
            "operationId": "invocations",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ref("ScoringRequest")},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"predictions": {"type": "array", "items": ref("Answer")}},
                        "required": ["predictions"],
                    },
                    "one answer per patient, in order",
                ),
                **_errors(400, 413, 415, 500, 503),
            },
        }
    }
    hook_id = service_id(model_name)
    liveness = {
        "get": {
            "summary": "Liveness (MLflow's)",
            "security": [],
            "responses": {"200": _text("application/json", "a model is loaded")},
        }
    }
    paths: dict[str, Any] = {
        "/invocations": invocations,
        "/ping": liveness,
        "/health": liveness,
        "/version": {
            "get": {
                "summary": "MLflow's version",
                "responses": {"200": _text("application/json", "the MLflow version")},
            }
        },
        "/cds-services": {
            "get": {
                "summary": "CDS Hooks discovery",
                "responses": {
                    "200": _json({"type": "object"}, "the patient-view service and prefetch"),
                },
            }
        },
        "/cds-services/{service}": {
            "post": {
                "summary": "CDS Hooks patient-view: a card for the patient",
                "parameters": [
                    {
                        "name": "service",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": f"the service id ({hook_id})",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("HookRequest")}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"cards": {"type": "array", "items": ref("Card")}},
                            "required": ["cards"],
                        },
                        "one card: the risk, or what keeps the model from scoring",
                    ),
                    **_errors(400, 404, 413, 500, 503),
                },
            }
        },
        "/model-card": {
            "get": {
                "summary": "The served version's model card",
                "responses": {
                    "200": _text("text/markdown", "the card (HTML when asked for text/html)"),
                    **_errors(404),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": _text("text/plain", "the exposition format")},
            }
        },
        "/": {
            "get": {
                "summary": "The clinician page",
                "security": [],
                "responses": {"200": _text("text/html", "a form generated from the contract")},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/docs": {
            "get": {
                "summary": "This document, rendered",
                "security": [],
                "responses": {"200": _text("text/html", "no external assets")},
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": OPENAPI,
        "info": {
            "title": f"{contract.title or contract.name}: {model_name}",
            "version": str(model_version),
            "description": "The federated risk model served to clinicians: MLflow's REST "
            "scoring protocol, HL7 CDS Hooks, a clinician page and the model card. Inputs "
            f"are the contract {contract.name} v{contract.version}'s features in clinical "
            "units.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Patient": schemas.patient_schema(contract),
                "FullPatient": schemas.full_patient_schema(contract),
                "ScoringRequest": schemas.request_schema(contract, max_rows),
                "Answer": schemas.answer_schema(contract),
                "Error": schemas.error_schema(),
                "HookRequest": schemas.hook_request_schema(),
                "Card": schemas.card_schema(),
            }
        },
    }
    if public_url:
        doc["servers"] = [{"url": public_url}]
    if auth_required:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearerAuth": []}]
        for operation in (op for ops in paths.values() for op in ops.values()):
            if operation.get("security") != []:  # every operation the token guards
                operation["responses"].update(_errors(401))
    return doc
