"""Segment padding (``[model] smoothing`` ``pad``, Silero VAD's ``speech_pad_ms``): each
segment widened by ``pad`` on both sides, within the stream, neighbours closer than
``2 * pad`` meeting in the middle; frames untouched and not delayed; streaming equals
offline. Checked against Silero's rule written out plainly (:func:`silero_padding`)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.frames import Output
from streamer.stages.model.postprocess import Smoother

FPS = 10.0
Span = tuple[float, float]


def frames(labels: str, first: int = 0) -> list[Output]:
    """One frame output per character (``s``/``p``), 10 fps, from frame ``first``, with
    the media time it covers (``t0``/``t1``, as heads fill them in)."""
    return [
        Output(
            stream="mic",
            kind="frame",
            start=first + i,
            end=first + i,
            pts=(first + i) / FPS,
            label={"s": "silence", "p": "speech"}[ch],
            scores={"silence": 0.1, "speech": 0.9}
            if ch == "p"
            else {"silence": 0.9, "speech": 0.1},
            captured=100.0 + first + i,
            t0=(first + i) / FPS,
            t1=(first + i + 1) / FPS,
        )
        for i, ch in enumerate(labels)
    ]


def smoother(**options: Any) -> Smoother:
    return Smoother("silence", frame_duration=1 / FPS, **options)


def pieces_of(raw: str, gaps: list[int]) -> list[list[Output]]:
    """The frames of ``raw`` cut at ``gaps`` (frame indices where outputs go missing)."""
    bounds = [0, *sorted({g % (len(raw) + 1) for g in gaps}), len(raw)]
    return [frames(raw[a:b], a) for a, b in itertools.pairwise(bounds)]


def run(sm: Smoother, pieces: list[list[Output]], cuts: list[int] | None = None) -> list[Output]:
    """Push each piece (in calls split at ``cuts``), then ``gap()`` (``end()`` at last)."""
    out: list[Output] = []
    for k, items in enumerate(pieces):
        bounds = [0, *sorted(c % (len(items) + 1) for c in (cuts or [])), len(items)]
        for a, b in itertools.pairwise(bounds):
            out += sm.push(items[a:b])
        out += sm.end() if k == len(pieces) - 1 else sm.gap()
    return out


def segments(out: list[Output]) -> list[Output]:
    return [o for o in out if o.kind == "segment"]


def silero_padding(spans: list[Span], pad: float, start: float, end: float) -> list[Span]:
    """Silero's loop over ``speeches`` in ``get_speech_timestamps`` (``utils_vad.py``), in
    seconds and with ``/ 2`` for its ``// 2`` of samples."""
    out = [list(span) for span in spans]
    for i, speech in enumerate(out):
        if i == 0:
            speech[0] = max(start, speech[0] - pad)
        if i != len(out) - 1:
            silence = out[i + 1][0] - speech[1]
            if silence < 2 * pad:
                speech[1] += silence / 2
                out[i + 1][0] -= silence / 2
            else:
                speech[1] = min(end, speech[1] + pad)
                out[i + 1][0] = max(start, out[i + 1][0] - pad)
        else:
            speech[1] = min(end, speech[1] + pad)
    return [(a, b) for a, b in out]


# --- examples -----------------------------------------------------------------------------


def test_speech_segments_are_padded_as_silero_pads_them() -> None:
    """Frames of 0.1 s, pad 0.15 s: the first segment stops at the stream's start, two
    segments 0.2 s apart meet in the middle, one 0.4 s from the next gets the full pad, the
    last stops at the stream's end. Frame indices stay the unpadded runs'."""
    raw = "spp" + "ss" + "ppp" + "ssss" + "pp"
    out = run(smoother(segment_labels={"speech"}, pad=0.15), [frames(raw)])
    spans = [(o.start, o.end, o.t0, o.t1) for o in segments(out)]
    assert spans == [
        (1, 2, pytest.approx(0.0), pytest.approx(0.4)),
        (5, 7, pytest.approx(0.4), pytest.approx(0.95)),
        (12, 13, pytest.approx(1.05), pytest.approx(1.4)),
    ]
    # the frames are those of the unpadded run, in the same calls
    plain = run(smoother(segment_labels={"speech"}), [frames(raw)])
    assert [o for o in out if o.kind == "frame"] == [o for o in plain if o.kind == "frame"]


def test_a_segment_waits_for_twice_the_pad_or_the_next_segment() -> None:
    """Pushed frame by frame: a segment comes out with the first frame starting ``2 * pad``
    after its end (before that frame), or with the next segment's first frame, never later;
    frames come out as they would unpadded."""
    raw = "sppssssspps" + "pps"
    sm, plain = smoother(segment_labels={"speech"}, pad=0.2), smoother(segment_labels={"speech"})
    seen: list[tuple[int, str, int]] = []  # (push, kind, start)
    for i, frame in enumerate(frames(raw)):
        out, reference = sm.push([frame]), plain.push([frame])
        assert frames_of(out) == frames_of(reference)
        seen += [(i, o.kind, o.start) for o in out]
    seen += [(len(raw), o.kind, o.start) for o in sm.end()]
    # 1-2 ends at 0.3 s: out when frame 7 (0.7 s = 0.3 + 2 * 0.2) is decided, before it
    assert seen[seen.index((7, "frame", 7)) - 1] == (7, "segment", 1)
    # 8-9 ends at 1.0 s; the next speech starts at 1.1 s: out with its first frame
    assert seen[seen.index((11, "frame", 11)) - 1] == (11, "segment", 8)
    assert seen[-1] == (len(raw), "segment", 11)
    padded = [
        (o.t0, o.t1)
        for o in segments(run(smoother(segment_labels={"speech"}, pad=0.2), [frames(raw)]))
    ]
    assert padded == [
        pytest.approx((0.0, 0.5)),
        pytest.approx((0.6, 1.05)),
        pytest.approx((1.05, 1.4)),
    ]


def test_a_segment_waits_for_decided_outputs_not_pushed_ones() -> None:
    """min_on = 0.2 s: speech at 0.3 s is only confirmed when the frame at 0.4 s, 2 * pad
    after the first segment's end, is pushed; the first segment must still end in the
    middle of the 0.1 s silence, not take the whole pad."""
    out = run(smoother(segment_labels={"speech"}, min_on=0.2, pad=0.1), [frames("ppspp")])
    assert [(o.t0, o.t1) for o in segments(out)] == [
        pytest.approx((0.0, 0.25)),
        pytest.approx((0.25, 0.5)),
    ]


def test_overlapping_segments_are_not_moved() -> None:
    """Windows that overlap make segments that overlap: padding moves none of their edges
    (and the stream's ends stay where they are)."""

    def window(i: int, label: str) -> Output:
        return Output(
            "mic", "window", i * 5, i * 5 + 9, i * 0.5 + 0.9, label, {label: 1.0}, 0.0,
            t0=i * 0.5, t1=i * 0.5 + 1.0,
        )  # fmt: skip

    items = [window(i, label) for i, label in enumerate(["silence", "speech", "speech"])]
    out = run(Smoother("silence", frame_duration=0.1, pad=0.3), [items])
    assert [(o.label, o.t0, o.t1) for o in segments(out)] == [
        ("silence", 0.0, 1.0),
        ("speech", 0.5, 2.0),
    ]


def test_pad_must_be_a_non_negative_number() -> None:
    with pytest.raises(ValueError, match="pad must be >= 0"):
        smoother(pad=-0.01)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        smoother(pad=float("nan"))


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    raw=st.text(alphabet="sp", min_size=0, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    gaps=st.lists(st.integers(0, 40), max_size=2),
    pad=st.sampled_from([0.0, 0.05, 0.1, 0.15, 0.3, 1.0]),
    min_on=st.sampled_from([0.0, 0.2]),
    min_off=st.sampled_from([0.0, 0.1, 0.3]),
    only_speech=st.booleans(),
)
def test_padding_streams_as_offline_and_follows_silero(
    raw: str,
    cuts: list[int],
    gaps: list[int],
    pad: float,
    min_on: float,
    min_off: float,
    only_speech: bool,
) -> None:
    """Any split of the pushes gives what one push gives (and one output at a time too);
    segments are the unpadded ones with Silero's padding applied per stretch between gaps:
    inside the stretch, never overlapping; frames are unchanged."""
    options: dict[str, Any] = {"min_on": min_on, "min_off": min_off}
    if only_speech:
        options["segment_labels"] = {"speech"}
    pieces = pieces_of(raw, gaps)
    whole = run(smoother(pad=pad, **options), pieces)
    assert run(smoother(pad=pad, **options), pieces, cuts) == whole
    assert run(smoother(pad=pad, **options), pieces, list(range(41))) == whole

    plain = run(smoother(**options), pieces)
    padded, unpadded = segments(whole), segments(plain)
    # only t0/t1 change; frames are the same and come out in the same calls
    assert [unpadded_span(o) for o in padded] == [unpadded_span(o) for o in unpadded]
    sm, reference = smoother(pad=pad, **options), smoother(**options)
    for items in pieces:
        for item in items:
            assert frames_of(sm.push([item])) == frames_of(reference.push([item]))
        assert frames_of(sm.gap()) == frames_of(reference.gap())
    expected: list[Span] = []
    for items in pieces:
        first, last = items[0].start if items else 0, items[-1].end if items else -1
        mine = [o for o in unpadded if first <= o.start <= last]
        spans = [(o.t0, o.t1) for o in mine if o.t0 is not None and o.t1 is not None]
        stream = (first / FPS, (last + 1) / FPS)
        expected += silero_padding(spans, pad, *stream)
        got = [(o.t0, o.t1) for o in padded if first <= o.start <= last]
        for (t0, t1), (u0, u1) in zip(got, spans, strict=True):
            assert t0 is not None and t1 is not None
            assert stream[0] - 1e-9 <= t0 <= u0 and u1 <= t1 <= stream[1] + 1e-9
            assert u0 - t0 <= pad + 1e-9 and t1 - u1 <= pad + 1e-9
        for (_, a1), (b0, _) in itertools.pairwise(got):
            assert a1 is not None and b0 is not None and a1 <= b0  # never overlapping
    assert [(o.t0, o.t1) for o in padded] == [pytest.approx(span) for span in expected]


def unpadded_span(segment: Output) -> Output:
    return dataclasses.replace(segment, t0=None, t1=None)


def frames_of(out: list[Output]) -> list[Output]:
    return [o for o in out if o.kind != "segment"]
