"""Exact times and counts at the edges of a stream.

- Log-mel makes steps only from the real samples (``StreamStart.meta["samples"]``), not
  from the zero padding of the last chunk: the same audio gives the same steps whatever
  ``[source] chunk`` is, and no step (nor output, nor segment) lies past the end of the
  media.
- A model trained at 16 kHz gets (nearly) the same log-mel features from a 44.1 kHz file
  when it declares ``sample_rate``.
- Window and sequence outputs, and the segments smoothing makes of them, cover the media
  time of their steps; ``min_on``/``min_off`` are measured in that time; online and offline
  runs give the same segments.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from media import REPO_ROOT, read_jsonl, speech_samples, write_audio, write_speech_wav
from torch import Tensor, nn

from streamer.cli import main
from streamer.clock import RealClock, VirtualClock
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamStart
from streamer.models import ModuleModel
from streamer.pipeline import Mode
from streamer.sources.audio_file import AudioFileSource
from streamer.sources.base import SourceOptions
from streamer.stages.model import ModelSettings, ModelStage
from streamer.stages.model.features import Step, logmel_offline, make_features
from streamer.testing import run_scripted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: float32 log-mel values computed from the same float64 frames but in pushes of other
#: sizes (the mel matrix product may sum in another order): equal to well below this.
ATOL = 1e-5
#: Slack for media times built from float pts.
EPS = 1e-9


# --- log-mel over a real file source, any chunk -------------------------------------------


async def file_logmel(path: Path, chunk: int, **options: Any) -> tuple[Tensor, list[Step], float]:
    """Log-mel steps of ``path`` read by the real file source in frames of ``chunk``
    samples, through the front-end made as the model stage makes it (from the stream's
    ``StreamStart``); also the file's duration in seconds."""
    source = AudioFileSource(path, SourceOptions(chunk=chunk, pace="fast"), RealClock())
    features = None
    xs: list[Tensor] = []
    steps: list[Step] = []
    duration = math.nan
    async for item in source:
        if isinstance(item, StreamStart):
            features = make_features(
                "logmel", media="audio", rate=item.rate, meta=item.meta, **options
            )
            duration = item.meta["samples"] / item.rate
        elif isinstance(item, Frame):
            assert features is not None
            x, new = features.push_frame(item)
            xs.append(x)
            steps += new
    return torch.cat(xs), steps, duration


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Short real speech files: at 16 kHz (a length no hop divides) and at 44.1 kHz."""
    tmp = tmp_path_factory.mktemp("edges")
    speech = speech_samples()[16000 : 16000 + 8077]
    at_44k = soxr.resample(speech, 16000, 44100, quality="HQ")
    return {
        "16k": (write_audio(tmp / "s16.wav", speech, 16000, subtype="FLOAT"), {}),
        "44k": (
            write_audio(tmp / "s44.wav", at_44k, 44100, subtype="FLOAT"),
            {"sample_rate": 16000},
        ),
    }


@settings(max_examples=25, deadline=None)
@given(which=st.sampled_from(["16k", "44k"]), chunk=st.integers(1, 50000))
def test_logmel_steps_are_the_same_for_any_chunk_and_end_in_the_media(
    speech_files: dict[str, tuple[Path, Any]], which: str, chunk: int
) -> None:
    """Whatever the chunk, the steps are those of the file's real samples at once (count,
    index, pts, values); they tile the media and the last one ends where it ends."""
    path, options = speech_files[which]
    x, steps, duration = asyncio.run(file_logmel(path, chunk, **options))
    samples, rate = sf.read(str(path), dtype="float32")
    want = logmel_offline(samples, rate=rate, **options)
    assert x.shape == want.shape and len(steps) == want.shape[0] > 0
    torch.testing.assert_close(x, want, atol=ATOL, rtol=0)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.pts for s in steps] == pytest.approx([i * 0.01 for i in range(len(steps))])
    # each step's window lies in the media; the steps tile it up to its end
    assert steps[-1].pts + 400 / 16000 <= duration + EPS
    assert all(a.end == pytest.approx(b.pts) for a, b in itertools.pairwise(steps))
    assert steps[-1].end == pytest.approx(duration, abs=EPS)


# --- 16 kHz and 44.1 kHz versions of one signal --------------------------------------------


def tones(rate: int, seconds: float = 1.0) -> np.ndarray:
    """The same sum of sines sampled at ``rate`` (float32), below 7 kHz."""
    t = np.arange(round(rate * seconds)) / rate
    wave = (
        0.3 * np.sin(2 * np.pi * 440.0 * t)
        + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
        + 0.1 * np.sin(2 * np.pi * 3000.0 * t + 1.0)
        + 0.05 * np.sin(2 * np.pi * 6000.0 * t)
    )
    return wave.astype(np.float32)


@pytest.mark.parametrize("signal", ["tones", "speech"])
def test_a_16k_model_gets_the_same_logmel_from_a_44k_file(tmp_path: Path, signal: str) -> None:
    """With ``sample_rate = 16000`` declared, a 44.1 kHz file gives the 16 kHz file's
    steps (same count and pts) and log-mel values within 0.01 (about 1 % in power).

    Measured: at most 4.4e-4 for the tones (synthesised at each rate) and 1.9e-3 for
    60 s of speech (its 44.1 kHz version made with soxr). What is left is the resampler's
    passband ripple and float32 file samples. The bands stop at 7 kHz (``f_max``): soxr's
    HQ filter passes about 91 % of the new Nyquist frequency (7.3 kHz of 8 kHz) and rolls
    off above, so a mel band reaching into 7.3..8 kHz loses energy there (the top band of
    the default 0..8 kHz differs by up to 0.7).
    """
    if signal == "tones":
        low, high = tones(16000), tones(44100)
    else:
        low = speech_samples(3.0)
        high = soxr.resample(low, 16000, 44100, quality="HQ")
    f16 = write_audio(tmp_path / "a16.wav", low, 16000, subtype="FLOAT")
    f44 = write_audio(tmp_path / "a44.wav", high, 44100, subtype="FLOAT")
    x16, steps16, _ = asyncio.run(file_logmel(f16, 512, sample_rate=16000, f_max=7000.0))
    x44, steps44, _ = asyncio.run(file_logmel(f44, 1411, sample_rate=16000, f_max=7000.0))
    assert x16.shape == x44.shape and x16.shape[0] > 0
    assert [s.pts for s in steps44] == pytest.approx([s.pts for s in steps16])
    worst = float((x16 - x44).abs().max())
    assert worst < 0.01, f"log-mel differs by up to {worst}"


# --- the CLI: a 6.00 s file, chunk = 50000 -------------------------------------------------


def write_pipeline(path: Path, wav: Path, chunk: int, head: str = "frame") -> Path:
    lines = [
        "[source]",
        f'uri = "{wav}"',
        f"chunk = {chunk}",
        "",
        "[model]",
        'factory = "pipelines.audio_tagging:build"',
        'features = "logmel"',
        'labels = ["silence", "speech"]',
        f'head = "{head}"',
        "smoothing = { min_off = 0.05, min_on = 0.05 }",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_cli(tmp: Path, name: str, chunk: int, head: str, mode: str) -> list[dict[str, Any]]:
    wav = tmp / "six.wav"
    if not wav.exists():
        write_speech_wav(wav, seconds=6.0)
    pipeline = write_pipeline(tmp / f"{name}.toml", wav, chunk, head)
    out = tmp / f"{name}.jsonl"
    assert main(["run", str(pipeline), "--mode", mode, "--out", str(out), "-q"]) == 0
    return read_jsonl(out)


def assert_same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """The same records but for latency, scores within 1e-5 (the GRU stepped over other
    chunks of steps sums in another order)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        keep = {k: v for k, v in ra.items() if k not in ("latency_ms", "scores")}
        assert keep == {k: v for k, v in rb.items() if k not in ("latency_ms", "scores")}
        assert ra["scores"] == pytest.approx(rb["scores"], abs=1e-5, rel=0)


def test_cli_6s_file_with_chunk_50000_gives_nothing_past_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``streamer run`` (in-process) on a 6.00 s file: 598 log-mel steps (not the padded
    chunk's), no output and no segment past 6.0 s, segments tiling 0..6.0 s; the same
    JSONL with chunk = 512; a sequence head's segment spans 0..6.0 s."""
    monkeypatch.chdir(REPO_ROOT)  # the factory is a module of the repository
    big = run_cli(tmp_path, "big", 50000, "frame", "online")
    small = run_cli(tmp_path, "small", 512, "frame", "online")
    frames = [r for r in big if r["kind"] == "frame"]
    segments = [r for r in big if r["kind"] == "segment"]
    assert len(frames) == (96000 - 400) // 160 + 1
    assert max(r["pts"] for r in big) <= 6.0
    assert segments and segments[0]["t0"] == 0.0
    assert segments[-1]["t1"] == pytest.approx(6.0, abs=EPS)
    assert all(s["t1"] <= 6.0 + EPS for s in segments)
    assert all(a["t1"] == pytest.approx(b["t0"]) for a, b in itertools.pairwise(segments))
    assert_same_records(big, small)

    sequence = run_cli(tmp_path, "sequence", 50000, "sequence", "offline")
    assert [(r["kind"], r["start"], r["end"]) for r in sequence] == [
        ("sequence", 0, len(frames) - 1),
        ("segment", 0, len(frames) - 1),
    ]
    assert sequence[1]["t0"] == 0.0 and sequence[1]["t1"] == pytest.approx(6.0, abs=EPS)
    assert "t0" not in sequence[0]  # non-segment records keep their schema


# --- window and sequence heads with smoothing, in the model stage ---------------------------

F = 8  # samples per frame; raw features: one step of F values per frame
RATE = 800.0  # 100 frames (steps) per second
STEP_S = F / RATE
LABELS = ("silence", "speech")


class Level(nn.Module):
    """One logit per step, ``8 (mean(x) - 0.5)``: level-1 frames are speech, 0 silence."""

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        n = torch.zeros(x.shape[0], 1) if state is None else state
        return 8.0 * (x.mean(dim=2, keepdim=True) - 0.5), n + x.shape[1]


def level_script(
    levels: list[float], tail: int = F, gap: tuple[int, int] | None = None
) -> tuple[list[Item], float]:
    """One frame per level (F samples of it), the last with only ``tail`` real samples
    (zero-padded, as a file source does; ``meta["samples"]`` says so), and ``gap = (row,
    lost)`` frames lost before a row. Also the media's end in seconds."""
    items: list[Item] = []
    index = 0
    for row, level in enumerate(levels):
        if gap is not None and row == gap[0]:
            items.append(Gap("s", index, gap[1], index * STEP_S, "source"))
            index += gap[1]
        data = np.full((F, 1), level, dtype=np.float32)
        if row == len(levels) - 1:
            data[tail:] = 0.0
        items.append(Frame("s", index, index * STEP_S, 0.0, data, RATE))
        index += 1
    samples = (index - 1) * F + tail
    meta = {"chunk": F, "channels": 1, "samples": samples}
    return [StreamStart("s", "audio", RATE, meta), *items, StreamEnd("s", index)], samples / RATE


def run_stage(script: list[Item], config: ModelSettings, mode: Mode) -> list[Output]:
    async def go() -> list[Output]:
        clock = VirtualClock()
        stage = ModelStage(ModuleModel(Level()), config, mode=mode, clock=clock)
        run = await run_scripted([script], [stage], mode=mode, clock=clock)
        return run.outputs

    return asyncio.run(go())


def segments(outputs: list[Output]) -> list[tuple[Any, ...]]:
    return [(o.label, o.start, o.end, o.t0, o.t1) for o in outputs if o.kind == "segment"]


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_window_segments_cover_their_windows_and_min_on_counts_window_time(mode: Mode) -> None:
    """100 ms windows (10 steps of 10 ms), min_on = 150 ms: one speech window (100 ms) is
    too short, two (200 ms) are enough; segments span their windows' steps."""
    windows = [0, 0, 1, 0, 1, 1, 0, 0]  # speech per window
    levels = [float(w) for w in windows for _ in range(10)]
    script, end = level_script(levels)
    config = ModelSettings(
        labels=LABELS,
        head="window",
        head_options={"window": 10},
        smoothing={"min_on": 0.15},
        chunk=7,
    )
    out = run_stage(script, config, mode)
    assert [o.label for o in out if o.kind == "window"] == ["silence"] * 4 + ["speech"] * 2 + [
        "silence"
    ] * 2
    assert segments(out) == [
        ("silence", 0, 39, 0.0, pytest.approx(0.4)),
        ("speech", 40, 59, pytest.approx(0.4), pytest.approx(0.6)),
        ("silence", 60, 79, pytest.approx(0.6), pytest.approx(end)),
    ]
    window = next(o for o in out if o.kind == "window" and o.start == 40)
    assert (window.t0, window.t1) == (pytest.approx(0.4), pytest.approx(0.5))


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_whole_stream_sequence_segment_spans_zero_to_the_media_end(mode: Mode) -> None:
    """The last frame holds 3 real samples of 8: the segment ends at the media's end, not
    at the padded frame's, and starts at 0, not at the last step."""
    script, end = level_script([1.0] * 36 + [1.0], tail=3)
    assert end == pytest.approx((36 * 8 + 3) / 800)
    config = ModelSettings(labels=LABELS, head="sequence", smoothing={"min_on": 0.1})
    out = run_stage(script, config, mode)
    assert [(o.kind, o.start, o.end) for o in out] == [("sequence", 0, 36), ("segment", 0, 36)]
    assert (out[1].t0, out[1].t1) == (0.0, pytest.approx(end))


@st.composite
def level_runs(draw: st.DrawFn) -> list[float]:
    """Runs of 0/1 levels, 1..100 frames in all."""
    runs = draw(st.lists(st.tuples(st.booleans(), st.integers(1, 15)), min_size=1, max_size=10))
    return [float(on) for on, n in runs for _ in range(n)][:100]


@settings(max_examples=40, deadline=None)
@given(
    levels=level_runs(),
    tail=st.integers(1, F),
    head=st.sampled_from(["window", "sequence"]),
    window=st.integers(1, 12),
    hop=st.integers(1, 12),
    partial=st.booleans(),
    chunk=st.integers(1, 64),
    min_on=st.sampled_from([0.0, 0.03, 0.1, 0.25]),
    min_off=st.sampled_from([0.0, 0.05, 0.2]),
    gap=st.one_of(st.none(), st.tuples(st.integers(1, 99), st.integers(1, 5))),
)
def test_window_and_sequence_segments_online_equal_offline_and_cover_their_steps(
    levels: list[float],
    tail: int,
    head: str,
    window: int,
    hop: int,
    partial: bool,
    chunk: int,
    min_on: float,
    min_off: float,
    gap: tuple[int, int] | None,
) -> None:
    """Online (any chunk) and offline runs give the same outputs; every segment starts at
    its first step's pts and ends at its last step's end (the media's end for the padded
    last frame); a speech segment lasts at least ``min_on`` of media time."""
    if gap is not None and gap[0] >= len(levels):
        gap = None
    script, end = level_script(levels, tail, gap)
    options: dict[str, Any] = {"window": window, "hop": hop, "partial": partial}
    if head == "sequence":
        options = {"segment_on_gap": True}
    config = ModelSettings(
        labels=LABELS,
        head=head,
        head_options=options,
        smoothing={"min_on": min_on, "min_off": min_off},
        chunk=chunk,
    )
    online = run_stage(script, config, "online")
    offline = run_stage(script, config, "offline")
    key = [(o.kind, o.label, o.start, o.end, o.t0, o.t1) for o in online]
    assert key == [(o.kind, o.label, o.start, o.end, o.t0, o.t1) for o in offline]
    for a, b in zip(online, offline, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    last = max(i.index for i in script if isinstance(i, Frame))
    for label, start, stop, t0, t1 in segments(online):
        assert t0 == pytest.approx(start * STEP_S, abs=EPS)
        step_end = end if stop == last else (stop + 1) * STEP_S
        assert t1 == pytest.approx(step_end, abs=EPS)
        assert t1 <= end + EPS
        if label == "speech":
            assert t1 - t0 >= min_on - EPS
