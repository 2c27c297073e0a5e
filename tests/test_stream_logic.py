"""One stream's logic in the model stage (:class:`ModelStream`), without asyncio: frames in,
pending steps out, a fake model's rows delivered, lookahead alignment, gaps between
outputs, the end; the generate head through the same interface."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from streamer.blocks import OutputBlock
from streamer.frames import Frame, Output, StreamStart
from streamer.stages.model import ModelSettings, ModelStream
from streamer.stages.model.features import Raw, Step
from streamer.stages.model.generate import GenerateHead
from streamer.stages.model.heads import FrameHead, SequenceHead
from streamer.stages.model.stream import Emit, open_stream

LABELS = ("a", "b", "c")
RATE = 100.0  # samples per second: two samples per frame, a frame every 20 ms


def frames(start: int, count: int) -> list[Frame]:
    """Frames ``start`` .. ``start + count - 1`` of stream "s", two mono samples each."""
    return [
        Frame("s", i, i * 0.02, 10.0 + i, np.full((2, 1), i, dtype=np.float32), RATE)
        for i in range(start, start + count)
    ]


def model(x: Tensor, lookahead: int = 0) -> Tensor:
    """A fake model: step ``i`` (its first sample is ``i``) gives a row ``[K]`` that picks
    the label of step ``i - lookahead``, so each output's label tells which row it got."""
    steps = x[:, 0].round().long() - lookahead
    rows = torch.full((x.shape[0], len(LABELS)), -5.0)
    rows[torch.arange(x.shape[0]), steps % len(LABELS)] = 5.0
    return rows


def outputs(emits: list[Emit]) -> list[Output]:
    """The outputs emitted (a frame head's block of rows as its outputs)."""
    assert all(isinstance(e, Output | OutputBlock) for e in emits), emits
    return [o for e in emits for o in (e.outputs() if isinstance(e, OutputBlock) else [e])]


def starts(emits: list[Emit]) -> list[int]:
    return [o.start for o in outputs(emits)]


def frame_stream(lookahead: int = 0) -> ModelStream:
    features = Raw("audio", rate=RATE, chunk=2, channels=1)
    return ModelStream("s", features, FrameHead("s", LABELS), lookahead=lookahead)


def test_a_chunk_is_memory_of_its_own_not_a_view_of_its_frames() -> None:
    """A raw audio step is read without a copy, but the chunk the model gets is a copy:
    a frame's data may be a read-only map of a recording, and a model may write into its
    input. The steps equal the frames' samples either way."""
    stream = frame_stream()
    data = np.arange(2, dtype=np.float32).reshape(2, 1)
    data.flags.writeable = False
    first = Frame("s", 0, 0.0, 10.0, data, RATE)
    stream.push([first])
    x, steps = stream.take_chunk()
    assert not np.shares_memory(x.numpy(), data)
    assert x.tolist() == [[0.0, 1.0]] and [s.index for s in steps] == [0]
    assert steps[0].duration == pytest.approx(0.02)


def test_frames_become_pending_steps_taken_in_chunks() -> None:
    stream = frame_stream()
    x = stream.push(frames(0, 3))
    assert x.shape == (3, 2) and stream.pending == 3
    stream.push(frames(3, 2))
    chunk, steps = stream.take_chunk(multiple=2)
    assert chunk.shape == (4, 2) and [s.index for s in steps] == [0, 1, 2, 3]
    assert stream.pending == 1  # the rest of a whole multiple stays pending
    chunk, steps = stream.take_chunk()
    assert chunk[:, 0].tolist() == [4.0] and [s.index for s in steps] == [4]
    assert stream.pending == 0
    with pytest.raises(ValueError, match="0 steps pending"):
        stream.take_chunk()


def test_each_step_gets_its_own_row() -> None:
    stream = frame_stream()
    stream.push(frames(0, 4))
    x, steps = stream.take_chunk()
    out = outputs(stream.deliver(model(x), steps))
    assert [(o.start, o.label) for o in out] == [(0, "a"), (1, "b"), (2, "c"), (3, "a")]
    assert [o.captured for o in out] == [10.0, 11.0, 12.0, 13.0]
    assert stream.lookahead_pad() is None  # nothing waits


def test_lookahead_rows_belong_to_earlier_steps_and_the_pad_flushes_the_last() -> None:
    """``L = 2``: the row of step ``i`` is the output of step ``i - 2``; the first two rows
    have no step, and two zero steps bring the last two outputs."""
    stream = frame_stream(lookahead=2)
    stream.push(frames(0, 3))
    x, steps = stream.take_chunk()
    first = outputs(stream.deliver(model(x, lookahead=2), steps))
    assert [(o.start, o.label) for o in first] == [(0, "a")]
    stream.push(frames(3, 2))
    x, steps = stream.take_chunk()
    second = outputs(stream.deliver(model(x, lookahead=2), steps))
    assert [(o.start, o.label) for o in second] == [(1, "b"), (2, "c")]
    pad = stream.lookahead_pad()
    assert pad is not None and pad.shape == (2, 2) and not pad.any()
    rows = torch.full((2, len(LABELS)), -5.0)
    rows[0, 0] = rows[1, 1] = 5.0  # the outputs of steps 3 and 4
    last = outputs(stream.deliver(rows, []))
    assert [(o.start, o.label) for o in last] == [(3, "a"), (4, "b")]
    assert stream.lookahead_pad() is None


def test_an_aligned_offline_pass_skips_no_row() -> None:
    stream = frame_stream(lookahead=2)
    stream.push(frames(0, 3))
    x, steps = stream.take_chunk()
    out = outputs(stream.deliver_aligned(model(x), steps))
    assert [(o.start, o.label) for o in out] == [(0, "a"), (1, "b"), (2, "c")]
    stream.push(frames(3, 3))  # the next pass skips the first L rows again
    x, steps = stream.take_chunk()
    assert starts(stream.deliver(model(x, lookahead=2), steps)) == [3]


class Recording:
    """A head that records the calls it gets, in order."""

    kind = "frame"
    stream = "s"
    reads_state = False
    step_by_step = False

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output]:
        self.calls.append([s.index for s in steps])
        return []

    def gap(self) -> list[Output]:
        self.calls.append("gap")
        return []

    def end(self) -> list[Output]:
        self.calls.append("end")
        return []


def test_a_kept_gap_reaches_the_head_between_the_outputs_around_it() -> None:
    """Lookahead 1, gap kept after step 2: the gap comes once the output of step 2 has
    gone to the head, which takes the next chunk's first row."""
    head = Recording()
    stream = ModelStream("s", Raw("audio", chunk=2, channels=1), head, lookahead=1)
    stream.push(frames(0, 3))
    x, steps = stream.take_chunk()
    assert stream.deliver(model(x), steps) == []
    assert head.calls == [[0, 1]]
    assert stream.gap(reset=False) == []  # step 2 has no output yet: the gap waits
    assert head.calls == [[0, 1]]
    stream.push(frames(4, 2))
    x, steps = stream.take_chunk()
    stream.deliver(model(x), steps)
    assert head.calls == [[0, 1], [2], "gap", [4]]
    stream.deliver(torch.zeros(1, 3), [])  # the lookahead pad's row
    assert stream.end() == []
    assert head.calls == [[0, 1], [2], "gap", [4], [5], "end"]


def test_a_gap_closes_a_segment_and_the_end_the_last() -> None:
    head = SequenceHead("s", LABELS, segment_on_gap=True)
    stream = ModelStream("s", Raw("audio", chunk=2, channels=1), head)
    stream.push(frames(0, 2))
    x, steps = stream.take_chunk()
    assert stream.deliver(model(x), steps) == []
    closed = outputs(stream.gap(reset=True))
    assert [(o.kind, o.start, o.end) for o in closed] == [("sequence", 0, 1)]
    stream.push(frames(3, 3))
    x, steps = stream.take_chunk()
    stream.deliver(model(x), steps)
    assert [(o.start, o.end, o.label) for o in outputs(stream.end())] == [(3, 5, "c")]


def test_open_stream_makes_features_head_and_smoother_from_the_settings() -> None:
    settings = ModelSettings(labels=LABELS, smoothing={"min_on": 0.0}, lookahead=1)
    start = StreamStart("s", "audio", RATE, {"chunk": 2, "channels": 1})
    stream = open_stream(start, settings, {}, decode_step, lambda: 0)  # type: ignore[arg-type]
    assert stream.features.shape == (2,) and isinstance(stream.head, FrameHead)
    assert stream.smoother is not None and stream.lookahead == 1
    stream.push(frames(0, 3))
    x, steps = stream.take_chunk()
    emitted = outputs(stream.deliver(model(x, lookahead=1), steps))
    emitted += outputs(stream.deliver(torch.tensor([[-5.0, -5.0, 5.0]]), []))
    emitted += outputs(stream.end())
    assert [(o.start, o.label) for o in emitted if o.kind == "frame"] == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
    ]
    segments = [(o.start, o.end, o.label) for o in emitted if o.kind == "segment"]
    assert segments == [(0, 0, "a"), (1, 1, "b"), (2, 2, "c")]


# --- the generate head through the same interface -----------------------------------------

VOCAB = ["x", "y", "<end>"]


def decode_step(inp: Tensor | int, state: int) -> tuple[Tensor, int]:
    """The first call gives the row itself; then each token is the next, ending after
    ``state`` tokens (the stream's "state" is a count here)."""
    if isinstance(inp, Tensor):
        return inp, state
    logits = torch.full((3,), -5.0)
    logits[2 if state <= 1 else (inp + 1) % 2] = 5.0
    return logits, state - 1


def drain(emits: list[Emit]) -> list[tuple[str, str | None]]:
    """What the stage would send: an iterator is drawn to its end."""
    out: list[tuple[str, str | None]] = []
    for emit in emits:
        items: Iterator[Output] = emit if isinstance(emit, Iterator) else iter([emit])
        out += [(o.kind, o.label) for o in items]
    return out


def test_generate_decodes_each_step_lazily_from_the_state() -> None:
    state = {"now": 2}
    head = GenerateHead[int](
        "s", VOCAB, decode_step, max_len=5, end_token="<end>", state=lambda: state["now"]
    )
    assert head.reads_state and head.step_by_step
    stream = ModelStream("s", Raw("audio", chunk=2, channels=1), head)
    stream.push(frames(0, 1))
    _, steps = stream.take_chunk()
    row = torch.tensor([[5.0, -5.0, -5.0]])  # "x"
    emits = stream.deliver(row, steps)
    assert len(emits) == 1 and isinstance(emits[0], Iterator)  # nothing decoded yet
    assert drain(emits) == [("token", "x"), ("token", "y")]
    assert drain(stream.gap(reset=True)) == [] and drain(stream.end()) == []


def test_generate_at_the_end_decodes_each_clip_once() -> None:
    """``decode = "end"``: a resetting gap (``clip_on_gap``) and the end each decode the
    clip before them from its last row; the caption follows the tokens."""
    head = GenerateHead[int](
        "s",
        VOCAB,
        decode_step,
        max_len=5,
        end_token="<end>",
        sequence=True,
        state=lambda: 3,
        decode="end",
        clip_on_gap=True,
    )
    assert head.reads_state and not head.step_by_step
    stream = ModelStream("s", Raw("audio", chunk=2, channels=1), head)
    stream.push(frames(0, 2))
    _, steps = stream.take_chunk()
    rows = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])  # the last row: "y"
    assert stream.deliver(rows, steps) == []
    assert drain(stream.gap(reset=True)) == [
        ("token", "y"),
        ("token", "x"),
        ("token", "y"),
        ("sequence", "y x y"),
    ]
    assert drain(stream.end()) == []  # no steps since the gap: no clip
