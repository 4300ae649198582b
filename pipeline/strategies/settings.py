"""The federation config's ``training`` section, as the strategies read it.

The config (:mod:`pipeline.config`) adds which strategy a job trains by default; what
every strategy trains with lives here, below them, so a strategy takes its settings as a
typed object and never the whole config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class XGBoostSettings(_Strict):
    """Federated XGBoost: the sites as workers of one collective."""

    communicator: Literal["auto", "secure", "federated", "rabit"] = Field(
        "auto",
        description="secure: the project's aggregator over mTLS, every site's histograms "
        "masked by its relay (only their sum can be decoded); federated: the same "
        "aggregator, histograms in the clear inside TLS (for comparison); rabit: inside "
        "one trusted cluster only; auto: secure when XGBoost has the federated client, "
        "else rabit",
    )
    rounds: int = Field(200, ge=1, description="most boosting rounds")
    max_depth: int = Field(4, ge=1)
    learning_rate: float = Field(0.1, gt=0, le=1)
    early_stopping_rounds: int = Field(20, ge=1)
    timeout_s: float = Field(600.0, gt=0, description="watchdog deadline of one collective")
    call_deadline_s: float = Field(
        120.0,
        gt=0,
        description="how long the aggregator waits for the last rank of one collective "
        "call before it fails the collective (a lost site fails the others this soon)",
    )
    max_bin: int = Field(256, ge=2, description="bins per numeric feature, over its range")
    threads: int | None = Field(
        None,
        ge=1,
        description="threads of each site's worker; default: every core the site's "
        "process may use (a hospital's own node)",
    )
    server_host: str | None = Field(
        None,
        description="address the sites dial for the collective's server; default: "
        "127.0.0.1 on one node, the coordinator node's Ray address on a cluster",
    )


class TrainingSettings(_Strict):
    rounds: int = Field(
        60,
        ge=1,
        description="most rounds: Newton rounds of the non-private logistic regression "
        "(it stops when converged), the cap of the DP-FedAvg planner",
    )
    l2: float = Field(
        1e-5,
        ge=0,
        description="ridge penalty of the non-private logistic regression (on the mean "
        "log-loss, intercept unpenalised); the pooled baseline uses the same",
    )
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    secure_aggregation: bool = True
    round_timeout_s: float = Field(120.0, gt=0)
    xgboost: XGBoostSettings = Field(default_factory=XGBoostSettings)
