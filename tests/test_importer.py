"""A second task by contract alone: the four real UCI Heart Disease hospitals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.federation import HEART_DATA, HEART_FILES

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.extract import read_frame

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "schemas" / "heart_disease.yaml"

pytestmark = pytest.mark.skipif(not HEART_DATA.is_dir(), reason="shared heart data absent")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heart")
    cmd = [
        str(Path(sys.executable).parent / "pipeline"),
        "import-csv",
        "--contract",
        str(HEART),
        "--out",
        str(out),
    ]
    for site, name in HEART_FILES.items():
        cmd += ["--site", f"{site}={HEART_DATA / name}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def test_each_hospital_becomes_an_extract_under_the_contract(imported: Path) -> None:
    contract = load_contract(HEART)
    cfg = load_config(imported / "federation.yaml")
    assert [s.name for s in cfg.sites] == list(HEART_FILES)
    rows = {s.name: pq.read_table(s.path).num_rows for s in cfg.sites}
    assert rows == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va": 200}
    for s in cfg.sites:
        assert pq.read_schema(next(s.path.glob("*.parquet"))).equals(contract.arrow_schema)


def test_derived_keys_are_stable_and_unique(imported: Path, tmp_path: Path) -> None:
    from pipeline.importer import import_csv

    import_csv(HEART, {"cleveland": HEART_DATA / HEART_FILES["cleveland"]}, tmp_path)
    again = read_frame(tmp_path / "cleveland")["patient_key"]
    first = read_frame(imported / "cleveland")["patient_key"]
    assert again.tolist() == first.tolist()
    assert first.is_unique


def test_missing_codes_and_label_rule_come_from_the_contract(imported: Path) -> None:
    swiss = read_frame(imported / "switzerland")
    assert swiss["chol"].isna().all()  # 0 means "not measured" in the source
    cleveland = read_frame(imported / "cleveland")
    assert set(cleveland["heart_disease"].unique()) == {0, 1}
    assert cleveland["heart_disease"].sum() == 139  # num > 0 in the Cleveland file


@pytest.mark.slow
def test_the_real_hospitals_run_through_every_stage(
    ray_session, imported: Path, tmp_path: Path
) -> None:
    import mlflow
    import yaml

    from pipeline.job import run_job

    raw = yaml.safe_load((imported / "federation.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    raw["privacy"] = {"ledger": str(tmp_path / "ledger.sqlite")}
    path = imported / "federation-stages.yaml"  # beside the original: same relative paths
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    for strategy in ("logistic", "xgboost"):
        result = run_job(cfg, strategy=strategy)
        assert result.admitted == list(HEART_FILES) and not result.quarantined
        assert result.metrics.auc > 0.75, (strategy, result.metrics.auc)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    versions = client.search_model_versions("name='heart-disease-risk'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
