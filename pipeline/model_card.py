"""The model card of a registered version: a Markdown artifact rendered from its run.

After Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), with what a clinical
prediction model's reader needs (TRIPOD, Collins et al., BMJ 2015): intended use and
users, the cohort and data window, where the data came from, performance overall, by
subgroup and by site (with what was suppressed), calibration, what the risk bands mean,
privacy, limitations, and the promotion decision.

Everything comes from what the job logged on its run (parameters, tags, metrics, JSON
artifacts) and the task's contract, so a card can be rendered again later, e.g. after a
promotion by hand, and says nothing the run does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import strategies
from pipeline.contract import Contract
from pipeline.registry import run_document

CARD_FILE = "model_card.md"


@dataclass(frozen=True)
class RunRecord:
    """What a job logged on its MLflow run, as the card reads it."""

    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    documents: dict[str, Any] = field(default_factory=dict)  # JSON artifacts by file name


def read_run(client: Any, run_id: str) -> RunRecord:
    """The run's parameters, tags, metrics and the JSON artifacts a card needs."""
    run = client.get_run(run_id)
    documents = {}
    for name in ("evaluation.json", "sites.json", "gate.json", "privacy_spend.json"):
        document = run_document(client, run_id, name)
        if document is not None:
            documents[name] = document
    return RunRecord(
        run_id=run_id,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        documents=documents,
    )


def render(record: RunRecord, contract: Contract, *, model_name: str, version: str) -> str:
    """The card's Markdown."""
    p, tags = record.params, record.tags
    strategy = p.get("strategy", "?")
    evaluation = record.documents.get("evaluation.json", {})
    challenger = evaluation.get("challenger", {})
    sites = record.documents.get("sites.json", {})
    out: list[str] = [f"# Model card: {model_name} version {version}", ""]
    out += [
        f"*{contract.title or contract.name}* · strategy `{strategy}` · federation "
        f"`{tags.get('federation', '?')}` · job `{tags.get('job_id', '?')}` · MLflow run "
        f"`{record.run_id}`",
        "",
        "## Intended use",
        "",
        f"- **What it predicts:** {_one_line(contract.label.description or contract.title)}",
        "- **Users:** clinicians, through their EHR integration or the clinician page, "
        "for patients of the cohort below; a decision aid next to clinical judgement, not a "
        "diagnosis.",
        "- **Not for:** patients outside the cohort (see below), individual diagnosis, or "
        "populations unlike the training hospitals without a local check of calibration.",
        "",
        "## Cohort and data",
        "",
        f"- **Cohort:** {_one_line(contract.cohort.description or contract.description)}",
    ]
    for rule in contract.cohort.exclude:
        out.append(f"  - excluded: {rule.column} {rule.op} {rule.value:g} ({rule.reason})")
    out.append(f"- **Data window:** {_window(sites)}")
    out += ["", "| site | rows | train | held out |", "|---|---:|---:|---:|"]
    for site, info in sites.items():
        out.append(f"| {site} | {info['rows']:,} | {info['n_train']:,} | {info['n_test']:,} |")
    dropped = tags.get("dropped_sites", "none")
    out += ["", f"Sites quarantined or dropped during the job: {dropped}.", ""]
    out += _performance(challenger, evaluation)
    out += _bands(contract)
    out += _privacy(p, strategy)
    out += _limitations(contract)
    out += _decision(record)
    return "\n".join(out) + "\n"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _window(sites: dict) -> str:
    months = sorted({m for info in sites.values() for m in info.get("partitions", [])})
    if not months:
        return "not partitioned by month"
    return f"follow-up closed {months[0]} to {months[-1]} ({len(months)} months)"


def _fmt(x: Any, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _performance(challenger: dict, evaluation: dict) -> list[str]:
    o = challenger.get("overall", {})
    out = [
        "## Performance (held-out patients of every site, from pooled statistics)",
        "",
        "| metric | this model |" + (" champion at the time |" if "champion" in evaluation else ""),
        "|---|---:|" + ("---:|" if "champion" in evaluation else ""),
    ]
    champion = evaluation.get("champion", {}).get("overall", {})
    for key, name in (
        ("auc", "AUC"),
        ("auprc", "AUPRC (average precision, binned)"),
        ("brier", "Brier score"),
        ("log_loss", "log loss"),
        ("calibration_slope", "calibration slope"),
        ("calibration_intercept", "calibration-in-the-large (log-odds)"),
        ("oe_ratio", "observed / expected events"),
        ("prevalence", "observed rate"),
        ("n", "patients"),
    ):

        def shown(v: Any, key: str = key) -> str:
            return f"{v:,.0f}" if key == "n" and v is not None else _fmt(v, 4)

        row = f"| {name} | {shown(o.get(key))} |"
        if "champion" in evaluation:
            row += f" {shown(champion.get(key))} |"
        out.append(row)
    out += ["", "By subgroup (declared in the contract):", ""]
    out += ["| group | patients | AUC | calibration slope | calibration-in-the-large | O/E |"]
    out += ["|---|---:|---:|---:|---:|---:|"]
    for group, m in challenger.get("subgroups", {}).items():
        if "suppressed" in m:
            out.append(f"| {group} | suppressed | {m['suppressed']} | | | |")
        else:
            out.append(
                f"| {group} | {m['n']:,.0f} | {_fmt(m['auc'])} | {_fmt(m['calibration_slope'])}"
                f" | {_fmt(m['calibration_intercept'])} | {_fmt(m['oe_ratio'])} |"
            )
    out += ["", "By site (each site's own AUC, computed at the site):", ""]
    out += ["| site | AUC |", "|---|---:|"]
    for site, m in challenger.get("sites", {}).items():
        out.append(f"| {site} | {m['suppressed'] if 'suppressed' in m else _fmt(m['auc'])} |")
    out += [
        "",
        "A group or site with fewer than 11 patients in a class is suppressed, not shown.",
        "",
        "![calibration](plots/calibration.png)",
        "",
    ]
    return out


def _bands(contract: Contract) -> list[str]:
    out = ["## Risk bands", "", "| band | predicted risk | what it means |", "|---|---|---|"]
    lower = 0.0
    for band in contract.risk_bands:
        span = f"{lower:.0%} to {band.upper:.0%}" if band.upper < 1 else f"{lower:.0%} or more"
        out.append(f"| {band.name} | {span} | {band.meaning} |")
        lower = band.upper
    return [*out, ""]


def _privacy(p: dict, name: str) -> list[str]:
    """The strategy's privacy as the registry describes it, and what the run spent."""
    strategy = strategies.REGISTRY.get(name)
    mechanism = strategy.privacy.mechanism if strategy else "unknown"
    sees = strategy.privacy.seen(p) if strategy else "unknown"
    out = ["## Privacy", "", f"- **Mechanism:** {mechanism}"]
    if "epsilon_per_site" in p:
        out.append(
            f"- **Spent per site:** epsilon {p['epsilon_per_site']}, delta {p.get('delta', '0')}"
            + (
                f" (noise multiplier {float(p['noise_multiplier']):.2f}, clip {p['clip']})"
                if float(p.get("noise_multiplier", 0) or 0) > 0
                else ""
            )
        )
    out += _recalibration(p)
    out += [
        f"- **What the aggregator sees:** {sees}.",
        "- **Evaluation:** sites send masked statistics; only their sum over sites is "
        "decoded. No row and no single site's histogram leaves a site.",
    ]
    if strategy is not None and strategy.privacy.secure_aggregation:
        on = str(p.get("secure_aggregation", "")).lower() == "true"
        out.append(f"- **Secure aggregation of training updates:** {'on' if on else 'off'}")
    return [*out, ""]


def _recalibration(p: dict) -> list[str]:
    """Whether the private model was recalibrated, how, and at what part of its cost."""
    if "recalibration_slope" in p:
        share = float(p.get("plan_recalibration_share", 0) or 0)
        sigma = p.get("plan_recalibration_noise_multiplier", "?")
        return [
            "- **Recalibrated** on the sites' training rows (never the held-out rows): "
            f"log-odds mapped with slope {float(p['recalibration_slope']):.3f} about "
            f"{float(p['recalibration_centre']):.2f}, fitted from one private release of "
            f"per-cell label counts (noise multiplier {sigma}), {share:.0%} of the job's "
            "privacy cost, included in the spend above."
        ]
    if "recalibration" in p:
        return [f"- **Recalibration:** {p['recalibration']}."]
    return []


def _limitations(contract: Contract) -> list[str]:
    return [
        "## Limitations",
        "",
        "- Validated on held-out patients of the training hospitals only; calibration in a "
        "new hospital or a later period must be checked before use there.",
        "- Subgroups are the contract's "
        f"({', '.join(g.name for g in contract.subgroups) or 'none'}); other groups were not "
        "assessed, and suppressed ones could not be.",
        "- AUPRC comes from binned scores (ties within a bin), a little below the row-level "
        "figure; AUC, Brier and calibration agree with row-level values to 0.001-0.002.",
        "- Features are what the contract declares, in its units; values outside its ranges "
        "are refused by the served model rather than extrapolated.",
        "",
    ]


def _decision(record: RunRecord) -> list[str]:
    gate = record.documents.get("gate.json")
    out = ["## Promotion decision", ""]
    if gate is None:
        out.append("No gate decision was recorded for this run.")
    else:
        against = gate.get("champion_version")
        out.append(
            f"**{gate['decision']}**"
            + (f" (compared with champion version {against})" if against else "")
        )
        out += ["", "| criterion | result | measured | rule |", "|---|---|---|---|"]
        for c in gate["criteria"]:
            result = "pass" if c["passed"] else "**fail**"
            out.append(f"| {c['name']} | {result} | {c['value']} | {c['rule']} |")
    if record.tags.get("promotion") == "manual":
        out += [
            "",
            f"**Promoted by hand** by {record.tags.get('promotion.by', '?')} at "
            f"{record.tags.get('promotion.at', '?')}: {record.tags.get('promotion.reason', '')}",
        ]
    return [*out, ""]


def log_card(client: Any, run_id: str, contract: Contract, *, model_name: str, version: str) -> str:
    """Render the card from the run and log it there as ``model_card.md``."""
    text = render(read_run(client, run_id), contract, model_name=model_name, version=version)
    client.log_text(run_id, text, CARD_FILE)
    return text
