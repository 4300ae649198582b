"""HL7 CDS Hooks 1.0 for the EHR: FHIR R4 resources in, a card out.

The EHR discovers the service at ``GET /cds-services`` and calls ``patient-view`` with the
patient's FHIR resources in ``prefetch`` (the service is offline by design and never
queries the FHIR server back). Each resource is parsed with ``fhir.resources`` (its R4B
models: R4's Patient, Observation, Condition, MedicationStatement and
FamilyMemberHistory are the same there) and mapped onto the contract's features through
the contract's own ``fhir:`` declarations, so another task brings its own mapping. Units
the contract declares are converted; any other unit is refused.

A malformed hook request is a 400 naming the field and rule. A patient whose record
lacks a required feature, or holds one outside the model's range, gets a card saying
what is missing, not an error: the clinician sees why there is no score.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from pipeline.contract import Contract, Feature, FhirSource
from pipeline.models.answer import answer
from pipeline.models.request import RequestError, check_request

HOOK = "patient-view"
FINAL = {"final", "amended", "corrected"}
PREFETCH_KEY = {
    "Patient": "patient",
    "Observation": "observations",
    "Condition": "conditions",
    "MedicationStatement": "medications",
    "FamilyMemberHistory": "familyHistory",
}
INDICATOR = {0: "info", 1: "warning"}  # bands past the second: critical


class HookError(ValueError):
    """A hook request that is not a valid CDS Hooks call: field, rule, message."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.field, self.rule = field, rule

    def body(self) -> dict[str, Any]:
        one = {"field": self.field, "rule": self.rule, "message": str(self)}
        return {"error_code": "INVALID_PARAMETER_VALUE", **one, "errors": [one]}


def service_id(model_name: str) -> str:
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


# -- reading the request -----------------------------------------------------------------
def _require(obj: Any, key: str, kind: type, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        name = {str: "a string", dict: "an object"}.get(kind, kind.__name__)
        raise HookError(f"{where}{key}", "required", f"{where}{key} must be {name}")
    return value


def _parse(resource_type: str, raw: Any, where: str) -> Any:
    """A FHIR resource parsed by fhir.resources; errors name the element, not the value."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    if not isinstance(raw, dict) or raw.get("resourceType") != resource_type:
        raise HookError(where, "resourceType", f"{where} must be a FHIR {resource_type}")
    try:
        return get_fhir_model_class(resource_type).model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise HookError(
            f"{where}.{loc}", "fhir", f"{where}.{loc}: {err['msg']} (rule: FHIR R4 {resource_type})"
        ) from None


def _entries(raw: Any, resource_type: str, where: str) -> list[Any]:
    """The resources of one type in a prefetch value (a searchset Bundle, or one resource)."""
    if isinstance(raw, dict) and raw.get("resourceType") == resource_type:
        return [_parse(resource_type, raw, where)]
    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        raise HookError(where, "bundle", f"{where} must be a FHIR Bundle of {resource_type}")
    out = []
    entries = raw.get("entry") or []
    if not isinstance(entries, list):
        raise HookError(f"{where}.entry", "bundle", f"{where}.entry must be a list")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
            out.append(_parse(resource_type, resource, f"{where}.entry[{i}].resource"))
        elif not isinstance(resource, dict):
            raise HookError(f"{where}.entry[{i}]", "bundle", "every entry needs a resource")
    return out


def _codings(concept: Any) -> list[str]:
    if concept is None:
        return []
    return [f"{c.system}|{c.code}" for c in concept.coding or [] if c.system and c.code]


def _matches(codings: list[str], wanted: list[str]) -> bool:
    for code in wanted:
        if code.endswith("*"):
            if any(c.startswith(code[:-1]) for c in codings):
                return True
        elif code in codings:
            return True
    return False


def _when(obs: Any) -> str:
    for attr in ("effectiveDateTime", "effectiveInstant", "issued"):
        v = getattr(obs, attr, None)
        if v is not None:
            return str(v)
    period = getattr(obs, "effectivePeriod", None)
    return str(period.end or period.start) if period is not None else ""


def _observation(f: Feature, src: FhirSource, observations: list[Any], where: str) -> Any:
    """The latest final value of the feature among the observations and their components,
    converted into the feature's unit; a unit the contract does not list is refused."""
    found: list[tuple[str, Any, str]] = []
    for i, obs in enumerate(observations):
        if str(obs.status) not in FINAL:
            continue
        parts = [(obs, f"{where}.entry[{i}]")]
        parts += [
            (c, f"{where}.entry[{i}].component[{j}]") for j, c in enumerate(obs.component or [])
        ]
        for part, at in parts:
            if _matches(_codings(part.code), src.codes):
                found.append((_when(obs), part, at))
    if not found:
        return None
    _, part, at = max(found, key=lambda t: t[0])
    if f.kind == "categorical":
        # An answer the contract does not map (say, "unknown if ever smoked") is unknown.
        codings = _codings(getattr(part, "valueCodeableConcept", None))
        return next((src.values[c] for c in codings if c in src.values), None)
    q = getattr(part, "valueQuantity", None)
    if q is None or q.value is None:
        return None
    unit = q.code or q.unit
    conversion = src.units.get(str(unit)) if unit is not None else None
    if conversion is None:
        raise HookError(
            f"{at}.valueQuantity.code",
            "unit",
            f"{at}: {f.label} in a unit this service does not convert "
            f"(rule: UCUM one of {sorted(src.units)}; the model takes {f.unit})",
        )
    return float(q.value) * conversion.scale + conversion.offset


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def features_from_prefetch(
    contract: Contract, prefetch: dict[str, Any], today: date | None = None
) -> dict[str, Any]:
    """One patient's contract features from the hook's prefetch (None where absent)."""
    today = today or datetime.now(UTC).date()
    patient_raw = prefetch.get("patient")
    if patient_raw is None:
        raise HookError(
            "prefetch.patient",
            "required",
            "prefetch.patient is required (rule: this service reads prefetch only)",
        )
    patient = _parse("Patient", patient_raw, "prefetch.patient")
    cache: dict[str, list[Any] | None] = {}

    def resources(kind: str) -> list[Any] | None:
        key = PREFETCH_KEY[kind]
        if key not in cache:
            raw = prefetch.get(key)
            cache[key] = None if raw is None else _entries(raw, kind, f"prefetch.{key}")
        return cache[key]

    record: dict[str, Any] = {}
    for f in contract.features:
        src = f.fhir
        if src is None:
            record[f.name] = None
        elif src.resource == "Patient":
            if src.element == "birthDate":
                born = patient.birthDate
                record[f.name] = _age(born, today) if born is not None else None
            else:
                gender = str(patient.gender) if patient.gender is not None else None
                record[f.name] = src.values.get(gender) if gender else None
        elif src.resource == "Observation":
            obs = resources("Observation") or []
            record[f.name] = _observation(f, src, obs, "prefetch.observations")
        else:
            entries = resources(src.resource)
            record[f.name] = None if entries is None else _any_active(src, entries)
    return record


def _any_active(src: FhirSource, entries: list[Any]) -> bool:
    for e in entries:
        if src.resource == "Condition":
            status = _codings(e.clinicalStatus)
            verification = _codings(e.verificationStatus)
            if any(s.endswith(("|inactive", "|resolved", "|remission")) for s in status):
                continue
            if any(v.endswith(("|refuted", "|entered-in-error")) for v in verification):
                continue
            if _matches(_codings(e.code), src.codes):
                return True
        elif src.resource == "MedicationStatement":
            if str(e.status) not in {"active", "intended", "on-hold"}:
                continue
            if _matches(_codings(e.medicationCodeableConcept), src.codes):
                return True
        elif src.resource == "FamilyMemberHistory" and any(
            _matches(_codings(c.code), src.codes) for c in e.condition or []
        ):
            return True
    return False


def parse_hook(body: Any) -> dict[str, Any]:
    """Check a CDS Hooks call's envelope; returns its prefetch."""
    if not isinstance(body, dict):
        raise HookError("(body)", "object", "a CDS Hooks request is a JSON object")
    hook = _require(body, "hook", str, "")
    if hook != HOOK:
        raise HookError("hook", "hook", f"this service answers the {HOOK} hook (rule: hook)")
    _require(body, "hookInstance", str, "")
    context = _require(body, "context", dict, "")
    _require(context, "patientId", str, "context.")
    prefetch = body.get("prefetch")
    if not isinstance(prefetch, dict):
        raise HookError(
            "prefetch",
            "required",
            "prefetch is required: this service never queries the FHIR server (rule: prefetch)",
        )
    return prefetch


# -- the card ----------------------------------------------------------------------------
def _fmt(value: Any, unit: str | None) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{value} {unit}".strip() if unit else str(value)


def card_for(
    contract: Contract,
    model: Any,
    record: dict[str, Any],
    *,
    model_name: str,
    model_version: str,
    card_url: str | None,
) -> dict[str, Any]:
    """The patient's card: a risk card, or one that says what keeps the model from
    scoring (a missing required feature, a value outside the model's range)."""
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
            "detail": "The model cannot score this patient yet:\n\n" + "\n".join(lines),
            "source": source,
        }
    res = answer(contract, model, cols, model_name=model_name, model_version=model_version)
    row = res.iloc[0]
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
    f = contract.feature(v.field)
    if v.rule in ("required", "not null"):
        return "not in the record (required)"
    if v.rule == "range" and f.range is not None:
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
    """The CDS Hooks response to one patient-view call."""
    prefetch = parse_hook(body)
    record = features_from_prefetch(contract, prefetch, today)
    card = card_for(
        contract,
        model,
        record,
        model_name=model_name,
        model_version=model_version,
        card_url=card_url,
    )
    return {"cards": [card]}


__all__ = ["HookError", "discovery", "features_from_prefetch", "hook_response"]
