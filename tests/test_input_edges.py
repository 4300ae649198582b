"""Input edges: what a hospital's file or an operator's argument can carry never writes
outside the output folder, never disappears silently, never appears in an error, and is
printed as text, never as console markup. Small CSVs made here (no shared data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.importer import import_csv

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "schemas" / "heart_disease.yaml"
PIPELINE = str(Path(sys.executable).parent / "pipeline")
ROW = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,{num}"  # one patient in the source's 14 columns


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_site_name_that_would_leave_the_output_folder_is_refused_first(tmp_path: Path) -> None:
    source = _csv(tmp_path / "a.csv", [ROW.format(num=1), ROW.format(num=0)])
    out = tmp_path / "out"
    for name in ("../escaped", "a/b", ".hidden", "UPPER", ""):
        with pytest.raises(DataError, match="site names are"):
            import_csv(HEART, {name: source}, out)
    assert not out.exists() and not (tmp_path / "escaped").exists()  # nothing was made
    done = subprocess.run(
        [PIPELINE, "import-csv", "--contract", str(HEART), "--out", str(out)]
        + ["--site", f"../escaped={source}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "site names are" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "escaped").exists()


def test_cells_that_are_not_numbers_are_reported_without_their_values(tmp_path: Path) -> None:
    rows = [ROW.format(num=0) for _ in range(8)]
    rows[2] = rows[2].replace("233", "SECRET-233")  # chol of data row 3
    rows[6] = rows[6].replace("233", "n/a-7")
    source = _csv(tmp_path / "b.csv", rows)
    with pytest.raises(DataError) as caught:
        import_csv(HEART, {"b": source}, tmp_path / "out")
    message = str(caught.value)
    assert str(source) in message and "'chol'" in message
    assert "2 row(s)" in message and "rows 3, 7" in message
    assert "SECRET" not in message and "n/a-7" not in message
    # A missing-value marker of the contract is missing, not an error.
    rows[2], rows[6] = ROW.format(num=0).replace("233", "?"), ROW.format(num=1)
    config, written = import_csv(HEART, {"b": _csv(source, rows)}, tmp_path / "out")
    assert written[0].rows == 8 and load_config(config).sites[0].name == "b"


def test_a_label_that_is_not_a_number_is_reported_without_its_value(tmp_path: Path) -> None:
    source = _csv(tmp_path / "c.csv", [ROW.format(num=1), ROW.format(num="positive?!")])
    with pytest.raises(DataError, match=r"column 'num' has 1 row\(s\).*data rows 2") as caught:
        import_csv(HEART, {"c": source}, tmp_path / "out")
    assert "positive?!" not in str(caught.value)


def test_a_value_outside_its_type_names_the_column_not_the_value(tmp_path: Path) -> None:
    source = _csv(tmp_path / "d.csv", [ROW.format(num=0).replace("63,1,", "63,0.731,")] * 3)
    with pytest.raises(DataError) as caught:  # sex is a whole number in the contract
        import_csv(HEART, {"d": source}, tmp_path / "out")
    message = str(caught.value)
    assert "'sex'" in message and "0.731" not in message


def test_names_from_an_extract_are_printed_as_text_not_markup() -> None:
    from pipeline.gate import Criterion, Decision
    from pipeline.report import print_decision, print_validation
    from pipeline.validation.summary import ExpectationResult, ValidationSummary

    column = "[link=http://evil.example]dx[/link][blink]"
    failed = ExpectationResult("expect_table_columns_to_match_set", column, False, rule="unknown")
    console = Console(record=True, width=300)
    print_validation(console, {"a": ValidationSummary("a", 10, False, (failed,))})
    decision = Decision(False, (Criterion("auc", False, f"site {column}", "[red]rule"),))
    print_decision(console, decision, "7")
    text = console.export_text()
    assert f"{column}: unknown" in text  # the brackets survive as written
    assert f"site {column}" in text and "[red]rule" in text
