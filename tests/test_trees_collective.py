"""Federated XGBoost: three sites as workers of one collective, on the contract's bin grid.

Workers are spawned processes (never forked: forking after XGBoost ran hangs them). Every
wait has a deadline and every process and server is ended in a ``finally``, so a broken
collective fails a test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from pipeline.contract import Contract, load_contract
from pipeline.models import trees
from pipeline.protocol.tls import JobPKI
from pipeline.strategies.xgboost import collective

# Every spawned worker imports this module to find its target: data loading, synthesis
# and metrics are imported where they are used, so a worker starts sooner.

N_SITES = 3
MAX_BIN = 256
ROUNDS = 300
EARLY_STOP = 10
JOB_TIMEOUT = 120.0
PLANTED = 27.123456  # a value only site 0 holds, in bmi
CTX = mp.get_context("spawn")


@dataclass(frozen=True)
class Site:
    name: str
    X: np.ndarray
    y: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="module")
def contract() -> Contract:
    from pipeline.config import DEFAULT_CONTRACT

    return load_contract(DEFAULT_CONTRACT)


@pytest.fixture(scope="module")
def sites(contract: Contract, tmp_path_factory: pytest.TempPathFactory) -> list[Site]:
    """Three synthetic hospitals split 60/20/20; a quarter of site 0's training BMIs are
    replaced by PLANTED, a value no grid holds."""
    from pipeline.extract import read_frame
    from pipeline.features import FeatureEncoder
    from pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("trees")
    _, written = synthesize(out, sites=N_SITES, rows=9000, seed=5)
    encoder = FeatureEncoder(contract)
    bmi = contract.feature_names.index("bmi")
    rng = np.random.default_rng(5)
    result = []
    for i, w in enumerate(written):
        df = read_frame(w.path)
        X, y = encoder.tree_matrix(df), contract.labels(df).astype(np.float64)
        order = rng.permutation(len(df))
        a, b = int(0.6 * len(df)), int(0.8 * len(df))
        tr, va, te = order[:a], order[a:b], order[b:]
        X_train = X[tr].copy()
        if i == 0:
            X_train[rng.random(len(tr)) < 0.25, bmi] = PLANTED
        result.append(Site(w.name, X_train, y[tr], X[va], y[va], X[te], y[te]))
    return result


@pytest.fixture(scope="module")
def params(sites: list[Site]) -> dict[str, Any]:
    positives = sum(int(s.y.sum()) for s in sites)
    n = sum(len(s.y) for s in sites)
    base = trees.global_base_score(positives, n)
    return trees.booster_params(base_score=base, max_depth=3, learning_rate=0.3, seed=1)


def _worker(results: Any, rank: int, site: Site, kwargs: dict[str, Any]) -> None:
    """A site: trains as one worker and reports its model (or its error) to the test."""
    try:
        raw = trees.train_worker(
            site.X, site.y, X_valid=site.X_valid, y_valid=site.y_valid, **kwargs
        )
        results.put((rank, "ok", raw))
    except BaseException as exc:  # reported, never swallowed: the test fails on it
        results.put((rank, "error", f"{type(exc).__name__}: {exc}"))


def _spawn(
    results: Any, rank: int, site: Site, env: dict[str, Any], contract, params, max_bin=MAX_BIN
) -> Any:
    kwargs = {
        "ref_params": {"contract": contract, "max_bin": max_bin},
        "params": params,
        "num_boost_round": ROUNDS,
        "communicator_env": env,
        "early_stopping_rounds": EARLY_STOP,
    }
    process = CTX.Process(target=_worker, args=(results, rank, site, kwargs), daemon=True)
    process.start()
    return process


def _end(processes: list[Any]) -> None:
    for p in processes:
        if p.pid is not None and p.is_alive():
            p.kill()
        if p.pid is not None:
            p.join(10)


def _collect(results: Any, workers: list[Any]) -> list[bytes]:
    """Every worker's model, by rank; fails fast on an error or a dead worker."""
    models: dict[int, bytes] = {}
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(models) < len(workers):
        try:
            rank, status, payload = results.get(timeout=1.0)
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not dead, f"a worker died with exit codes {dead}"
            assert time.monotonic() < deadline, "the collective did not finish in time"
            continue
        assert status == "ok", f"worker {rank} failed: {payload}"
        models[rank] = payload
    for w in workers:
        w.join(10)
    return [models[r] for r in range(len(workers))]


def _drain(results: Any) -> list[tuple[int, str, Any]]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(results.get(timeout=0.5))
    return out


@dataclass(frozen=True)
class Job:
    models: list[bytes]  # by rank
    server_pid: int | None  # None: the project's aggregator, in this process
    server_port: int
    rogue_reports: list[tuple[int, str, Any]] = field(default_factory=list)
    requests: list[tuple[str, int, int]] = field(default_factory=list)  # kind, call, rank


def _job(server, sites, contract, params, rogue_envs=None) -> Job:
    """One worker per site against `server`; `rogue_envs(server)` are extra workers that
    knock on the server during the whole job (they should never get in). Every request
    the project's aggregator receives is recorded."""
    from pipeline.strategies.xgboost import aggregator

    workers: list[Any] = []
    rogues: list[Any] = []
    results, rogue_results = CTX.Queue(), CTX.Queue()
    requests: list[tuple[str, int, int]] = []
    aggregator.observers.append(
        lambda kind, r: requests.append((kind, int(r.sequence_number), int(r.rank)))
    )
    try:
        server.start()
        for env in rogue_envs(server) if rogue_envs else []:
            rogues.append(_spawn(rogue_results, 0, sites[0], env, contract, params))
        for rank, site in enumerate(sites):
            workers.append(_spawn(results, rank, site, server.env(rank), contract, params))
        models = _collect(results, workers)
        time.sleep(2.0 if rogues else 0.0)  # the rogues keep knocking a moment longer
        rogue_reports = _drain(rogue_results)
        pid, port = server.pid, server.port
    finally:
        aggregator.observers.clear()
        _end(workers + rogues)
        server.stop()
    assert port is not None
    return Job(models, pid, port, rogue_reports, requests)


def _rogue_envs(other: JobPKI):
    """Two workers claiming rank 0: one holds a client certificate of another job's CA
    (it does trust the real server), one speaks plaintext without any certificate."""

    def envs(server: collective.FederatedAggregator) -> list[dict[str, Any]]:
        env = server.env(0)
        foreign = {
            **env,
            "federated_client_key_path": str(other.client_key(other.sites[0])),
            "federated_client_cert_path": str(other.client_cert(other.sites[0])),
        }
        no_cert = {k: v for k, v in env.items() if not k.endswith("_path")}
        return [foreign, no_cert]

    return envs


@pytest.fixture(scope="module")
def federated_job(sites, contract, params, tmp_path_factory) -> Job:
    """The federated job over mutual TLS to the project's aggregator (its SUMs in the
    clear inside TLS), with two rogue workers knocking throughout."""
    tmp = tmp_path_factory.mktemp("pki")
    names = [s.name for s in sites]
    with JobPKI.create(tmp / "job", names) as pki, JobPKI.create(tmp / "other", names) as other:
        server = collective.FederatedAggregator(pki, secure=False)
        return _job(server, sites, contract, params, _rogue_envs(other))


@pytest.fixture(scope="module")
def rabit_job(sites, contract, params) -> Job:
    return _job(collective.RabitServer(N_SITES), sites, contract, params)


@pytest.fixture(scope="module")
def pooled_model(sites, contract, params) -> xgb.Booster:
    """xgboost.train on the pooled rows, same parameters, same contract reference cuts."""
    ref = trees.reference_matrix(contract, MAX_BIN)
    train = trees.site_matrix(*_pooled(sites, ""), ref)
    valid = trees.site_matrix(*_pooled(sites, "_valid"), train)
    booster = xgb.train(
        trees.training_params(params, MAX_BIN),
        train,
        num_boost_round=ROUNDS,
        evals=[(valid, "valid")],
        early_stopping_rounds=EARLY_STOP,
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1]


def _pooled(sites: list[Site], part: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.vstack([getattr(s, f"X{part}") for s in sites]),
        np.concatenate([getattr(s, f"y{part}") for s in sites]),
    )


# -- the grid, without any collective ------------------------------------------------------
@pytest.mark.parametrize("max_bin", [16, 256])
def test_reference_cuts_equal_the_contract_grid(contract: Contract, max_bin: int) -> None:
    grid = trees.contract_grid(contract, max_bin)
    cuts = trees.matrix_cuts(trees.reference_matrix(contract, max_bin))
    assert list(cuts) == contract.feature_names == list(grid)
    for name in grid:
        np.testing.assert_array_equal(cuts[name], grid[name], err_msg=name)
    sex = contract.feature("sex")
    np.testing.assert_array_equal(grid["sex"], np.arange(len(sex.categories)))
    lo, hi = contract.feature("bmi").range
    assert len(grid["bmi"]) == max_bin + 1  # max_bin - 1 inner edges and two sentinels
    np.testing.assert_allclose(np.diff(grid["bmi"][1:-1]), (hi - lo) / max_bin, rtol=1e-4)


def test_every_site_quantizes_on_the_contract_grid_not_its_own_values(
    contract: Contract, sites: list[Site]
) -> None:
    grid = trees.contract_grid(contract, MAX_BIN)
    ref = trees.reference_matrix(contract, MAX_BIN)
    for site in sites:
        cuts = trees.matrix_cuts(trees.site_matrix(site.X, site.y, ref))
        for name in grid:
            np.testing.assert_array_equal(cuts[name], grid[name], err_msg=f"{site.name} {name}")
    # Control: XGBoost's own sketch of site 0 would publish the planted value as a cut.
    sketched = trees.matrix_cuts(xgb.QuantileDMatrix(sites[0].X, max_bin=MAX_BIN, nthread=1))
    bmi = contract.feature_names.index("bmi")
    assert np.isclose(sketched[f"f{bmi}"], PLANTED, atol=1e-4).any()


def test_training_params_refuse_settings_that_would_come_from_one_site() -> None:
    with pytest.raises(ValueError, match="base_score"):
        trees.training_params({"max_depth": 3})
    with pytest.raises(ValueError, match="scale_pos_weight"):
        trees.training_params({"base_score": 0.1, "scale_pos_weight": 9.0})
    with pytest.raises(ValueError, match="objective"):
        trees.training_params({"base_score": 0.1, "objective": "reg:squarederror"})
    with pytest.raises(ValueError, match="max_bin"):
        trees.training_params({"base_score": 0.1, "max_bin": 64}, max_bin=256)
    with pytest.raises(ValueError, match="auc"):
        trees.training_params({"base_score": 0.1, "eval_metric": ["logloss", "auc"]})
    full = trees.training_params({"base_score": 0.1}, max_bin=64)
    assert full["tree_method"] == "hist" and full["max_bin"] == 64


def test_base_score_is_the_global_prevalence() -> None:
    assert trees.global_base_score(30, 200) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        trees.global_base_score(0, 200)


def test_contributions_add_up_to_the_margin(pooled_model: xgb.Booster, sites: list[Site]) -> None:
    X = sites[1].X_test[:50]
    contrib = trees.contributions(pooled_model, X)
    assert contrib.shape == (len(X), X.shape[1] + 1)  # one column per feature, bias last
    p = trees.predict_proba(pooled_model, X)
    np.testing.assert_allclose(contrib.sum(axis=1), np.log(p / (1 - p)), atol=1e-4)


def test_feature_importance_names_every_contract_feature(
    pooled_model: xgb.Booster, contract: Contract
) -> None:
    gain = trees.feature_importance(pooled_model, contract.feature_names)
    assert list(gain) == contract.feature_names
    assert all(v >= 0 for v in gain.values())
    assert max(gain, key=gain.get) in {"fasting_glucose", "hba1c", "bmi"}


# -- the collective ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("job", ["federated_job", "rabit_job"])
def test_every_rank_ends_with_the_identical_booster(job: str, request) -> None:
    models = request.getfixturevalue(job).models
    assert len(models) == N_SITES
    assert all(m == models[0] for m in models)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["federated_job", "rabit_job"])
def test_federated_model_is_as_good_as_pooled_training(
    job: str, request, sites: list[Site], pooled_model: xgb.Booster
) -> None:
    from sklearn.metrics import roc_auc_score

    booster = trees.load_booster(request.getfixturevalue(job).models[0])
    X, y = _pooled(sites, "_test")
    federated = roc_auc_score(y, trees.predict_proba(booster, X))
    pooled = roc_auc_score(y, trees.predict_proba(pooled_model, X))
    assert federated > 0.7
    assert abs(federated - pooled) < 0.002


@pytest.mark.slow
def test_both_communicators_train_the_same_trees(federated_job: Job, rabit_job: Job) -> None:
    a = trees.load_booster(federated_job.models[0])
    b = trees.load_booster(rabit_job.models[0])
    assert a.num_boosted_rounds() == b.num_boosted_rounds()
    assert a.get_dump() == b.get_dump()


@pytest.mark.slow
def test_early_stopping_follows_the_federated_validation_loss(
    federated_job: Job, sites: list[Site]
) -> None:
    from sklearn.metrics import log_loss

    booster = trees.load_booster(federated_job.models[0])
    best = int(booster.attr("best_iteration"))
    history = json.loads(booster.attr(trees.EVALS_ATTR))["valid"]["logloss"]
    assert best < len(history) - 1 < ROUNDS - 1  # it stopped early, after the best round
    assert booster.num_boosted_rounds() == best + 1
    # The metric every worker saw is the loss over all sites' validation rows together.
    X, y = _pooled(sites, "_valid")
    pooled = log_loss(y, trees.predict_proba(booster, X))
    assert history[best] == pytest.approx(pooled, rel=1e-5)
    assert min(history) == history[best]


@pytest.mark.slow
@pytest.mark.parametrize("job", ["federated_job", "rabit_job"])
def test_planted_site_value_appears_in_no_cut_and_no_split(
    job: str, request, contract: Contract
) -> None:
    raw = request.getfixturevalue(job).models[0]
    booster = trees.load_booster(raw)
    grid = trees.contract_grid(contract, MAX_BIN)
    # Every worker checked its cuts against the grid; the model records which grid.
    assert booster.attr(trees.GRID_ATTR) == trees.grid_digest(grid)
    assert not any(np.isclose(c, PLANTED, atol=1e-3).any() for c in grid.values())
    thresholds = trees.split_thresholds(booster)
    assert "bmi" in thresholds  # bmi is used, so the test could have caught a leak
    assert trees.off_grid_thresholds(booster, grid) == {}
    for values in thresholds.values():
        assert not np.isclose(values, PLANTED, atol=1e-3).any()
    text = bytes(booster.save_raw("json")).decode()
    assert "27.1234" not in text and "2.71234" not in text


@pytest.mark.slow
def test_servers_end_and_free_their_port(federated_job: Job, rabit_job: Job) -> None:
    for job in (federated_job, rabit_job):
        assert not collective.is_listening("127.0.0.1", job.server_port)
    assert federated_job.server_pid is None  # the aggregator ran (and stopped) in here
    with pytest.raises(ProcessLookupError):
        os.kill(rabit_job.server_pid, 0)


def test_a_server_starts_in_the_spare_interpreter_and_an_unused_spare_ends() -> None:
    with (
        collective.spare_interpreter() as spare,
        collective.RabitServer(2, host="127.0.0.1") as server,
    ):
        assert server.pid == spare
        assert collective.is_listening("127.0.0.1", server.port)
    with collective.spare_interpreter() as unused:
        os.kill(unused, 0)  # alive while its job runs
    with pytest.raises(ProcessLookupError):
        os.kill(unused, 0)


@pytest.mark.slow
def test_federated_server_refuses_workers_without_a_job_certificate(
    federated_job: Job, rabit_job: Job
) -> None:
    """The rogues claimed rank 0 while the real job ran: no request of theirs reached the
    aggregator (each call came once from each rank; a second rank 0 would have broken
    the collective), none of them got a model, and the job trained what it trains
    without them."""
    requests = federated_job.requests
    assert requests and len(set(requests)) == len(requests)
    calls = {seq for _, seq, _ in requests}
    assert len(requests) == N_SITES * len(calls)
    # A rogue either still knocked when the job ended or gave up with an error.
    assert not [r for r in federated_job.rogue_reports if r[1] == "ok"]
    assert trees.load_booster(federated_job.models[0]).get_dump() == (
        trees.load_booster(rabit_job.models[0]).get_dump()
    )


@pytest.mark.slow
def test_sites_on_different_grids_all_fail_before_training(sites, contract, params) -> None:
    """One site quantizes on 128 bins: every worker refuses, none waits forever."""
    server = collective.RabitServer(N_SITES)
    results = CTX.Queue()
    workers: list[Any] = []
    try:
        server.start()
        for rank, site in enumerate(sites):
            max_bin = 128 if rank == 2 else MAX_BIN
            workers.append(_spawn(results, rank, site, server.env(rank), contract, params, max_bin))
        reports = [results.get(timeout=JOB_TIMEOUT) for _ in workers]
    finally:
        _end(workers)
        server.stop()
    assert sorted(rank for rank, _, _ in reports) == list(range(N_SITES))
    for _, status, message in reports:
        assert status == "error" and "different grids" in message
