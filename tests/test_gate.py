"""The promotion gate alone: numbers in, a decision with every criterion out."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import Metrics
from pipeline.gate import GatePolicy, decide


def _metrics(auc: float, slope: float = 1.0, intercept: float = 0.0) -> Metrics:
    empty = np.zeros(1)
    return Metrics(
        auc=auc,
        log_loss=0.4,
        brier=0.1,
        n=1000,
        prevalence=0.15,
        mean_predicted=0.15,
        roc=(empty, empty),
        calibration=(empty, empty, empty),
        calibration_slope=slope,
        calibration_intercept=intercept,
    )


VALID = {"a": True, "b": True, "c": True}
BUDGET = {"a": (1.0, 10.0), "b": (1.0, 10.0), "c": (2.0, 10.0)}


def _failed(decision) -> set[str]:
    return {c.name for c in decision.failed()}


def test_a_challenger_as_good_as_the_champion_within_the_margin_is_promoted() -> None:
    d = decide(_metrics(0.806), _metrics(0.810), validation=VALID, budget=BUDGET)
    assert d.promote and d.outcome == "promoted" and not d.failed()


def test_a_worse_challenger_is_kept_and_the_auc_criterion_says_by_how_much() -> None:
    d = decide(
        _metrics(0.790), _metrics(0.810), validation=VALID, budget=BUDGET, champion_version="3"
    )
    assert not d.promote
    assert _failed(d) == {"auc"}
    auc = d.failed()[0]
    assert "0.7900" in auc.value and "0.8100" in auc.value and "-0.0200" in auc.value
    assert "0.005" in auc.rule
    assert "kept as challenger" in d.summary() and "auc" in d.summary()


@pytest.mark.parametrize(
    ("slope", "intercept", "failed"),
    [
        (0.7, 0.0, {"calibration_slope"}),
        (1.25, 0.0, {"calibration_slope"}),
        (1.0, 0.25, {"calibration_intercept"}),
        (1.0, -0.3, {"calibration_intercept"}),
        (1.19, -0.19, set()),
    ],
)
def test_calibration_must_be_within_its_ranges(slope, intercept, failed) -> None:
    d = decide(_metrics(0.85, slope, intercept), _metrics(0.80), validation=VALID, budget=BUDGET)
    assert _failed(d) == failed
    assert d.promote is (not failed)


def test_the_floor_applies_only_when_there_is_no_champion() -> None:
    low = decide(_metrics(0.69), None, validation=VALID, budget=BUDGET)
    assert _failed(low) == {"auc_floor"}
    high = decide(_metrics(0.71), None, validation=VALID, budget=BUDGET)
    assert high.promote and [c.name for c in high.criteria][0] == "auc_floor"
    # With a champion, a model under the floor but as good as the champion passes.
    weak = decide(_metrics(0.69), _metrics(0.69), validation=VALID, budget=BUDGET)
    assert weak.promote


def test_a_site_that_failed_validation_or_an_overspent_budget_blocks_promotion() -> None:
    bad = decide(_metrics(0.85), _metrics(0.80), validation={**VALID, "b": False}, budget=BUDGET)
    assert _failed(bad) == {"validation"} and "b" in bad.failed()[0].value
    over = decide(
        _metrics(0.85), _metrics(0.80), validation=VALID, budget={**BUDGET, "c": (10.5, 10.0)}
    )
    assert _failed(over) == {"privacy_budget"} and "c (10.5 of 10)" in over.failed()[0].value


def test_a_champion_that_cannot_be_compared_keeps_the_challenger_with_the_reason() -> None:
    d = decide(
        _metrics(0.9),
        None,
        validation=VALID,
        budget=BUDGET,
        champion_version="4",
        champion_problem="trained on contract x v2 with other features",
    )
    assert not d.promote and _failed(d) == {"auc"}
    assert "other features" in d.failed()[0].value


def test_thresholds_come_from_the_policy() -> None:
    strict = GatePolicy(auc_margin=0.0, auc_floor=0.9, slope_range=(0.95, 1.05), intercept_max=0.05)
    d = decide(
        _metrics(0.809, 1.06, 0.06), _metrics(0.810), validation=VALID, budget=BUDGET, policy=strict
    )
    assert _failed(d) == {"auc", "calibration_slope", "calibration_intercept"}
    assert d.to_dict()["decision"] == "kept" and len(d.to_dict()["criteria"]) == 5


PRIVATE_ONLY = GatePolicy(max_epsilon=1.0)


def test_a_privacy_policy_keeps_out_a_better_model_from_a_job_outside_it() -> None:
    better = decide(
        _metrics(0.85),
        _metrics(0.80),
        validation=VALID,
        budget=BUDGET,
        policy=PRIVATE_ONLY,
        champion_version="2",
        privacy=(None, "xgboost"),
    )
    assert not better.promote and _failed(better) == {"privacy_policy"}
    assert "xgboost: not differentially private" in better.failed()[0].value
    assert "at most epsilon 1" in better.failed()[0].rule
    over = decide(
        _metrics(0.85),
        None,
        validation=VALID,
        budget=BUDGET,
        policy=PRIVATE_ONLY,
        privacy=(2.0, "dp-fedavg"),
    )
    assert _failed(over) == {"privacy_policy"} and "above 1" in over.failed()[0].value
    within = decide(
        _metrics(0.80),
        None,
        validation=VALID,
        budget=BUDGET,
        policy=PRIVATE_ONLY,
        privacy=(0.9997, "dp-fedavg"),
    )
    assert within.promote and "privacy_policy" in {c.name for c in within.criteria}


def test_without_a_privacy_policy_the_gate_is_todays() -> None:
    d = decide(
        _metrics(0.85), _metrics(0.80), validation=VALID, budget=BUDGET, privacy=(None, "xgboost")
    )
    assert d.promote and "privacy_policy" not in {c.name for c in d.criteria}


def test_a_champion_outside_the_policy_is_no_yardstick_and_a_strategy_list_binds() -> None:
    d = decide(
        _metrics(0.78),
        _metrics(0.85),
        validation=VALID,
        budget=BUDGET,
        policy=PRIVATE_ONLY,
        champion_version="4",
        privacy=(1.0, "dp-fedavg"),
        champion_outside="not differentially private",
    )
    assert d.promote  # held to the floor, not to a champion the policy excludes
    floor = next(c for c in d.criteria if c.name == "auc_floor")
    assert "champion 4 is outside" in floor.value
    only = GatePolicy(strategies=("dp-fedavg",))
    kept = decide(
        _metrics(0.8),
        None,
        validation=VALID,
        budget=BUDGET,
        policy=only,
        privacy=(1.0, "dp-logistic"),
    )
    assert (
        _failed(kept) == {"privacy_policy"}
        and "dp-logistic: strategy not one of dp-fedavg" in kept.failed()[0].value
    )
