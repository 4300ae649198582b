"""The site: one Ray actor per hospital, holding its extract and answering with aggregates.

The actor is the only code that reads the site's rows. Every method checks the request
against the site's own policy, appends the request to the site's audit log, and returns
an allow-listed reply (pipeline.federation.messages). Heavy libraries are imported inside
the methods that need them so a site that only validates does not pay for XGBoost.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import SitePolicy
from pipeline.contract import load_contract
from pipeline.errors import BudgetError, DataError
from pipeline.federation.messages import (
    BoosterReply,
    EvalStats,
    JointStats,
    MaskedUpdate,
    ModelUpdate,
    PublicKeyReply,
    SiteInfo,
    ValidationReply,
)

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
    """

    def __init__(
        self,
        site: str,
        extract: str,
        contract_path: str,
        policy: dict,
        pinned: dict[str, str] | None = None,
    ) -> None:
        self.site = site
        self.extract = Path(extract)
        self.contract = load_contract(contract_path)
        self.policy = SitePolicy.model_validate(policy)
        self._train: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, Any] = {}
        self.pinned = {k: bytes.fromhex(v) for k, v in (pinned or {}).items()}

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

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    # -- validation and loading ---------------------------------------------------------
    def validate(
        self, unknown_columns: str = "fail", min_rows: int = 100, leakage_auc: float = 0.98
    ) -> ValidationReply:
        from pipeline.validation import validate_extract

        self._audit("validate", None)
        summary = validate_extract(
            self.extract,
            self.contract,
            site=self.site,
            unknown_columns=unknown_columns,
            min_rows=min_rows,
            leakage_auc=leakage_auc,
        )
        return ValidationReply(site=self.site, summary=summary.to_dict())

    def load(self, test_fraction: float, seed: int) -> SiteInfo:
        """Read the extract and split it by a keyed hash of the patient key, so the split
        is stable across jobs and identical for every strategy."""
        from pipeline.extract import read_frame
        from pipeline.features import FeatureEncoder
        from pipeline.splits import held_out_mask

        self._audit("load", None, test_fraction=test_fraction, seed=seed)
        df = read_frame(self.extract, self.contract.arrow_schema)
        is_test = held_out_mask(df[self.contract.key.name], seed, test_fraction)
        enc = FeatureEncoder(self.contract)
        X, T, y = enc.transform(df), enc.tree_matrix(df), self.contract.labels(df)
        self._train = (X[~is_test], T[~is_test], y[~is_test])
        self._test = (X[is_test], T[is_test], y[is_test])
        if len(self._train[2]) == 0 or len(self._test[2]) == 0:
            raise DataError(f"site {self.site}: too few rows to split into train and test")
        return SiteInfo(
            site=self.site,
            rows=len(df),
            n_train=int((~is_test).sum()),
            n_test=int(is_test.sum()),
            positives_train=int(y[~is_test].sum()),
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
    ) -> ModelUpdate | MaskedUpdate:
        """Sum of per-example log-loss gradients at `weights` (DP-SGD style, Abadi et al.
        2016): each example's gradient clipped to `clip`, Gaussian noise of std
        noise_multiplier * clip added once per round. The same noisy vector is reused if
        the round restarts, so a restart spends no extra privacy."""
        from pipeline.privacy.mechanisms import noisy_clipped_sum

        self._require_data()
        job = self._authorize(job_id, strategy, epsilon)
        cached = job.get("round_vector")
        if cached is None or cached[0] != round_:
            if job["releases"] >= rounds:
                raise BudgetError(
                    f"site {self.site}: job {job_id} asked for more rounds "
                    f"than it declared ({rounds})"
                )
            X, _, y = self._train  # type: ignore[misc]
            Xb = np.hstack([X, np.ones((len(X), 1))])
            per_example = Xb * (sigmoid(Xb @ weights) - y)[:, None]
            if noise_multiplier > 0:
                vector = noisy_clipped_sum(per_example, clip, noise_multiplier)
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
            )
        vector = job["round_vector"][1]
        n = len(self._train[2])  # type: ignore[index]
        if secure is None:
            return ModelUpdate(site=self.site, vector=vector, n=n)
        return self._masked(job_id, np.append(vector, n), secure)

    def fit_dp_logistic(self, job_id: str, *, epsilon: float) -> ModelUpdate:
        """One-shot diffprivlib logistic regression (Chaudhuri et al. 2011 objective
        perturbation) with data_norm from the contract, never from the data."""
        import warnings

        from diffprivlib.models import LogisticRegression

        from pipeline.features import FeatureEncoder

        self._require_data()
        job = self._authorize(job_id, "dp-logistic", epsilon)
        if job["releases"] >= 1:
            raise BudgetError(f"site {self.site}: job {job_id} already released its model")
        X, _, y = self._train  # type: ignore[misc]
        data_norm = FeatureEncoder(self.contract).data_norm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # sklearn lbfgs iterations
            model = LogisticRegression(epsilon=epsilon, data_norm=data_norm, max_iter=500)
            model.fit(X, y)
        job["releases"] += 1
        self._audit("fit_dp_logistic", job_id, epsilon=epsilon)
        vector = np.append(model.coef_.ravel(), model.intercept_)
        return ModelUpdate(site=self.site, vector=vector, n=len(y))

    def fit_local_logistic(self) -> ModelUpdate:
        """A local-only, non-private model: the baseline a site would have on its own.
        Its parameters are released only to compare strategies in benchmarks."""
        from sklearn.linear_model import LogisticRegression

        self._require_data()
        X, _, y = self._train  # type: ignore[misc]
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
        self._audit(
            "xgb_train",
            job_id,
            communicator=str(env.get("dmlc_communicator", "")),
            rounds=num_boost_round,
        )
        X, y = self._train[1], self._train[2]  # type: ignore[index]
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
    def evaluate(self, model: dict, split: str = "test") -> EvalStats:
        """Metric sufficient statistics of a global model on this site's held-out rows."""
        self._require_data()
        X, T, y = self._test if split == "test" else self._train  # type: ignore[misc]
        self._audit("evaluate", None, kind=model["kind"], split=split)
        return eval_stats(self.site, y, self._predict(model, X, T))

    def evaluate_pair(self, model_a: dict, model_b: dict, bins: int = 100) -> JointStats:
        """Joint (label, bin a, bin b) counts of two models on the held-out rows."""
        self._require_data()
        from pipeline.evaluation import joint_counts

        X, T, y = self._test  # type: ignore[misc]
        counts = joint_counts(y, self._predict(model_a, X, T), self._predict(model_b, X, T), bins)
        self._audit("evaluate_pair", None, kind_a=model_a["kind"], kind_b=model_b["kind"])
        return JointStats(site=self.site, counts=counts)

    @staticmethod
    def _predict(model: dict, X: np.ndarray, T: np.ndarray) -> np.ndarray:
        if model["kind"] == "logistic":
            w = np.asarray(model["weights"])
            return sigmoid(X @ w[:-1] + w[-1])
        if model["kind"] == "xgboost":
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(bytearray(model["booster"]))
            return booster.inplace_predict(T)
        raise ValueError(f"unknown model kind {model['kind']!r}")
