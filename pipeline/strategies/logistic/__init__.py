"""``logistic``: non-private federated logistic regression, Newton's method on the sites'
gradient and Hessian sums, which reaches the pooled optimum of the same objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.strategies.base import PrivacyText, SiteHandler, Strategy, TrainingJob

if TYPE_CHECKING:
    from pipeline.models.base import Model


class Logistic(Strategy[None]):
    name = "logistic"
    summary = "federated Newton's method to the pooled optimum (not private)"
    encoding = "linear"
    privacy = PrivacyText(
        mechanism="none (not differentially private)",
        aggregator_sees="the sum over sites of each round's gradient (secure aggregation "
        "hides each site's own gradient when it is on)",
        secure_aggregation=True,
    )
    in_demo = True

    def train(self, job: TrainingJob, plan: None) -> Model:
        from pipeline.strategies.logistic.coordinator import train

        return train(job)

    def site_handler(self) -> type[SiteHandler]:
        from pipeline.strategies.logistic.site import LogisticSite

        return LogisticSite


STRATEGY = Logistic()
