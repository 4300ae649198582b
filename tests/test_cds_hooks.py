"""CDS Hooks over HTTP: discovery, and a patient-view call with one patient's FHIR
resources answered with the same risk as the REST answer for the same values."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

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

from pipeline.contract import load_contract
from pipeline.registry import move_champion, registry_client

pytestmark = pytest.mark.slow
contract = load_contract(CONTRACT)
LOINC, SNOMED, ATC = "http://loinc.org", "http://snomed.info/sct", "http://www.whocc.no/atc"


def _birth_date(age: int) -> str:
    today = datetime.now(UTC).date()
    born = date(today.year - age, today.month, min(today.day, 28))
    return born.isoformat()


def patientfhir_bundle() -> dict:
    """One patient: labs in SI units (glucose mmol/L, HbA1c mmol/mol), a blood-pressure
    panel with components, smoking status, hypertension and a medication."""
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": "2026-10-01T09:00:00Z",
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 146, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 91, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
        ],
    }
    smoking = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72166-2"}]},
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "8517006"}]},
    }
    return {
        "patient": {
            "resourceType": "Patient",
            "id": "p-42",
            "gender": "male",
            "birthDate": _birth_date(61),
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


def test_discovery_lists_the_patient_view_service_and_its_prefetch(server) -> None:
    status, _, raw = server.request("GET", "/cds-services")
    assert status == 200
    (service,) = json.loads(raw)["services"]
    assert service["hook"] == "patient-view" and service["id"] == MODEL_NAME
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|4548-4" in service["prefetch"]["observations"]
    assert {"conditions", "medications", "familyHistory"} <= set(service["prefetch"])


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


def test_a_missing_required_field_is_a_card_saying_what_is_missing(server) -> None:
    prefetch = patientfhir_bundle()
    del prefetch["conditions"]  # no problem list: hypertension and GDM history unknown
    status, _, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 200
    (card,) = json.loads(raw)["cards"]
    assert "not scored" in card["summary"] and card["indicator"] == "info"
    assert "Hypertension diagnosis" in card["detail"]
    assert "History of gestational diabetes" in card["detail"]


def test_a_value_outside_the_models_range_is_a_card_not_an_error(server) -> None:
    prefetch = patientfhir_bundle()
    prefetch["patient"]["birthDate"] = _birth_date(12)
    status, _, raw = server.request("POST", f"/cds-services/{MODEL_NAME}", _hook(prefetch))
    assert status == 200
    (card,) = json.loads(raw)["cards"]
    assert "not scored" in card["summary"]
    assert "Age**: outside the model's range 18-90 years" in card["detail"]
