"""`pipeline retrain` killed with SIGKILL at every point a retraining passes
(:data:`pipeline.failpoints.POINTS`), one run after another as nights go: after each
kill the lock is free, and the next run (itself stopped at the next point) has left no
RUNNING run, the ledgers agreeing with what the sites released, the champion where it
was or fully moved, and the killed run's audit record with its months retried or spent.
The last run completes and does the right thing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from support.federation import make_config

from pipeline.champion import CHAMPION, MOVE_TAG, PREVIOUS_CHAMPION, alias_version
from pipeline.config import load_config
from pipeline.failpoints import POINTS, STOP_AT
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.retrain import KILLED, LOCKED, NOTHING_NEW, TRAINED, audit_path, run_retrain
from pipeline.stages.promotion import promote
from pipeline.stages.state_lock import FederationLock, lock_path
from pipeline.synth import append_month, synthesize

pytestmark = pytest.mark.slow
PIPELINE = str(Path(sys.executable).parent / "pipeline")


class Night:
    """One `pipeline retrain` process, stopped at a point for the test to kill it."""

    def __init__(self, config: Path, log: Path, stop_at: str, ray_address: str) -> None:
        # It joins the tests' Ray (a killed driver's actors go with it); Ray's own
        # start is not what is tested here.
        env = {**os.environ, STOP_AT: stop_at, "RAY_AUTH_MODE": "token"}
        self.log = log
        command = [PIPELINE, "retrain", "--config", str(config), "--model", "dp-fedavg"]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [*command, "--ray-address", ray_address],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def stopped(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"ended before its stop point:\n{self.said()}"
            state = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "T":
                return
            time.sleep(0.2)
        raise AssertionError(f"never reached its stop point:\n{self.said()}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def said(self) -> str:
        return self.log.read_text()


def _records(cfg) -> list[dict]:
    return [json.loads(line) for line in audit_path(cfg).read_text().splitlines()]


def _runs(cfg) -> dict[str, object]:
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return {}
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _ledgers_agree(cfg, live: str | None = None) -> None:
    """Every row of the coordinator's ledger says what the site's own ledger says, and a
    site's counted spend is exactly what it released (nothing reserved is left but the
    `live` job's, of the night stopped now)."""
    coordinator = PrivacyLedger(cfg.privacy.ledger)
    for site in cfg.sites:
        own = {
            e["job_id"]: e["status"]
            for e in PrivacyLedger(site.path.parent / f"{site.path.name}.ledger.sqlite").entries()
            if e["job_id"] != live
        }
        seen = {
            e["job_id"]: e["status"] for e in coordinator.entries(site.name) if e["job_id"] != live
        }
        assert seen == own, (site.name, seen, own)
        assert "reserved" not in own.values(), (site.name, own)


def _lock_is_free(cfg) -> None:
    with FederationLock(lock_path(cfg), "check") as lock:
        assert lock.first


def test_retrain_killed_at_every_point_leaves_nothing_inconsistent(
    ray_session, tmp_path: Path
) -> None:
    base, _ = synthesize(tmp_path / "data", sites=3, rows=4500, seed=8, until="2026-06")
    # A gate that promotes every model: the alias moves whenever a night gets that far.
    gate = {"auc_floor": 0.5, "auc_margin": 1.0, "calibration_slope": [0.01, 100]}
    config = make_config(base, tmp_path, training={"rounds": 5}, gate=gate)
    cfg = load_config(config)
    client = mlflow.MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    name = cfg.mlflow.model_name
    killed: list[tuple[str, str]] = []  # (point, job id) of each killed night
    survived = 0

    address = ray_session.get_runtime_context().gcs_address

    def night(stop_at: str) -> Night:
        return Night(config, tmp_path / f"night-{len(killed)}-{stop_at}.log", stop_at, address)

    def check_recovered(point: str, job: str | None, live: str | None = None) -> None:
        """What the night killed at `point` left, as the next night (stopped now) found
        it: its run FAILED, its audit record, the ledgers agreeing."""
        record = [r for r in _records(cfg) if r["status"] == "killed"][-1]
        assert record["exit_code"] == KILLED
        spent = point not in ("validation", "reservation")
        assert record["months"] == ("spent" if spent else "retried"), (point, record)
        assert ("seen" in record) == spent
        if job is not None:
            for site in cfg.sites:  # each site wrote the end of the job it was not told of
                log = site.path.parent / f"{site.path.name}.audit.jsonl"
                ends = [
                    e
                    for e in map(json.loads, log.read_text().splitlines())
                    if e["request"] == "job_end" and e["job"] == job
                ]
                assert [e["orphaned"] for e in ends] == [True], (site.name, ends)
                assert ends[0]["spend"] == (
                    "released" if spent else {"validation": "none", "reservation": "unused"}[point]
                )
            run = _runs(cfg)[job]
            assert run.info.status == "FAILED", (point, run.info.status)
            stage = "registration" if point == "alias" else point  # the move is registration's
            assert f"killed during {stage}" in run.data.tags["failure_reason"]
        _ledgers_agree(cfg, live)
        running = [n for n, r in _runs(cfg).items() if r.info.status == "RUNNING"]
        assert len(running) <= 1, running  # only the stopped night's own

    def job_of(n: Night) -> str | None:
        marker = list((cfg.privacy.ledger.parent / "running").glob("dp-fedavg-*.json"))
        return marker[0].stem if marker else None

    def kill(n: Night, point: str) -> None:
        nonlocal survived
        job = job_of(n)
        n.kill()
        _lock_is_free(cfg)
        killed.append((point, job or ""))
        survived += 1

    # Validation and reservation: nothing released, the months are retried.
    first = night("validation")
    first.stopped()
    kill(first, "validation")

    second = night("reservation")
    second.stopped()
    check_recovered("validation", killed[-1][1] or None, job_of(second))
    reserved = {e["site"]: e["status"] for e in PrivacyLedger(cfg.privacy.ledger).entries()}
    assert reserved and set(reserved.values()) == {"reserved"}
    # While a night holds the lock, another night and a rollback are refused.
    assert run_retrain(cfg).code == LOCKED
    refused = subprocess.run(
        [PIPELINE, "rollback", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "rollback did nothing" in refused.stderr, refused.stderr
    kill(second, "reservation")

    third = night("training")
    third.stopped()
    check_recovered("reservation", killed[-1][1], job_of(third))
    given_back = PrivacyLedger(cfg.privacy.ledger).entries()
    assert {e["status"] for e in given_back if e["job_id"] == killed[-1][1]} == {"unused"}
    kill(third, "training")

    # From training on, noise has left the sites: the months are spent, so the next
    # night trains only when a new month closes.
    for point in ("evaluation", "registration"):
        month, _ = append_month(base, rows=600)
        n = night(point)
        n.stopped()
        check_recovered(killed[-1][0], killed[-1][1], job_of(n))
        marker = json.loads(
            next((cfg.privacy.ledger.parent / "running").glob("retrain-*.json")).read_text()
        )
        assert all(new == [month] for new in marker["new"].values()), marker["new"]
        kill(n, point)

    # A champion for the alias point: the killed night's version, promoted by hand.
    (registered,) = client.search_model_versions(f"name='{name}'")
    promote(cfg, str(registered.version), reason="a champion to replace")
    champion = alias_version(client, name, CHAMPION)
    assert champion == str(registered.version)

    # The alias move, killed halfway: the next night undoes it before anything else.
    append_month(base, rows=600)
    half = night("alias")
    half.stopped()
    check_recovered("registration", killed[-1][1], job_of(half))
    killed_version = client.get_model_version(name, champion)
    assert killed_version.tags["gate.decision"] == "killed"
    assert "killed during registration" in killed_version.tags["gate.summary"]
    assert MOVE_TAG in client.get_registered_model(name).tags
    assert alias_version(client, name, PREVIOUS_CHAMPION) == champion  # half moved
    kill(half, "alias")

    append_month(base, rows=600)  # a version was registered: the months are spent
    last = run_retrain(cfg, strategies=["dp-fedavg"])
    assert last.code == TRAINED, last.message
    check_recovered("alias", killed[-1][1])
    assert MOVE_TAG not in client.get_registered_model(name).tags
    # Undone (champion kept, no previous), then the last night's own gate decided.
    newest = _records(cfg)[-1]["jobs"][0]["version"]
    moved = (alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS_CHAMPION))
    assert moved in ((champion, None), (newest, champion)), moved
    assert not list((cfg.privacy.ledger.parent / "running").glob("*.json"))
    assert not [n for n, r in _runs(cfg).items() if r.info.status == "RUNNING"]
    _ledgers_agree(cfg)
    _lock_is_free(cfg)
    assert [p for p, _ in killed] == list(POINTS) and survived == len(POINTS)

    assert run_retrain(cfg, strategies=["dp-fedavg"]).code == NOTHING_NEW
