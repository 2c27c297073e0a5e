"""Silero VAD (``pipelines/audio_tagging.toml``) on the inputs met in use.

Other rates and stereo are resampled and mixed down by the source to Silero's 16 kHz mono;
silence, a file shorter than a chunk and NaN samples run without error; real-time pacing on
a virtual clock gives what offline gives; 32 streams batched in one run give each stream
what it gets alone. All on cuts of ``tests/data/speech_en_16k.wav``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr
from conftest import REPO, require

require(importlib.util.find_spec("silero_vad") is not None, "the silero-vad package")

from pipelines.silero import CHUNK, SAMPLE_RATE  # noqa: E402
from streamer.build import Overrides, apply_overrides, build_pipeline  # noqa: E402
from streamer.cli import main  # noqa: E402
from streamer.clock import VirtualClock  # noqa: E402
from streamer.config import load_config  # noqa: E402

PIPELINE = REPO / "pipelines" / "audio_tagging.toml"
SPEECH = REPO / "tests" / "data" / "speech_en_16k.wav"
EDGE_S = 0.1  # a segment boundary may move this much (s) when the input is resampled

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Span = tuple[float, float]
Records = list[dict[str, Any]]


# --- helpers -----------------------------------------------------------------------------


def run(
    tmp: Path, name: str, sources: list[Path], mode: str = "offline", pipeline: Path = PIPELINE
) -> tuple[Records, dict[str, Any]]:
    """``streamer run PIPELINE --source ...`` in-process: (records, summary)."""
    out, metrics = tmp / f"{name}.jsonl", tmp / f"{name}.json"
    argv = ["run", str(pipeline), "--mode", mode, "--out", str(out), "--metrics", str(metrics)]
    if len(sources) > 8:
        listing = tmp / f"{name}.sources"
        listing.write_text("".join(f"{s}\n" for s in sources))
        argv += ["--sources", str(listing)]
    else:
        for source in sources:
            argv += ["--source", str(source)]
    assert main([*argv, "-q"]) == 0
    return read(out), json.loads(metrics.read_text())


def read(path: Path) -> Records:
    return [json.loads(line) for line in path.read_text().splitlines()]


def speech(records: Records, stream: str | None = None) -> list[Span]:
    return [
        (r["t0"], r["t1"])
        for r in records
        if r["kind"] == "segment"
        and r["label"] == "speech"
        and (stream is None or r["stream"] == stream)
    ]


def segments(records: Records) -> list[tuple[str, str, float, float]]:
    return [(r["stream"], r["label"], r["t0"], r["t1"]) for r in records if r["kind"] == "segment"]


def probabilities(records: Records) -> np.ndarray:
    return np.array([r["scores"]["speech"] for r in records if r["kind"] == "frame"])


def frame_keys(records: Records) -> list[tuple[str, int, str]]:
    return [(r["stream"], r["start"], r["label"]) for r in records if r["kind"] == "frame"]


def assert_edges_close(ours: list[Span], reference: list[Span], tolerance: float) -> None:
    """Same number of segments, each boundary within ``tolerance`` seconds."""
    assert len(ours) == len(reference), (ours, reference)
    for (a0, a1), (b0, b1) in zip(ours, reference, strict=True):
        assert abs(a0 - b0) <= tolerance and abs(a1 - b1) <= tolerance, (ours, reference)


def iou(a: list[Span], b: list[Span]) -> float:
    both = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)
    total = sum(t1 - t0 for t0, t1 in a) + sum(t1 - t0 for t0, t1 in b) - both
    return both / total


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    samples, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == SAMPLE_RATE and samples.ndim == 1
    return samples


@pytest.fixture(scope="module")
def cut(audio: np.ndarray) -> np.ndarray:
    """10 s of speech (5 s to 15 s of the file): three speech segments."""
    return audio[5 * SAMPLE_RATE : 15 * SAMPLE_RATE]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, cut: np.ndarray) -> tuple[Path, Records]:
    """The 16 kHz mono cut and its offline records."""
    tmp = tmp_path_factory.mktemp("original")
    path = tmp / "cut.wav"
    soundfile.write(path, cut, SAMPLE_RATE)
    records, _ = run(tmp, "cut", [path])
    assert len(speech(records)) == 3
    return path, records


# --- other rates, stereo -----------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 22050])
def test_higher_rate_is_resampled_to_the_same_segments(
    tmp_path: Path, cut: np.ndarray, original: tuple[Path, Records], rate: int
) -> None:
    """Measured on this cut: 44.1 kHz and 22.05 kHz give the original's segments exactly;
    speech probabilities differ by at most ~0.025 (soxr's two passes)."""
    path = tmp_path / f"cut_{rate}.wav"
    soundfile.write(path, soxr.resample(cut, SAMPLE_RATE, rate), rate)
    records, _ = run(tmp_path, "up", [path])
    assert len(probabilities(records)) == len(probabilities(original[1]))
    assert_edges_close(speech(records), speech(original[1]), EDGE_S)


def test_8khz_is_resampled_like_a_band_limited_original(
    tmp_path: Path, cut: np.ndarray, original: tuple[Path, Records]
) -> None:
    """An 8 kHz file has nothing above 4 kHz, so Silero hears other audio than the 16 kHz
    original: on this cut one segment splits at a 160 ms pause (8.544-10.0 s becomes
    8.544-9.248 and 9.408-10.0; at 40 s into the file a boundary moves 160 ms instead).
    What the source does, resampling to 16 kHz, is checked against the original
    band-limited the same way (16k -> 8k -> 16k with soxr, run at 16 kHz): measured, the
    same segments and probabilities within 0.015. Against the original itself, the speech
    time overlaps (IoU >= 0.95) and every original boundary is within 100 ms of one."""
    low = soxr.resample(cut, SAMPLE_RATE, 8000)
    path, band = tmp_path / "cut_8k.wav", tmp_path / "band_limited.wav"
    soundfile.write(path, low, 8000)
    soundfile.write(band, soxr.resample(low, 8000, SAMPLE_RATE), SAMPLE_RATE)
    records, _ = run(tmp_path, "low", [path])
    reference, _ = run(tmp_path, "band", [band])
    assert_edges_close(speech(records), speech(reference), EDGE_S)
    p, q = probabilities(records), probabilities(reference)
    assert len(p) == len(q) == len(probabilities(original[1]))
    assert float(np.abs(p - q).max()) <= 0.05
    ours, theirs = speech(records), speech(original[1])
    assert iou(ours, theirs) >= 0.95
    edges = np.array([t for span in ours for t in span])
    for edge in (t for span in theirs for t in span):
        assert float(np.abs(edges - edge).min()) <= EDGE_S, edge


def test_stereo_is_mixed_down(
    tmp_path: Path, cut: np.ndarray, original: tuple[Path, Records]
) -> None:
    """Left the speech, right the speech at half level: the mix (0.75 x the speech) gives
    the original's segments; measured, one boundary moves by 32 ms (one chunk)."""
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([cut, 0.5 * cut], axis=1), SAMPLE_RATE)
    records, _ = run(tmp_path, "stereo", [path])
    assert len(probabilities(records)) == len(probabilities(original[1]))
    assert_edges_close(speech(records), speech(original[1]), EDGE_S)


# --- degenerate and bad input -------------------------------------------------------------


def test_silence_gives_no_speech(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(3 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    records, summary = run(tmp_path, "silence", [path])
    assert speech(records) == []
    assert len(probabilities(records)) == -(-3 * SAMPLE_RATE // CHUNK)
    assert float(probabilities(records).max()) < 0.5
    assert summary["dropped"] == 0


@pytest.mark.parametrize("mode", ["offline", "online", "realtime"])
def test_shorter_than_one_chunk(tmp_path: Path, cut: np.ndarray, mode: str) -> None:
    """300 samples (under 19 ms): one zero-padded chunk, one frame output."""
    path = tmp_path / "short.wav"
    soundfile.write(path, cut[:300], SAMPLE_RATE)
    records, _ = run(tmp_path, "short", [path], mode)
    (frame,) = [r for r in records if r["kind"] == "frame"]
    assert 0.0 <= frame["scores"]["speech"] <= 1.0
    assert speech(records) == []  # 19 ms is under min_on


def test_nan_samples_are_dropped_as_a_gap(
    tmp_path: Path,
    cut: np.ndarray,
    original: tuple[Path, Records],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1000 NaN samples at 3 s (in a float WAV) spoil chunks 93-95: they are dropped with a
    warning each, the state resets there (``on_gap = "reset"``), the rest is tagged.
    Measured: the segments are the original's (the gap falls in a pause)."""
    path = tmp_path / "nan.wav"
    spoiled = cut.copy()
    spoiled[3 * SAMPLE_RATE : 3 * SAMPLE_RATE + 1000] = np.nan
    soundfile.write(path, spoiled, SAMPLE_RATE, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        records, summary = run(tmp_path, "nan", [path])
    bad = {3 * SAMPLE_RATE // CHUNK + k for k in range(3)}
    assert bad == {93, 94, 95}
    warned = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warned) == 3 and all("'nan'" in line for line in warned)
    assert summary["dropped"] == 3
    starts = [r["start"] for r in records if r["kind"] == "frame"]
    assert len(starts) == len(probabilities(original[1])) - 3
    assert not bad & set(starts)
    assert_edges_close(speech(records), speech(original[1]), EDGE_S)


def test_a_source_rate_other_than_16k_is_refused_before_the_run(
    tmp_path: Path, original: tuple[Path, Records], capsys: pytest.CaptureFixture[str]
) -> None:
    """``[source] rate = 22050`` still makes 512-sample chunks, which fit the module's
    shape; the module declares ``input_rate`` so the run is refused before it starts
    (it used to run and give wrong segments: 6 instead of 3 here)."""
    variant = tmp_path / "rate_22050.toml"
    text = re.sub(r"(?m)^rate = 16000\b", "rate = 22050", PIPELINE.read_text(), count=1)
    assert "\nrate = 22050" in text
    variant.write_text(text)
    argv = ["run", str(variant), "--source", str(original[0]), "--mode", "offline"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "o.jsonl"), "-q"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "16000 Hz" in line and "22050 Hz" in line and "[source] rate" in line


# --- real-time pace, many streams ---------------------------------------------------------


def test_realtime_on_a_virtual_clock_equals_offline(
    tmp_path: Path, original: tuple[Path, Records]
) -> None:
    """``--mode realtime --pace realtime`` through the Python API on a VirtualClock: 10 s of
    audio paced chunk by chunk, nothing dropped, the offline segments and frames."""
    out = tmp_path / "realtime.jsonl"
    overrides = Overrides(
        sources=(str(original[0]),), mode="realtime", pace="realtime", out=str(out), quiet=True
    )
    config = apply_overrides(load_config(PIPELINE), overrides)
    clock = VirtualClock()
    summary = asyncio.run(build_pipeline(config, clock).run())
    assert summary["dropped"] == 0
    records = read(out)
    last = (len(probabilities(records)) - 1) * CHUNK / SAMPLE_RATE
    assert clock.now() >= last  # paced: the last chunk came at its media time (9.984 s)
    offline = original[1]
    assert segments(records) == segments(offline)
    assert frame_keys(records) == frame_keys(offline)
    # offline runs the convolutions on the whole file at once, which rounds differently in
    # float32, and the LSTM carries it on (measured: 1.2e-6 at most on this cut)
    assert float(np.abs(probabilities(records) - probabilities(offline)).max()) <= 1e-5


def test_32_streams_batched_equal_each_alone(tmp_path: Path, audio: np.ndarray) -> None:
    """32 cuts of 2-4 s at different offsets, listed in a ``--sources`` file, run together
    (batched, online). References: the same 32 sources with ``[model] max_batch = 1`` (each
    stream stepped alone, one run) for all 32, and four of them each in a run of its own.
    Every stream gets the same segments and frames, probabilities within 1e-6 (a batch of
    another size rounds the convolutions differently in float32)."""
    files = []
    for k in range(32):
        start = round((k * 1.73) % 55 * SAMPLE_RATE)
        length = round((2 + (k % 9) * 0.25) * SAMPLE_RATE)
        files.append(tmp_path / f"part{k:02d}.wav")
        soundfile.write(files[-1], audio[start : start + length], SAMPLE_RATE)
    together, summary = run(tmp_path, "together", files, "online")
    assert summary["mean_batch"] > 1
    streams = sorted({r["stream"] for r in together})
    assert streams == sorted(f.stem for f in files)

    one_by_one = tmp_path / "max_batch_1.toml"
    text = PIPELINE.read_text().replace("\n[model]\n", "\n[model]\nmax_batch = 1\n", 1)
    assert "max_batch = 1" in text
    one_by_one.write_text(text)
    single, single_summary = run(tmp_path, "single", files, "online", one_by_one)
    assert single_summary["mean_batch"] == 1
    references: dict[str, Records] = {s: [r for r in single if r["stream"] == s] for s in streams}
    for k in (0, 9, 17, 31):  # each truly alone as well
        alone, _ = run(tmp_path, f"alone{k}", [files[k]], "online")
        mine = references[files[k].stem]
        assert segments(alone) == segments(mine)
        assert frame_keys(alone) == frame_keys(mine)
        assert float(np.abs(probabilities(alone) - probabilities(mine)).max()) <= 1e-6

    with_speech = 0
    for stream in streams:
        mine = [r for r in together if r["stream"] == stream]
        reference = references[stream]
        assert segments(mine) == segments(reference), stream
        assert frame_keys(mine) == frame_keys(reference), stream
        assert float(np.abs(probabilities(mine) - probabilities(reference)).max()) <= 1e-6
        with_speech += bool(speech(mine))
    assert with_speech >= 24  # most cuts hold speech: the comparison is not of silences
