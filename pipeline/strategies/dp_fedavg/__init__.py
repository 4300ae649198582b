"""``dp-fedavg``: differentially private federated logistic regression (DP-FedAvg,
McMahan et al. 2018): the planner's clipped, noised gradient sums over the sites, composed
with the Renyi-DP accountant, optionally with each site adding only a share of the noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.strategies.base import (
    PrivacyTerms,
    PrivacyText,
    SharePolicy,
    SiteHandler,
    Strategy,
    TrainingJob,
)

if TYPE_CHECKING:
    from pipeline.contract import Contract
    from pipeline.models.base import Model
    from pipeline.strategies.dp_fedavg.plan import DPFedAvgPlan


class DPFedAvg(Strategy["DPFedAvgPlan"]):
    name = "dp-fedavg"
    summary = "differentially private gradient rounds, summed over the sites (DP-FedAvg)"
    encoding = "linear"
    privacy = PrivacyText(
        mechanism="Gaussian mechanism on per-patient clipped gradient sums (DP-FedAvg, "
        "McMahan et al. 2018), composed with the Renyi-DP accountant",
        aggregator_sees="only the sum over sites of each round's noisy gradient "
        "(secure aggregation)",
        secure_aggregation=True,
    )
    in_demo = True

    def plan(
        self, terms: PrivacyTerms, counts: Mapping[str, int], contract: Contract
    ) -> DPFedAvgPlan:
        from pipeline.strategies.dp_fedavg.plan import plan_dp_fedavg

        return plan_dp_fedavg(
            epsilon=terms.epsilon,
            delta=terms.delta,
            counts=counts,
            contract=contract,
            max_rounds=terms.max_rounds,
            noise_to_signal=terms.noise_to_signal,
            clip=terms.clip,
            noise_shares=terms.noise_shares,
            collusion_threshold=terms.collusion_threshold,
        )

    def ledger_mechanism(self, plan: DPFedAvgPlan, policy: SharePolicy) -> str:
        return self.name + plan.trust(policy)

    def train(self, job: TrainingJob, plan: DPFedAvgPlan) -> Model:
        from pipeline.strategies.dp_fedavg.coordinator import train

        return train(job, plan)

    def site_handler(self) -> type[SiteHandler]:
        from pipeline.strategies.dp_fedavg.site import DPFedAvgSite

        return DPFedAvgSite


STRATEGY = DPFedAvg()
