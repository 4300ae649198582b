"""The champion alias: which registered version clinicians are served, moved so that a
process killed halfway leaves it either where it was or fully moved.

A move sets two aliases (the replaced champion becomes ``previous-champion``, then the
new version becomes ``champion``), and MLflow has no transaction across two calls. So the
move first writes its intent on the registered model (tag :data:`MOVE_TAG`: from, to,
and what ``previous-champion`` was), and clears it once both aliases are set. Whoever
next moves the champion, or starts a job, finds an intent left behind and finishes it
(the champion already moved) or undoes it (it had not): :func:`repair_alias_move`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import PipelineError
from pipeline.failpoints import stop_point

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
MOVE_TAG = "champion.move"  # the intent of a move under way


class RegistryError(PipelineError):
    """A registry request that cannot be done (unknown version, no previous champion)."""


class ChampionMoved(RegistryError):
    """The champion is no longer the one a decision was made against."""


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


_ANY = object()


def move_champion(
    client: Any, model_name: str, version: str, *, expected: str | None | object = _ANY
) -> str | None:
    """Make `version` the champion; the champion it replaces becomes `previous-champion`
    (so a rollback is one alias move). Returns the replaced version, if any.

    With `expected` (a version, or None for no champion) the move is a compare-and-set:
    if the champion is no longer `expected` (another process promoted or rolled back in
    the meantime) nothing moves and :class:`ChampionMoved` says so. MLflow has no atomic
    alias swap, so the check and the move are two registry calls apart; the federation's
    lock keeps this project's own processes from moving it between them."""
    repair_alias_move(client, model_name)
    former = alias_version(client, model_name, CHAMPION)
    if expected is not _ANY and former != (None if expected is None else str(expected)):
        raise ChampionMoved(
            f"the champion of {model_name} moved while the job ran: it is "
            f"{'version ' + former if former else 'none'}, the gate compared against "
            f"{'version ' + str(expected) if expected else 'none'}; not promoted"
        )
    if former == str(version):
        return former
    intent = {
        "from": former,
        "to": str(version),
        "previous": alias_version(client, model_name, PREVIOUS_CHAMPION),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    client.set_registered_model_tag(model_name, MOVE_TAG, json.dumps(intent))
    if former is not None:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, former)
    stop_point("alias")
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    client.delete_registered_model_tag(model_name, MOVE_TAG)
    return former


def repair_alias_move(client: Any, model_name: str) -> str | None:
    """Finish or undo a champion move a killed process left half done (see the module
    docstring); returns what was done ("finished", "undone") or None (nothing to do)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(model_name).tags
    except MlflowException:
        return None  # no such model yet
    if MOVE_TAG not in tags:
        return None
    intent = json.loads(tags[MOVE_TAG])
    champion = alias_version(client, model_name, CHAMPION)
    if champion == intent["to"]:
        done, previous = "finished", intent["from"]
    else:
        done, previous = "undone", intent["previous"]
    if previous is None:
        if alias_version(client, model_name, PREVIOUS_CHAMPION) is not None:
            client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    else:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, previous)
    client.delete_registered_model_tag(model_name, MOVE_TAG)
    return done


def promote_by_hand(
    client: Any, model_name: str, version: str, *, reason: str, by: str
) -> str | None:
    """Make `version` the champion past the gate, recorded as such on the version and its
    run (who, when, why). Returns the replaced champion's version, if any."""
    if not reason.strip():
        raise RegistryError("a promotion by hand needs a reason")
    mv = _version(client, model_name, version)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"promotion": "manual", "promotion.by": by, "promotion.at": when}
    record["promotion.reason"] = reason[:5000]
    for key, value in record.items():
        client.set_model_version_tag(model_name, str(version), key, value)
        client.set_tag(mv.run_id, key, value)
    return move_champion(client, model_name, str(version))


def rollback(client: Any, model_name: str) -> tuple[str, str | None]:
    """Move `champion` back to `previous-champion`; the demoted champion becomes the
    previous one, so a second rollback undoes the first. Returns (restored, demoted)."""
    repair_alias_move(client, model_name)
    previous = alias_version(client, model_name, PREVIOUS_CHAMPION)
    if previous is None:
        raise RegistryError(f"{model_name} has no {PREVIOUS_CHAMPION} to roll back to")
    demoted = move_champion(client, model_name, previous)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(model_name, previous, "rollback.restored_at", when)
    if demoted is not None:
        client.set_model_version_tag(model_name, demoted, "rollback.demoted_at", when)
    return previous, demoted


def _version(client: Any, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {version}") from None
