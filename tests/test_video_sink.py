"""The annotated video (``--video-out``, ``[[sinks]] type = "video"``), read back with OpenCV.

Every written frame's panel (label, latency, score bars: an opaque box, so it depends on the
output alone) is compared with the panel :func:`annotate` draws for the output the frame
should show: matched by index in the lossless modes (the JSONL of the same run says which),
the newest output available in realtime mode. MJPG (.avi) is compared closely; mp4v (.mp4)
with a tolerance for codec noise.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from media import tone_then_silence, write_audio, write_video

import streamer.build  # noqa: F401  (imported before a test drops root's rights)
from streamer.channels import Channel
from streamer.cli import main
from streamer.clock import Clock, VirtualClock
from streamer.errors import StageError
from streamer.frames import Frame, Output, StreamEnd, StreamStart
from streamer.pipeline import Pipeline
from streamer.sinks import CallbackSink
from streamer.sinks.overlay import annotate, panel_layout
from streamer.sinks.video import OutputMatcher, VideoSink
from streamer.stages import ThresholdStage
from streamer.testing import ScriptedSource

WIDTH, HEIGHT, FPS = 320, 240, 10.0
PREFIX = "streamer: error: "
#: Mean absolute difference (0-255) below which two panels count as the same picture.
SAME_MJPG, SAME_MP4 = 4.0, 8.0


def clip(pattern: str = "DDDDDDDDBBBBBBBBDDDDDDDD") -> list[np.ndarray]:
    """Frames ``[H, W, 3]``: D dark, B bright, with a small square moving in the lower right
    (away from the panel) so that no two frames are alike."""
    frames = []
    for i, kind in enumerate(pattern):
        image = np.full((HEIGHT, WIDTH, 3), 30 if kind == "D" else 210, np.uint8)
        x = 200 + (3 * i) % 80
        image[180:220, x : x + 24] = (0, 0, 255)
        frames.append(image)
    return frames


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def panel(image: np.ndarray, rows: int = 4) -> np.ndarray:
    """The panel's first ``rows`` rows, less a JPEG block at its lower and right edges."""
    layout = panel_layout(image.shape[1], image.shape[0])
    _x0, _y0, x1, y1 = layout.box(rows - 1)
    return image[: y1 - 8, : x1 - 8].astype(np.float64)


def label_region(image: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = panel_layout(image.shape[1], image.shape[0]).label_box
    return image[y0:y1, x0 : x1 - 8].astype(np.float64)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two crops, blurred a little against codec noise."""
    blur = [cv2.GaussianBlur(x, (3, 3), 0) for x in (a, b)]
    return float(np.abs(blur[0] - blur[1]).mean())


def nearer(got: np.ndarray, mine: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``got`` is clearly nearer ``mine`` than ``other`` where those two differ."""
    where = np.abs(mine - other).max(axis=-1) > 40
    if not where.any():
        return True
    return bool(2 * np.abs(got - mine)[where].mean() < np.abs(got - other)[where].mean())


def expected_panel(output: Output | None, image: np.ndarray | None = None) -> np.ndarray:
    """The panel drawn for ``output`` (on ``image``: "no output yet" covers only two rows)."""
    background = np.zeros((HEIGHT, WIDTH, 3), np.uint8) if image is None else image
    return panel(annotate(background, output))


def output_of(record: dict[str, Any]) -> Output:
    """The output a JSONL line describes (what the video sink was sent)."""
    return Output(
        stream=record["stream"],
        kind=record["kind"],
        start=record["start"],
        end=record["end"],
        pts=record["pts"],
        label=record["label"],
        scores=record["scores"],
        captured=0.0,
        latency_ms=record["latency_ms"],
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


MODEL_PIPELINE = """
[source]
uri = "{source}"

[model]
factory = "live_models:build"
labels = ["quiet", "busy"]

[run]
mode = "{mode}"
{sinks}
"""


# -- frames matched to outputs ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["online-threshold", "offline-model"])
def test_each_frame_shows_its_own_output(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lossless modes: frame i shows output i (offline: outputs come only after the whole
    clip was read, so every frame waited for its output)."""
    mode, stage = how.split("-")
    source = write_video(tmp_path / "in.avi", clip(), fps=FPS)
    out, video = tmp_path / "out.jsonl", tmp_path / "annotated.avi"
    if stage == "model":
        pipeline = tmp_path / "model.toml"
        pipeline.write_text(MODEL_PIPELINE.format(source=source, mode=mode, sinks=""))
        args = ["run", str(pipeline)]
    else:
        args = ["run", "--source", str(source), "--mode", mode]
    code, err = run([*args, "--out", str(out), "--video-out", str(video), "-q"], capsys)
    assert code == 0, err

    records = read_records(out)
    frames = read_video(video)
    assert len(frames) == len(clip()) == len(records)
    assert [r["start"] for r in records] == list(range(len(frames)))
    wanted = [expected_panel(output_of(r)) for r in records]
    distinct = {w.tobytes() for w in wanted}
    assert len(distinct) >= 2, "the outputs draw alike: the test could not tell them apart"
    for index, frame in enumerate(frames):
        got = panel(frame)
        assert diff(got, wanted[index]) < SAME_MJPG, f"frame {index}"
        for other in wanted:
            assert nearer(got, wanted[index], other), f"frame {index} shows another output"


def test_mp4_label_region_differs_between_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ready-made case: ``--video-out FILE.mp4`` (mp4v), read back with OpenCV."""
    pattern = "DDDDDDDDBBBBBBBBDDDDDDDD"
    source = write_video(tmp_path / "in.mp4", clip(pattern), fps=FPS)
    video = tmp_path / "annotated.mp4"
    code, err = run(["run", "--source", str(source), "--video-out", str(video), "-q"], capsys)
    assert code == 0, err
    frames = read_video(video)
    assert len(frames) == len(pattern)
    regions = [label_region(frame) for frame in frames]
    same = [
        diff(regions[i], regions[j])
        for i in range(len(pattern))
        for j in range(i + 1, len(pattern))
        if pattern[i] == pattern[j]
    ]
    different = [
        diff(regions[i], regions[j])
        for i in range(len(pattern))
        for j in range(i + 1, len(pattern))
        if pattern[i] != pattern[j]
    ]
    assert max(same) < SAME_MP4, max(same)
    assert min(different) > 3 * max(max(same), 1.0), (min(different), max(same))
    # and it is the label that is drawn there
    dark, bright = (label_region(frames[i]) for i in (0, 8))
    for region, label in ((dark, "dark"), (bright, "bright")):
        drawn = annotate(np.zeros((HEIGHT, WIDTH, 3), np.uint8), _threshold_output(label))
        assert diff(region, label_region(drawn)) < SAME_MP4


def _threshold_output(label: str) -> Output:
    """What the thresholder says of the clip's dark or bright frames (scores 1.00)."""
    high = label == "bright"
    scores = {"dark": 0.0 if high else 1.0, "bright": 1.0 if high else 0.0}
    return Output("in", "frame", 0, 0, 0.0, label, scores, 0.0)


# -- realtime: the newest output ------------------------------------------------------------


class SlowThreshold:
    """The thresholder, taking ``delay`` seconds of the clock per frame."""

    def __init__(self, clock: Clock, delay: float) -> None:
        self.name = "slow"
        self.clock = clock
        self.delay = delay
        self.inner = ThresholdStage()

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            if isinstance(item, Frame):
                await self.clock.sleep(self.delay)
                output = self.inner.label(item)
                assert output is not None
                await outbox.send(output)
            else:
                await outbox.send(item)


def script(images: list[np.ndarray], stream: str = "cam") -> list[Any]:
    items: list[Any] = [StreamStart(stream, "video", FPS)]
    items += [Frame(stream, i, i / FPS, 0.0, image, FPS) for i, image in enumerate(images)]
    return [*items, StreamEnd(stream, len(images))]


async def test_realtime_frames_show_the_newest_output(tmp_path: Path) -> None:
    """A model slower than the frame period: each frame is written when it arrives, with
    the newest output available then (an older frame's), so the label lags the picture."""
    clock = VirtualClock()
    pattern = "DDDDDDDDBBBBBBBBDDDDDDDD"
    images = clip(pattern)
    source = ScriptedSource(script(images), clock, pace="realtime")
    video = VideoSink(tmp_path / "rt.avi", "cam", wait=False, clock=clock)
    arrivals: list[tuple[float, Output]] = []

    def note(output: Output) -> None:
        arrivals.append((clock.now(), output))

    # 0.234 s per frame: outputs never land at a frame's arrival time (a multiple of 0.1 s)
    stage = SlowThreshold(clock, 0.234)
    pipeline = Pipeline(
        [source], [stage], [CallbackSink(note), video], mode="realtime", clock=clock
    )
    await pipeline.run()

    frames = read_video(tmp_path / "rt.avi")
    assert len(frames) == len(images)
    assert len(arrivals) < len(images)  # the model skipped frames (latest edge)
    lagging = 0
    for index, frame in enumerate(frames):
        available = [output for when, output in arrivals if when < index / FPS]
        newest = available[-1] if available else None
        wanted = expected_panel(newest, images[index])
        assert diff(panel(frame), wanted) < SAME_MJPG, f"frame {index}"
        own = "dark" if pattern[index] == "D" else "bright"
        lagging += newest is not None and newest.label != own
    assert lagging >= 2  # the first bright (and dark again) frames still show the old label


# -- bounds, failures, aborts ------------------------------------------------------------------


def test_offline_buffer_bound_writes_frames_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``[[sinks]] type = "video"`` with a buffer smaller than one frame: in offline mode
    no output exists while the clip is read, so each frame is written at once, with "no
    output yet", and the run says so once."""
    source = write_video(tmp_path / "in.avi", clip(), fps=FPS)
    video = tmp_path / "bounded.avi"
    sinks = f'[[sinks]]\ntype = "video"\npath = "{video}"\nmax_buffer_mb = 0.01\n'
    pipeline = tmp_path / "bounded.toml"
    pipeline.write_text(MODEL_PIPELINE.format(source=source, mode="offline", sinks=sinks))
    with caplog.at_level(logging.WARNING, logger="streamer.sinks.video"):
        code, err = run(["run", str(pipeline), "-q"], capsys)
    assert code == 0, err
    frames = read_video(video)
    assert len(frames) == len(clip())
    for index, (frame, image) in enumerate(zip(frames, clip(), strict=True)):
        assert diff(panel(frame), expected_panel(None, image)) < SAME_MJPG, f"frame {index}"
    warnings = [r for r in caplog.records if "max_buffer_mb" in r.getMessage()]
    assert len(warnings) == 1


class FailAt:
    """Passes frames through the thresholder; at frame ``at`` calls ``then()``."""

    def __init__(self, at: int, then: Callable[[], None]) -> None:
        self.name = "fail-at"
        self.at = at
        self.then = then
        self.inner = ThresholdStage()

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            if isinstance(item, Frame):
                if item.index == self.at:
                    self.then()
                    await asyncio.sleep(0)
                output = self.inner.label(item)
                assert output is not None
                await outbox.send(output)
            else:
                await outbox.send(item)


@pytest.mark.parametrize("end", ["abort", "stage-error"])
async def test_frames_written_before_an_abort_stay_a_valid_mp4(end: str, tmp_path: Path) -> None:
    clock = VirtualClock()
    path = tmp_path / "cut.mp4"
    source = ScriptedSource(script(clip()), clock, pace="realtime")
    video = VideoSink(path, "cam", wait=False, clock=clock)
    pipeline: Pipeline

    def then() -> None:
        if end == "abort":
            pipeline.abort()
        else:
            raise RuntimeError("model broke")

    pipeline = Pipeline([source], [FailAt(12, then)], [video], mode="realtime", clock=clock)
    expected: type[BaseException] = asyncio.CancelledError if end == "abort" else StageError
    with pytest.raises(expected):
        await asyncio.create_task(pipeline.run())  # its own task: the abort cancels that
    frames = read_video(path)
    assert 1 <= len(frames) <= 13
    assert len(frames) == video.frames_written


# -- refusals ------------------------------------------------------------------------------------


def test_refuses_to_overwrite_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_video(tmp_path / "in.mp4", clip(), fps=FPS)
    before = source.read_bytes()
    code, err = run(["run", "--source", str(source), "--video-out", str(source), "-q"], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(PREFIX) and "--video-out" in line and "the source file" in line
    assert "Traceback" not in err
    assert source.read_bytes() == before


def _audio(tmp: Path) -> list[str]:
    wav = write_audio(tmp / "tone.wav", tone_then_silence(0.5, 0.5), subtype="PCM_16")
    return ["run", "--source", str(wav), "--video-out", str(tmp / "out.mp4"), "-q"]


def _video_args(tmp: Path, out: str, *extra: str) -> list[str]:
    source = write_video(tmp / "in.mp4", clip("DDBB"), fps=FPS)
    return ["run", "--source", str(source), "--video-out", str(tmp / out), "-q", *extra]


def _preview_in_file(tmp: Path) -> list[str]:
    source = write_video(tmp / "in.mp4", clip("DDBB"), fps=FPS)
    pipeline = tmp / "preview.toml"
    pipeline.write_text(
        f'[source]\nuri = "{source}"\n\n[[sinks]]\ntype = "video"\npreview = true\n'
    )
    return ["run", str(pipeline), "-q"]


REFUSALS: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "folder missing": (lambda t: _video_args(t, "nowhere/out.mp4"), ("--video-out", "nowhere")),
    "a folder": (lambda t: _video_args(t, "."), ("--video-out", "folder")),
    "unknown suffix": (lambda t: _video_args(t, "out.mkv"), ("--video-out", ".mkv")),
    "audio only": (_audio, ("--video-out", "no video", "tone")),
    "preview, no display": (
        lambda t: _video_args(t, "out.mp4", "--preview"),
        ("--preview", "display"),
    ),
    "preview in the file, no display": (_preview_in_file, ("[[sinks]] #1 preview", "display")),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_refusals(
    case: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    make, names = REFUSALS[case]
    args = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, err = run(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(PREFIX), err
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    assert sorted(tmp_path.rglob("*")) == before  # nothing created: refused before the run


def test_refuses_a_read_only_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    args = _video_args(tmp_path, "locked/out.mp4")
    folder.chmod(0o555)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:  # root writes anywhere: check as an unprivileged user (who may not be
        # able to import anything more: what `streamer run` imports is imported above)
        walk = [tmp_path, tmp_path.parent, tmp_path.parent.parent]
        modes = [p.stat().st_mode for p in walk]
        for p, mode in zip(walk, modes, strict=True):
            p.chmod(mode | 0o005)
        os.setegid(65534)  # out of root's group too: its bits of the folders are ---
        os.seteuid(65534)
    try:
        code, err = run(args, capsys)
    finally:
        if as_root:
            os.seteuid(0)
            os.setegid(0)
            for p, mode in zip(walk, modes, strict=True):
                p.chmod(mode)
        folder.chmod(0o755)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "--video-out" in line and "permission denied" in line, line
    assert not (folder / "out.mp4").exists()


# -- the matching rule --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(0, n - 1)),
            st.lists(st.booleans(), min_size=2 * n, max_size=2 * n),
        )
    )
)
def test_matcher_shows_the_frames_own_output_else_the_last_before(
    case: tuple[int, set[int], list[bool]],
) -> None:
    """Frames written as soon as their output is known (outputs of some frames missing,
    arrivals interleaved at random) show their own output, else the newest before them."""
    frames, have, order = case
    outputs = [Output("s", "frame", i, i, 0.0, str(i), {str(i): 1.0}, 0.0) for i in sorted(have)]
    matcher, shown = OutputMatcher(), {}
    waiting, arriving = list(range(frames)), list(outputs)
    for add_next in order + [True] * len(outputs):
        if add_next and arriving:
            matcher.add(arriving.pop(0))
        while waiting and (matcher.ready(waiting[0]) or not arriving):
            index = waiting.pop(0)
            chosen = matcher.shown(index)
            shown[index] = None if chosen is None else chosen.end
            matcher.forget_before(index)
    assert not waiting
    for index in range(frames):
        before = [i for i in have if i <= index]
        assert shown[index] == (max(before) if before else None), index
