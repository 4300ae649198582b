"""The allow-list of what a site may send back: aggregates only.

Every reply a SiteActor returns is one of these frozen types, and the coordinator checks
the type at its edge (:func:`check_reply`). None of them has a field whose size grows with
the site's row count, so no row-level data can ride along.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.protocol.secure_sum import Confirmation, Reveal, RoundSetup


@dataclass(frozen=True)
class SiteInfo:
    """Counts a site publishes about its cohort (used for weighting and quorum): rows,
    never labels (a label count leaves a site only through the secure sum or noised)."""

    site: str
    rows: int
    n_train: int
    n_test: int
    partitions: tuple[str, ...] = ()  # the extract's partition values (follow-up months)


@dataclass(frozen=True)
class ValidationReply:
    """A redacted validation summary (see pipeline.validation.ValidationSummary.to_dict)."""

    site: str
    summary: dict


@dataclass(frozen=True)
class ModelUpdate:
    """Model parameters or a (noisy) gradient sum, with the count it covers."""

    site: str
    vector: np.ndarray
    n: int


@dataclass(frozen=True)
class MaskedUpdate:
    """A secure-aggregation masked vector: meaningless alone, summable mod 2^64."""

    site: str
    masked: np.ndarray


@dataclass(frozen=True)
class PublicKeyReply:
    """A site's signed per-job key-agreement public key."""

    site: str
    signed_key: object


@dataclass(frozen=True)
class MaskedEvaluation:
    """Evaluation statistics of one or more models, masked for the secure sum, and each
    model's AUC on this site's own held-out rows (None where the site has fewer than 11
    patients in a class: suppressed at the site)."""

    site: str
    masked: np.ndarray
    auc: dict[str, float | None]


@dataclass(frozen=True)
class PartitionList:
    """The partition values (follow-up months) of a site's extract: those closed (before
    the month the coordinator named) and those still open; the node it runs on; and the
    months its last completed job trained on (its drift reference; none when no job it
    served has finished)."""

    site: str
    closed: tuple[str, ...]
    open: tuple[str, ...]
    node: str
    trained: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftReply:
    """Drift of the site's newest months against its reference months: masked histograms
    for the secure sum, and the site's own PSI per feature (None: suppressed)."""

    site: str
    masked: np.ndarray
    psi: dict[str, float | None]


@dataclass(frozen=True)
class Reservation:
    """A site's answer to a private job's planned spend: reserved in its own ledger (or
    refused with the reason, as an error), what it has left after it, and whether it adds
    only a share of the noise at the job's collusion threshold."""

    site: str
    epsilon: float
    remaining: float
    shares: bool


@dataclass(frozen=True)
class JobEnd:
    """A site's record of a job's end: its own ledger's status for the job's reservation
    (``released``: spent for good; ``unused``: given back; None: it held none), and
    whether this was the first end of a job this process served."""

    site: str
    job_id: str
    spend: str | None
    first: bool


@dataclass(frozen=True)
class BoosterReply:
    """A trained booster (model parameters) from one rank of the XGBoost collective."""

    site: str
    booster: bytes


@dataclass(frozen=True)
class ModelCommitment:
    """A site's record of the job's model (its digest), and which of the other models
    the coordinator means to evaluate beside it (by digest) the site has on record."""

    site: str
    digest: str
    known: tuple[str, ...]


ALLOWED_REPLIES = (
    SiteInfo,
    ValidationReply,
    ModelUpdate,
    MaskedUpdate,
    PublicKeyReply,
    MaskedEvaluation,
    PartitionList,
    DriftReply,
    BoosterReply,
    ModelCommitment,
    Reservation,
    JobEnd,
    RoundSetup,
    Confirmation,
    Reveal,
)


def check_reply(reply: object) -> object:
    """Refuse anything that is not an allow-listed reply type."""
    if not isinstance(reply, ALLOWED_REPLIES):
        raise TypeError(f"site reply of type {type(reply).__name__} is not allow-listed")
    return reply
