"""Federated XGBoost as a job (``--model xgboost``) on real Ray and MLflow: the sites'
actors as the ranks of one collective, under both communicators; the served model; the
pooled model it must match; a site killed mid-training; and the ranks' agreement."""

from __future__ import annotations

import os
import pickle
import struct
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
from sklearn.metrics import roc_auc_score
from support.federation import (
    make_config,
    served_probabilities,
    unseen_hospital_rows,
    write_site_policy,
)

from pipeline import pooled
from pipeline.config import FederationConfig, load_config
from pipeline.features import FeatureEncoder
from pipeline.federation import runtime
from pipeline.job import run_job
from pipeline.models import trees
from pipeline.models.tree_model import TreeModel
from pipeline.protocol import messages
from pipeline.stages.sites import runtime_for
from pipeline.strategies.xgboost import collective, watchdog
from pipeline.strategies.xgboost.watchdog import CollectiveError, agreed_booster, train_collective
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow

# Room for a busy 2-core machine; the collective itself takes seconds.
ROUND_TIMEOUT_S = 300
_MODELS: dict[str, object] = {}


def _config(base: Path, tmp: Path, **xgboost) -> FederationConfig:
    """A copy of `base`'s config for `xgboost` settings. A site whose policy requires
    secure aggregation joins only a secure collective: for the clear communicators its
    hospital has said otherwise."""
    training = {"round_timeout_s": ROUND_TIMEOUT_S, "xgboost": xgboost}
    cfg = load_config(make_config(base, tmp, training=training))
    clear = xgboost.get("communicator") in ("federated", "rabit")
    for site in cfg.sites:
        write_site_policy(site.path, epsilon_budget=1000.0, secure_aggregation=not clear)
    return cfg


def _pooled(cfg: FederationConfig):
    """The baseline the federation must match: the sites' train rows pooled (read here
    by the test, never by the job), the same split, validation rows, params and grid.
    Returns (booster, held-out raw rows, held-out labels)."""
    contract, rows = pooled.site_rows(cfg)
    booster = pooled.train_xgboost(contract, cfg, [(r.train_T, r.train_y) for r in rows])
    held_out = pd.concat([r.test for r in rows], ignore_index=True)
    return booster, held_out, np.concatenate([r.test_y for r in rows])


@pytest.mark.parametrize("communicator", ["secure", "rabit"])
def test_xgboost_job_registers_a_served_model_matching_pooled_training(
    ray_session, small_federation: Path, tmp_path: Path, communicator: str
) -> None:
    cfg = _config(small_federation, tmp_path, communicator=communicator)
    result = run_job(cfg, strategy="xgboost")
    model = result.model
    assert result.model_version == "1"
    assert isinstance(model, TreeModel) and not result.dropped

    run = mlflow.MlflowClient(cfg.tracking_uri).get_run(result.run_id)
    assert run.data.params["xgboost_communicator"] == communicator
    assert run.data.params["xgboost_retries"] == "0"
    assert run.data.tags["xgboost_boosters_identical"] == "true"
    artifacts = {
        a.path for a in mlflow.MlflowClient(cfg.tracking_uri).list_artifacts(run.info.run_id)
    }
    assert "feature_importance.json" in artifacts

    # Raw rows of a hospital the model never saw, in clinical units with nulls.
    features, rows = unseen_hospital_rows(tmp_path, model.contract.feature_names)
    served = served_probabilities(cfg.tracking_uri, rows)
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
    at: dict[str, float] = {}  # when it was killed, when the first attempt failed

    def kill() -> None:
        time.sleep(after_s)
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["name"].endswith(f":{site}"):
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
                at.setdefault("killed", time.monotonic())
                said.append(f"killed {actor['name']}")

    def progress(msg: str) -> None:
        said.append(msg)
        if msg.startswith("xgboost attempt 1 failed"):
            at.setdefault("failed", time.monotonic())
        if msg.startswith("xgboost attempt 1:"):
            threading.Thread(target=kill, daemon=True).start()

    progress.at = at  # type: ignore[attr-defined]
    return said, progress


@pytest.fixture(scope="module")
def four_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sites: one can be lost and three remain, as the secure evaluation needs."""
    config, _ = synthesize(tmp_path_factory.mktemp("fed4x"), sites=4, rows=6000, seed=13)
    return config


@pytest.mark.parametrize("communicator", ["secure", "rabit"])
def test_a_site_killed_mid_training_is_dropped_and_the_job_retries_without_it(
    ray_session, four_small: Path, tmp_path: Path, communicator: str
) -> None:
    timeout_s = 120.0
    # Many rounds without early stopping: the collective (its server started ahead, its
    # sites' XGBoost imported while they validated) is still busy when the kill lands.
    cfg = _config(
        four_small,
        tmp_path,
        communicator=communicator,
        # secure is slower per round: half the rounds keep it as busy at the kill
        rounds=400 if communicator == "rabit" else 200,
        early_stopping_rounds=400,
        timeout_s=timeout_s,
        call_deadline_s=20.0,
    )
    victim = cfg.sites[1].name
    said, progress = _kill_during_training(ray_session, victim, after_s=1.5)
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
    if communicator == "rabit":
        assert len(training.server_pids) == 2
    else:  # the project's aggregator runs in the coordinator: it fails the others itself
        assert training.server_pids == ()
        at = progress.at
        assert at["failed"] - at["killed"] < 20.0, at  # within the call deadline
    for pid in training.server_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sites_stuck_in_a_broken_collective_get_fresh_actors_and_train_in_the_retry(
    ray_session, small_federation: Path, tmp_path: Path
) -> None:
    """No grace period at all: every survivor is still inside the broken collective when
    the watchdog looks, so each gets a fresh actor and its extract loaded again; only the
    killed site leaves the job."""
    cfg = _config(small_federation, tmp_path, communicator="rabit")
    victim = cfg.sites[1].name
    survivors = [s.name for s in cfg.sites if s.name != victim]
    said, progress = _kill_during_training(ray_session, victim, after_s=1.5)
    with runtime_for(cfg.sites, cfg.contract, "stuck", timeout_s=120) as runtime:
        runtime.call("load", "stuck", "xgboost", 0.2, 0)

        def params_for(sites: list[str]) -> dict:
            return trees.booster_params(base_score=0.2)  # the synthetic cohorts' prevalence

        reloaded: list[list[str]] = []

        def reload(sites: list[str]) -> None:
            reloaded.append(sites)
            runtime.call("load", "stuck", "xgboost", 0.2, 0, sites=sites)

        result = train_collective(
            runtime,
            "stuck",
            strategy="xgboost",
            communicator="rabit",
            quorum=2,
            params_for=params_for,
            train_kwargs={
                "num_boost_round": 400,
                "max_bin": 256,
                "early_stopping_rounds": 400,
                "valid_fraction": 0.1,
                "seed": 0,
            },
            timeout_s=120,
            say=progress,
            grace_s=0.0,
            reload=reload,
        )
        assert any(s.startswith("killed") for s in said), said
        assert reloaded == [survivors]
        assert any("fresh actors" in s for s in said), said
        assert list(runtime.dropped) == [victim]
        assert result.attempts == 2 and result.sites == survivors
        assert set(result.lost) == {victim}


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
    monkeypatch.setattr(watchdog, "check_reply", record)
    result = run_job(cfg, strategy="xgboost")
    time.sleep(2.0)  # let Ray forward the workers' logs
    out, err = capfd.readouterr()

    assert not result.dropped and not result.quarantined
    kinds = {type(r) for r in replies}
    # The trees, and nothing unmasked besides: evaluation statistics came masked.
    assert kinds == {
        messages.ValidationReply,
        messages.SiteInfo,
        messages.BoosterReply,
        messages.PublicKeyReply,
        messages.MaskedUpdate,  # the label counts, through the secure sum
        messages.MaskedEvaluation,
        messages.RoundSetup,  # the secure sum's round keys and encrypted shares
        messages.Reveal,  # its shares of the round's secrets
        messages.Confirmation,  # its signature on who sent an input
        messages.ModelCommitment,  # the digest of the booster it holds, fixed
        messages.JobEnd,  # its own ledger's status for the job, at the end
    }
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
