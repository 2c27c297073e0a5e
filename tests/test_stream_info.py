"""Sources declare their streams before the run (``StreamInfo``), and what they declare is
what they deliver; the dry step, the model stage, the thresholder and ``Frame.media`` read
the declaration instead of guessing from the data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
from test_camera import MjpegServer

from streamer.build import build_pipeline, sample_frame
from streamer.clock import RealClock, VirtualClock
from streamer.config import parse_config
from streamer.errors import InputError
from streamer.frames import Frame, Item, StreamEnd, StreamInfo, StreamStart
from streamer.pipeline import StageError
from streamer.recording import RecordingWriter
from streamer.sources import Source, SourceOptions, open_source
from streamer.stages import ThresholdStage
from streamer.testing import ScriptedSource, run_scripted, video_script

# -- real media, made in tmp ---------------------------------------------------------------


def make_wav(tmp: Path) -> str:
    path = tmp / "tone.wav"
    n = np.arange(5_000)[:, None]
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * n / 16_000 * [1, 2])), 16_000)
    return str(path)


def make_mp4(tmp: Path) -> str:
    path = tmp / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (40, 30))
    assert writer.isOpened()
    for i in range(12):
        writer.write(np.full((30, 40, 3), 20 * i, np.uint8))
    writer.release()
    return str(path)


def make_recording(tmp: Path) -> str:
    """Two streams: int16 stereo audio (6 frames of 100) and uint8 video (4 frames)."""
    path = tmp / "rec"
    rng = np.random.default_rng(0)
    with RecordingWriter(path, source="test") as writer:
        writer.add(StreamStart("mic", "audio", 8000.0))
        writer.add(StreamStart("cam", "video", 10.0))
        for i in range(6):
            data = rng.integers(-3000, 3000, (100, 2), dtype=np.int16)
            writer.add(Frame("mic", i, i * 100 / 8000, 1.0 + i / 80, data, 8000.0))
            if i < 4:
                image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                writer.add(Frame("cam", i, i / 10, 1.0 + i / 10, image, 10.0))
        writer.add(StreamEnd("mic", 6))
        writer.add(StreamEnd("cam", 4))
    return f"recording:{path}"


def make_one_stream_recording(tmp: Path) -> str:
    path = tmp / "one"
    with RecordingWriter(path, source="test") as writer:
        writer.add(StreamStart("orig", "audio", 100.0))
        for i in range(3):
            data = np.full((10, 1), 0.1 * i, np.float64)
            writer.add(Frame("orig", i, i / 10, i / 10, data, 100.0))
        writer.add(StreamEnd("orig", 3))
    return f"recording:{path}"


Expected = dict[str, tuple[str, tuple[int, ...], str, float, int | None]]
CASES: dict[str, tuple[Callable[[Path], str], dict[str, Any], Expected]] = {
    # name: (make the URI, options, {stream: (media, shape, dtype, rate, total_frames)})
    "wav": (make_wav, {"chunk": 512}, {"tone": ("audio", (512, 2), "float32", 16_000.0, 10)}),
    "wav-mono-resampled": (
        make_wav,
        {"chunk": 300, "mono": True, "rate": 8_000},
        {"tone": ("audio", (300, 1), "float32", 8_000.0, 9)},
    ),
    "mp4": (make_mp4, {}, {"clip": ("video", (30, 40, 3), "uint8", 25.0, 12)}),
    "mp4-resized": (
        make_mp4,
        {"size": (20, 16), "rate": 12.5},
        {"clip": ("video", (16, 20, 3), "uint8", 12.5, 6)},
    ),
    "tone": (
        lambda _: "synthetic:tone?duration=0.1&channels=2",
        {"chunk": 256},
        {"tone": ("audio", (256, 2), "float32", 16_000.0, 7)},
    ),
    "shapes": (
        lambda _: "synthetic:shapes?duration=0.4&size=24x16&fps=10",
        {},
        {"shapes": ("video", (16, 24, 3), "uint8", 10.0, 4)},
    ),
    "recording": (
        make_recording,
        {},
        {
            "mic": ("audio", (100, 2), "int16", 8000.0, 6),
            "cam": ("video", (6, 8, 3), "uint8", 10.0, 4),
        },
    ),
    "recording-mono": (
        make_recording,
        {"mono": True},
        {
            "mic": ("audio", (100, 1), "int16", 8000.0, 6),
            "cam": ("video", (6, 8, 3), "uint8", 10.0, 4),
        },
    ),
    "recording-renamed": (
        make_one_stream_recording,
        {"stream": "renamed"},
        {"renamed": ("audio", (10, 1), "float64", 100.0, 3)},
    ),
}


async def collect(source: Source, limit: int | None = None) -> list[Item]:
    items: list[Item] = []
    try:
        async for item in source:
            items.append(item)
            if limit is not None and sum(isinstance(i, Frame) for i in items) >= limit:
                break
    finally:
        await source.aclose()
    return items


def check_delivered(declared: list[StreamInfo], items: list[Item]) -> None:
    """Every stream's StreamStart carries its declared info, and every frame matches it."""
    starts = {i.stream: i for i in items if isinstance(i, StreamStart)}
    assert list(starts) == [info.stream for info in declared]
    for info in declared:
        start = starts[info.stream]
        assert start.info is not None
        assert (start.media, start.rate) == (info.media, info.rate)
        frames = [i for i in items if isinstance(i, Frame) and i.stream == info.stream]
        assert frames, info.stream
        for frame in frames:
            assert frame.info is start.info  # one shared object per stream
            assert frame.media == info.media and frame.rate == info.rate
            assert start.info.shape == frame.data.shape
            assert frame.data.dtype == start.info.dtype
        if start.info.total_frames is not None:
            assert len(frames) == start.info.total_frames


@pytest.mark.parametrize("case", list(CASES))
async def test_replay_sources_declare_what_they_deliver(case: str, tmp_path: Path) -> None:
    make, options, expected = CASES[case]
    source = open_source(make(tmp_path), SourceOptions(**options), VirtualClock())
    declared = source.streams
    got = {i.stream: (i.media, i.shape, str(i.dtype), i.rate, i.total_frames) for i in declared}
    assert got == expected
    assert not any(info.live for info in declared)
    items = await collect(source)
    check_delivered(declared, items)
    starts = [i for i in items if isinstance(i, StreamStart)]
    assert [s.info for s in starts] == declared  # the same description, before and during


async def test_audio_info_says_chunk_and_channels(tmp_path: Path) -> None:
    source = open_source(make_wav(tmp_path), SourceOptions(chunk=400), VirtualClock())
    (info,) = source.streams
    assert (info.chunk, info.channels, info.size) == (400, 2, None)
    video = open_source(make_mp4(tmp_path), SourceOptions(), VirtualClock())
    assert (video.streams[0].size, video.streams[0].chunk) == ((40, 30), None)


async def test_looping_sources_declare_no_length(tmp_path: Path) -> None:
    for uri in (make_wav(tmp_path), "synthetic:tone?duration=0.1", make_recording(tmp_path)):
        source = open_source(uri, SourceOptions(loop=True), VirtualClock())
        assert all(info.total_frames is None for info in source.streams), uri
        await source.aclose()


# -- the camera, on its MJPEG stand-in -------------------------------------------------------


@pytest.fixture
def camera_server() -> Iterator[MjpegServer]:
    server = MjpegServer(fps=30.0, size="64x48")
    server.start()
    yield server
    server.kill()


def test_a_camera_knows_its_shape_once_connected(camera_server: MjpegServer) -> None:
    options = SourceOptions(timeout=3.0)
    source = open_source(f"camera:{camera_server.url}", options, RealClock())
    (before,) = source.streams
    assert before.live and before.media == "video" and before.total_frames is None
    assert before.shape is None  # not connected yet
    items = asyncio.run(collect(source, limit=5))
    start = items[0]
    assert isinstance(start, StreamStart) and start.info is not None
    assert start.info.shape == (48, 64, 3) and start.info.live
    check_delivered([start.info], items)


def test_a_camera_with_a_size_declares_it_before_the_run(camera_server: MjpegServer) -> None:
    options = SourceOptions(timeout=3.0, size=(32, 24), rate=10.0)
    source = open_source(f"camera:{camera_server.url}", options, RealClock())
    assert source.streams[0].shape == (24, 32, 3) and source.streams[0].rate == 10.0
    items = asyncio.run(collect(source, limit=3))
    check_delivered(source.streams, items)


# -- media from the declaration, not from the data ---------------------------------------------


@pytest.mark.parametrize(
    "data",
    [np.zeros((6, 8), np.uint8), np.zeros((6, 8, 3), np.float32), np.zeros((6, 8), np.float32)],
    ids=["grey-uint8", "float32-bgr", "grey-float32"],
)
def test_a_video_frame_with_info_is_video_whatever_its_data(data: np.ndarray) -> None:
    info = StreamInfo("v", "video", 10.0, data.shape, data.dtype)
    assert Frame("v", 0, 0.0, 0.0, data, 10.0, info).media == "video"
    assert Frame("v", 0, 0.0, 0.0, data, 10.0).media == "audio"  # the guess it replaces
    assert sample_frame(info) is not None and sample_frame(info).media == "video"  # type: ignore[union-attr]


async def test_the_thresholder_measures_grey_video_as_brightness() -> None:
    script: list[Item] = [StreamStart("g", "video", 10.0)]
    for i in range(4):
        script.append(Frame("g", i, i / 10, 0.0, np.full((6, 8), 80 * i, np.uint8), 10.0))
    script.append(StreamEnd("g", 4))
    source = ScriptedSource(script, VirtualClock())
    assert source.streams[0].media == "video" and source.streams[0].shape == (6, 8)
    run = await run_scripted([script], [ThresholdStage()])
    assert [o.label for o in run.outputs] == ["dark", "dark", "bright", "bright"]
    assert [o.extra["brightness"] for o in run.outputs] == pytest.approx(
        [80 * i / 255 for i in range(4)]
    )


def test_start_marker_and_info_must_agree() -> None:
    info = StreamInfo("v", "video", 10.0, (2, 2, 3), np.dtype(np.uint8))
    assert StreamStart("v", "video", 10.0, {}, info).info is info
    with pytest.raises(ValueError, match="carries the info"):
        StreamStart("v", "audio", 10.0, {}, info)
    with pytest.raises(ValueError, match="media must be audio or video"):
        StreamInfo("v", "text", 1.0, None, np.dtype(np.uint8))  # type: ignore[arg-type]


def test_a_scripted_source_declares_its_script() -> None:
    script = video_script("v", frames=3, size=(8, 6))
    (info,) = ScriptedSource(script, VirtualClock()).streams
    assert (info.stream, info.media, info.shape, info.total_frames) == ("v", "video", (6, 8, 3), 3)
    assert info.dtype == np.uint8 and not info.live


# -- the dry step reads the declaration ----------------------------------------------------------


def model_config(uri: str, **source: Any) -> dict[str, Any]:
    return {
        "source": {"uri": uri, **source},
        "model": {
            "factory": "pipelines.audio_tagging:build",
            "features": "raw",
            "labels": ["a", "b"],
            "options": {"n_mels": 40, "hidden": 4, "layers": 1},
        },
        "run": {"mode": "online", "max_frames": 3},
        "sinks": [],
    }


def test_the_dry_step_checks_a_declared_shape_before_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    config = parse_config(model_config("synthetic:shapes?size=8x6", timeout=3.0))
    with pytest.raises(InputError, match=r"144"):  # 8 * 6 * 3 raw features, not 40
        build_pipeline(config, VirtualClock())


def test_a_source_without_a_shape_is_checked_at_its_first_frame(
    camera_server: MjpegServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    config = parse_config(model_config(f"camera:{camera_server.url}", timeout=3.0))
    with caplog.at_level(logging.WARNING, logger="streamer.build"):
        pipeline = build_pipeline(config, RealClock())  # no error: nothing to check yet
    (record,) = [r for r in caplog.records if r.name == "streamer.build"]
    message = record.getMessage()
    assert "source:camera-127-0-0-1" in message and "declares no frame shape" in message
    with pytest.raises(StageError, match=r"9216"):  # 64 * 48 * 3 raw features, not 40
        asyncio.run(pipeline.run())
