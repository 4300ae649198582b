"""What a killed run left behind, found and put right by the next one.

A job writes a marker in the federation's state folder when it starts (``running/<job
id>.json``: its process, host, stage and the retraining it belongs to) and deletes it
when it ends in any Python way. SIGKILL leaves the marker. The next process to take the
federation's lock knows that every marker it finds is a dead job's (a live one would
hold the lock), and for each (:func:`recover_jobs`):

- asks every site to end the job: the site gives back a reservation no noise was drawn
  under, keeps a released one, writes the job's end in its audit log and deletes the
  job's key files on its machine (:meth:`pipeline.site.boundary.Boundary.end_job`);
- settles the coordinator's ledger with the sites' answers (a site that does not answer
  keeps its reservation counted at both ends: spent, as far as anyone can tell);
- marks the job's MLflow run FAILED with the reason, and a version it registered before
  the gate decided as killed;
- finishes or undoes a champion move it left half done
  (:func:`pipeline.champion.repair_alias_move`);
- deletes its temporary files on this machine;
- writes what it found on the marker of the retraining run the job belonged to, which
  that run's next start turns into its audit record.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.config import FederationConfig
from pipeline.federation.runtime import SiteRuntime
from pipeline.privacy.ledger import RELEASED, UNUSED, PrivacyLedger
from pipeline.scratch import remove_scratch


class Journal:
    """Markers of the runs under way in a federation, one JSON file each, beside the
    coordinator's ledger. Written whole and renamed into place, so a kill mid-write
    leaves the previous marker or none, never half of one."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.folder = cfg.privacy.ledger.parent / "running"

    def start(self, key: str, kind: str, **facts: Any) -> None:
        self._write(
            key,
            {
                "id": key,
                "kind": kind,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                **facts,
            },
        )

    def note(self, key: str, **facts: Any) -> None:
        """Add `facts` to a run's marker (nothing when it has none)."""
        marker = self.read(key)
        if marker is not None:
            self._write(key, {**marker, **facts})

    def end(self, key: str) -> None:
        (self.folder / f"{key}.json").unlink(missing_ok=True)

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / f"{key}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def left(self, kind: str) -> list[dict[str, Any]]:
        """The markers of `kind` still here, oldest first."""
        markers = [self.read(p.stem) for p in sorted(self.folder.glob("*.json"))]
        found = [m for m in markers if m is not None and m.get("kind") == kind]
        return sorted(found, key=lambda m: m.get("started", ""))

    def _write(self, key: str, marker: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.tmp"
        tmp.write_text(json.dumps(marker, default=str))
        os.replace(tmp, self.folder / f"{key}.json")


@dataclass(frozen=True)
class Recovered:
    """What the next run found of one killed job and did about it. ``spend``: each
    asked site's status for the job's reservation (``released``, ``unused``, ``none``:
    it held none; ``no answer``: it stays reserved)."""

    job_id: str
    reason: str
    spend: dict[str, str]
    run_id: str | None
    version: str | None
    files: int

    @property
    def released(self) -> bool:
        """Whether anything may have left a site under the job's privacy budget."""
        return any(s in (RELEASED, "no answer") for s in self.spend.values())


def end_job(cfg: FederationConfig, runtime: SiteRuntime, job_id: str) -> None:
    """Tell the job's sites it ended and settle the coordinator's ledger with what each
    says of its own reservation. Never raises: it runs as a job unwinds, and must not
    hide why it did (a site not told keeps its reservation, counted at both ends)."""
    with contextlib.suppress(Exception):
        _end_at_sites(cfg, runtime, job_id)


def _end_at_sites(cfg: FederationConfig, runtime: SiteRuntime, job_id: str) -> dict[str, str]:
    """Each site's answer on the job's end (its own ledger's status, "no answer" for a
    site that gave none), with the coordinator's ledger settled to match."""
    replies = runtime.call("finish", job_id, drop_failed=False, timeout_s=10.0)
    spend = {site: reply.spend or "none" for site, reply in replies.ok.items()}
    spend.update({site: "no answer" for site in replies.failed})
    _settle(cfg, job_id, spend)
    return spend


def recover_jobs(
    cfg: FederationConfig, runtime: SiteRuntime, say: Callable[[str], None]
) -> list[Recovered]:
    """Put right what every killed job of this federation left (see the module
    docstring). Call it holding the federation's lock, before starting anything."""
    journal = Journal(cfg)
    found = []
    for marker in journal.left("job"):
        job_id = marker["id"]
        stage = marker.get("stage", "start")
        reason = (
            f"killed during {stage}: process {marker['pid']} on {marker['host']} ended "
            f"without finishing job {job_id}"
        )
        spend = _end_at_sites(cfg, runtime, job_id)
        run_id, version = _fail_run(cfg, job_id, reason)
        files = len(remove_scratch(job_id))
        recovered = Recovered(job_id, reason, spend, run_id, version, files)
        if marker.get("retrain_run"):
            retrain = journal.read(marker["retrain_run"]) or {}
            facts = {**asdict(recovered), "released": recovered.released}
            jobs = [*retrain.get("jobs", []), {**facts, "strategy": marker.get("strategy")}]
            journal.note(marker["retrain_run"], jobs=jobs)
        journal.end(job_id)
        found.append(recovered)
        say(f"recovered {reason}: " + ", ".join(f"{s} {v}" for s, v in spend.items()))
    if found:
        _repair_champion(cfg)
    return found


def _settle(cfg: FederationConfig, job_id: str, spend: Mapping[str, str]) -> None:
    """The coordinator's ledger follows each site's own: a spend a site gave back is
    given back here too; one it released, or did not answer about, stays counted."""
    ledger = PrivacyLedger(cfg.privacy.ledger)
    for site, status in spend.items():
        if status in (RELEASED, UNUSED):
            ledger.settle(job_id, site, status)


def _fail_run(cfg: FederationConfig, job_id: str, reason: str) -> tuple[str | None, str | None]:
    """Mark the killed job's run FAILED with `reason` (it is named after the job), and a
    version it registered as never decided on. Returns (run id, version)."""
    from pipeline.registry import registry_client

    client = registry_client(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment or cfg.federation)
    if experiment is None:
        return None, None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{job_id}'"
    )
    if not runs:
        return None, None
    run = runs[0]
    if run.info.status == "RUNNING":
        client.set_tag(run.info.run_id, "failure_reason", reason)
        client.log_text(run.info.run_id, reason, "failure_reason.txt")
        client.set_terminated(run.info.run_id, "FAILED")
    version = None
    for mv in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
        version = str(mv.version)
        if "gate.decision" not in (mv.tags or {}):
            client.set_model_version_tag(mv.name, version, "gate.decision", "killed")
            client.set_model_version_tag(mv.name, version, "gate.summary", reason)
    return run.info.run_id, version


def _repair_champion(cfg: FederationConfig) -> None:
    from pipeline.champion import repair_alias_move
    from pipeline.registry import registry_client

    repair_alias_move(registry_client(cfg.tracking_uri), cfg.mlflow.model_name)
