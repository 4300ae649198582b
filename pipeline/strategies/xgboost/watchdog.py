"""The coordinator's watch over an XGBoost collective of the sites' actors.

Every admitted site joins one XGBoost collective as a worker (see
:mod:`pipeline.models.trees` for why the result equals pooled training on the contract's
bin grid). The coordinator only starts the communicator's server, hands each site its
rank, and watches: XGBoost's collective has no dropout handling (a dead worker leaves the
others waiting forever), so the coordinator owns a watchdog. It waits with a deadline;
when a site's actor dies or a site fails, it stops the server so the others fail too,
gives them a grace period, replaces the actors of those still stuck with fresh ones (they
did nothing wrong), and, while the quorum holds, trains once more without the lost sites
on a fresh server (and a fresh PKI), with a new world size and new ranks. A deadline that
passes with nothing broken fails the job. The server is stopped on every path.

Communicators: ``secure`` (the project's aggregator over mutual TLS, a per-job CA in a
private temporary directory deleted after the attempt, every site's SUMs masked by its
relay), ``federated`` (the same aggregator, the workers' SUMs in the clear inside TLS) or
``rabit`` (inside one trusted cluster). All give the same model; ``auto`` picks secure
when XGBoost was built with the federated client. The aggregator fails every waiting
rank at once when one is lost, so the others fail within its call deadline instead of
waiting for the watchdog.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, QuorumError
from pipeline.federation.runtime import SiteRuntime, failure_reason
from pipeline.protocol.messages import check_reply
from pipeline.scratch import scratch_prefix

MAX_ATTEMPTS = 2  # the first try and one retry without the lost sites
GRACE_S = 20.0  # how long the others may take to notice a broken collective
_TLS_KEYS = (
    "federated_server_cert_path",
    "federated_client_key_path",
    "federated_client_cert_path",
)


class CollectiveError(PipelineError):
    """The XGBoost collective could not train a model."""


COMMUNICATORS = ("secure", "federated", "rabit")


def resolve_communicator(name: str) -> str:
    """``auto`` -> ``secure`` when XGBoost is built with the federated client, else
    ``rabit``."""
    import xgboost

    federated = bool(xgboost.build_info().get("USE_FEDERATED"))
    if name == "auto":
        return "secure" if federated else "rabit"
    if name not in COMMUNICATORS:
        raise CollectiveError(f"unknown XGBoost communicator {name!r}")
    if name != "rabit" and not federated:
        raise CollectiveError(f"this XGBoost build has no federated client for {name}; use rabit")
    return name


@dataclass
class Attempt:
    """One run of the collective: boosters by site, and the sites that failed."""

    sites: list[str]
    boosters: dict[str, bytes] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # the cause: dropped from the job
    restarted: list[str] = field(default_factory=list)  # victims stuck after the break
    seconds: float = 0.0
    port: int | None = None  # the server's port (closed once the attempt returns)
    server_pid: int | None = None  # the server's process (ended once the attempt returns)


@dataclass(frozen=True)
class CollectiveResult:
    """The agreed booster of a completed collective, and how it got there."""

    booster: bytes = field(repr=False)
    sites: list[str]
    communicator: str
    attempts: int
    lost: dict[str, str]
    seconds: float
    ports: tuple[int, ...] = ()
    server_pids: tuple[int, ...] = ()


def server_host(configured: str | None = None) -> str:
    """Where the sites reach the collective's server.

    Loopback while every site runs on this machine (embedded Ray, or a one-node cluster),
    so nothing listens beyond 127.0.0.1 by default; on a multi-node cluster, the address
    Ray knows the coordinator's node by, unless the config names one."""
    import ray

    if configured:
        return configured
    if sum(1 for node in ray.nodes() if node["Alive"]) <= 1:
        return "127.0.0.1"
    return ray.util.get_node_ip_address()


@dataclass(frozen=True)
class AggregatorSettings:
    """What the aggregator and the sites' relays of every attempt share: the fixed point
    of masked sums, and the deadline of each collective call."""

    scale: int = 2**32
    deadline_s: float = 60.0


@contextlib.contextmanager
def _server(
    communicator: str,
    sites: list[str],
    job_id: str,
    host: str,
    attempt: int = 1,
    settings: AggregatorSettings | None = None,
):
    """The communicator's server for one attempt; always stopped, keys always deleted."""
    from pipeline.protocol.tls import JobPKI
    from pipeline.strategies.xgboost.collective import FederatedAggregator, RabitServer

    settings = settings or AggregatorSettings()
    with contextlib.ExitStack() as stack:
        prefix = scratch_prefix(job_id, f"xgb-pki-{attempt}")
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        if communicator in ("secure", "federated"):
            pki = stack.enter_context(JobPKI.create(work / "pki", sites, hosts=[host]))
            server = FederatedAggregator(
                pki,
                host=host,
                secure=communicator == "secure",
                attempt=str(attempt),
                scale=settings.scale,
                deadline_s=settings.deadline_s,
            )
        else:
            server = RabitServer(len(sites), host=host)
        stack.callback(server.stop)
        server.start()
        yield server


def run_attempt(
    runtime: SiteRuntime,
    strategy: str,
    job_id: str,
    sites: list[str],
    communicator: str,
    train_kwargs: dict[str, Any],
    *,
    timeout_s: float,
    grace_s: float = GRACE_S,
    host: str = "127.0.0.1",
    attempt_number: int = 1,
    aggregator: AggregatorSettings | None = None,
) -> Attempt:
    """Train once with `sites` as ranks 0..n-1; never hangs beyond `timeout_s` (+ grace).

    A site whose actor dies or that fails before the collective broke is *lost*: the
    cause, dropped from the job; so is every site still training when `timeout_s` passes
    with nothing broken (a hang with no culprit fails the job cleanly). Sites that failed
    because the collective broke under them stay; those still stuck in it when the grace
    period ends get a fresh actor (`restarted`), whose extract the caller loads again.
    `strategy` names the site handler that joins the collective."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    attempt = Attempt(sites=list(sites))
    with _server(communicator, sites, job_id, host, attempt_number, aggregator) as server:
        attempt.port, attempt.server_pid = server.port, server.pid
        refs: dict[Any, str] = {}
        for rank, site in enumerate(sites):
            env = server.env(rank, site=site)
            tls = None
            if communicator in ("secure", "federated"):
                tls = {k: Path(env[k]).read_bytes() for k in _TLS_KEYS}
            ref = runtime.actors[site].handle.remote(
                strategy, "xgb_train", job_id, env=env, tls_files=tls, **train_kwargs
            )
            refs[ref] = site
        start = time.monotonic()
        deadline = start + timeout_s
        pending = dict(refs)
        broken = False
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for site in pending.values():
                    if broken:
                        attempt.failed[site] = "still in the collective after it broke"
                        attempt.restarted.append(site)
                    else:
                        attempt.failed[site] = attempt.lost[site] = (
                            f"no answer within {timeout_s:g} s"
                        )
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, left))
            newly: dict[str, str] = {}
            for ref in ready:
                site = pending.pop(ref)
                try:
                    attempt.boosters[site] = check_reply(ray.get(ref)).booster
                except RayActorError:
                    newly[site] = "the site's actor died during XGBoost training"
                    attempt.lost[site] = newly[site]
                except RayTaskError as exc:
                    newly[site] = failure_reason(exc)
                    if not broken:  # failed first: the cause, not a victim
                        attempt.lost[site] = newly[site]
                except TypeError as exc:
                    newly[site] = str(exc)
                    attempt.lost[site] = newly[site]
            attempt.failed.update(newly)
            if newly and not broken:
                # The collective cannot finish without these ranks: end the server so
                # the others fail instead of waiting, and give them a grace period.
                broken = True
                server.stop()
                deadline = min(deadline, time.monotonic() + grace_s)
        attempt.seconds = time.monotonic() - start
    for site, reason in attempt.lost.items():
        runtime.drop(site, f"XGBoost collective: {reason}")
    for site in attempt.restarted:
        runtime.restart(site)
    return attempt


def agreed_booster(boosters: dict[str, bytes]) -> bytes:
    """The one model every rank ended with; refuses ranks that disagree."""
    distinct = {bytes(b) for b in boosters.values()}
    if len(distinct) != 1:
        raise CollectiveError(
            f"the ranks ended with {len(distinct)} different boosters "
            f"({sorted(boosters)}): the collective did not agree"
        )
    return distinct.pop()


def train_collective(
    runtime: SiteRuntime,
    job_id: str,
    *,
    strategy: str,
    communicator: str,
    quorum: int,
    params_for: Callable[[list[str]], dict[str, Any]],
    train_kwargs: dict[str, Any],
    timeout_s: float,
    reload: Callable[[list[str]], None],
    say: Callable[[str], None] = lambda _m: None,
    grace_s: float = GRACE_S,
    host: str = "127.0.0.1",
    aggregator: AggregatorSettings | None = None,
) -> CollectiveResult:
    """Run the collective over the active sites, retrying once without lost sites.

    `params_for(sites)` gives the XGBoost parameters for a set of sites (the base score
    is the prevalence of exactly the sites that train); `reload(sites)` loads the
    extracts of sites whose actor was restarted; `strategy` names the site handler."""
    from pipeline.strategies.xgboost.collective import spare_interpreter

    lost: dict[str, str] = {}
    ports: list[int] = []
    pids: list[int] = []
    with contextlib.ExitStack() as spares:
        for n in range(1, MAX_ATTEMPTS + 1):
            runtime.require_quorum(quorum, "XGBoost training")
            sites = list(runtime.active)
            say(f"xgboost attempt {n}: {len(sites)} sites as ranks, {communicator} communicator")
            attempt = run_attempt(
                runtime,
                strategy,
                job_id,
                sites,
                communicator,
                {**train_kwargs, "params": params_for(sites)},
                timeout_s=timeout_s,
                grace_s=grace_s,
                host=host,
                attempt_number=n,
                aggregator=aggregator,
            )
            lost.update(attempt.lost)
            ports += [attempt.port] if attempt.port is not None else []
            pids += [attempt.server_pid] if attempt.server_pid is not None else []
            if not attempt.failed:
                return CollectiveResult(
                    booster=agreed_booster(attempt.boosters),
                    sites=sites,
                    communicator=communicator,
                    attempts=n,
                    lost=lost,
                    seconds=attempt.seconds,
                    ports=tuple(ports),
                    server_pids=tuple(pids),
                )
            detail = "; ".join(f"{s}: {r}" for s, r in attempt.failed.items())
            say(f"xgboost attempt {n} failed ({detail})")
            if not attempt.lost:
                raise CollectiveError(f"XGBoost training failed at every site: {detail}")
            if len(runtime.active) < quorum:
                raise QuorumError(
                    f"XGBoost training: {len(runtime.active)} site(s) left after losing "
                    f"{sorted(attempt.lost)}, quorum is {quorum} ({detail})"
                )
            if n < MAX_ATTEMPTS and communicator == "rabit":
                # The retry's server interpreter starts while restarted sites reload.
                spares.enter_context(spare_interpreter())
            if attempt.restarted:
                stuck = attempt.restarted
                say(f"xgboost: fresh actors for {stuck}, stuck in the broken collective")
                reload(stuck)
    raise CollectiveError(
        f"XGBoost training failed after {MAX_ATTEMPTS} attempts; lost sites: "
        + "; ".join(f"{s}: {r}" for s, r in lost.items())
    )
