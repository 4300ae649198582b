"""A site's masking relay: its XGBoost worker's only way to the aggregator.

The relay runs inside the site's boundary (threads of the site's actor process) and
listens on loopback only. The site's XGBoost worker connects to it as if it were the
federated server; the relay forwards each call to the aggregator on the site's masked
link (:mod:`~pipeline.strategies.xgboost.masked_link`, mutual TLS), after deciding what
the call may carry out of the site (the pinned release's calls, read from XGBoost 3.2's
source and seen on the wire):

- every ``SUM`` allreduce (gradient and hessian histograms, gradient sums, the
  validation metric's numerator and denominator, counts) leaves masked
  (:mod:`pipeline.protocol.collective_masks`): fixed point for floats, the site's pairwise
  masks for the call's sequence number; the reply, the total, is decoded here;
- ``MAX`` / ``MIN`` of integers pass in the clear: the number of columns and features
  (the contract's, the same at every site) and the agreement on the contract grid's
  digest;
- a ``Broadcast`` of at most 8 bytes from rank 0 passes in the clear: the column
  sampler's random seed;
- anything else (gathers, bitwise reductions, MAX/MIN of floats, larger broadcasts, a
  request naming another rank) is refused, and the worker's training fails.

``counts`` says how many calls it masked, passed and refused (the audit log's record).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from pipeline.protocol import federated_pb2 as pb
from pipeline.protocol import federated_pb2_grpc as pb_grpc
from pipeline.protocol.collective_masks import (
    UINT64,
    CollectiveMasks,
    decode_sum,
    encode_sum,
)
from pipeline.strategies.xgboost.aggregator import GRPC_OPTIONS, MAX, MIN, SUM
from pipeline.strategies.xgboost.masked_link import Frame, LinkClient, LinkError

CLEAR_EXTREMA_TYPES = frozenset({4, 5, 6, 7, 8, 9, 10, 11})  # integer DataTypes
MAX_BROADCAST_BYTES = 8


class MaskingRelay(pb_grpc.FederatedServicer):
    """The relay of one site's worker (`rank`) to the aggregator at `upstream`.

    Parameters
    ----------
    upstream : str
        The aggregator's address.
    credentials : ssl.SSLContext
        The site's mutual TLS to the aggregator
        (:func:`~pipeline.strategies.xgboost.masked_link.client_context`).
    rank : int
        The site's rank: the only rank its worker may speak as.
    masks : CollectiveMasks
        The site's pairwise masks for this attempt.
    scale : int
        The fixed point of every float SUM (:func:`~pipeline.protocol.collective_masks.
        fixed_point_scale` of the job's bound).
    deadline_s : float
        The longest a forwarded call may take.
    """

    def __init__(
        self,
        upstream: str,
        credentials: ssl.SSLContext,
        rank: int,
        masks: CollectiveMasks,
        scale: int,
        deadline_s: float,
    ) -> None:
        self.rank = rank
        self.masks = masks
        self.scale = scale
        self.deadline_s = deadline_s
        self.counts: Counter[str] = Counter()
        self.mask_s = 0.0  # time spent encoding, masking and decoding
        self.refusal: str | None = None
        self._lock = threading.Lock()
        self._link = LinkClient(upstream, credentials, deadline_s)
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def start(self) -> MaskingRelay:
        self._link.connect()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        pb_grpc.add_FederatedServicer_to_server(self, server)
        self.port = server.add_insecure_port("127.0.0.1:0")  # loopback: inside the site
        server.start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5.0)
        self._link.close()

    def __enter__(self) -> MaskingRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the calls ---------------------------------------------------------------------
    def _refuse(self, context: grpc.ServicerContext, why: str) -> None:
        with self._lock:
            self.counts["refused"] += 1
            self.refusal = self.refusal or why
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"the site's relay refuses {why}")

    def _forward(self, context: grpc.ServicerContext, frame: Frame) -> bytearray:
        try:
            return self._link.call(frame)
        except LinkError as exc:
            context.abort(grpc.StatusCode.ABORTED, f"aggregator: {exc}")
            raise  # not reached: abort raises

    def _own(self, context: grpc.ServicerContext, request: Any) -> None:
        if int(request.rank) != self.rank:
            self._refuse(context, f"a request as rank {request.rank} (this site is {self.rank})")

    def Allreduce(self, request: pb.AllreduceRequest, context: grpc.ServicerContext):  # noqa: N802
        self._own(context, request)
        data_type, op = int(request.data_type), int(request.reduce_operation)
        seq = int(request.sequence_number)
        if op == SUM:
            started = time.perf_counter()
            try:
                masked = self.masks.mask(
                    seq, encode_sum(request.send_buffer, data_type, self.scale)
                )
            except ValueError as exc:
                self._refuse(context, f"call {seq}: {exc}")
            spent = time.perf_counter() - started
            out = Frame("allreduce", self.rank, seq, memoryview(masked).cast("B"), UINT64, SUM)
            reply = self._forward(context, out)
            started = time.perf_counter()
            total = np.frombuffer(reply, dtype=np.uint64)
            decoded = decode_sum(total, data_type, self.scale)
            with self._lock:
                self.counts["masked"] += 1
                self.mask_s += spent + time.perf_counter() - started
            return pb.AllreduceReply(receive_buffer=decoded)
        if op in (MAX, MIN) and data_type in CLEAR_EXTREMA_TYPES:
            with self._lock:
                self.counts["clear"] += 1
            out = Frame("allreduce", self.rank, seq, request.send_buffer, data_type, op)
            return pb.AllreduceReply(receive_buffer=bytes(self._forward(context, out)))
        self._refuse(context, f"call {seq}: reduce operation {op} of data type {data_type}")

    def Broadcast(self, request: pb.BroadcastRequest, context: grpc.ServicerContext):  # noqa: N802
        self._own(context, request)
        if int(request.root) != 0 or len(request.send_buffer) > MAX_BROADCAST_BYTES:
            self._refuse(
                context,
                f"call {request.sequence_number}: a broadcast of "
                f"{len(request.send_buffer)} bytes from rank {request.root}",
            )
        with self._lock:
            self.counts["clear"] += 1
        out = Frame("broadcast", self.rank, int(request.sequence_number), request.send_buffer)
        return pb.BroadcastReply(receive_buffer=bytes(self._forward(context, out)))

    def Allgather(self, request: pb.AllgatherRequest, context: grpc.ServicerContext):  # noqa: N802
        self._refuse(context, f"call {request.sequence_number}: an allgather")

    def AllgatherV(self, request: pb.AllgatherVRequest, context: grpc.ServicerContext):  # noqa: N802
        self._refuse(context, f"call {request.sequence_number}: an allgatherv")
