"""The job's promotion stages: find the champion to compare with, then register the
challenger, apply the gate and write the model card.

The gate itself (:mod:`pipeline.gate`) is pure; this module gathers its inputs from the
job (one shared evaluation, the sites' validation, the ledger) and applies the outcome
to the registry (:func:`apply_decision`). A scheduled retraining calls the same two functions.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.champion import CHAMPION, ChampionMoved, alias_version, move_champion
from pipeline.config import FederationConfig
from pipeline.contract import Contract
from pipeline.evaluation import Evaluation
from pipeline.failpoints import stop_point
from pipeline.gate import Criterion, Decision, decide
from pipeline.models.base import Model
from pipeline.models.digest import payload_digest
from pipeline.protocol.messages import SiteInfo
from pipeline.registry import load_version, registry_client
from pipeline.stages.context import JobContext
from pipeline.stages.state_lock import FederationLock, lock_path
from pipeline.strategies.base import PrivacyPlan
from pipeline.validation import ValidationSummary

CHALLENGER_KEY, CHAMPION_KEY = "challenger", "champion"


@dataclass(frozen=True)
class Champion:
    """The champion a job compares its model with: its version and site payload, or why
    it cannot be compared (``problem``). ``version`` None: there is no champion yet."""

    version: str | None = None
    payload: dict | None = None
    problem: str | None = None


def current_champion(cfg: FederationConfig, contract: Contract, workdir: Path) -> Champion:
    """The registered champion, ready to be evaluated at the sites beside the challenger.

    A champion trained on other features than the contract's cannot be scored on the
    same rows; it is reported as not comparable (the gate then keeps the challenger)."""
    client = registry_client(cfg.tracking_uri)
    version = alias_version(client, cfg.mlflow.model_name, CHAMPION)
    if version is None:
        return Champion()
    try:
        registered = load_version(client, cfg.mlflow.model_name, version, workdir)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the gate's reason
        return Champion(version, problem=f"could not be loaded ({type(exc).__name__}: {exc})")
    if registered.contract.features != contract.features:
        return Champion(
            version,
            problem=f"trained on contract {registered.contract.name} "
            f"v{registered.contract.version} with other features",
        )
    return Champion(version, payload=registered.model.site_payload())


def fix_at_sites(ctx: JobContext, model: Model, champion: Champion) -> Champion:
    """Have every site fix the job's model on its record of trained models before anything
    evaluates it, and learn which sites have the champion on theirs: a site scores only
    the models of jobs it trained in (:mod:`pipeline.site.trained_models`). A champion
    some site does not know is reported not comparable, so the gate keeps the challenger
    out and says why (an operator can still promote it)."""
    compare = [payload_digest(champion.payload)] if champion.payload is not None else []
    replies = ctx.runtime.call("fix_model", ctx.job_id, model.site_payload(), compare=compare)
    ctx.runtime.require_quorum(ctx.cfg.quorum, "evaluation")
    unknown = sorted(s for s, reply in replies.ok.items() if set(compare) - set(reply.known))
    if unknown:
        return Champion(
            champion.version,
            problem=f"site(s) {', '.join(unknown)} did not train it, and a site scores only "
            "the models of jobs it trained in",
        )
    return champion


def models_to_evaluate(model: Model, champion: Champion) -> dict[str, dict]:
    """The payloads one evaluation request carries: the challenger, and the champion when
    it can be scored on the same rows."""
    models = {CHALLENGER_KEY: model.site_payload()}
    if champion.payload is not None:
        models[CHAMPION_KEY] = champion.payload
    return models


def register_and_gate(
    ctx: JobContext,
    model: Model,
    evaluations: dict[str, Evaluation],
    champion: Champion,
    summaries: dict[str, ValidationSummary],
    *,
    tags: dict[str, str],
) -> tuple[str, Decision]:
    """Register the job's model (alias challenger), decide with the gate and apply it,
    log the decision on the run and the version, and log the model card. Returns the
    new version and the decision."""
    from pipeline.model_card import log_card

    cfg, tracker = ctx.cfg, ctx.tracker
    challenger = evaluations[CHALLENGER_KEY]
    taking_part = sorted(challenger.sites)
    policy = cfg.gate.policy()
    client = registry_client(cfg.tracking_uri)
    name = cfg.mlflow.model_name
    outside = None
    if policy.has_privacy_policy and champion.version is not None:
        champion_tags = client.get_model_version(name, champion.version).tags or {}
        outside = policy.outside(*privacy_of(champion_tags))
    decision = decide(
        challenger.overall,
        evaluations[CHAMPION_KEY].overall if CHAMPION_KEY in evaluations else None,
        validation={s: summaries[s].passed for s in taking_part if s in summaries},
        budget=budget_facts(cfg, taking_part),
        policy=policy,
        champion_version=champion.version,
        champion_problem=champion.problem,
        privacy=privacy_of(tags),
        champion_outside=outside,
    )
    version = tracker.register(model, str(cfg.contract), name, tags=tags)
    stop_point("registration")
    decision = apply_decision(client, name, version, decision)
    tracker.json(decision.to_dict(), "gate.json")
    tracker.tags({"gate.decision": decision.outcome, "model_version": version})
    log_card(client, tracker.run_id or "", ctx.contract, model_name=name, version=version)
    return version, decision


def apply_decision(client: Any, model_name: str, version: str, decision: Decision) -> Decision:
    """Apply the gate's decision: when it promotes, move the champion alias, but only if
    the champion is still the one the gate compared against (the replaced champion
    becomes previous-champion); then record the decision as tags on the version. Returns
    the decision as applied: kept, with the failed ``champion_unchanged`` criterion, when
    the champion moved while the job ran."""
    if decision.promote:
        try:
            move_champion(client, model_name, version, expected=decision.champion_version)
        except ChampionMoved as exc:
            decision = decision.refused(
                Criterion(
                    "champion_unchanged",
                    False,
                    str(exc),
                    "the champion the gate compared against is still the champion",
                )
            )
    tags = {"gate.decision": decision.outcome, "gate.summary": decision.summary()[:5000]}
    for c in decision.criteria:
        tags[f"gate.{c.name}"] = f"{'pass' if c.passed else 'FAIL'}: {c.value} (rule: {c.rule})"
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return decision


def version_tags(
    ctx: JobContext,
    plan: PrivacyPlan | None,
    ev: Evaluation,
    sites: Mapping[str, SiteInfo],
) -> dict[str, str]:
    """What ``pipeline models`` lists for a version without opening its run."""
    months = sorted({m for i in sites.values() for m in i.partitions})
    m = ev.overall
    return {
        "strategy": ctx.strategy.name,
        "job_id": ctx.job_id,
        "epsilon": f"{plan.epsilon if plan else 0.0:g}",
        "delta": f"{plan.delta if plan else 0.0:g}",
        "sites": ",".join(sorted(ev.sites)),
        "test_auc": f"{m.auc:.4f}",
        "calibration_slope": f"{m.calibration_slope:.3f}",
        "calibration_intercept": f"{m.calibration_intercept:+.3f}",
        "data_window": f"{months[0]}..{months[-1]}" if months else "",
    }


def privacy_of(tags: Mapping[str, str]) -> tuple[float | None, str]:
    """(epsilon per site, or None when not differentially private; strategy) of a
    version, from the tags :func:`version_tags` wrote (epsilon 0: no noise)."""
    try:
        epsilon = float(tags.get("epsilon", "0"))
    except ValueError:
        epsilon = 0.0
    return (epsilon if epsilon > 0 else None), tags.get("strategy", "unknown")


def budget_facts(cfg: FederationConfig, sites: list[str]) -> dict[str, tuple[float, float]]:
    """(epsilon spent, budget) per site, from the ledger as it stands after the job."""
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    return {s: (ledger.spent(s)[0], cfg.site_budget(s)) for s in sites}


def promote(cfg: FederationConfig, version: str, reason: str) -> str | None:
    """`pipeline promote`: make a version the champion by hand, past the gate, and render
    its card again so it says so. Returns the replaced champion."""
    from pipeline.champion import promote_by_hand
    from pipeline.contract import load_contract
    from pipeline.model_card import log_card

    client = registry_client(cfg.tracking_uri)
    name = cfg.mlflow.model_name
    with FederationLock(lock_path(cfg), "promotion by hand"):
        former = promote_by_hand(client, name, version, reason=reason, by=_user())
        run_id = client.get_model_version(name, version).run_id
        log_card(client, run_id, load_contract(cfg.contract), model_name=name, version=version)
    return former


def rollback(cfg: FederationConfig) -> tuple[str, str | None]:
    """`pipeline rollback`: champion back to previous-champion. (restored, demoted)."""
    from pipeline.champion import rollback as move_back

    with FederationLock(lock_path(cfg), "rollback"):
        return move_back(registry_client(cfg.tracking_uri), cfg.mlflow.model_name)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
