"""Placement on a real multi-node Ray cluster (loopback, token auth): each site's actor
runs on the node that offers its `site:<name>` resource."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ray_cluster" / "local_cluster.sh"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The driver runs without the capabilities that let root ignore file permissions, and the
# site files are mode 000: only the site actors (on the cluster's nodes) can read them.
DRIVER = """
import json, os, sys, ray
from pipeline.config import load_config
from pipeline.job import run_job
from pipeline.stages.sites import runtime_for
cfg = load_config(sys.argv[1])
blocked = []
for site in cfg.sites:
    try:
        os.listdir(site.path)
    except PermissionError:
        blocked.append(site.name)
ray.init(address=sys.argv[2])
with runtime_for(cfg.sites, cfg.contract, "placement") as rt:
    nodes = rt.call("node_id", raw=True)
resources = {n["NodeID"]: sorted(k for k in n["Resources"] if k.startswith("site:"))
             for n in ray.nodes() if n["Alive"]}
result = run_job(cfg, strategy="logistic", rounds=15)
trees = run_job(cfg, strategy="xgboost")
print(json.dumps({"nodes": nodes.ok, "failed": nodes.failed, "resources": resources,
                  "blocked": blocked, "auc": result.metrics.auc,
                  "version": result.model_version, "trees_version": trees.model_version,
                  "trees_auc": trees.metrics.auc, "trees_dropped": trees.dropped}))
"""


def _lock(folder: Path) -> None:
    """Mode 000 on the extract: readable only with root's override capability."""
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0)
    folder.chmod(0)


def _unlock(folder: Path) -> None:
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        path.chmod(0o700)


def _short_dir() -> str:
    """Ray's unix sockets live under the temp dir: keep its path short."""
    return tempfile.mkdtemp(prefix="rc-", dir="/tmp")


SITES = ["northgate", "riverside", "st-jude"]  # `synthesize(sites=3)`'s hospitals


@pytest.fixture(scope="module")
def cluster():
    """One head and a node per site, its job server on loopback, shared by this module's
    tests (starting a cluster costs about half a minute here)."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PIPELINE_CLUSTER_DIR": _short_dir(),
        "PIPELINE_CLUSTER_PORT": "6391",
        "PIPELINE_CLUSTER_AGENT_PORT": "26400",
        "PIPELINE_CLUSTER_JOBS_PORT": "8277",
        "RAY": str(bin_dir / "ray"),
    }
    started = subprocess.run(
        [str(SCRIPT), "start", *SITES], env=env, capture_output=True, text=True, timeout=240
    )
    try:
        assert started.returncode == 0, started.stderr
        info = dict(line.split("=", 1) for line in started.stdout.split())
        client = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": info["token_path"]}
        yield {"env": env, "client_env": client, **info}
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def _federation(tmp_path: Path, seed: int, **overrides) -> Path:
    import yaml

    config, _ = synthesize(tmp_path / "data", sites=len(SITES), rows=1500, seed=seed)
    raw = yaml.safe_load(config.read_text())
    assert [s["name"] for s in raw["sites"]] == SITES
    for site in raw["sites"]:
        site["resource"] = f"site:{site['name']}"
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db"}
    raw.update(overrides)
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to run a driver that cannot read site files",
)
def test_sites_run_on_their_nodes_and_the_driver_never_reads_their_files(cluster, tmp_path: Path):
    config = _federation(tmp_path, seed=4)
    folders = [config.parent / name for name in SITES]
    try:
        for folder in folders:
            _lock(folder)
        no_override = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        done = subprocess.run(
            [*no_override, sys.executable, "-c", DRIVER, str(config), cluster["address"]],
            env=cluster["client_env"],
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["blocked"] == SITES  # the driver really cannot read the extracts
        assert not out["failed"]
        for site in SITES:
            assert out["resources"][out["nodes"][site]] == [f"site:{site}"]
        assert len(set(out["nodes"].values())) == len(SITES)
        assert out["version"] == "1" and out["auc"] > 0.6
        # Federated XGBoost across the nodes: every site a rank, none lost.
        assert out["trees_version"] == "2" and out["trees_auc"] > 0.6
        assert out["trees_dropped"] == {}
    finally:
        for folder in folders:
            _unlock(folder)


def test_cluster_refuses_a_client_without_the_token(cluster) -> None:
    bad_env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    bad_env["RAY_AUTH_MODE"] = "token"
    bad_env["RAY_AUTH_TOKEN"] = "0" * 64
    bad_env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # refused either way; give up in 3 s, not 20
    probe = f"import ray; ray.init(address={cluster['address']!r}); print('joined')"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=bad_env, capture_output=True, text=True, timeout=120
    )
    assert "joined" not in done.stdout
    assert done.returncode != 0
    # (The other tests join with the cluster's token: the refusal is the token's doing.)


NODES = """
import json, sys, ray
ray.init(address=sys.argv[1])
print(json.dumps({n["NodeID"]: sorted(k for k in n["Resources"] if k.startswith("site:"))
                  for n in ray.nodes() if n["Alive"]}))
"""


def test_retraining_submitted_as_a_ray_job_runs_each_site_on_its_own_node(cluster, tmp_path: Path):
    """`ray job submit` through the dashboard's job server, on loopback with the token:
    the scheduled retraining trains, and each site's actor ran on the node offering its
    resource (the audit record names the nodes)."""
    config = _federation(tmp_path, seed=6, training={"model": "logistic", "rounds": 10})
    bin_dir = Path(sys.executable).parent
    env, client_env = cluster["env"], cluster["client_env"]
    assert cluster["jobs_address"] == "http://127.0.0.1:8277"
    job = [
        str(bin_dir / "ray"),
        "job",
        "submit",
        "--address",
        cluster["jobs_address"],
        "--submission-id",
        "nightly-retrain",
        "--",
        str(bin_dir / "pipeline"),
        "retrain",
        "--config",
        str(config),
    ]
    # Without the token the job server refuses the submission.
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(job, env=no_token, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    for _ in range(30):  # the head's job agent may still be starting
        done = subprocess.run(job, env=client_env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    status = subprocess.run(
        [
            str(bin_dir / "ray"),
            "job",
            "status",
            "--address",
            cluster["jobs_address"],
            "nightly-retrain",
        ],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "job 'nightly-retrain' succeeded" in status.stdout.lower(), status.stdout
    assert "trained (exit 0)" in done.stdout

    record = json.loads((config.parent / "retrain_audit.jsonl").read_text().splitlines()[-1])
    assert record["status"] == "trained" and record["jobs"][0]["version"] == "1"
    nodes = subprocess.run(
        [sys.executable, "-c", NODES, cluster["address"]],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    resources = json.loads(nodes.stdout.strip().splitlines()[-1])
    for site in SITES:
        assert resources[record["sites"][site]["node"]] == [f"site:{site}"]
