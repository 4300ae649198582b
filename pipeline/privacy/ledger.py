"""The privacy ledger: a persistent, per-site record of every epsilon a job may spend.

Invariant 3 of the architecture: privacy spend is recorded before noise is released, per
site, persistently, and a job that would exceed a site's budget is refused before it runs.
So a job *reserves* its whole planned spend at every site up front, in one transaction,
and only then may any site release a noisy value.

Why SQLite: the record must survive restarts and be shared by concurrent jobs (two
``pipeline train`` processes, or two Ray drivers) on one machine without a server.
Every read-check-write runs inside ``BEGIN IMMEDIATE``, which takes SQLite's write lock
at the start of the transaction, so two jobs cannot both read "0.9 spent" and both add
0.2 to a budget of 1.0; the loser waits (busy timeout) and then sees the winner's rows.
A fresh connection per call keeps the object picklable (it is just a path) for Ray.

Composition across jobs is basic composition: epsilons add and deltas add (Dwork & Roth
2014, Thm 3.16). Within a job, the planned epsilon already comes from the RDP accountant
(``accounting.gaussian_epsilon``), so the ledger never re-composes rounds.

Every row is written ``reserved`` and counts as spent from then on. Only the site knows
whether it released a noisy value, so only the site's own ledger settles a row
(:meth:`PrivacyLedger.settle`): ``released`` the moment its first noisy value may leave
(final: never refunded), ``unused`` when the job ended before any (given back).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from numbers import Real
from pathlib import Path

from pipeline.errors import BudgetError

RESERVED, RELEASED, UNUSED = "reserved", "released", "unused"
_COUNTED = (RESERVED, RELEASED)  # rows that count as spent; "unused" rows do not
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spends (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    site        TEXT NOT NULL,
    epsilon     REAL NOT NULL CHECK (epsilon >= 0),
    delta       REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    mechanism   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'unused')),
    UNIQUE (job_id, site)
);
CREATE INDEX IF NOT EXISTS spends_site ON spends (site);
"""


class PrivacyLedger:
    """A per-site privacy budget record in an SQLite file.

    Pass the ledger to whatever spends budget (never a global: in Ray every actor is its
    own process, and a process-global accountant would quietly give each its own budget).

    Parameters
    ----------
    path : str or Path
        The SQLite file; created (with its parent directory) if missing.

    Examples
    --------
    >>> ledger = PrivacyLedger("privacy_ledger.sqlite")
    >>> ledger.reserve("job-1", {"northgate": (0.5, 1e-5)}, {"northgate": 10.0}, "gaussian")
    >>> ledger.spent("northgate")
    (0.5, 1e-05)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    def reserve(
        self,
        job_id: str,
        planned: Mapping[str, tuple[float, float]],
        budgets: Mapping[str, float],
        mechanism: str | Mapping[str, str],
    ) -> None:
        """Record a job's planned (epsilon, delta) at every site, or refuse the whole job.

        ``mechanism`` names what the job releases, one name for every site or one per site
        (a site may add different noise from the others, e.g. its full noise in a job
        whose other sites add shares).

        In one write transaction: for every site, spent + planned epsilon is checked against
        that site's budget; if any site would exceed, ``BudgetError`` names the site, its
        spent, planned and budget epsilon, and nothing at all is written (no site is
        charged for a job that will not run). Otherwise one ``reserved`` row per site is
        written. Call this before any noise is released.

        Raises ``BudgetError`` for an over-budget site or a job that already holds a
        reservation at a site; ``ValueError`` for malformed arguments (a site without a
        budget, negative or non-finite epsilon, delta outside [0, 1)).
        """
        if not job_id or not isinstance(job_id, str):
            raise ValueError("job_id must be a non-empty string")
        names = (
            {site: mechanism for site in planned}
            if isinstance(mechanism, str)
            else {site: mechanism.get(site) for site in planned}
        )
        if not all(name and isinstance(name, str) for name in names.values()):
            raise ValueError("mechanism must be a non-empty string for every site")
        if not planned:
            raise ValueError(f"job {job_id!r}: no planned spend given")
        for site, (eps, delta) in planned.items():
            if site not in budgets:
                raise ValueError(f"job {job_id!r}: no epsilon budget given for site {site!r}")
            _check_spend(site, eps, delta)
            _check_budget(site, budgets[site])

        with self._transaction() as conn:
            for site, (eps, _) in sorted(planned.items()):
                held = conn.execute(
                    "SELECT status FROM spends WHERE job_id = ? AND site = ?", (job_id, site)
                ).fetchone()
                if held is not None:
                    raise BudgetError(
                        f"job {job_id!r} already holds a {held[0]} reservation at site "
                        f"{site!r}; a job reserves once"
                    )
                spent_eps = _counted(conn, site)[0]
                budget = float(budgets[site])
                if math.fsum([*spent_eps, eps]) > budget:
                    raise BudgetError(
                        f"job {job_id!r} refused: site {site!r} has spent epsilon "
                        f"{math.fsum(spent_eps):g}, the job plans {eps:g}, and its budget is "
                        f"{budget:g}"
                    )
            created_at = datetime.now(UTC).isoformat(timespec="microseconds")
            conn.executemany(
                "INSERT INTO spends (job_id, site, epsilon, delta, mechanism, created_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (job_id, site, float(eps), float(delta), names[site], created_at, RESERVED)
                    for site, (eps, delta) in sorted(planned.items())
                ],
            )

    def settle(self, job_id: str, site: str, status: str) -> str | None:
        """Mark a job's reservation at `site` ``released`` or ``unused``; returns the
        row's status after the call (None: no reservation). A released spend stays
        released: nothing that may have left a site is ever refunded."""
        if status not in (RELEASED, UNUSED):
            raise ValueError(f"a reservation settles as {RELEASED!r} or {UNUSED!r}")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM spends WHERE job_id = ? AND site = ?", (job_id, site)
            ).fetchone()
            if row is None or row[0] != RESERVED:
                return None if row is None else str(row[0])
            conn.execute(
                "UPDATE spends SET status = ? WHERE job_id = ? AND site = ?",
                (status, job_id, site),
            )
            return status

    def entries_of(self, job_id: str, site: str) -> dict | None:
        """A job's row at `site` (None: no reservation)."""
        query = (
            "SELECT job_id, site, epsilon, delta, mechanism, created_at, status FROM spends"
            " WHERE job_id = ? AND site = ?"
        )
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(query, (job_id, site)).fetchone()
        return None if row is None else dict(row)

    def spent(self, site: str) -> tuple[float, float]:
        """(epsilon, delta) spent or reserved at ``site`` across jobs: both add up."""
        with closing(self._connect()) as conn:
            return _spent(conn, site)

    def remaining(self, site: str, budget: float) -> float:
        """Epsilon left at ``site`` under ``budget`` (budget minus spent and reserved)."""
        _check_budget(site, budget)
        return float(budget) - self.spent(site)[0]

    def entries(self, site: str | None = None) -> list[dict]:
        """Every row (optionally one site's), oldest first, as plain dicts for audit logs."""
        query = "SELECT job_id, site, epsilon, delta, mechanism, created_at, status FROM spends"
        args: tuple[str, ...] = ()
        if site is not None:
            query += " WHERE site = ?"
            args = (site,)
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(query + " ORDER BY id", args)]

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
        return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def _counted(conn: sqlite3.Connection, site: str) -> tuple[list[float], list[float]]:
    """The epsilons and deltas of a site's rows that count as spent."""
    rows = conn.execute(
        "SELECT epsilon, delta FROM spends WHERE site = ? AND status IN (?, ?) ORDER BY id",
        (site, *_COUNTED),
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def _spent(conn: sqlite3.Connection, site: str) -> tuple[float, float]:
    # fsum: ten spends of 0.1 are exactly 1.0, so a budget of 1.0 is not exceeded by rounding.
    epsilons, deltas = _counted(conn, site)
    return math.fsum(epsilons), math.fsum(deltas)


def _check_spend(site: str, eps: float, delta: float) -> None:
    if not (isinstance(eps, Real) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"site {site!r}: planned epsilon must be finite and >= 0, got {eps!r}")
    if not (isinstance(delta, Real) and 0 <= delta < 1):
        raise ValueError(f"site {site!r}: planned delta must be in [0, 1), got {delta!r}")


def _check_budget(site: str, budget: float) -> None:
    if not (isinstance(budget, Real) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"site {site!r}: epsilon budget must be finite and > 0, got {budget!r}")
