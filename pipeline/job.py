"""One federated job, end to end: validate at the sites, admit, plan and record privacy,
train, evaluate from sufficient statistics, track in MLflow and register.

The stages are calls into their own modules; this file only sequences them and decides
what a failure means (drop a site, or fail the job with the run marked FAILED).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import FederationConfig
from pipeline.context import JobContext, Progress, RoundProgress, StageClock
from pipeline.contract import Contract, load_contract
from pipeline.errors import BudgetError
from pipeline.evaluation import (
    Evaluation,
    Metrics,
    Suppressed,
    plot_calibration,
    plot_roc,
    plot_sites,
    plot_subgroups,
    pyplot,
)
from pipeline.federation.runtime import SiteRuntime
from pipeline.validation import ValidationSummary, admit

if TYPE_CHECKING:
    from pipeline.gate import Decision

LOGISTIC_STRATEGIES = ("logistic", "dp-logistic", "dp-fedavg")
AfterLoad = Callable[[JobContext, dict[str, Any]], None]


@dataclass(frozen=True)
class JobResult:
    """What a completed job produced (a failed job raises instead).

    ``evaluation`` is the job's model on the held-out rows; ``champion_evaluation`` the
    champion of the time on the same rows (None without a comparable champion);
    ``per_site`` each site's own AUC (:class:`Suppressed` for a small site)."""

    job_id: str
    strategy: str
    run_id: str
    model_version: str | None
    metrics: Metrics
    per_site: dict[str, float | Suppressed]
    admitted: list[str]
    quarantined: dict[str, list[str]]
    dropped: dict[str, str]
    privacy: dict[str, tuple[float, float]] = field(default_factory=dict)
    model: object = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    evaluation: Evaluation | None = None
    champion_evaluation: Evaluation | None = None
    decision: Decision | None = None
    partitions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # months read


def validate_sites(
    runtime: SiteRuntime,
    cfg: FederationConfig,
    on_site: Callable[[str], None] | None = None,
    *,
    prepare_for: str | None = None,
) -> dict[str, ValidationSummary]:
    """Validation runs inside each site; only redacted summaries come back.
    `on_site(site)` is called as each site finishes, for a progress bar. With
    `prepare_for` (the strategy a job will train), sites that pass keep the validated
    rows split and encoded for the job's ``load``."""
    v = cfg.validation
    t = cfg.training
    prepare = None
    if prepare_for is not None:
        encoding = "tree" if prepare_for == "xgboost" else "linear"
        prepare = {"test_fraction": t.test_fraction, "seed": t.seed, "encoding": encoding}
    replies = runtime.call(
        "validate",
        unknown_columns=v.unknown_columns,
        min_rows=v.min_rows,
        leakage_auc=v.leakage_auc,
        prepare=prepare,
        drop_failed=False,
        on_reply=on_site,
    )
    summaries = {site: ValidationSummary.from_dict(r.summary) for site, r in replies.ok.items()}
    for site, reason in replies.failed.items():
        summaries[site] = ValidationSummary(
            site=site, rows=0, passed=False, results=(), errors=(reason,)
        )
    return summaries


def plan_privacy(
    cfg: FederationConfig,
    strategy: str,
    rounds: int,
    counts: dict[str, int],
    contract: Contract,
) -> tuple[dict[str, Any], float, float]:
    """(per-site (epsilon, delta) planned, noise multiplier, clip) for a strategy.

    From the admitted sites' training row `counts` and the `contract` only, the planner
    (:mod:`pipeline.privacy.planner`) chooses the releases (at most `rounds` rounds), and
    the planned dict holds its plan under "plan"; its epsilon is what the accountant
    charges for exactly those releases.

    The accountant is imported only for a strategy that adds Gaussian noise: importing
    it (and the parts of SciPy it loads) costs 1.5 s of the coordinator's time while
    every site waits."""
    eps, delta = cfg.privacy.epsilon_per_job, cfg.privacy.delta
    if strategy == "dp-fedavg":
        from pipeline.privacy.planner import plan_dp_fedavg

        plan = plan_dp_fedavg(
            epsilon=eps,
            delta=delta,
            counts=counts,
            contract=contract,
            max_rounds=rounds,
            noise_to_signal=cfg.privacy.noise_to_signal,
            clip=cfg.privacy.clip_norm,
            noise_shares=cfg.noise_shares(),
            collusion_threshold=cfg.privacy.collusion_threshold,
        )
        mechanism = {site: strategy for site in counts}
        if plan.noise_shares > 1:
            shared = (
                f" (distributed noise: {plan.noise_shares} shares, "
                f"tolerates {plan.collusion_threshold} colluding sites)"
            )
            for site in counts:
                if cfg.site(site).policy.accepts_shares(plan.collusion_threshold):
                    mechanism[site] += shared
                else:
                    mechanism[site] += " (full noise at this site in a distributed-noise job)"
        return (
            {"epsilon": plan.epsilon, "delta": delta, "plan": plan, "mechanism": mechanism},
            plan.noise_multiplier,
            plan.clip,
        )
    if strategy == "dp-logistic":
        from pipeline.privacy.planner import plan_dp_logistic

        one_shot = plan_dp_logistic(epsilon=eps, delta=delta, counts=counts, contract=contract)
        return (
            {"epsilon": one_shot.epsilon, "delta": one_shot.delta, "plan": one_shot},
            one_shot.noise_multiplier,
            1.0,
        )
    return {}, 0.0, 0.0


def run_job(
    cfg: FederationConfig,
    *,
    strategy: str | None = None,
    rounds: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    on_round: RoundProgress | None = None,
    register: bool = True,
    runtime: SiteRuntime | None = None,
    after_load: AfterLoad | None = None,
) -> JobResult:
    """Run one federated training job. Raises a PipelineError when it cannot complete;
    the MLflow run is then marked FAILED with the reason and nothing is registered.

    With `register`, the model is registered as the challenger and the promotion gate
    decides, from an evaluation of it and the champion on the same held-out rows,
    whether it becomes the champion. `progress(msg)` hears each stage, `on_round(done,
    total)` each training round. Sites read only partitions whose follow-up closed
    before this month.

    A caller that already holds the sites' actors (a scheduled retraining) passes its
    `runtime`, and `after_load(ctx, infos)` runs a stage of its own once the sites have
    loaded their rows (before any privacy is reserved)."""
    from pipeline.promotion import (
        Champion,
        current_champion,
        models_to_evaluate,
        register_and_gate,
    )
    from pipeline.registry import JobTracker

    strategy = strategy or cfg.training.model
    rounds = rounds or cfg.training.rounds
    say = progress or (lambda _msg: None)
    contract = load_contract(cfg.contract)
    job_id = f"{strategy}-{uuid.uuid4().hex[:10]}"
    tracker = JobTracker(cfg.tracking_uri, cfg.mlflow.experiment or cfg.federation, job_id)
    clock = StageClock()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(tracker)
        if runtime is None:
            runtime = stack.enter_context(site_runtime(cfg, job_id, ray_address))
        ready = stack.enter_context(_ahead(strategy))
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="champion-"))
        clock.seconds["start"] = time.perf_counter() - started
        tracker.tags({"job_id": job_id, "strategy": strategy, "federation": cfg.federation})
        tracker.params(
            {
                "strategy": strategy,
                "rounds": rounds,
                "seed": cfg.training.seed,
                "sites": len(cfg.sites),
                "quorum": cfg.quorum,
                "contract": contract.name,
                "secure_aggregation": cfg.training.secure_aggregation,
            }
        )

        with clock.stage("validation"):
            say("validating extracts at the sites")
            summaries = validate_sites(runtime, cfg, prepare_for=strategy)
            tracker.json({s: v.to_dict() for s, v in summaries.items()}, "validation.json")
            admitted, quarantined = admit(list(summaries.values()), cfg.quorum)
            for site, reasons in quarantined.items():
                runtime.drop(site, "quarantined: " + "; ".join(reasons[:3]))
            say(f"admitted {admitted}; quarantined {sorted(quarantined)}")
            ready()

        with clock.stage("load"):
            infos = runtime.call("load", cfg.training.test_fraction, cfg.training.seed)
            runtime.require_quorum(cfg.quorum, "loading extracts")
            tracker.json({s: vars(i) for s, i in infos.ok.items()}, "sites.json")

        ctx = JobContext(runtime, cfg, contract, job_id, tracker, say, on_round)
        if after_load is not None:
            after_load(ctx, infos.ok)

        counts = {s: i.n_train for s, i in infos.ok.items()}
        planned, sigma, clip = plan_privacy(cfg, strategy, rounds, counts, contract)
        spend: dict[str, tuple[float, float]] = {}
        if planned:
            spend = reserve_privacy(cfg, job_id, strategy, runtime, planned)
            tracker.params(
                {
                    "epsilon_per_site": planned["epsilon"],
                    "delta": planned["delta"],
                    "noise_multiplier": sigma,
                    "clip": clip,
                }
            )
            _log_plan(tracker, planned.get("plan"), say)
            say(f"privacy reserved: epsilon {planned['epsilon']:g} per site, sigma {sigma:.2f}")

        with clock.stage("training"):
            model = train(ctx, strategy, infos.ok, rounds=rounds, plan=planned.get("plan"))

        with clock.stage("evaluation"):
            # Without registration there is no decision to make: the model alone.
            champion = current_champion(cfg, contract, Path(workdir)) if register else Champion()
            against = f" and champion {champion.version}" if champion.payload else ""
            say(f"evaluating the model{against} on held-out rows at every site (secure sum)")
            evaluations = evaluate(ctx, models_to_evaluate(model, champion))
            challenger = evaluations["challenger"]
            tracker.tags({"dropped_sites": ",".join(sorted(runtime.dropped)) or "none"})
            tracker.json(runtime.dropped, "dropped_sites.json")
            tracker.json(
                {s: {"epsilon": e, "delta": d} for s, (e, d) in spend.items()},
                "privacy_spend.json",
            )

        version, decision = None, None
        if register:
            with clock.stage("registration"):
                version, decision = register_and_gate(
                    ctx,
                    model,
                    evaluations,
                    champion,
                    summaries,
                    tags=_version_tags(ctx, strategy, planned, challenger, infos.ok),
                )
            say(f"registered {cfg.mlflow.model_name} version {version}: {decision.summary()}")
        tracker.metrics({f"seconds.{stage}": s for stage, s in clock.seconds.items()})
        return JobResult(
            job_id=job_id,
            strategy=strategy,
            run_id=tracker.run_id or "",
            model_version=version,
            metrics=challenger.overall,
            per_site=dict(challenger.sites),
            admitted=admitted,
            quarantined=quarantined,
            dropped=dict(runtime.dropped),
            privacy=spend,
            model=model,
            seconds=dict(clock.seconds),
            evaluation=challenger,
            champion_evaluation=evaluations.get("champion"),
            decision=decision,
            partitions={s: i.partitions for s, i in infos.ok.items()},
        )


def site_runtime(cfg: FederationConfig, job_id: str, ray_address: str | None = None) -> SiteRuntime:
    """The sites' actors for a job, reading only partitions whose follow-up has closed."""
    from pipeline.extract import current_month

    return SiteRuntime(
        cfg.sites,
        str(cfg.contract),
        job_id,
        timeout_s=cfg.training.round_timeout_s,
        ray_address=ray_address or cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
        before_month=current_month(),
    )


def evaluate(ctx: JobContext, models: dict[str, dict]) -> dict[str, Evaluation]:
    """Evaluate `models` (name -> site payload) on the sites' held-out rows through the
    secure sum, and log the metrics, the evaluation and its plots on the run."""
    from pipeline.federation.secure_eval import evaluate_models

    runtime, tracker = ctx.runtime, ctx.tracker
    evaluations = evaluate_models(
        runtime, ctx.contract, models, eval_id=f"{ctx.job_id}:eval", quorum=ctx.cfg.quorum
    )
    runtime.require_quorum(ctx.cfg.quorum, "evaluation")
    for name, ev in evaluations.items():
        prefix = "test_" if name == "challenger" else f"{name}_test_"
        tracker.metrics({k: v for k, v in ev.overall.as_dict(prefix).items() if np.isfinite(v)})
    challenger = evaluations["challenger"]
    for site, auc in challenger.sites.items():
        if not isinstance(auc, Suppressed):
            tracker.metrics({f"site_auc.{site}": auc})
    for group, m in challenger.subgroups.items():
        if not isinstance(m, Suppressed):
            key = group.replace(" ", "_").replace("<", "lt")
            tracker.metrics({f"group_auc.{key}": m.auc})
    tracker.json({n: ev.to_dict() for n, ev in evaluations.items()}, "evaluation.json")
    _log_plots(tracker, evaluations)
    return evaluations


def _version_tags(
    ctx: JobContext, strategy: str, planned: dict, ev: Evaluation, infos: dict[str, Any]
) -> dict[str, str]:
    """What ``pipeline models`` lists for a version without opening its run."""
    months = sorted({m for i in infos.values() for m in i.partitions})
    m = ev.overall
    return {
        "strategy": strategy,
        "job_id": ctx.job_id,
        "epsilon": f"{planned.get('epsilon', 0.0):g}",
        "delta": f"{planned.get('delta', 0.0):g}",
        "sites": ",".join(sorted(ev.sites)),
        "test_auc": f"{m.auc:.4f}",
        "calibration_slope": f"{m.calibration_slope:.3f}",
        "calibration_intercept": f"{m.calibration_intercept:+.3f}",
        "data_window": f"{months[0]}..{months[-1]}" if months else "",
    }


@contextlib.contextmanager
def _ahead(strategy: str) -> Iterator[Callable[[], None]]:
    """Start, while the sites validate, what the coordinator would otherwise do later
    while every site waits; yields `ready`, which waits for it.

    Every job imports Matplotlib for its plots (0.3 s). Trees also need the collective
    server's interpreter (1.5 s to start) and the coordinator's own XGBoost (1.2 s to
    import; it reads the agreed booster). `ready` is called before the coordinator
    imports anything the thread may still be importing."""
    trees = strategy == "xgboost"
    warm = threading.Thread(target=_import_ahead, args=(trees,), daemon=True)
    with contextlib.ExitStack() as stack:
        if trees:
            from pipeline.models.collective import spare_interpreter

            stack.enter_context(spare_interpreter())
        warm.start()
        stack.callback(warm.join)
        yield warm.join


def _import_ahead(trees: bool) -> None:
    """Import ahead of need; a failure shows where the module is used, not here."""
    with contextlib.suppress(Exception):
        pyplot()
        if trees:
            import pipeline.models.tree_model  # noqa: F401
            import pipeline.models.trees  # noqa: F401


def reserve_privacy(
    cfg: FederationConfig,
    job_id: str,
    strategy: str,
    runtime: SiteRuntime,
    planned: dict,
) -> dict[str, tuple[float, float]]:
    """Write the job's planned spend for every taking-part site before any noise exists.

    A site whose budget (or own per-job limit) cannot pay for the job is left out with
    that reason while the quorum holds; otherwise the job is refused with a
    :class:`BudgetError` before any noise is drawn. The ledger checks again in the same
    transaction that writes, so a concurrent spend cannot slip between check and write."""
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    eps = planned["epsilon"]
    short: dict[str, str] = {}
    for site in runtime.active:
        limit = cfg.site(site).policy.max_epsilon_per_job
        left = ledger.remaining(site, cfg.site_budget(site))
        if eps > limit + 1e-12:
            short[site] = (
                f"site {site} allows at most epsilon {limit:g} per job; the job plans {eps:g}"
            )
        elif eps > left + 1e-12:
            short[site] = (
                f"site {site}'s privacy budget is exhausted: {left:g} of "
                f"{cfg.site_budget(site):g} left, the job plans {eps:g}"
            )
    if len(runtime.active) - len(short) < cfg.quorum:
        raise BudgetError(
            f"job {job_id!r} refused before any noise was drawn: only "
            f"{len(runtime.active) - len(short)} site(s) can pay for it, the quorum is "
            f"{cfg.quorum}; " + "; ".join(short.values())
        )
    for site, why in short.items():
        runtime.drop(site, f"left out: {why}")
    sites = runtime.active
    per_site = {s: (eps, planned["delta"]) for s in sites}
    ledger.reserve(
        job_id,
        per_site,
        {s: cfg.site_budget(s) for s in sites},
        mechanism=planned.get("mechanism", strategy),
    )
    return per_site


def _log_plan(tracker: Any, plan: Any, say: Progress) -> None:
    """The privacy plan on the run: its parameters and, as JSON, the whole plan."""
    if plan is None:
        return
    values = plan.as_dict()
    tracker.json(values, "privacy_plan.json")
    tracker.params(
        {f"plan_{k}": v for k, v in values.items() if isinstance(v, int | float) and k != "epsilon"}
    )
    if hasattr(plan, "rounds"):
        say(
            f"privacy plan: {plan.rounds} rounds, sigma {plan.noise_multiplier:.2f}, "
            f"noise per round {plan.noise_to_signal:.2f} of the signal"
            + (
                f", each site adding a share of 1/{plan.noise_shares} of its variance"
                if plan.noise_shares > 1
                else ""
            )
        )
    else:
        say(
            f"privacy plan: one perturbed fit per site, lambda {plan.regularization:.1f}, "
            f"sigma {plan.noise_multiplier:.2f}"
        )


def train(
    ctx: JobContext, strategy: str, infos: dict[str, Any], *, rounds: int, plan: Any = None
) -> Any:
    """Dispatch to the strategy's training; returns the in-memory global model.

    `infos` are the sites' ``load`` replies; `plan` the privacy planner's plan
    (:mod:`pipeline.privacy.planner`) that a private strategy follows.
    ``logistic`` takes Newton rounds to the pooled optimum, at most `rounds`."""
    from pipeline.models import logistic_training

    if strategy == "xgboost":
        from pipeline.models.tree_training import train_federated_xgboost

        return train_federated_xgboost(ctx, infos)
    if strategy == "logistic":
        return logistic_training.train_newton(ctx, max_rounds=rounds)
    if strategy == "dp-fedavg":
        return logistic_training.train_dp_fedavg(ctx, plan)
    if strategy == "dp-logistic":
        return logistic_training.train_dp_logistic(ctx, plan)
    raise ValueError(f"unknown strategy {strategy!r}")


def _log_plots(tracker, evaluations: dict[str, Evaluation]) -> None:  # noqa: ANN001
    challenger = evaluations["challenger"]
    overall = {name: ev.overall for name, ev in evaluations.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tracker.artifact(plot_roc(overall, tmp_path / "roc.png"), "plots")
        tracker.artifact(plot_calibration(overall, tmp_path / "calibration.png"), "plots")
        tracker.artifact(plot_sites(challenger.sites, tmp_path / "per_site_auc.png"), "plots")
        tracker.artifact(
            plot_subgroups(challenger.subgroups, tmp_path / "subgroup_auc.png"), "plots"
        )
