"""The site: one Ray actor per hospital, holding its extract and answering with aggregates.

The actor is the only code that reads the site's rows. Every method checks the request
against the site's own policy, appends the request to the site's audit log, and returns
an allow-listed reply (pipeline.federation.messages). Heavy libraries are imported inside
the methods that need them so a site that only validates does not pay for XGBoost.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import SitePolicy
from pipeline.console import printed_to_debug
from pipeline.contract import Contract, load_contract
from pipeline.errors import BudgetError, DataError
from pipeline.extract import Window
from pipeline.federation.messages import (
    BoosterReply,
    DriftReply,
    EvalStats,
    JointStats,
    MaskedEvaluation,
    MaskedUpdate,
    ModelUpdate,
    PartitionList,
    PublicKeyReply,
    SiteInfo,
    ValidationReply,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

N_SCORE_BINS = 1000
N_CALIBRATION_BINS = 10


def audit_log_path(extract: Path) -> Path:
    """The site's own audit log, kept beside its extract."""
    return extract.parent / f"{extract.name}.audit.jsonl"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def eval_stats(site: str, y: np.ndarray, p: np.ndarray) -> EvalStats:
    """Fixed-size sufficient statistics of (label, predicted risk) pairs."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    bins = np.minimum((p * N_SCORE_BINS).astype(int), N_SCORE_BINS - 1)
    cal = np.minimum((p * N_CALIBRATION_BINS).astype(int), N_CALIBRATION_BINS - 1)
    return EvalStats(
        site=site,
        hist_pos=np.bincount(bins[y == 1], minlength=N_SCORE_BINS).astype(np.int64),
        hist_neg=np.bincount(bins[y == 0], minlength=N_SCORE_BINS).astype(np.int64),
        calib_pred=np.bincount(cal, weights=p, minlength=N_CALIBRATION_BINS),
        calib_true=np.bincount(cal, weights=y, minlength=N_CALIBRATION_BINS),
        calib_count=np.bincount(cal, minlength=N_CALIBRATION_BINS).astype(np.int64),
        log_loss_sum=float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))),
        brier_sum=float(np.sum((p - y) ** 2)),
        n=int(len(y)),
    )


class _Rows:
    """One side of a site's split: its rows and labels, encoded for a kind of model when
    a request first needs it (a job trains one kind, and encoding costs more than
    reading the extract)."""

    def __init__(self, frame: pd.DataFrame, y: np.ndarray, contract: Contract) -> None:
        self.frame, self.y, self._contract = frame, y, contract

    def __len__(self) -> int:
        return len(self.y)

    @functools.cached_property
    def linear(self) -> np.ndarray:
        """:meth:`FeatureEncoder.transform`: the design matrix of the logistic models."""
        from pipeline.features import FeatureEncoder

        return FeatureEncoder(self._contract).transform(self.frame)

    @functools.cached_property
    def tree(self) -> np.ndarray:
        """:meth:`FeatureEncoder.tree_matrix`: raw clinical values for XGBoost."""
        from pipeline.features import FeatureEncoder

        return FeatureEncoder(self._contract).tree_matrix(self.frame)

    def encoded(self, kind: str) -> np.ndarray:
        if kind not in ("linear", "tree"):
            raise ValueError(f"unknown encoding {kind!r}")
        return getattr(self, kind)


class SiteActor:
    """One hospital. Create with ``ray.remote(SiteActor).options(...).remote(...)``.

    Parameters
    ----------
    site : str
        The site's name in the federation.
    extract : str
        Path of the site's Parquet extract, as seen from the site's node.
    contract_path : str
        The task's contract.
    policy : dict
        The site's :class:`pipeline.config.SitePolicy` (strategies, epsilon per job).
    pinned : dict
        Site name -> pinned Ed25519 identity key (hex) of every site, from the site's own
        copy of the federation config; secure-aggregation keys are checked against it.
    before_month : str, optional
        Read only the partitions of follow-up months before this one (YYYY-MM): the
        cohorts whose follow-up has closed. None: every partition.
    test_extract : str, optional
        A Parquet extract of held-out rows the site keeps apart (a later period, or a
        benchmark's published split): the site then trains on every row of `extract` and
        evaluates on these, instead of splitting `extract` by key.
    """

    def __init__(
        self,
        site: str,
        extract: str,
        contract_path: str,
        policy: dict,
        pinned: dict[str, str] | None = None,
        before_month: str | None = None,
        test_extract: str | None = None,
    ) -> None:
        # Set before any OpenMP runtime loads in this process (XGBoost's is loaded in
        # xgb_train): a worker blocked in a collective allreduce must sleep, not spin
        # its threads on cores that other sites' workers on the same node need.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.site = site
        self.extract = Path(extract)
        self.test_extract = Path(test_extract) if test_extract else None
        self.contract = load_contract(contract_path)
        self.policy = SitePolicy.model_validate(policy)
        self._train: _Rows | None = None
        self._test: _Rows | None = None
        self._prepared: tuple[tuple[float, int], tuple[_Rows, _Rows]] | None = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, Any] = {}
        self._joined_collective = False
        self.pinned = {k: bytes.fromhex(v) for k, v in (pinned or {}).items()}
        key = self.contract.cohort.partition
        self.window = Window(key, before_month) if key and before_month else None

    # -- bookkeeping -------------------------------------------------------------------
    def _audit(self, request: str, job_id: str | None, **params: Any) -> None:
        entry = {"time": time.time(), "site": self.site, "request": request, "job": job_id}
        entry.update({k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))})
        with audit_log_path(self.extract).open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _authorize(self, job_id: str, strategy: str, epsilon: float) -> dict[str, Any]:
        """The site's own policy: which strategies it serves, and epsilon per job."""
        if strategy not in self.policy.strategies:
            self._audit("refused", job_id, strategy=strategy, reason="strategy")
            raise BudgetError(f"site {self.site} refuses strategy {strategy!r} (site policy)")
        if epsilon > self.policy.max_epsilon_per_job + 1e-12:
            self._audit("refused", job_id, strategy=strategy, epsilon=epsilon, reason="epsilon")
            raise BudgetError(
                f"site {self.site} refuses epsilon {epsilon:g} per job "
                f"(site policy allows at most {self.policy.max_epsilon_per_job:g})"
            )
        return self._jobs.setdefault(
            job_id, {"strategy": strategy, "epsilon": epsilon, "releases": 0}
        )

    def pid(self) -> int:
        return os.getpid()

    def recycle(self) -> bool:
        """Forget the finished job's rows, so the same process can serve the federation's
        next job without paying again for its start (Ray's worker, Great Expectations'
        import and first run: seconds of CPU per site). What each job released stays
        on record (a finished job cannot release again). Returns False when this process
        should not serve again: it joined an XGBoost collective, whose native state a
        broken peer can leave stuck."""
        self._train = self._test = self._prepared = None
        self._audit("recycle", None)
        return not self._joined_collective

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    # -- validation and loading ---------------------------------------------------------
    def validate(
        self,
        unknown_columns: str = "fail",
        min_rows: int = 100,
        leakage_auc: float = 0.98,
        prepare: dict[str, Any] | None = None,
    ) -> ValidationReply:
        """Validate the extract here; only the redacted summary leaves.

        With `prepare` (the job's ``test_fraction``, ``seed`` and ``encoding``: "linear"
        or "tree"), a site whose extract passed also splits and encodes the rows it has
        just validated, keeping them for the job's ``load``: the extract is read once,
        and the job trains on exactly the rows that passed even if a file changes in
        between. Nothing more is returned."""
        from pipeline.validation import validate_table, validate_with_held_out

        self._audit("validate", None)
        self._prepared = None
        rules = {
            "site": self.site,
            "unknown_columns": unknown_columns,
            "min_rows": min_rows,
            "leakage_auc": leakage_auc,
            "window": self.window,
        }
        held = None
        if self.test_extract is None:
            summary, table = validate_table(self.extract, self.contract, **rules)
        else:
            summary, parts = validate_with_held_out(
                self.extract, self.test_extract, self.contract, **rules
            )
            table, held = parts if parts is not None else (None, None)
        if prepare is not None and table is not None:
            key = (float(prepare["test_fraction"]), int(prepare["seed"]))
            encoding = prepare.get("encoding", "linear")
            try:
                split = self._split(
                    table.to_pandas(), *key, held=None if held is None else held.to_pandas()
                )
                for rows in split:
                    rows.encoded(encoding)
                self._prepared = (key, split)
            except Exception:  # noqa: BLE001 - load reads again and reports the error
                self._prepared = None
            if encoding == "tree":
                # Imported now, not in xgb_train, where every rank of the collective
                # would wait for the slowest site's import.
                import pipeline.models.trees  # noqa: F401
        return ValidationReply(site=self.site, summary=summary.to_dict())

    def load(self, test_fraction: float, seed: int) -> SiteInfo:
        """Split the extract by a keyed hash of the patient key, so the split is stable
        across jobs and identical for every strategy (rows prepared by ``validate`` for
        the same split are used as they are). A site with a held-out extract trains on
        all of its extract and holds out that file's rows instead."""
        from pipeline.extract import read_frame

        self._audit("load", None, test_fraction=test_fraction, seed=seed)
        prepared, self._prepared = self._prepared, None
        key = (float(test_fraction), int(seed))
        if prepared is not None and prepared[0] == key:
            self._train, self._test = prepared[1]
        else:
            df = read_frame(self.extract, self.contract.arrow_schema, self.window)
            held = None
            if self.test_extract is not None:
                held = read_frame(self.test_extract, self.contract.arrow_schema, self.window)
            self._train, self._test = self._split(df, *key, held=held)
        n_train, n_test = len(self._train), len(self._test)
        if n_train == 0 or n_test == 0:
            raise DataError(f"site {self.site}: too few rows to split into train and test")
        return SiteInfo(
            site=self.site,
            rows=n_train + n_test,
            n_train=n_train,
            n_test=n_test,
            positives_train=int(self._train.y.sum()),
            partitions=self._partitions(),
        )

    def _partitions(self) -> tuple[str, ...]:
        """The values of the contract's partition key among the extract's files (the
        follow-up months it holds): file names, not rows."""
        from pipeline.extract import partition_values

        key = self.contract.cohort.partition
        return partition_values(self.extract, key, self.window) if key else ()

    def _split(
        self,
        df: pd.DataFrame,
        test_fraction: float,
        seed: int,
        held: pd.DataFrame | None = None,
    ) -> tuple[_Rows, _Rows]:
        """(train, test) rows, not yet encoded: `df` split by key, or, with the held-out
        extract's rows `held`, all of `df` and `held`."""
        from pipeline.splits import train_test

        train, test = train_test(df, self.contract, seed, test_fraction, held=held)
        return _Rows(*train, self.contract), _Rows(*test, self.contract)

    def partitions(self, before_month: str) -> PartitionList:
        """The extract's follow-up months: closed (before `before_month`) and open. File
        names only: nothing is read."""
        from pipeline.extract import partition_values

        self._audit("partitions", None, before=before_month)
        key = self.contract.cohort.partition
        values = partition_values(self.extract, key) if key else ()
        return PartitionList(
            site=self.site,
            closed=tuple(v for v in values if v < before_month),
            open=tuple(v for v in values if v >= before_month),
            node=self.node_id(),
        )

    def drift(
        self, drift_id: str, *, reference: list[str], current: list[str], secure: dict
    ) -> DriftReply:
        """Per-feature histograms of the rows in the `reference` months and in the
        `current` (new) months, masked for the secure sum under keys of `drift_id`, and
        this site's own PSI per feature (suppressed where a bin cannot hold 11 patients of
        each). Only those leave the site."""
        from pipeline.drift import histogram_vector, psi_by_feature
        from pipeline.extract import read_months

        key = self.contract.cohort.partition
        if not key:
            raise DataError(f"site {self.site}: the contract has no partition key to compare")
        schema = self.contract.arrow_schema
        ref = histogram_vector(read_months(self.extract, key, reference, schema), self.contract)
        cur = histogram_vector(read_months(self.extract, key, current, schema), self.contract)
        self._audit("drift", drift_id, reference=len(reference), current=len(current))
        masked = self._masked(drift_id, np.concatenate([ref, cur]), secure)
        return DriftReply(
            site=self.site, masked=masked.masked, psi=psi_by_feature(ref, cur, self.contract)
        )

    def _require_data(self) -> None:
        if self._train is None:
            raise DataError(f"site {self.site}: extract not loaded")

    # -- logistic regression -----------------------------------------------------------
    def logistic_gradient(
        self,
        job_id: str,
        weights: np.ndarray,
        *,
        strategy: str,
        epsilon: float,
        clip: float | None,
        noise_multiplier: float,
        rounds: int,
        round_: int,
        secure: dict | None = None,
        column_scale: np.ndarray | None = None,
        column_centre: np.ndarray | None = None,
        sampling_rate: float = 1.0,
        noise_shares: int = 1,
        collusion_threshold: int = 0,
    ) -> ModelUpdate | MaskedUpdate:
        """Sum of per-example log-loss gradients at `weights` (DP-SGD style, Abadi et al.
        2016): each example's gradient clipped to `clip`, Gaussian noise of std
        noise_multiplier * clip added once per round. The same noisy vector is reused if
        the round restarts, so a restart spends no extra privacy.

        With `column_scale` (from the job's private scale release) and `column_centre`
        (from the contract) the gradient is taken, clipped and noised in standardized
        coordinates, encoded columns less their centres divided by their scales, where
        `weights` then live. With `sampling_rate` below 1 each row takes
        part in the round with that probability, drawn from the operating system's
        randomness (Poisson sampling, as the accountant assumes). With `noise_shares`
        above 1 the site adds only its share of the noise if its policy accepts
        (:meth:`_release`)."""
        self._require_data()
        job = self._authorize(job_id, strategy, epsilon)
        cached = job.get("round_vector")
        if cached is None or cached[0] != round_:
            if job["releases"] >= rounds:
                raise BudgetError(
                    f"site {self.site}: job {job_id} asked for more rounds "
                    f"than it declared ({rounds})"
                )
            shares = self._accepted_shares(noise_shares, collusion_threshold, secure)
            self._hold_to_declared(job, "gradient", noise_multiplier, clip, rounds, shares)
            X, y = self._train.linear, self._train.y  # type: ignore[union-attr]
            if column_centre is not None:
                X = X - np.asarray(column_centre, dtype=np.float64)
            if column_scale is not None:
                X = X / np.asarray(column_scale, dtype=np.float64)
            if sampling_rate < 1.0:
                taken = np.random.default_rng().random(len(y)) < sampling_rate
                X, y = X[taken], y[taken]
            Xb = np.hstack([X, np.ones((len(X), 1))])
            per_example = Xb * (sigmoid(Xb @ weights) - y)[:, None]
            if noise_multiplier > 0:
                vector = self._release(per_example, clip, noise_multiplier, shares)
            else:
                vector = per_example.sum(axis=0)
            job["releases"] += 1
            job["round_vector"] = (round_, vector)
            self._audit(
                "logistic_gradient",
                job_id,
                round=round_,
                strategy=strategy,
                noise_multiplier=noise_multiplier,
                noise_shares=shares[0],
            )
        vector = job["round_vector"][1]
        return self._send(job_id, job, "gradient", vector, secure)

    def release_deviation(
        self,
        job_id: str,
        *,
        strategy: str,
        epsilon: float,
        noise_multiplier: float,
        bound: float,
        secure: dict | None = None,
        noise_shares: int = 1,
        collusion_threshold: int = 0,
    ) -> ModelUpdate | MaskedUpdate:
        """The job's one feature-scale release: the sum over training rows of each numeric
        column's absolute encoded value and of the (weighted) label, every row's vector
        clipped to `bound`, plus Gaussian noise of std noise_multiplier * bound
        (:mod:`pipeline.privacy.scales`).
        Allowed once per job, before any gradient round; a restart reuses the vector.
        `noise_shares` as in :meth:`logistic_gradient`."""
        from pipeline.privacy.scales import row_deviations

        self._require_data()
        job = self._authorize(job_id, strategy, epsilon)
        if "deviation" not in job:
            if job["releases"] > 0:
                raise BudgetError(
                    f"site {self.site}: job {job_id} asked for feature scales after training"
                )
            shares = self._accepted_shares(noise_shares, collusion_threshold, secure)
            self._hold_to_declared(job, "deviation", noise_multiplier, bound, 1, shares)
            rows = self._train
            deviations = row_deviations(rows.linear, rows.y, self.contract)  # type: ignore[union-attr]
            job["deviation"] = self._release(deviations, bound, noise_multiplier, shares)
            self._audit(
                "release_deviation",
                job_id,
                strategy=strategy,
                noise_multiplier=noise_multiplier,
                noise_shares=shares[0],
            )
        return self._send(job_id, job, "deviation", job["deviation"], secure)

    def _hold_to_declared(
        self,
        job: dict[str, Any],
        kind: str,
        noise_multiplier: float,
        bound: Any,
        count: int,
        shares: tuple[int, int] = (1, 0),
    ) -> None:
        """A job's first release of a kind fixes its noise, bound, count and noise shares
        (with the collusion threshold they were sized for): a later request with less
        noise, a larger bound, more releases or more shares (less noise from this site) is
        refused."""
        declared = job.setdefault("declared", {}).setdefault(
            kind, (noise_multiplier, bound, count, *shares)
        )
        sigma, clip, most, declared_shares, _ = declared
        if (
            noise_multiplier < sigma
            or shares[0] > declared_shares
            or (clip is not None and (bound is None or bound > clip))
        ):
            raise BudgetError(
                f"site {self.site}: a {kind} release with less noise or a larger bound "
                "than the job declared"
            )
        if count > most:
            raise BudgetError(f"site {self.site}: more {kind} releases than the job declared")

    # -- distributed noise (pipeline.privacy.distributed) ------------------------------
    def _accepted_shares(
        self, noise_shares: int, collusion_threshold: int, secure: dict | None
    ) -> tuple[int, int]:
        """(shares, collusion threshold) this site splits a release's noise by: the job's,
        when the site's policy accepts the job's threshold; otherwise (1, 0), the full
        noise."""
        shares = int(noise_shares)
        if shares <= 1 or not self.policy.accepts_shares(collusion_threshold):
            shares, collusion_threshold = 1, 0
        self._check_share_round(shares, collusion_threshold, secure)
        return shares, collusion_threshold

    def _check_share_round(self, shares: int, threshold: int, secure: dict | None) -> None:
        """A share of the noise goes only into a secure sum of at least shares + threshold
        sites: fewer, and the sum may hold fewer than `shares` honest shares."""
        if shares <= 1:
            return
        if secure is None:
            raise BudgetError(
                f"site {self.site}: a share of the noise is released only through secure "
                "aggregation, and this request has none"
            )
        if len(secure["roster"]) < shares + threshold:
            raise BudgetError(
                f"site {self.site}: its share of the noise needs a round of at least "
                f"{shares + threshold} sites ({shares} shares, tolerating {threshold} "
                f"colluding), this one has {len(secure['roster'])}"
            )

    @staticmethod
    def _release(
        per_example: np.ndarray, bound: float, sigma: float, shares: tuple[int, int]
    ) -> np.ndarray:
        from pipeline.privacy.distributed import noisy_clipped_share
        from pipeline.privacy.mechanisms import noisy_clipped_sum

        if shares[0] > 1:
            return noisy_clipped_share(per_example, bound, sigma, shares[0])
        return noisy_clipped_sum(per_example, bound, sigma)

    def _send(
        self, job_id: str, job: dict[str, Any], kind: str, vector: np.ndarray, secure: dict | None
    ) -> ModelUpdate | MaskedUpdate:
        """A release with the site's row count, masked when the round is a secure sum; a
        share of the noise is checked against every round it is sent in (a restarted
        round may have lost sites)."""
        self._check_share_round(*job["declared"][kind][3:], secure)
        n = len(self._train)  # type: ignore[arg-type]
        if secure is None:
            return ModelUpdate(site=self.site, vector=vector, n=n)
        return self._masked(job_id, np.append(vector, n), secure)

    def newton_statistics(
        self, job_id: str, weights: np.ndarray, *, secure: dict | None = None
    ) -> ModelUpdate | MaskedUpdate:
        """Non-private sufficient statistics of one Newton step of logistic regression at
        `weights`: the gradient sum and the Hessian sum (upper triangle) of the log-loss
        over the training rows. Their size depends only on the encoding."""
        self._require_data()
        self._authorize(job_id, "logistic", 0.0)
        X, y = self._train.linear, self._train.y  # type: ignore[union-attr]
        Xb = np.hstack([X, np.ones((len(X), 1))])
        p = sigmoid(Xb @ weights)
        gradient = Xb.T @ (p - y)
        hessian = (Xb * (p * (1 - p))[:, None]).T @ Xb
        vector = np.concatenate([gradient, hessian[np.triu_indices(len(weights))]])
        self._audit("newton_statistics", job_id)
        n = len(y)
        if secure is None:
            return ModelUpdate(site=self.site, vector=vector, n=n)
        return self._masked(job_id, np.append(vector, n), secure)

    def fit_dp_logistic(
        self,
        job_id: str,
        *,
        epsilon: float,
        delta: float,
        regularization: float,
        count_epsilon: float,
        clip_fraction: float,
        intercept: float,
    ) -> ModelUpdate:
        """One-shot DP logistic regression (:mod:`pipeline.privacy.objective`): the
        site's count of positives, Laplace-noised at `count_epsilon`, sets the intercept's
        offset; then the objective, perturbed by Gaussian noise that the site calibrates
        itself from the rest of `epsilon`, `delta` and `regularization`, is minimised on
        its rows in the contract's unit-ball coordinates (`clip_fraction`, `intercept`:
        :class:`pipeline.privacy.scales.UnitBallCoordinates`). Released once per job, as
        weights over the encoder's columns."""
        from pipeline.privacy.objective import noisy_positive_count, perturbed_logistic
        from pipeline.privacy.scales import UnitBallCoordinates

        self._require_data()
        job = self._authorize(job_id, "dp-logistic", epsilon)
        if job["releases"] >= 1:
            raise BudgetError(f"site {self.site}: job {job_id} already released its model")
        if not 0 < count_epsilon < epsilon:
            raise BudgetError(f"site {self.site}: the count's epsilon must be below the job's")
        X, y = self._train.linear, self._train.y  # type: ignore[union-attr]
        coords = UnitBallCoordinates.from_contract(
            self.contract, clip_fraction=clip_fraction, intercept=intercept
        )
        job["releases"] += 1
        positives = noisy_positive_count(y, count_epsilon)
        offset = math.log(positives / (len(y) - positives))
        w = perturbed_logistic(
            coords.rows(X),
            y,
            epsilon=epsilon - count_epsilon,
            delta=delta,
            regularization=regularization,
            offset=offset,
        )
        self._audit(
            "fit_dp_logistic", job_id, epsilon=epsilon, delta=delta, regularization=regularization
        )
        return ModelUpdate(site=self.site, vector=coords.to_encoder_weights(w, offset), n=len(y))

    def fit_local_logistic(self) -> ModelUpdate:
        """A local-only, non-private model: the baseline a site would have on its own.
        Its parameters are released only to compare strategies in benchmarks."""
        from sklearn.linear_model import LogisticRegression

        self._require_data()
        X, y = self._train.linear, self._train.y  # type: ignore[union-attr]
        model = LogisticRegression(max_iter=2000).fit(X, y)
        self._audit("fit_local_logistic", None)
        return ModelUpdate(
            site=self.site, vector=np.append(model.coef_.ravel(), model.intercept_), n=len(y)
        )

    # -- federated XGBoost --------------------------------------------------------------
    def xgb_train(
        self,
        job_id: str,
        *,
        env: dict[str, Any],
        params: dict[str, Any],
        num_boost_round: int,
        max_bin: int,
        early_stopping_rounds: int,
        valid_fraction: float,
        seed: int,
        tls_files: dict[str, bytes] | None = None,
    ) -> BoosterReply:
        """Join the job's XGBoost collective as one worker and return the global booster.

        The site quantizes its rows on the contract's grid (never on its own sketch) and
        early-stops on the federated log-loss over a deterministic validation subset of
        its training rows. `tls_files` carries the job's certificates for the federated
        communicator (key -> PEM bytes, for the `env` entries naming files); they are
        written to a private directory of this site and deleted after training."""
        import shutil
        import tempfile

        from pipeline.models.trees import train_worker
        from pipeline.splits import validation_mask

        self._require_data()
        self._authorize(job_id, "xgboost", 0.0)
        self._joined_collective = True
        self._audit(
            "xgb_train",
            job_id,
            communicator=str(env.get("dmlc_communicator", "")),
            rounds=num_boost_round,
        )
        X, y = self._train.tree, self._train.y  # type: ignore[union-attr]
        valid = validation_mask(len(y), seed, valid_fraction)
        tls_dir = tempfile.mkdtemp(prefix="xgb-tls-")  # mode 0700
        try:
            env = dict(env)
            for key, pem in (tls_files or {}).items():
                path = Path(tls_dir) / key
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
                env[key] = str(path)
            with printed_to_debug(log, f"site {self.site}, xgboost"):
                raw = train_worker(
                    X[~valid],
                    y[~valid].astype(np.float64),
                    X_valid=X[valid],
                    y_valid=y[valid].astype(np.float64),
                    ref_params={"contract": self.contract, "max_bin": max_bin},
                    params=params,
                    num_boost_round=num_boost_round,
                    communicator_env=env,
                    early_stopping_rounds=early_stopping_rounds,
                )
        finally:
            shutil.rmtree(tls_dir, ignore_errors=True)
        return BoosterReply(site=self.site, booster=raw)

    # -- secure aggregation ------------------------------------------------------------
    def identity_key(self) -> str:
        """The site's identity public key (hex), for pinning in the config."""
        from pipeline.federation.identity import load_or_create_identity, public_hex

        return public_hex(load_or_create_identity(self.extract))

    def public_key(self, job_id: str) -> PublicKeyReply:
        """A fresh per-job X25519 key, signed with the site's long-lived identity."""
        from pipeline.federation.identity import load_or_create_identity
        from pipeline.federation.secure_sum import SiteKeys

        keys = SiteKeys.generate(self.site, load_or_create_identity(self.extract))
        self._keys[job_id] = keys
        self._audit("public_key", job_id)
        return PublicKeyReply(site=self.site, signed_key=keys.signed_public_key(job_id))

    def _masked(self, job_id: str, vector: np.ndarray, secure: dict) -> MaskedUpdate:
        from pipeline.federation.secure_sum import mask_update, verify_roster

        pinned = self.pinned or {k: bytes.fromhex(v) for k, v in secure["pinned"].items()}
        roster = verify_roster(secure["roster"], pinned, job_id)
        masked = mask_update(
            vector, self._keys[job_id], roster, job_id, secure["round"], secure["attempt"]
        )
        return MaskedUpdate(site=self.site, masked=masked)

    # -- evaluation --------------------------------------------------------------------
    def evaluate_models(
        self, eval_id: str, models: dict[str, dict], *, secure: dict
    ) -> MaskedEvaluation:
        """Evaluation statistics of every model in `models` (name -> payload) on this
        site's held-out rows, for the whole cohort and each of the contract's subgroups,
        masked for the secure sum (keys from ``public_key(eval_id)``): the coordinator sees
        only the pooled statistics. Each model's own AUC here is released as a number
        only when both classes hold at least 11 patients."""
        from pipeline.evaluation import site_auc, stats_vector

        self._require_data()
        rows = self._test
        groups = list(self.contract.subgroup_masks(rows.frame).values())  # type: ignore[union-attr]
        vectors, aucs = [], {}
        for name, model in models.items():
            p = self._predict(model, rows)  # type: ignore[arg-type]
            vectors.append(stats_vector(rows.y, p, groups))  # type: ignore[union-attr]
            aucs[name] = site_auc(rows.y, p)  # type: ignore[union-attr]
        self._audit("evaluate_models", eval_id, models=",".join(models))
        masked = self._masked(eval_id, np.concatenate(vectors), secure)
        return MaskedEvaluation(site=self.site, masked=masked.masked, auc=aucs)

    def evaluate(self, model: dict, split: str = "test") -> EvalStats:
        """Plain per-site score histograms of a model, for benchmarks that compare a
        site's own model with the federation's (a job evaluates with
        :meth:`evaluate_models`, whose statistics only the secure sum reveals)."""
        self._require_data()
        rows = self._test if split == "test" else self._train
        self._audit("evaluate", None, kind=model["kind"], split=split)
        return eval_stats(self.site, rows.y, self._predict(model, rows))  # type: ignore[union-attr]

    def evaluate_pair(self, model_a: dict, model_b: dict, bins: int = 100) -> JointStats:
        """Joint (label, bin a, bin b) counts of two models on the held-out rows."""
        self._require_data()
        from pipeline.evaluation import joint_counts

        rows = self._test
        p_a, p_b = self._predict(model_a, rows), self._predict(model_b, rows)  # type: ignore[arg-type]
        counts = joint_counts(rows.y, p_a, p_b, bins)  # type: ignore[union-attr]
        self._audit("evaluate_pair", None, kind_a=model_a["kind"], kind_b=model_b["kind"])
        return JointStats(site=self.site, counts=counts)

    @staticmethod
    def _predict(model: dict, rows: _Rows) -> np.ndarray:
        if model["kind"] == "logistic":
            w = np.asarray(model["weights"])
            return sigmoid(rows.linear @ w[:-1] + w[-1])
        if model["kind"] == "xgboost":
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(bytearray(model["booster"]))
            return booster.inplace_predict(rows.tree)
        raise ValueError(f"unknown model kind {model['kind']!r}")
