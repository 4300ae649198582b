"""Contracts: parsing, clear errors, derived schema and bounds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.contract import load_contract
from pipeline.errors import ContractError
from pipeline.features import FeatureEncoder

ROOT = Path(__file__).resolve().parent.parent
DIABETES = ROOT / "schemas" / "diabetes_ehr.yaml"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_diabetes_contract_declares_the_required_clinical_features() -> None:
    c = load_contract(DIABETES)
    required = {
        "age",
        "sex",
        "race_ethnicity",
        "bmi",
        "waist_cm",
        "sbp",
        "dbp",
        "fasting_glucose",
        "hba1c",
        "hdl",
        "ldl",
        "triglycerides",
        "smoking_status",
        "physical_activity",
        "family_history_diabetes",
        "hypertension_dx",
        "antihypertensive_use",
        "gestational_diabetes_history",
    }
    assert required <= set(c.feature_names)
    assert c.label.name == "diabetes_5y" and c.label.positive == 1
    assert c.key.name == "patient_key" and c.index_date.name == "index_date"
    assert {"ssn", "mrn", "email", "date_of_birth"} <= set(c.identifiers_denylist)
    assert all(f.unit for f in c.features if f.kind == "numeric")


def test_arrow_schema_follows_the_contract() -> None:
    c = load_contract(DIABETES)
    schema = c.arrow_schema
    assert schema.names == c.column_names
    assert schema.field("index_date").type == pa.date32()
    assert schema.field("fasting_glucose").nullable
    assert not schema.field("patient_key").nullable


def test_dp_bounds_come_from_the_contract() -> None:
    c = load_contract(DIABETES)
    assert c.numeric_bounds["fasting_glucose"] == (40, 126)
    enc = FeatureEncoder(c)
    assert enc.data_norm == pytest.approx(
        (len(c.features) + sum(f.nullable for f in c.features)) ** 0.5
    )


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not found"):
        load_contract(tmp_path / "nope.yaml")


def test_bad_feature_error_names_the_feature(tmp_path: Path) -> None:
    raw = yaml.safe_load(DIABETES.read_text())
    raw["features"][3]["range"] = [70, 12]
    with pytest.raises(ContractError) as err:
        load_contract(_write(tmp_path, raw))
    assert "c.yaml" in str(err.value) and "bmi" in str(err.value)


def test_denylisted_column_in_a_contract_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(DIABETES.read_text())
    raw["features"].append(
        {"name": "ssn", "kind": "categorical", "dtype": "string", "categories": ["x"]}
    )
    with pytest.raises(ContractError, match="denylist"):
        load_contract(_write(tmp_path, raw))


def test_cohort_rule_excludes_prevalent_diabetes() -> None:
    import pandas as pd

    c = load_contract(DIABETES)
    df = pd.DataFrame(
        {"hba1c": [5.0, 6.5, None], "fasting_glucose": [90, 90, 130], "age": [40, 40, 40]}
    )
    assert c.cohort_violations(df).tolist() == [False, True, True]
