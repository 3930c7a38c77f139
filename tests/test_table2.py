"""The Table 2 harness on a tiny slice of tiny6: trains, evaluates, aggregates over seeds, resumes."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from .conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


def test_table2_harness_aggregates_its_own_runs_and_resumes(tmp_path):
    source = shared_data("tiny6")
    for split, count in (("train", 16), ("val", 6)):
        for name in ("alp", "barn"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for file in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(file, tmp_path / "data" / split / name / file.name)
    command = [sys.executable, str(ROOT / "benchmarks" / "table2.py"), "--data", str(tmp_path / "data")]
    command += [
        "--arch",
        "small_cnn",
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--methods",
        "pgd,iwdd-r2",
        "--batch-size",
        "16",
    ]
    command += ["--train-per-class", "12"]
    command += ["--eval-limit", "12", "--iwda-limit", "2", "--runs", str(tmp_path / "runs"), "--parallel", "2"]
    command += ["--results", str(tmp_path / "table2.md")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, text=True, env=environment, timeout=600)
    text = (tmp_path / "table2.md").read_text()
    per_run = re.findall(r"^\| (pgd|iwdd-r2) \| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert len(per_run) == 4
    for method in ("pgd", "iwdd-r2"):
        row = re.search(rf"^\| {method} \| ([\d.]+) ± ([\d.]+) \|", text, re.M)
        clean = [float(run[2]) for run in per_run if run[0] == method]
        # Per-run values are printed to 0.1 points: the aggregates agree with them to that precision.
        assert abs(float(row.group(1)) - statistics.fmean(clean)) <= 0.1
        assert abs(float(row.group(2)) - statistics.stdev(clean)) <= 0.15
    assert "iwdd-r2 minus PGD" in text and "12 training images per class" in text and "torchattacks" in text
    evaluations = sorted((tmp_path / "runs").glob("*.eval.json"))
    stamps = [path.stat().st_mtime_ns for path in evaluations]
    subprocess.run(command, check=True, capture_output=True, text=True, env=environment, timeout=600)
    assert [path.stat().st_mtime_ns for path in evaluations] == stamps  # finished runs are not redone
