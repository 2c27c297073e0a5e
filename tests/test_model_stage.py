"""The model stage inside a real pipeline: state per stream, modes, heads, bad input.

Every run goes through :func:`streamer.testing.run_scripted` (scripted sources, real
channels, the real :class:`~streamer.stages.model.ModelStage` on its worker thread, a
capture sink). Expected values are computed directly: ``model.forward`` over a stream's
whole feature sequence (``raw`` features: one step per frame, the frame's samples), with
``L`` zero steps appended and the first ``L`` outputs dropped for a lookahead ``L``, then
the head's activation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from streamer.channels import Channel
from streamer.clock import Clock, RealClock, VirtualClock
from streamer.errors import InputError, StageError
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamStart
from streamer.models import ModuleModel, RNNModel, State, StatefulModel, as_model
from streamer.pipeline import Mode
from streamer.sources.base import Pace
from streamer.stages.model import ModelSettings, ModelStage, dry_check
from streamer.testing import ScriptedRun, as_outputs, run_scripted, video_script

F = 8  # samples per (mono) audio frame: raw features have F values per step
RATE = 800.0  # samples per second: 100 frames per second
FRAME_S = F / RATE
HIDDEN = 6
LABELS = ("a", "b", "c")
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- models ------------------------------------------------------------------------------


class Leaky(nn.Module):
    """A custom ``(x, state) -> (y, state)`` module: a leaky tanh integrator and a head.

    ``h_t = 0.6 h_{t-1} + tanh(W x_t)``, ``y_t = V [h_t, sum_t]`` where ``sum_t`` counts the
    steps taken (so the output depends on where in the stream a step is). State ``(h [B, H],
    n [B, 1])`` (2-d: batch axis 0); ``None`` is a fresh start.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(F, HIDDEN)
        self.out = nn.Linear(HIDDEN + 1, len(LABELS))

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            h = torch.zeros(x.shape[0], HIDDEN)
            n = torch.zeros(x.shape[0], 1)
        else:
            h, n = state
        ys = []
        for t in range(x.shape[1]):
            h = 0.6 * h + torch.tanh(self.inp(x[:, t]))
            n = n + 1
            ys.append(self.out(torch.cat([h, torch.tanh(n / 20)], dim=1)))
        return torch.stack(ys, dim=1), (h, n)


class StrictLeaky(Leaky):
    """:class:`Leaky` that must be given its state: ``forward`` rejects ``None``, and
    ``initial_state`` (h = 0.1, five steps already counted) is not what ``None`` gives."""

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            raise ValueError("StrictLeaky needs a state: see initial_state(batch)")
        return super().forward(x, state)

    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        return torch.full((batch, HIDDEN), 0.1), torch.full((batch, 1), 5.0)


def _build(kind: str, seed: int = 0) -> StatefulModel:
    torch.manual_seed(seed)
    if kind == "gru":
        return as_model((nn.GRU(F, HIDDEN, batch_first=True), nn.Linear(HIDDEN, 3)))
    if kind == "lstm":
        return as_model((nn.LSTM(F, HIDDEN, batch_first=True), nn.Linear(HIDDEN, 3)))
    if kind == "gru2":
        return as_model((nn.GRU(F, HIDDEN, num_layers=2, batch_first=True), nn.Linear(HIDDEN, 3)))
    if kind == "custom":
        return as_model(Leaky())
    if kind == "strict":
        return as_model(StrictLeaky())
    raise AssertionError(kind)


MODELS: dict[str, StatefulModel] = {
    k: _build(k) for k in ("gru", "lstm", "gru2", "custom", "strict")
}


class Counting:
    """Wraps a model: records the batch size of every ``step`` and every ``forward``, and
    whether a step started from the initial state; sleeps ``delay`` s per step."""

    def __init__(self, model: StatefulModel, delay: float = 0.0) -> None:
        self.model = model
        self.delay = delay
        self.batches: list[int] = []
        self.lengths: list[int] = []
        self.forwards: list[tuple[int, ...]] = []

    @property
    def causal(self) -> bool:
        return self.model.causal

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.model.input_shape

    def initial_state(self, batch: int) -> State:
        return self.model.initial_state(batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        self.batches.append(int(x.shape[0]))
        self.lengths.append(int(x.shape[1]))
        if self.delay:
            time.sleep(self.delay)
        return self.model.step(x, state)

    def forward(self, x: Tensor) -> Tensor:
        self.forwards.append(tuple(x.shape))
        return self.model.forward(x)


# --- scripts and expected values ---------------------------------------------------------


def random_frames(n: int, seed: int) -> np.ndarray:
    """``[n, F]`` float32 samples in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n, F)).astype(np.float32)


def stream_script(
    stream: str,
    data: np.ndarray,
    *,
    gaps: dict[int, int] | None = None,
    invalid: dict[int, float] | None = None,
    end: bool = True,
    meta: dict[str, Any] | None = None,
    t0: float = 0.0,
) -> list[Item]:
    """StreamStart, one mono frame per row of ``data`` ([n, F]), StreamEnd.

    ``gaps`` maps a row to the number of frame indices lost before it (a ``Gap`` marker
    stands in their place); ``invalid`` maps a row to a value (NaN, inf) written into it.
    ``t0`` offsets every pts (for scripts paced on a clock).
    """
    gaps = gaps or {}
    invalid = invalid or {}
    items: list[Item] = [StreamStart(stream, "audio", RATE, dict(meta or {}))]
    index = 0
    for row in range(data.shape[0]):
        lost = gaps.get(row, 0)
        if lost:
            items.append(Gap(stream, index, lost, t0 + index * FRAME_S, "source"))
            index += lost
        samples = data[row].copy()
        if row in invalid:
            samples[row % F] = invalid[row]
        items.append(Frame(stream, index, t0 + index * FRAME_S, 0.0, samples[:, None], RATE))
        index += 1
    if end:
        items.append(StreamEnd(stream, index))
    return items


def interleave(scripts: Sequence[Sequence[Item]], offsets: Sequence[int]) -> list[Item]:
    """One script: item ``j`` of script ``i`` at tick ``offsets[i] + j`` (ties: script order)."""
    keyed = [
        (offset + j, i, j, item)
        for i, (script, offset) in enumerate(zip(scripts, offsets, strict=True))
        for j, item in enumerate(script)
    ]
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def activate(y: Tensor, activation: str) -> np.ndarray:
    """The head's activation of ``y [T, K]`` (in float64, as the head computes it)."""
    y64 = y.detach().to(torch.float64)
    if activation in ("auto", "softmax"):
        return torch.softmax(y64, dim=1).numpy()
    if activation == "sigmoid":
        return torch.sigmoid(y64).numpy()
    return y64.numpy()


def direct(
    model: StatefulModel, data: np.ndarray, lookahead: int = 0, activation: str = "auto"
) -> np.ndarray:
    """Scores ``[n, K]`` of the whole sequence, shifted by ``lookahead`` with zero padding."""
    x = torch.from_numpy(data)
    x = torch.cat([x, torch.zeros(lookahead, x.shape[1])])
    y = model.forward(x[None])[0][lookahead:]
    return activate(y, activation)


def frame_outputs(outputs: Sequence[Output], stream: str) -> tuple[list[int], np.ndarray]:
    """Frame outputs of ``stream``: their indices and scores ``[n, K]`` (labels' order)."""
    mine = [o for o in outputs if o.stream == stream]
    assert all(o.kind == "frame" and o.start == o.end for o in mine), mine[:3]
    starts = [o.start for o in mine]
    scores = np.array([[o.scores[label] for label in LABELS] for o in mine], dtype=np.float64)
    return starts, scores.reshape(len(mine), len(LABELS))


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)


def settings_for(**kwargs: Any) -> ModelSettings:
    return ModelSettings(labels=LABELS, **kwargs)


async def run_stage(
    model: StatefulModel,
    scripts: Sequence[Sequence[Item]],
    model_settings: ModelSettings,
    mode: Mode = "online",
    *,
    clock: Clock | None = None,
    pace: Pace = "fast",
) -> tuple[ScriptedRun, ModelStage, Tap]:
    clock = clock or VirtualClock()
    stage = ModelStage(model, model_settings, mode=mode, clock=clock)
    tap = Tap()
    run = await run_scripted(scripts, [stage, tap], mode=mode, clock=clock, pace=pace)
    return run, stage, tap


def run_sync(
    model: StatefulModel,
    scripts: Sequence[Sequence[Item]],
    model_settings: ModelSettings,
    mode: Mode = "online",
) -> list[Output]:
    run, _, _ = asyncio.run(run_stage(model, scripts, model_settings, mode))
    return run.outputs


class Tap:
    """A pass-through stage after the model stage: records every item (markers too)."""

    name = "tap"

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            self.items.append(item)
            await outbox.send(item)

    def gaps(self) -> list[Gap]:
        return [i for i in self.items if isinstance(i, Gap)]


# --- streaming equals offline equals direct ----------------------------------------------


@pytest.mark.parametrize("kind", list(MODELS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_online_equals_offline_equals_forward(kind: str, data: st.DataObject) -> None:
    """A lossless streaming run, any chunk (1..64) and lookahead (0..5), gives the offline
    run's outputs and ``forward`` over the whole sequence (atol 1e-5); offline runs split
    into long pieces (``offline_chunk``) give the same."""
    model = MODELS[kind]
    n = data.draw(st.integers(1, 90), label="frames")
    chunk = data.draw(st.integers(1, 64), label="chunk")
    lookahead = data.draw(st.integers(0, 5), label="lookahead")
    piece = data.draw(st.integers(0, 40), label="offline_chunk")
    activation = data.draw(st.sampled_from(["none", "softmax", "sigmoid"]), label="activation")
    frames = random_frames(n, data.draw(st.integers(0, 2**16), label="seed"))
    script = stream_script("s", frames)
    head = {"activation": activation}

    online = run_sync(
        model,
        [script],
        settings_for(chunk=chunk, lookahead=lookahead, head_options=head),
        "online",
    )
    offline = run_sync(
        model,
        [script],
        settings_for(lookahead=lookahead, offline_chunk=piece, head_options=head),
        "offline",
    )
    expected = direct(model, frames, lookahead, activation)

    on_starts, on_scores = frame_outputs(online, "s")
    off_starts, off_scores = frame_outputs(offline, "s")
    assert on_starts == list(range(n))
    assert off_starts == list(range(n))
    close(on_scores, expected)
    close(off_scores, expected)
    close(on_scores, off_scores)


async def test_online_steps_in_chunks_and_offline_in_one_forward() -> None:
    """``chunk`` is what online mode waits for; offline makes one forward of the whole
    sequence plus the lookahead's zero steps, or ``offline_chunk`` pieces."""
    frames = random_frames(40, 1)
    online = Counting(MODELS["gru"])
    await run_stage(
        online,
        [stream_script("s", frames)],
        settings_for(chunk=16, lookahead=2),
        pace="realtime",  # frames arrive one by one (virtual time)
    )
    # the dry step (two steps of the first frame), two full chunks, the rest at the end,
    # L zeros
    assert online.lengths == [2, 16, 16, 8, 2]

    offline = Counting(MODELS["gru"])
    await run_stage(offline, [stream_script("s", frames)], settings_for(lookahead=2), "offline")
    assert offline.forwards == [(1, 2, F), (1, 42, F)]  # the dry run, then the whole stream
    assert offline.batches == []

    pieces = Counting(MODELS["gru"])
    await run_stage(pieces, [stream_script("s", frames)], settings_for(offline_chunk=10), "offline")
    assert pieces.forwards == []
    assert pieces.lengths[1:] == [10, 10, 10, 10]


async def test_offline_pieces_are_output_while_the_stream_still_comes() -> None:
    """Offline with ``offline_chunk``, a causal model: a piece's outputs leave while later
    frames still arrive (paced on the virtual clock), not after the stream's end; the
    outputs are the one-forward outputs all the same."""
    frames = random_frames(40, 3)
    script = stream_script("s", frames)
    run, _, _ = await run_stage(
        MODELS["gru"], [script], settings_for(offline_chunk=10), "offline", pace="realtime"
    )
    whole, _, _ = await run_stage(MODELS["gru"], [script], settings_for(), "offline")
    first = next(o for o in run.outputs if o.kind == "frame" and o.start == 0)
    # out once the second piece was in (20 frames), long before the 40th frame came
    assert first.latency_ms is not None
    assert first.latency_ms < 25 * FRAME_S * 1000
    assert frame_outputs(run.outputs, "s")[0] == list(range(40))
    close(frame_outputs(run.outputs, "s")[1], frame_outputs(whole.outputs, "s")[1])


async def test_declared_lookahead_delay_in_the_report() -> None:
    frames = random_frames(12, 2)
    script = stream_script("s", frames, meta={"chunk": F, "channels": 1})
    _, stage, _ = await run_stage(MODELS["gru"], [script], settings_for(lookahead=3, chunk=4))
    report = stage.report()
    assert report["lookahead_frames"] == 3
    assert report["lookahead_s"] == pytest.approx(3 * FRAME_S)
    assert report["model_calls"] >= 1


async def test_online_output_for_frame_t_waits_for_frame_t_plus_lookahead() -> None:
    """With lookahead L, the output of frame t is emitted only after frame t+L arrived:
    a stream cut before its end (no StreamEnd yet) has outputs up to frame n-1-L."""
    frames = random_frames(10, 3)
    lookahead = 3
    clock = VirtualClock()
    stage = ModelStage(MODELS["gru"], settings_for(lookahead=lookahead), clock=clock)
    inbox: Channel[Any] = Channel("in", 64)
    outbox: Channel[Any] = Channel("out", 64)
    for item in stream_script("s", frames, end=False):
        await inbox.send(item)
    task = asyncio.create_task(stage.run(inbox, outbox))
    for _ in range(200):
        await asyncio.sleep(0.005)
        done = as_outputs(outbox.take_ready())
        if done:
            break
    await asyncio.sleep(0.05)
    done += as_outputs(outbox.take_ready())
    assert [o.start for o in done] == list(range(10 - lookahead))
    await inbox.send(StreamEnd("s", 10))
    inbox.close()
    await task
    rest = as_outputs(outbox.take_ready())
    assert [o.start for o in rest] == list(range(10 - lookahead, 10))
    close(frame_outputs(done + rest, "s")[1], direct(MODELS["gru"], frames, lookahead))


# --- several streams, batched ------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_batched_streams_equal_each_stream_alone(data: st.DataObject) -> None:
    """Streams of different lengths, starting at different times, in one run with
    ``max_batch`` >= 2: each stream's outputs equal running it alone."""
    kind = data.draw(st.sampled_from(list(MODELS)), label="model")
    model = MODELS[kind]
    count = data.draw(st.integers(2, 4), label="streams")
    lengths = data.draw(st.lists(st.integers(1, 40), min_size=count, max_size=count))
    offsets = data.draw(st.lists(st.integers(0, 30), min_size=count, max_size=count))
    chunk = data.draw(st.integers(1, 8), label="chunk")
    lookahead = data.draw(st.integers(0, 3), label="lookahead")
    max_batch = data.draw(st.integers(2, 4), label="max_batch")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    streams = {f"s{i}": random_frames(n, seed + i) for i, n in enumerate(lengths)}
    scripts = [stream_script(name, frames) for name, frames in streams.items()]
    config = settings_for(chunk=chunk, lookahead=lookahead, max_batch=max_batch)

    together = run_sync(model, [interleave(scripts, offsets)], config)
    for (name, frames), script in zip(streams.items(), scripts, strict=True):
        alone_starts, alone = frame_outputs(run_sync(model, [script], config), name)
        starts, scores = frame_outputs(together, name)
        assert starts == alone_starts == list(range(len(frames)))
        close(scores, alone)
        close(scores, direct(model, frames, lookahead))


@pytest.mark.parametrize("kind", ["gru", "lstm", "gru2"])
async def test_streams_ready_together_run_in_one_batched_call(kind: str) -> None:
    """Chunks of several streams that are ready together go in one ``step`` (B > 1, at
    most ``max_batch``), and each stream still gets exactly its own outputs."""
    lengths = {"a": 30, "b": 24, "c": 36, "d": 20}
    offsets = [0, 3, 3, 9]
    streams = {name: random_frames(n, 10 + i) for i, (name, n) in enumerate(lengths.items())}
    scripts = [stream_script(name, frames) for name, frames in streams.items()]
    model = Counting(MODELS[kind])
    run, stage, _ = await run_stage(
        model, [interleave(scripts, offsets)], settings_for(chunk=4, lookahead=1, max_batch=3)
    )
    assert max(model.batches) > 1, model.batches
    assert max(model.batches) <= 3
    assert stage.report()["mean_batch"] > 1
    for name, frames in streams.items():
        starts, scores = frame_outputs(run.outputs, name)
        assert starts == list(range(len(frames)))
        close(scores, direct(MODELS[kind], frames, lookahead=1))


async def test_several_sources_share_one_model_stage() -> None:
    """Streams from separate sources, also batched, each equal to its own sequence."""
    streams = {f"src{i}": random_frames(25 + 7 * i, 20 + i) for i in range(3)}
    scripts = [stream_script(name, frames) for name, frames in streams.items()]
    model = Counting(MODELS["gru2"])
    run, _, _ = await run_stage(model, scripts, settings_for(chunk=5, max_batch=4))
    for name, frames in streams.items():
        starts, scores = frame_outputs(run.outputs, name)
        assert starts == list(range(len(frames)))
        close(scores, direct(MODELS["gru2"], frames))


# --- gaps: reset or keep -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("on_gap", ["reset", "keep"])
async def test_gap_resets_or_keeps_the_state(mode: str, lookahead: int, on_gap: str) -> None:
    """``reset``: the frames after a gap get a fresh stream's outputs (and the frames
    before it are flushed with the lookahead's zeros); ``keep``: the state carries on as
    if the frames after the gap followed the ones before it."""
    model = MODELS["gru"]
    frames = random_frames(22, 4)
    before, after = frames[:10], frames[10:]
    script = stream_script("s", frames, gaps={10: 3})
    run, _, tap = await run_stage(
        model, [script], settings_for(chunk=3, lookahead=lookahead, on_gap=on_gap), mode
    )
    starts, scores = frame_outputs(run.outputs, "s")
    assert starts == [*range(10), *range(13, 25)]
    if on_gap == "reset":
        close(scores[:10], direct(model, before, lookahead))
        close(scores[10:], direct(model, after, lookahead))
        fresh, _, _ = await run_stage(
            model, [stream_script("t", after)], settings_for(lookahead=lookahead), mode
        )
        close(scores[10:], frame_outputs(fresh.outputs, "t")[1])
    else:
        close(scores, direct(model, frames, lookahead))
    assert [(g.index, g.count, g.reason) for g in tap.gaps()] == [(10, 3, "source")]


@pytest.mark.parametrize("on_gap", ["reset", "keep"])
@pytest.mark.parametrize(
    ("head", "options", "smoothing"),
    [
        ("window", {"window": 4, "hop": 4}, None),
        ("sequence", {"segment_on_gap": True}, None),
        ("frame", {}, {"min_on": 0.02}),
    ],
    ids=["window", "sequence-segments", "smoothing"],
)
async def test_gap_boundaries_are_the_same_in_every_mode(
    on_gap: str, head: str, options: dict[str, Any], smoothing: dict[str, Any] | None
) -> None:
    """Windows, sequence segments and smoothed segments end at a gap, whether the state is
    reset or kept across it, online as offline (where a kept gap's steps wait for the
    offline pass: the head must still see the gap between them)."""
    frames = random_frames(20, 21)
    script = stream_script("s", frames, gaps={6: 2}, meta={"chunk": F, "channels": 1})
    config = settings_for(
        head=head, head_options=options, smoothing=smoothing, on_gap=on_gap, lookahead=1
    )
    results = {}
    for mode in ("online", "offline"):
        run, _, _ = await run_stage(MODELS["gru"], [script], config, mode)
        results[mode] = [(o.kind, o.start, o.end, o.label) for o in run.outputs]
        scores = np.array([[o.scores[label] for label in LABELS] for o in run.outputs])
        results[f"{mode}-scores"] = scores
        # nothing covers frames on both sides of the gap (frames 6 and 7 never came)
        assert all(o.end < 6 or o.start >= 8 for o in run.outputs), results[mode]
    assert results["online"] == results["offline"]
    close(results["online-scores"], results["offline-scores"])


async def test_one_streams_gap_does_not_touch_another_stream() -> None:
    model = MODELS["lstm"]
    a, b = random_frames(30, 5), random_frames(30, 6)
    scripts = [stream_script("a", a, gaps={12: 2}), stream_script("b", b)]
    run, _, _ = await run_stage(
        model, [interleave(scripts, [0, 0])], settings_for(chunk=2, max_batch=2)
    )
    starts, scores = frame_outputs(run.outputs, "b")
    assert starts == list(range(30))
    close(scores, direct(model, b))
    _, scores_a = frame_outputs(run.outputs, "a")
    close(scores_a[12:], direct(model, a[12:]))


# --- idle streams are evicted after the TTL ----------------------------------------------


@pytest.mark.parametrize("ttl", [None, 1.0])
async def test_idle_stream_state_is_evicted_after_ttl(ttl: float | None) -> None:
    """Stream ``a`` sends 5 frames and falls silent (no end, no gap) while ``b`` runs for
    2 s; ``a`` comes back at 3 s. With ``ttl = 1`` its state was evicted meanwhile (it
    starts fresh); without a TTL it carries on."""
    model = MODELS["gru"]
    a = random_frames(10, 7)
    b = random_frames(200, 8)
    first = stream_script("a", a[:5], end=False)
    # a's frames 5..9 arrive at 3 s (pts from 3.0), continuing its indices
    later = [Frame("a", 5 + i, 3.0 + i * FRAME_S, 0.0, a[5 + i][:, None], RATE) for i in range(5)]
    script_b = stream_script("b", b)
    timed = sorted(
        [(i.pts if isinstance(i, Frame) else -1.0, 0, k, i) for k, i in enumerate(first)]
        + [
            (i.pts if isinstance(i, Frame) else (-1.0 if k == 0 else 2.5), 1, k, i)
            for k, i in enumerate(script_b)
        ]
        + [(i.pts, 2, k, i) for k, i in enumerate(later)]
        + [(4.0, 3, 0, StreamEnd("a", 10))],
        key=lambda t: t[:3],
    )
    clock = VirtualClock()
    run, stage, _ = await run_stage(
        model,
        [[t[3] for t in timed]],
        settings_for(ttl=ttl),
        clock=clock,
        pace="realtime",
    )
    starts, scores = frame_outputs(run.outputs, "a")
    assert starts == list(range(10))
    close(scores[:5], direct(model, a[:5]))
    if ttl is None:
        close(scores[5:], direct(model, a)[5:])
    else:
        close(scores[5:], direct(model, a[5:]))
    assert len(stage.store) == 0  # every stream ended: nothing is kept


@pytest.mark.parametrize(
    ("mode", "chunk", "lookahead"), [("offline", 1, 0), ("online", 16, 0), ("online", 1, 3)]
)
async def test_ttl_never_evicts_a_stream_that_keeps_sending(
    mode: str, chunk: int, lookahead: int
) -> None:
    """Activity is input, not model calls: a stream filling a 16-step chunk, or collected
    for one offline pass, for longer than the TTL keeps its state and every output."""
    model = MODELS["gru"]
    frames = random_frames(50, 17)  # 10 ms apart: 0.5 s, ten times the TTL
    run, _, _ = await run_stage(
        model,
        [stream_script("s", frames)],
        settings_for(ttl=0.05, chunk=chunk, lookahead=lookahead),
        mode,
        clock=VirtualClock(),
        pace="realtime",
    )
    starts, scores = frame_outputs(run.outputs, "s")
    assert starts == list(range(50))
    close(scores, direct(model, frames, lookahead))


async def test_an_evicted_stream_loses_no_output() -> None:
    """A stream idle for longer than the TTL with frames still waiting (a part-filled
    chunk, a lookahead) has them stepped and output when it is evicted."""
    model = MODELS["gru"]
    a, b = random_frames(5, 18), random_frames(200, 19)
    script_a = stream_script("a", a, end=False)
    script_b = stream_script("b", b)
    items = [*script_a[:1], *script_b[:1]]
    items += sorted(
        [i for i in [*script_a[1:], *script_b[1:-1]] if isinstance(i, Frame)],
        key=lambda f: (f.pts, f.stream),
    )
    items += [script_b[-1]]
    run, stage, _ = await run_stage(
        model,
        [items],
        settings_for(ttl=0.5, chunk=8, lookahead=2),
        clock=VirtualClock(),
        pace="realtime",
    )
    starts, scores = frame_outputs(run.outputs, "a")
    assert starts == list(range(5))
    close(scores, direct(model, a, lookahead=2))
    assert "a" not in stage.store and not stage._streams


# --- realtime: newest frame wins, skipped frames arrive as gaps ---------------------------


async def test_realtime_with_a_slow_model_drops_frames_and_resets_on_gaps() -> None:
    """Frames every 2 ms, 5 ms per model step: most frames are skipped, every processed
    frame has its output at once, the skipped ones arrive as gaps (the state resets), and
    outputs + dropped = frames."""
    n = 150
    frames = random_frames(n, 9)
    spacing = 0.002
    items: list[Item] = [StreamStart("s", "audio", RATE)]
    items += [Frame("s", i, i * spacing, 0.0, frames[i][:, None], RATE) for i in range(n)]
    items.append(StreamEnd("s", n))
    model = Counting(MODELS["gru"], delay=0.005)
    started = time.monotonic()
    run, _, tap = await run_stage(
        model, [items], settings_for(), "realtime", clock=RealClock(), pace="realtime"
    )
    assert time.monotonic() - started < 5.0
    starts, scores = frame_outputs(run.outputs, "s")
    summary = run.summary
    assert summary["dropped"] > 0
    assert len(starts) + summary["dropped"] == n
    assert summary["streams"]["s"]["frames_missing"] == summary["dropped"]
    assert sorted(set(starts)) == starts
    lost = {i for g in tap.gaps() for i in range(g.index, g.index + g.count)}
    assert lost == set(range(n)) - set(starts)
    assert all(g.reason.startswith("overflow:") for g in tap.gaps())
    assert all(length == 1 for length in model.lengths[1:])  # one frame per step: at once
    # each run of consecutive frames starts from a fresh state (on_gap = reset)
    runs: list[list[int]] = []
    for position, index in enumerate(starts):
        if runs and index == starts[runs[-1][-1]] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    assert len(runs) > 1
    for positions in runs:
        indices = [starts[p] for p in positions]
        expected = direct(MODELS["gru"], frames[indices])
        close(scores[positions], expected)


async def test_realtime_and_online_refuse_a_bidirectional_model() -> None:
    torch.manual_seed(0)
    bidir = RNNModel(nn.GRU(F, HIDDEN, batch_first=True, bidirectional=True))
    for mode in ("online", "realtime"):
        with pytest.raises(InputError, match=r"stage 'model'.*(bidirectional|not causal)"):
            ModelStage(bidir, settings_for(), mode=mode)


async def test_offline_runs_a_bidirectional_gru() -> None:
    torch.manual_seed(1)
    gru = nn.GRU(F, HIDDEN, batch_first=True, bidirectional=True)
    head = nn.Linear(2 * HIDDEN, 3)
    model = as_model((gru, head))
    assert not model.causal
    frames = random_frames(33, 11)
    run, _, _ = await run_stage(
        model, [stream_script("s", frames, gaps={20: 1})], settings_for(), "offline"
    )
    starts, scores = frame_outputs(run.outputs, "s")
    assert starts == [*range(20), *range(21, 34)]
    with torch.no_grad():
        for part, rows in ((frames[:20], slice(0, 20)), (frames[20:], slice(20, 33))):
            out, _ = gru(torch.from_numpy(part)[None])
            expected = torch.softmax(head(out)[0].double(), dim=1).numpy()
            close(scores[rows], expected)


# --- heads through the stage -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("reduce", ["mean", "max", "last"])
async def test_window_head(mode: str, reduce: str) -> None:
    model = MODELS["gru"]
    frames = random_frames(11, 12)
    config = settings_for(
        head="window", head_options={"window": 4, "hop": 2, "reduce": reduce}, chunk=3, lookahead=1
    )
    run, _, _ = await run_stage(model, [stream_script("s", frames)], config, mode)
    assert [o.kind for o in run.outputs] == ["window"] * 4
    assert [(o.start, o.end) for o in run.outputs] == [(0, 3), (2, 5), (4, 7), (6, 9)]
    probs = direct(model, frames, lookahead=1)
    for output in run.outputs:
        rows = probs[output.start : output.end + 1]
        want = {"mean": rows.mean(0), "max": rows.max(0), "last": rows[-1]}[reduce]
        got = np.array([output.scores[label] for label in LABELS])
        close(got, want)
        assert output.label == LABELS[int(np.argmax(want))]
        assert output.pts == pytest.approx(output.end * FRAME_S)


async def test_sequence_head_one_output_at_the_end_same_in_every_mode() -> None:
    model = MODELS["lstm"]
    frames = random_frames(9, 13)
    config = settings_for(head="sequence", chunk=4, lookahead=1)
    results = {}
    for mode in ("online", "offline"):
        run, _, _ = await run_stage(model, [stream_script("s", frames)], config, mode)
        assert [(o.kind, o.start, o.end) for o in run.outputs] == [("sequence", 0, 8)]
        results[mode] = np.array([run.outputs[0].scores[label] for label in LABELS])
    close(results["online"], results["offline"])
    close(results["online"], direct(model, frames, lookahead=1)[-1])


async def test_sequence_head_per_segment_between_gaps() -> None:
    model = MODELS["gru"]
    frames = random_frames(14, 14)
    config = settings_for(head="sequence", head_options={"segment_on_gap": True, "reduce": "mean"})
    for mode in ("online", "offline"):
        run, _, _ = await run_stage(model, [stream_script("s", frames, gaps={6: 2})], config, mode)
        assert [(o.kind, o.start, o.end) for o in run.outputs] == [
            ("sequence", 0, 5),
            ("sequence", 8, 15),
        ]
        first = np.array([run.outputs[0].scores[label] for label in LABELS])
        second = np.array([run.outputs[1].scores[label] for label in LABELS])
        close(first, direct(model, frames[:6]).mean(0))
        close(second, direct(model, frames[6:]).mean(0))


class Level(nn.Module):
    """One logit per step: ``8 (mean(x) - 0.5)``; the state counts the steps."""

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        n = torch.zeros(x.shape[0], 1) if state is None else state
        return 8.0 * (x.mean(dim=2, keepdim=True) - 0.5), n + x.shape[1]


def level_script() -> list[Item]:
    """Silence (0) x10, speech (1) x10, a 2-frame dip (0.05), speech x5, silence x10."""
    levels = [0.0] * 10 + [1.0] * 10 + [0.05] * 2 + [1.0] * 5 + [0.0] * 10
    data = np.repeat(np.array(levels, dtype=np.float32)[:, None], F, axis=1)
    return stream_script("s", data, meta={"chunk": F, "channels": 1})


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize(
    "smoothing", [{"min_off": 0.05}, {"on": 0.9, "off": 0.022}], ids=["min_off", "hysteresis"]
)
async def test_smoothing_makes_segments(mode: str, smoothing: dict[str, float]) -> None:
    """A K = 1 logit for two labels; a minimum silence of 50 ms (or hysteresis) bridges
    the 2-frame dip: frames are relabelled and ``segment`` outputs close each run."""
    config = ModelSettings(labels=("silence", "speech"), smoothing=smoothing, chunk=3)
    run, _, _ = await run_stage(ModuleModel(Level()), [level_script()], config, mode)
    frames = [o for o in run.outputs if o.kind == "frame"]
    segments = [o for o in run.outputs if o.kind == "segment"]
    assert [o.start for o in frames] == list(range(37))
    assert [o.label for o in frames] == ["silence"] * 10 + ["speech"] * 17 + ["silence"] * 10
    assert [(o.label, o.start, o.end) for o in segments] == [
        ("silence", 0, 9),
        ("speech", 10, 26),
        ("silence", 27, 36),
    ]
    assert segments[1].t0 == pytest.approx(10 * FRAME_S)
    assert segments[1].t1 == pytest.approx(27 * FRAME_S)
    # a segment is output before the first frame of the next run
    order = [(o.kind, o.start) for o in run.outputs]
    assert order.index(("segment", 10)) < order.index(("frame", 27))


async def test_per_label_thresholds_choose_the_label() -> None:
    """speech scores at most sigmoid(4) = 0.982: under a 0.99 threshold, never speech."""
    for thresholds, speech in (({"speech": 0.99}, 0), ({"speech": 0.9}, 15)):
        config = ModelSettings(labels=("silence", "speech"), thresholds=thresholds)
        run, _, _ = await run_stage(ModuleModel(Level()), [level_script()], config)
        assert [o.label for o in run.outputs].count("speech") == speech


async def test_with_thresholds_nothing_on_takes_the_smoothing_default() -> None:
    """Three labels, a threshold only on speech: where speech is not on, the label is
    smoothing's ``default`` ("none"), not the first label ("music")."""
    config = ModelSettings(
        labels=("music", "speech", "none"),
        thresholds={"speech": 0.9},
        smoothing={"default": "none"},
    )
    run, _, _ = await run_stage(ModuleModel(ThreeLevels()), [level_script()], config)
    labels = [o.label for o in run.outputs if o.kind == "frame"]
    assert set(labels) == {"none", "speech"} and labels.count("speech") == 15


class ThreeLevels(nn.Module):
    """``Level``'s speech logit, spread over three labels (music, speech, none)."""

    def __init__(self) -> None:
        super().__init__()
        self.level = Level()

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        y, state = self.level(x, state)
        return torch.cat([torch.zeros_like(y), y, torch.zeros_like(y)], dim=-1), state


VOCAB = ("<end>", "a", "b", "c", "d")


class Successor(nn.Module):
    """A tiny decoder over ``VOCAB``: token i's one-hot in, token i+1 most likely out
    ("d" -> "<end>"). The state counts the steps taken; the logits do not depend on it."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (len(VOCAB),)
        table = torch.zeros(len(VOCAB), len(VOCAB))
        for i in range(len(VOCAB)):
            table[i, (i + 1) % len(VOCAB)] = 5.0
        self.register_buffer("table", table)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        count = torch.zeros(x.shape[0], 1) if state is None else state
        return x @ self.table, count + x.shape[1]


def one_hot(token: int) -> np.ndarray:
    frame = np.zeros(len(VOCAB), dtype=np.float32)
    frame[token] = 1.0
    return frame


async def test_generate_head_streams_tokens_until_the_end_token() -> None:
    """Each frame conditions a greedy decode: frame "a" gives "b", "c", "d" then <end>;
    each token is a ``token`` output with positions 0, 1, 2 covering that frame."""
    model = ModuleModel(Successor())
    # frames: one-hot "a", then "c", as mono audio of len(VOCAB) samples (F = 5)
    data = np.stack([one_hot(1), one_hot(3)])
    items: list[Item] = [StreamStart("g", "audio", RATE)]
    items += [Frame("g", i, i * 0.01, 0.0, data[i][:, None], RATE) for i in range(2)]
    items.append(StreamEnd("g", 2))
    config = ModelSettings(labels=VOCAB, head="generate", end_token="<end>", max_len=10)
    for mode in ("online", "offline"):
        run, _, _ = await run_stage(model, [items], config, mode)
        got = [(o.kind, o.start, o.label, o.extra["position"]) for o in run.outputs]
        assert got == [
            ("token", 0, "b", 0),
            ("token", 0, "c", 1),
            ("token", 0, "d", 2),
            ("token", 1, "d", 0),
        ], mode
        for output in run.outputs:
            assert list(output.scores) == [output.label]
            assert 0.5 < output.scores[output.label] <= 1.0


async def test_generate_head_stops_at_max_len() -> None:
    model = ModuleModel(Successor())
    items: list[Item] = [
        StreamStart("g", "audio", RATE),
        Frame("g", 0, 0.0, 0.0, one_hot(1)[:, None], RATE),
        StreamEnd("g", 1),
    ]
    config = ModelSettings(labels=VOCAB, head="generate", max_len=7)
    run, _, _ = await run_stage(model, [items], config)
    # no end token: b c d <end> a b c, seven tokens
    assert [o.label for o in run.outputs] == ["b", "c", "d", "<end>", "a", "b", "c"]
    assert [o.extra["position"] for o in run.outputs] == list(range(7))


class Aging(nn.Module):
    """Token i -> i+1 ("d" -> "a") like :class:`Successor`, but once the stream has taken
    ``limit`` steps (the state counts them, decode steps included) "<end>" wins: how many
    tokens a frame's decode gives depends on the state right after that frame's step."""

    def __init__(self, limit: int = 4) -> None:
        super().__init__()
        self.input_shape = (len(VOCAB),)
        self.limit = limit
        table = torch.zeros(len(VOCAB), len(VOCAB))
        for i in range(1, len(VOCAB)):
            table[i, i % (len(VOCAB) - 1) + 1] = 5.0
        self.register_buffer("table", table)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        n = torch.zeros(x.shape[0], 1) if state is None else state
        end = torch.zeros(len(VOCAB))
        end[0] = 20.0
        ys = []
        for t in range(x.shape[1]):
            n = n + 1
            ys.append(x[:, t] @ self.table + (n >= self.limit).float() * end)
        return torch.stack(ys, dim=1), n


@pytest.mark.parametrize(
    ("mode", "chunk", "pace"),
    [
        ("online", 1, "realtime"),
        ("online", 1, "fast"),
        ("online", 3, "realtime"),
        ("offline", 1, "fast"),
    ],
)
async def test_generate_decodes_from_the_state_after_each_step(
    mode: str, chunk: int, pace: str
) -> None:
    """Frame s's decode starts from the state after step s (s + 1 steps taken) and does
    not change the stream's state; the result does not depend on chunking or mode."""
    model = ModuleModel(Aging(limit=4))
    data = np.stack([one_hot(1)] * 5)
    items: list[Item] = [StreamStart("g", "audio", RATE)]
    items += [Frame("g", i, i * 0.01, 0.0, data[i][:, None], RATE) for i in range(5)]
    items.append(StreamEnd("g", 5))
    config = ModelSettings(
        labels=VOCAB, head="generate", end_token="<end>", max_len=10, chunk=chunk
    )
    run, _, _ = await run_stage(model, [items], config, mode, pace=pace)
    # after step 0: 1 step taken -> b (2), c (3), d (4: end wins next); step 1: b, c; step 2: b
    assert [(o.start, o.label, o.extra["position"]) for o in run.outputs] == [
        (0, "b", 0),
        (0, "c", 1),
        (0, "d", 2),
        (1, "b", 0),
        (1, "c", 1),
        (2, "b", 0),
    ]


# --- invalid input: NaN and Inf ----------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_invalid_frame_dropped_with_a_gap_marker_and_a_warning(
    bad: float, caplog: pytest.LogCaptureFixture
) -> None:
    model = MODELS["gru"]
    frames = random_frames(15, 15)
    script = stream_script("s", frames, invalid={6: bad})
    caplog.set_level(logging.WARNING)
    run, _, tap = await run_stage(model, [script], settings_for(chunk=4, on_invalid="drop"))
    starts, scores = frame_outputs(run.outputs, "s")
    assert starts == [*range(6), *range(7, 15)]
    assert [(g.stream, g.index, g.count, g.reason) for g in tap.gaps()] == [("s", 6, 1, "invalid")]
    assert run.summary["streams"]["s"]["gaps"] == 1
    close(scores[:6], direct(model, frames[:6]))
    close(scores[6:], direct(model, frames[7:]))  # on_gap = reset: fresh after the drop
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("frame 6" in r.getMessage() and "'s'" in r.getMessage() for r in warnings), [
        r.getMessage() for r in caplog.records
    ]


async def test_invalid_frame_stops_the_run_with_on_invalid_error() -> None:
    frames = random_frames(15, 16)
    script = stream_script("s", frames, invalid={6: math.nan})
    with pytest.raises(StageError) as info:
        await run_stage(MODELS["gru"], [script], settings_for(on_invalid="error"))
    assert info.value.stage == "model"
    assert isinstance(info.value.cause, InputError)
    message = str(info.value)
    assert "stage 'model'" in message and "frame 6" in message and "NaN" in message


# --- a model that does not fit the input -------------------------------------------------


def _gru40() -> ModelStage:
    torch.manual_seed(0)
    model = as_model((nn.GRU(40, HIDDEN, batch_first=True), nn.Linear(HIDDEN, 2)))
    return ModelStage(model, ModelSettings(labels=("x", "y")))


def test_dry_check_refuses_three_channel_audio_for_a_40_feature_model() -> None:
    stage = _gru40()
    frame = Frame("mic", 0, 0.0, 0.0, np.zeros((16, 3), np.float32), 16000.0)
    with pytest.raises(InputError) as info:
        dry_check(stage, frame)
    message = str(info.value)
    assert "stage 'model'" in message
    assert "48" in message and "40" in message, message  # 16 samples x 3 channels vs 40
    assert "\n" not in message


def test_dry_check_refuses_video_frames_for_a_40_feature_model() -> None:
    stage = _gru40()
    frame = video_script(frames=1, size=(8, 6))[1]
    assert isinstance(frame, Frame)
    with pytest.raises(InputError, match=r"stage 'model'.*144.*40"):
        dry_check(stage, frame)


def test_dry_check_accepts_a_fitting_frame_and_leaves_no_stream_behind() -> None:
    stage = _gru40()
    dry_check(stage, Frame("mic", 0, 0.0, 0.0, np.zeros((40, 1), np.float32), 16000.0))
    assert stage._streams == {}
    assert len(stage.store) == 0


async def test_mismatch_found_on_the_first_frame_of_a_run_names_both_shapes() -> None:
    """Without a dry step before the run, the first frame's check stops it the same way."""
    stage = _gru40()
    items: list[Item] = [
        StreamStart("s", "audio", RATE),
        Frame("s", 0, 0.0, 0.0, np.zeros((16, 3), np.float32), RATE),
        StreamEnd("s", 1),
    ]
    with pytest.raises(StageError) as info:
        await run_scripted([items], [stage])
    assert isinstance(info.value.cause, InputError)
    assert "stage 'model'" in str(info.value) and "48" in str(info.value)


@pytest.mark.parametrize(
    ("outputs", "labels", "ok"),
    [
        (3, ("a", "b"), False),
        (2, ("a", "b", "c"), False),
        (1, ("a", "b"), True),
        (2, ("a", "b"), True),
    ],
)
def test_labels_must_match_the_model_outputs(
    outputs: int, labels: tuple[str, ...], ok: bool
) -> None:
    torch.manual_seed(0)
    model = as_model((nn.GRU(F, HIDDEN, batch_first=True), nn.Linear(HIDDEN, outputs)))
    stage = ModelStage(model, ModelSettings(labels=labels))
    frame = Frame("s", 0, 0.0, 0.0, np.zeros((F, 1), np.float32), RATE)
    if ok:
        dry_check(stage, frame)
        return
    with pytest.raises(InputError) as info:
        dry_check(stage, frame)
    assert "stage 'model'" in str(info.value)
    assert f"{outputs} scores" in str(info.value) and str(len(labels)) in str(info.value)


def test_settings_are_checked() -> None:
    model = MODELS["gru"]
    with pytest.raises(InputError, match="lookahead"):
        ModelStage(model, settings_for(lookahead=-1))
    with pytest.raises(InputError, match="chunk"):
        ModelStage(model, settings_for(chunk=0))
    with pytest.raises(InputError, match="generate"):
        ModelStage(model, ModelSettings(labels=VOCAB, head="generate", lookahead=2))


# --- the dry check: two steps, and the real problem named --------------------------------


def mono(samples: int = F) -> Frame:
    """A zero mono audio frame of ``samples`` samples (raw features: that many per step)."""
    return Frame("s", 0, 0.0, 0.0, np.zeros((samples, 1), np.float32), RATE)


class LastStepOnly(Leaky):
    """Returns only the last step's output, ``y [B, 1, K]``, whatever ``T``."""

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        y, new = super().forward(x, state)
        return y[:, -1:], new


class LastStepModel(Counting):
    """A :class:`StatefulModel` (no adapter) that returns only its last step."""

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, new = self.model.step(x, state)
        return y[:, -1:], new


class YOnly(nn.Module):
    """Forgets to return its state."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(F, len(LABELS))

    def forward(self, x: Tensor, state: Tensor | None) -> Tensor:
        return self.out(x)


class NeedsState(Leaky):
    """Unpacks its state without a fresh start for ``None``, and has no initial_state."""

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, n = state  # type: ignore[misc]
        return super().forward(x, (h, n))


def refused(stage: ModelStage, frame: Frame) -> str:
    """The one-line InputError of ``stage.dry_check(frame)``."""
    with pytest.raises(InputError) as info:
        stage.dry_check(frame)
    message = str(info.value)
    assert message.startswith("stage 'model': ") and "\n" not in message, message
    assert "does not fit" not in message, message
    return message


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_dry_check_refuses_a_model_that_returns_only_its_last_step(mode: str) -> None:
    """Two steps in, one output out: refused before the run, whatever the adapter."""
    adapted = ModelStage(as_model(LastStepOnly()), settings_for(), mode=mode)
    message = refused(adapted, mono())
    assert "one output per step" in message and "[1, 1, 3]" in message, message
    bare = ModelStage(LastStepModel(MODELS["gru"]), settings_for(), mode="online")
    message = refused(bare, mono())
    assert "y [B, T, K], one output per step" in message and "[1, 1, 3]" in message, message


def test_dry_check_names_a_forward_that_does_not_return_y_and_state() -> None:
    message = refused(ModelStage(as_model(YOnly()), settings_for()), mono())
    assert "forward(x, state) must return (y, state), got a Tensor of shape [1, 2, 3]" in message


def test_dry_check_names_state_none_for_a_module_that_cannot_start_fresh() -> None:
    message = refused(ModelStage(as_model(NeedsState()), settings_for()), mono())
    assert "state=None" in message and "initial_state(batch)" in message, message


def test_dry_check_names_both_shapes_when_a_custom_module_fails_on_the_features() -> None:
    """A module that declares no input shape and fails on 16 samples per step (it takes 8)."""
    message = refused(ModelStage(as_model(Leaky()), settings_for()), mono(16))
    assert "'raw' features, [16] per step" in message and "[1, 2, 16]" in message, message
    declared = refused(_gru40(), mono(16))
    assert "[16] per step, but the model takes [40]" in declared, declared


def test_dry_check_is_a_public_method_that_leaves_nothing_behind() -> None:
    model = Counting(MODELS["gru"])
    stage = ModelStage(model, settings_for())
    stage.dry_check(mono())
    assert model.lengths == [2]  # one call, two steps
    assert stage._streams == {} and len(stage.store) == 0


async def test_offline_starts_from_the_models_initial_state() -> None:
    """A module that rejects state=None runs offline as online, from its initial_state."""
    model = MODELS["strict"]
    frames = random_frames(30, 40)
    expected = direct(model, frames)
    for mode in ("online", "offline"):
        run, _, _ = await run_stage(model, [stream_script("s", frames)], settings_for(), mode)
        starts, scores = frame_outputs(run.outputs, "s")
        assert starts == list(range(30)), mode
        close(scores, expected)
    # starting from None-like zeros would have given other scores
    with torch.inference_mode():
        zeros = (torch.zeros(1, HIDDEN), torch.zeros(1, 1))
        y = StrictLeaky.forward(model.module, torch.from_numpy(frames)[None], zeros)[0][0]  # type: ignore[attr-defined]
    assert not np.allclose(activate(y, "auto"), expected, atol=1e-3)


# --- generate head: checked before the run -----------------------------------------------


class Narrow(nn.Module):
    """Three features in, one logit per token of ``VOCAB`` out; optionally declares its
    input shape. It cannot take a one-hot token (five values) back."""

    def __init__(self, declare: bool = True) -> None:
        super().__init__()
        if declare:
            self.input_shape = (3,)
        self.out = nn.Linear(3, len(VOCAB))

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        count = torch.zeros(x.shape[0], 1) if state is None else state
        return self.out(x), count + x.shape[1]


class Embedded(Narrow):
    """:class:`Narrow` with ``embed_token(id)``: three features per token."""

    def embed_token(self, token: int) -> Tensor:
        return torch.tensor([float(token), 1.0, -1.0])


def generate_settings(**kwargs: Any) -> ModelSettings:
    return ModelSettings(labels=VOCAB, head="generate", max_len=3, **kwargs)


def test_generate_end_token_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(InputError, match=r"\[model\] end_token '<stop>' is not in the vocab"):
        ModelStage(ModuleModel(Successor()), generate_settings(end_token="<stop>"))


def test_generate_refuses_a_model_that_cannot_take_its_tokens_back() -> None:
    with pytest.raises(InputError) as info:
        ModelStage(ModuleModel(Narrow()), generate_settings())
    message = str(info.value)
    assert "embed_token(id)" in message and "input size equal to the vocabulary" in message
    assert "[3]" in message and "(5," in message, message
    # an undeclared input shape: found by the dry check, on three-sample frames
    stage = ModelStage(ModuleModel(Narrow(declare=False)), generate_settings())
    message = refused(stage, mono(3))
    assert "embed_token(id)" in message and "[3] per step" in message, message


async def test_generate_with_embed_token_runs() -> None:
    model = ModuleModel(Embedded())
    stage = ModelStage(model, generate_settings())
    stage.dry_check(mono(3))
    items: list[Item] = [StreamStart("g", "audio", RATE)]
    items += [
        Frame("g", i, i * 0.01, 0.0, np.full((3, 1), 0.1 * i, np.float32), RATE) for i in range(2)
    ]
    items.append(StreamEnd("g", 2))
    run, _, _ = await run_stage(model, [items], generate_settings())
    assert [(o.kind, o.start, o.extra["position"]) for o in run.outputs] == [
        ("token", 0, 0),
        ("token", 0, 1),
        ("token", 0, 2),
        ("token", 1, 0),
        ("token", 1, 1),
        ("token", 1, 2),
    ]


class FewLogits(Narrow):
    """Takes one-hot tokens (five values) but gives three logits, not one per token."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (len(VOCAB),)
        self.out = nn.Linear(len(VOCAB), 3)


def test_generate_needs_one_logit_per_token() -> None:
    stage = ModelStage(ModuleModel(FewLogits()), generate_settings())
    message = refused(stage, mono(len(VOCAB)))
    assert "one logit per token: the model gives 3 per step" in message, message
    assert "vocabulary ([model] labels) has 5" in message, message


# --- head settings the head cannot use ---------------------------------------------------


def test_softmax_over_a_single_output_is_refused_before_the_run() -> None:
    config = ModelSettings(labels=("silence", "speech"), head_options={"activation": "softmax"})
    stage = ModelStage(ModuleModel(Level()), config)
    message = refused(stage, mono())
    assert "[model] activation = 'softmax'" in message and "K = 1" in message, message
    fine = ModelStage(ModuleModel(Level()), ModelSettings(labels=("silence", "speech")))
    fine.dry_check(mono())


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (generate_settings(head_options={"activation": "sigmoid"}), "activation"),
        (generate_settings(thresholds={"a": 0.5}), "thresholds"),
        (generate_settings(smoothing={"min_on": 0.1}), "smoothing"),
    ],
)
def test_options_the_generate_head_cannot_use_are_refused(
    settings: ModelSettings, key: str
) -> None:
    with pytest.raises(InputError, match=rf"\[model\] {key} = .* does not apply to head"):
        ModelStage(ModuleModel(Successor()), settings)
    ModelStage(ModuleModel(Successor()), generate_settings(head_options={"activation": "auto"}))


def test_head_options_are_checked_at_construction_not_mid_run() -> None:
    with pytest.raises(InputError, match=r"\[model\] end_token is for head = 'generate'"):
        ModelStage(MODELS["gru"], settings_for(end_token="a"))
    with pytest.raises(InputError, match=r"\[model\] head: 'frame'.*window"):
        ModelStage(MODELS["gru"], settings_for(head_options={"window": 4}))
    with pytest.raises(InputError, match=r"\[model\] thresholds: .*unknown labels \['z'\]"):
        ModelStage(MODELS["gru"], settings_for(thresholds={"z": 0.5}))


# --- the TTL and slow model calls; model calls counted offline -----------------------------


class CostClock:
    """Time that only model calls advance (``charge``); sleepers jump ahead to their
    deadline. A model call longer than the TTL, without timing anything."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)
        await asyncio.sleep(0)

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.t + seconds)

    def busy(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def charge(self, seconds: float) -> None:
        self.t += seconds


class Costly(Counting):
    """Each step costs ``cost`` seconds of ``clock`` time."""

    def __init__(self, model: StatefulModel, clock: CostClock, cost: float) -> None:
        super().__init__(model)
        self.clock = clock
        self.cost = cost

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        self.clock.charge(self.cost)
        return super().step(x, state)


@pytest.mark.parametrize("chunk", [1, 4])
async def test_ttl_never_evicts_a_stream_whose_frames_were_just_processed(chunk: int) -> None:
    """Every model call takes 1 s, twice the TTL: the stream keeps its state and its
    outputs, each frame once (nothing restarts mid-stream)."""
    clock = CostClock()
    model = Costly(MODELS["custom"], clock, cost=1.0)
    frames = random_frames(30, 41)
    stage = ModelStage(model, settings_for(ttl=0.5, chunk=chunk), clock=clock)
    run = await run_scripted(
        [stream_script("s", frames)], [stage], clock=clock, pace="fast", source_capacity=2
    )
    assert len(model.lengths) > 3  # many calls, each longer than the TTL
    starts, scores = frame_outputs(run.outputs, "s")
    assert starts == list(range(30))
    close(scores, direct(MODELS["custom"], frames))


async def test_offline_runs_count_their_model_calls() -> None:
    frames = {"a": random_frames(40, 42), "b": random_frames(12, 43)}
    scripts = [stream_script(name, data) for name, data in frames.items()]
    _, whole, _ = await run_stage(MODELS["gru"], scripts, settings_for(), "offline")
    assert whole.report()["model_calls"] == 2  # one forward per stream
    assert whole.report()["mean_batch"] == 1
    _, pieces, _ = await run_stage(
        MODELS["gru"], scripts[:1], settings_for(offline_chunk=10), "offline"
    )
    assert pieces.report()["model_calls"] == 4  # 40 steps in pieces of 10
