"""What a site actor sends to the driver carries no row value: sentinels planted where
every kind of expectation sees them never reach the driver (reply, errors or logs)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.extract import read_table
from pipeline.stages.sites import runtime_for
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow

SENTINELS = ("987.654321", "98.7654321", "SENTINEL_CAT_7731", "SENTINEL-KEY-0042")


def _replace(table: pa.Table, name: str, mask: np.ndarray, value: object) -> pa.Table:
    column = table[name].to_numpy(zero_copy_only=False).astype(object)
    column[mask] = value
    idx = table.schema.get_field_index(name)
    return table.set_column(
        idx, table.schema.field(idx), pa.array(column.tolist(), type=table[name].type)
    )


def test_sentinels_never_reach_the_driver(ray_session, tmp_path: Path, capfd) -> None:
    config, _ = synthesize(tmp_path / "data", sites=1, rows=3000, seed=17)
    site = load_config(config).sites[0]
    table = read_table(site.path)
    n = table.num_rows
    table = _replace(table, "bmi", np.arange(n) == 0, 987.654321)  # the column's max
    present = ~table["fasting_glucose"].is_null().to_numpy(zero_copy_only=False)
    table = _replace(table, "fasting_glucose", present, 98.7654321)  # the column's median
    table = _replace(table, "sex", np.arange(n) % 11 == 0, "SENTINEL_CAT_7731")
    table = _replace(table, "patient_key", np.arange(n) < 2, "SENTINEL-KEY-0042")
    planted = tmp_path / "planted"
    planted.mkdir()
    pq.write_table(table, planted / "part-0.parquet")
    site.path = planted

    with runtime_for([site], load_config(config).contract, "sentinel") as runtime:
        validated = runtime.call("validate", "sentinel", "logistic", drop_failed=False)
        loaded = runtime.call("load", "sentinel", "logistic", 0.2, 0, drop_failed=False)
    time.sleep(2.0)  # let Ray forward the workers' logs
    out, err = capfd.readouterr()

    summary = validated.ok[site.name].summary
    assert not summary["passed"]
    failing = {r["column"] for r in summary["results"] if not r["success"]}
    assert {"bmi", "sex", "patient_key"} <= failing
    shipped = pickle.dumps((validated.ok, validated.failed, loaded.ok, loaded.failed))
    for sentinel in SENTINELS:
        assert sentinel.encode() not in shipped
        assert sentinel not in out and sentinel not in err
