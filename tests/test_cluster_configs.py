"""The cluster configs keep one trust domain (token auth on, dashboard on loopback) and
name the site resources of the federation config they ship with."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
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


# -- the image: the Dockerfile, `make image` and the KubeRay manifests agree -------------

ROOT = CONFIGS.parent
DOCKERFILE = ROOT / "Dockerfile"
RAY_MANIFESTS = [KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"]


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments): comments dropped, continuations joined."""
    found: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        pending.append(text.removesuffix("\\").strip())
        if not text.endswith("\\"):
            keyword, _, args = " ".join(pending).partition(" ")
            found.append((keyword.upper(), args.strip()))
            pending = []
    return found


def _last(keyword: str) -> str:
    return [args for kw, args in _instructions() if kw == keyword][-1]


def _runs() -> str:
    return " && ".join(args for kw, args in _instructions() if kw == "RUN")


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pods(path: Path) -> list[dict]:
    """The pod specs of a manifest's Ray nodes: the head, then each worker group."""
    spec = _cluster_spec(path)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def _images(node: object) -> list[str]:
    """Every `image:` anywhere in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [
            image for v in node.values() for image in _images(v)
        ]
    if isinstance(node, list):
        return [image for v in node for image in _images(v)]
    return []


def _made_image() -> str:
    """The tag `make image` builds, as make itself expands it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE", "VERSION", "DOCKER")}
    done = subprocess.run(
        [make, "-n", "image"], cwd=ROOT, capture_output=True, text=True, env=env, check=True
    )
    (tag,) = re.findall(r"--tag\s+(\S+)", done.stdout)
    return tag


def test_the_manifests_run_the_image_make_builds_tagged_with_the_project_version() -> None:
    image = _made_image()
    assert image == f"federated-diabetes/pipeline:{_pyproject()['project']['version']}"
    for path in RAY_MANIFESTS:
        for pod in _pods(path):
            assert [c["image"] for c in pod["containers"]] == [image], path.name


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_image_is_pinned_to_a_version_never_latest(path: Path) -> None:
    images = _images(_docs(path))
    assert images, path.name
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no tag means latest"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image}: not a version tag"


def test_the_image_is_rays_own_for_the_pinned_ray_and_python() -> None:
    ray = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert ray, "constraints.txt pins ray"
    python = _pyproject()["tool"]["ruff"]["target-version"]  # py311
    assert _last("FROM") == f"rayproject/ray:{ray.group(1)}-{python}-cpu"
    for path in RAY_MANIFESTS:
        assert str(_cluster_spec(path)["rayVersion"]) == ray.group(1), path.name


def test_the_image_installs_the_project_under_its_constraints() -> None:
    assert re.search(r"pip install -c constraints\.txt (-e )?\.(\s|$)", _runs())
    copied = [
        source
        for kw, args in _instructions()
        if kw == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    needed = {"pyproject.toml", "constraints.txt", "README.md", "pipeline", "schemas"}
    assert needed <= set(copied)  # schemas: the default contract, read beside the package
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = ignore[ignore.index("*") :]  # the context: nothing, then each source back in
    for source in copied:
        assert f"!{source}" in kept or f"!{source}/" in kept, source


def test_the_image_and_every_ray_pod_run_as_the_same_non_root_user() -> None:
    uid, _, gid = _last("USER").partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()  # numeric: runAsNonRoot checks
    for path in RAY_MANIFESTS:
        for pod in _pods(path):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, path.name
            assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
            assert context["fsGroup"] == int(gid)  # the state volume is the user's


def test_the_image_has_the_paths_the_manifests_mount_and_the_user_writes() -> None:
    runs = _runs()
    made = {p for m in re.findall(r"mkdir -p ([^&;]+)", runs) for p in m.split()}
    owner = _last("USER")
    owned = {p for m in re.findall(rf"chown {owner} ([^&;]+)", runs) for p in m.split()}
    workdir = _last("WORKDIR")
    assert workdir in made and workdir in owned
    for path in RAY_MANIFESTS:
        for pod in _pods(path):
            (container,) = pod["containers"]
            assert container.get("workingDir", workdir) == workdir
            for mount in container["volumeMounts"]:
                where = Path(mount["mountPath"])
                assert str(where) in made or str(where.parent) in made, where
                if not mount.get("readOnly"):
                    assert str(where) in owned, where  # the state volume
                elif where.parent != Path("/"):
                    # an extract: the site writes its audit log and identity key beside it
                    assert str(where.parent) in owned, where
    head = _pods(KUBERAY / "rayjob.yaml")[0]["containers"][0]
    mounts = {m["mountPath"] for m in head["volumeMounts"]}
    cfg = load_config(CONFIGS / "federation.yaml")
    assert "/config" in mounts and "/state" in mounts
    assert Path("/state") in Path(cfg.privacy.ledger).parents  # the ledger is kept


def test_the_image_runs_what_the_manifests_start() -> None:
    """KubeRay gives every Ray container its own command (`ray start ...`), so the image
    has no entrypoint and the manifests set none; the RayJob runs `pipeline`, the
    project's console script, and the image's default command is that script too."""
    assert _last("ENTRYPOINT") == "[]"
    cmd = json.loads(_last("CMD"))
    assert _pyproject()["project"]["scripts"][cmd[0]] == "pipeline.cli:app"
    for path in RAY_MANIFESTS:
        for pod in _pods(path):
            (container,) = pod["containers"]
            assert "command" not in container and "args" not in container, path.name
    entrypoint = _docs(KUBERAY / "rayjob.yaml")[0]["spec"]["entrypoint"]
    assert shlex.split(entrypoint)[:2] == ["sh", "-c"]
    assert shlex.split(shlex.split(entrypoint)[2])[:2] == [cmd[0], "retrain"]
