"""Run every benchmark (``make bench``): each prints its JSON object; then a summary table.

Run: ``.venv/bin/python benchmarks/run_all.py [--full] [--only NAME ...] [--save DIR]``.

Each script runs in its own fresh interpreter, one after the other, with the sizes that
keep the whole run under 5 minutes on a 2-core machine (``--full``: each script's own
defaults, several minutes more). Each script's JSON object is printed on stdout as it
finishes (a script that fails prints ``{"benchmark": NAME, "error": ...}`` instead, and
the runner exits 1 at the end); the summary table of every target (markdown, the one
``docs/performance.md`` and the README carry) and the total wall time go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: (script, arguments for ``make bench``); ``--full`` drops the arguments.
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench_overhead.py", []),
    ("bench_pipeline.py", ["--quick"]),
    ("bench_models.py", ["--quick", "--threads", "1"]),
    ("bench_latency.py", ["--seconds", "4"]),
    ("bench_startup.py", []),
    ("bench_memory.py", []),
    ("bench_silero.py", ["--minutes", "3", "--streams", "32", "--seconds", "4"]),
    ("bench_motion.py", ["--frames", "300", "--seconds", "5"]),
    ("bench_live.py", ["--camera-seconds", "5", "--bare-seconds", "3", "--mic-seconds", "5"]),
    ("bench_mqtt_source.py", ["--audio-frames", "2000", "--video-frames", "200"]),
    ("bench_mqtt.py", ["--repeats", "5"]),
    (
        "bench_web.py",
        ["--seconds", "150", "--repeats", "2", "--brightness-repeats", "0", "--pairs", "0"],
    ),
    ("bench_ray.py", ["--streams", "64", "--seconds", "1.5", "--round-trips", "100"]),
]
TIMEOUT_S = 240


def run(script: str, args: list[str]) -> dict[str, Any]:
    """One script in a fresh interpreter; its JSON object (or an error object)."""
    name = script.removeprefix("bench_").removesuffix(".py")
    began = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / script), *args],
            stdout=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {TIMEOUT_S} s"}
    seconds = round(time.perf_counter() - began, 1)
    if done.returncode != 0:
        return {"benchmark": name, "error": f"exit status {done.returncode}", "wall_s": seconds}
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        return {"benchmark": name, "error": f"stdout is not one JSON object: {exc}"}
    report["args"] = args
    report["script_wall_s"] = seconds
    return report


def bound(target: str, value: float) -> str:
    """``>= x`` for a floor (``*_min``), ``<= x`` for a ceiling (``*_max``)."""
    sign = ">=" if target.endswith("_min") else "<="
    return f"{sign} {value:g}"


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(reports: list[dict[str, Any]]) -> str:
    """Markdown: one row per target of every benchmark."""
    rows = ["| benchmark | target | bound | measured | met |", "|---|---|---|---|---|"]
    for report in reports:
        name = report["benchmark"]
        if "error" in report:
            rows.append(f"| {name} | - | - | {report['error']} | no |")
            continue
        measured = report.get("measured", {})
        for target, value in report["targets"].items():
            met = report["met"].get(target)
            mark = "n/a" if met is None else "yes" if met else "**no**"
            shown = target.removesuffix("_min").removesuffix("_max")
            rows.append(
                f"| {name} | {shown} | {bound(target, value)} | {fmt(measured.get(target))}"
                f" | {mark} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", action="store_true", help="each script's default sizes")
    parser.add_argument("--only", nargs="*", help="names (overhead, pipeline, ...) to run")
    parser.add_argument("--save", type=Path, help="also write each JSON object to DIR/NAME.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    load = round(os.getloadavg()[0], 2)
    print(f"benchmarks: {os.cpu_count()} CPUs, 1-minute load {load}", file=sys.stderr)
    reports = []
    for script, quick in BENCHMARKS:
        name = script.removeprefix("bench_").removesuffix(".py")
        if args.only and name not in args.only:
            continue
        used = [] if args.full else quick
        print(f"== {script} {' '.join(used)}", file=sys.stderr, flush=True)
        report = run(script, used)
        reports.append(report)
        print(json.dumps(report, indent=2), flush=True)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    total = time.perf_counter() - began
    print("\n" + table(reports), file=sys.stderr)
    print(
        f"\nall benchmarks: {total:.0f} s wall, 1-minute load at the end {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    return 1 if any("error" in r for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
