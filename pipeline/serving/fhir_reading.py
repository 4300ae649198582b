"""One patient's FHIR R4 prefetch read into the contract's features, for the CDS Hooks card.

Resources are parsed with ``fhir.resources`` (its R4B models: R4's Patient, Observation,
Condition, MedicationStatement and FamilyMemberHistory are the same there) and mapped
through the contract's own ``fhir:`` declarations. Three rules keep a card about the right
patient and the right numbers:

- binding: the ``Patient`` must be the patient in context (else the call is refused, as no
  card could be about the right patient), and every other resource used must reference
  ``Patient/<patientId>``; a resource about anyone else is left out;
- quantities: a value is used only as a measurement in a UCUM unit the contract converts;
  a bound (``comparator``), a display-only unit or a non-UCUM unit is left out;
- dates: FHIR allows ``YYYY`` and ``YYYY-MM``; age from a partial birth date is taken at
  the middle of the possible range when it is ambiguous, and said to be approximate.

A malformed element is a :class:`HookError` (a 400 naming the element and the rule, never
the value); an element that is well formed but clinically unusable is left out and listed
in :attr:`Reading.not_used`, so the card can say what it did not use and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pipeline.contract import Contract, Feature, FhirSource
from pipeline.serving.fhir_dates import age_in_years, date_span, observed_at

UCUM = "http://unitsofmeasure.org"
FINAL = {"final", "amended", "corrected"}
PREFETCH_KEY = {
    "Patient": "patient",
    "Observation": "observations",
    "Condition": "conditions",
    "MedicationStatement": "medications",
    "FamilyMemberHistory": "familyHistory",
}
SUBJECT = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationStatement": "subject",
    "FamilyMemberHistory": "patient",
}
# Why an element was left out; the card lists them as "<count> <noun> <reason>", the noun
# a resource type or, for a quantity that cannot be used, "value".
OTHER_PATIENT = "about another patient"
UNLINKED = "without a reference to this patient"
COMPARATOR = "that is a bound (comparator), not a measurement"
NO_UCUM = "without a UCUM unit code"
UNIT = "in a unit the contract does not convert"
NO_VALUE = "without a numeric value"
APPROXIMATE_AGE = "Age is approximate (from a partial birth date)."


class HookError(ValueError):
    """A hook request that is not a valid CDS Hooks call: field, rule, message."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.field, self.rule = field, rule

    def body(self) -> dict[str, Any]:
        one = {"field": self.field, "rule": self.rule, "message": str(self)}
        return {"error_code": "INVALID_PARAMETER_VALUE", **one, "errors": [one]}


@dataclass(frozen=True)
class NotUsed:
    """One resource or value left out: its type, why, and the features it bore on (labels,
    never values or identifiers)."""

    resource: str
    reason: str
    labels: tuple[str, ...] = ()


@dataclass
class Reading:
    """What the prefetch gave: the features (None where absent), what was left out, and
    notes the clinician needs to read the card right."""

    record: dict[str, Any]
    not_used: list[NotUsed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- parsing -----------------------------------------------------------------------------
def parse_resource(resource_type: str, raw: Any, where: str) -> Any:
    """A FHIR resource parsed by fhir.resources; errors name the element, not the value."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    if not isinstance(raw, dict) or raw.get("resourceType") != resource_type:
        raise HookError(where, "resourceType", f"{where} must be a FHIR {resource_type}")
    try:
        return get_fhir_model_class(resource_type).model_validate(raw)
    except (ValidationError, ValueError, TypeError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else []
        loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        at = f"{where}.{loc}" if loc else where
        why = errors[0]["msg"] if errors else "not a valid resource"
        raise HookError(at, "fhir", f"{at}: {why} (rule: FHIR R4 {resource_type})") from None


def _entries(raw: Any, resource_type: str, where: str) -> list[Any]:
    """The resources of one type in a prefetch value (a searchset Bundle, or one resource)."""
    if isinstance(raw, dict) and raw.get("resourceType") == resource_type:
        return [parse_resource(resource_type, raw, where)]
    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        raise HookError(where, "bundle", f"{where} must be a FHIR Bundle of {resource_type}")
    out = []
    entries = raw.get("entry") or []
    if not isinstance(entries, list):
        raise HookError(f"{where}.entry", "bundle", f"{where}.entry must be a list")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
            out.append(parse_resource(resource_type, resource, f"{where}.entry[{i}].resource"))
        elif not isinstance(resource, dict):
            raise HookError(f"{where}.entry[{i}]", "bundle", "every entry needs a resource")
    return out


def codings(concept: Any) -> list[str]:
    """A CodeableConcept's codings as ``system|code``, the contract's spelling."""
    if concept is None:
        return []
    return [f"{c.system}|{c.code}" for c in concept.coding or [] if c.system and c.code]


def matches(found: list[str], wanted: list[str]) -> bool:
    """Whether any coding is one the contract lists (``*`` ends a prefix, as ATC classes)."""
    for code in wanted:
        if code.endswith("*"):
            if any(c.startswith(code[:-1]) for c in found):
                return True
        elif code in found:
            return True
    return False


# -- binding to the patient in context --------------------------------------------------
def referenced_patient(reference: str) -> str | None:
    """The Patient id a reference names: ``Patient/<id>``, an absolute URL ending in
    ``/Patient/<id>``, either with a ``/_history/<v>`` tail; None when it names no Patient.
    Plain string work, so a long reference costs linear time."""
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or parts[-2] != "Patient" or not parts[-1]:
        return None
    if len(parts) > 2 and not reference.startswith(("http://", "https://")):
        return None
    return parts[-1]


def _binding(resource: Any, kind: str, patient_id: str) -> str | None:
    """None when the resource is about the patient in context, else why it is not used."""
    ref = getattr(resource, SUBJECT[kind], None)
    reference = getattr(ref, "reference", None)
    named = referenced_patient(reference) if isinstance(reference, str) else None
    if named is None:
        return UNLINKED
    return None if named == patient_id else OTHER_PATIENT


def _check_patient(patient: Any, patient_id: str) -> None:
    """The Patient resource must be the patient in context: a card computed from another
    patient's demographics cannot be about this one, so the call is refused."""
    if patient.id != patient_id:
        raise HookError(
            "prefetch.patient.id",
            "patient",
            "prefetch.patient.id must equal context.patientId "
            "(rule: every resource is about the patient in context)",
        )


def _feature_labels(contract: Contract, kind: str, resource: Any) -> tuple[str, ...]:
    """The contract features a resource would have fed, for the card's "Not used" list."""
    if kind == "Observation":
        found = codings(resource.code)
        for part in resource.component or []:
            found += codings(part.code)
    elif kind == "MedicationStatement":
        found = codings(resource.medicationCodeableConcept)
    elif kind == "FamilyMemberHistory":
        found = [c for cond in resource.condition or [] for c in codings(cond.code)]
    else:
        found = codings(resource.code)
    return tuple(
        f.label
        for f in contract.features
        if f.fhir is not None and f.fhir.resource == kind and matches(found, f.fhir.codes)
    )


def _bound(
    contract: Contract, kind: str, resources: list[Any], patient_id: str, out: list[NotUsed]
) -> list[Any] | None:
    """The resources about the patient in context. A prefetch made only of other patients'
    resources is not this patient's record: it counts as not sent (None), so a problem list
    of someone else never reads as "no hypertension"."""
    kept = []
    for r in resources:
        why = _binding(r, kind, patient_id)
        if why is None:
            kept.append(r)
        else:
            out.append(NotUsed(kind, why, _feature_labels(contract, kind, r)))
    return None if resources and not kept else kept


# -- dates -------------------------------------------------------------------------------
def _age(raw: Any, today: date) -> tuple[int, bool]:
    """Age in whole years and whether it is approximate: a partial birth date whose
    earliest and latest days give different ages today is read at its middle day."""
    try:
        earliest, middle, latest = date_span(raw)
    except ValueError:
        raise HookError(
            "prefetch.patient.birthDate", "date", "prefetch.patient.birthDate must be a FHIR date"
        ) from None
    oldest, youngest = age_in_years(earliest, today), age_in_years(latest, today)
    if oldest == youngest:
        return oldest, False
    return age_in_years(middle, today), True


# -- observations ------------------------------------------------------------------------
def _quantity(src: FhirSource, part: Any) -> tuple[float | None, str | None]:
    """A measured value in the contract's unit, or why the value cannot be used."""
    q = getattr(part, "valueQuantity", None)
    if q is None or q.value is None:
        return None, NO_VALUE
    if q.comparator is not None:
        return None, COMPARATOR
    if q.system != UCUM or not q.code:
        return None, NO_UCUM
    conversion = src.units.get(str(q.code))
    if conversion is None:
        return None, UNIT
    return float(q.value) * conversion.scale + conversion.offset, None


def _observation(f: Feature, src: FhirSource, observations: list[Any], out: list[NotUsed]) -> Any:
    """The latest usable final value of the feature among the observations and their
    components (as in a blood-pressure panel). A quantity that cannot be used is left out
    and listed; the others still count. A coded answer the contract does not map (say,
    "unknown if ever smoked") is itself the latest answer: unknown."""
    found: list[tuple[float, Any]] = []
    for obs in observations:
        if str(obs.status) not in FINAL:
            continue
        for part in [obs, *(obs.component or [])]:
            if matches(codings(part.code), src.codes):
                found.append((observed_at(obs), part))
    if f.kind == "categorical":
        if not found:
            return None
        _, part = max(found, key=lambda t: t[0])
        answers = codings(getattr(part, "valueCodeableConcept", None))
        return next((src.values[c] for c in answers if c in src.values), None)
    usable: list[tuple[float, float]] = []
    for when, part in found:
        value, why = _quantity(src, part)
        if why is None:
            usable.append((when, value))
        else:  # counted per value: a blood-pressure panel holds two
            out.append(NotUsed("Observation" if why == NO_VALUE else "value", why, (f.label,)))
    return max(usable, key=lambda t: t[0])[1] if usable else None


def _any_active(src: FhirSource, entries: list[Any]) -> bool:
    """Whether an active, unrefuted entry carries one of the feature's codes."""
    for e in entries:
        if src.resource == "Condition":
            status = codings(e.clinicalStatus)
            verification = codings(e.verificationStatus)
            if any(s.endswith(("|inactive", "|resolved", "|remission")) for s in status):
                continue
            if any(v.endswith(("|refuted", "|entered-in-error")) for v in verification):
                continue
            if matches(codings(e.code), src.codes):
                return True
        elif src.resource == "MedicationStatement":
            if str(e.status) not in {"active", "intended", "on-hold"}:
                continue
            if matches(codings(e.medicationCodeableConcept), src.codes):
                return True
        elif src.resource == "FamilyMemberHistory" and any(
            matches(codings(c.code), src.codes) for c in e.condition or []
        ):
            return True
    return False


# -- the whole prefetch ------------------------------------------------------------------
def read_prefetch(
    contract: Contract, prefetch: dict[str, Any], patient_id: str, today: date | None = None
) -> Reading:
    """The features of the patient in context from the hook's prefetch, what was left out
    and why, and notes for the card."""
    today = today or datetime.now(UTC).date()
    if prefetch.get("patient") is None:
        raise HookError(
            "prefetch.patient",
            "required",
            "prefetch.patient is required (rule: this service reads prefetch only)",
        )
    patient = parse_resource("Patient", prefetch["patient"], "prefetch.patient")
    _check_patient(patient, patient_id)
    reading = Reading(record={})
    cache: dict[str, list[Any] | None] = {}

    def resources(kind: str) -> list[Any] | None:
        key = PREFETCH_KEY[kind]
        if key not in cache:
            raw, cache[key] = prefetch.get(key), None
            if raw is not None:
                found = _entries(raw, kind, f"prefetch.{key}")
                cache[key] = _bound(contract, kind, found, patient_id, reading.not_used)
        return cache[key]

    for f in contract.features:
        reading.record[f.name] = _feature(f, patient, resources, reading, today)
    return reading


def _feature(
    f: Feature,
    patient: Any,
    resources: Callable[[str], list[Any] | None],
    reading: Reading,
    today: date,
) -> Any:
    """One feature's value from the resource its contract entry names."""
    src = f.fhir
    if src is None:
        return None
    if src.resource == "Patient":
        if src.element == "birthDate":
            if patient.birthDate is None:
                return None
            age, approximate = _age(patient.birthDate, today)
            if approximate:
                reading.notes.append(APPROXIMATE_AGE)
            return age
        gender = str(patient.gender) if patient.gender is not None else None
        return src.values.get(gender) if gender else None
    if src.resource == "Observation":
        return _observation(f, src, resources("Observation") or [], reading.not_used)
    entries = resources(src.resource)
    return None if entries is None else _any_active(src, entries)


def features_from_prefetch(
    contract: Contract, prefetch: dict[str, Any], *, patient_id: str, today: date | None = None
) -> dict[str, Any]:
    """One patient's contract features from the hook's prefetch (None where absent)."""
    return read_prefetch(contract, prefetch, patient_id, today).record


__all__ = ["HookError", "NotUsed", "Reading", "features_from_prefetch", "read_prefetch"]
