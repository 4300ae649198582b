"""The servers of an XGBoost collective, which the coordinator always ends.

``secure`` and ``federated``: the project's own aggregator of XGBoost's federated
protocol (:mod:`~pipeline.strategies.xgboost.aggregator`), in this process, on the address
it is given, over mutual TLS with a per-job PKI (:mod:`pipeline.protocol.tls`). Under
``secure`` each site's worker dials its site's masking relay
(:mod:`~pipeline.strategies.xgboost.relay`), which dials the aggregator; under
``federated`` the workers dial it directly and their histograms arrive in the clear (for
comparison and debugging). ``rabit``: XGBoost's own tracker, on one address, for sites
inside one trusted cluster, in a child process.

The rabit child is a fresh interpreter (``python -m pipeline.strategies.xgboost.collective``),
not a fork (forking a process in which XGBoost ran hangs the workers) and not a
multiprocessing spawn (that re-imports the caller's main script, which breaks scripts
without a ``__main__`` guard). It reads its orders as one line on standard input, reports
its port on a pipe and ends as soon as its standard input closes, so it never outlives
its owner, even one that was killed.

Starting that interpreter costs about 1.5 s, nearly all of it importing XGBoost, and a job
would pay it between admitting the sites and training. :func:`spare_interpreter` starts
one ahead (while the sites validate); the next server takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from pipeline.protocol.tls import JobPKI
    from pipeline.strategies.xgboost.aggregator import Aggregator
    from pipeline.strategies.xgboost.masked_link import LinkServer


def is_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- the child process ------------------------------------------------------------------
def _start_rabit(n_workers: int, host: str) -> int:
    from xgboost.tracker import RabitTracker

    tracker = RabitTracker(n_workers=n_workers, host_ip=host, port=0, sortby="task")
    tracker.start()
    port = int(tracker.worker_args()["dmlc_tracker_port"])
    threading.Thread(target=tracker.wait_for, daemon=True).start()
    return port


_STARTERS = {"rabit": _start_rabit}


def _child_main() -> None:
    """Child: import XGBoost, wait for orders (one JSON line), serve."""
    import xgboost  # noqa: F401 - importing it ahead of the orders is the point

    line = sys.stdin.buffer.readline()
    if not line:  # the owner closed the pipe (or died) before giving orders
        os._exit(0)
    kind, args, log_file = json.loads(line)
    _serve(kind, args, log_file)


def _serve(kind: str, args: list[Any], log_file: str) -> None:
    """Child: start the server, report its port, run until standard input closes."""
    report = os.fdopen(os.dup(1), "w")
    # The C++ side logs to the process's stdout and stderr: to the log file, or to the
    # owner's stderr, never into the report pipe.
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log_file else 2
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        port = _STARTERS[kind](*args)
    except Exception as exc:  # reported to the owner, which raises it
        report.write(json.dumps(["error", f"{type(exc).__name__}: {exc}"]) + "\n")
        report.flush()
        os._exit(1)
    report.write(json.dumps(["ok", port]) + "\n")
    report.flush()
    with contextlib.suppress(OSError):
        sys.stdin.buffer.read()  # returns at EOF: the owner closed the pipe or died
    os._exit(0)


# -- the owner's side -------------------------------------------------------------------
_spares: list[subprocess.Popen[bytes]] = []


def _spawn() -> subprocess.Popen[bytes]:
    """A fresh child interpreter, importing XGBoost, not yet told what to serve."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.Popen(
        [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )


def _end(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Close the child's pipes, then SIGTERM, then SIGKILL, until it has exited."""
    for pipe in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[union-attr]
    for end in (None, process.terminate, process.kill):
        if end is not None:
            end()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
            return
    raise RuntimeError(f"collective server pid {process.pid} did not exit")  # pragma: no cover


@contextlib.contextmanager
def spare_interpreter() -> Iterator[int]:
    """Start the next server's interpreter now (yields its pid); it is ended on exit
    unless a server took it."""
    spare = _spawn()
    _spares.append(spare)
    try:
        yield spare.pid
    finally:
        if spare in _spares:
            _spares.remove(spare)
            _end(spare, 5.0)


def _take_spare() -> subprocess.Popen[bytes] | None:
    while _spares:
        spare = _spares.pop()
        if spare.poll() is None:
            return spare
    return None


class _ServerProcess:
    """A collective's server in a child process that `stop` always ends."""

    communicator = ""
    _local_host = "127.0.0.1"  # where this machine reaches the server

    def __init__(
        self,
        n_workers: int,
        *,
        log_file: str | os.PathLike[str] | None,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        if n_workers < 1:
            raise ValueError("n_workers must be at least 1")
        self.n_workers = n_workers
        self.log_file = None if log_file is None else os.fspath(log_file)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _server_args(self) -> list[Any]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("server already started")
        self._process = _take_spare() or _spawn()
        orders = [self.communicator, self._server_args(), self.log_file or ""]
        try:
            self._process.stdin.write(json.dumps(orders).encode() + b"\n")  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]
            status, value = self._read_report(self._process.stdout)
        except BaseException:
            self.stop()
            raise
        if status != "ok":
            self.stop()
            raise RuntimeError(f"{self.communicator} server failed to start: {value}")
        self.port = int(value)
        return self

    def _read_report(self, out: Any) -> tuple[str, Any]:
        """The child's one-line report (status, port or error), within start_timeout."""
        ready, _, _ = select.select([out], [], [], self.start_timeout)
        if not ready:
            raise RuntimeError(
                f"{self.communicator} server did not start within {self.start_timeout} s"
            )
        line = out.readline()
        if not line:
            raise RuntimeError(f"{self.communicator} server exited while starting")
        status, value = json.loads(line)
        return status, value

    def stop(self) -> None:
        """End the server process (close its input, then SIGTERM, then SIGKILL) and check
        that its port no longer accepts connections. Safe to call twice.

        (A bind test would be wrong: the closed connections of a server without
        SO_REUSEADDR keep its port in TIME_WAIT for a minute, with nobody listening.)"""
        process, self._process = self._process, None
        if process is None:
            return
        _end(process, self.stop_timeout)
        if self.port is not None:
            deadline = time.monotonic() + self.stop_timeout
            while is_listening(self._local_host, self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} still listening after the server stopped")
                time.sleep(0.05)

    def env(self, rank: int, site: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def _check_rank(self, rank: int) -> None:
        if self.port is None:
            raise RuntimeError("start the server before asking for worker settings")
        if not 0 <= rank < self.n_workers:
            raise ValueError(f"rank {rank} outside 0..{self.n_workers - 1}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FederatedAggregator:
    """The project's aggregator for one attempt of a collective, with the job's PKI.

    Parameters
    ----------
    pki : JobPKI
        The job's certificates; the world is its sites, in order.
    host : str
        The address the aggregator binds and the sites dial; in the server certificate.
    secure : bool
        ``secure``: workers dial their site's relay, which masks every SUM; otherwise
        (``federated``) they dial the aggregator directly, in the clear inside TLS.
    attempt : str
        Names the attempt (the relays' masks are the attempt's own).
    scale : int
        The fixed point of the relays' float SUMs.
    deadline_s : float
        How long any collective call may wait for its last rank.
    """

    def __init__(
        self,
        pki: JobPKI,
        *,
        host: str = "127.0.0.1",
        secure: bool = True,
        attempt: str = "1",
        scale: int = 2**32,
        deadline_s: float = 60.0,
    ) -> None:
        if host not in pki.hosts:
            raise ValueError(f"host {host!r} is not in the server certificate {pki.hosts}")
        self.pki = pki
        self.host = host
        self.secure = secure
        self.communicator = "secure" if secure else "federated"
        self.attempt = attempt
        self.scale = scale
        self.deadline_s = deadline_s
        self.n_workers = len(pki.sites)
        self._server: Aggregator | LinkServer | None = None
        self.port: int | None = None
        self.pid: int | None = None  # it runs in this process: nothing to end but its port

    def start(self) -> Self:
        p = self.pki
        if self.secure:  # the relays' masked links: only they dial the aggregator
            from pipeline.strategies.xgboost.masked_link import job_link_server

            self._server = job_link_server(p, self.host, self.deadline_s).start()
        else:  # XGBoost's own workers dial it: its federated service
            from pipeline.strategies.xgboost.aggregator import Aggregator, server_credentials

            credentials = server_credentials(
                p.server_key.read_bytes(), p.server_cert.read_bytes(), p.ca_cert.read_bytes()
            )
            self._server = Aggregator(
                self.n_workers, host=self.host, credentials=credentials, deadline_s=self.deadline_s
            ).start()
        self.port = self._server.port
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Fail every waiting rank, close the port. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def env(self, rank: int, site: str | None = None) -> dict[str, Any]:
        """Worker `rank`'s settings, holding `site`'s client certificate (default: the
        rank-th site of the PKI); paths are on the worker's file system. Under
        ``secure`` they are the relay's orders: the site starts its relay from them and
        gives its worker the relay's loopback address instead."""
        if self.port is None:
            raise RuntimeError("start the aggregator before asking for worker settings")
        if not 0 <= rank < self.n_workers:
            raise ValueError(f"rank {rank} outside 0..{self.n_workers - 1}")
        site = self.pki.sites[rank] if site is None else site
        env: dict[str, Any] = {
            "dmlc_communicator": self.communicator,
            "federated_server_address": self.address,
            "federated_world_size": self.n_workers,
            "federated_rank": rank,
            "federated_server_cert_path": str(self.pki.ca_cert),
            "federated_client_key_path": str(self.pki.client_key(site)),
            "federated_client_cert_path": str(self.pki.client_cert(site)),
        }
        if self.secure:
            env.update(
                relay_sites=list(self.pki.sites),
                relay_attempt=self.attempt,
                relay_scale=self.scale,
                relay_deadline_s=self.deadline_s,
            )
        return env

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


RABIT_RETRY = 2


class RabitServer(_ServerProcess):
    """XGBoost's rabit tracker, for workers inside one trusted cluster (no encryption).

    Ranks follow ``dmlc_task_id`` (the zero-padded rank), so rank r always holds the same
    site and the reduction order, hence the model, is reproducible.
    """

    communicator = "rabit"

    def __init__(
        self,
        n_workers: int,
        *,
        host: str = "127.0.0.1",
        log_file: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            n_workers, log_file=log_file, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self.host = host
        self._local_host = host

    def _server_args(self) -> list[Any]:
        return [self.n_workers, self.host]

    def env(self, rank: int, site: str | None = None) -> dict[str, Any]:
        self._check_rank(rank)
        return {
            "dmlc_communicator": "rabit",
            "dmlc_tracker_uri": self.host,
            "dmlc_tracker_port": self.port,
            "dmlc_task_id": f"{rank:06d}",
            # After a peer dies a worker reports to the tracker, which the coordinator has
            # just stopped: one retry (2 s) instead of XGBoost's three with back-off, so
            # the survivors fail within the watchdog's grace period instead of after it.
            "dmlc_retry": RABIT_RETRY,
        }


if __name__ == "__main__":
    _child_main()
