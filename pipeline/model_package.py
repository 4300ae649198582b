"""What a registered version carries so that it stands on its own: the modules of this
package that loading and predicting import (walked from the model file through every
import, lazy ones included, type-checking ones not), bundled in their package layout for
``code_paths``; the short model file MLflow loads it from (models-from-code: nothing is
pickled); and its requirements, pinned to the installed versions of every distribution
that code imports, plus what any strategy's model needs."""

from __future__ import annotations

import ast
import contextlib
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def sys_path_kept() -> Iterator[None]:
    """Restore ``sys.path`` after the block: MLflow checks a new version by loading it,
    which puts the version's bundled code (in a directory deleted afterwards) in front of
    this process's path."""
    before = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = before


# The file MLflow loads a version from (models-from-code): the class comes from the bundled
# package, so nothing is pickled and MLflow's server and ``pipeline serve`` build the same
# object.
MODEL_CODE_FILE = "risk_model_code.py"
MODEL_CODE = """\
import mlflow.models

from pipeline.models.risk_model import RiskModel

mlflow.models.set_model(RiskModel())
"""
_PACKAGE_DIR = Path(__file__).resolve().parent


def _source(module: str) -> Path | None:
    """The file of a module of this package, or None (another package, or a name imported
    from a module rather than a module)."""
    head, _, rest = module.partition(".")
    if head != _PACKAGE_DIR.name:
        return None
    base = _PACKAGE_DIR.joinpath(*rest.split(".")) if rest else _PACKAGE_DIR
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    file = base.parent / f"{base.name}.py"
    return file if rest and file.is_file() else None


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` guards imports for type checkers only (never run)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(source: str, package: str) -> set[str]:
    """The absolute names a module's source imports, wherever the import statement is (a
    function imports lazily what a model kind needs, e.g. XGBoost); imports for type
    checkers only are left out. ``from a import b`` gives ``a`` and ``a.b``, which may be
    a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def model_code() -> tuple[list[Path], set[str]]:
    """What a version needs to load and predict: the files of this package that
    :data:`MODEL_CODE` imports, directly or not, with the packages holding them; and the
    top-level names of every other module they import."""
    todo, files, outside = sorted(_imports(MODEL_CODE, "")), {}, set()
    while todo:
        name = todo.pop()
        head = name.partition(".")[0]
        if name in files or head in outside:
            continue
        path = _source(name)
        if path is None:
            if head != _PACKAGE_DIR.name:
                outside.add(head)
            continue
        files[name] = path
        parents = name.split(".")
        todo += [".".join(parents[:i]) for i in range(1, len(parents))]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += sorted(_imports(path.read_text(), package))
    return sorted(files.values()), outside - set(sys.stdlib_module_names)


def bundle(sources: list[Path], dest: Path) -> Path:
    """`sources` copied under `dest` in their package layout; returns the package
    directory, what ``code_paths`` takes (MLflow puts its parent on the path)."""
    for path in sources:
        target = dest / path.relative_to(_PACKAGE_DIR.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest / _PACKAGE_DIR.name


def _distribution(module: str, provided: Mapping[str, list[str]]) -> str:
    """The installed distribution that provides a top-level module (``yaml`` -> PyYAML);
    of several (``mlflow``: mlflow, mlflow-skinny, mlflow-tracing), the one named like it.
    `provided` is :func:`importlib.metadata.packages_distributions`."""
    names = provided.get(module, [])
    if not names:
        raise PipelineError(f"the served model imports {module!r}, which is not installed")
    same = [n for n in names if n.lower().replace("_", "-") == module.lower()]
    return (same or sorted(names))[0]


def requirements(imported: set[str]) -> list[str]:
    """The served model's requirements, pinned to the installed versions: the
    distribution of every module its code imports, and what any strategy's model needs
    (every version is served by the same pyfunc)."""
    from importlib.metadata import packages_distributions, version

    from pipeline.strategies import model_requirements

    provided = packages_distributions()
    names = {_distribution(m, provided) for m in imported} | set(model_requirements())
    return [f"{n}=={version(n)}" for n in sorted(names, key=str.lower)]
