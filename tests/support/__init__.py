"""What several test files share: data and configs they make themselves
(:mod:`support.federation`), the corruption corpus (:mod:`support.corruptions`) and a
registered model with a live ``pipeline serve`` (:mod:`support.serving`). Fixtures stay
in ``conftest.py``; helpers are imported from here, never from ``conftest``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
