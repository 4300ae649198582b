"""Starting or joining Ray, and refusing to run without its token authentication.

A Ray cluster runs code for any client that reaches it, and a cluster's servers listen on
the network, so its token authentication is what keeps anyone there from running code
beside the sites' rows. The embedded local cluster listens on loopback only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from pipeline.errors import ConfigError

AUTH_MODE = "RAY_AUTH_MODE"


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    resources: dict[str, float] | None = None,
    *,
    allow_unauthenticated: bool = False,
) -> bool:
    """Start embedded Ray (or join `address`) unless already connected.

    A Ray cluster runs code for any client that reaches it, and a cluster's servers
    listen on the network: without its token authentication anyone there could run code
    beside the sites' rows (the embedded local one binds loopback: :func:`_on_loopback`).
    So a run refuses to start, or to use a connection, without it, unless
    `allow_unauthenticated` (``ray: allow_unauthenticated: true``) says the operator
    means it.

    Returns True if this call started or joined Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        _require_token_auth(allow_unauthenticated)
        return False
    mode = os.environ.get(AUTH_MODE)
    if mode is not None and mode.lower() != "token" and not allow_unauthenticated:
        raise ConfigError(_UNAUTHENTICATED.format(why=f"{AUTH_MODE}={mode} is set"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Inside a Ray Job (`ray job submit`) the driver is told its cluster by RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # The config's site resources exist on the embedded node, so the same config
        # runs on a laptop and on a cluster. Ray turns on token authentication for a new
        # local cluster and warns that it did; the README says so once instead.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        with _on_loopback():
            ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False, **kwargs)
    try:
        _require_token_auth(allow_unauthenticated)
    except ConfigError:
        ray.shutdown()
        raise
    return True


@contextlib.contextmanager
def _on_loopback() -> Iterator[None]:
    """Ray's single-machine mode while an embedded local cluster starts: its node address
    is 127.0.0.1, so its GCS, raylet, workers, agents and metrics exporters all bind
    loopback (``ray.init(_node_ip_address="127.0.0.1")`` does not: Ray swaps a loopback
    address for the machine's). It is Ray's own switch for macOS and Windows, read by
    this process when Ray is imported and by every process Ray starts from the
    environment they inherit; both are put back once the cluster is up, so a later
    `ray start` or a driver joining another machine's cluster is not held to loopback."""
    from ray._private import ray_constants

    before_env = os.environ.get(_CLUSTER_SWITCH)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = before_env


_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_UNAUTHENTICATED = (
    "Ray's token authentication is off ({why}): any client that reaches the cluster could "
    "run code beside the sites' rows. Unset it (a new local cluster turns token "
    "authentication on; a cluster is joined with RAY_AUTH_MODE=token and its token), or "
    "set `ray: {{allow_unauthenticated: true}}` in the config if you mean it"
)


def _require_token_auth(allowed: bool) -> None:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not allowed and not is_token_auth_enabled():
        raise ConfigError(_UNAUTHENTICATED.format(why="this connection does not use it"))
