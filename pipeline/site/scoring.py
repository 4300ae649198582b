"""What a site scores for a coordinator, and on what terms: the job's model fixed on the
site's record before it is evaluated, evaluation of recorded models only, and drift of
the site's own months. Every answer is masked for the secure sum; the site's own figures
(AUC, PSI) only where its policy allows, suppressed where small.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.contract import Contract
from pipeline.errors import BudgetError, DataError
from pipeline.models.digest import payload_digest
from pipeline.protocol.messages import DriftReply, MaskedEvaluation, ModelCommitment
from pipeline.site.boundary import Boundary
from pipeline.site.months import trained_months


class SiteScoring:
    """One site's evaluation and drift answers. ``evaluated``: the jobs evaluated and the
    drift ids measured (each once)."""

    def __init__(self, site: str, boundary: Boundary, contract: Contract, extract: Path) -> None:
        self.site = site
        self.boundary = boundary
        self.contract = contract
        self.extract = extract
        self.evaluated: set[str] = set()

    def fix_model(
        self, job_id: str, payload: dict, compare: list[str] | tuple[str, ...] = ()
    ) -> ModelCommitment:
        """Fix the job's model (`payload`, as sent for evaluation) in the site's record of
        trained models before anything evaluates it, and say which of the digests in
        `compare` (the champion the job is judged against) are on that record: a site
        scores only recorded models (:mod:`pipeline.site.trained_models`)."""
        self.boundary.check_refusal(job_id)
        digest = payload_digest(payload)
        self.boundary.fix_model(job_id, digest)
        known = self.boundary.models.known(compare)
        return ModelCommitment(site=self.site, digest=digest, known=tuple(sorted(known)))

    def evaluate_models(
        self, eval_id: str, models: dict[str, dict], secure: dict
    ) -> MaskedEvaluation:
        """Evaluation statistics of every model in `models` (name -> payload) on this
        site's held-out rows, for the whole cohort and each of the contract's subgroups,
        masked for the secure sum (keys from ``public_key(eval_id)``): the coordinator sees
        only the pooled statistics.

        On the site's terms: only for a job this site trained (``<job>:eval``), once per
        job, at most the policy's ``max_models_per_evaluation`` models, and only models on
        the site's record (by digest: the job's own, fixed by ``fix_model``, and those
        of earlier jobs, which is what a registry alias can name), so no coordinator can
        score crafted models on the same patients. Each model's own AUC here is released
        only where the policy allows per-site figures, and only when both classes hold at
        least 11 patients."""
        from pipeline.evaluation import site_auc, stats_vector
        from pipeline.models.kinds import from_payload

        self.boundary.check_refusal(eval_id)
        job_id = eval_id.removesuffix(":eval")
        policy = self.boundary.policy
        digests = {name: payload_digest(payload) for name, payload in models.items()}
        known = self.boundary.models.known(digests.values())
        unknown = sorted(name for name, digest in digests.items() if digest not in known)
        why = None
        if job_id == eval_id or job_id not in self.boundary.jobs:
            why = "it evaluates only the models of a job it trained"
        elif job_id in self.evaluated:
            why = "it evaluates a job's models once"
        elif len(models) > policy.max_models_per_evaluation:
            why = f"it evaluates at most {policy.max_models_per_evaluation} models per job"
        elif self.boundary.models.of_job(job_id) is None:
            why = "the job's model was not fixed first"
        elif unknown:
            why = (
                f"{', '.join(unknown)} is not a model of a job it trained in "
                "(it scores only models on its record)"
            )
        if why is not None:
            self.boundary.audit("refused", eval_id, reason="evaluation", models=len(models))
            raise BudgetError(f"site {self.site} refuses the evaluation: {why}")
        self.evaluated.add(job_id)
        rows = self.boundary.test_rows()
        groups = list(self.contract.subgroup_masks(rows.frame).values())
        vectors, aucs = [], {}
        for name, payload in models.items():
            p = from_payload(self.contract, payload).predict_rows(rows)
            vectors.append(stats_vector(rows.y, p, groups))
            aucs[name] = site_auc(rows.y, p) if policy.site_metrics else None
        self.boundary.audit("evaluate_models", eval_id, models=",".join(models))
        masked = self.boundary.masked(eval_id, np.concatenate(vectors), secure)
        return MaskedEvaluation(site=self.site, masked=masked.masked, auc=aucs)

    def drift(self, drift_id: str, secure: dict, partitions: Sequence[str]) -> DriftReply:
        """Per-feature histograms of the rows of the months this site trained on in its
        last finished job (the reference) and of its closed months since (the new ones),
        masked for the secure sum under keys of `drift_id`, and this site's own PSI per
        feature (suppressed where a bin cannot hold 11 patients of each; none where its
        policy keeps per-site figures). The months are the site's own record, never a
        list a request carries (`partitions`: the extract's months in the job's window).
        Once per drift id."""
        from pipeline.evaluation.drift import histogram_vector, psi_by_feature
        from pipeline.extract import read_months

        key = self.contract.cohort.partition
        if not key:
            raise DataError(f"site {self.site}: the contract has no partition key to compare")
        if drift_id in self.evaluated:
            raise BudgetError(f"site {self.site}: drift {drift_id} was measured already")
        reference = trained_months(self.extract)
        current = sorted(set(partitions) - set(reference))
        if not reference or not current:
            raise DataError(
                f"site {self.site}: no months to compare (trained on {len(reference)}, "
                f"{len(current)} new)"
            )
        self.evaluated.add(drift_id)
        schema = self.contract.arrow_schema
        ref = histogram_vector(read_months(self.extract, key, reference, schema), self.contract)
        cur = histogram_vector(read_months(self.extract, key, current, schema), self.contract)
        self.boundary.audit("drift", drift_id, reference=len(reference), current=len(current))
        masked = self.boundary.masked(drift_id, np.concatenate([ref, cur]), secure)
        psi = psi_by_feature(ref, cur, self.contract)
        if not self.boundary.policy.site_metrics:
            psi = dict.fromkeys(psi)
        return DriftReply(site=self.site, masked=masked.masked, psi=psi)
