"""The Ray side of the coordinator: start or join Ray (:mod:`.ray_session`), place one
actor per site, call the sites with timeouts, and split replies into valid and failed at
one edge.

Placement: embedded local Ray by default; an existing cluster by address. A site whose
config names a custom resource (``site:<name>``) only runs on a node offering it, which is
how a hospital's actor lands on the hospital's node. The runtime is given the site actor's
class and what to make each site's actor from (:class:`Placement`); it never imports the
site, and it reads no config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError, QuorumError
from pipeline.federation.ray_session import ensure_ray
from pipeline.protocol.messages import check_reply

log = logging.getLogger(__name__)

# A tiny share of the site resource: the actor needs the node, not its capacity.
_RESOURCE_SHARE = 0.01
_MAX_IDLE = 8  # idle site actors kept for later jobs of this process, oldest ended first
_CHECK_S = 5.0  # how long an idle actor may take to show it is alive, or to recycle


@dataclass(frozen=True)
class Placement:
    """How one site's actor is made and where it runs.

    Attributes
    ----------
    name : str
        The site's name in the federation.
    args, kwargs :
        The site actor class's arguments.
    resource : str, optional
        The Ray custom resource only the site's node offers.
    identity_key : str, optional
        The site's pinned Ed25519 public key (hex), for secure aggregation.
    key : tuple
        What the actor is made from (its config, the contract's bytes, the data window,
        the pinned keys): an idle actor serves a later job only under the same key.
    """

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    resource: str | None = None
    identity_key: str | None = None
    key: tuple = ()


@dataclass
class Replies:
    """Valid replies by site, and failures by site with a reason."""

    ok: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class SiteRuntime:
    """One actor per site for a job (an idle one of an earlier job of the same federation
    in this process when there is one, see :meth:`stop`). Use as a context manager.

    Parameters
    ----------
    placements : sequence of Placement
        One per site.
    actor_class : type
        The site actor (:class:`pipeline.site.actor.SiteActor`), made a Ray actor here.
    job_id : str
        Names the actors, so two jobs never share one.
    timeout_s : float
        Upper bound on every wait for a site.
    """

    def __init__(
        self,
        placements: Sequence[Placement],
        actor_class: type,
        job_id: str,
        *,
        timeout_s: float = 120.0,
        ray_address: str | None = None,
        num_cpus: int | None = None,
        allow_unauthenticated: bool = False,
    ) -> None:
        self.sites = list(placements)
        self.allow_unauthenticated = allow_unauthenticated
        self.actor_class = actor_class
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.actors: dict[str, Any] = {}
        self.dropped: dict[str, str] = {}
        self._restarts: dict[str, int] = {}
        self._pool_keys: dict[str, tuple] = {}
        self._owns_ray = False

    @property
    def pins(self) -> dict[str, str]:
        """Site -> pinned identity key (hex), for the sites that have one."""
        return {s.name: s.identity_key for s in self.sites if s.identity_key}

    def __enter__(self) -> SiteRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        resources = {s.resource: 1.0 for s in self.sites if s.resource}
        self._owns_ray = ensure_ray(
            self.ray_address,
            self.num_cpus,
            resources or None,
            allow_unauthenticated=self.allow_unauthenticated,
        )
        self._pool_keys = {s.name: (self.actor_class.__qualname__, *s.key) for s in self.sites}
        idle = {} if self._owns_ray else _IDLE.take(self._pool_keys)
        for site in self.sites:
            actor = idle.get(site.name)
            self.actors[site.name] = actor or self._spawn(site, f"{self.job_id}:{site.name}")

    def wait_started(self, warm_up: str | None = None) -> None:
        """Wait (up to the call timeout) until every site's process is up and its actor
        built, and has run its `warm_up` method (no arguments, no reply) if named: the
        seconds a site spends starting count as the job's start, not as the first
        request's. A site that failed to start is reported by that request."""
        import ray

        actors = [a for s, a in self.actors.items() if s not in self.dropped]
        method = warm_up or "__ray_ready__"
        refs = [getattr(a, method).remote() for a in actors]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)

    def _spawn(self, site: Placement, name: str) -> Any:
        options: dict[str, Any] = {
            "name": name,
            "num_cpus": 0,
            "max_restarts": 0,
            "max_concurrency": 1,
        }
        if site.resource:
            options["resources"] = {site.resource: _RESOURCE_SHARE}
        return (
            _ray_actor_class(self.actor_class).options(**options).remote(*site.args, **site.kwargs)
        )

    def restart(self, site: str) -> None:
        """End a site's actor and start a fresh one in its place (same node constraint),
        for a site that did nothing wrong but is stuck in a broken collective. The new
        actor holds no state: the caller loads its extract again."""
        if site in self.dropped:
            raise ValueError(f"site {site} was dropped; it is not restarted")
        _kill(self.actors[site])
        self._restarts[site] = self._restarts.get(site, 0) + 1
        name = f"{self.job_id}:restart{self._restarts[site]}:{site}"
        self.actors[site] = self._spawn(next(s for s in self.sites if s.name == site), name)

    def stop(self) -> None:
        """End the job's actors; in a process that keeps Ray running (a demo, a
        retraining, the tests), healthy ones wait for the federation's next job."""
        import ray

        if self._owns_ray:
            for actor in self.actors.values():
                _kill(actor)
            self.actors.clear()
            ray.shutdown()
            self._owns_ray = False
            return
        healthy = {s: a for s, a in self.actors.items() if s not in self.dropped}
        for site, actor in self.actors.items():
            if site not in healthy:
                _kill(actor)
        _IDLE.give({self._pool_keys[name]: actor for name, actor in healthy.items()})
        self.actors.clear()

    @property
    def active(self) -> list[str]:
        return [s.name for s in self.sites if s.name in self.actors and s.name not in self.dropped]

    def drop(self, site: str, reason: str) -> None:
        """Stop using a site for the rest of the job (and end its actor)."""

        if site in self.dropped:
            return
        self.dropped[site] = reason
        log.warning("site %s dropped: %s", site, reason)
        actor = self.actors.get(site)
        if actor is not None:
            _kill(actor)

    def call(
        self,
        method: str,
        *args: Any,
        sites: Sequence[str] | None = None,
        per_site: Callable[[str], dict[str, Any]] | None = None,
        timeout_s: float | None = None,
        drop_failed: bool = True,
        raw: bool = False,
        on_reply: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> Replies:
        """Call `method` on each active site; wait at most `timeout_s` for all of them.

        A site that raises, dies or does not answer in time is a failure with its reason;
        with `drop_failed`, it is also dropped from the job (a hung actor is killed).
        `raw` skips the reply allow-list, for diagnostics (pid, node id) only.
        `on_reply(site)` is called as each site's answer (or failure) arrives, for progress.
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        targets = [s for s in (sites or self.active) if s not in self.dropped]
        refs = {}
        for site in targets:
            extra = per_site(site) if per_site else {}
            refs[site] = getattr(self.actors[site], method).remote(*args, **kwargs, **extra)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        pending = {ref: site for site, ref in refs.items()}
        out = Replies()
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            for ref in ready:
                site = pending.pop(ref)
                try:
                    reply = ray.get(ref, timeout=1.0)
                    out.ok[site] = reply if raw else check_reply(reply)
                except RayTaskError as exc:
                    out.failed[site] = failure_reason(exc)
                except RayActorError:
                    out.failed[site] = "the site's actor died"
                except GetTimeoutError:
                    out.failed[site] = f"no answer within {timeout:g} s"
                except TypeError as exc:
                    out.failed[site] = str(exc)
                if on_reply is not None:
                    on_reply(site)
        for site in pending.values():
            out.failed[site] = f"no answer within {timeout:g} s"
        # Sites in the order they were asked, whatever order they answered in.
        out.ok = {s: out.ok[s] for s in refs if s in out.ok}
        out.failed = {s: out.failed[s] for s in refs if s in out.failed}
        if drop_failed:
            for site, reason in out.failed.items():
                self.drop(site, reason)
        return out

    def require_quorum(self, quorum: int, stage: str) -> None:
        if len(self.active) < quorum:
            lost = "; ".join(f"{s}: {r}" for s, r in self.dropped.items()) or "none"
            raise QuorumError(
                f"{stage}: only {len(self.active)} site(s) left, quorum is {quorum} "
                f"(dropped: {lost})"
            )


class _IdleActors:
    """Site actors of finished jobs, kept for the next job of the same federation in this
    process and Ray session (at most :data:`_MAX_IDLE`); one per key."""

    def __init__(self) -> None:
        self._session: tuple | None = None
        self._actors: dict[tuple, Any] = {}

    def take(self, keys: dict[str, tuple]) -> dict[str, Any]:
        """Idle actors for these sites (name -> key) that answer within :data:`_CHECK_S`."""
        self._forget_other_sessions()
        found = {site: self._actors.pop(key) for site, key in keys.items() if key in self._actors}
        answered = _answers(found, "pid")
        for site, actor in found.items():
            if site not in answered:  # a dead or stuck actor is simply replaced
                _kill(actor)
        return {site: actor for site, actor in found.items() if site in answered}

    def give(self, actors: dict[tuple, Any]) -> None:
        """Keep these actors (key -> actor) for later jobs if they recycle in time."""
        self._forget_other_sessions()
        recycled = _answers(actors, "recycle")
        for key, actor in actors.items():
            if recycled.get(key) is not True or key in self._actors:
                _kill(actor)
                continue
            self._actors[key] = actor
        while len(self._actors) > _MAX_IDLE:
            _kill(self._actors.pop(next(iter(self._actors))))

    def _forget_other_sessions(self) -> None:
        """Handles from an earlier Ray session are dead: drop them."""
        import ray

        context = ray.get_runtime_context()
        session = (context.get_node_id(), context.get_job_id())
        if session != self._session:
            self._actors.clear()
            self._session = session


_IDLE = _IdleActors()


def _answers(actors: dict[Any, Any], method: str) -> dict[Any, Any]:
    """Call `method` on every actor; the answers of those that reply within
    :data:`_CHECK_S` (an actor that fails or does not answer is left out)."""
    import ray

    if not actors:
        return {}
    refs = {key: getattr(actor, method).remote() for key, actor in actors.items()}
    ready = set(ray.wait(list(refs.values()), num_returns=len(refs), timeout=_CHECK_S)[0])
    out = {}
    for key, ref in refs.items():
        if ref in ready:
            with contextlib.suppress(Exception):
                out[key] = ray.get(ref, timeout=1.0)
    return out


@functools.cache
def _ray_actor_class(cls: type) -> Any:
    """`cls` as a Ray actor class, made once per process: Ray exports a class (hashing
    its disassembled code, 80 ms) each time one is made, and once per Ray session for a
    class it has seen."""
    import ray

    return ray.remote(cls)


def _kill(actor: Any) -> None:
    """End an actor; one that is already gone is fine."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(actor)


def failure_reason(exc: BaseException) -> str:
    """One line for a site's failure: the project's own message, or the exception's type
    and first line (XGBoost's errors carry a native backtrace after it). A Ray task error
    is reported by the exception the site raised."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps what the actor raised
    if isinstance(cause, BaseException):
        exc = cause
    if isinstance(exc, PipelineError):
        return str(exc)
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
