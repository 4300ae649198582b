"""A run refuses to start without Ray's token authentication unless the config says the
operator means it: Ray's servers listen beyond loopback, and a cluster runs code for any
client that reaches it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.synth import synthesize

PIPELINE = str(Path(sys.executable).parent / "pipeline")

_LISTENERS = """
import os, re, subprocess, time
from pathlib import Path
import ray
from pipeline.federation.ray_session import ensure_ray

def parent(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0

def ours(pid):
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = parent(pid)
    return False

from ray._private.authentication.authentication_utils import is_token_auth_enabled

assert ensure_ray(num_cpus=1, allow_unauthenticated=True)
print("token auth", is_token_auth_enabled())

@ray.remote
class Site:
    def pid(self):
        return os.getpid()

site = Site.remote()
ray.get(site.pid.remote())
time.sleep(2)  # the agents and exporters bind after the node registers
for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
    for name, pid in re.findall(r'\\("([^"]+)",pid=(\\d+)', line):
        if ours(int(pid)):
            print("LISTEN", line.split()[3], name)
ray.shutdown()
"""


def test_token_authentication_off_is_refused_unless_meant_and_ray_stays_on_loopback(
    tmp_path: Path,
) -> None:
    config, _ = synthesize(tmp_path / "fed", sites=3, rows=600, seed=3)

    def validate() -> subprocess.CompletedProcess:
        return subprocess.run(
            [PIPELINE, "validate", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
            cwd=tmp_path,
        )

    done = validate()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "token authentication is off" in done.stderr
    assert "RAY_AUTH_MODE=disabled" in done.stderr and "allow_unauthenticated" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("**/*.validation"))  # no site ran

    # The operator who means it says so (``ray: {allow_unauthenticated: true}``), and Ray
    # starts without token authentication, every listener of it on loopback (measured
    # with `ss -ltnp`, not read from Ray's docs: GCS, raylet, a worker, the agents, the
    # metrics exporters and the driver).
    allowed = subprocess.run(
        [sys.executable, "-c", _LISTENERS],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_AUTH_MODE": "disabled",
        },
        cwd=tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "token auth False" in allowed.stdout
    listeners = [line.split()[1:] for line in allowed.stdout.splitlines() if line[:6] == "LISTEN"]
    names = {name for _, name in listeners}
    assert {"gcs_server", "raylet"} <= names and len(listeners) >= 6, listeners
    for address, name in listeners:
        host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        assert host.startswith("127.") or host == "::1", (name, address)
    assert load_config(config).ray.allow_unauthenticated is False  # the default refuses
