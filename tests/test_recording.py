"""The recording format, its replay source, the recorder and the bundled recordings.

Real files in ``tmp_path``; real-time replays run on a VirtualClock, so they are exact and fast.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.clock import RealClock, VirtualClock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd, StreamStart
from streamer.recording import TIMES_DTYPE, RecordingWriter, read_recording, record
from streamer.sources.base import SourceOptions
from streamer.sources.recording import RecordingSource

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"


# --------------------------------------------------------------------------- helpers


def audio_items(
    stream: str = "mic", frames: int = 6, chunk: int = 100, channels: int = 2, seed: int = 0
) -> list[Item]:
    """StreamStart, ``frames`` float32 ``[chunk, channels]`` frames (last one short), end."""
    rng = np.random.default_rng(seed)
    rate = 8000.0
    items: list[Item] = [StreamStart(stream, "audio", rate, {"device": "test", "n": 1})]
    start = 0
    for i in range(frames):
        length = chunk if i < frames - 1 else chunk // 3
        data = rng.uniform(-1, 1, (length, channels)).astype(np.float32)
        pts = start / rate
        items.append(Frame(stream, i, pts, 100.0 + pts + 0.001 * i, data, rate))
        start += length
    items.append(StreamEnd(stream, frames))
    return items


def video_items(stream: str = "cam", frames: int = 5, seed: int = 1) -> list[Item]:
    rng = np.random.default_rng(seed)
    items: list[Item] = [StreamStart(stream, "video", 10.0)]
    for i in range(frames):
        data = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        items.append(Frame(stream, i, i / 10.0, 5.0 + i / 10.0, data, 10.0))
    items.append(StreamEnd(stream, frames))
    return items


def write(path: Path, items: Iterable[Item], source: str = "test") -> Path:
    with RecordingWriter(path, source=source) as writer:
        for item in items:
            writer.add(item)
    return path


async def collect(
    source: AsyncIterator[Item] | RecordingSource, limit: int = 100_000
) -> list[Item]:
    out: list[Item] = []
    async for item in source:
        out.append(item)
        if len(out) >= limit:
            break
    return out


def frames_of(items: Iterable[Item], stream: str | None = None) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame) and (stream is None or i.stream == stream)]


def assert_same_frames(got: list[Frame], want: list[Frame]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.stream, g.index, g.pts, g.rate) == (w.stream, w.index, w.pts, w.rate)
        assert isinstance(g.data, np.ndarray)
        assert g.data.dtype == w.data.dtype
        assert np.array_equal(g.data, w.data)


def replay(path: Path, clock: Any = None, **options: Any) -> RecordingSource:
    return RecordingSource(path, SourceOptions(**options), clock or VirtualClock())


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# --------------------------------------------------------------------------- round trips


async def test_audio_round_trip_is_bit_identical(tmp_path: Path) -> None:
    items = audio_items()
    path = write(tmp_path / "rec", items)
    got = await collect(replay(path))
    assert got[0] == StreamStart("mic", "audio", 8000.0, {"device": "test", "n": 1})
    assert got[-1] == StreamEnd("mic", 6)
    assert_same_frames(frames_of(got), frames_of(items))
    assert frames_of(got)[-1].data.shape == (33, 2)  # the short last chunk stays short


async def test_video_round_trip_is_bit_identical(tmp_path: Path) -> None:
    items = video_items()
    path = write(tmp_path / "rec", items)
    source = replay(path)
    assert source.name == "source:recording:rec"
    assert source.total_frames == 5
    got = await collect(source)
    await source.aclose()
    assert got[0] == StreamStart("cam", "video", 10.0, {})
    assert got[-1] == StreamEnd("cam", 5)
    assert_same_frames(frames_of(got), frames_of(items))


def typed_items(dtype: str, stream: str = "s", frames: int = 5) -> list[Item]:
    """StreamStart, ``frames`` frames of ``dtype`` covering its whole range (audio:
    ``[chunk, 2]`` with a short last chunk; ``uint8``: ``[6, 8, 3]`` video), StreamEnd."""
    rng = np.random.default_rng(7)
    video = dtype == "uint8"
    rate = 10.0 if video else 8000.0
    items: list[Item] = [StreamStart(stream, "video" if video else "audio", rate)]
    start = 0
    for i in range(frames):
        data: np.ndarray[Any, Any]
        if video:
            data = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            pts = i / rate
        else:
            length = 64 if i < frames - 1 else 21
            kind = np.dtype(dtype)
            if kind.kind == "i":
                info = np.iinfo(kind)
                data = rng.integers(info.min, info.max, (length, 2), endpoint=True).astype(kind)
                data[0] = [info.min, info.max]  # the extremes survive too
            else:
                # values float32 cannot hold: a float32 detour would change them
                data = (rng.uniform(-1, 1, (length, 2)) + 1e-12).astype(kind)
            pts = start / rate
            start += length
        items.append(Frame(stream, i, pts, 50.0 + pts, data, rate))
    items.append(StreamEnd(stream, frames))
    return items


DTYPES = ["int16", "float64", "uint8"]  # uint8: video


@pytest.mark.parametrize("dtype", DTYPES)
async def test_writer_round_trip_keeps_the_dtype(tmp_path: Path, dtype: str) -> None:
    items = typed_items(dtype)
    path = write(tmp_path / "rec", items)
    (stream,) = read_recording(path).streams
    assert stream.dtype == np.dtype(dtype)
    got = await collect(replay(path))
    assert_same_frames(frames_of(got), frames_of(items))  # same dtype, bit-identical
    assert got[-1] == StreamEnd("s", 5)


@pytest.mark.parametrize("dtype", DTYPES)
async def test_recorder_round_trip_keeps_the_dtype(tmp_path: Path, dtype: str) -> None:
    items = typed_items(dtype)
    summary = await record(scripted(items), tmp_path / "out", clock=VirtualClock())
    assert summary.frames == {"s": 5}
    got = await collect(replay(tmp_path / "out"))
    assert_same_frames(frames_of(got), frames_of(items))


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamer_record_round_trip_keeps_the_dtype(tmp_path: Path, dtype: str) -> None:
    """``streamer record recording:IN OUT`` copies int16/float64/uint8 frames as they are."""
    from streamer.cli import main

    items = typed_items(dtype)
    original = write(tmp_path / "in", items)
    assert main(["record", f"recording:{original}", str(tmp_path / "copy")]) == 0
    (stream,) = read_recording(tmp_path / "copy").streams
    assert stream.dtype == np.dtype(dtype)
    got = asyncio.run(collect(replay(tmp_path / "copy")))
    assert_same_frames(frames_of(got), frames_of(items))


async def test_big_endian_frames_replay_as_native_values(tmp_path: Path) -> None:
    items = [
        Frame(i.stream, i.index, i.pts, i.captured, i.data.astype(">i2"), i.rate)
        if isinstance(i, Frame)
        else i
        for i in typed_items("int16")
    ]
    path = write(tmp_path / "rec", items)
    got = frames_of(await collect(replay(path)))
    for g, w in zip(got, frames_of(items), strict=True):
        assert g.data.dtype == np.dtype("int16")  # stored little-endian, read native
        assert np.array_equal(g.data, w.data)


async def test_mono_mixes_integer_audio_in_its_own_dtype(tmp_path: Path) -> None:
    items = typed_items("int16")
    path = write(tmp_path / "rec", items)
    got = frames_of(await collect(replay(path, mono=True)))
    for g, w in zip(got, frames_of(items), strict=True):
        assert g.data.dtype == np.int16 and g.data.shape == (len(w.data), 1)
        want = np.rint(w.data.astype(np.float64).mean(axis=1, keepdims=True))
        assert np.array_equal(g.data, want.astype(np.int16))


def test_reader_exposes_memory_mapped_arrays(tmp_path: Path) -> None:
    items = audio_items()
    path = write(tmp_path / "rec", items, source="mic:default")
    rec = read_recording(path)
    assert rec.source == "mic:default"
    (stream,) = rec.streams
    assert isinstance(stream.data, np.memmap)
    assert stream.times.dtype == TIMES_DTYPE
    frames = frames_of(items)
    assert [float(c) for c in stream.times["captured"]] == [f.captured for f in frames]
    assert stream.data.shape == (5 * 100 + 33, 2)
    assert np.array_equal(stream.frame_data(2), frames[2].data)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "streamer-recording" and meta["version"] == 1
    assert meta["streams"][0]["frame_shape"] == [100, 2]
    assert meta["streams"][0]["dtype"] == "float32"


async def test_two_streams_with_gaps_interleave_by_capture_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = "mic/left: 1", "cam 0"  # ids that are not file-safe
    # (stream, index, captured); gaps: a lost 2..3 (source), b lost 2 (overflow), a trailing.
    plan = [(a, 0, 0.00), (b, 0, 0.01), (a, 1, 0.05), (b, 1, 0.08), (a, 4, 0.09)]
    plan += [(b, 3, 0.20), (a, 5, 0.21)]
    items: list[Item] = [StreamStart(a, "audio", 100.0), StreamStart(b, "video", 12.5)]
    for stream, index, captured in plan:
        if (stream, index) == (a, 4):
            items.append(Gap(a, 2, 2, 0.04, "source"))
        if (stream, index) == (b, 3):
            items.append(Gap(b, 2, 1, 0.16, "overflow:frames"))
        if stream == a:
            data: np.ndarray[Any, Any] = rng.standard_normal((2, 1)).astype(np.float32)
            rate = 100.0
        else:
            data = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            rate = 12.5
        items.append(
            Frame(stream, index, index / rate * (2 if stream == a else 1), captured, data, rate)
        )
    items.append(Gap(a, 6, 3, 0.12, "source"))
    items += [StreamEnd(a, 4), StreamEnd(b, 3, "stopped")]
    path = write(tmp_path / "two", items)
    assert sorted(p.name for p in path.iterdir()) == [
        "meta.json", "s0.data", "s0.times", "s1.data", "s1.times",
    ]  # fmt: skip

    got = await collect(replay(path))
    # Both starts first, then frames in capture order, each gap just before the frame that
    # followed it, each end right after its stream's last frame (and trailing gap).
    kinds = [(type(i).__name__, i.stream, getattr(i, "index", None)) for i in got]
    assert kinds == [
        ("StreamStart", a, None),
        ("StreamStart", b, None),
        ("Frame", a, 0),
        ("Frame", b, 0),
        ("Frame", a, 1),
        ("Frame", b, 1),
        ("Gap", a, 2),
        ("Frame", a, 4),
        ("Gap", b, 2),
        ("Frame", b, 3),
        ("StreamEnd", b, None),
        ("Frame", a, 5),
        ("Gap", a, 6),
        ("StreamEnd", a, None),
    ]
    gaps = [i for i in got if isinstance(i, Gap)]
    assert gaps == [
        Gap(a, 2, 2, 0.04, "source"),
        Gap(b, 2, 1, 0.16, "overflow:frames"),
        Gap(a, 6, 3, 0.12, "source"),
    ]
    ends = [i for i in got if isinstance(i, StreamEnd)]
    assert ends == [StreamEnd(b, 3), StreamEnd(a, 4)]
    for stream in (a, b):
        assert_same_frames(frames_of(got, stream), frames_of(items, stream))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["streams"][1]["end"] == {"frames": 3, "reason": "stopped"}
    assert meta["streams"][0]["gaps"][0] == {
        "index": 2, "count": 2, "pts": 0.04, "reason": "source", "at": 2,
    }  # fmt: skip


# --------------------------------------------------------------------------- pacing


async def test_realtime_replay_reproduces_jittered_arrivals_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    period = 0.02
    n = 500  # 10 s of 20 ms frames, arriving with jitter and bursts
    jitter = rng.exponential(0.004, n)
    jitter[100:110] = 0.08  # a stall: ten frames arrive late, then in a burst
    captured = 1234.5 + np.maximum.accumulate(np.arange(n) * period + jitter)
    items: list[Item] = [StreamStart("mic", "audio", 16000.0)]
    for i in range(n):
        data = np.full((320, 1), i / n, dtype=np.float32)
        items.append(Frame("mic", i, i * period, float(captured[i]), data, 16000.0))
    path = write(tmp_path / "jitter", items)

    clock = VirtualClock()
    started = time.monotonic()
    got = frames_of(await collect(replay(path, clock, pace="realtime")))
    assert time.monotonic() - started < 2.0
    assert len(got) == n
    offsets = [float(c - captured[0]) for c in captured]
    assert [f.captured for f in got] == offsets
    assert clock.now() == offsets[-1]
    assert [f.pts for f in got] == [i * period for i in range(n)]


async def test_speed_divides_capture_offsets(tmp_path: Path) -> None:
    path = write(tmp_path / "rec", video_items())
    got = frames_of(await collect(replay(path, pace="realtime", speed=4.0)))
    assert [f.captured for f in got] == pytest.approx([i / 10.0 / 4.0 for i in range(5)])


async def test_fast_pace_does_not_wait(tmp_path: Path) -> None:
    path = write(tmp_path / "rec", video_items())
    clock = VirtualClock()
    got = frames_of(await collect(replay(path, clock, pace="fast")))
    assert [f.captured for f in got] == [0.0] * 5
    assert clock.now() == 0.0


async def test_realtime_replay_on_the_real_clock(tmp_path: Path) -> None:
    items: list[Item] = [StreamStart("cam", "video", 50.0)]
    items += [
        Frame("cam", i, i / 50, i / 50, np.zeros((2, 2, 3), np.uint8), 50.0) for i in range(11)
    ]
    path = write(tmp_path / "rec", items)
    clock = RealClock()
    started = clock.now()
    got = frames_of(await collect(replay(path, clock, pace="realtime")))
    elapsed = clock.now() - started
    assert 0.19 <= elapsed < 1.0
    assert got[-1].captured - got[0].captured == pytest.approx(0.2, abs=0.05)


async def test_loop_continues_index_pts_and_capture_time(tmp_path: Path) -> None:
    items = video_items(frames=4)
    path = write(tmp_path / "rec", items)
    source = replay(path, pace="realtime", loop=True)
    assert source.total_frames is None
    got = await collect(source, limit=1 + 4 * 3)
    await source.aclose()
    assert not any(isinstance(i, StreamEnd) for i in got)
    frames = frames_of(got)
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(12)])
    assert [f.captured for f in frames] == pytest.approx([i / 10 for i in range(12)])
    originals = frames_of(items)
    for k, frame in enumerate(frames):
        assert np.array_equal(frame.data, originals[k % 4].data)


async def test_loop_repeats_gaps_shifted(tmp_path: Path) -> None:
    z = np.zeros((2, 1), np.float32)
    items: list[Item] = [
        StreamStart("a", "audio", 100.0),
        Frame("a", 0, 0.0, 0.0, z, 100.0),
        Gap("a", 1, 1, 0.02, "source"),
        Frame("a", 2, 0.04, 0.04, z, 100.0),
    ]
    path = write(tmp_path / "rec", items)
    got = await collect(replay(path, loop=True), limit=1 + 6)
    kinds = [type(i).__name__ for i in got]
    assert kinds == ["StreamStart", "Frame", "Gap", "Frame", "Frame", "Gap", "Frame"]
    assert got[2] == Gap("a", 1, 1, 0.02, "source")
    second = got[5]
    assert isinstance(second, Gap)
    assert (second.index, second.count, second.reason) == (4, 1, "source")
    assert second.pts == pytest.approx(0.08)  # pts advance by one pass: 0.06 s
    assert [f.index for f in frames_of(got)] == [0, 2, 3, 5]


async def test_stream_option_renames_and_mono_mixes(tmp_path: Path) -> None:
    items = audio_items(channels=2)
    path = write(tmp_path / "rec", items)
    got = await collect(replay(path, stream="renamed", mono=True))
    assert {i.stream for i in got} == {"renamed"}
    frames = frames_of(got)
    assert frames[0].data.shape == (100, 1)
    want = frames_of(items)[0].data.mean(axis=1, keepdims=True)
    assert np.allclose(frames[0].data, want)
    two = write(tmp_path / "two", audio_items("x") + video_items("y"))
    with pytest.raises(InputError, match="one-stream"):
        replay(two, stream="renamed")


async def test_aclose_mid_replay(tmp_path: Path) -> None:
    path = write(tmp_path / "rec", video_items())
    source = replay(path)
    it = aiter(source)
    first = await anext(it)
    assert isinstance(first, StreamStart)
    await source.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(it)


# --------------------------------------------------------------------------- atomic writes


def test_abort_and_exception_leave_nothing(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path / "rec")
    for item in audio_items():
        writer.add(item)
    assert leftovers(tmp_path) != []  # the hidden partial folder
    writer.abort()
    writer.abort()
    assert leftovers(tmp_path) == []

    with pytest.raises(ZeroDivisionError), RecordingWriter(tmp_path / "rec") as w:
        w.add(audio_items()[0])
        raise ZeroDivisionError
    assert leftovers(tmp_path) == []


_CRASH_SCRIPT = """
import os, sys, time
import numpy as np
from streamer.frames import Frame, StreamStart
from streamer.recording import RecordingWriter

target, mode = sys.argv[1], sys.argv[2]
if mode == "rename":
    os.rename = lambda *args: os._exit(1)  # crash after meta.json, before the rename
w = RecordingWriter(target)
w.add(StreamStart("a", "audio", 16000.0))
for i in range(50):
    w.add(Frame("a", i, i * 0.032, i * 0.032, np.full((512, 1), i, np.float32), 16000.0))
if mode == "exit":
    os._exit(1)
if mode == "rename":
    w.close()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["exit", "sigkill", "rename"])
def test_killed_writer_leaves_nothing_valid_at_target(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "rec"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", _CRASH_SCRIPT, str(target), mode]
    with subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        if mode == "sigkill":
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not target.exists()
    with pytest.raises(InputError, match="does not exist"):
        read_recording(target)
    (partial,) = tmp_path.iterdir()  # the hidden partial folder stays, clearly named
    assert partial.name.startswith(".rec.partial-")
    if mode != "rename":
        with pytest.raises(InputError, match="not a complete recording"):
            read_recording(partial)


def test_existing_target_and_missing_parent(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    with pytest.raises(InputError, match="already exists") as info:
        RecordingWriter(tmp_path / "rec")
    assert str(tmp_path / "rec") in str(info.value)
    with pytest.raises(InputError, match="does not exist") as info:
        RecordingWriter(tmp_path / "no" / "rec")
    assert str(tmp_path / "no") in str(info.value)
    assert leftovers(tmp_path) == ["rec"]


def test_inconsistent_frames_name_the_stream(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "rec") as writer:
        writer.add(StreamStart("cam 7", "video", 10.0))
        writer.add(Frame("cam 7", 0, 0.0, 0.0, np.zeros((4, 4, 3), np.uint8), 10.0))
        with pytest.raises(InputError, match="stream 'cam 7'"):
            writer.add(Frame("cam 7", 1, 0.1, 0.1, np.zeros((4, 5, 3), np.uint8), 10.0))
        with pytest.raises(InputError, match="stream 'cam 7'"):
            writer.add(Frame("cam 7", 1, 0.1, 0.1, np.zeros((4, 4, 3), np.float32), 10.0))
        writer.add(Frame("cam 7", 1, 0.1, 0.1, np.ones((4, 4, 3), np.uint8), 10.0))
    assert read_recording(tmp_path / "rec").streams[0].frames == 2


# --------------------------------------------------------------------------- validation


def _truncate(path: Path) -> Path:
    data = path / "s0.data"
    data.write_bytes(data.read_bytes()[:-7])
    return data


def _set_meta(key: str, value: Any) -> Any:
    def edit(path: Path) -> Path:
        meta = json.loads((path / "meta.json").read_text())
        meta[key] = value
        (path / "meta.json").write_text(json.dumps(meta))
        return path / "meta.json"

    return edit


def _remove(name: str) -> Any:
    def edit(path: Path) -> Path:
        (path / name).unlink()
        return path / name

    return edit


def _bad_json(path: Path) -> Path:
    (path / "meta.json").write_text('{"format": "streamer-recording", ')
    return path / "meta.json"


def _short_times(path: Path) -> Path:
    times = path / "s0.times"
    times.write_bytes(times.read_bytes()[: -TIMES_DTYPE.itemsize])
    return times


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_remove("meta.json"), "not a complete recording"),
        (_bad_json, "not valid JSON"),
        (_truncate, "truncated or corrupt"),
        (_remove("s0.times"), "missing"),
        (_remove("s0.data"), "missing"),
        (_set_meta("version", 2), "version 2 is not supported"),
        (_set_meta("format", "wav"), "format is 'wav'"),
        (_set_meta("streams", {}), "'streams' must be a list"),
        (_short_times, "truncated or corrupt"),
    ],
)
def test_corrupt_recordings_name_the_file(tmp_path: Path, corrupt: Any, message: str) -> None:
    path = write(tmp_path / "rec", audio_items())
    bad_file: Path = corrupt(path)
    with pytest.raises(InputError, match=message) as info:
        read_recording(path)
    text = str(info.value)
    assert str(bad_file) in text
    assert "\n" not in text
    with pytest.raises(InputError):
        RecordingSource(path, SourceOptions(), VirtualClock())


def test_missing_recording(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_recording(tmp_path / "nope")


# --------------------------------------------------------------------------- recorder


async def scripted(items: list[Item], fail_after: int | None = None) -> AsyncIterator[Item]:
    for n, item in enumerate(items):
        if fail_after is not None and n == fail_after:
            raise OSError("device unplugged")
        await asyncio.sleep(0)
        yield item


def tone(frames: int, stream: str = "mic") -> list[Item]:
    """``frames`` 0.1 s frames at 100 Hz sampling: pts 0.0, 0.1, ..."""
    items: list[Item] = [StreamStart(stream, "audio", 100.0)]
    for i in range(frames):
        data = np.full((10, 1), i, np.float32)
        items.append(Frame(stream, i, i / 10, i / 10, data, 100.0))
    items.append(StreamEnd(stream, frames))
    return items


async def test_record_stops_at_duration(tmp_path: Path) -> None:
    items = tone(30)
    summary = await record(scripted(items), tmp_path / "out", duration=1.05, clock=VirtualClock())
    assert summary.streams == ["mic"]
    assert summary.frames == {"mic": 11}
    assert summary.duration["mic"] == pytest.approx(1.1)
    assert summary.path == tmp_path / "out"
    got = await collect(replay(tmp_path / "out"))
    assert_same_frames(frames_of(got), frames_of(items)[:11])
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["streams"][0]["end"] == {"frames": 11, "reason": "duration"}
    assert meta["source"] == "async_generator"


async def test_record_drops_frames_at_or_past_duration(tmp_path: Path) -> None:
    # A frame that starts exactly at the limit is not written.
    items = [i for i in tone(30) if not (isinstance(i, Frame) and i.index == 9)]
    await record(scripted(items), tmp_path / "out", duration=1.0, description="mic:test")
    rec = read_recording(tmp_path / "out")
    assert list(rec.streams[0].times["index"]) == list(range(9))
    assert rec.streams[0].end == StreamEnd("mic", 9, "duration")
    assert rec.source == "mic:test"


async def test_record_max_frames_and_recording_source(tmp_path: Path) -> None:
    path = write(tmp_path / "two", audio_items("x") + video_items("y"))
    source = replay(path)
    summary = await record(source, tmp_path / "out", max_frames=3)
    await source.aclose()
    assert summary.frames == {"x": 3, "y": 3}
    rec = read_recording(tmp_path / "out")
    assert rec.source == "source:recording:two"
    assert [s.end for s in rec.streams] == [
        StreamEnd("x", 3, "max-frames"),
        StreamEnd("y", 3, "max-frames"),
    ]


async def test_record_whole_source_to_eof(tmp_path: Path) -> None:
    items = audio_items() + video_items()
    summary = await record(scripted(items), tmp_path / "out")
    assert summary.frames == {"mic": 6, "cam": 5}
    got = await collect(replay(tmp_path / "out"))
    assert_same_frames(frames_of(got, "mic"), frames_of(items, "mic"))
    assert_same_frames(frames_of(got, "cam"), frames_of(items, "cam"))


async def test_record_failing_source_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="device unplugged"):
        await record(scripted(tone(200), fail_after=150), tmp_path / "out")
    assert leftovers(tmp_path) == []


async def test_record_cancelled_leaves_nothing(tmp_path: Path) -> None:
    arrived = asyncio.Event()

    async def live() -> AsyncIterator[Item]:
        for item in tone(100)[:80]:
            yield item
        arrived.set()
        await asyncio.Event().wait()  # a live source that never ends
        yield tone(1)[0]

    task = asyncio.create_task(record(live(), tmp_path / "out"))
    await arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(tmp_path) == []


async def test_record_refuses_existing_target(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="already exists"):
        await record(scripted(tone(3)), tmp_path / "out")


# --------------------------------------------------------------------------- bundled


async def test_bundled_speech_recording() -> None:
    rec = read_recording(RECORDINGS / "speech_en")
    (stream,) = rec.streams
    assert (stream.id, stream.media, stream.rate) == ("speech_en", "audio", 16000.0)
    assert stream.frames == math.ceil(160000 / 512) == 313
    assert stream.data.shape == (313 * 512, 1)
    assert stream.dtype == np.float32
    assert stream.meta["samples"] == 160000
    assert (stream.times["length"] == 512).all()
    assert not stream.data[160000:].any()  # the last frame is zero-padded, as files are
    assert np.array_equal(stream.times["pts"], stream.times["captured"])
    assert float(np.abs(stream.data).max()) <= 1.0
    # Speech at 0.0-2.0 s, a pause around 2.2-2.6 s: clearly louder in the speech.
    rms = [float(np.sqrt(np.mean(np.square(stream.frame_data(i))))) for i in range(313)]
    assert np.mean(rms[0:60]) > 3 * np.mean(rms[70:80])
    frames = frames_of(await collect(replay(RECORDINGS / "speech_en")))
    assert len(frames) == 313 and frames[-1].pts == 312 * 512 / 16000


async def test_bundled_shapes_recording() -> None:
    rec = read_recording(RECORDINGS / "shapes")
    (stream,) = rec.streams
    assert (stream.id, stream.media, stream.rate) == ("shapes", "video", 15.0)
    assert stream.frames == 60
    assert stream.frame_shape == (48, 64, 3)
    brightness = [float(stream.frame_data(i).mean()) for i in range(60)]
    for i, level in enumerate(brightness):
        assert (level > 128) == ((i // 15) % 2 == 1)
    assert not np.array_equal(stream.frame_data(0), stream.frame_data(5))  # it moves
    assert sum(
        f.stat().st_size for d in RECORDINGS.iterdir() if d.is_dir() for f in d.iterdir()
    ) < (10 * 1024 * 1024)
