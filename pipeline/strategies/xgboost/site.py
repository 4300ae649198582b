"""A site's side of federated XGBoost: one worker of the job's collective, on the
contract's bin grid."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.console import printed_to_debug
from pipeline.errors import BudgetError
from pipeline.models.digest import payload_digest
from pipeline.protocol.messages import BoosterReply, MaskedUpdate, ModelUpdate
from pipeline.scratch import scratch_prefix
from pipeline.splits import validation_mask
from pipeline.strategies.base import SiteHandler

if TYPE_CHECKING:
    from pipeline.protocol.collective_masks import CollectiveMasks
    from pipeline.strategies.xgboost.relay import MaskingRelay

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
        its training rows. Under the ``secure`` communicator its worker dials the site's
        own masking relay (:mod:`~pipeline.strategies.xgboost.relay`), which masks every
        SUM before it leaves; a site whose policy requires secure aggregation joins no
        other (:meth:`pipeline.site.boundary.Boundary.collective`). `tls_files` carries
        the job's certificates (key -> PEM bytes, for the `env` entries naming files):
        the relay's TLS context reads them from a private directory that exists only
        while it does; a worker that dials the aggregator itself reads them from a
        private directory deleted after training."""
        from pipeline.models.trees import train_worker

        rows = self.site.train_rows()
        self.site.authorize(job_id, self.strategy, 0.0)
        mode = str(env.get("dmlc_communicator", ""))
        world = int(env.get("federated_world_size", 0)) or None
        rank = int(env.get("federated_rank", 0))
        self.site.check_roster(job_id, world)
        sites = [str(s) for s in env.get("relay_sites", [])]
        if mode == "secure" and (len(sites) != world or sites[rank : rank + 1] != [self.site.name]):
            raise BudgetError(
                f"site {self.site.name}: the collective's ranks {sites} do not give it rank {rank}"
            )
        attempt = str(env.get("relay_attempt", ""))
        masks = self.site.collective(job_id, mode, sites, attempt)
        self.site.not_reusable()
        self.site.audit("xgb_train", job_id, communicator=mode, rounds=num_boost_round)
        X, y = rows.tree, rows.y
        valid = validation_mask(len(y), seed, valid_fraction)
        with contextlib.ExitStack() as stack:
            relay = None
            if masks is None:
                env = _with_tls_files(env, tls_files or {}, stack, job_id)
            else:
                relay = stack.enter_context(_relay(env, tls_files or {}, masks, rank, job_id))
                env = {
                    "dmlc_communicator": "federated",
                    "federated_server_address": relay.address,  # loopback, in this process
                    "federated_world_size": world,
                    "federated_rank": rank,
                }
            try:
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
            except Exception as exc:
                if relay is not None and relay.refusal:
                    raise BudgetError(
                        f"site {self.site.name}'s relay refused {relay.refusal}"
                    ) from exc
                raise
            finally:
                if relay is not None:
                    self.site.audit(
                        "xgb_collective",
                        job_id,
                        mode=mode,
                        attempt=attempt,
                        masked=relay.counts["masked"],
                        clear=relay.counts["clear"],
                        refused=relay.counts["refused"],
                        mask_s=round(relay.mask_s, 3),
                    )
        # The site holds the job's model itself: only this booster can be fixed as it.
        self.site.held[job_id] = payload_digest({"booster": raw})
        return BoosterReply(site=self.site.name, booster=raw)


def _with_tls_files(
    env: dict[str, Any], tls_files: dict[str, bytes], stack: contextlib.ExitStack, job_id: str
) -> dict[str, Any]:
    """`env` with its certificate entries pointing at files of a private directory
    (mode 0700, each file 0600) that `stack` deletes."""
    tls_dir = tempfile.mkdtemp(prefix=scratch_prefix(job_id, "xgb-tls"))  # mode 0700
    stack.callback(shutil.rmtree, tls_dir, True)
    env = dict(env)
    for key, pem in tls_files.items():
        path = Path(tls_dir) / key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        env[key] = str(path)
    return env


@contextlib.contextmanager
def _relay(
    env: dict[str, Any],
    tls_files: dict[str, bytes],
    masks: CollectiveMasks,
    rank: int,
    job_id: str,
) -> Iterator[MaskingRelay]:
    """The site's masking relay to the aggregator of `env`, for the attempt's `masks`.
    Its TLS context reads the certificates from a private directory that is deleted as
    soon as they are read."""
    from pipeline.strategies.xgboost.masked_link import client_context
    from pipeline.strategies.xgboost.relay import MaskingRelay

    with contextlib.ExitStack() as files:
        paths = _with_tls_files({}, tls_files, files, job_id)
        credentials = client_context(
            Path(paths["federated_server_cert_path"]),
            Path(paths["federated_client_key_path"]),
            Path(paths["federated_client_cert_path"]),
        )
    relay = MaskingRelay(
        str(env["federated_server_address"]),
        credentials,
        rank,
        masks,
        int(env["relay_scale"]),
        float(env["relay_deadline_s"]),
    )
    with relay:
        yield relay
