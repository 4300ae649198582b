"""What listens during a default local `pipeline train --model xgboost`: every TCP
listener of the command's process tree (the driver, Ray's embedded cluster, the site
actors, the trees' aggregator and the sites' masking relays), sampled with `ss -ltnp`
every 0.2 s from start to end, and where each binds.

Prints one row per process kind and address kind (loopback, the machine's address, every
interface). Exits 1 if anything listens beyond loopback, which the README says nothing
does ("Everything runs offline"), so a new exposure is seen.

    .venv/bin/python bench/listeners.py [--rows 8000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PIPELINE = str(Path(sys.executable).parent / "pipeline")

_USER = re.compile(r'\("([^"]+)",pid=(\d+)')


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends(pid: int, root: int) -> bool:
    seen = 0
    while pid and seen < 64:
        if pid == root:
            return True
        pid = _parent(pid) or 0
        seen += 1
    return False


def _kind(name: str, pid: int, root: int) -> str:
    """What a listening process is, from its command line (`ss` cuts names at 15)."""
    if pid == root:
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        command = name
    for agent in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        if command.startswith(agent):
            return agent
    if command.startswith("ray::"):
        return "ray worker"
    if "autoscaler/_private/monitor.py" in command or "dashboard/dashboard.py" in command:
        return "ray metrics exporter"  # the autoscaler monitor's and dashboard head's
    return name


def _where(address: str) -> str:
    host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    if host in ("*", "0.0.0.0", "::"):
        return "every interface"
    if host.startswith("127.") or host == "::1":
        return "loopback"
    return "the machine's address"


def sample(root: int, found: dict[tuple[str, str], set[str]]) -> None:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        address = fields[3]
        for name, pid in _USER.findall(" ".join(fields[5:])):
            if (
                _descends(int(pid), root)
                or name.startswith("ray::")
                or name
                in (
                    "raylet",
                    "gcs_server",
                )
            ):
                found[(_kind(name, int(pid), root), _where(address))].add(address)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [PIPELINE, "synth", "--out", "fed", "--rows", str(args.rows)],
            cwd=work,
            check=True,
            capture_output=True,
        )
        found: dict[tuple[str, str], set[str]] = defaultdict(set)
        proc = subprocess.Popen(
            [PIPELINE, "train", "--config", "fed/federation.yaml", "--model", "xgboost"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ},
        )
        while proc.poll() is None:
            sample(proc.pid, found)
            time.sleep(0.2)
        said = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            print(said[-3000:])
            return 2
    exposed = []
    print(f"{'process':<24} {'binds':<22} {'ports':>5}")
    for (kind, where), addresses in sorted(found.items()):
        if where != "loopback":
            exposed.append(f"{kind} on {', '.join(sorted(addresses))}")
        print(f"{kind:<24} {where:<22} {len(addresses):>5}")
    if exposed:
        print("\nlistening beyond loopback: " + "; ".join(exposed))
        return 1
    print("\nnothing listens beyond loopback")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
