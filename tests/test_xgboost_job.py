"""Federated XGBoost as a job (``--model xgboost``) on real Ray and MLflow: the sites'
actors as the ranks of one collective, under both communicators; the served model; the
pooled model it must match; a site killed mid-training; and the ranks' agreement."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from conftest import make_config
from sklearn.metrics import roc_auc_score

from pipeline.config import FederationConfig, load_config
from pipeline.contract import load_contract
from pipeline.extract import read_frame
from pipeline.features import FeatureEncoder
from pipeline.federation import messages, runtime
from pipeline.job import run_job
from pipeline.models import collective, tree_training, trees
from pipeline.models.tree_training import CollectiveError, agreed_booster, validation_mask
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow

# Room for a busy 2-core machine; the collective itself takes seconds.
ROUND_TIMEOUT_S = 300
_MODELS: dict[str, object] = {}


def _config(base: Path, tmp: Path, **xgboost) -> FederationConfig:
    training = {"round_timeout_s": ROUND_TIMEOUT_S, "xgboost": xgboost}
    return load_config(make_config(base, tmp, training=training))


def _pooled(cfg: FederationConfig):
    """The baseline the federation must match: the sites' train rows pooled (read here
    by the test, never by the job), the same split, validation rows, params and grid.
    Returns (booster, held-out raw rows, held-out labels)."""
    contract = load_contract(cfg.contract)
    encoder = FeatureEncoder(contract)
    seed, test_fraction = cfg.training.seed, cfg.training.test_fraction
    fit, valid, test = [], [], []
    for site in cfg.sites:
        df = read_frame(site.path, contract.arrow_schema)
        keys = df[contract.key.name].astype(str)
        h = pd.util.hash_pandas_object(keys, index=False, hash_key=f"{seed:016d}"[-16:])
        is_test = (h.to_numpy() % 10_000) < int(test_fraction * 10_000)
        T, y = encoder.tree_matrix(df), contract.labels(df).astype(np.float64)
        T_train, y_train = T[~is_test], y[~is_test]
        v = validation_mask(len(y_train), seed)
        fit.append((T_train[~v], y_train[~v]))
        valid.append((T_train[v], y_train[v]))
        test.append((df[is_test].reset_index(drop=True), y[is_test]))
    x = cfg.training.xgboost
    y_all = np.concatenate([y for _, y in fit] + [y for _, y in valid])
    params = trees.booster_params(
        base_score=trees.global_base_score(int(y_all.sum()), len(y_all)),
        max_depth=x.max_depth,
        learning_rate=x.learning_rate,
        seed=seed,
    )
    ref = trees.reference_matrix(contract, x.max_bin)
    dtrain = trees.site_matrix(
        np.vstack([a for a, _ in fit]), np.concatenate([b for _, b in fit]), ref, max_bin=x.max_bin
    )
    dvalid = trees.site_matrix(
        np.vstack([a for a, _ in valid]),
        np.concatenate([b for _, b in valid]),
        dtrain,
        max_bin=x.max_bin,
    )
    booster = xgb.train(
        trees.training_params(params, x.max_bin),
        dtrain,
        num_boost_round=x.rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=x.early_stopping_rounds,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    held_out = pd.concat([d for d, _ in test], ignore_index=True)
    return booster, held_out, np.concatenate([y for _, y in test])


def _served_probabilities(cfg: FederationConfig, rows: Path, out: Path) -> np.ndarray:
    """The registered model, loaded by mlflow.pyfunc in a fresh interpreter."""
    script = (
        "import mlflow, pandas as pd, numpy as np\n"
        f"mlflow.set_tracking_uri({cfg.tracking_uri!r}); "
        f"mlflow.set_registry_uri({cfg.tracking_uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/diabetes-risk/1')\n"
        f"res = m.predict(pd.read_parquet({str(rows)!r}))\n"
        f"np.save({str(out)!r}, res['risk_probability'].to_numpy())\n"
        "print(sorted(res.columns)); print(res['top_factors'].iloc[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top_factors" in done.stdout and "risk_band" in done.stdout
    return np.load(out)


@pytest.mark.parametrize("communicator", ["federated", "rabit"])
def test_xgboost_job_registers_a_served_model_matching_pooled_training(
    ray_session, small_federation: Path, tmp_path: Path, communicator: str
) -> None:
    cfg = _config(small_federation, tmp_path, communicator=communicator)
    result = run_job(cfg, strategy="xgboost")
    model = result.model
    assert result.model_version == "1"
    assert model.kind == "xgboost" and not result.dropped

    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(result.run_id)
    assert run.data.params["xgboost_communicator"] == communicator
    assert run.data.params["xgboost_retries"] == "0"
    assert run.data.tags["xgboost_boosters_identical"] == "true"
    artifacts = {
        a.path for a in mlflow.MlflowClient(cfg.tracking_uri).list_artifacts(run.info.run_id)
    }
    assert "feature_importance.json" in artifacts

    # Raw rows of a hospital the model never saw, in clinical units with nulls.
    unseen_cfg, _ = synthesize(tmp_path / "unseen", sites=1, rows=400, seed=999)
    unseen = read_frame(load_config(unseen_cfg).sites[0].path)
    features = unseen[model.contract.feature_names]
    rows = tmp_path / "rows.parquet"
    features.to_parquet(rows)
    served = _served_probabilities(cfg, rows, tmp_path / "p.npy")
    np.testing.assert_allclose(served, model.predict_proba(features), rtol=0, atol=1e-9)
    contrib = model.contributions(features)
    assert list(contrib.columns) == model.contract.feature_names

    pooled, held_out, y_test = _pooled(cfg)
    auc_fed = roc_auc_score(y_test, model.predict_proba(held_out))
    auc_pooled = roc_auc_score(
        y_test, trees.predict_proba(pooled, FeatureEncoder(model.contract).tree_matrix(held_out))
    )
    assert abs(auc_fed - auc_pooled) <= 0.002, (auc_fed, auc_pooled)

    # Either communicator trains the same model.
    _MODELS[communicator] = model
    if len(_MODELS) == 2:
        a, b = _MODELS.values()
        np.testing.assert_allclose(
            a.predict_proba(held_out), b.predict_proba(held_out), rtol=0, atol=1e-6
        )


def _kill_during_training(ray, site: str, after_s: float):
    """A progress callback that kills `site`'s actor `after_s` seconds into the first
    attempt of the collective (from a thread, as an outside failure would)."""
    said: list[str] = []

    def kill() -> None:
        time.sleep(after_s)
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["name"].endswith(f":{site}"):
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
                said.append(f"killed {actor['name']}")

    def progress(msg: str) -> None:
        said.append(msg)
        if msg.startswith("xgboost attempt 1:"):
            threading.Thread(target=kill, daemon=True).start()

    return said, progress


@pytest.mark.parametrize("communicator", ["federated", "rabit"])
def test_a_site_killed_mid_training_is_dropped_and_the_job_retries_without_it(
    ray_session, small_federation: Path, tmp_path: Path, communicator: str
) -> None:
    timeout_s = 120.0
    # Many rounds without early stopping: the collective is still busy when the kill lands.
    cfg = _config(
        small_federation,
        tmp_path,
        communicator=communicator,
        rounds=400,
        early_stopping_rounds=400,
        timeout_s=timeout_s,
    )
    victim = cfg.sites[1].name
    said, progress = _kill_during_training(ray_session, victim, after_s=3.0)
    start = time.monotonic()
    result = run_job(cfg, strategy="xgboost", progress=progress)
    assert any(s.startswith("killed") for s in said), said
    assert any("attempt 1 failed" in s for s in said), said
    assert set(result.dropped) == {victim}
    assert result.model_version == "1"
    training = result.model.training_
    assert training.attempts == 2 and training.sites == [
        s.name for s in cfg.sites if s.name != victim
    ]
    assert training.seconds < timeout_s
    assert time.monotonic() - start < 2 * ROUND_TIMEOUT_S
    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(result.run_id)
    assert run.data.params["xgboost_retries"] == "1"
    assert run.data.tags["xgboost_dropped"] == victim
    # No server outlives the job: both attempts' ports are closed, no server process left.
    assert len(training.ports) == 2
    assert not any(collective.is_listening("127.0.0.1", p) for p in training.ports)
    assert len(training.server_pids) == 2
    for pid in training.server_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ranks_that_disagree_fail_the_job() -> None:
    assert agreed_booster({"a": b"model", "b": b"model"}) == b"model"
    with pytest.raises(CollectiveError, match="2 different boosters"):
        agreed_booster({"a": b"model", "b": b"other"})


PLANTED = 27.123456  # a BMI only one site holds, on no grid


def _plant(extract: Path, fraction: float, seed: int = 3) -> int:
    """Overwrite `fraction` of the site's BMI values with PLANTED, file by file."""
    rng = np.random.default_rng(seed)
    planted = 0
    for f in sorted(extract.rglob("*.parquet")):
        table = pq.read_table(f)
        bmi = table["bmi"].combine_chunks()
        mask = (rng.random(len(bmi)) < fraction) & pc.is_valid(bmi).to_numpy(zero_copy_only=False)
        planted += int(mask.sum())
        new = pc.if_else(pa.array(mask), pa.scalar(PLANTED, bmi.type), bmi)
        i = table.schema.get_field_index("bmi")
        pq.write_table(table.set_column(i, table.schema.field(i), new), f)
    return planted


def test_a_value_planted_at_one_site_reaches_no_split_and_no_reply(
    ray_session, tmp_path: Path, monkeypatch, capfd
) -> None:
    """A quarter of one site's BMIs are a value no grid holds. Every rank checks its cuts
    against the contract grid before the first histogram, so the job completing means no
    site quantized on it; no split threshold is it, and no actor reply carries it."""
    base, _ = synthesize(tmp_path / "data", sites=3, rows=6000, seed=23)
    cfg = _config(base, tmp_path, communicator="federated")
    assert _plant(cfg.sites[0].path, 0.25) > 100

    replies: list[object] = []
    checked = messages.check_reply

    def record(reply: object) -> object:
        replies.append(reply)
        return checked(reply)

    monkeypatch.setattr(runtime, "check_reply", record)
    monkeypatch.setattr(tree_training, "check_reply", record)
    result = run_job(cfg, strategy="xgboost")
    time.sleep(2.0)  # let Ray forward the workers' logs
    out, err = capfd.readouterr()

    assert not result.dropped and not result.quarantined
    kinds = {type(r) for r in replies}
    assert {messages.ValidationReply, messages.SiteInfo, messages.BoosterReply} <= kinds
    assert messages.EvalStats in kinds
    booster = result.model.booster_
    grid = trees.contract_grid(result.model.contract, cfg.training.xgboost.max_bin)
    assert booster.attr(trees.GRID_ATTR) == trees.grid_digest(grid)
    thresholds = trees.split_thresholds(booster)
    assert "bmi" in thresholds  # bmi is split on, so a leak had somewhere to show
    assert trees.off_grid_thresholds(booster, grid) == {}
    assert not np.isclose(thresholds["bmi"], PLANTED, atol=1e-3).any()

    shipped = pickle.dumps(replies)
    patterns = [struct.pack(fmt, PLANTED) for fmt in ("<f", ">f", "<d", ">d")]
    patterns += [b"27.1234", b"2.71234"]
    for pattern in patterns:
        assert pattern not in shipped, pattern
    for text in ("27.1234", "2.71234"):
        assert text not in out and text not in err
