"""The webcam motion labeller (``pipelines/motion.py``, ``pipelines/webcam_labels.toml``).

The committed weights label a small held-out set of rendered clips (a seed of its own)
about as well as the training script reports; the shipped pipeline, run by ``streamer
run`` in-process, gives the same labels and scores online and offline; in realtime mode
on the virtual clock, behind a stage slower than the frame period, frames are dropped,
the gaps are counted, and the labels stay right after each gap (``on_gap = "keep"``); the
camera stand-in feeds the pipeline end to end; videos smaller or larger than the model's
input and grey videos are converted; a missing weights file is refused in one line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from media import assert_missing_weights_refused, lossless
from test_camera import MjpegServer

from pipelines import motion, motion_scenes, train_motion
from pipelines.motion_scenes import LABELS, counted
from streamer.build import Overrides, apply_overrides, build_pipeline
from streamer.cli import main
from streamer.clock import VirtualClock
from streamer.config import load_config
from streamer.frames import Frame, Gap
from streamer.models.loading import load_model
from streamer.pipeline import Pipeline
from streamer.stages.model.features import Pixels
from streamer.testing import CaptureSink

PIPELINE = REPO / "pipelines" / "webcam_labels.toml"
CONFIG = tomllib.loads(PIPELINE.read_text())

pytestmark = pytest.mark.usefixtures("one_torch_thread", "in_repo")


def clip(seed: int, frames: int = 60, size: tuple[int, int] = (160, 120)) -> motion_scenes.Clip:
    return motion_scenes.render_clip(np.random.default_rng([77, seed]), frames, size, 15.0)


def run(tmp: Path, argv: list[str]) -> list[dict[str, Any]]:
    """``streamer run webcam_labels.toml ARGV``: the frame records, in order."""
    out = tmp / "out.jsonl"
    assert main(["run", str(PIPELINE), *argv, "--out", str(out), "-q"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return [r for r in records if r["kind"] == "frame"]


def labels_of(records: list[dict[str, Any]]) -> np.ndarray:
    return np.array([LABELS.index(r["label"]) for r in records])


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Of the frames from each motion's 6th frame on."""
    mask = counted(truth)
    return float((predicted == truth)[mask].mean())


def test_labels_and_config_agree() -> None:
    model = CONFIG["model"]
    assert model["labels"] == list(LABELS) == list(motion.LABELS)
    assert model["features"] == "pixels" and model["activation"] == "softmax"
    options = model["feature_options"]
    assert tuple(options["size"]) == motion.INPUT_SIZE
    assert tuple(options["mean"]) == motion.MEAN and tuple(options["std"]) == motion.STD
    assert model["on_gap"] == "keep" and CONFIG["run"]["mode"] == "realtime"
    assert Path(CONFIG["source"]["uri"]).stat().st_size < 1_000_000


def test_preprocess_is_what_the_pixels_features_give() -> None:
    frames = clip(1, frames=3, size=(320, 240)).frames
    pixels = Pixels(motion.INPUT_SIZE, mean=motion.MEAN, std=motion.STD)
    expected = torch.cat([pixels.push(frame) for frame in frames])
    assert torch.equal(motion.preprocess(frames), expected)


def test_flow_points_the_way_a_pattern_moves() -> None:
    """The model's fixed motion signal (Lucas-Kanade flow per region): a smooth pattern
    moved by one pixel gives a flow of about one pixel that way in every region of the
    finest level, across it about none; an unmoved one gives none."""
    rng = np.random.default_rng(0)
    pattern = rng.uniform(-1, 1, (12, 16)).astype(np.float32)
    big = torch.from_numpy(cv2.resize(pattern, (80, 60), interpolation=cv2.INTER_CUBIC))
    regions = motion.FLOW_REGIONS[0] * motion.FLOW_REGIONS[1]

    def view(dx: int, dy: int) -> torch.Tensor:  # [1, 1, 48, 64]: the window moved by dx, dy
        return big[None, None, 6 + dy : 54 + dy, 8 + dx : 72 + dx]

    assert motion.flow(view(0, 0), view(0, 0))[0, : 2 * regions].abs().max() < 1e-6
    for (dx, dy), (u_sign, v_sign) in {
        (-1, 0): (1, 0),  # the window moves left: the pattern moves right
        (1, 0): (-1, 0),
        (0, 1): (0, -1),  # the pattern moves up
        (0, -1): (0, 1),
    }.items():
        moved = motion.flow(view(dx, dy), view(0, 0))[0]
        u, v = moved[:regions], moved[regions : 2 * regions]
        along, across = (u * u_sign, v) if u_sign else (v * v_sign, u)
        assert along.min() > 0.8 and along.max() < 1.2, (dx, dy, along)
        assert across.abs().mean() < 0.4, (dx, dy, across)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shift=st.tuples(st.integers(-2, 2), st.integers(-2, 2)),
    centre=st.tuples(st.floats(-0.8, 0.8), st.floats(-0.8, 0.8)),
    axis=st.sampled_from([0, 1]),
)
def test_flipped_flows_are_the_flows_of_the_flipped_frames(
    seed: int, shift: tuple[int, int], centre: tuple[float, float], axis: int
) -> None:
    """The training scripts' flip of the flows (the labeller's, and the object's part the
    captioner's summary reads) equals the flows computed on the flipped frames, the
    object's centre flipped with them."""
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(-1, 1, (12, 16)).astype(np.float32)
    big = torch.from_numpy(cv2.resize(pattern, (80, 60), interpolation=cv2.INTER_CUBIC))
    dx, dy = shift
    before = big[None, None, 6:54, 8:72]
    grey = big[None, None, 6 + dy : 54 + dy, 8 + dx : 72 + dx]
    point = torch.tensor([centre])
    mirrored = point * torch.tensor([[-1.0, 1.0]] if axis == 0 else [[1.0, -1.0]])
    dim = -1 if axis == 0 else -2
    flows = motion.flow(grey, before, point)
    expected = motion.flow(grey.flip(dim), before.flip(dim), mirrored)
    torch.testing.assert_close(train_motion.flip_flows(flows, axis), expected, atol=2e-4, rtol=0)
    own = flows[..., motion.REGION_FLOW_SIZE :]
    torch.testing.assert_close(
        train_motion.flip_object_flow(own, axis),
        expected[..., motion.REGION_FLOW_SIZE :],
        atol=2e-4,
        rtol=0,
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), frames=st.integers(1, 70))
def test_render_is_seeded_and_the_labels_are_the_motions(seed: int, frames: int) -> None:
    """The same seed draws the same clip; the motions tile the clip, one label per frame,
    no two neighbours alike; the caption names the shape and colour."""
    a = motion_scenes.render_clip(np.random.default_rng(seed), frames, (64, 48))
    b = motion_scenes.render_clip(np.random.default_rng(seed), frames, (64, 48))
    assert np.array_equal(a.frames, b.frames) and a.description == b.description
    assert a.frames.shape == (frames, 48, 64, 3) and a.frames.dtype == np.uint8
    motions = a.description.motions
    assert motions[0].start == 0 and motions[-1].end == frames
    assert all(m.end == n.start and m.label != n.label for m, n in itertools.pairwise(motions))
    spans = np.concatenate([[LABELS.index(m.label)] * (m.end - m.start) for m in motions])
    assert np.array_equal(a.labels, spans)
    d = a.description
    assert d.caption().startswith(f"{d.colour} {d.shape} ")


def test_counted_skips_the_first_five_frames_of_each_motion() -> None:
    labels = np.array([0] * 7 + [1] * 5 + [3] * 6)
    assert counted(labels).tolist() == [False] * 5 + [True] * 2 + [False] * 5 + [False] * 5 + [True]


def test_held_out_accuracy() -> None:
    """40 held-out clips of 40 frames (a seed of their own), as the training script's
    held-out set (300 clips: 0.947; these 40: 0.961): >= 92 % of the counted frames."""
    clips = motion_scenes.render_set(11, 40, 40)
    x = torch.stack([motion.preprocess(c.frames) for c in clips])  # [B, T, 3, 48, 64]
    truth = np.stack([c.labels for c in clips])
    model = load_model(CONFIG["model"]["factory"])
    with torch.inference_mode():
        y, _ = model.step(x, model.initial_state(len(clips)))
    assert accuracy(y.argmax(-1).numpy(), truth) >= 0.92


def test_streaming_equals_offline(tmp_path: Path) -> None:
    """One clip, online (one frame at a time, the state carried) and offline (one pass):
    the same labels, scores within 1e-5; and the labels are the clip's motions."""
    shown = clip(2, frames=72)
    video = lossless(tmp_path / "clip.mkv", shown.frames)
    offline = run(tmp_path, ["--source", str(video), "--mode", "offline"])
    online = run(tmp_path, ["--source", str(video), "--mode", "online"])
    assert [r["start"] for r in offline] == [r["start"] for r in online] == list(range(72))
    assert [r["label"] for r in offline] == [r["label"] for r in online]
    a = np.array([[r["scores"][k] for k in LABELS] for r in offline])
    b = np.array([[r["scores"][k] for k in LABELS] for r in online])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert accuracy(labels_of(online), shown.labels) >= 0.9


class Slow:
    """A stage that takes ``cost`` seconds of the (virtual) clock for each frame."""

    name = "slow"

    def __init__(self, clock: VirtualClock, cost: float) -> None:
        self.clock = clock
        self.cost = cost

    async def run(self, inbox: Any, outbox: Any) -> None:
        async for item in inbox:
            if isinstance(item, Frame):
                await self.clock.sleep(self.cost)
            await outbox.send(item)


def test_realtime_behind_a_slow_stage_drops_frames_and_keeps_the_labels(tmp_path: Path) -> None:
    """A 15 fps clip paced in real time (virtual clock) through a stage taking 1.6 frame
    periods a frame: frames are dropped, each loss arrives as a gap and is counted, the
    state is kept across gaps, so every output equals the model run over the frames that
    got through, and the labels right after each gap are right."""
    fps = 15.0
    shown = clip(3, frames=120)
    video = lossless(tmp_path / "clip.mkv", shown.frames, fps)
    overrides = Overrides(
        sources=(str(video),), mode="realtime", quiet=True, out=str(tmp_path / "unused.jsonl")
    )
    config = apply_overrides(load_config(str(PIPELINE)), overrides)
    clock = VirtualClock()
    built = build_pipeline(config, clock)
    sink = CaptureSink()
    gaps: list[Gap] = []

    class Taps(Slow):
        async def run(self, inbox: Any, outbox: Any) -> None:
            async for item in inbox:
                if isinstance(item, Gap):
                    gaps.append(item)
                if isinstance(item, Frame):
                    await self.clock.sleep(self.cost)
                await outbox.send(item)

    pipeline = Pipeline(
        built.sources, [Taps(clock, 1.6 / fps), *built.stages], [sink], "realtime", clock
    )
    summary = asyncio.run(pipeline.run())

    outputs = [o for o in sink.outputs if o.kind == "frame"]
    kept = [o.start for o in outputs]
    assert summary["dropped"] > 20 and len(kept) + summary["dropped"] == 120
    assert summary["streams"]["clip"]["frames_missing"] == summary["dropped"]
    lost = {i for g in gaps for i in range(g.index, g.index + g.count)}
    assert lost == set(range(120)) - set(kept) and kept == sorted(kept)
    # the state is kept across gaps: the model over the frames that got through, in order
    model = load_model(CONFIG["model"]["factory"])
    with torch.inference_mode():
        y, _ = model.step(motion.preprocess(shown.frames[kept])[None], model.initial_state(1))
    expected = torch.softmax(y[0], -1).numpy()
    scores = np.array([[o.scores[k] for k in LABELS] for o in outputs])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # the first frame after each gap, where its motion had gone on for 5 frames: about as
    # right as any frame (the model's held-out accuracy is 0.95), where a reset state (no
    # history: one frame cannot tell a direction) would mostly be wrong
    predicted = labels_of([{"label": o.label} for o in outputs])
    settled = counted(shown.labels)[kept]
    after_gap = np.array([i > 0 and kept[i] != kept[i - 1] + 1 for i in range(len(kept))])
    truth = shown.labels[kept]
    assert (after_gap & settled).sum() >= 10
    kept_right = (predicted == truth)[after_gap & settled].mean()
    first = motion.preprocess(shown.frames[kept])[after_gap & settled][:, None]
    with torch.inference_mode():
        fresh, _ = model.step(first, model.initial_state(len(first)))
    reset_right = (fresh[:, 0].argmax(-1).numpy() == truth[after_gap & settled]).mean()
    # (0.86 measured with the shipped weights)
    assert kept_right >= 0.75 and kept_right >= reset_right + 0.3, (kept_right, reset_right)


def test_the_camera_stand_in_feeds_the_pipeline_live(tmp_path: Path) -> None:
    """The MJPEG camera stand-in (15 fps, 160x120) in realtime mode: 30 frames, each with
    one label of the five and its scores, in order."""
    server = MjpegServer(fps=15.0, size="160x120")
    server.start()
    try:
        records = run(tmp_path, ["--source", f"camera:{server.url}", "--max-frames", "30"])
    finally:
        server.kill()
    assert 20 <= len(records) <= 30
    starts = [r["start"] for r in records]
    assert starts == sorted(set(starts))
    for record in records:
        assert record["label"] in LABELS and set(record["scores"]) == set(LABELS)
        assert abs(sum(record["scores"].values()) - 1.0) < 1e-4
        assert record["latency_ms"] is not None and record["latency_ms"] >= 0


@pytest.mark.parametrize("size", [(32, 24), (640, 480)])
def test_smaller_and_larger_videos_are_resized(tmp_path: Path, size: tuple[int, int]) -> None:
    """Frames of any size are resized to the model's 64x48: the labels are the model's
    on the resized frames."""
    shown = clip(4, frames=16, size=size)
    video = lossless(tmp_path / "clip.mkv", shown.frames)
    records = run(tmp_path, ["--source", str(video), "--mode", "offline"])
    assert len(records) == 16
    model = load_model(CONFIG["model"]["factory"])
    with torch.inference_mode():
        y, _ = model.step(motion.preprocess(shown.frames)[None], model.initial_state(1))
    assert labels_of(records).tolist() == y[0].argmax(-1).tolist()
    scores = np.array([[r["scores"][k] for k in LABELS] for r in records])
    np.testing.assert_allclose(scores, torch.softmax(y[0], -1).numpy(), atol=1e-5)


def test_a_grey_video_is_converted(tmp_path: Path) -> None:
    """A grey (one-channel) video is read as BGR with three equal channels: the labels
    and scores equal those of the same grey frames in a colour video."""
    shown = clip(5, frames=48)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in shown.frames])
    grey_video = lossless(tmp_path / "grey.mkv", grey)
    colour_video = lossless(tmp_path / "colour.mkv", np.repeat(grey[..., None], 3, axis=-1))
    from_grey = run(tmp_path, ["--source", str(grey_video), "--mode", "offline"])
    from_colour = run(tmp_path, ["--source", str(colour_video), "--mode", "offline"])
    assert len(from_grey) == 48
    assert [r["label"] for r in from_grey] == [r["label"] for r in from_colour]
    for a, b in zip(from_grey, from_colour, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)


def test_missing_weights_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_missing_weights_refused(
        PIPELINE, "python pipelines/train_motion.py", tmp_path, lambda: capsys.readouterr().err
    )
