"""HL7 CDS Hooks 1.0 for the EHR: FHIR R4 resources in, a card out.

The EHR discovers the service at ``GET /cds-services`` and calls ``patient-view`` with the
patient's FHIR resources in ``prefetch`` (the service is offline by design and never
queries the FHIR server back). :mod:`pipeline.serving.fhir_reading` reads them into the
contract's features, keeping only what is about the patient in context and measured in a
unit the contract converts; this module checks the hook envelope and writes the card.

A malformed hook request is a 400 naming the field and rule. A patient whose record
lacks a required feature, or holds one outside the model's range, gets a card saying
what is missing, not an error: the clinician sees why there is no score. Whatever the
reading left out (another patient's resources, bounds, unconvertible units) is listed on
the card under "Not used", by reason, with counts and feature labels only.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import pandas as pd

from pipeline.contract import Contract
from pipeline.models.answer import answer_records
from pipeline.models.request import RequestError, check_request
from pipeline.serving.fhir_reading import (
    PREFETCH_KEY,
    HookError,
    NotUsed,
    Reading,
    features_from_prefetch,
    read_prefetch,
)

HOOK = "patient-view"
INDICATOR = {0: "info", 1: "warning"}  # bands past the second: critical


def service_id(model_name: str) -> str:
    """The service's id in discovery and in its URL: the registered model's name."""
    return model_name


def discovery(contract: Contract, model_name: str) -> dict[str, Any]:
    """The CDS Hooks discovery document: one patient-view service and the prefetch
    templates its mapping needs."""
    prefetch: dict[str, str] = {}
    loinc: list[str] = []
    for f in contract.features:
        if f.fhir is None:
            continue
        key = PREFETCH_KEY[f.fhir.resource]
        if f.fhir.resource == "Patient":
            prefetch[key] = "Patient/{{context.patientId}}"
        elif f.fhir.resource == "Observation":
            loinc += [c for c in f.fhir.codes if c not in loinc]
        else:
            prefetch[key] = f"{f.fhir.resource}?patient={{{{context.patientId}}}}"
    if loinc:
        prefetch["observations"] = "Observation?patient={{context.patientId}}&code=" + ",".join(
            loinc
        )
    return {
        "services": [
            {
                "hook": HOOK,
                "id": service_id(model_name),
                "title": contract.title or model_name,
                "description": f"{contract.title or contract.name}: the patient's risk, "
                "its band and the factors behind it, from the federated model "
                f"{model_name}.",
                "prefetch": prefetch,
            }
        ]
    }


def _require(obj: Any, key: str, kind: type, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        name = {str: "a string", dict: "an object"}.get(kind, kind.__name__)
        raise HookError(f"{where}{key}", "required", f"{where}{key} must be {name}")
    return value


def parse_hook(body: Any) -> tuple[str, dict[str, Any]]:
    """Check a CDS Hooks call's envelope; returns the patient in context and the prefetch."""
    if not isinstance(body, dict):
        raise HookError("(body)", "object", "a CDS Hooks request is a JSON object")
    hook = _require(body, "hook", str, "")
    if hook != HOOK:
        raise HookError("hook", "hook", f"this service answers the {HOOK} hook (rule: hook)")
    _require(body, "hookInstance", str, "")
    context = _require(body, "context", dict, "")
    patient_id = _require(context, "patientId", str, "context.")
    if not patient_id.strip():
        raise HookError(
            "context.patientId", "required", "context.patientId must be a FHIR Patient id"
        )
    prefetch = body.get("prefetch")
    if not isinstance(prefetch, dict):
        raise HookError(
            "prefetch",
            "required",
            "prefetch is required: this service never queries the FHIR server (rule: prefetch)",
        )
    return patient_id, prefetch


# -- the card ----------------------------------------------------------------------------
def _fmt(value: Any, unit: str | None) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{value} {unit}".strip() if unit else str(value)


NOUNS = {
    "Observation": ("observation", "observations"),
    "Condition": ("condition", "conditions"),
    "MedicationStatement": ("medication statement", "medication statements"),
    "FamilyMemberHistory": ("family history entry", "family history entries"),
    "value": ("value", "values"),
}


def not_used_lines(items: list[NotUsed]) -> list[str]:
    """One line per resource type and reason: how many were left out and the features they
    bore on. Counts and labels only: never a value, never another patient's id."""
    groups: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for item in items:
        count, labels = groups.get((item.resource, item.reason), (0, []))
        labels = labels + [label for label in item.labels if label not in labels]
        groups[item.resource, item.reason] = (count + 1, labels)
    lines = []
    for (resource, reason), (count, labels) in groups.items():
        noun = NOUNS.get(resource, ("resource", "resources"))[count != 1]
        about = f" ({', '.join(labels)})" if labels else ""
        lines.append(f"- {count} {noun} {reason}{about}")
    return lines


def _reading_notes(reading: Reading) -> str:
    """The card's notes on how the record was read, and its "Not used" section."""
    text = "".join(f"{note}\n\n" for note in dict.fromkeys(reading.notes))
    lines = not_used_lines(reading.not_used)
    if lines:
        text += "Not used:\n\n" + "\n".join(lines) + "\n\n"
    return text


def card_for(
    contract: Contract,
    model: Any,
    reading: Reading,
    *,
    model_name: str,
    model_version: str,
    card_url: str | None,
) -> dict[str, Any]:
    """The patient's card: a risk card, or one that says what keeps the model from
    scoring (a missing required feature, a value outside the model's range). Both say
    what was not used and whether the age is approximate."""
    record = reading.record
    source = {"label": f"{model_name} v{model_version} (federated risk model)"}
    if card_url:
        source["url"] = card_url
    frame = pd.DataFrame([record], columns=contract.feature_names)
    try:
        cols = check_request(contract, frame)
    except RequestError as exc:
        lines = [
            f"- **{contract.feature(v.field).label}**: {_why(contract, v)}"
            for v in exc.violations
            if v.field in contract.feature_names
        ]
        return {
            "uuid": str(uuid.uuid4()),
            "summary": f"{contract.title or 'Risk'}: not scored, data missing"[:139],
            "indicator": "info",
            "detail": (
                "The model cannot score this patient yet:\n\n"
                + "\n".join(lines)
                + "\n\n"
                + _reading_notes(reading)
            ).rstrip(),
            "source": source,
        }
    (row,) = answer_records(
        contract, model, cols, model_name=model_name, model_version=model_version
    )
    p, band = float(row["risk_probability"]), str(row["risk_band"])
    bands = [b.name for b in contract.risk_bands]
    rank = bands.index(band)
    meaning = contract.risk_bands[rank].meaning
    summary = f"{contract.title or 'Risk'}: {p:.0%} ({band})"
    if len(summary) >= 140:
        summary = f"Risk {p:.0%} ({band})"
    factors = "\n".join(
        f"- **{fa['name']}** {_fmt(fa['value'], fa['unit'])}: {fa['effect']} the risk"
        for fa in row["top_factors"]
    )
    missing = [f.label for f in contract.features if record.get(f.name) is None]
    detail = (
        f"**{p:.1%}** risk, band **{band}**" + (f": {meaning}" if meaning else "") + "\n\n"
        f"Main factors:\n\n{factors}\n\n"
        + (f"Not recorded: {', '.join(missing)}.\n\n" if missing else "")
        + _reading_notes(reading)
        + f"Model {model_name} version {model_version}."
    )
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": INDICATOR.get(rank, "critical"),
        "detail": detail,
        "source": source,
    }


def _why(contract: Contract, v: Any) -> str:
    """Why a feature keeps the model from scoring, in the clinician's terms."""
    f = contract.feature(v.field)
    if v.rule in ("required", "not null"):
        return "not in the record (required)"
    if v.rule in ("range", "finite") and f.range is not None:
        lo, hi = f.range
        return f"outside the model's range {lo:g}-{hi:g} {f.unit or ''}".strip()
    return f"not usable ({v.rule})"


def hook_response(
    contract: Contract,
    model: Any,
    body: Any,
    *,
    model_name: str,
    model_version: str,
    card_url: str | None,
    today: date | None = None,
) -> dict[str, Any]:
    """The CDS Hooks response to one patient-view call: one card about the patient in
    context. Raises only :class:`HookError` for what the request can contain."""
    patient_id, prefetch = parse_hook(body)
    reading = read_prefetch(contract, prefetch, patient_id, today)
    card = card_for(
        contract,
        model,
        reading,
        model_name=model_name,
        model_version=model_version,
        card_url=card_url,
    )
    return {"cards": [card]}


__all__ = ["HookError", "discovery", "features_from_prefetch", "hook_response", "read_prefetch"]
