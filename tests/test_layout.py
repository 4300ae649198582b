"""The package's shape, enforced: one registry names the strategies and nothing else
compares their names, modules stay small, and the layers contract catches an import that
runs the wrong way."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from support import ROOT

from pipeline import strategies

PACKAGE = ROOT / "pipeline"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_outside_the_strategies_names_a_strategy() -> None:
    names = set(strategies.names())
    found = []
    for path in _modules():
        if (PACKAGE / "strategies") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_every_strategy_package_has_the_same_parts() -> None:
    for name in strategies.names():
        package = PACKAGE / "strategies" / name.replace("-", "_")
        parts = {p.name for p in package.glob("*.py")}
        assert {"__init__.py", "coordinator.py", "site.py"} <= parts, (name, parts)
        strategy = strategies.get(name)
        assert strategy.name == name and strategy.summary and strategy.privacy.mechanism
        private = type(strategy).plan is not strategies.base.Strategy.plan
        assert private == ("plan.py" in parts), name
        handler = strategy.site_handler()
        assert handler.requests and all(callable(getattr(handler, r)) for r in handler.requests)


def test_no_module_is_longer_than_400_lines_unless_it_says_why() -> None:
    long = []
    for path in _modules():
        text = path.read_text()
        if (
            text.count("\n") > MAX_LINES
            and "one piece" not in (ast.get_docstring(ast.parse(text)) or "").lower()
        ):
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, long


def test_the_layers_contract_refuses_an_import_that_runs_upwards(tmp_path: Path) -> None:
    """A copy of the package where the models import the server: lint-imports fails and
    names the import; the package as it is passes."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)}

    clean = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout[-2000:]

    answer = tmp_path / "pipeline" / "models" / "answer.py"
    answer.write_text(answer.read_text() + "\nfrom pipeline.serving import guard  # noqa\n")
    broken = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "pipeline.models.answer -> pipeline.serving.guard" in broken.stdout
