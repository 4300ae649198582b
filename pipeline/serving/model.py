"""Where versions registered before the risk model moved to :mod:`pipeline.models` find
it: their pickle names this module. It is the same class, so they load unchanged."""

from pipeline.models.risk_model import RiskModel

__all__ = ["RiskModel"]
