"""How fast `pipeline serve` answers, side by side with MLflow's own server in one run.

    python bench/serving_speed.py [--rows N] [--load-seconds 60] [--clients 20]

Both servers run on loopback, one process each, from the same synthetic extract:

- ours: `pipeline serve` with the champion, a logistic model of the federated kind (the
  contract check, probability, band, three factors, model name and version per patient);
- MLflow's: `mlflow models serve --env-manager local --workers 1` on a plain scikit-learn
  pipeline over the same raw features (imputation, one-hot encoding of the categories,
  LogisticRegression), answering `predict_proba`.

Measured with the same requests, alternating between the two servers: p50 and p99 of one
patient (persistent connection), rows per second for a 10,000-row batch, and a bounded
load run per server (`--load-seconds`, 20 concurrent clients, each on its own connection,
in a separate process) with its 5xx count, p99 and the server's RSS growth. Goals: p50
under 10 ms, at most 1.3x MLflow's, at least 20,000 rows/s in batch, no 5xx under load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.champion import move_champion  # noqa: E402
from pipeline.config import DEFAULT_CONTRACT, load_config  # noqa: E402
from pipeline.contract import load_contract  # noqa: E402
from pipeline.extract import read_frame  # noqa: E402
from pipeline.features import FeatureEncoder  # noqa: E402
from pipeline.models.logistic import LogisticModel  # noqa: E402
from pipeline.registry import JobTracker, registry_client  # noqa: E402
from pipeline.synth import synthesize  # noqa: E402

GOAL_P50_MS, GOAL_RATIO, GOAL_ROWS_S = 10.0, 1.3, 20_000
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sklearn_pipeline(contract, frame):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f.name for f in contract.features if f.kind == "numeric"]
    other = [f.name for f in contract.features if f.kind != "numeric"]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                other,
            ),
        ]
    )
    X = frame[contract.feature_names].astype({c: object for c in other})
    X[other] = X[other].astype(str).where(X[other].notna(), None)
    model = make_pipeline(pre, LogisticRegression(max_iter=2000))
    return model.fit(X, contract.labels(frame)), other


def _start(cmd: list[str], port: int, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:3]} exited:\n{log.read_text()[-3000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ping")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{cmd[:3]} did not start:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tree(pid: int) -> list[int]:
    """The process and its descendants (`mlflow models serve` runs uvicorn as a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def _rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def _load_worker(port: int, body: bytes, seconds: float, clients: int, out) -> None:
    """`clients` threads on their own connections for `seconds` (a separate process)."""
    stop = time.monotonic() + seconds
    lat: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, seen = [], {}
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                status, _ = _post(conn, body)
            except OSError:
                status = 599
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine.append(time.perf_counter() - t)
            seen[status] = seen.get(status, 0) + 1
        with lock:
            lat.extend(mine)
            for k, v in seen.items():
                codes[k] = codes.get(k, 0) + v

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((lat, codes))


def _load(port: int, pid: int, body: bytes, seconds: float, clients: int) -> dict:
    before = _rss_mb(pid)
    queue: mp.Queue = mp.get_context("spawn").Queue()
    worker = mp.get_context("spawn").Process(
        target=_load_worker, args=(port, body, seconds, clients, queue)
    )
    worker.start()
    lat, codes = queue.get(timeout=seconds + 120)
    worker.join(timeout=30)
    lat.sort()
    return {
        "requests": len(lat),
        "per_s": len(lat) / seconds,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "5xx": sum(v for k, v in codes.items() if k >= 500),
        "statuses": codes,
        "rss_before_mb": before,
        "rss_growth_mb": _rss_mb(pid) - before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="training rows")
    parser.add_argument("--single", type=int, default=1000, help="one-patient requests each")
    parser.add_argument("--batches", type=int, default=7, help="10,000-row batches each")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()

    import mlflow
    from sklearn.linear_model import LogisticRegression

    contract = load_contract(DEFAULT_CONTRACT)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config, _ = synthesize(tmp / "extract", sites=1, rows=args.rows, seed=5)
        frame = read_frame(load_config(config).sites[0].path)
        uri = f"sqlite:///{tmp}/mlruns/mlflow.db"

        enc = FeatureEncoder(contract)
        fit = LogisticRegression(max_iter=2000).fit(enc.transform(frame), contract.labels(frame))
        ours_model = LogisticModel(contract, np.append(fit.coef_[0], fit.intercept_[0]))
        with JobTracker(uri, "serving-bench", "ours") as tracker:
            version = tracker.register(ours_model, str(DEFAULT_CONTRACT), "diabetes-risk")
        move_champion(registry_client(uri), "diabetes-risk", version)

        plain, other = _sklearn_pipeline(contract, frame)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_name="plain-sklearn"):
            info = mlflow.sklearn.log_model(
                plain,
                name="plain",
                pyfunc_predict_fn="predict_proba",
                skops_trusted_types=["numpy.dtype"],
            )
        cfg_path = tmp / "serve.yaml"
        cfg_path.write_text(
            yaml.safe_dump(
                {
                    "contract": str(DEFAULT_CONTRACT),
                    "sites": [{"name": "unused", "path": str(tmp / "unused")}],
                    "mlflow": {"tracking_uri": uri, "model_name": "diabetes-risk"},
                }
            )
        )

        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": uri,
        }
        ours_port, theirs_port = _port(), _port()
        ours = _start(
            [
                str(BIN / "python"),
                "-m",
                "pipeline.cli",
                "serve",
                "--config",
                str(cfg_path),
                "--port",
                str(ours_port),
            ],
            ours_port,
            tmp / "ours.log",
            env,
        )
        theirs = _start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                info.model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(theirs_port),
                "--workers",
                "1",
            ],
            theirs_port,
            tmp / "theirs.log",
            env,
        )
        try:
            rows = json.loads(frame[contract.feature_names].head(10_000).to_json(orient="records"))
            one = json.dumps({"dataframe_records": rows[:1]}).encode()
            batch = json.dumps({"dataframe_records": rows}).encode()
            results = _measure(args, one, batch, ours_port, theirs_port)
            for name, port, proc in (("ours", ours_port, ours), ("mlflow", theirs_port, theirs)):
                results[name]["load"] = _load(port, proc.pid, one, args.load_seconds, args.clients)
        finally:
            _stop(ours)
            _stop(theirs)
    return _report(results, args)


def _measure(args, one: bytes, batch: bytes, ours_port: int, theirs_port: int) -> dict:
    conns = {
        n: http.client.HTTPConnection("127.0.0.1", p, timeout=60)
        for n, p in (("ours", ours_port), ("mlflow", theirs_port))
    }
    for conn in conns.values():  # warm up
        for _ in range(50):
            assert _post(conn, one)[0] == 200
        assert _post(conn, batch)[0] == 200
    single = {n: [] for n in conns}
    for _ in range(args.single):
        for name, conn in conns.items():
            t = time.perf_counter()
            status, _ = _post(conn, one)
            single[name].append(time.perf_counter() - t)
            assert status == 200
    batches = {n: [] for n in conns}
    for _ in range(args.batches):
        for name, conn in conns.items():
            t = time.perf_counter()
            status, body = _post(conn, batch)
            batches[name].append(time.perf_counter() - t)
            assert status == 200 and len(json.loads(body)["predictions"]) == 10_000
    out = {}
    for name in conns:
        lat = sorted(single[name])
        out[name] = {
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "batch_s": statistics.median(batches[name]),
            "rows_s": 10_000 / statistics.median(batches[name]),
        }
    return out


def _report(r: dict, args) -> int:
    ours, theirs = r["ours"], r["mlflow"]
    ratio = ours["p50_ms"] / theirs["p50_ms"]
    print(f"{'':34s}{'pipeline serve':>16s}{'mlflow models serve':>22s}{'ratio':>8s}")
    print(f"{'one patient p50 (ms)':34s}{ours['p50_ms']:16.2f}{theirs['p50_ms']:22.2f}{ratio:8.2f}")
    p99 = ours["p99_ms"] / theirs["p99_ms"]
    print(f"{'one patient p99 (ms)':34s}{ours['p99_ms']:16.2f}{theirs['p99_ms']:22.2f}{p99:8.2f}")
    rr = ours["rows_s"] / theirs["rows_s"]
    batch = "10,000-row batch (rows/s)"
    print(f"{batch:34s}{ours['rows_s']:16,.0f}{theirs['rows_s']:22,.0f}{rr:8.2f}")
    lo, lt = ours["load"], theirs["load"]
    print(f"{'load: requests/s':34s}{lo['per_s']:16.0f}{lt['per_s']:22.0f}")
    print(f"{'load: p99 (ms)':34s}{lo['p99_ms']:16.1f}{lt['p99_ms']:22.1f}")
    print(f"{'load: 5xx':34s}{lo['5xx']:16d}{lt['5xx']:22d}")
    print(f"{'load: RSS growth (MB)':34s}{lo['rss_growth_mb']:16.1f}{lt['rss_growth_mb']:22.1f}")
    print(
        f"(load: {args.clients} clients for {args.load_seconds:g} s each; statuses ours "
        f"{lo['statuses']}, mlflow {lt['statuses']})"
    )
    goals = {
        f"p50 under {GOAL_P50_MS:g} ms": ours["p50_ms"] < GOAL_P50_MS,
        f"p50 at most {GOAL_RATIO}x MLflow's": ratio <= GOAL_RATIO,
        f"batch at least {GOAL_ROWS_S:,} rows/s": ours["rows_s"] >= GOAL_ROWS_S,
        "no 5xx under load": lo["5xx"] == 0,
    }
    for goal, met in goals.items():
        print(f"  {goal}: {'met' if met else 'NOT MET'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_speed.json").write_text(json.dumps(r, indent=2, default=str))
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
