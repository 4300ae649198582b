"""The project's aggregator for XGBoost's federated protocol (the server half of
``pipeline/protocol/federated.proto``; XGBoost supplies only the worker half).

Each collective call arrives once from every rank with the same sequence number; the
aggregator combines the buffers (a SUM, MIN, MAX or bitwise reduction, a gather in rank
order, or the root's broadcast) and answers every rank with the result. What XGBoost's own
server did not do, this one does:

- it binds the address it is given (loopback by default), never every interface, and
  requires mutual TLS with the job's CA (:mod:`pipeline.protocol.tls`);
- every call has a deadline: a rank that does not send its part in time fails the call,
  and the collective with it;
- a lost rank (its connection closed mid-call, or :meth:`Aggregator.abort` from the
  coordinator's watchdog) fails every waiting rank at once, and every later call;
- it runs in the coordinator's process, on threads, and stops with the job.

The calls' state (:class:`Calls`) has two doors: XGBoost's gRPC service
(:class:`Aggregator`), which the workers dial in the ``federated`` mode, and in the
``secure`` mode the sites' masked links (:mod:`~pipeline.strategies.xgboost.masked_link`),
on which the relays send every SUM already masked
(:mod:`pipeline.protocol.collective_masks`): the aggregator adds uint64 vectors modulo
2^64 and never holds one site's values in the clear. ``observers`` see every request as it
arrives, through either door (the tests' curious aggregator).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from pipeline.protocol import federated_pb2 as pb
from pipeline.protocol import federated_pb2_grpc as pb_grpc
from pipeline.protocol.collective_masks import DATA_TYPES

MAX, MIN, SUM, BITWISE_AND, BITWISE_OR, BITWISE_XOR = range(6)
_MAX_MESSAGE = 2**31 - 1
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# Either way a histogram may be large; never share a port with another process.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]

Observer = Callable[[str, Any], None]
observers: list[Observer] = []  # called with (call name, request) for every request


class CollectiveBroken(Exception):
    """The collective cannot complete: a rank was lost or missed its deadline."""


@dataclass
class _Call:
    """One collective call (one sequence number) while its ranks arrive."""

    kind: str
    params: tuple
    parts: dict[int, bytes] = field(default_factory=dict)
    arrived: set[int] = field(default_factory=set)
    result: bytes | None = None
    collected: int = 0
    done: threading.Event = field(default_factory=threading.Event)


def reduce_buffers(parts: list[bytes], data_type: int, op: int) -> bytes:
    """The elementwise reduction of the ranks' buffers, in rank order (a SUM of integers
    wraps at the type's width, as XGBoost's own reduction does)."""
    dtype = DATA_TYPES.get(data_type)
    if dtype is None:
        raise ValueError(f"data type {data_type} is not reduced here")
    arrays = [np.frombuffer(p, dtype=dtype) for p in parts]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("the ranks sent buffers of different sizes")
    if op in (BITWISE_AND, BITWISE_OR, BITWISE_XOR) and dtype.kind == "f":
        raise ValueError("a bitwise reduction of floating-point values")
    ufunc = {
        MAX: np.maximum,
        MIN: np.minimum,
        SUM: np.add,
        BITWISE_AND: np.bitwise_and,
        BITWISE_OR: np.bitwise_or,
        BITWISE_XOR: np.bitwise_xor,
    }.get(op)
    if ufunc is None:
        raise ValueError(f"reduce operation {op} is not known")
    out = arrays[0].copy()
    with np.errstate(over="ignore"):
        for a in arrays[1:]:
            ufunc(out, a, out=out)
    return out.tobytes()


class Calls:
    """The calls of one collective attempt while its `world` ranks arrive, each answered
    once every rank has sent its part or failed after `deadline_s`: the state both of the
    aggregator's doors share (XGBoost's gRPC service, and the sites' masked links)."""

    def __init__(self, world: int, deadline_s: float) -> None:
        if world < 1:
            raise ValueError("world must be at least 1")
        self.world = world
        self.deadline_s = deadline_s
        self.broken: str | None = None
        self._calls: dict[int, _Call] = {}
        self._left: set[int] = set()
        self._lock = threading.Lock()

    def abort(self, reason: str) -> None:
        """Fail every waiting rank now, and every later call."""
        with self._lock:
            self._break(reason)

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        for call in self._calls.values():
            call.done.set()

    def lose(self, rank: int, reason: str) -> None:
        """Rank `rank` is gone for good: every call it has not sent can never complete, so
        those fail now (a call it sent before leaving is still answered)."""
        with self._lock:
            self._left.add(rank)
            if any(rank not in call.arrived for call in self._calls.values()):
                self._break(reason)

    def contribute(
        self, kind: str, request: Any, params: tuple, combine: Callable[[list[bytes]], bytes]
    ) -> bytes:
        """Add `request`'s buffer to its call, wait for the other ranks and return the
        combined result; raises :class:`CollectiveBroken` with the reason otherwise."""
        for observe in observers:
            observe(kind, request)
        rank, seq = int(request.rank), int(request.sequence_number)
        with self._lock:
            if self.broken is None and not 0 <= rank < self.world:
                self.broken = f"a request from rank {rank}, outside 0..{self.world - 1}"
            if self.broken is not None:
                raise CollectiveBroken(self.broken)
            call = self._calls.setdefault(seq, _Call(kind, params))
            if call.kind != kind or call.params != params or rank in call.arrived:
                self._break(f"rank {rank} sent a different call {seq} ({kind})")
                raise CollectiveBroken(self.broken)
            missing = self._left - call.arrived
            if missing:
                self._break(f"call {seq} ({kind}) waits for rank {min(missing)}, which left")
                raise CollectiveBroken(self.broken)
            call.arrived.add(rank)
            call.parts[rank] = request.send_buffer
            if len(call.arrived) == self.world:
                try:
                    call.result = combine([call.parts[r] for r in range(self.world)])
                except ValueError as exc:
                    self._break(f"call {seq} ({kind}): {exc}")
                call.parts.clear()
                call.done.set()
        if not call.done.wait(self.deadline_s):
            self.abort(f"call {seq} ({kind}): not every rank sent within {self.deadline_s:g} s")
        with self._lock:
            if call.result is None:
                raise CollectiveBroken(self.broken or "the collective broke")
            call.collected += 1
            if call.collected == self.world:
                del self._calls[seq]
            return call.result


class Aggregator(pb_grpc.FederatedServicer):
    """XGBoost's federated service for one collective attempt: `world` ranks whose workers
    dial it directly (the ``federated`` mode), calls answered once all have sent, each
    within `deadline_s`.

    Parameters
    ----------
    world : int
        The number of ranks.
    host : str
        The address to bind (and the name in the server certificate).
    credentials : grpc.ServerCredentials, optional
        Mutual TLS (:func:`server_credentials`); None only on loopback.
    deadline_s : float
        How long a call waits for the last rank before the collective is failed.
    """

    def __init__(
        self,
        world: int,
        *,
        host: str = "127.0.0.1",
        credentials: grpc.ServerCredentials | None = None,
        deadline_s: float = 60.0,
    ) -> None:
        if credentials is None and host not in LOOPBACK:
            raise ValueError(f"the aggregator needs mutual TLS off loopback (host {host!r})")
        self.calls = Calls(world, deadline_s)
        self.host = host
        self.credentials = credentials
        self.port: int | None = None
        self._server: grpc.Server | None = None

    # -- life --------------------------------------------------------------------------
    def start(self) -> Aggregator:
        # Every rank blocks a thread while it waits for the others.
        pool = futures.ThreadPoolExecutor(max_workers=2 * self.calls.world + 4)
        server = grpc.server(pool, options=GRPC_OPTIONS)
        pb_grpc.add_FederatedServicer_to_server(self, server)
        address = f"{self.host}:0"
        if self.credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, self.credentials)
        if not self.port:
            raise RuntimeError(f"the aggregator could not bind {address}")
        server.start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def broken(self) -> str | None:
        return self.calls.broken

    def abort(self, reason: str) -> None:
        """Fail every waiting rank now, and every later call."""
        self.calls.abort(reason)

    def stop(self) -> None:
        """Fail what waits, close the port and the threads. Safe to call twice."""
        self.abort("the aggregator stopped")
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5.0)

    def __enter__(self) -> Aggregator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the calls ---------------------------------------------------------------------
    def _collect(
        self,
        context: grpc.ServicerContext,
        kind: str,
        request: Any,
        params: tuple,
        combine: Callable[[list[bytes]], bytes],
    ) -> bytes:
        """The call's combined result; a broken collective aborts the RPC with the reason."""
        rank, seq = int(request.rank), int(request.sequence_number)
        finished = threading.Event()

        def gone() -> None:  # the RPC ended: if this rank was still waiting, it is lost
            if not finished.is_set():
                self.abort(f"rank {rank} left during call {seq} ({kind})")

        context.add_callback(gone)
        try:
            return self.calls.contribute(kind, request, params, combine)
        except CollectiveBroken as exc:
            context.abort(grpc.StatusCode.ABORTED, f"collective broken: {exc}")
            raise  # not reached: abort raises
        finally:
            finished.set()

    def Allreduce(self, request: pb.AllreduceRequest, context: grpc.ServicerContext):  # noqa: N802
        data_type, op = int(request.data_type), int(request.reduce_operation)
        out = self._collect(
            context,
            "allreduce",
            request,
            (data_type, op, len(request.send_buffer)),
            lambda parts: reduce_buffers(parts, data_type, op),
        )
        return pb.AllreduceReply(receive_buffer=out)

    def Allgather(self, request: pb.AllgatherRequest, context: grpc.ServicerContext):  # noqa: N802
        out = self._collect(
            context, "allgather", request, (len(request.send_buffer),), lambda p: b"".join(p)
        )
        return pb.AllgatherReply(receive_buffer=out)

    def AllgatherV(self, request: pb.AllgatherVRequest, context: grpc.ServicerContext):  # noqa: N802
        out = self._collect(context, "allgatherv", request, (), lambda p: b"".join(p))
        return pb.AllgatherVReply(receive_buffer=out)

    def Broadcast(self, request: pb.BroadcastRequest, context: grpc.ServicerContext):  # noqa: N802
        root = int(request.root)
        if not 0 <= root < self.calls.world:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"root {root} is not a rank")
        out = self._collect(context, "broadcast", request, (root,), lambda p: p[root])
        return pb.BroadcastReply(receive_buffer=out)


def server_credentials(key: bytes, cert: bytes, ca: bytes) -> grpc.ServerCredentials:
    """Mutual TLS: the server's key and certificate; a client must present a certificate
    signed by the job's CA."""
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
