"""The benchmark tables' committed records: cells from separate invocations end up in one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from trajectory_common import ResultsRecord, kept_notes  # noqa: E402


def _metrics(acc: float) -> dict:
    return {"test_acc_mean": acc, "test_acc_std": 0.01, "test_balanced_acc_mean": acc - 0.1,
            "test_balanced_acc_std": 0.02, "distill_seconds": 12.0, "eval_history": [1, 2, 3]}


def test_record_merges_writers_and_keeps_only_the_headline_numbers(tmp_path):
    path = tmp_path / "t.json"
    first, second = ResultsRecord(path), ResultsRecord(path)  # two processes sharing one record
    first.put(("breastmnist", "ptm", 2), _metrics(0.7))
    cells = second.put(("adrenalmnist3d", "mtt", 10), _metrics(0.6))
    assert set(cells) == {("breastmnist", "ptm", 2), ("adrenalmnist3d", "mtt", 10)}
    assert "eval_history" not in cells[("breastmnist", "ptm", 2)]  # the record stays small enough to commit
    assert first.cells() == cells
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed


def test_trajectory_table_keeps_the_columns_it_did_not_run(tmp_path):
    record = ResultsRecord(tmp_path / "trajectory.json")
    record.put(("breastmnist", "ptm", 2), _metrics(0.8))
    record.put(("breastmnist", "datm", 2), _metrics(0.75))
    record.put(("adrenalmnist3d", "ptm", 10), _metrics(0.7))
    out = tmp_path / "trajectory.md"
    out.write_text("old table\n<!-- notes -->\nhand-written\n<!-- /notes -->\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "trajectory.py"), "--table_only", "--datasets", "pneumoniamnist",
           "--ipcs", "2", "--work_dir", str(tmp_path / "runs"), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    text = out.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header.count("breastmnist ipc 2") == 1 and "adrenalmnist3d ipc 10" in header
    assert "pneumoniamnist ipc 2" in header  # what this invocation was asked for, still empty
    ptm_row = next(line for line in text.splitlines() if line.startswith("| ptm |"))
    assert "80.0 ± 1.0" in ptm_row and "70.0 ± 1.0" in ptm_row
    assert "- breastmnist: PTM 80.0 ± 1.0 vs best other `datm` 75.0 ± 1.0: met." in text
    assert kept_notes(out) == ["<!-- notes -->\nhand-written\n<!-- /notes -->", ""]
    assert json.loads((tmp_path / "trajectory.json").read_text()).keys() == {
        "breastmnist|ptm|2", "breastmnist|datm|2", "adrenalmnist3d|ptm|10"}


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_a_broken_record_is_an_error_that_names_it(tmp_path, bad):
    path = tmp_path / "t.json"
    path.write_text(bad)
    with pytest.raises(ValueError, match=r"t\.json"):
        ResultsRecord(path).cells()
