"""Helpers for the CLI tests: generate real media files, run the real ``streamer`` command,
read its JSON Lines output strictly.

The media are written with the real libraries (libsndfile through ``soundfile``, OpenCV's
FFmpeg backend through ``cv2.VideoWriter``): when one is missing, importing this module
fails, and so do the tests (they never skip).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soundfile as sf

from pipelines import motion_scenes

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEECH_RECORDING = REPO_ROOT / "recordings" / "speech_en"
SPEECH_PIPELINE = REPO_ROOT / "pipelines" / "speech_energy.toml"
#: Frames in recordings/speech_en (10 s at 16 kHz in 512-sample chunks, the last padded).
SPEECH_FRAMES = 313
RATE = 16000
CHUNK = 512
#: Keys every JSONL output line has (extra keys are allowed).
OUTPUT_KEYS = frozenset({"kind", "stream", "start", "end", "pts", "label", "scores", "latency_ms"})
#: Generous limit for one CLI run; a hang fails the test instead of hanging CI.
RUN_TIMEOUT = 60.0


# -- running the command ---------------------------------------------------------------------


def streamer_command() -> list[str]:
    """The installed ``streamer`` script of this interpreter's environment, else ``-m``."""
    script = Path(sys.executable).parent / "streamer"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "streamer.cli"]


def cli_env() -> dict[str, str]:
    """The environment for a CLI process: ours, without settings that change its output."""
    env = dict(os.environ)
    for name in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL", "PYTHONWARNINGS"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path = REPO_ROOT,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``streamer ARGS...`` to completion in ``cwd``; stdout and stderr as text."""
    return subprocess.run(
        [*streamer_command(), *(str(a) for a in args)],
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def imported_by_run(args: Sequence[str], module: str, cwd: Path = REPO_ROOT) -> bool:
    """Whether ``module`` is in ``sys.modules`` once ``streamer ARGS`` has run (exit code
    0 required) through ``streamer.cli.main`` in a fresh Python."""
    code = (
        "import sys\n"
        "from streamer.cli import main\n"
        f"code = main({list(args)!r})\n"
        "assert code == 0, code\n"
        f"print({module!r} in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def run_cli_together(
    *commands: Sequence[str | os.PathLike[str]],
    cwd: Path = REPO_ROOT,
    timeout: float = RUN_TIMEOUT,
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``streamer`` commands at the same time (independent inputs only)."""
    procs = [
        subprocess.Popen(
            [*streamer_command(), *(str(a) for a in args)],
            cwd=cwd,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results: list[subprocess.CompletedProcess[str]] = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A run's exit code and output, for assertion messages."""
    return (
        f"exit code {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-3000:]}"
        f"\n--- stderr ---\n{result.stderr[-5000:]}"
    )


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; fail (AssertionError) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- reading the output ----------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed; fails on a half line or a line that is not JSON."""
    raw = path.read_bytes()
    if not raw:
        return []
    assert raw.endswith(b"\n"), f"{path}: last line is incomplete: {raw[-200:]!r}"
    records: list[dict[str, Any]] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{number}: not JSON ({exc}): {line[:200]!r}") from exc
        assert isinstance(record, dict), f"{path}:{number}: not an object: {line[:200]!r}"
        records.append(record)
    return records


def check_outputs(records: Sequence[dict[str, Any]]) -> None:
    """The JSONL schema: keys and types of every frame output."""
    for record in records:
        missing = OUTPUT_KEYS - record.keys()
        assert not missing, f"missing keys {sorted(missing)} in {record}"
        assert record["kind"] == "frame"
        assert isinstance(record["stream"], str) and record["stream"]
        assert isinstance(record["start"], int) and record["start"] == record["end"]
        assert isinstance(record["pts"], float | int)
        assert isinstance(record["scores"], dict) and record["scores"]
        assert all(isinstance(v, float) for v in record["scores"].values()), record
        assert record["label"] in record["scores"]
        assert abs(sum(record["scores"].values()) - 1.0) < 1e-9, record
        latency = record["latency_ms"]
        assert latency is None or (isinstance(latency, float) and latency >= 0.0), record


def starts(records: Sequence[dict[str, Any]]) -> list[int]:
    return [int(r["start"]) for r in records]


def labels(records: Sequence[dict[str, Any]]) -> list[str]:
    return [str(r["label"]) for r in records]


def switches(records: Sequence[dict[str, Any]]) -> list[tuple[float, str]]:
    """``(pts, new label)`` at each change of label."""
    found: list[tuple[float, str]] = []
    for before, after in itertools.pairwise(records):
        if after["label"] != before["label"]:
            found.append((float(after["pts"]), str(after["label"])))
    return found


# -- audio -----------------------------------------------------------------------------------


def tone_then_silence(
    tone_s: float = 2.0, silence_s: float = 1.0, rate: int = RATE, freq: float = 440.0
) -> np.ndarray:
    """``[samples]`` float32: a sine at amplitude 0.5, then digital silence."""
    n = np.arange(round(tone_s * rate), dtype=np.float64)
    tone = 0.5 * np.sin(2.0 * np.pi * freq * n / rate)
    return np.concatenate([tone, np.zeros(round(silence_s * rate))]).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs: Any) -> Path:
    """Write ``samples`` with libsndfile (format from the extension unless given)."""
    sf.write(str(path), samples, rate, **kwargs)
    assert path.is_file() and path.stat().st_size > 0, f"libsndfile did not write {path}"
    return path


def write_tone_wav(path: Path, tone_s: float = 2.0, silence_s: float = 1.0) -> Path:
    """A user's WAV: ``tone_s`` of a 440 Hz tone then ``silence_s`` of silence, 16 kHz."""
    return write_audio(path, tone_then_silence(tone_s, silence_s), subtype="PCM_16")


def speech_samples(seconds: float | None = None) -> np.ndarray:
    """The committed speech recording's samples ``[samples]`` float32 (10 s at 16 kHz)."""
    meta = json.loads((SPEECH_RECORDING / "meta.json").read_text(encoding="utf-8"))
    stream = meta["streams"][0]
    data = np.fromfile(
        SPEECH_RECORDING / stream["data"], dtype=np.dtype(stream["dtype"]).newbyteorder("<")
    )
    data = data[: int(stream["meta"]["samples"])]
    return data if seconds is None else data[: round(seconds * RATE)]


def write_speech_wav(path: Path, seconds: float = 3.0) -> Path:
    """A WAV of the first ``seconds`` of the committed speech recording."""
    return write_audio(path, speech_samples(seconds), subtype="FLOAT")


# -- video -----------------------------------------------------------------------------------

DARK_LEVEL = 20
BRIGHT_LEVEL = 220


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float = 10.0,
    fourcc: str | None = None,
) -> Path:
    """Write BGR frames with ``cv2.VideoWriter`` (mp4v for .mp4, MJPG for .avi)."""
    if fourcc is None:
        fourcc = {".mp4": "mp4v", ".avi": "MJPG"}[path.suffix.lower()]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} video (FFmpeg backend missing?)"
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    assert path.is_file() and path.stat().st_size > 0, f"OpenCV did not write {path}"
    return path


def dark_then_bright(
    dark: int = 15, bright: int = 15, size: tuple[int, int] = (64, 48)
) -> list[np.ndarray]:
    """``dark`` frames at level 20 then ``bright`` at level 220, ``size`` = (width, height),
    each with a small moving square so that the encoder has something to encode."""
    width, height = size
    frames: list[np.ndarray] = []
    for i in range(dark + bright):
        level = DARK_LEVEL if i < dark else BRIGHT_LEVEL
        image = np.full((height, width, 3), level, np.uint8)
        x = (3 * i) % max(1, width - 8)
        image[4:12, x : x + 8] = 128
        frames.append(image)
    return frames


def write_dark_bright_video(
    path: Path, dark: int = 15, bright: int = 15, fps: float = 10.0
) -> Path:
    """A user's video: ``dark`` dark frames then ``bright`` bright ones, 64x48."""
    return write_video(path, dark_then_bright(dark, bright), fps=fps)


# -- damaged files -------------------------------------------------------------------------


def write_random_bytes(path: Path, size: int = 8192, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def write_cut(source: Path, path: Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``source``'s bytes (a file cut short)."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_corrupted(
    source: Path, path: Path, start: float = 0.5, length: int = 20000, seed: int = 0
) -> Path:
    """``source`` with ``length`` random bytes written over it from ``start`` (a fraction)."""
    data = bytearray(source.read_bytes())
    begin = int(len(data) * start)
    end = min(len(data), begin + length)
    data[begin:end] = random.Random(seed).randbytes(end - begin)
    path.write_bytes(bytes(data))
    return path


def copy_recording(path: Path, source: Path = SPEECH_RECORDING) -> Path:
    """A private copy of a committed recording folder, to damage."""
    shutil.copytree(source, path)
    return path


def assert_missing_weights_refused(
    pipeline: Path, command: str, tmp_path: Path, err: Callable[[], str]
) -> None:
    """A ready pipeline whose factory is given an absent weights file (``[model] options
    weights``) is refused in one line naming the file and the training ``command``, exit 2,
    before any output is written. ``err``: what the run printed on stderr."""
    from streamer.cli import main

    absent = tmp_path / "absent.pt"
    text = pipeline.read_text().replace(
        "[model]\n", f"[model]\noptions = {{ weights = '{absent}' }}\n", 1
    )
    copy = tmp_path / pipeline.name
    copy.write_text(text)
    out = tmp_path / "o.jsonl"
    code = main(["run", str(copy), "--out", str(out), "-q"])
    message = err().strip()
    assert code == 2
    assert len(message.splitlines()) == 1, message
    assert str(absent) in message and "do not exist" in message
    assert command in message, message  # the command that makes it
    assert not out.exists()


def lossless(path: Path, frames: np.ndarray, fps: float = 15.0) -> Path:
    """``frames`` as an FFV1 video (lossless: it decodes to exactly ``frames``; a ``[T, H,
    W]`` array makes a grey video, pixel format ``gray``)."""
    motion_scenes.write_video(str(path), frames, fps, fourcc="FFV1")
    return path
