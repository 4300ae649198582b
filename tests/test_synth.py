"""Synthetic hospitals: schema, determinism, cohort rule, heterogeneity, learnability."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.extract import read_frame
from pipeline.features import FeatureEncoder
from pipeline.synth import month_of, synthesize

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = load_contract(ROOT / "schemas" / "diabetes_ehr.yaml")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def fed4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's command, run literally through the console script."""
    out = tmp_path_factory.mktemp("x")
    pipeline_bin = Path(sys.executable).parent / "pipeline"
    cmd = [
        str(pipeline_bin),
        "synth",
        "--sites",
        "4",
        "--rows",
        "20000",
        "--seed",
        "7",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "northgate" in done.stdout
    return out


@pytest.fixture(scope="module")
def fed4_frames(fed4: Path) -> dict[str, pd.DataFrame]:
    cfg = load_config(fed4 / "federation.yaml")
    return {s.name: read_frame(s.path) for s in cfg.sites}


def test_writes_one_extract_per_site_and_a_config(fed4: Path) -> None:
    cfg = load_config(fed4 / "federation.yaml")
    assert len(cfg.sites) == 4
    assert all(s.path.is_dir() for s in cfg.sites)
    assert cfg.contract == (ROOT / "schemas" / "diabetes_ehr.yaml").resolve()


def test_every_file_schema_equals_the_contract_schema(fed4: Path) -> None:
    files = sorted(fed4.rglob("*.parquet"))
    assert len(files) >= 4 * 6
    for f in files:
        assert pq.read_schema(f).equals(CONTRACT.arrow_schema), f


def test_total_rows_match_the_request(fed4_frames: dict[str, pd.DataFrame]) -> None:
    assert sum(len(df) for df in fed4_frames.values()) == 20_000


def test_same_seed_gives_byte_identical_files(fed4: Path, tmp_path: Path) -> None:
    synthesize(tmp_path, sites=4, rows=20_000, seed=7)
    assert _digest(tmp_path) == _digest(fed4)


def test_another_seed_gives_different_data(fed4: Path, tmp_path: Path) -> None:
    synthesize(tmp_path, sites=4, rows=20_000, seed=8)
    theirs, ours = _digest(tmp_path), _digest(fed4)
    assert set(theirs.values()).isdisjoint(ours.values())


def test_no_row_breaks_the_cohort_rule(fed4_frames: dict[str, pd.DataFrame]) -> None:
    for site, df in fed4_frames.items():
        assert not CONTRACT.cohort_violations(df).any(), site
        assert (df["hba1c"].dropna() < 6.5).all()
        assert (df["fasting_glucose"].dropna() < 126).all()
        assert (df["age"] >= 18).all()
        assert df["patient_key"].is_unique, site


def test_every_partition_closed_follow_up_in_its_month(fed4: Path) -> None:
    partitions = sorted(fed4.glob("*/followup_month=*"))
    assert partitions
    for part in partitions:
        month = part.name.split("=", 1)[1]
        df = pq.read_table(part).to_pandas()
        closes = {month_of(d, CONTRACT.cohort.follow_up_months) for d in df["index_date"]}
        assert closes == {month}, part


def test_follow_up_months_are_consecutive_and_end_at_until(fed4: Path) -> None:
    months = sorted({p.name.split("=", 1)[1] for p in fed4.glob("*/followup_month=*")})
    assert months[-1] == "2026-09"
    assert len(months) == 12
    assert month_of(date(2021, 9, 3), 60) == "2026-09"


def test_sites_differ_in_size_and_prevalence(fed4_frames: dict[str, pd.DataFrame]) -> None:
    sizes = np.array([len(df) for df in fed4_frames.values()])
    prevalence = np.array([df["diabetes_5y"].mean() for df in fed4_frames.values()])
    assert sizes.max() / sizes.min() > 3
    assert prevalence.max() - prevalence.min() > 0.03
    hba1c_missing = [df["hba1c"].isna().mean() for df in fed4_frames.values()]
    assert max(hba1c_missing) - min(hba1c_missing) > 0.05


def test_ground_truth_is_learnable_but_not_trivial(fed4_frames: dict[str, pd.DataFrame]) -> None:
    df = pd.concat(fed4_frames.values(), ignore_index=True)
    enc = FeatureEncoder(CONTRACT)
    X, y = enc.transform(df), CONTRACT.labels(df)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    model = LogisticRegression(max_iter=2000).fit(Xtr, ytr)
    auc = roc_auc_score(yte, model.predict_proba(Xte)[:, 1])
    assert 0.75 <= auc <= 0.90


def test_encoded_rows_respect_the_contract_norm_bound(fed4_frames: dict[str, pd.DataFrame]) -> None:
    enc = FeatureEncoder(CONTRACT)
    X = enc.transform(next(iter(fed4_frames.values())))
    assert X.shape[1] == enc.n_features_out
    assert np.linalg.norm(X, axis=1).max() <= enc.data_norm + 1e-12
    assert X.min() >= -1 and X.max() <= 1
