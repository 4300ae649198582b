"""The cluster configs keep one trust domain (token auth on, dashboard on loopback) and
name the site resources of the federation config they ship with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "ray_cluster"
KUBERAY = CONFIGS / "kuberay"
RAY_NODES = [CONFIGS / "cluster.yaml", KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"]


def _docs(path: Path) -> list[dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs), path
    return docs


def _cluster_spec(path: Path) -> dict:
    doc = _docs(path)[0]
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(path: Path) -> None:
    _docs(path)


@pytest.mark.parametrize("path", RAY_NODES, ids=lambda p: p.name)
def test_every_ray_node_turns_on_token_auth(path: Path) -> None:
    text = path.read_text()
    assert "RAY_AUTH_MODE" in text and "token" in text


@pytest.mark.parametrize("path", RAY_NODES, ids=lambda p: p.name)
def test_dashboard_listens_on_loopback_only(path: Path) -> None:
    text = path.read_text()
    if path.parent == KUBERAY:
        assert _cluster_spec(path)["headGroupSpec"]["rayStartParams"]["dashboard-host"] == (
            "127.0.0.1"
        )
    else:
        assert "dashboard-host=127.0.0.1" in text
    assert "0.0.0.0" not in text


@pytest.mark.parametrize("path", [KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"], ids=str)
def test_worker_groups_offer_the_shipped_config_sites(path: Path) -> None:
    cfg = load_config(CONFIGS / "federation.yaml")
    groups = _cluster_spec(path)["workerGroupSpecs"]
    offered = {}
    for group in groups:
        resources = yaml.safe_load(
            yaml.safe_load(f"x: {group['rayStartParams']['resources']}")["x"]
        )
        (resource,) = resources
        mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
        offered[resource] = {m["mountPath"] for m in mounts}
    assert set(offered) == {s.resource for s in cfg.sites}
    for site in cfg.sites:
        assert str(site.path) in offered[site.resource], site.name  # its extract is there


def test_the_scheduled_job_retrains_the_shipped_config() -> None:
    job = _docs(KUBERAY / "rayjob.yaml")[0]
    assert job["spec"]["submissionMode"] == "SidecarMode"  # reaches the loopback dashboard
    assert "pipeline retrain --config /config/federation.yaml" in job["spec"]["entrypoint"]
    cron = _docs(KUBERAY / "cronjob.yaml")
    assert cron[0]["kind"] == "CronJob" and cron[0]["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kubectl", "create", "-f", "/manifests/rayjob.yaml"]
    line = next(
        x for x in (CONFIGS / "crontab").read_text().splitlines() if x and not x.startswith("#")
    )
    assert line.split()[:5] == ["0", "3", "*", "*", "*"] and "pipeline retrain --config" in line


def test_local_cluster_script_uses_token_auth_and_a_loopback_dashboard_if_any() -> None:
    script = (CONFIGS / "local_cluster.sh").read_text()
    assert "RAY_AUTH_MODE=token" in script
    assert "--include-dashboard=false" in script  # the default: no dashboard at all
    assert "--dashboard-host=127.0.0.1" in script  # for Ray Jobs: loopback only
    assert "--node-ip-address=127.0.0.1" in script
