"""The promotion gate: does a challenger replace the champion? Numbers in, decision out.

Pure: it reads one shared evaluation (the challenger and the champion scored on the same
held-out rows in the same job) and the job's facts, and returns a :class:`Decision` with
every criterion and its numbers. It moves no alias and logs nothing;
:func:`pipeline.stages.promotion.apply_decision` applies it.

The criteria, after the practice of clinical prediction-model updating (Steyerberg,
"Clinical Prediction Models", 2nd ed., ch. 20; Vergouwe et al., Stat Med 2017): a new
model must discriminate no worse than the one in use (within a small margin, so a
private or simpler model that is as good is not refused for noise), be calibrated (slope
near 1, calibration-in-the-large near 0), come only from validated data and a job that
stayed within every site's privacy budget, and reach an absolute floor when nothing is in
use yet.

A consortium whose hospitals require differential privacy says so in the policy
(``max_epsilon``, optionally ``strategies``): a model from a job outside it never becomes
champion, however well it ranks, and a champion outside it is no yardstick, so a
challenger is then held to the floor instead of to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pipeline.evaluation import Metrics


@dataclass(frozen=True)
class GatePolicy:
    """The gate's thresholds (``gate:`` in the federation config).

    Parameters
    ----------
    auc_margin : float
        How much lower than the champion's AUC the challenger's may be.
    auc_floor : float
        The AUC a first champion must reach.
    slope_range : (float, float)
        Accepted calibration slopes.
    intercept_max : float
        Largest accepted |calibration-in-the-large| (log-odds).
    max_epsilon : float or None
        The consortium's privacy policy: only a job that charged every site at most this
        epsilon (a differentially private one) yields a champion. None: no such policy.
    strategies : tuple of str
        The strategies a champion may come from (empty: any).
    """

    auc_margin: float = 0.005
    auc_floor: float = 0.70
    slope_range: tuple[float, float] = (0.8, 1.2)
    intercept_max: float = 0.2
    max_epsilon: float | None = None
    strategies: tuple[str, ...] = ()

    def outside(self, epsilon: float | None, strategy: str) -> str | None:
        """Why a job of `strategy` charging `epsilon` per site (None: not differentially
        private) is outside the consortium's policy, or None."""
        if self.strategies and strategy not in self.strategies:
            return f"strategy not one of {', '.join(self.strategies)}"
        if self.max_epsilon is None:
            return None
        if epsilon is None:
            return "not differentially private"
        if epsilon > self.max_epsilon + 1e-12:
            return f"epsilon {epsilon:g} per site is above {self.max_epsilon:g}"
        return None

    @property
    def has_privacy_policy(self) -> bool:
        return self.max_epsilon is not None or bool(self.strategies)


@dataclass(frozen=True)
class Criterion:
    """One test of the gate: its name, whether it passed, the measured value and the rule."""

    name: str
    passed: bool
    value: str
    rule: str

    def describe(self) -> str:
        return f"{self.name}: {'pass' if self.passed else 'FAIL'} ({self.value}; rule: {self.rule})"


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and why."""

    promote: bool
    criteria: tuple[Criterion, ...]
    champion_version: str | None = None

    @property
    def outcome(self) -> str:
        return "promoted" if self.promote else "kept"

    def refused(self, criterion: Criterion) -> Decision:
        """The same decision kept, with one more failed criterion (found after the gate,
        when its outcome was applied)."""
        return Decision(False, (*self.criteria, criterion), self.champion_version)

    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def summary(self) -> str:
        """One line: the outcome and, when kept, the criteria that failed."""
        if self.promote:
            against = f"champion {self.champion_version}" if self.champion_version else "the floor"
            return f"promoted to champion (passed every criterion against {against})"
        failed = "; ".join(c.describe() for c in self.failed())
        return f"kept as challenger: {failed}"

    def to_dict(self) -> dict:
        return {
            "decision": self.outcome,
            "champion_version": self.champion_version,
            "criteria": [asdict(c) for c in self.criteria],
        }


def decide(
    challenger: Metrics,
    champion: Metrics | None,
    *,
    validation: Mapping[str, bool],
    budget: Mapping[str, tuple[float, float]],
    policy: GatePolicy = GatePolicy(),
    champion_version: str | None = None,
    champion_problem: str | None = None,
    privacy: tuple[float | None, str] | None = None,
    champion_outside: str | None = None,
) -> Decision:
    """Apply the gate.

    Parameters
    ----------
    challenger, champion : Metrics
        Both models on the same held-out rows; ``champion`` is None when there is none
        (or it could not be evaluated: then ``champion_problem`` says why, and the
        challenger is kept, since nothing shows it is not worse).
    validation : mapping site -> passed
        Validation outcome of every site whose rows trained or evaluated the challenger.
    budget : mapping site -> (epsilon spent, epsilon budget)
        Each taking-part site's ledger after the job.
    privacy : (epsilon per site or None, strategy)
        The job's charge (None: not differentially private) and strategy, for the
        consortium's privacy policy (``policy.max_epsilon``, ``policy.strategies``).
    champion_outside : str, optional
        Why the champion is outside that policy: the challenger is then held to the
        floor, not compared with it.
    """
    criteria: list[Criterion] = []
    if champion_outside is not None:
        criteria.append(
            Criterion(
                "auc_floor",
                challenger.auc >= policy.auc_floor,
                f"{challenger.auc:.4f}; champion {champion_version} is outside the "
                f"consortium's privacy policy ({champion_outside})",
                f"at least {policy.auc_floor:g} when no champion meets the privacy policy",
            )
        )
    elif champion is not None:
        diff = challenger.auc - champion.auc
        criteria.append(
            Criterion(
                "auc",
                diff >= -policy.auc_margin,
                f"challenger {challenger.auc:.4f} vs champion {champion.auc:.4f} ({diff:+.4f})",
                f"not worse than the champion by more than {policy.auc_margin:g}",
            )
        )
    elif champion_problem is not None:
        criteria.append(
            Criterion(
                "auc",
                False,
                f"challenger {challenger.auc:.4f}; champion {champion_version} not "
                f"comparable: {champion_problem}",
                "compared with the champion on the same rows",
            )
        )
    else:
        criteria.append(
            Criterion(
                "auc_floor",
                challenger.auc >= policy.auc_floor,
                f"{challenger.auc:.4f}",
                f"at least {policy.auc_floor:g} when there is no champion",
            )
        )
    lo, hi = policy.slope_range
    slope = challenger.calibration_slope
    criteria.append(
        Criterion(
            "calibration_slope",
            lo <= slope <= hi,
            f"{slope:.3f}",
            f"within [{lo:g}, {hi:g}]",
        )
    )
    citl = challenger.calibration_intercept
    criteria.append(
        Criterion(
            "calibration_intercept",
            abs(citl) <= policy.intercept_max,
            f"{citl:+.3f}",
            f"within ±{policy.intercept_max:g}",
        )
    )
    failed_sites = sorted(s for s, ok in validation.items() if not ok)
    criteria.append(
        Criterion(
            "validation",
            bool(validation) and not failed_sites,
            f"{len(validation) - len(failed_sites)} of {len(validation)} sites passed"
            + (f"; failed: {', '.join(failed_sites)}" if failed_sites else ""),
            "every site that trained or evaluated the model passed validation",
        )
    )
    over = sorted(s for s, (spent, limit) in budget.items() if spent > limit + 1e-12)
    criteria.append(
        Criterion(
            "privacy_budget",
            not over,
            "every site within its budget"
            if not over
            else "over budget: "
            + ", ".join(f"{s} ({budget[s][0]:g} of {budget[s][1]:g})" for s in over),
            "the job stayed within every site's epsilon budget",
        )
    )
    if policy.has_privacy_policy:
        epsilon, strategy = privacy if privacy is not None else (None, "the job")
        why = policy.outside(epsilon, strategy)
        within = "not differentially private" if epsilon is None else f"epsilon {epsilon:g}"
        value = f"{strategy}: {why}" if why else f"{strategy}, {within}"
        rule = (
            f"a differentially private job of at most epsilon {policy.max_epsilon:g} per site"
            if policy.max_epsilon is not None
            else "a job of an allowed strategy"
        )
        if policy.strategies:
            rule += f", strategy one of {', '.join(policy.strategies)}"
        criteria.append(
            Criterion(
                "privacy_policy",
                why is None,
                value,
                rule + " (the consortium's policy)",
            )
        )
    return Decision(
        promote=all(c.passed for c in criteria),
        criteria=tuple(criteria),
        champion_version=champion_version,
    )
