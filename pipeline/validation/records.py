"""Validation records kept at the site: rows validated before are not validated again
until something that made the result true has changed.

Two kinds of record, both beside the extract (``<extract>.records/``, where the site's
audit log is), both holding no row value:

- a **batch record** per Great Expectations run: the files that run validated (name
  within the extract and SHA-256 of the bytes read) and, per row-by-row expectation, its
  counts (:class:`~pipeline.validation.counts.RowCounts`). A later job takes a batch's
  counts only when every one of its files is read again with the same digest and the
  rest of the key is the same: the contract, the validation settings, the validation
  code itself (this package's sources), Great Expectations' version and the expectations
  run. Files no record covers are validated together in one new run (a month appended
  to the extract is a batch of one); a changed file sends its whole batch back to GE.
- a **summary record** per whole extract: the redacted summary (the allow-list that
  leaves the site) for exactly these files under the same key, so an unchanged extract
  is answered without computing anything.

A summary with file-level errors (an unreadable file, a check that could not run) is
never kept: the next job tries again. Every record is written whole and renamed.
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
from pipeline.validation.counts import RowCounts
from pipeline.validation.suite import Expectation
from pipeline.validation.summary import ValidationSummary

Files = tuple[tuple[str, str], ...]  # (name within the extract, content digest), in order


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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Basis:
    """Every part of a record's key but its files."""

    contract: str
    settings: str
    code: str
    ge: str

    @classmethod
    def of(cls, contract: Contract, settings: Mapping[str, Any]) -> Basis:
        return cls(
            contract=hashlib.sha256(contract.model_dump_json().encode()).hexdigest(),
            settings=json.dumps(dict(settings), sort_keys=True, default=str),
            code=_code_digest(),
            ge=ge_version(),
        )

    def to_dict(self) -> dict[str, str]:
        return {
            "contract": self.contract,
            "settings": self.settings,
            "code": self.code,
            "ge": self.ge,
        }


def suite_digest(exps: Sequence[Expectation]) -> str:
    """The expectations a batch ran (which columns had the contract's type, among others)."""
    return _digest([[e.type, dict(e.kwargs), e.rule, e.critical] for e in exps])


@dataclass(frozen=True)
class Batch:
    """One Great Expectations run's files and its counts per row-by-row expectation."""

    files: Files
    counts: tuple[RowCounts, ...]


class ValidationRecords:
    """The records of one site's extract."""

    def __init__(self, extract: str | Path) -> None:
        self.folder = beside(extract, "records")

    # -- whole-extract summaries ------------------------------------------------------
    def find(self, basis: Basis, files: Files) -> ValidationSummary | None:
        """The summary recorded for exactly `files` under `basis`."""
        key = _summary_key(basis, files)
        record = self._load(self.folder / f"summary-{_digest(key)[:32]}.json")
        if record is None or record.get("key") != key:
            return None
        try:
            return ValidationSummary.from_dict(record["summary"])
        except (KeyError, TypeError, ValueError):
            return None

    def keep(self, basis: Basis, files: Files, summary: ValidationSummary) -> None:
        """File `summary` (not one with file-level errors); it replaces the summary of any
        earlier set of files (one extract, one current summary)."""
        if summary.errors:
            return
        key = _summary_key(basis, files)
        path = self._write("summary", key, {"key": key, "summary": summary.to_dict()})
        for old in self.folder.glob("summary-*.json"):
            if old != path:
                old.unlink(missing_ok=True)

    # -- batches of GE counts ----------------------------------------------------------
    def batches(self, basis: Basis, suite: str, files: Files) -> list[Batch]:
        """Recorded batches that can stand in for validating some of `files`: every file
        of each is among them with the same digest; no two share a file."""
        current = dict(files)
        covered: set[str] = set()
        out = []
        paths = sorted(self.folder.glob("batch-*.json"), key=_mtime, reverse=True)
        for path in paths:
            record = self._load(path)
            if record is None or record.get("key") != _batch_key(basis, suite):
                continue
            try:
                batch = Batch(
                    files=tuple((str(n), str(d)) for n, d in record["files"]),
                    counts=tuple(RowCounts.from_list(c) for c in record["counts"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            names = {n for n, _ in batch.files}
            if names & covered or any(current.get(n) != d for n, d in batch.files):
                continue
            covered |= names
            out.append(batch)
        return out

    def keep_batch(self, basis: Basis, suite: str, batch: Batch) -> None:
        """File `batch`; any record sharing a file with it is out of date and removed."""
        key = _batch_key(basis, suite)
        body = {
            "key": key,
            "files": [list(f) for f in batch.files],
            "counts": [c.to_list() for c in batch.counts],
        }
        path = self._write("batch", {"key": key, "files": body["files"]}, body)
        names = {n for n, _ in batch.files}
        for old in self.folder.glob("batch-*.json"):
            record = self._load(old) if old != path else None
            if record is not None and names & {n for n, _ in record.get("files", ())}:
                old.unlink(missing_ok=True)

    # -- files -------------------------------------------------------------------------
    def _write(self, kind: str, key: Any, body: Mapping[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{kind}-{_digest(key)[:32]}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
        return path

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None


def _summary_key(basis: Basis, files: Files) -> dict[str, Any]:
    return {"basis": basis.to_dict(), "files": [list(f) for f in files]}


def _batch_key(basis: Basis, suite: str) -> dict[str, Any]:
    return {"basis": basis.to_dict(), "suite": suite}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
