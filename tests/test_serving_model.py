"""The served risk model in process: the contract check, the answer, MLflow's encoding,
and the FHIR mapping of the CDS Hooks service."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support.serving import CONTRACT, PATIENT, fhir_bundle, fhir_observation, fitted_logistic

from pipeline.contract import load_contract
from pipeline.errors import ContractError
from pipeline.models.request import RequestError, check_request
from pipeline.models.risk_model import score
from pipeline.serving.cds_hooks import features_from_prefetch, read_prefetch

MARK = "Zelda-Quux-7731"
contract = load_contract(CONTRACT)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    return fitted_logistic(tmp_path_factory.mktemp("extract"))


def _violations(rows: list[dict]) -> list:
    with pytest.raises(RequestError) as caught:
        check_request(contract, pd.DataFrame(rows))
    assert MARK not in str(caught.value)
    return caught.value.violations


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"bmi": True}, "bmi", "number"),
        ({"bmi": MARK}, "bmi", "number"),
        ({"bmi": [[1.0]]}, "bmi", "scalar"),
        ({"bmi": float("inf")}, "bmi", "finite"),
        ({"hba1c": 9.5}, "hba1c", "range"),
        ({"sex": MARK}, "sex", "category"),
        ({"sex": 1}, "sex", "category"),
        ({"age": None}, "age", "not null"),
        ({"hypertension_dx": 3}, "hypertension_dx", "boolean"),
        ({"hypertension_dx": MARK}, "hypertension_dx", "boolean"),
        ({"patient_name": MARK}, "patient_name", "no identifiers"),
        ({"patient_key": MARK}, "patient_key", "no identifiers"),
        ({"favourite_colour": MARK}, "favourite_colour", "declared features"),
    ],
)
def test_a_broken_rule_names_field_and_rule_not_the_value(change, field, rule) -> None:
    violations = _violations([PATIENT, {**PATIENT, **change}])
    assert [(v.field, v.rule) for v in violations] == [(field, rule)]
    if rule not in ("no identifiers", "declared features"):
        assert violations[0].rows == (1,)
        assert violations[0].allowed is not None


def test_a_missing_required_field_is_named_and_a_missing_optional_one_is_null() -> None:
    no_sex = {k: v for k, v in PATIENT.items() if k != "sex"}
    assert [(v.field, v.rule) for v in _violations([no_sex])] == [("sex", "required")]
    no_labs = {k: v for k, v in PATIENT.items() if k not in ("hba1c", "ldl")}
    cols = check_request(contract, pd.DataFrame([no_labs]))
    assert np.isnan(cols["hba1c"]).all() and np.isnan(cols["ldl"]).all()


def test_the_answer_is_the_models_probability_with_bands_and_readable_factors(fitted) -> None:
    model, frame = fitted
    rows = frame[contract.feature_names].head(500)
    res = score(contract, model, rows)
    np.testing.assert_allclose(res["risk_probability"], model.predict_proba(rows), atol=1e-12)
    assert list(res["risk_band"]) == list(contract.risk_band(res["risk_probability"]))
    labels = {f.label: f for f in contract.features}
    for factors, (_, row) in zip(res["top_factors"], rows.iterrows(), strict=True):
        assert len(factors) == 3
        for fa in factors:
            f = labels[fa["name"]]
            assert fa["feature"] == f.name and fa["effect"] in ("raises", "lowers")
            if pd.isna(row[f.name]):
                assert fa["value"] is None and fa["unit"] is None
            elif f.kind == "numeric":
                assert fa["value"] == pytest.approx(float(row[f.name]), abs=1e-4)
                assert fa["unit"] == f.unit


def test_factors_follow_the_contributions_sign(fitted) -> None:
    model, _ = fitted
    low = {**PATIENT, "hba1c": 4.8, "fasting_glucose": 80.0, "bmi": 22.0, "age": 30}
    high = {**PATIENT, "hba1c": 6.4, "fasting_glucose": 124.0, "bmi": 45.0, "age": 70}
    res = score(contract, model, pd.DataFrame([low, high]))
    assert res["risk_probability"][0] < res["risk_probability"][1]
    effects = [{f["feature"]: f["effect"] for f in fs} for fs in res["top_factors"]]
    assert "raises" in effects[1].values()
    for feature in set(effects[0]) & {"hba1c", "fasting_glucose", "bmi"}:
        assert effects[0][feature] == "lowers"


def test_tree_models_answer_with_treeshap_factors(fitted, tmp_path: Path) -> None:
    from support.serving import write_config

    from pipeline.config import load_config
    from pipeline.features import FeatureEncoder
    from pipeline.models.tree_model import TreeModel
    from pipeline.pooled import train_xgboost

    _, frame = fitted
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path}/m.db"))
    cfg.training.xgboost.rounds = 20
    T = FeatureEncoder(contract).tree_matrix(frame)
    booster = train_xgboost(contract, cfg, [(T, contract.labels(frame))], nthread=1)
    model = TreeModel(contract, bytes(booster.save_raw("ubj")))
    rows = frame[contract.feature_names].head(200)
    res = score(contract, model, rows)
    np.testing.assert_allclose(res["risk_probability"], model.predict_proba(rows), atol=1e-12)
    assert all(len(f) == 3 for f in res["top_factors"])


def test_the_json_encoding_is_mlflows_own_bytes(fitted) -> None:
    """The service answers records with json.dumps; MLflow's scoring server writes the
    same answer as a DataFrame with its own predictions_to_json: the same bytes."""
    from mlflow.pyfunc import scoring_server

    from pipeline.models.answer import answer_records
    from pipeline.models.request import check_request
    from pipeline.serving.scoring import predictions_json

    model, frame = fitted
    rows = frame[contract.feature_names].head(50)
    theirs = io.StringIO()
    scoring_server.predictions_to_json(score(contract, model, rows), theirs)
    cols = check_request(contract, rows)
    records = answer_records(contract, model, cols, model_name=contract.name, model_version=None)
    assert predictions_json(records) == theirs.getvalue().encode()


# -- FHIR ------------------------------------------------------------------------------
PATIENT_ID = "p-42"  # the subject of support.serving.fhir_observation
PATIENT_RES = {
    "resourceType": "Patient",
    "id": PATIENT_ID,
    "gender": "female",
    "birthDate": "1968-05-20",
}


def test_fhir_units_are_converted_and_the_latest_value_is_taken() -> None:
    prefetch = {
        "patient": PATIENT_RES,
        "observations": fhir_bundle(
            fhir_observation("14771-0", 6.0, "mmol/L"),
            fhir_observation("59261-8", 42.0, "mmol/mol", "2025-01-01"),
            fhir_observation("4548-4", 5.9, "%", "2026-02-01"),
            fhir_observation("39156-5", 31.0, "kg/m2"),
        ),
        "conditions": fhir_bundle(),
    }
    rec = features_from_prefetch(contract, prefetch, patient_id=PATIENT_ID, today=date(2026, 5, 19))
    assert rec["age"] == 57 and rec["sex"] == "female"
    assert rec["fasting_glucose"] == pytest.approx(6.0 * 18.016)
    assert rec["hba1c"] == pytest.approx(5.9)  # the 2026 % value, not the older mmol/mol
    older = features_from_prefetch(
        contract,
        {
            "patient": PATIENT_RES,
            "observations": fhir_bundle(fhir_observation("59261-8", 42.0, "mmol/mol")),
        },
        patient_id=PATIENT_ID,
    )
    assert older["hba1c"] == pytest.approx(42.0 / 10.929 + 2.15, abs=1e-4)
    assert rec["hypertension_dx"] is False  # conditions sent, none matching
    assert rec["antihypertensive_use"] is None  # no medications prefetch: unknown
    assert rec["ldl"] is None


def test_a_unit_the_contract_does_not_list_is_not_used() -> None:
    prefetch = {
        "patient": PATIENT_RES,
        "observations": fhir_bundle(
            fhir_observation("4548-4", 0.06, "g/dL"),
            fhir_observation("59261-8", 42.0, "mmol/mol", "2025-01-01"),
        ),
    }
    reading = read_prefetch(contract, prefetch, PATIENT_ID)
    # The newer value is in a unit the contract does not convert: the older one counts.
    assert reading.record["hba1c"] == pytest.approx(42.0 / 10.929 + 2.15, abs=1e-4)
    assert [(n.reason, n.labels) for n in reading.not_used] == [
        ("in a unit the contract does not convert", ("HbA1c",))
    ]


def test_a_contract_without_units_for_a_numeric_observation_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(CONTRACT.read_text())
    bmi = next(f for f in raw["features"] if f["name"] == "bmi")
    bmi["fhir"] = {"resource": "Observation", "codes": ["http://loinc.org|39156-5"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ContractError, match="needs units"):
        load_contract(path)
