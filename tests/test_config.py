"""Federation config: defaults, path resolution, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DEFAULT_CONTRACT, load_config
from pipeline.errors import ConfigError


def test_a_list_of_sites_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text(
        "sites:\n  - {name: a, path: data/a}\n  - {name: b, path: data/b}\n"
        "  - {name: c, path: /abs/c}\n"
    )
    cfg = load_config(path)
    assert cfg.contract == DEFAULT_CONTRACT
    assert cfg.sites[0].path == tmp_path / "data" / "a"
    assert cfg.sites[2].path == Path("/abs/c")
    assert cfg.quorum == 2
    assert cfg.privacy.delta == 1e-5
    assert cfg.privacy.ledger == tmp_path / "privacy_ledger.sqlite"
    assert cfg.mlflow.model_name == "diabetes-risk"
    assert cfg.tracking_uri.startswith("sqlite:///")


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("sites:\n  - {name: a, path: x}\nprivacy: {delta: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "fed.yaml" in str(err.value) and "privacy.delta" in str(err.value)


def test_duplicate_sites_and_impossible_quorum_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("sites:\n  - {name: a, path: x}\n  - {name: a, path: y}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(path)
    path.write_text("min_sites: 3\nsites:\n  - {name: a, path: x}\n")
    with pytest.raises(ConfigError, match="min_sites"):
        load_config(path)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("sites:\n  - {name: a, path: x, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(path)


def test_the_tracking_uri_is_the_config_then_the_environment_then_mlruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text("sites:\n  - {name: a, path: a}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert load_config(path).tracking_uri.endswith("/mlruns/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert load_config(path).tracking_uri == "http://tracking.example:5000"
    path.write_text("sites:\n  - {name: a, path: a}\nmlflow: {tracking_uri: sqlite:///x.db}\n")
    assert load_config(path).tracking_uri == "sqlite:///x.db"
