"""Ctrl-C and SIGTERM on a running ``streamer run``: a real process, real signals.

The first SIGINT (or SIGTERM) drains: sources stop, queued work finishes, sinks flush and
close; exit code 0, the summary says ``stopped: interrupted``. A second SIGINT during the
drain aborts: exit code 130, at once, even while a model call takes 30 s; later signals
print nothing. Either way the JSONL file holds only complete lines, the outputs run from
frame 0 without a hole, and the summary counts exactly the lines written. An output pipe
whose reader has gone (``--out /dev/stdout | head``) stops the run quietly, exit 0. Every
wait has a timeout, so a hang fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from media import (
    REPO_ROOT,
    SPEECH_FRAMES,
    check_outputs,
    cli_env,
    read_jsonl,
    starts,
    streamer_command,
    wait_for,
)

#: Seconds a drained stop may take from the signal to the exit.
DRAIN_LIMIT = 5.0
#: Seconds to wait for the first outputs (process start-up included).
START_LIMIT = 30.0


@dataclass
class Running:
    """A ``streamer`` process whose stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    stdout: Path
    stderr: Path

    def lines_written(self) -> int:
        """Complete lines in the JSONL file so far."""
        try:
            return self.out.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def stderr_text(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def wait_for_lines(self, count: int) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"streamer exited early (code {self.proc.returncode}):\n{self.stderr_text()}"
                )
            return self.lines_written() >= count

        wait_for(ready, START_LIMIT, f"{count} lines in {self.out}")

    def finish(self, limit: float) -> tuple[int, float]:
        """Wait for the exit; the exit code and how long it took."""
        began = time.monotonic()
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"streamer did not exit within {limit} s of the signal:\n{self.stderr_text()}"
            ) from None
        return code, time.monotonic() - began

    def describe(self) -> str:
        return f"exit code {self.proc.returncode}\n--- stderr ---\n{self.stderr_text()[-5000:]}"


Launcher = Callable[..., Running]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Launcher]:
    """``start(args...)`` runs ``streamer run ARGS --out OUT``; killed at teardown if alive."""
    running: list[Running] = []

    def launch(*args: str | os.PathLike[str], path: Path | None = None) -> Running:
        """``path``: a folder to import model factory modules from."""
        n = len(running)
        out = tmp_path / f"out{n}.jsonl"
        stdout, stderr = tmp_path / f"stdout{n}.txt", tmp_path / f"stderr{n}.txt"
        command: Sequence[str] = [
            *streamer_command(),
            "run",
            *(str(a) for a in args),
            "--out",
            str(out),
        ]
        with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**cli_env(), **({"PYTHONPATH": str(path)} if path else {})},
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
            )
        run = Running(proc, out, stdout, stderr)
        running.append(run)
        return run

    yield launch
    for run in running:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=10)


def check_file(out: Path) -> list[dict[str, object]]:
    """Every line parses (no half line); outputs contiguous from frame 0."""
    records = read_jsonl(out)
    check_outputs(records)
    assert records, f"{out} is empty"
    assert starts(records) == list(range(len(records)))
    return records


def check_drained(
    run: Running, signal_name: str, code: int, took: float
) -> list[dict[str, object]]:
    assert code == 0, run.describe()
    assert took < DRAIN_LIMIT, f"draining took {took:.1f} s\n{run.describe()}"
    stderr = run.stderr_text()
    assert "Traceback" not in stderr and "streamer: error" not in stderr, run.describe()
    assert f"{signal_name}: draining" in stderr, run.describe()
    assert "stopped: interrupted" in stderr, run.describe()
    return check_file(run.out)


def test_sigint_drains_and_exits_0(start: Launcher, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    run = start("--source", "recordings/speech_en", "--pace", "realtime", "--metrics", metrics)
    run.wait_for_lines(10)
    run.proc.send_signal(signal.SIGINT)
    code, took = run.finish(DRAIN_LIMIT * 2)
    records = check_drained(run, "SIGINT", code, took)
    assert len(records) < SPEECH_FRAMES  # it stopped early: 10 s of media at real time
    assert {r["stream"] for r in records} == {"speech_en"}
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["stopped"] == "interrupted"
    # Queued work finished: every frame that entered came out and was written.
    assert summary["frames_in"] == summary["outputs"] == len(records)
    # Console lines went to stdout, complete ones.
    printed = run.stdout.read_text(encoding="utf-8").splitlines()
    assert len(printed) == len(records)
    assert all(line.startswith("[speech_en]") for line in printed)


def test_sigterm_drains_like_sigint(start: Launcher) -> None:
    # synthetic:tone never ends by itself: only the signal stops it.
    run = start("--source", "synthetic:tone", "--pace", "realtime", "-q")
    run.wait_for_lines(10)
    run.proc.send_signal(signal.SIGTERM)
    code, took = run.finish(DRAIN_LIMIT * 2)
    records = check_drained(run, "SIGTERM", code, took)
    assert {r["label"] for r in records} == {"sound"}
    assert f"frames in {len(records)}, outputs {len(records)}" in run.stderr_text()


class SlowReader:
    """Reads a FIFO slowly on a thread (``chunk`` bytes every ``pause`` s) until EOF: a
    sink writing into it backs up, as one writing to a slow disk or consumer would."""

    def __init__(self, fifo: Path, chunk: int = 512, pause: float = 0.01) -> None:
        self.data = bytearray()
        self._fifo, self._chunk, self._pause = fifo, chunk, pause
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._fifo.open("rb", buffering=0) as pipe:  # waits for the writer to open
            while block := pipe.read(self._chunk):
                self.data += block
                time.sleep(self._pause)

    def records(self) -> list[dict[str, object]]:
        self._thread.join(timeout=DRAIN_LIMIT * 2)
        assert not self._thread.is_alive(), "the FIFO was never closed"
        text = self.data.decode("utf-8")
        assert text.endswith("\n") or not text, "a half line in the FIFO"
        records = [json.loads(line) for line in text.splitlines()]
        check_outputs(records)
        assert starts(records) == list(range(len(records)))
        return records


def test_second_sigint_aborts_with_130(start: Launcher, tmp_path: Path) -> None:
    # A JSONL sink writing into a FIFO that is read slowly: its queue fills up, so the
    # drain after the first SIGINT has hundreds of outputs to write; the second aborts.
    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(fifo)
    reader = SlowReader(fifo)
    pipeline = tmp_path / "fifo.toml"
    pipeline.write_text(
        f"""
[source]
uri = "synthetic:tone"

[model]
builtin = "energy"

[run]
mode = "offline"
max_frames = 100000000

[[sinks]]
type = "jsonl"
path = "replaced by --out"

[[sinks]]
type = "jsonl"
path = "{fifo}"
""",
        encoding="utf-8",
    )
    metrics = tmp_path / "metrics.json"
    run = start(pipeline, "-q", "--metrics", metrics)
    run.wait_for_lines(500)  # the other (fast) sink, --out
    wait_for(lambda: len(reader.data) > 10_000, START_LIMIT, "outputs in the FIFO")
    run.proc.send_signal(signal.SIGINT)
    # 5 ms apart: two deliveries (not one coalesced signal), well inside the drain of the
    # outputs queued for the FIFO's sink
    time.sleep(0.005)
    run.proc.send_signal(signal.SIGINT)
    code, _ = run.finish(DRAIN_LIMIT * 2)
    assert code == 130, run.describe()
    stderr = run.stderr_text()
    assert "draining" in stderr, run.describe()
    assert "Traceback" not in stderr, run.describe()
    assert "aborted" in stderr, run.describe()
    records = reader.records()
    # An output counts once every sink wrote it: the slow sink's lines, no more, no less.
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["outputs"] == len(records), run.describe()
    assert f"outputs {len(records)}," in stderr, run.describe()
    assert len(check_file(run.out)) >= len(records)  # the fast sink is never behind


#: A model factory module: a GRU tagger whose head sleeps 30 s from its FAST-th call on
#: (call 1 is the dry step before the run), first touching MARKER.
SLOW_MODEL = """
import time
from pathlib import Path

import torch
from torch import nn


class SlowHead(nn.Module):
    def __init__(self, marker, fast):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.marker = Path(marker)
        self.fast = fast
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.fast:
            self.marker.touch()
            time.sleep(30)
        return self.linear(x)


def build(marker, fast):
    torch.manual_seed(0)
    return nn.GRU(512, 4, batch_first=True), SlowHead(marker, fast)
"""

#: Seconds within which an abort must end the process (the model call takes 30 s).
ABORT_LIMIT = 10.0


def test_abort_does_not_wait_for_a_model_call(start: Launcher, tmp_path: Path) -> None:
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL, encoding="utf-8")
    marker = tmp_path / "sleeping"
    pipeline = tmp_path / "slow.toml"
    pipeline.write_text(
        f"""
[source]
uri = "recordings/speech_en"
pace = "realtime"

[model]
factory = "slow_model:build"
options = {{ marker = "{marker}", fast = 6 }}
labels = ["quiet", "loud"]
""",
        encoding="utf-8",
    )
    metrics = tmp_path / "metrics.json"
    run = start(pipeline, "-q", "--metrics", metrics, path=tmp_path)

    def sleeping() -> bool:
        assert run.proc.poll() is None, run.describe()
        return marker.exists()

    wait_for(sleeping, START_LIMIT, "the model's long call")
    run.proc.send_signal(signal.SIGINT)  # drains: would wait for the model call
    wait_for(lambda: "draining" in run.stderr_text(), DRAIN_LIMIT, "the drain message")
    run.proc.send_signal(signal.SIGINT)  # aborts: must not wait for it
    time.sleep(0.005)
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGINT)  # a third, while it is on its way out
    code, _ = run.finish(ABORT_LIMIT)
    assert code == 130, run.describe()
    stderr = run.stderr_text()
    assert "Traceback" not in stderr and "Exception" not in stderr, run.describe()
    records = check_file(run.out)  # what the fast calls before the long one gave
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["outputs"] == len(records)
    assert summary["stopped"] == "interrupted"


@pytest.mark.parametrize(
    "output", ["-q --out /dev/stdout", "--pace fast"], ids=["jsonl", "console"]
)
def test_output_pipe_closed_by_head_ends_quietly(tmp_path: Path, output: str) -> None:
    # synthetic:tone never ends: only the closed pipe stops the run.
    stderr = tmp_path / "stderr.txt"
    command = " ".join(
        [
            *streamer_command(),
            f"run --source synthetic:tone {output} 2>{stderr}",
            "| head -n 3; exit ${PIPESTATUS[0]}",
        ]
    )
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_LIMIT,
        check=False,
    )
    errors = stderr.read_text(encoding="utf-8")
    assert result.returncode == 0, errors
    lines = result.stdout.splitlines()
    if "/dev/stdout" in output:
        assert [json.loads(line)["start"] for line in lines] == [0, 1, 2]
    else:
        assert [line.split()[2] for line in lines] == ["#0", "#1", "#2"]
    # Nothing on stderr but the summary, which says why the run stopped.
    assert errors.strip() and all(line.startswith("summary: ") for line in errors.splitlines()), (
        errors
    )
    assert "stopped: broken-pipe" in errors
