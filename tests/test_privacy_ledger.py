"""The ledger refuses over-budget jobs whole, persists, and holds under concurrent jobs."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
import time

import pytest

from pipeline.errors import BudgetError
from pipeline.privacy.ledger import PrivacyLedger


@pytest.fixture
def ledger(tmp_path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.sqlite")


def test_reserved_spends_add_across_jobs(ledger):
    ledger.reserve("job-1", {"north": (0.5, 1e-5)}, {"north": 2.0}, "gaussian")
    ledger.reserve("job-2", {"north": (0.25, 2e-5)}, {"north": 2.0}, "gaussian")
    eps, delta = ledger.spent("north")
    assert eps == pytest.approx(0.75)
    assert delta == pytest.approx(3e-5)
    assert ledger.remaining("north", 2.0) == pytest.approx(1.25)
    assert ledger.spent("south") == (0.0, 0.0)


def test_over_budget_job_is_refused_whole_and_leaves_every_budget_unchanged(ledger):
    budgets = {"north": 1.0, "south": 1.0}
    ledger.reserve("job-1", {"north": (0.75, 1e-5)}, budgets, "gaussian")
    before = ledger.entries()

    with pytest.raises(BudgetError) as refused:
        ledger.reserve("job-2", {"north": (0.5, 1e-5), "south": (0.5, 1e-5)}, budgets, "gaussian")

    message = str(refused.value)
    assert "'north'" in message and "0.75" in message and "0.5" in message and "1" in message
    assert ledger.entries() == before
    assert ledger.spent("north")[0] == pytest.approx(0.75)
    assert ledger.spent("south") == (0.0, 0.0)


def test_spending_exactly_the_budget_is_allowed(ledger):
    for i in range(10):
        ledger.reserve(f"job-{i}", {"north": (0.1, 0.0)}, {"north": 1.0}, "laplace")
    assert ledger.spent("north")[0] == 1.0
    with pytest.raises(BudgetError):
        ledger.reserve("job-10", {"north": (1e-9, 0.0)}, {"north": 1.0}, "laplace")


def test_spends_survive_reopening(tmp_path):
    path = tmp_path / "nested" / "ledger.sqlite"
    PrivacyLedger(path).reserve("job-1", {"north": (0.4, 1e-5)}, {"north": 1.0}, "gaussian")
    reopened = PrivacyLedger(path)
    assert reopened.spent("north")[0] == pytest.approx(0.4)
    [row] = reopened.entries("north")
    assert row["job_id"] == "job-1" and row["mechanism"] == "gaussian"
    assert row["status"] == "reserved" and row["created_at"]


def test_each_site_can_record_its_own_mechanism(ledger):
    planned = {"north": (0.5, 1e-5), "south": (0.5, 1e-5)}
    budgets = {"north": 1.0, "south": 1.0}
    names = {"north": "dp-fedavg (shares)", "south": "dp-fedavg (full noise)"}
    with pytest.raises(ValueError, match="every site"):
        ledger.reserve("job-a", planned, budgets, {"north": "dp-fedavg"})
    assert ledger.entries() == []
    ledger.reserve("job-a", planned, budgets, names)
    assert {e["site"]: e["mechanism"] for e in ledger.entries()} == names


def test_a_job_reserves_once_per_site(ledger):
    ledger.reserve("job-1", {"north": (0.1, 0.0)}, {"north": 1.0}, "gaussian")
    with pytest.raises(BudgetError, match="already holds"):
        ledger.reserve("job-1", {"north": (0.1, 0.0)}, {"north": 1.0}, "gaussian")


@pytest.mark.parametrize(
    ("planned", "budgets", "message"),
    [
        ({"north": (0.1, 0.0)}, {}, "no epsilon budget"),
        ({"north": (-0.1, 0.0)}, {"north": 1.0}, "epsilon"),
        ({"north": (0.1, 1.0)}, {"north": 1.0}, "delta"),
        ({"north": (0.1, 0.0)}, {"north": 0.0}, "budget"),
        ({}, {"north": 1.0}, "no planned spend"),
    ],
)
def test_malformed_reservations_are_refused(ledger, planned, budgets, message):
    with pytest.raises(ValueError, match=message):
        ledger.reserve("job-1", planned, budgets, "gaussian")
    assert ledger.entries() == []


def _reserve_repeatedly(path: str, worker: int, attempts: int, start) -> None:
    """Run in a spawned process: race the other worker for one site's budget."""
    ledger = PrivacyLedger(path)
    start.wait()
    for i in range(attempts):
        with contextlib.suppress(BudgetError):
            ledger.reserve(
                f"w{worker}-job{i}",
                {"north": (2**-7, 1e-6), "south": (2**-8, 1e-6)},
                {"north": 1.0, "south": 10.0},
                "gaussian",
            )


def test_concurrent_processes_never_exceed_the_budget(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    PrivacyLedger(path)  # create the schema before the race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_reserve_repeatedly, args=(path, w, 100, start)) for w in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0

    ledger = PrivacyLedger(path)
    # 200 attempts at 1/128 against 1.0: exactly 128 jobs fit; each wrote both sites or none.
    assert ledger.spent("north")[0] == 1.0
    assert len(ledger.entries("north")) == 128
    assert len(ledger.entries("south")) == 128
    assert {r["job_id"] for r in ledger.entries("north")} == {
        r["job_id"] for r in ledger.entries("south")
    }


def test_a_reservation_waits_for_a_concurrent_writer_and_sees_its_spend(tmp_path):
    """Deterministic form of the race: the check must read after another job's write."""
    path = tmp_path / "ledger.sqlite"
    ledger = PrivacyLedger(path)
    other_job = sqlite3.connect(path, isolation_level=None)
    other_job.execute("BEGIN IMMEDIATE")
    other_job.execute(
        "INSERT INTO spends (job_id, site, epsilon, delta, mechanism, created_at, status)"
        " VALUES ('other', 'north', 0.9, 0, 'gaussian', '2025-01-01T00:00:00', 'reserved')"
    )
    outcome: list[BaseException | None] = []

    def reserve() -> None:
        try:
            ledger.reserve("job-1", {"north": (0.2, 0.0)}, {"north": 1.0}, "gaussian")
            outcome.append(None)
        except BudgetError as exc:
            outcome.append(exc)

    racer = threading.Thread(target=reserve)
    racer.start()
    time.sleep(0.3)  # the racer is now blocked on the write lock (or has not started)
    other_job.execute("COMMIT")
    other_job.close()
    racer.join(timeout=30)

    assert isinstance(outcome[0], BudgetError)
    assert ledger.spent("north")[0] == pytest.approx(0.9)
