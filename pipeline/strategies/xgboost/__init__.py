"""``xgboost``: federated gradient-boosted trees, every site a worker of one XGBoost
collective on the contract's bin grid, which trains the model pooling would have trained
(:mod:`pipeline.models.trees`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pipeline.strategies.base import PrivacyText, SiteHandler, Strategy, TrainingJob

if TYPE_CHECKING:
    from pipeline.models.base import Model


class XGBoost(Strategy[None]):
    name = "xgboost"
    summary = "federated gradient-boosted trees, the sites as one XGBoost collective"
    encoding = "tree"
    privacy = PrivacyText(
        mechanism="none (not differentially private)",
        aggregator_sees="every site's gradient and hessian histograms per tree node, in "
        "plaintext, at the collective's aggregator; bin edges come from the contract, "
        "never from a site",
        secure_aggregation=False,
        mode_param="xgboost_communicator",
        by_mode={
            "secure": "the sums over all sites of the gradient and hessian histograms per "
            "tree node, each site's masked by its own relay (no one site's histogram, in "
            "the clear or decodable); integer MAX/MIN checks and the column sampler's seed "
            "in the clear; bin edges come from the contract, never from a site",
        },
    )
    requirements = ("xgboost",)
    in_demo = True

    def train(self, job: TrainingJob, plan: None) -> Model:
        from pipeline.strategies.xgboost.coordinator import train

        return train(job)

    def site_handler(self) -> type[SiteHandler]:
        from pipeline.strategies.xgboost.site import XGBoostSite

        return XGBoostSite

    @contextlib.contextmanager
    def ahead(self) -> Iterator[Callable[[], None]]:
        """The coordinator's own XGBoost (1.2 s to import; it reads the agreed booster),
        imported while the sites validate."""
        warm = threading.Thread(target=_import_trees, daemon=True)
        warm.start()
        try:
            yield warm.join
        finally:
            warm.join()


def _import_trees() -> None:
    """Import ahead of need; a failure shows where the module is used, not here."""
    with contextlib.suppress(Exception):
        import pipeline.models.trees  # noqa: F401


STRATEGY = XGBoost()
