"""One federated job, end to end, as the list of its stages: validate at the sites, admit
and load them, plan and reserve privacy, train by the strategy, evaluate from sufficient
statistics, register and let the gate decide.

The stages are :mod:`pipeline.stages`; the strategy is asked, never named. This module
only sequences them and decides what a failure means: a site that fails is dropped while
the quorum holds; otherwise the job raises, and its MLflow run is marked FAILED with the
reason and nothing is registered (invariant 4).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import strategies
from pipeline.config import FederationConfig
from pipeline.contract import load_contract
from pipeline.evaluation import Evaluation, Metrics, Suppressed
from pipeline.failpoints import stop_point
from pipeline.federation.runtime import SiteRuntime
from pipeline.gate import Decision
from pipeline.models.base import Model
from pipeline.protocol.messages import SiteInfo
from pipeline.registry import JobTracker
from pipeline.scratch import scratch_prefix
from pipeline.stages.context import JobContext, StageClock
from pipeline.stages.evaluation import evaluate
from pipeline.stages.privacy import plan_and_reserve
from pipeline.stages.promotion import (
    Champion,
    current_champion,
    fix_at_sites,
    models_to_evaluate,
    register_and_gate,
    version_tags,
)
from pipeline.stages.recovery import Journal, end_job, recover_jobs
from pipeline.stages.sites import admit_sites, load_sites, site_runtime
from pipeline.stages.state_lock import FederationLock, lock_path
from pipeline.strategies.base import Progress, RoundProgress, Strategy, quiet

AfterLoad = Callable[[JobContext, Mapping[str, SiteInfo]], None]


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
    model: Model | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    evaluation: Evaluation | None = None
    champion_evaluation: Evaluation | None = None
    decision: Decision | None = None
    partitions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # months read
    # per site: files validated in this job, files answered from the site's records
    validated: dict[str, tuple[int, int]] = field(default_factory=dict)


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
    retrain_run: str | None = None,
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
    loaded their rows (before any privacy is reserved). The job holds the federation's
    lock (:mod:`pipeline.stages.state_lock`) from start to end: while another process
    holds it, the job is refused before it starts anything. Taking it, the job first puts
    right what a killed job left (:mod:`pipeline.stages.recovery`), and keeps its own
    marker while it runs (`retrain_run`: the retraining run it belongs to)."""
    chosen = strategies.get(strategy or cfg.training.model)
    settings = cfg.training.model_copy(update={"rounds": rounds or cfg.training.rounds})
    contract = load_contract(cfg.contract)
    job_id = f"{chosen.name}-{uuid.uuid4().hex[:10]}"
    tracker = JobTracker(cfg.tracking_uri, cfg.mlflow.experiment or cfg.federation, job_id)
    journal = Journal(cfg)
    clock = StageClock(on_stage=lambda stage: journal.note(job_id, stage=stage))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # The federation's lock before anything: a job spends budget and registers.
        lock = stack.enter_context(FederationLock(lock_path(cfg), "job"))
        if runtime is None:
            runtime = stack.enter_context(site_runtime(cfg, job_id, ray_address))
        if lock.first:
            recover_jobs(cfg, runtime, progress or quiet)
        journal.start(job_id, "job", strategy=chosen.name, retrain_run=retrain_run)
        stack.callback(journal.end, job_id)
        stack.enter_context(tracker)
        ready = stack.enter_context(_ahead(chosen))
        scratch = scratch_prefix(job_id, "champion")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=scratch)))
        runtime.wait_started(warm_up="warm_up")
        clock.seconds["start"] = time.perf_counter() - started
        ctx = JobContext(
            runtime,
            cfg,
            contract,
            job_id,
            tracker,
            chosen,
            settings,
            progress or quiet,
            _stopping_after_a_round(on_round),
        )
        _log_start(ctx)

        with clock.stage("validation"):
            summaries, admitted, quarantined = admit_sites(ctx)
            ready()
        with clock.stage("load"):
            sites = load_sites(ctx)
        if after_load is not None:
            after_load(ctx, sites)
        stack.callback(end_job, cfg, runtime, job_id)
        journal.note(job_id, stage="reservation")
        plan, spend = plan_and_reserve(ctx, sites)
        stop_point("reservation")
        with clock.stage("training"):
            model = chosen.train(ctx.training_job(sites), plan)
        with clock.stage("evaluation"):
            stop_point("evaluation")
            # Without registration there is no decision to make: the model alone.
            champion = current_champion(cfg, contract, workdir) if register else Champion()
            champion = fix_at_sites(ctx, model, champion)
            against = f" and champion {champion.version}" if champion.payload else ""
            ctx.say(f"evaluating the model{against} on held-out rows at every site (secure sum)")
            evaluations = evaluate(ctx, models_to_evaluate(model, champion))
            _log_outcome(ctx, spend)
        challenger = evaluations["challenger"]
        version, decision = None, None
        if register:
            with clock.stage("registration"):
                tags = version_tags(ctx, plan, challenger, sites)
                version, decision = register_and_gate(
                    ctx, model, evaluations, champion, summaries, tags=tags
                )
            ctx.say(f"registered {cfg.mlflow.model_name} version {version}: {decision.summary()}")
        tracker.metrics({f"seconds.{stage}": s for stage, s in clock.seconds.items()})
        return JobResult(
            job_id=job_id,
            strategy=chosen.name,
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
            partitions={s: i.partitions for s, i in sites.items()},
            validated={s: (v.validated_files, v.recorded_files) for s, v in summaries.items()},
        )


def _stopping_after_a_round(on_round: RoundProgress | None) -> RoundProgress:
    """`on_round`, and the crash tests' stop point once a round has been released."""

    def heard(done: int, total: int) -> None:
        stop_point("training")
        if on_round is not None:
            on_round(done, total)

    return heard


def _log_start(ctx: JobContext) -> None:
    """The job's identity and settings on its run."""
    cfg = ctx.cfg
    ctx.tracker.tags(
        {"job_id": ctx.job_id, "strategy": ctx.strategy.name, "federation": cfg.federation}
    )
    ctx.tracker.params(
        {
            "strategy": ctx.strategy.name,
            "rounds": ctx.settings.rounds,
            "seed": cfg.training.seed,
            "sites": len(cfg.sites),
            "quorum": cfg.quorum,
            "contract": ctx.contract.name,
            "secure_aggregation": cfg.training.secure_aggregation,
        }
    )


def _log_outcome(ctx: JobContext, spend: dict[str, tuple[float, float]]) -> None:
    """Which sites left the job and why, and what each taking-part site spent."""
    ctx.tracker.tags({"dropped_sites": ",".join(sorted(ctx.runtime.dropped)) or "none"})
    ctx.tracker.json(ctx.runtime.dropped, "dropped_sites.json")
    ctx.tracker.json(
        {s: {"epsilon": e, "delta": d} for s, (e, d) in spend.items()}, "privacy_spend.json"
    )


@contextlib.contextmanager
def _ahead(strategy: Strategy[Any]) -> Iterator[Callable[[], None]]:
    """Start, while the sites validate, what the coordinator would otherwise do later
    while every site waits: Matplotlib for every job's plots (0.3 s), and what the
    strategy's training needs (:meth:`Strategy.ahead`). Yields `ready`, which waits for
    both; it is called before the coordinator imports anything they may still be
    importing."""
    warm = threading.Thread(target=_import_pyplot, daemon=True)
    with strategy.ahead() as strategy_ready:
        warm.start()
        try:
            yield lambda: (warm.join(), strategy_ready())
        finally:
            warm.join()


def _import_pyplot() -> None:
    """Import ahead of need; a failure shows where the module is used, not here."""
    from pipeline.evaluation.plots import pyplot

    with contextlib.suppress(Exception):
        pyplot()
