"""The identity keys a site has pinned for the federation's other sites, kept beside its
extract (``<extract>.pins.json``, one hex Ed25519 public key per site name).

A site checks every secure-sum key against these pins, never against keys a request
carries. A site it has not met yet is pinned the first time it is offered (trust on first
use, where the site's policy allows it): a hospital that wants no first-use trust writes
the file itself. A pinned key is never replaced by a request; a hospital that rotates its
identity tells the others, who edit their files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.extract import beside


class Pins:
    """A site's pinned identity keys (site -> 32 raw bytes).

    Parameters
    ----------
    extract : Path
        The site's extract; the pins live beside it.
    own : tuple of (str, bytes)
        The site's own name and identity public key, always pinned.
    """

    def __init__(self, extract: Path, own: tuple[str, bytes]) -> None:
        self.path = beside(extract, "pins.json")
        self.own = own

    def read(self) -> dict[str, bytes]:
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        pinned = {site: bytes.fromhex(key) for site, key in stored.items()}
        pinned[self.own[0]] = self.own[1]
        return pinned

    def resolve(
        self,
        offered: Mapping[str, str],
        first_use: bool,
        audit: Callable[..., Any] | None = None,
    ) -> dict[str, bytes]:
        """The pinned keys of the offered sites: the stored pin where there is one (an
        offered key that differs is ignored and recorded), the offered key pinned now for
        a site met for the first time (when `first_use` is trusted), else none."""
        pinned = self.read()
        new = {}
        for site, key in offered.items():
            if site in pinned:
                if bytes.fromhex(key) != pinned[site] and audit is not None:
                    audit("pin_mismatch", None, peer=site)
            elif first_use:
                new[site] = bytes.fromhex(key)
        if new:
            self._write({**pinned, **new})
            if audit is not None:
                audit("pinned", None, peers=",".join(sorted(new)))
        return {**new, **pinned}

    def _write(self, pinned: Mapping[str, bytes]) -> None:
        data = {site: key.hex() for site, key in sorted(pinned.items()) if site != self.own[0]}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, self.path)
