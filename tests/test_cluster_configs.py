"""The cluster configs keep one trust domain: token auth on, dashboard on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "ray_cluster"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_config_turns_on_token_auth(path: Path) -> None:
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    assert docs and all(docs)
    assert "RAY_AUTH_MODE" in text and "token" in text


@pytest.mark.parametrize(
    "path", [CONFIGS / "cluster.yaml", CONFIGS / "kuberay" / "raycluster.yaml"], ids=str
)
def test_dashboard_listens_on_loopback_only(path: Path) -> None:
    text = path.read_text()
    assert "dashboard-host=127.0.0.1" in text or 'dashboard-host: "127.0.0.1"' in text
    assert "0.0.0.0" not in text


def test_local_cluster_script_uses_token_auth_and_a_loopback_dashboard_if_any() -> None:
    script = (CONFIGS / "local_cluster.sh").read_text()
    assert "RAY_AUTH_MODE=token" in script
    assert "--include-dashboard=false" in script  # the default: no dashboard at all
    assert "--dashboard-host=127.0.0.1" in script  # for Ray Jobs: loopback only
    assert "--node-ip-address=127.0.0.1" in script
