"""A site's long-lived Ed25519 identity, kept at the site beside its extract.

Its public half is pinned in the federation config (`sites[].identity_key`), so the
secure-aggregation keys each site signs per job can be checked by every other site
without trusting the coordinator.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.extract import beside


def identity_path(extract: Path) -> Path:
    return beside(extract, "identity.pem")


def load_or_create_identity(extract: Path) -> Ed25519PrivateKey:
    """The site's identity key; created (mode 0600) on first use."""
    path = identity_path(extract)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 identity key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()
