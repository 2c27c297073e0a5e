"""Start-up: ``streamer run`` to its first output line, against ``python -c "import torch"``.

Run: ``.venv/bin/python benchmarks/bench_startup.py [--runs N]`` (about 15 s).

``streamer run pipelines/audio_tagging.toml --source recordings/speech_en --out TMP.jsonl
--quiet`` (Silero VAD, the demo pipeline, on the bundled 10 s recording) is launched as a
subprocess (the venv's ``streamer`` entry point, a fresh interpreter each time); the time
from launch to the first complete JSONL line in the output file (polled every 2 ms) is
the figure, the median of ``--runs``. The whole run to exit is given too. Baseline, in the
same script and the same way: a fresh ``python -c "import torch"`` to its exit (and
``import streamer.cli``, what the command imports before it parses its arguments).
Target: first output within 2.5 s, torch import included.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, emit, loadavg, log

PIPELINE = "pipelines/audio_tagging.toml"
SOURCE = "recordings/speech_en"
TARGETS = {"first_output_s_max": 2.5}


def streamer_bin() -> list[str]:
    """The venv's ``streamer`` script (what a user runs), else ``python -m streamer``."""
    script = Path(sys.executable).with_name("streamer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "streamer"]


def time_exit(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def first_output(out: Path) -> tuple[float, float]:
    """(launch to the first complete line in ``out``, launch to exit), in seconds."""
    out.unlink(missing_ok=True)
    args = [*streamer_bin(), "run", PIPELINE, "--source", SOURCE, "--out", str(out), "--quiet"]
    began = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first: float | None = None
    while first is None:
        try:
            with out.open("rb") as file:
                if b"\n" in file.read(4096):
                    first = time.perf_counter() - began
                    break
        except FileNotFoundError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.002)
    _, stderr = process.communicate(timeout=120)
    ended = time.perf_counter() - began
    if process.returncode != 0:
        raise RuntimeError(f"streamer run failed ({process.returncode}): {stderr.decode()[-500:]}")
    if first is None:  # finished between two polls
        first = ended if out.stat().st_size else float("nan")
    return first, ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="median of this many")
    args = parser.parse_args(argv)
    load_before = loadavg()
    began = time.perf_counter()
    python = sys.executable
    torch_s, cli_s, first_s, exit_s = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as name:
        out = Path(name) / "out.jsonl"
        first_output(out)  # warm the page cache (a first run from cold disk is not the figure)
        for k in range(args.runs):
            log(f"startup: run {k + 1}/{args.runs}")
            torch_s.append(time_exit([python, "-c", "import torch"]))
            cli_s.append(time_exit([python, "-c", "import streamer.cli"]))
            first, ended = first_output(out)
            first_s.append(first)
            exit_s.append(ended)
    median_first = statistics.median(first_s)
    figures = {
        "command": f"streamer run {PIPELINE} --source {SOURCE} --out TMP.jsonl --quiet",
        "runs": args.runs,
        "first_output_s": round(median_first, 3),
        "first_output_s_all": [round(v, 3) for v in first_s],
        "run_to_exit_s": round(statistics.median(exit_s), 3),
        "python_import_torch_s": round(statistics.median(torch_s), 3),
        "python_import_streamer_cli_s": round(statistics.median(cli_s), 3),
        "first_output_minus_import_torch_s": round(median_first - statistics.median(torch_s), 3),
        "wall_s": round(time.perf_counter() - began, 1),
    }
    emit(
        "startup",
        figures,
        TARGETS,
        {"first_output_s_max": median_first <= TARGETS["first_output_s_max"]},
        load_before,
        measured={"first_output_s_max": round(median_first, 3)},
        notes="medians; each a fresh interpreter launched as a subprocess; the page cache"
        " warmed by one run first",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
