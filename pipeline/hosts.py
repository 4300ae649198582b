"""What an address a server binds says about who can reach it, written once for every
server the project starts (the scoring service, the secure trees' aggregator)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Bound to every interface: the machine's names, hence its URL, are unknown."""
    return host in ("0.0.0.0", "::", "")
