"""Private and non-private logistic jobs at hospital scale, end to end on real Ray and
MLflow: the non-private federated model is the pooled one, a private job's plan depends
on row counts only and is charged exactly, a one-shot job warns about sites too small
for their epsilon, and a site can hold out a fixed set of rows."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.federation import make_config

from pipeline.config import load_config
from pipeline.contract import load_contract
from pipeline.extract import read_table
from pipeline.features import FeatureEncoder
from pipeline.job import run_job
from pipeline.pooled import site_split, train_logistic
from pipeline.privacy.accounting import composed_gaussian_epsilon
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.protocol.identity import identity_path
from pipeline.strategies.dp_fedavg.plan import DPFedAvgPlan
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three hospitals of a few hundred to a thousand patients."""
    config, _ = synthesize(
        tmp_path_factory.mktemp("small"), sites=3, seed=31, sizes=[400, 700, 1100]
    )
    return config


def _plan_artifact(cfg, run_id: str) -> dict:
    client = mlflow.MlflowClient(cfg.tracking_uri)
    path = client.download_artifacts(run_id, "privacy_plan.json")
    return json.loads(Path(path).read_text())


def test_the_non_private_federated_model_is_the_pooled_model(
    ray_session, small_sites: Path, tmp_path: Path
) -> None:
    cfg = load_config(make_config(small_sites, tmp_path, training={"rounds": 30}))
    result = run_job(cfg, strategy="logistic", register=False)
    contract = load_contract(cfg.contract)
    enc = FeatureEncoder(contract)
    parts = [site_split(cfg, s, contract)[0] for s in cfg.sites]
    X = np.vstack([enc.transform(frame) for frame, _ in parts])
    y = np.concatenate([labels for _, labels in parts])
    pooled = train_logistic(X, y, l2=cfg.training.l2)
    np.testing.assert_allclose(result.model.weights, pooled, atol=1e-4)
    rounds = mlflow.MlflowClient(cfg.tracking_uri).get_metric_history(result.run_id, "weight_norm")
    assert len(rounds) < 30  # Newton stopped once converged


def test_a_private_plan_is_charged_exactly_and_depends_only_on_row_counts(
    ray_session, small_sites: Path, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    cfg = load_config(make_config(small_sites, tmp_path / "a", training={"rounds": 60}))
    first = run_job(cfg, strategy="dp-fedavg", register=False)
    plan = DPFedAvgPlan(**_plan_artifact(cfg, first.run_id))
    charged = composed_gaussian_epsilon(plan.releases(), plan.delta)
    ledger = PrivacyLedger(cfg.privacy.ledger)
    assert {s.name: ledger.spent(s.name) for s in cfg.sites} == {
        s.name: (charged, plan.delta) for s in cfg.sites
    }
    assert plan.rounds < 60 and plan.rows == sum(i for i in _train_rows(cfg).values())

    # The same row counts with other values: numeric columns shuffled, labels flipped.
    other = tmp_path / "other"
    rng = np.random.default_rng(5)
    for site in cfg.sites:
        table = read_table(site.path)
        for name in ("bmi", "sbp", "hdl", "age"):
            idx = table.schema.get_field_index(name)
            shuffled = table[name].take(pa.array(rng.permutation(table.num_rows)))
            table = table.set_column(idx, table.schema.field(idx), shuffled)
        label = table.schema.get_field_index("diabetes_5y")
        flipped = pc.subtract(pa.scalar(1, pa.int8()), table["diabetes_5y"])
        table = table.set_column(label, table.schema.field(label), flipped.cast(pa.int8()))
        (other / site.name).mkdir(parents=True)
        pq.write_table(table, other / site.name / "part-0.parquet")
        shutil.copy(identity_path(site.path), identity_path(other / site.name))
        site.path = other / site.name
    changed = run_job(cfg, strategy="dp-fedavg", register=False)
    assert _plan_artifact(cfg, changed.run_id) == _plan_artifact(cfg, first.run_id)
    assert not np.allclose(changed.model.weights, first.model.weights)


def _train_rows(cfg) -> dict[str, int]:
    contract = load_contract(cfg.contract)
    return {s.name: len(site_split(cfg, s, contract)[0][1]) for s in cfg.sites}


def test_a_one_shot_job_warns_about_sites_too_small_for_their_epsilon(
    ray_session, small_sites: Path, tmp_path: Path, caplog
) -> None:
    # At epsilon 0.1 the noise of a one-shot fit is more than a quarter of the largest
    # mean gradient at every one of these sites (a few hundred training rows each).
    cfg = load_config(make_config(small_sites, tmp_path, privacy={"epsilon_per_job": 0.1}))
    with caplog.at_level(logging.WARNING, logger="pipeline.strategies.dp_logistic.coordinator"):
        result = run_job(cfg, strategy="dp-logistic", register=False)
    assert result.privacy == {s.name: (0.1, cfg.privacy.delta) for s in cfg.sites}
    ledger = PrivacyLedger(cfg.privacy.ledger)
    assert all(ledger.spent(s.name) == (0.1, cfg.privacy.delta) for s in cfg.sites)
    warned = [r.getMessage() for r in caplog.records if "too small" in r.getMessage()]
    assert len(warned) == 1 and all(s.name in warned[0] for s in cfg.sites)
    tags = mlflow.MlflowClient(cfg.tracking_uri).get_run(result.run_id).data.tags
    assert set(tags["dp_logistic_too_small"].split(",")) == {s.name for s in cfg.sites}


def test_a_site_trains_on_its_extract_and_evaluates_on_its_held_out_rows(
    ray_session, small_sites: Path, tmp_path: Path
) -> None:
    """A held-out extract replaces the key split; validation judges the two together, so
    a training extract with one label class passes when the site's data has both."""
    src = load_config(small_sites).sites[0]
    table = read_table(src.path)
    held, rest = table.slice(0, 200), table.slice(200)
    train = rest.filter(pc.equal(rest["diabetes_5y"], 1))  # one label class only
    for name, part in (("train", train), ("held", held)):
        (tmp_path / name).mkdir()
        pq.write_table(part, tmp_path / name / "part-0.parquet")
    shutil.copy(identity_path(src.path), identity_path(tmp_path / "train"))
    raw_sites = [
        {**s, "path": str(tmp_path / "train"), "test_path": str(tmp_path / "held")} if i == 0 else s
        for i, s in enumerate(_raw_sites(small_sites))
    ]
    cfg = load_config(make_config(small_sites, tmp_path, sites=raw_sites, training={"rounds": 30}))
    result = run_job(cfg, strategy="logistic", register=False)
    assert result.admitted == [s.name for s in cfg.sites]
    sites = json.loads(
        Path(
            mlflow.MlflowClient(cfg.tracking_uri).download_artifacts(result.run_id, "sites.json")
        ).read_text()
    )
    assert sites[src.name]["n_train"] == train.num_rows
    assert sites[src.name]["n_test"] == 200
    assert result.metrics.n == sum(s["n_test"] for s in sites.values())  # evaluated there


def _raw_sites(config: Path) -> list[dict]:
    import yaml

    raw = yaml.safe_load(config.read_text())
    return [{**s, "path": str((config.parent / s["path"]).resolve())} for s in raw["sites"]]
