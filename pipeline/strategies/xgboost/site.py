"""A site's side of federated XGBoost: one worker of the job's collective, on the
contract's bin grid."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.console import printed_to_debug
from pipeline.models.digest import payload_digest
from pipeline.protocol.messages import BoosterReply, MaskedUpdate, ModelUpdate
from pipeline.splits import validation_mask
from pipeline.strategies.base import SiteHandler

log = logging.getLogger(__name__)


class XGBoostSite(SiteHandler):
    requests = frozenset({"label_counts", "xgb_train"})

    @classmethod
    def prepare(cls) -> None:
        """XGBoost imported now, not in :meth:`xgb_train`, where every rank of the
        collective would wait for the slowest site's import."""
        import pipeline.models.trees  # noqa: F401

    def label_counts(
        self, job_id: str, *, secure: dict | None = None
    ) -> MaskedUpdate | ModelUpdate:
        """The site's count of positive training rows, with its row count, for the job's
        base score: only through the secure sum (or in the clear where the site's policy
        allows it), once per job."""
        rows = self.site.train_rows()
        self.site.authorize(job_id, self.strategy, 0.0)
        self.site.answer_once_at(job_id, np.zeros(1))
        self.site.audit("label_counts", job_id)
        return self.site.send(job_id, np.array([float(rows.y.sum())]), len(rows), secure)

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
        from pipeline.models.trees import train_worker

        rows = self.site.train_rows()
        self.site.authorize(job_id, self.strategy, 0.0)
        self.site.check_roster(job_id, int(env.get("federated_world_size", 0)) or None)
        self.site.not_reusable()
        self.site.audit(
            "xgb_train",
            job_id,
            communicator=str(env.get("dmlc_communicator", "")),
            rounds=num_boost_round,
        )
        X, y = rows.tree, rows.y
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
            with printed_to_debug(log, f"site {self.site.name}, xgboost"):
                raw = train_worker(
                    X[~valid],
                    y[~valid].astype(np.float64),
                    X_valid=X[valid],
                    y_valid=y[valid].astype(np.float64),
                    ref_params={"contract": self.site.contract, "max_bin": max_bin},
                    params=params,
                    num_boost_round=num_boost_round,
                    communicator_env=env,
                    early_stopping_rounds=early_stopping_rounds,
                )
        finally:
            shutil.rmtree(tls_dir, ignore_errors=True)
        # The site holds the job's model itself: only this booster can be fixed as it.
        self.site.held[job_id] = payload_digest({"booster": raw})
        return BoosterReply(site=self.site.name, booster=raw)
