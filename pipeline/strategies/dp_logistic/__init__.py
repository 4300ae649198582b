"""``dp-logistic``: one differentially private fit per site (objective perturbation with
Gaussian noise), averaged by the coordinator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.strategies.base import PrivacyTerms, PrivacyText, SiteHandler, Strategy, TrainingJob

if TYPE_CHECKING:
    from pipeline.contract import Contract
    from pipeline.models.base import Model
    from pipeline.strategies.dp_logistic.plan import DPLogisticPlan


class DPLogistic(Strategy["DPLogisticPlan"]):
    name = "dp-logistic"
    summary = "one differentially private fit per site, averaged (objective perturbation)"
    encoding = "linear"
    privacy = PrivacyText(
        mechanism="objective perturbation with Gaussian noise (Kifer et al. 2012; privacy "
        "profile of Redberg et al. 2023; diffprivlib's analytic Gaussian and Laplace "
        "mechanisms), (epsilon, delta)-DP, one release per site",
        aggregator_sees="each site's differentially private model parameters",
        secure_aggregation=False,
    )

    def plan(
        self, terms: PrivacyTerms, counts: Mapping[str, int], contract: Contract
    ) -> DPLogisticPlan:
        from pipeline.strategies.dp_logistic.plan import plan_dp_logistic

        return plan_dp_logistic(
            epsilon=terms.epsilon, delta=terms.delta, counts=counts, contract=contract
        )

    def train(self, job: TrainingJob, plan: DPLogisticPlan) -> Model:
        from pipeline.strategies.dp_logistic.coordinator import train

        return train(job, plan)

    def site_handler(self) -> type[SiteHandler]:
        from pipeline.strategies.dp_logistic.site import DPLogisticSite

        return DPLogisticSite


STRATEGY = DPLogistic()
