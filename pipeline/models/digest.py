"""A model's identity as a site sees it: the digest of its parameters.

A site scores only models it has on record (:mod:`pipeline.site.trained_models`); this
digest is how it recognises them, whoever sends them and however they were stored.
Only hashlib and numpy: a site imports it before any model library.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def payload_digest(payload: dict[str, Any]) -> str:
    """The digest of a model as a site is sent it (:meth:`Model.site_payload`): of its
    parameters only (the booster's bytes, or the weights as float64), so a version read
    back from the registry has the digest the job's model had."""
    h = hashlib.sha256()
    if "booster" in payload:
        h.update(b"booster\0" + bytes(payload["booster"]))
    elif "weights" in payload:
        weights = np.ascontiguousarray(payload["weights"], dtype=np.float64)
        h.update(b"weights\0" + weights.tobytes())
    else:
        raise ValueError("a model payload holds weights or a booster")
    return h.hexdigest()
