"""The training strategies, one package each, found by name here and nowhere else.

To add a strategy, add a package beside these with the same parts
(:mod:`pipeline.strategies.base`) and one line to ``_STRATEGIES`` below: the config's
accepted values, the CLI's choices and help, a site's policy, the model card's privacy
section and the job's dispatch all read this registry.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

from pipeline.errors import ConfigError
from pipeline.strategies import dp_fedavg, dp_logistic, logistic, xgboost
from pipeline.strategies.base import Strategy

_STRATEGIES: tuple[Strategy[Any], ...] = (
    logistic.STRATEGY,
    dp_logistic.STRATEGY,
    dp_fedavg.STRATEGY,
    xgboost.STRATEGY,
)
REGISTRY: dict[str, Strategy[Any]] = {s.name: s for s in _STRATEGIES}
DEFAULT = dp_fedavg.STRATEGY.name  # what a job trains when the config names nothing


def names() -> tuple[str, ...]:
    """Every registered strategy's name, in the registry's order."""
    return tuple(REGISTRY)


def demo_names() -> tuple[str, ...]:
    """The strategies ``pipeline demo`` trains, in the registry's order."""
    return tuple(s.name for s in _STRATEGIES if s.in_demo)


def get(name: str) -> Strategy[Any]:
    """The strategy called `name`; a :class:`ConfigError` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}: one of {', '.join(names())}") from None


def help_text() -> str:
    """The strategies as the CLI lists them."""
    return " | ".join(names())


def model_requirements() -> tuple[str, ...]:
    """Distributions any registered version may need to be served, beyond the served
    model's own (a version of any strategy is served by the same pyfunc)."""
    return tuple(sorted({r for s in _STRATEGIES for r in s.requirements}))


def _known(name: str) -> str:
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}: one of {', '.join(names())}")
    return name


StrategyName = Annotated[str, AfterValidator(_known)]
"""A config field holding a registered strategy's name (checked when the config loads)."""
