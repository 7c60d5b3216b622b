"""The benchmarks keep working: each is run at a toy size and must print its JSON (numbers are not
checked here; they live in docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.drive import ROOT


@pytest.mark.integration  # each benchmark starts a system of its own
@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("bench.cost", ["--leads", "6", "--talk-seconds", "0.1"]),
        ("bench.large_run", ["--leads", "40", "--cap", "5", "--format", "ndjson"]),
    ],
)
def test_a_benchmark_runs_end_to_end_and_prints_one_json_object(module: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["bench"] == module.removeprefix("bench.")
    assert result["run_status"] == "completed", result
