"""The masked link between the sites' relays and the aggregator, over real TLS on
loopback, against relays and strangers that misbehave: a certificate of another job, no
certificate, a second connection of a site, a frame in another rank's name, a relay that
disappears, one that never sends."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.protocol.tls import JobPKI
from pipeline.strategies.xgboost.aggregator import SUM, Calls
from pipeline.strategies.xgboost.collective import is_listening
from pipeline.strategies.xgboost.masked_link import (
    Frame,
    LinkClient,
    LinkError,
    LinkServer,
    client_context,
    job_link_server,
    server_context,
)

SITES = ("north", "south", "east")
UINT64 = 11


@pytest.fixture
def pki(tmp_path: Path) -> JobPKI:
    return JobPKI.create(tmp_path / "pki", SITES)


def _server(pki: JobPKI, deadline_s: float = 10.0) -> LinkServer:
    return job_link_server(pki, "127.0.0.1", deadline_s).start()


def _client(pki: JobPKI, site: str, server: LinkServer, deadline_s: float = 10.0) -> LinkClient:
    context = client_context(pki.ca_cert, pki.client_key(site), pki.client_cert(site))
    return LinkClient(f"127.0.0.1:{server.port}", context, deadline_s).connect()


def _sum(rank: int, seq: int, values: np.ndarray) -> Frame:
    data = memoryview(values.astype(np.uint64)).cast("B")
    return Frame("allreduce", rank, seq, data, UINT64, SUM)


def _in_threads(calls: dict[int, Callable[[], object]]) -> dict[int, object]:
    """Run each rank's call in its own thread; each result or exception by rank."""
    out: dict[int, object] = {}

    def run(rank: int, call) -> None:
        try:
            out[rank] = call()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[rank] = exc

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_every_relay_gets_the_sum_and_the_roots_broadcast(pki: JobPKI) -> None:
    server = _server(pki)
    clients = [_client(pki, site, server) for site in SITES]
    try:
        values = {r: np.arange(5, dtype=np.uint64) * (r + 1) for r in range(3)}
        values[2][0] = np.uint64(2**64 - 1)  # the sum wraps modulo 2^64, as masking needs
        out = _in_threads({r: lambda r=r: clients[r].call(_sum(r, 0, values[r])) for r in range(3)})
        expected = values[0] + values[1] + values[2]
        for r in range(3):
            np.testing.assert_array_equal(np.frombuffer(out[r], np.uint64), expected)
        seed = {r: Frame("broadcast", r, 1, bytes([r + 7] * 4)) for r in range(3)}
        out = _in_threads({r: lambda r=r: clients[r].call(seed[r]) for r in range(3)})
        assert {bytes(v) for v in out.values()} == {bytes([7] * 4)}
    finally:
        for c in clients:
            c.close()
        server.stop()
    assert not is_listening("127.0.0.1", server.port)


def test_strangers_are_turned_away_and_the_collective_goes_on(pki: JobPKI, tmp_path: Path) -> None:
    other = JobPKI.create(tmp_path / "other", SITES)  # another job's CA, same site names
    server = _server(pki)
    clients: list[LinkClient] = []
    try:
        foreign = client_context(
            pki.ca_cert,  # it trusts the real server...
            other.client_key("north"),  # ...with a key the job never issued
            other.client_cert("north"),
        )
        rogue = LinkClient(f"127.0.0.1:{server.port}", foreign, 5.0)
        with pytest.raises((LinkError, OSError, ssl.SSLError)):
            rogue.connect().call(_sum(0, 0, np.ones(3)))
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(b"PXM1" + bytes(36))  # a frame without TLS
            try:
                reply = plain.recv(64)
            except ConnectionResetError:
                reply = b""
            assert not reply.startswith(b"PXM1")  # closed, or a TLS alert: never an answer
        clients = [_client(pki, site, server) for site in SITES]
        # A second connection of a site that is already in is closed at once.
        twice = _client(pki, "north", server)
        with pytest.raises(LinkError):
            twice.call(_sum(0, 0, np.ones(3)))
        out = _in_threads(
            {r: lambda r=r: clients[r].call(_sum(r, 0, np.ones(3))) for r in range(3)}
        )
        for r in range(3):
            np.testing.assert_array_equal(np.frombuffer(out[r], np.uint64), [3, 3, 3])
        assert server.calls.broken is None
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_a_frame_in_another_ranks_name_breaks_the_collective(pki: JobPKI) -> None:
    server = _server(pki)
    clients = [_client(pki, site, server) for site in SITES]
    try:
        out = _in_threads(
            {
                0: lambda: clients[0].call(_sum(0, 0, np.ones(3))),
                2: lambda: (time.sleep(0.3), clients[2].call(_sum(1, 0, np.ones(3))))[1],
            }
        )
        assert isinstance(out[0], LinkError) and "rank 2's relay sent a frame as rank 1" in str(
            out[0]
        )
        assert isinstance(out[2], LinkError)
        assert "as rank 1" in (server.calls.broken or "")
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_a_relay_that_disappears_fails_the_others_at_once(pki: JobPKI) -> None:
    server = _server(pki, deadline_s=30.0)
    clients = [_client(pki, site, server) for site in SITES]
    try:
        # Every rank finishes call 0; then rank 2 leaves while the others wait in call 1.
        _in_threads({r: lambda r=r: clients[r].call(_sum(r, 0, np.ones(2))) for r in range(3)})
        started = time.monotonic()
        threading.Timer(0.5, clients[2].close).start()
        out = _in_threads({r: lambda r=r: clients[r].call(_sum(r, 1, np.ones(2))) for r in (0, 1)})
        waited = time.monotonic() - started
        for r in (0, 1):
            assert isinstance(out[r], LinkError) and "rank 2" in str(out[r]), out[r]
        assert waited < 5.0  # not the 30 s deadline
        # And a call made after it left fails at once too.
        with pytest.raises(LinkError, match="rank 2, which left|collective broken"):
            clients[0].call(_sum(0, 2, np.ones(2)))
    finally:
        for c in clients:
            c.close()
        server.stop()
    assert not is_listening("127.0.0.1", server.port)


def test_a_relay_that_never_sends_fails_the_call_at_the_deadline(pki: JobPKI) -> None:
    server = _server(pki, deadline_s=1.0)
    clients = [_client(pki, site, server, deadline_s=1.0) for site in SITES]
    try:
        started = time.monotonic()
        out = _in_threads({r: lambda r=r: clients[r].call(_sum(r, 0, np.ones(2))) for r in (0, 1)})
        assert time.monotonic() - started < 5.0
        for r in (0, 1):
            assert isinstance(out[r], LinkError) and "within 1 s" in str(out[r]), out[r]
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_the_link_binds_one_address_never_every_interface(pki: JobPKI) -> None:
    context = server_context(pki.server_cert, pki.server_key, pki.ca_cert.read_bytes())
    for host in ("0.0.0.0", "::", ""):
        with pytest.raises(ValueError, match="not every interface"):
            LinkServer(Calls(3, 1.0), context, {}, host)
