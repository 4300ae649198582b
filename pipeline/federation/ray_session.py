"""Starting or joining Ray, and refusing to run without its token authentication.

A Ray cluster runs code for any client that reaches it, and its servers listen beyond
loopback (README, "Two commands"), so its token authentication is what keeps anyone on
the network from running code beside the sites' rows.
"""

from __future__ import annotations

import logging
import os
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

    A Ray cluster runs code for any client that reaches it, and its servers listen
    beyond loopback (README, "Two commands"): without its token authentication anyone on
    the network could run code beside the sites' rows. So a run refuses to start, or to
    use a connection, without it, unless `allow_unauthenticated` (``ray:
    allow_unauthenticated: true``) says the operator means it.

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
        ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False, **kwargs)
    try:
        _require_token_auth(allow_unauthenticated)
    except ConfigError:
        ray.shutdown()
        raise
    return True


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
