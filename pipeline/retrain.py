"""Scheduled retraining: the job a scheduler runs unattended (cron, a Kubernetes CronJob,
a Ray Job).

Hospitals keep closing 5-year follow-ups, so every month brings newly labelled patients
(one new ``followup_month`` partition per site). One run:

1. takes the federation's lock (:mod:`pipeline.stages.state_lock`, beside the ledger:
   a second run, or any train, promote or rollback meanwhile, is refused, and a killed
   run's lock goes with its process);
2. asks each site which follow-up months it holds that have closed, and compares them
   with the months already trained on (the last completed retraining, else the
   champion's data window): nothing new means nothing is trained, spent or registered;
3. otherwise trains each configured strategy with the job's own stages (validation,
   privacy reservation, training, the shared champion/challenger evaluation, the gate),
   measuring drift once the sites have loaded: PSI per feature and site of the new months
   against the champion's training months, from securely summed histograms;
4. appends an audit record (JSON lines beside the ledger, and on every run it made).

Its outcome is an exit code a scheduler can act on (:data:`EXIT_CODES`). It calls the
job's stages; it does not copy them.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import FederationConfig
from pipeline.errors import BudgetError, PipelineError, QuorumError
from pipeline.stages.recovery import Journal, recover_jobs
from pipeline.stages.state_lock import FederationLock, LockedError, lock_path
from pipeline.strategies.base import Progress, RoundProgress

TRAINED, NOTHING_NEW, BAD_INPUT, QUORUM_LOST, BUDGET_EXHAUSTED, LOCKED = 0, 3, 2, 4, 5, 6
KILLED = 128 + 9  # what a shell reports for a run killed by SIGKILL
# exit code -> (status, what it means); quoted by `pipeline retrain --help` and the README.
EXIT_CODES = {
    TRAINED: ("trained", "new months trained on; each model promoted or kept by the gate"),
    NOTHING_NEW: ("nothing new", "every closed follow-up month was already trained on"),
    BAD_INPUT: ("bad input", "bad input or config; the message names the file, field or rule"),
    QUORUM_LOST: ("quorum lost", "too few sites could take part"),
    BUDGET_EXHAUSTED: ("budget exhausted", "too few sites have privacy budget for the job"),
    LOCKED: (
        "locked",
        "another run holds this federation's lock (a retraining, train, promote or rollback)",
    ),
    KILLED: (
        "killed",
        "the run was killed (SIGKILL); the next run records it and says whether its months "
        "are retried (nothing released) or spent",
    ),
}


def audit_path(cfg: FederationConfig) -> Path:
    return cfg.privacy.ledger.parent / "retrain_audit.jsonl"


@dataclass
class RetrainResult:
    """What one run did: its exit code, a line for the operator and the audit record."""

    code: int
    message: str
    record: dict[str, Any] = field(default_factory=dict)
    jobs: list[Any] = field(default_factory=list)  # the JobResults of the strategies trained

    @property
    def status(self) -> str:
        return EXIT_CODES[self.code][0]


def seen_partitions(cfg: FederationConfig) -> dict[str, list[str]]:
    """Months already dealt with, per site: the closed months every site held at the
    newest run that trained, found nothing new or was killed after spending on them (a
    site quarantined then does not retrigger training every night; `pipeline train` takes
    it back once its data is fixed), else the champion's data window, else none."""
    last = last_record(cfg, (TRAINED, NOTHING_NEW, KILLED))
    if last is not None:
        return {s: list(months) for s, months in last["seen"].items()}
    return champion_partitions(cfg)


def last_record(cfg: FederationConfig, codes: tuple[int, ...]) -> dict[str, Any] | None:
    """The newest audit record that ended with one of `codes`."""
    last = None
    for record in _records(cfg):
        if record.get("exit_code") in codes and "seen" in record:
            last = record
    return last


def champion_partitions(cfg: FederationConfig) -> dict[str, list[str]]:
    """The months each site contributed to the champion's training (its run's
    ``sites.json``); empty without a champion."""
    from pipeline.champion import CHAMPION, alias_version
    from pipeline.registry import registry_client, run_document

    client = registry_client(cfg.tracking_uri)
    version = alias_version(client, cfg.mlflow.model_name, CHAMPION)
    if version is None:
        return {}
    run_id = client.get_model_version(cfg.mlflow.model_name, version).run_id
    sites = run_document(client, run_id, "sites.json") or {}  # none: treat all as new
    return {s: list(info.get("partitions", [])) for s, info in sites.items()}


def run_retrain(
    cfg: FederationConfig,
    *,
    strategies: list[str] | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    on_round: RoundProgress | None = None,
) -> RetrainResult:
    """One scheduled retraining run (see the module docstring). Never raises the project's
    own errors: they become the result's exit code and message, and an audit record."""
    say = progress or (lambda _msg: None)
    record: dict[str, Any] = {
        "time": _now(),
        "run": f"retrain-{uuid.uuid4().hex[:10]}",
        "federation": cfg.federation,
        "host": socket.gethostname(),
    }
    try:
        with FederationLock(lock_path(cfg), "retraining run") as lock:
            result = _retrain(cfg, record, strategies, ray_address, say, on_round, lock.first)
    except LockedError as exc:
        result = RetrainResult(LOCKED, str(exc))
    except QuorumError as exc:
        result = RetrainResult(QUORUM_LOST, str(exc))
    except BudgetError as exc:
        result = RetrainResult(BUDGET_EXHAUSTED, str(exc))
    except PipelineError as exc:
        result = RetrainResult(BAD_INPUT, str(exc))
    record.update({"exit_code": result.code, "status": result.status, "message": result.message})
    if result.code != LOCKED:  # the run that holds the lock writes its own record
        _append(audit_path(cfg), record)
        Journal(cfg).end(record["run"])  # only now: a run that has no record is found
    result.record = record
    _log_on_runs(cfg, result)
    return result


def _retrain(
    cfg: FederationConfig,
    record: dict[str, Any],
    strategies: list[str] | None,
    ray_address: str | None,
    say: Progress,
    on_round: RoundProgress | None,
    recover: bool,
) -> RetrainResult:
    from pipeline.contract import load_contract
    from pipeline.extract import current_month
    from pipeline.federation.secure_drift import measure_drift
    from pipeline.job import run_job
    from pipeline.stages.context import StageClock
    from pipeline.stages.sites import site_runtime

    strategies = strategies or list(cfg.retrain.strategies or [cfg.training.model])
    contract = load_contract(cfg.contract)
    month = current_month()
    record.update({"strategies": strategies, "closed_before": month})
    clock = StageClock()
    record["seconds"] = clock.seconds  # wall time per stage, filled as the run goes
    started = time.perf_counter()
    journal = Journal(cfg)
    with site_runtime(cfg, record["run"], ray_address) as runtime:
        if recover:
            recover_jobs(cfg, runtime, say)
            _record_killed(cfg, journal, record["run"], say)
        journal.start(record["run"], "retrain")
        already = seen_partitions(cfg)  # after a killed run's record, which may add months
        say("asking the sites for their closed follow-up months")
        listing = runtime.call("partitions", runtime.job_id, month)
        runtime.require_quorum(cfg.quorum, "listing partitions")
        clock.seconds["start and listing"] = time.perf_counter() - started
        new = {s: sorted(set(p.closed) - set(already.get(s, ()))) for s, p in listing.ok.items()}
        record["sites"] = {
            s: {
                "node": p.node,
                "closed": list(p.closed),
                "new": new[s],
                "not_yet_closed": list(p.open),
            }
            for s, p in listing.ok.items()
        }
        record["unreachable"] = dict(listing.failed)
        # What the next run compares with (a site that did not answer keeps its months).
        record["seen"] = {**already, **{s: list(p.closed) for s, p in listing.ok.items()}}
        journal.note(record["run"], seen=record["seen"], new=new)
        if not any(new.values()):
            latest = max((m for p in listing.ok.values() for m in p.closed), default="none")
            return RetrainResult(
                NOTHING_NEW,
                f"nothing new: every closed follow-up month (latest {latest}) was already "
                "trained on",
            )
        say("new months: " + "; ".join(f"{s} {', '.join(m)}" for s, m in new.items() if m))
        # Each site compares the closed months it has not trained on with those its last
        # finished job trained on (its own record, whoever ran that job): drift is
        # measured when every site has both.
        comparable = {
            s for s, p in listing.ok.items() if p.trained and set(p.closed) - set(p.trained)
        }

        def drift_stage(ctx, infos: dict[str, Any]) -> None:  # noqa: ANN001
            missing = [s for s in ctx.runtime.active if s not in comparable]
            if missing:
                record["drift"] = None
                if len(missing) < len(ctx.runtime.active):  # else there is nothing to say
                    say(
                        "drift not measured: no months a finished job trained on, or none "
                        "new since, at " + ", ".join(missing)
                    )
                return
            say("measuring drift of the new months (secure sum)")
            with clock.stage("drift"):
                report = measure_drift(
                    ctx.runtime, contract, drift_id=f"{ctx.job_id}:drift", quorum=cfg.quorum
                )
            record["drift"] = report.to_dict()
            ctx.tracker.json(report.to_dict(), "drift.json")
            shifted = [
                f"{s}: {f} {v:.2f}"
                for s, per in report.sites.items()
                for f, v in per.items()
                if v is not None and v > 0.2
            ]
            say("drift above 0.2: " + ("; ".join(shifted) if shifted else "none"))

        jobs = []
        for i, strategy in enumerate(strategies):
            say(f"retraining {strategy}")
            job = run_job(
                cfg,
                strategy=strategy,
                runtime=runtime,
                after_load=drift_stage if i == 0 else None,
                progress=say,
                on_round=on_round,
                retrain_run=record["run"],
            )
            jobs.append(job)
            clock.seconds[f"job {strategy}"] = dict(job.seconds)
        sites_trained = sorted(set.intersection(*(set(j.per_site) for j in jobs)))
        partitions = {s: list(jobs[0].partitions.get(s, ())) for s in sites_trained}
        months = sorted({m for ms in partitions.values() for m in ms})
        checked = jobs[0].validated
        record["sites"] = {
            s: {
                **v,
                "partitions": partitions.get(s, []),
                "trained": s in sites_trained,
                "validated_files": checked.get(s, (0, 0))[0],
                "recorded_files": checked.get(s, (0, 0))[1],
            }
            for s, v in record["sites"].items()
        }
        record["window"] = {"first": months[0], "last": months[-1]} if months else None
        record["left_out"] = dict(runtime.dropped)
        record["privacy"] = _privacy(cfg, list(record["sites"]))
        record["jobs"] = [
            {
                "strategy": j.strategy,
                "run_id": j.run_id,
                "version": j.model_version,
                "auc": j.metrics.auc,
                "decision": j.decision.to_dict() if j.decision else None,
                "summary": j.decision.summary() if j.decision else None,
            }
            for j in jobs
        ]
    decided = "; ".join(f"{j.strategy} v{j.model_version}: {j.decision.outcome}" for j in jobs)
    window = f"{months[0]}..{months[-1]}" if months else "all rows"
    return RetrainResult(TRAINED, f"trained on {window}: {decided}", jobs=jobs)


def _record_killed(cfg: FederationConfig, journal: Journal, found_by: str, say: Progress) -> None:
    """The audit record of each retraining run that was killed, from its marker (and what
    :func:`recover_jobs` found of its jobs). Its months are *retried* next night when it
    left nothing behind (no release under a site's budget, no registered version): the
    retry is free. Otherwise they are *spent*: counted as seen, so a run killed at the
    same point every night (the OOM killer) cannot drain the sites' budgets; an operator
    trains them with `pipeline train`."""
    done = {r.get("run") for r in _records(cfg)}
    for marker in journal.left("retrain"):
        if marker["id"] in done:  # killed after writing its record: nothing is missing
            journal.end(marker["id"])
            continue
        jobs = marker.get("jobs", [])
        spent = any(j["version"] or j["released"] for j in jobs)
        months = "spent" if spent else "retried"
        record: dict[str, Any] = {
            "time": marker["started"],
            "run": marker["id"],
            "federation": cfg.federation,
            "host": marker["host"],
            "exit_code": KILLED,
            "status": "killed",
            "message": (
                f"killed: process {marker['pid']} ended without finishing (its log says how); "
                f"found by {found_by}; its months are {months}"
            ),
            "months": months,
            "new": marker.get("new", {}),
            "jobs": jobs,
            "recorded": _now(),
        }
        if spent and "seen" in marker:
            record["seen"] = marker["seen"]
        _append(audit_path(cfg), record)
        journal.end(marker["id"])
        say(f"retraining run {marker['id']} was killed: {months} (audit record written)")


def _records(cfg: FederationConfig) -> list[dict[str, Any]]:
    path = audit_path(cfg)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill mid-write
    return out


def _privacy(cfg: FederationConfig, sites: list[str]) -> dict[str, dict[str, float]]:
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    out = {}
    for s in sites:
        budget = cfg.site_budget(s)
        spent = ledger.spent(s)
        out[s] = {
            "epsilon_spent": spent[0],
            "delta_spent": spent[1],
            "epsilon_budget": budget,
            "epsilon_left": budget - spent[0],
        }
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, written with a single append (O_APPEND) and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_on_runs(cfg: FederationConfig, result: RetrainResult) -> None:
    if not result.jobs:
        return
    from pipeline.registry import registry_client

    client = registry_client(cfg.tracking_uri)
    for job in result.jobs:
        client.log_text(
            job.run_id, json.dumps(result.record, indent=2, default=str), "retrain_audit.json"
        )
        client.set_tag(job.run_id, "retrain_run", result.record["run"])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
