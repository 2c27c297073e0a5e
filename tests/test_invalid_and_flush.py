"""No sink ever sees a non-finite number, the counts of a run add up, and the JSONL file
holds each output's line as soon as that output is out.

NaN/Inf frames through the built-in thresholder become ``Gap(reason="invalid")`` markers
(counted as dropped), ``Output.to_json`` writes a non-finite score or extra as null, and a
JSONL file read while a (virtual-time, real-time paced) run is still going has one
complete line per output delivered so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.clock import VirtualClock
from streamer.errors import InputError, StageError
from streamer.frames import Frame, Gap, Item, Output
from streamer.pipeline import Pipeline
from streamer.recording import RecordingWriter
from streamer.sinks import JsonlSink
from streamer.stages import ThresholdStage
from streamer.stages.model.checks import _finite, _first_invalid
from streamer.stages.threshold import measure
from streamer.testing import ScriptedSource, audio_script, run_scripted
from streamer.worker import Worker

CHUNK, RATE = 160, 16000.0
FRAME_S = CHUNK / RATE


def poisoned(frames: int, bad: dict[int, float], stream: str = "s") -> list[Item]:
    """``audio_script`` whose frames ``bad`` hold one sample of the given value."""
    items: list[Item] = []
    for item in audio_script(stream, frames=frames, chunk=CHUNK, rate=RATE):
        if isinstance(item, Frame) and item.index in bad:
            data = item.data.copy()
            data[CHUNK // 2, 0] = bad[item.index]
            item = Frame(item.stream, item.index, item.pts, item.captured, data, item.rate)
        items.append(item)
    return items


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed strictly (NaN/Infinity are not JSON)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-finite number {token} in {path}")

    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "a partial line"
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


# -- NaN and Inf through the built-in thresholder ----------------------------------------


async def test_threshold_drops_nan_and_inf_frames_as_counted_gaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = {2: math.nan, 3: math.inf, 4: -math.inf, 7: math.nan}
    with caplog.at_level(logging.WARNING, logger="streamer.stages.threshold"):
        run = await run_scripted([poisoned(10, bad)], [ThresholdStage()])
    assert [o.start for o in run.outputs] == [0, 1, 5, 6, 8, 9]
    for output in run.outputs:
        values = [*output.scores.values(), output.extra["energy"]]
        assert all(math.isfinite(v) for v in values)
    summary = run.summary
    assert summary["invalid"] == 4 and summary["dropped"] == 4
    assert summary["frames_in"] == summary["outputs"] + summary["dropped"]
    stream = summary["streams"]["s"]
    assert stream["invalid"] == stream["dropped"] == stream["frames_missing"] == 4
    assert stream["gaps"] == 4  # one Gap(reason="invalid") per dropped frame
    # one warning per run of invalid frames (2-4, then 7), naming stage, stream and frame
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "stage 'threshold': stream 's' frame 2 holds NaN or Inf: dropped (a gap)",
        "stage 'threshold': stream 's' frame 7 holds NaN or Inf: dropped (a gap)",
    ]


async def test_threshold_gap_markers_come_in_frame_order() -> None:
    seen: list[Item] = []

    class Spy:
        name = "spy"

        async def run(self, inbox: Any, outbox: Any) -> None:
            async for item in inbox:
                seen.append(item)
                await outbox.send(item)

    await run_scripted([poisoned(4, {1: math.nan})], [ThresholdStage(), Spy()])
    kinds = [(type(i).__name__, getattr(i, "start", getattr(i, "index", None))) for i in seen]
    assert kinds == [
        ("StreamStart", None),
        ("Output", 0),
        ("Gap", 1),
        ("Output", 2),
        ("Output", 3),
        ("StreamEnd", None),
    ]
    gap = seen[2]
    assert isinstance(gap, Gap) and (gap.count, gap.reason) == (1, "invalid")


async def test_threshold_on_invalid_error_stops_the_run_naming_the_frame() -> None:
    with pytest.raises(StageError) as info:
        await run_scripted([poisoned(5, {3: math.nan})], [ThresholdStage(on_invalid="error")])
    assert isinstance(info.value.cause, InputError) and info.value.exit_code == 2
    assert str(info.value) == "stage 'threshold': stream 's' frame 3 holds NaN or Inf"


def test_threshold_energy_of_integer_audio_is_at_full_scale() -> None:
    rng = np.random.default_rng(1)
    floats = rng.uniform(-0.5, 0.5, (512, 2))
    as_int16 = np.round(floats * 32768).astype(np.int16)
    as_float32 = (as_int16 / 32768.0).astype(np.float32)
    assert measure("energy", as_int16) == pytest.approx(measure("energy", as_float32), abs=1e-6)
    as_uint8 = np.round(floats * 128 + 128).astype(np.uint8)
    centred = (as_uint8.astype(np.float64) - 128) / 128
    assert measure("energy", as_uint8) == pytest.approx(measure("energy", centred), abs=1e-9)
    assert measure("energy", np.zeros((0, 1), np.float32)) == -200.0  # empty is silence
    assert math.isinf(measure("energy", np.full((4, 1), 1e300)))  # squares past float64


def test_nan_recording_through_the_cli_writes_valid_jsonl(tmp_path: Path) -> None:
    """The bug this guards: ``"energy": NaN`` made the JSONL sink raise (exit 1) and the
    rest of the file was lost."""
    from streamer.cli import main

    with RecordingWriter(tmp_path / "rec") as writer:
        for item in poisoned(40, {10: math.nan, 11: math.nan, 30: math.inf}):
            writer.add(item)
    out, metrics = tmp_path / "out.jsonl", tmp_path / "m.json"
    code = main(
        ["run", "--source", str(tmp_path / "rec"), "--out", str(out), "--metrics", str(metrics),
         "-q"]
    )  # fmt: skip
    assert code == 0
    records = strict_lines(out)
    assert [r["start"] for r in records] == [i for i in range(40) if i not in (10, 11, 30)]
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["dropped"] == summary["invalid"] == 3
    assert summary["outputs"] == len(records) == summary["frames_in"] - summary["dropped"]


# -- Output.to_json never hands json.dumps a non-finite number -------------------------

finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite_or_not | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def finite_only(value: Any) -> Any:
    """What a value must become: every non-finite float null, the rest unchanged."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_only(v) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(
    scores=st.dictionaries(st.text(min_size=1, max_size=5), finite_or_not, max_size=4),
    extra=st.dictionaries(st.sampled_from(["energy", "position", "x", "y"]), json_values),
    pts=finite_or_not,
)
def test_to_json_is_always_strict_json(
    scores: dict[str, float], extra: dict[str, Any], pts: float
) -> None:
    output = Output("s", "frame", 0, 0, pts, "a", scores, 0.0, extra=extra)
    record = output.to_json()
    text = json.dumps(record, allow_nan=False)  # raises on NaN/Infinity
    assert json.loads(text) == record
    assert record["scores"] == finite_only(scores)
    for key, value in extra.items():
        assert record[key] == finite_only(value)


def test_to_json_turns_numpy_extras_into_plain_finite_values() -> None:
    extra = {
        "energy": np.float32("nan"),
        "level": np.float64(0.25),
        "position": np.int64(3),
        "flag": np.bool_(True),
        "vector": np.array([1.0, np.inf, 2.0]),
    }
    record = Output("s", "frame", 0, 0, 0.0, None, {}, 0.0, extra=extra).to_json()
    assert json.loads(json.dumps(record, allow_nan=False)) == {
        **record,
        "energy": None,
        "level": 0.25,
        "position": 3,
        "flag": True,
        "vector": [1.0, None, 2.0],
    }


# -- the JSONL file is written line by line, while the run goes ------------------------


async def test_jsonl_file_holds_each_line_while_the_run_is_going(tmp_path: Path) -> None:
    """A real-time paced run on a virtual clock: frame k arrives at k * FRAME_S. Halfway to
    the next frame, everything for frame k is done (the clock only moves when nothing can
    run), so a reader of the file then must find exactly k + 1 complete lines: each line is
    written and flushed when its output is sent, not when the sink closes."""
    frames = 12
    clock = VirtualClock()
    path = tmp_path / "live.jsonl"
    sink = JsonlSink(path, worker=Worker("jsonl", clock))
    source = ScriptedSource(audio_script(frames=frames, chunk=CHUNK, rate=RATE), clock)
    pipeline = Pipeline([source], [ThresholdStage()], [sink], mode="online", clock=clock)
    seen: list[int] = []

    async def read_along() -> None:
        for k in range(frames):
            await clock.sleep_until((k + 0.5) * FRAME_S)
            assert path.is_file(), f"no file yet after output {k}"
            records = strict_lines(path)
            assert [r["start"] for r in records] == list(range(k + 1)), k
            seen.append(k)

    summary, _ = await asyncio.wait_for(asyncio.gather(pipeline.run(), read_along()), 30)
    assert seen == list(range(frames))
    assert summary["outputs"] == frames
    assert [r["start"] for r in strict_lines(path)] == list(range(frames))


# -- the counts add up -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 60),
    invalid=st.sets(st.integers(0, 59), max_size=10),
    lost=st.dictionaries(st.integers(0, 59), st.integers(1, 3), max_size=4),
    cost=st.sampled_from([0.0, 0.5, 2.5]),
    realtime=st.booleans(),
)
def test_summary_counts_add_up(
    frames: int, invalid: set[int], lost: dict[int, int], cost: float, realtime: bool
) -> None:
    """Whatever is lost at the source, dropped by a realtime edge under a slow stage, or
    dropped as invalid: frames_in = outputs + dropped; per stream, dropped is the edge
    drops plus the invalid frames, and frames_missing is dropped plus the source's losses."""

    class Slow:
        name = "slow"

        async def run(self, inbox: Any, outbox: Any) -> None:
            async for item in inbox:
                if isinstance(item, Frame) and cost:
                    await clock.sleep(cost * FRAME_S)
                await outbox.send(item)

    script: list[Item] = []
    position = 0  # of the frame in the script (its index also counts the lost frames)
    for item in audio_script(frames=frames, chunk=CHUNK, rate=RATE, gaps=lost):
        if isinstance(item, Frame):
            if position in invalid:
                data = np.full_like(item.data, np.nan)
                item = Frame(item.stream, item.index, item.pts, item.captured, data, item.rate)
            position += 1
        script.append(item)
    source_lost = sum(n for at, n in lost.items() if at < frames)

    async def scenario() -> dict[str, Any]:
        run = await run_scripted(
            [script],
            [Slow(), ThresholdStage()],
            "realtime" if realtime else "online",
            clock,
            pace="realtime",
        )
        return run.summary

    clock = VirtualClock()
    summary = asyncio.run(scenario())
    edge_drops = sum(e["dropped"] for e in summary["edges"].values())
    assert summary["frames_in"] == frames
    assert summary["frames_in"] == summary["outputs"] + summary["dropped"]
    assert summary["dropped"] == edge_drops + summary["invalid"]
    if not realtime:
        assert edge_drops == 0
        assert summary["invalid"] == len({p for p in invalid if p < frames})
    stream = summary["streams"]["s"]
    assert stream["dropped"] == summary["dropped"]
    assert stream["invalid"] == summary["invalid"] <= stream["dropped"]
    assert stream["frames_missing"] == stream["dropped"] + source_lost


async def test_two_streams_share_the_drops_they_caused() -> None:
    clock = VirtualClock()
    scripts = [
        poisoned(30, {3: math.nan}, stream="a"),
        poisoned(30, {5: math.nan, 6: math.inf}, stream="b"),
    ]

    class Slow:
        name = "slow"

        async def run(self, inbox: Any, outbox: Any) -> None:
            async for item in inbox:
                if isinstance(item, Frame):
                    await clock.sleep(2 * FRAME_S)
                await outbox.send(item)

    run = await run_scripted(scripts, [Slow(), ThresholdStage()], "realtime", clock, "realtime")
    summary = run.summary
    streams = summary["streams"]
    assert summary["dropped"] > summary["invalid"] > 0  # both kinds happened
    assert sum(s["dropped"] for s in streams.values()) == summary["dropped"]
    for name in ("a", "b"):
        s = streams[name]
        assert s["frames_in"] == s["outputs"] + s["dropped"] == 30
        assert s["frames_missing"] == s["dropped"]


@settings(max_examples=50, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["ok", "nan", "inf", "int", "short", "tensor"]), max_size=10),
    start=st.integers(0, 10),
)
def test_model_stage_finds_the_first_invalid_frame_as_a_scan_would(
    kinds: list[str], start: int
) -> None:
    """The model stage checks a run of frames for NaN/Inf in one pass; the frame it names
    is the one a frame-by-frame scan from ``start`` names, whatever the frames hold."""
    frames: list[Frame] = []
    for index, kind in enumerate(kinds):
        data: Any = np.zeros((CHUNK, 1), dtype=np.float32)
        if kind in ("nan", "inf"):
            data[3, 0] = math.nan if kind == "nan" else -math.inf
        elif kind == "int":
            data = np.zeros((CHUNK, 1), dtype=np.int16)
        elif kind == "short":
            data = np.ones((7, 2), dtype=np.float64)
        elif kind == "tensor":
            data = torch.zeros(CHUNK, 1)
        frames.append(Frame("s", index, index * FRAME_S, 0.0, data, RATE))
    start = min(start, len(frames))
    scan = next((i for i in range(start, len(frames)) if not _finite(frames[i].data)), len(frames))
    assert _first_invalid(frames, start) == scan
