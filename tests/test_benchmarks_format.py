"""The benchmarks' report format: one JSON object with figures, targets, met and machine.

Runs the fastest benchmark at a tiny size; nothing here looks at the figures' values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_prints_one_report() -> None:
    script = ROOT / "benchmarks" / "bench_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--frames", "300", "--repeats", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    report = json.loads(done.stdout)  # the whole of stdout is one object
    assert report["benchmark"] == "overhead"
    assert {"figures", "targets", "met", "measured", "machine"} <= report.keys()
    assert report["met"].keys() == report["targets"].keys() == report["measured"].keys()
    assert all(value in (True, False, None) for value in report["met"].values())
    assert report["figures"]["frames"] == 300
    assert {"cpu_count", "python", "torch", "loadavg_1m"} <= report["machine"].keys()


def test_runner_table_has_a_row_per_target() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run_all import table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    reports = [
        {
            "benchmark": "x",
            "targets": {"a_min": 7.0, "b_max": 2.5},
            "met": {"a_min": True, "b_max": None},
            "measured": {"a_min": 8.1},
        },
        {"benchmark": "y", "error": "exit status 1"},
    ]
    lines = table(reports).splitlines()
    assert lines[2] == "| x | a | >= 7 | 8.1 | yes |"
    assert lines[3] == "| x | b | <= 2.5 | n/a | n/a |"
    assert lines[4] == "| y | - | - | exit status 1 | no |"
