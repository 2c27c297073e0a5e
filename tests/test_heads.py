"""Heads: scores, frame/window/sequence outputs, chunking invariance, generation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from streamer.errors import InputError
from streamer.frames import Output
from streamer.stages.model.features import Step
from streamer.stages.model.heads import (
    FrameHead,
    GenerateHead,
    Head,
    Scorer,
    SequenceHead,
    WindowHead,
    make_head,
)
from streamer.stages.model.postprocess import Labeler

LABELS = ["a", "b", "c"]


def steps(n: int, start: int = 0, fps: float = 10.0) -> list[Step]:
    return [Step(i, i / fps, 1000.0 + i) for i in range(start, start + n)]


def logits(t: int, k: int = 3, seed: int = 0) -> Tensor:
    return torch.randn(t, k, generator=torch.Generator().manual_seed(seed))


def feed(head: Head, y: Tensor, st_: list[Step], cuts: list[int]) -> list[Output]:
    """Push ``y`` in the chunks given by ``cuts``, then end the stream."""
    bounds = [0, *sorted(c % (len(st_) + 1) for c in cuts), len(st_)]
    out: list[Output] = []
    for a, b in itertools.pairwise(bounds):
        out += head.push(y[a:b], st_[a:b])
    return out + head.end()


# --- scores -------------------------------------------------------------------------------


def test_scorer_softmax_sigmoid_none_and_binary() -> None:
    y = torch.tensor([[1.0, 2.0, 3.0]])
    soft = Scorer(LABELS)(y)
    assert soft.dtype == torch.float64
    assert soft[0].tolist() == pytest.approx(torch.softmax(y.double(), 1)[0].tolist())
    assert Scorer(LABELS, "sigmoid")(y)[0].tolist() == pytest.approx(
        [1 / (1 + math.exp(-v)) for v in (1, 2, 3)]
    )
    assert Scorer(LABELS, "none")(y)[0].tolist() == [1.0, 2.0, 3.0]
    binary = Scorer(["silence", "speech"])(torch.tensor([[0.0], [2.0]]))
    p = 1 / (1 + math.exp(-2))
    assert binary.flatten().tolist() == pytest.approx([0.5, 0.5, 1 - p, p])
    prob = Scorer(["silence", "speech"], "none")(torch.tensor([[0.25]]))
    assert prob.tolist() == [[0.75, 0.25]]
    assert Scorer(["event"])(torch.tensor([[0.0]])).tolist() == [[0.5]]


def test_scorer_rejects_shapes_that_do_not_fit_the_labels() -> None:
    with pytest.raises(ValueError, match=r"K = 2 .* 3 labels"):
        Scorer(LABELS)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="softmax over one output"):
        Scorer(["x", "y"], "softmax")(torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\[T, K\]"):
        Scorer(LABELS)(torch.zeros(1, 4, 3))


# --- frame head ---------------------------------------------------------------------------


def test_frame_head_one_output_per_step() -> None:
    head = FrameHead("cam", LABELS)
    y = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    out = head.push(y, [Step(3, 0.3, 7.0), Step(4, 0.4, 8.0)])
    assert [(o.kind, o.start, o.end, o.pts, o.captured, o.label) for o in out] == [
        ("frame", 3, 3, 0.3, 7.0, "a"),
        ("frame", 4, 4, 0.4, 8.0, "c"),
    ]
    assert all(type(v) is float for o in out for v in o.scores.values())
    assert sum(out[0].scores.values()) == pytest.approx(1.0)
    assert out[0].stream == "cam" and head.end() == [] and head.gap() == []


def test_frame_head_with_thresholds_falls_back_to_the_default_label() -> None:
    labeler = Labeler(["silence", "speech"], thresholds={"speech": 0.8})
    head = FrameHead("mic", ["silence", "speech"], activation="none", labeler=labeler)
    out = head.push(torch.tensor([[0.7], [0.9]]), steps(2))
    assert [o.label for o in out] == ["silence", "speech"]


def test_frame_head_checks_that_y_and_steps_align() -> None:
    with pytest.raises(ValueError, match="len\\(steps\\) = 2"):
        FrameHead("s", LABELS).push(logits(3), steps(2))


# --- window head --------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(t=st.integers(0, 40), window=st.integers(1, 8), hop=st.integers(1, 10))
def test_window_count_and_bounds(t: int, window: int, hop: int) -> None:
    head = WindowHead("s", LABELS, window, hop)
    out = head.push(logits(t), steps(t)) if t else []
    expected = 0 if t < window else (t - window) // hop + 1
    assert len(out) == expected
    assert [o.end for o in out] == [window - 1 + k * hop for k in range(expected)]
    assert all(o.start == o.end - window + 1 and o.kind == "window" for o in out)
    assert all(o.pts == o.end / 10.0 and o.captured == 1000.0 + o.end for o in out)
    assert head.end() == []  # partial windows are off by default


def test_window_reduce_mean_max_last() -> None:
    y = torch.tensor([[0.1, 0.9], [0.3, 0.2], [0.8, 0.4], [0.0, 1.0]], dtype=torch.float64)

    def run(reduce: str) -> list[dict[str, float]]:
        head = WindowHead("s", ["x", "y"], 3, 1, reduce=reduce, activation="none")  # type: ignore[arg-type]
        return [o.scores for o in head.push(y, steps(4))]

    assert run("mean") == [
        pytest.approx({"x": 0.4, "y": 0.5}),
        pytest.approx({"x": 1.1 / 3, "y": 1.6 / 3}),
    ]
    assert run("max") == [{"x": 0.8, "y": 0.9}, {"x": 0.8, "y": 1.0}]
    assert run("last") == [{"x": 0.8, "y": 0.4}, {"x": 0.0, "y": 1.0}]
    head = WindowHead("s", ["x", "y"], 2, reduce=lambda p: p.min(dim=0).values, activation="none")
    assert [o.scores for o in head.push(y, steps(4))] == [
        {"x": 0.1, "y": 0.2},
        {"x": 0.0, "y": 0.4},
    ]


def test_window_partial_at_end_and_reset_on_gap() -> None:
    head = WindowHead("s", LABELS, 4, 2, partial=True)
    out = head.push(logits(7), steps(7))
    assert [(o.start, o.end) for o in out] == [(0, 3), (2, 5)]
    assert [(o.start, o.end) for o in head.end()] == [(4, 6)]
    # a gap closes the windows; counting starts again after it
    out = head.push(logits(3), steps(3))
    assert out == []
    assert [(o.start, o.end) for o in head.gap()] == [(0, 2)]
    out = head.push(logits(4), steps(4, start=10))
    assert [(o.start, o.end) for o in out] == [(10, 13)]
    # a hop longer than the window: steps between windows are in none, not in a partial
    head = WindowHead("s", LABELS, 2, 5, partial=True)
    assert [(o.start, o.end) for o in head.push(logits(9), steps(9))] == [(0, 1), (5, 6)]
    assert head.end() == []


# --- sequence head ------------------------------------------------------------------------


def test_sequence_head_outputs_once_at_the_end() -> None:
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    last = SequenceHead("s", ["x", "y"], activation="none")
    assert last.push(y, steps(3)) == []
    (out,) = last.end()
    assert (out.kind, out.start, out.end, out.pts, out.label) == ("sequence", 0, 2, 0.2, "y")
    assert out.scores == {"x": 0.0, "y": 3.0}
    mean = SequenceHead("s", ["x", "y"], reduce="mean", activation="none")
    mean.push(y, steps(3))
    assert mean.end()[0].scores == pytest.approx({"x": 1 / 3, "y": 4 / 3})
    assert mean.end() == []  # nothing more, and nothing for a stream without steps


def test_sequence_head_segments_on_gap_when_asked() -> None:
    kept = SequenceHead("s", LABELS)
    kept.push(logits(3), steps(3))
    assert kept.gap() == []
    kept.push(logits(2), steps(2, start=5))
    assert [(o.start, o.end) for o in kept.end()] == [(0, 6)]
    split = SequenceHead("s", LABELS, segment_on_gap=True)
    split.push(logits(3), steps(3))
    assert [(o.start, o.end) for o in split.gap()] == [(0, 2)]
    split.push(logits(2), steps(2, start=5))
    assert [(o.start, o.end) for o in split.end()] == [(5, 6)]


# --- chunking invariance ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    seed=st.integers(0, 100),
    which=st.sampled_from(["frame", "window", "window-max", "sequence", "sequence-mean"]),
)
def test_heads_give_the_same_outputs_for_any_chunking(
    t: int, cuts: list[int], seed: int, which: str
) -> None:
    def make() -> Head:
        if which == "frame":
            return FrameHead("s", LABELS)
        if which.startswith("window"):
            return WindowHead(
                "s", LABELS, 5, 3, reduce="max" if which.endswith("max") else "mean", partial=True
            )
        return SequenceHead("s", LABELS, reduce="mean" if which.endswith("mean") else "last")

    y, st_ = logits(t, seed=seed), steps(t)
    assert feed(make(), y, st_, cuts) == feed(make(), y, st_, [])


# --- generate head ------------------------------------------------------------------------

VOCAB = ["<end>", "a", "cat", "sat"]


def scripted(tokens: list[int], calls: list[object]) -> GenerateHead[int]:
    """A decoder that says ``tokens`` in order (state = position), logging its inputs."""

    def decode_step(inp: Tensor | int, state: int) -> tuple[Tensor, int]:
        calls.append(inp)
        out = torch.zeros(1, 1, len(VOCAB))
        out[..., tokens[min(state, len(tokens) - 1)]] = 4.0
        return out, state + 1

    return GenerateHead("cam", VOCAB, decode_step, max_len=10, end_token="<end>", top_k=2)


def test_generate_streams_tokens_until_the_end_token() -> None:
    calls: list[object] = []
    head = scripted([1, 2, 3, 0, 1], calls)
    x = torch.ones(4)
    gen = head.generate(x, 0, steps(3, start=5))
    first = next(gen)
    assert len(calls) == 1 and calls[0] is x  # one decoder call per token, lazily
    assert (first.kind, first.label, first.start, first.end, first.pts) == ("token", "a", 5, 7, 0.7)
    assert first.extra == {"position": 0}
    p = math.exp(4) / (math.exp(4) + 3)
    assert first.scores == pytest.approx({"a": p, "<end>": 1 / (math.exp(4) + 3)})
    rest = []
    with pytest.raises(StopIteration) as stop:
        while True:
            rest.append(next(gen))
    assert [o.label for o in rest] == ["cat", "sat"]
    assert calls[1:] == [1, 2, 3]  # each next input is the previous token id
    assert stop.value.value == 4  # the decoder's final state


def test_generate_stops_at_max_len() -> None:
    calls: list[object] = []
    head = scripted([2], calls)
    head.max_len = 3
    out = list(head.generate(torch.zeros(1), 0, steps(1)))
    assert [o.label for o in out] == ["cat"] * 3 and len(calls) == 3
    assert [o.extra["position"] for o in out] == [0, 1, 2]


def test_generate_checks_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        GenerateHead("s", VOCAB, lambda i, s: (torch.zeros(4), s), max_len=2, end_token="</s>")
    head = GenerateHead[None]("s", VOCAB, lambda i, s: (torch.zeros(5), s), max_len=2)
    with pytest.raises(ValueError, match="vocabulary of 4"):
        next(head.generate(0, None, steps(1)))


# --- factory ------------------------------------------------------------------------------


def test_make_head() -> None:
    assert isinstance(make_head("frame", stream="s", labels=LABELS), FrameHead)
    window = make_head("window", stream="s", labels=LABELS, window=8, hop=4, reduce="max")
    assert isinstance(window, WindowHead) and window.schedule.hop == 4
    assert isinstance(make_head("sequence", stream="s", labels=LABELS), SequenceHead)
    gen = make_head(
        "generate", stream="s", labels=VOCAB, decode_step=lambda i, s: (i, s), max_len=3
    )
    assert isinstance(gen, GenerateHead)
    with pytest.raises(InputError, match=r"\[model\] head: unknown head 'ctc'"):
        make_head("ctc", stream="s", labels=LABELS)
    with pytest.raises(InputError, match=r"\[model\] head: 'window' needs"):
        make_head("window", stream="s", labels=LABELS)
    with pytest.raises(InputError, match=r"\[model\] head: 'frame'.*wndow"):
        make_head("frame", stream="s", labels=LABELS, wndow=3)
    with pytest.raises(InputError, match=r"\[model\] head: window reduce"):
        make_head("window", stream="s", labels=LABELS, window=3, reduce="median")


# --- the media time outputs cover ---------------------------------------------------------


def timed_steps(n: int, step_s: float = 0.01, last_s: float | None = None) -> list[Step]:
    """Steps of ``step_s`` seconds; the last lasts ``last_s`` (a stream's end) if given."""
    out = [Step(i, i * step_s, 1000.0 + i, step_s) for i in range(n)]
    if last_s is not None:
        out[-1] = Step(n - 1, (n - 1) * step_s, 1000.0 + n - 1, last_s)
    return out


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 60), window=st.integers(1, 8), hop=st.integers(1, 10))
def test_window_outputs_span_their_steps_media_time(t: int, window: int, hop: int) -> None:
    st_ = timed_steps(t)
    out = WindowHead("s", LABELS, window, hop, partial=True).push(logits(t), st_)
    for o in out:
        assert o.t0 == st_[o.start].pts  # the first step of the window, not the last
        assert o.t1 == pytest.approx(st_[o.end].pts + 0.01)
        assert o.pts == st_[o.end].pts


def test_frame_sequence_and_token_outputs_span_their_steps() -> None:
    st_ = timed_steps(5, last_s=0.025)
    frames = FrameHead("s", LABELS).push(logits(5), st_)
    assert [(o.t0, o.t1) for o in frames[:2]] == [(0.0, 0.01), (0.01, 0.02)]
    assert frames[-1].t1 == pytest.approx(0.04 + 0.025)
    sequence = SequenceHead("s", LABELS)
    sequence.push(logits(5), st_)
    (whole,) = sequence.end()
    assert (whole.t0, whole.t1, whole.pts) == (0.0, pytest.approx(0.065), 0.04)
    token = next(scripted([1], []).generate(torch.zeros(1), 0, st_[1:3]))
    assert (token.t0, token.t1) == (0.01, pytest.approx(0.03))
    # a step of unknown duration: the output's end is unknown too (smoothing falls back)
    (o,) = FrameHead("s", LABELS).push(logits(1), [Step(0, 0.5, 0.0)])
    assert (o.t0, o.t1) == (0.5, None)
    assert "t0" not in o.to_json() and "t1" not in o.to_json()  # written for segments only
