"""A site's validation records: an extract validated before, with nothing changed, is
answered from its record (Great Expectations not even imported); anything that made the
result true changing validates again, and a corruption is then caught with its column
and rule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DEFAULT_CONTRACT
from pipeline.contract import Contract, load_contract
from pipeline.extract import read_table
from pipeline.synth import synthesize
from pipeline.validation import ValidationSummary, validate
from pipeline.validation import records as records_module
from pipeline.validation.records import ValidationRecords


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, written = synthesize(tmp_path_factory.mktemp("fed"), sites=1, rows=3000, seed=21)
    return written[0].path


@pytest.fixture
def extract(clean: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "site"
    shutil.copytree(clean, copy)
    return copy


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(DEFAULT_CONTRACT)


def _check(path: Path, contract: Contract, **kw) -> ValidationSummary:
    summary, _ = validate(
        [path],
        contract,
        site="site",
        write_docs=False,
        records=ValidationRecords(path),
        **kw,
    )
    return summary


def _same(a: ValidationSummary, b: ValidationSummary) -> bool:
    counts = {"validated_files": 0, "recorded_files": 0}
    return replace(a, **counts) == replace(b, **counts)


def _files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.parquet"))


def _rewrite(file: Path, table: pa.Table) -> None:
    """Plain encoding, no compression: a float changed in place keeps the file's size."""
    pq.write_table(table, file, compression="NONE", use_dictionary=False, write_statistics=False)


def test_an_unchanged_extract_is_answered_from_its_record(
    extract: Path, contract: Contract
) -> None:
    first = _check(extract, contract)
    n = len(_files(extract))
    assert first.passed and (first.validated_files, first.recorded_files) == (n, 0)
    again = _check(extract, contract)
    assert (again.validated_files, again.recorded_files) == (0, n)
    assert _same(first, again)
    fresh = _check(extract, contract, fresh=True)
    assert (fresh.validated_files, fresh.recorded_files) == (n, 0) and _same(first, fresh)

    # A copy of the extract elsewhere keeps its records (names are relative, keys are
    # contents), and a site that answers from them never imports Great Expectations.
    moved = extract.parent / "moved"
    shutil.copytree(extract, moved)
    shutil.copytree(extract.parent / "site.records", extract.parent / "moved.records")
    # Without the whole-extract summary too: the batch records cover every file, the
    # whole-extract rules run in plain code, and GE is still not imported.
    for summary in (extract.parent / "moved.records").glob("summary-*.json"):
        summary.unlink()
    probe = (
        "import sys; from pathlib import Path; "
        "from pipeline.contract import load_contract; "
        "from pipeline.config import DEFAULT_CONTRACT; "
        "from pipeline.validation import validate; "
        "from pipeline.validation.records import ValidationRecords; "
        f"p = Path({str(moved)!r}); "
        "s, t = validate([p], load_contract(DEFAULT_CONTRACT), site='site', write_docs=False, "
        "records=ValidationRecords(p)); "
        "print(s.recorded_files, s.passed, t is not None, 'great_expectations' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(n), "True", "True", "False"]


def test_a_changed_byte_or_a_same_size_replacement_is_validated_again(
    extract: Path, contract: Contract
) -> None:
    files = _files(extract)
    for f in files:  # plain-encoded files, so that a replacement can keep the size
        _rewrite(f, pq.read_table(f))
    assert _check(extract, contract).passed
    victim = files[3]
    table = pq.read_table(victim)
    size, mtime = victim.stat().st_size, victim.stat().st_mtime_ns
    bmi = table["bmi"].to_numpy(zero_copy_only=False).copy()
    present = np.flatnonzero(~np.isnan(bmi))
    bmi[present[::3]] = 900.0  # out of range, same width
    column = pa.array(bmi, from_pandas=True)  # NaN back to null, as it was
    _rewrite(victim, table.set_column(table.schema.get_field_index("bmi"), "bmi", column))
    os.utime(victim, ns=(mtime, mtime))  # same name, size and time: only the bytes differ
    assert victim.stat().st_size == size
    corrupted = _check(extract, contract)
    assert corrupted.validated_files == len(files) and not corrupted.passed
    assert any(r.startswith("bmi: range") for r in corrupted.failures()), corrupted.failures()

    # One byte flipped in another file, also keeping its size: read again, and refused.
    other = files[5]
    data = bytearray(other.read_bytes())
    data[len(data) // 2] ^= 0xFF
    other.write_bytes(bytes(data))
    flipped = _check(extract, contract)
    assert flipped.validated_files == len(files) and not flipped.passed


def test_a_new_contract_setting_or_library_validates_again(
    extract: Path, contract: Contract, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = len(_files(extract))
    assert _check(extract, contract).validated_files == n
    assert _check(extract, contract).recorded_files == n
    newer = contract.model_copy(update={"version": contract.version + 1})
    assert _check(extract, newer).validated_files == n
    assert _check(extract, contract, min_rows=50).validated_files == n
    monkeypatch.setattr(records_module, "ge_version", lambda: "9.9.9")
    assert _check(extract, contract).validated_files == n
    assert _check(extract, contract).recorded_files == n  # recorded under the new version


def test_an_appended_month_is_the_only_one_validated(extract: Path, contract: Contract) -> None:
    n = len(_files(extract))
    assert _check(extract, contract).validated_files == n
    old = read_table(_files(extract)[0])
    keys = pa.array([f"new-{i}" for i in range(old.num_rows)])
    new = extract / "followup_month=2026-10" / "part-0.parquet"
    new.parent.mkdir()
    pq.write_table(
        old.set_column(old.schema.get_field_index("patient_key"), "patient_key", keys), new
    )
    appended = _check(extract, contract)
    assert (appended.validated_files, appended.recorded_files) == (1, n)
    assert appended.passed and _same(appended, _check(extract, contract, fresh=True))
    # The fresh run filed one batch of every file: the next job has nothing to validate.
    assert (
        _check(extract, contract).validated_files,
        len(list((extract.parent / "site.records").glob("batch-*.json"))),
    ) == (0, 1)


def test_duplicate_keys_across_a_recorded_and_a_new_partition_are_caught(
    extract: Path, contract: Contract
) -> None:
    assert _check(extract, contract).passed
    old = _files(extract)[0]
    table = read_table(old).slice(0, 40)  # patients already in a recorded partition
    new = extract / "followup_month=2026-10" / "part-0.parquet"
    new.parent.mkdir()
    pq.write_table(table, new)
    summary = _check(extract, contract)
    assert (summary.validated_files, summary.recorded_files) == (1, len(_files(extract)) - 1)
    assert not summary.passed
    assert any(r.startswith("patient_key: patient key unique") for r in summary.failures())
