"""A champion move left half done by a killed process is finished or undone by whoever
comes next, on a real MLflow registry: the champion is never left pointing one way and
`previous-champion` another."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from pipeline.champion import (
    CHAMPION,
    MOVE_TAG,
    PREVIOUS_CHAMPION,
    alias_version,
    move_champion,
    repair_alias_move,
)

NAME = "diabetes-risk"


def _registry(tmp_path: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=str(tmp_path), run_id=None)
    return client


def _half_move(client: mlflow.MlflowClient, to: str, *, champion_set: bool) -> None:
    """What a move from version 1 to `to` leaves when killed after writing its intent and
    the previous-champion alias (and, with `champion_set`, the champion too)."""
    intent = {"from": "1", "to": to, "previous": None, "at": "2026-12-07T00:00:00+00:00"}
    client.set_registered_model_tag(NAME, MOVE_TAG, json.dumps(intent))
    client.set_registered_model_alias(NAME, PREVIOUS_CHAMPION, "1")
    if champion_set:
        client.set_registered_model_alias(NAME, CHAMPION, to)


def _aliases(client: mlflow.MlflowClient) -> tuple[str | None, str | None]:
    return alias_version(client, NAME, CHAMPION), alias_version(client, NAME, PREVIOUS_CHAMPION)


def test_a_half_move_is_undone_or_finished(tmp_path: Path) -> None:
    client = _registry(tmp_path)
    assert move_champion(client, NAME, "1") is None
    assert _aliases(client) == ("1", None)
    assert MOVE_TAG not in client.get_registered_model(NAME).tags

    _half_move(client, "2", champion_set=False)
    assert _aliases(client) == ("1", "1")  # the half state a kill leaves
    assert repair_alias_move(client, NAME) == "undone"
    assert _aliases(client) == ("1", None)
    assert MOVE_TAG not in client.get_registered_model(NAME).tags
    assert repair_alias_move(client, NAME) is None  # nothing left to do

    _half_move(client, "3", champion_set=True)
    assert repair_alias_move(client, NAME) == "finished"
    assert _aliases(client) == ("3", "1")

    # The next move repairs first: a half move from 3 to 2 is undone, then 2 replaces 3.
    client.set_registered_model_tag(
        NAME, MOVE_TAG, json.dumps({"from": "3", "to": "2", "previous": "1", "at": ""})
    )
    client.set_registered_model_alias(NAME, PREVIOUS_CHAMPION, "3")
    assert move_champion(client, NAME, "2", expected="3") == "3"
    assert _aliases(client) == ("2", "3")
    assert MOVE_TAG not in client.get_registered_model(NAME).tags
