"""Secure XGBoost against a curious aggregator: every buffer the project's aggregator
receives in a real secure job (site actors on Ray, real XGBoost workers, each behind its
site's masking relay) is recorded. No SUM buffer is, or decodes to anything close to,
the site's histogram for the same call in the plaintext run; each looks uniformly random;
their sums decode to the plaintext sums; and the calls that pass in the clear are the
documented ones. A secure collective of two sites is refused, at the coordinator and at
the site."""

from __future__ import annotations

import json
import socket
import subprocess
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pytest
from scipy.stats import chisquare
from support.federation import make_config, write_site_policy

from pipeline.config import FederationConfig, load_config
from pipeline.errors import BudgetError
from pipeline.job import run_job
from pipeline.protocol.collective_masks import DATA_TYPES, UINT64, decode_sum
from pipeline.site.actor import SiteActor
from pipeline.site.audit import audit_log_path
from pipeline.strategies.xgboost import aggregator
from pipeline.strategies.xgboost.aggregator import MAX, MIN, SUM
from pipeline.strategies.xgboost.watchdog import CollectiveError
from pipeline.synth import synthesize

pytestmark = pytest.mark.slow
INTEGERS = {4, 5, 6, 7, 8, 9, 10, 11}


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config, _ = synthesize(tmp_path_factory.mktemp("trees3"), sites=3, rows=4500, seed=41)
    return config


def _config(base: Path, tmp: Path, communicator: str, **more) -> FederationConfig:
    xgboost = {"communicator": communicator, "rounds": 12, "early_stopping_rounds": 12, **more}
    tmp.mkdir()
    cfg = load_config(make_config(base, tmp, training={"round_timeout_s": 300, "xgboost": xgboost}))
    for site in cfg.sites:  # the plaintext run needs sites that allow it
        write_site_policy(site.path, secure_aggregation=communicator == "secure")
    return cfg


def _recorded(monkeypatch, cfg: FederationConfig, sockets: dict | None = None):
    """Run the job with an observer on the aggregator: SUM buffers by (call, rank), the
    other calls as (kind, data type, operation, bytes). With `sockets`, the listening
    sockets (`ss -ltn`) as the collective starts and at its second call, when every
    site's relay is up."""
    sums: dict[tuple[int, int], tuple[int, bytes]] = {}
    others: list[tuple] = []

    def progress(message: str) -> None:
        if sockets is not None and message.startswith("xgboost attempt 1:"):
            sockets["before"] = _listeners()

    def observe(kind: str, request) -> None:
        if sockets is not None and request.sequence_number == 1 and "during" not in sockets:
            sockets["during"] = _listeners()
        if kind == "allreduce" and request.reduce_operation == SUM:
            key = (int(request.sequence_number), int(request.rank))
            sums[key] = (int(request.data_type), bytes(request.send_buffer))
        else:
            others.append(
                (
                    kind,
                    int(getattr(request, "data_type", -1)),
                    int(getattr(request, "reduce_operation", -1)),
                    len(request.send_buffer),
                )
            )

    monkeypatch.setattr(aggregator, "observers", [observe])
    result = run_job(cfg, strategy="xgboost", register=False, progress=progress)
    return sums, others, result


def _check_listeners(sockets: dict, result, host: str, sites: int) -> None:
    """The sockets that opened for the collective: the aggregator's on `host` only, one
    relay per site on loopback, none on every interface."""
    (port,) = result.model.training_.ports
    opened = sockets["during"] - sockets["before"]
    assert {address for address, p in opened if p == port} == {host}, opened
    relays = {(address, p) for address, p in opened if p != port}
    assert len(relays) == sites and {address for address, _ in relays} == {"127.0.0.1"}
    assert not {address for address, _ in opened} & {"0.0.0.0", "*", "::"}


def test_the_aggregator_sees_only_masked_sums_whose_total_is_the_plaintext_sum(
    ray_session, three_sites: Path, tmp_path: Path, monkeypatch
) -> None:
    plain_cfg = _config(three_sites, tmp_path / "plain", "federated")
    plain, _, _ = _recorded(monkeypatch, plain_cfg)
    secure_cfg = _config(three_sites, tmp_path / "secure", "secure")
    sockets: dict = {}
    secure, others, result = _recorded(monkeypatch, secure_cfg, sockets)
    # Measured, not read from the code: on one machine everything is on loopback.
    _check_listeners(sockets, result, "127.0.0.1", len(secure_cfg.sites))

    run = mlflow.MlflowClient(secure_cfg.tracking_uri).get_run(result.run_id)
    scale = int(run.data.params["xgboost_fixed_point_scale"])
    assert secure and {t for t, _ in secure.values()} == {UINT64}  # every SUM masked
    assert {t for t, _ in plain.values()} & {1, 2}  # the plaintext run summed floats

    calls = defaultdict(dict)
    for (seq, rank), (_, buf) in secure.items():
        calls[seq][rank] = np.frombuffer(buf, dtype=np.uint64)
    compared = 0
    for seq, by_rank in sorted(calls.items()):
        data_type = plain[(seq, 0)][0]
        clear = {r: np.frombuffer(plain[(seq, r)][1], dtype=DATA_TYPES[data_type]) for r in by_rank}
        for rank, masked in by_rank.items():
            alone = np.frombuffer(decode_sum(masked, data_type, scale), dtype=clear[rank].dtype)
            # One site's buffer, decoded as if it were a sum, is nothing like its values.
            assert not np.allclose(alone, clear[rank], rtol=1e-3, atol=1e-3), (seq, rank)
            assert not np.array_equal(masked.view(np.uint8), clear[rank].view(np.uint8))
        total = np.zeros(next(iter(by_rank.values())).size, dtype=np.uint64)
        for masked in by_rank.values():
            total += masked  # what the aggregator computes: a sum mod 2^64
        decoded = np.frombuffer(decode_sum(total, data_type, scale), dtype=clear[0].dtype)
        expected = np.sum([clear[r].astype(np.float64) for r in sorted(clear)], axis=0)
        tolerance = 1e-6 if data_type in (1, 2) else 0
        np.testing.assert_allclose(decoded, expected, rtol=0, atol=tolerance)
        compared += 1
    assert compared == len(calls) > 50  # every secure SUM matched a plaintext call

    # Masked buffers are uniform bytes; the same test rejects the plaintext buffers.
    masked_bytes = np.concatenate([np.frombuffer(b, np.uint8) for _, b in secure.values()])
    plain_bytes = np.concatenate([np.frombuffer(b, np.uint8) for _, b in plain.values()])
    assert chisquare(np.bincount(masked_bytes, minlength=256)).pvalue > 1e-4
    assert chisquare(np.bincount(plain_bytes, minlength=256)).pvalue < 1e-12
    for _, buf in secure.values():
        words = np.frombuffer(buf, np.uint64)
        if words.size >= 400:  # the top bit of a uniform word is a fair coin
            assert abs((words >> np.uint64(63)).mean() - 0.5) < 0.1

    # What passed in the clear: MAX/MIN of integers and the 4-byte seed broadcast only.
    for kind, data_type, op, size in others:
        assert (kind == "allreduce" and op in (MAX, MIN) and data_type in INTEGERS) or (
            kind == "broadcast" and size <= 8
        ), (kind, data_type, op, size)

    # Each site's audit log records the mode and the calls it masked.
    for site in secure_cfg.sites:
        lines = [json.loads(x) for x in audit_log_path(site.path).read_text().splitlines()]
        served = [
            e for e in lines if e["request"] == "xgb_collective" and e["job"] == result.job_id
        ]
        assert served and served[-1]["mode"] == "secure" and served[-1]["attempt"] == "1"
        assert served[-1]["masked"] == len(calls) and served[-1]["refused"] == 0


def test_a_secure_collective_of_two_sites_is_refused(
    ray_session, tmp_path: Path, three_sites: Path
) -> None:
    base, _ = synthesize(tmp_path / "two", sites=2, rows=3000, seed=43)
    cfg = load_config(make_config(base, tmp_path, min_sites=2))
    with pytest.raises(CollectiveError, match="at least 3 sites.*with two, each site learns"):
        run_job(cfg, strategy="xgboost", register=False)

    # At the site, whatever the coordinator says: its own roster rule.
    three = load_config(three_sites)
    site = three.sites[0]
    write_site_policy(site.path)
    actor = SiteActor(site.name, str(site.path), str(three.contract))
    actor.load("two", "xgboost", 0.2, 0)
    env = {
        "dmlc_communicator": "secure",
        "federated_server_address": "127.0.0.1:1",
        "federated_world_size": 2,
        "federated_rank": 0,
        "relay_sites": [site.name, three.sites[1].name],
        "relay_attempt": "1",
    }
    kwargs = dict(
        params={}, num_boost_round=1, max_bin=16, early_stopping_rounds=1, valid_fraction=0.1
    )
    with pytest.raises(BudgetError, match="at least 3 sites"):
        actor.handle("xgboost", "xgb_train", "two", env=env, seed=0, **kwargs)
    # And a clear collective, under a policy that requires secure aggregation.
    env = {"dmlc_communicator": "federated", "federated_world_size": 3, "federated_rank": 0}
    with pytest.raises(BudgetError, match="joins only a secure XGBoost collective"):
        actor.handle("xgboost", "xgb_train", "two", env=env, seed=0, **kwargs)


def _listeners() -> set[tuple[str, int]]:
    """Every listening TCP socket on this machine, as `ss -ltn` reports it."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        # gRPC binds an IPv4 address as its IPv4-mapped IPv6 form: the same one address.
        found.add((address.strip("[]").removeprefix("::ffff:"), int(port)))
    return found


def _external_address() -> str:
    """This machine's address on its network (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]


def test_on_a_cluster_the_aggregator_listens_on_the_configured_address_only(
    ray_session, three_sites: Path, tmp_path: Path, monkeypatch
) -> None:
    """`training.xgboost.server_host` names the address sites dial (a multi-node
    cluster's): the aggregator binds that one, never every interface."""
    host = _external_address()
    cfg = _config(three_sites, tmp_path / "job", "secure", server_host=host)
    sockets: dict = {}
    _, _, result = _recorded(monkeypatch, cfg, sockets)
    _check_listeners(sockets, result, host, len(cfg.sites))
