"""CDS Hooks: discovery, and a patient-view call with one patient's FHIR resources answered
with the same risk as the REST answer for the same values (over HTTP, slow); and in
process, what the card may use: only the patient in context, only measurements in a UCUM
unit the contract converts, partial FHIR dates read without error (fast)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from support.serving import (
    CONTRACT,
    MODEL_NAME,
    fhir_bundle,
    fhir_observation,
    fitted_logistic,
    register,
    running_server,
    write_config,
)

from pipeline.champion import move_champion
from pipeline.contract import load_contract
from pipeline.registry import registry_client
from pipeline.serving.cds_hooks import HookError, hook_response, read_prefetch

contract = load_contract(CONTRACT)
LOINC, SNOMED, ATC = "http://loinc.org", "http://snomed.info/sct", "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"


def _birth_date(age: int) -> str:
    today = datetime.now(UTC).date()
    born = date(today.year - age, today.month, min(today.day, 28))
    return born.isoformat()


def patientfhir_bundle(birth_date: str | None = None) -> dict:
    """One patient: labs in SI units (glucose mmol/L, HbA1c mmol/mol), a blood-pressure
    panel with components, smoking status, hypertension and a medication."""
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": "Patient/p-42"},
        "effectiveDateTime": "2026-10-01T09:00:00Z",
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 146, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 91, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    }
    smoking = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72166-2"}]},
        "subject": {"reference": "Patient/p-42"},
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "8517006"}]},
    }
    return {
        "patient": {
            "resourceType": "Patient",
            "id": "p-42",
            "gender": "male",
            "birthDate": birth_date or _birth_date(61),
        },
        "observations": fhir_bundle(
            fhir_observation("39156-5", 32.5, "kg/m2"),
            fhir_observation("14771-0", 6.1, "mmol/L"),
            fhir_observation("59261-8", 41.0, "mmol/mol"),
            fhir_observation("2085-9", 1.0, "mmol/L"),
            fhir_observation("2571-8", 2.1, "mmol/L"),
            bp,
            smoking,
        ),
        "conditions": fhir_bundle(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": SNOMED, "code": "38341003"}]},
                "subject": {"reference": "Patient/p-42"},
            }
        ),
        "medications": fhir_bundle(
            {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "C09AA05"}]},
                "subject": {"reference": "Patient/p-42"},
            }
        ),
        "familyHistory": fhir_bundle(),
    }


# The same patient in the contract's units, as a REST client would send it.
SAME_VALUES = {
    "age": 61,
    "sex": "male",
    "race_ethnicity": None,
    "bmi": 32.5,
    "waist_cm": None,
    "sbp": 146.0,
    "dbp": 91.0,
    "fasting_glucose": 6.1 * 18.016,
    "hba1c": 41.0 * 0.0914997 + 2.15,
    "hdl": 38.67,
    "ldl": None,
    "triglycerides": 2.1 * 88.57,
    "smoking_status": "former",
    "physical_activity": None,
    "family_history_diabetes": False,
    "hypertension_dx": True,
    "antihypertensive_use": True,
    "gestational_diabetes_history": False,
}


def _hook(prefetch: dict) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": "5b3c4a9e-0d2f-4a57-9d8e-7a0b5c7e1f01",
        "fhirServer": "https://ehr.invalid/fhir",
        "context": {"userId": "Practitioner/7", "patientId": "p-42"},
        "prefetch": prefetch,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cds")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    model, _ = fitted_logistic(tmp / "extract")
    move_champion(registry_client(uri), MODEL_NAME, register(uri, model))
    with running_server(write_config(tmp, uri)) as s:
        yield s


@pytest.mark.slow
def test_discovery_lists_the_patient_view_service_and_its_prefetch(server) -> None:
    status, _, raw = server.request("GET", "/cds-services")
    assert status == 200
    (service,) = json.loads(raw)["services"]
    assert service["hook"] == "patient-view" and service["id"] == MODEL_NAME
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|4548-4" in service["prefetch"]["observations"]
    assert {"conditions", "medications", "familyHistory"} <= set(service["prefetch"])


@pytest.mark.slow
def test_a_patient_view_card_matches_the_rest_answer_for_the_same_values(server) -> None:
    status, _, raw = server.request(
        "POST", f"/cds-services/{MODEL_NAME}", _hook(patientfhir_bundle())
    )
    assert status == 200, raw[:600]
    (card,) = json.loads(raw)["cards"]
    rest_status, rest = server.score([SAME_VALUES])
    assert rest_status == 200
    answer = rest["predictions"][0]
    p, band = answer["risk_probability"], answer["risk_band"]
    assert len(card["summary"]) < 140
    assert f"{p:.0%}" in card["summary"] and band in card["summary"]
    assert f"**{p:.1%}**" in card["detail"]
    rank = [b.name for b in contract.risk_bands].index(band)
    assert card["indicator"] == ["info", "warning", "critical"][rank]
    for factor in answer["top_factors"]:
        assert f"**{factor['name']}**" in card["detail"]
        assert f"{factor['effect']} the risk" in card["detail"]
    assert card["source"]["label"] == f"{MODEL_NAME} v1 (federated risk model)"
    assert "Not recorded: " in card["detail"] and "LDL cholesterol" in card["detail"]


@pytest.mark.slow
def test_a_missing_required_field_is_a_card_saying_what_is_missing(server) -> None:
    prefetch = patientfhir_bundle()
    del prefetch["conditions"]  # no problem list: hypertension and GDM history unknown
    status, _, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 200
    (card,) = json.loads(raw)["cards"]
    assert "not scored" in card["summary"] and card["indicator"] == "info"
    assert "Hypertension diagnosis" in card["detail"]
    assert "History of gestational diabetes" in card["detail"]


@pytest.mark.slow
def test_a_value_outside_the_models_range_is_a_card_not_an_error(server) -> None:
    prefetch = patientfhir_bundle()
    prefetch["patient"]["birthDate"] = _birth_date(12)
    status, _, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 200
    (card,) = json.loads(raw)["cards"]
    assert "not scored" in card["summary"]
    assert "Age**: outside the model's range 18-90 years" in card["detail"]


@pytest.mark.slow
def test_over_http_a_partial_birth_date_is_a_card_and_another_patient_a_400(server) -> None:
    prefetch = patientfhir_bundle("1968")
    status, _, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 200, raw[:600]
    (card,) = json.loads(raw)["cards"]
    assert "Age is approximate (from a partial birth date)." in card["detail"]
    prefetch["patient"]["id"] = "p-99"
    status, headers, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 400 and headers["content-type"].startswith("application/json")
    error = json.loads(raw)
    assert error["field"] == "prefetch.patient.id" and "p-99" not in raw.decode()


# -- in process: what a card may use ------------------------------------------------------
TODAY = date(2026, 11, 2)
MARK = "Zelda-Quux-7731"
OTHER = "Patient/SOMEONE-ELSE"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return fitted_logistic(tmp_path_factory.mktemp("extract-in-process"))[0]


def _card(model: Any, prefetch: dict, today: date = TODAY) -> dict:
    """The one card hook_response gives; anything it raises but a HookError fails."""
    try:
        answer = hook_response(
            contract,
            model,
            _hook(prefetch),
            model_name=MODEL_NAME,
            model_version="1",
            card_url=None,
            today=today,
        )
    except HookError:
        raise
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped hook_response: {exc}")
    (card,) = answer["cards"]
    return card


def _risk(card: dict) -> str:
    """The card's first paragraph: probability, band and its meaning."""
    return card["detail"].split("\n\n")[0]


def _about(resource: dict, reference: str | None) -> dict:
    """The resource with its subject replaced (None: no subject at all)."""
    out = copy.deepcopy(resource)
    out.pop("subject", None)
    if reference is not None:
        out["subject"] = {"reference": reference}
    return out


def _with_observations(prefetch: dict, *observations: dict) -> dict:
    """A copy of the prefetch with observations added to its bundle."""
    out = copy.deepcopy(prefetch)
    entries = out["observations"]["entry"]
    entries += [{"fullUrl": f"urn:uuid:x{i}", "resource": o} for i, o in enumerate(observations)]
    return out


def _quantity(loinc: str, quantity: dict, when: str = "2026-10-20T08:00:00Z") -> dict:
    """An observation of the patient in context, newer than the bundle's, with this
    valueQuantity as sent."""
    obs = fhir_observation(loinc, 0.0, "unused", when)
    obs["valueQuantity"] = quantity
    return obs


def test_the_standard_bundle_leaves_nothing_out(model) -> None:
    card = _card(model, patientfhir_bundle("1965-06-14"))
    assert "not scored" not in card["summary"]
    assert "Not used" not in card["detail"] and "approximate" not in card["detail"]


def test_another_patients_observations_are_not_used_and_do_not_change_the_score(model) -> None:
    base = patientfhir_bundle("1965-06-14")
    newer_bmi = _about(fhir_observation("39156-5", 45.0, "kg/m2", "2026-10-30T09:00:00Z"), OTHER)
    high_a1c = _about(fhir_observation("4548-4", 6.4, "%", "2026-10-30T09:00:00Z"), OTHER)
    mixed = _with_observations(base, newer_bmi, high_a1c)
    reading = read_prefetch(contract, mixed, "p-42", TODAY)
    assert reading.record == read_prefetch(contract, base, "p-42", TODAY).record
    assert reading.record["bmi"] == pytest.approx(32.5)  # not the other patient's newer 45
    card, alone = _card(model, mixed), _card(model, base)
    assert _risk(card) == _risk(alone) and card["summary"] == alone["summary"]
    section = "Not used:\n\n- 2 observations about another patient (BMI, HbA1c)\n\n"
    assert section in card["detail"]
    assert card["detail"].replace(section, "") == alone["detail"]  # no value, no id


def test_only_references_to_the_patient_in_context_count() -> None:
    bmi = fhir_observation("39156-5", 28.0, "kg/m2", "2026-10-30T09:00:00Z")
    absolute = _about(bmi, "https://ehr.invalid/fhir/Patient/p-42")
    assert read_prefetch(
        contract, _with_observations(patientfhir_bundle(), absolute), "p-42", TODAY
    ).record["bmi"] == pytest.approx(28.0)
    for reference in (None, "Group/p-42", "p-42", "urn:uuid:1", "Patient/p-420"):
        prefetch = _with_observations(patientfhir_bundle(), _about(bmi, reference))
        reading = read_prefetch(contract, prefetch, "p-42", TODAY)
        assert reading.record["bmi"] == pytest.approx(32.5), reference
        assert len(reading.not_used) == 1 and reading.not_used[0].labels == ("BMI",)


def test_a_problem_list_of_another_patient_is_not_this_patients(model) -> None:
    prefetch = patientfhir_bundle("1965-06-14")
    for entry in prefetch["conditions"]["entry"]:
        entry["resource"] = _about(entry["resource"], OTHER)
    card = _card(model, prefetch)
    # Hypertension unknown, not "false": the model does not score, and says why.
    assert "not scored" in card["summary"]
    assert "**Hypertension diagnosis**: not in the record (required)" in card["detail"]
    assert "- 1 condition about another patient (Hypertension diagnosis)" in card["detail"]


@pytest.mark.parametrize("patient_id", ["p-99", None])
def test_a_patient_resource_of_another_patient_is_refused(model, patient_id) -> None:
    prefetch = patientfhir_bundle("1965-06-14")
    prefetch["patient"].pop("id")
    if patient_id:
        prefetch["patient"]["id"] = patient_id
    with pytest.raises(HookError) as caught:
        _card(model, prefetch)
    assert caught.value.field == "prefetch.patient.id" and caught.value.rule == "patient"
    assert "p-99" not in str(caught.value)
    assert caught.value.body()["errors"][0]["field"] == "prefetch.patient.id"


def test_a_quantity_with_a_comparator_is_not_used(model) -> None:
    base = patientfhir_bundle("1965-06-14")
    for comparator in ("<", "<=", ">=", ">", "ad"):
        bound = {"value": 4.0, "comparator": comparator, "system": UCUM, "code": "%"}
        prefetch = _with_observations(base, _quantity("4548-4", bound))
        reading = read_prefetch(contract, prefetch, "p-42", TODAY)
        assert reading.record["hba1c"] == pytest.approx(41.0 * 0.0914997 + 2.15)  # older one
    card = _card(model, prefetch)
    assert _risk(card) == _risk(_card(model, base))
    line = "- 1 value that is a bound (comparator), not a measurement (HbA1c)"
    assert line in card["detail"]


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 27.0, "unit": "kg/m2"},  # a display unit only
        {"value": 27.0, "unit": "kg/m2", "code": "kg/m2"},  # a code without its system
        {"value": 27.0, "unit": "kg/m2", "system": "http://example.org/units", "code": "kg/m2"},
        {"value": 27.0, "system": UCUM, "code": "kg/cm2"},  # UCUM, not converted
    ],
)
def test_a_quantity_without_a_convertible_ucum_code_is_not_used(model, quantity) -> None:
    prefetch = _with_observations(patientfhir_bundle("1965-06-14"), _quantity("39156-5", quantity))
    reading = read_prefetch(contract, prefetch, "p-42", TODAY)
    assert reading.record["bmi"] == pytest.approx(32.5)  # the older, coded one
    card = _card(model, prefetch)
    reason = "in a unit the contract" if quantity.get("system") == UCUM else "without a UCUM"
    assert f"- 1 value {reason}" in card["detail"] and "(BMI)" in card["detail"]
    assert "27" not in card["detail"]


def test_labs_with_only_unusable_values_are_missing_and_said_so(model) -> None:
    prefetch = patientfhir_bundle("1965-06-14")
    observations = [e["resource"] for e in prefetch["observations"]["entry"]]
    del observations[1]["valueQuantity"]["system"]  # fasting glucose: a code, no system
    for component in observations[5]["component"]:  # the blood-pressure panel
        del component["valueQuantity"]["system"]
    del observations[0]["valueQuantity"]  # BMI: no value at all
    observations[0]["dataAbsentReason"] = {"text": "not measured"}
    card = _card(model, prefetch)
    not_recorded = card["detail"].split("Not recorded: ")[1].split("\n")[0]
    for label in ("BMI", "Fasting glucose", "Systolic blood pressure", "Diastolic blood pressure"):
        assert label in not_recorded
    assert (
        "- 3 values without a UCUM unit code "
        "(Systolic blood pressure, Diastolic blood pressure, Fasting glucose)" in card["detail"]
    )
    assert "- 1 observation without a numeric value (BMI)" in card["detail"]


@pytest.mark.parametrize(
    ("birth", "today", "age", "approximate"),
    [
        ("1968", date(2026, 3, 1), 57, True),  # 57 or 58: read at 1 July 1968
        ("1968", date(2026, 9, 1), 58, True),
        ("1968-05", date(2026, 5, 10), 57, True),  # 57 or 58: read at 15 May 1968
        ("1968-05", date(2026, 5, 20), 58, True),
        ("1968-05", date(2026, 8, 1), 58, False),  # 58 whatever the day in May
        ("1968-05-20", date(2026, 5, 19), 57, False),
    ],
)
def test_a_partial_birth_date_gives_an_age_read_at_the_middle(
    model, birth, today, age, approximate
) -> None:
    prefetch = patientfhir_bundle(birth)
    reading = read_prefetch(contract, prefetch, "p-42", today)
    assert reading.record["age"] == age
    card = _card(model, prefetch, today)
    assert "not scored" not in card["summary"]
    said = "Age is approximate (from a partial birth date)." in card["detail"]
    assert said is approximate


def test_partial_effective_dates_order_without_error(model) -> None:
    a1c = [
        fhir_observation("4548-4", 5.1, "%", "2025"),
        fhir_observation("4548-4", 5.2, "%", "2025-06"),
        fhir_observation("4548-4", 5.3, "%", "2025-06-02"),  # later than June's first day
        fhir_observation("4548-4", 5.4, "%", "2025-06-01T23:30:00-05:00"),  # 2 June, 04:30 UTC
        fhir_observation("4548-4", 5.5, "%", "0001-01-01T00:00:00+02:00"),
    ]
    prefetch = patientfhir_bundle("1965-06-14")
    prefetch["observations"] = fhir_bundle(*a1c)
    assert read_prefetch(contract, prefetch, "p-42", TODAY).record["hba1c"] == 5.4
    assert "not scored" not in _card(model, prefetch)["summary"]


def _leaves(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every element of a JSON value, the root included."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))


def _replaced(body: dict, path: tuple, new: Any) -> dict:
    """A copy of the body with the element at ``path`` replaced."""
    out = copy.deepcopy(body)
    if not path:
        return new
    *parent, last = path
    node = out
    for key in parent:
        node = node[key]
    node[last] = new
    return out


def test_nothing_in_a_request_escapes_as_anything_but_a_hook_error(model) -> None:
    """Every element of a valid request replaced by odd values: a card or a HookError."""
    body = _hook(patientfhir_bundle("1968"))
    odd = [None, "", "1968", "2024-05", "0001-01-01T00:00:00+02:00", "Patient/p-42", MARK]
    odd += [-1, 1e300, True, [], {}, {"resourceType": "Bundle"}, {"reference": MARK}]
    outcomes = {"card": 0, "refused": 0}
    for path in _leaves(body):
        for new in odd:
            try:
                hook_response(
                    contract,
                    model,
                    _replaced(body, path, new),
                    model_name=MODEL_NAME,
                    model_version="1",
                    card_url=None,
                    today=TODAY,
                )
                outcomes["card"] += 1
            except HookError as exc:
                assert MARK not in json.dumps(exc.body())  # named, never repeated
                outcomes["refused"] += 1
    assert outcomes["card"] > 0 and outcomes["refused"] > 0
