"""Validation records kept at the site: a validated extract is not validated again until
something that made the result true has changed.

A record is the redacted summary (the same allow-list that leaves the site) filed under
its key: the content digest (SHA-256) of every file validated, the contract, the
validation settings, the source of the suite builder and checks (this package), and
Great Expectations' version. A job reuses a record only when every part of the key is
the same now: one byte changed in one file, a file replaced by another of the same name
and size, a new contract, other settings, other validation code or another GE release
each validate again. Records live beside the extract (``<extract>.records/``), where the
site's audit log is, and hold no row value: only the summary and the key's digests.

A summary with file-level errors (an unreadable file, a check that could not run) is
never kept: the next job tries again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.contract import Contract
from pipeline.extract import beside
from pipeline.validation.summary import ValidationSummary

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digests(files: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """(name, content digest) of each (name, path)."""
    return tuple((name, file_digest(path)) for name, path in files)


def ge_version() -> str:
    """Great Expectations' installed version, read without importing it."""
    return metadata.version("great_expectations")


@functools.cache
def _code_digest() -> str:
    """The validation code itself (this package's sources): a changed rule is a new key.
    Once per process: the code that runs is the code that was imported."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class RecordKey:
    """What makes a validation result true (see the module docstring)."""

    files: tuple[tuple[str, str], ...]  # (file within its extract, content digest), in order
    contract: str
    settings: str
    code: str
    ge: str

    @classmethod
    def of(
        cls,
        files: Sequence[tuple[str, str]],
        contract: Contract,
        settings: Mapping[str, Any],
    ) -> RecordKey:
        """`files`: (name, path) of each file read, the name relative to its extract (a
        copied extract keeps its records)."""
        return cls(
            files=digests(files),
            contract=hashlib.sha256(contract.model_dump_json().encode()).hexdigest(),
            settings=json.dumps(dict(settings), sort_keys=True, default=str),
            code=_code_digest(),
            ge=ge_version(),
        )

    def name(self) -> str:
        text = json.dumps(
            [list(map(list, self.files)), self.contract, self.settings, self.code, self.ge]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [list(f) for f in self.files],
            "contract": self.contract,
            "settings": self.settings,
            "code": self.code,
            "ge": self.ge,
        }


class ValidationRecords:
    """The records of one site's extract."""

    def __init__(self, extract: str | Path) -> None:
        self.folder = beside(extract, "records")

    def find(self, key: RecordKey) -> ValidationSummary | None:
        """The summary filed under `key`, if every part of the key matches."""
        path = self.folder / f"{key.name()}.json"
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if record.get("key") != key.to_dict():
            return None
        try:
            return ValidationSummary.from_dict(record["summary"])
        except (KeyError, ValueError):
            return None

    def keep(self, key: RecordKey, summary: ValidationSummary) -> None:
        """File `summary` under `key` (not one with file-level errors); written whole and
        renamed into place, so a reader never sees half a record."""
        if summary.errors:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key.name()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key.to_dict(), "summary": summary.to_dict()}))
        os.replace(tmp, path)
