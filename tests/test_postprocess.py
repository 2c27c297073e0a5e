"""Post-processing: labels, hysteresis, minimum durations, segments, chunking invariance."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.frames import Output
from streamer.stages.model.postprocess import Labeler, Smoother, argmax_label

FPS = 10.0


def frames(labels: str, scores: list[float] | None = None) -> list[Output]:
    """One frame output per character (``s``/``p``), 10 fps; score = p(speech)."""
    out = []
    for i, ch in enumerate(labels):
        p = scores[i] if scores is not None else (0.9 if ch == "p" else 0.1)
        out.append(
            Output(
                stream="mic",
                kind="frame",
                start=i,
                end=i,
                pts=i / FPS,
                label={"s": "silence", "p": "speech"}[ch] if scores is None else None,
                scores={"silence": 1.0 - p, "speech": p},
                captured=50.0 + i,
            )
        )
    return out


def smoother(**options: object) -> Smoother:
    return Smoother("silence", frame_duration=1 / FPS, **options)  # type: ignore[arg-type]


def run(sm: Smoother, items: list[Output], cuts: list[int] | None = None) -> list[Output]:
    bounds = [0, *sorted(c % (len(items) + 1) for c in (cuts or [])), len(items)]
    out: list[Output] = []
    for a, b in itertools.pairwise(bounds):
        out += sm.push(items[a:b])
    return out + sm.end()


def frame_labels(out: list[Output]) -> str:
    return "".join(o.label[1] if o.label else "?" for o in out if o.kind == "frame")


def segments(out: list[Output]) -> list[tuple[Any, ...]]:
    return [(o.label, o.start, o.end, o.t0, o.t1) for o in out if o.kind == "segment"]


# --- labels -------------------------------------------------------------------------------


def test_argmax_and_thresholds() -> None:
    assert argmax_label({"a": 0.2, "b": 0.5, "c": 0.5}) == "b"  # ties: the first
    labeler = Labeler(["bg", "dog", "cat"], thresholds={"dog": 0.6, "cat": 0.3})
    assert labeler({"bg": 0.1, "dog": 0.5, "cat": 0.4}) == "cat"  # dog is not on
    assert labeler({"bg": 0.0, "dog": 0.7, "cat": 0.3}) == "dog"  # both on: highest score
    assert labeler({"bg": 0.8, "dog": 0.1, "cat": 0.1}) == "bg"  # none on: default
    assert Labeler(["bg", "dog"], {"dog": 0.9}, default="dog")({"bg": 1.0, "dog": 0.0}) == "dog"
    assert Labeler(["x", "y"])({"x": 0.3, "y": 0.7, "z": 0.9}) == "y"  # only its labels
    with pytest.raises(ValueError, match="unknown labels"):
        Labeler(["a"], {"b": 0.5})


# --- segments -----------------------------------------------------------------------------


def test_segments_t0_t1_indices_and_mean_scores() -> None:
    out = run(smoother(), frames("sspppsp"))
    assert frame_labels(out) == "iipppip"
    assert segments(out) == [
        ("silence", 0, 1, 0.0, pytest.approx(0.2)),
        ("speech", 2, 4, pytest.approx(0.2), pytest.approx(0.5)),
        ("silence", 5, 5, pytest.approx(0.5), pytest.approx(0.6)),
        ("speech", 6, 6, pytest.approx(0.6), pytest.approx(0.7)),
    ]
    speech = [o for o in out if o.kind == "segment"][1]
    assert speech.scores == pytest.approx({"silence": 0.1, "speech": 0.9})
    assert (speech.pts, speech.captured, speech.stream) == (0.4, 54.0, "mic")
    # a segment comes right before the first frame of the next run
    kinds = [(o.kind, o.start) for o in out]
    assert kinds.index(("segment", 2)) == kinds.index(("frame", 5)) - 1


def test_only_the_chosen_labels_make_segments_and_frames_can_be_left_out() -> None:
    out = run(smoother(segment_labels={"speech"}, emit_frames=False), frames("sspppssp"))
    assert all(o.kind == "segment" for o in out)
    assert segments(out) == [
        ("speech", 2, 4, pytest.approx(0.2), pytest.approx(0.5)),
        ("speech", 7, 7, pytest.approx(0.7), pytest.approx(0.8)),
    ]


def test_gap_closes_the_segment_and_starts_afresh() -> None:
    sm = smoother(min_on=0.2)
    out = sm.push(frames("pppp"))
    out += sm.gap()
    assert frame_labels(out) == "pppp"
    assert segments(out) == [("speech", 0, 3, 0.0, pytest.approx(0.4))]
    assert sm.confirmed == "silence"
    later = frames("sssssssspp")[8:]
    assert frame_labels(sm.push(later) + sm.end()) == "pp"


# --- hysteresis and minimum durations -----------------------------------------------------


def test_hysteresis_on_and_off_thresholds() -> None:
    p = [0.2, 0.6, 0.8, 0.6, 0.5, 0.4, 0.65, 0.9]
    out = run(smoother(on=0.7, off=0.5), frames("?" * len(p), p))
    assert frame_labels(out) == "iipppiip"
    plain = run(smoother(on=0.7), frames("?" * len(p), p))
    assert frame_labels(plain) == "iipiiiip"


def test_min_on_and_min_off_confirm_changes_late() -> None:
    raw = "sppspppsps" + "ss"
    out = run(smoother(min_on=0.3, min_off=0.2), frames(raw))
    assert frame_labels(out) == "iiiippppp" + "iii"
    assert segments(out) == [
        ("silence", 0, 3, 0.0, pytest.approx(0.4)),
        ("speech", 4, 8, pytest.approx(0.4), pytest.approx(0.9)),
        ("silence", 9, 11, pytest.approx(0.9), pytest.approx(1.2)),
    ]


def test_minimum_durations_delay_outputs_by_at_most_the_longest_minimum() -> None:
    sm = smoother(min_on=0.3)
    released: dict[int, int] = {}
    for i, frame in enumerate(frames("sppppss")):
        for o in sm.push([frame]):
            if o.kind == "frame":
                released[o.start] = i
    assert released == {0: 0, 1: 3, 2: 3, 3: 3, 4: 4, 5: 5, 6: 6}
    # a run still pending at the end takes the confirmed label
    assert frame_labels(run(smoother(min_on=0.3), frames("spp"))) == "iii"


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    raw=st.text(alphabet="sp", min_size=0, max_size=50),
    cuts=st.lists(st.integers(0, 50), max_size=10),
    min_on=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    min_off=st.sampled_from([0.0, 0.2, 0.3]),
    hysteresis=st.booleans(),
    noise=st.lists(st.floats(0, 1), min_size=50, max_size=50),
)
def test_any_chunking_gives_the_same_outputs(
    raw: str,
    cuts: list[int],
    min_on: float,
    min_off: float,
    hysteresis: bool,
    noise: list[float],
) -> None:
    items = frames(raw, noise[: len(raw)] if hysteresis else None)
    options: dict[str, object] = {"min_on": min_on, "min_off": min_off}
    if hysteresis:
        options.update(on=0.6, off=0.4)
    whole = run(smoother(**options), items)
    assert run(smoother(**options), items, cuts) == whole
    one_by_one = smoother(**options)
    single = [o for item in items for o in one_by_one.push([item])] + one_by_one.end()
    assert single == whole
    # every frame comes out once, in order; segments tile the frames with their labels
    out_frames = [o for o in whole if o.kind == "frame"]
    assert [o.start for o in out_frames] == list(range(len(raw)))
    tiles = [o for o in whole if o.kind == "segment"]
    assert [i for s in tiles for i in range(s.start, s.end + 1)] == list(range(len(raw)))
    for seg in tiles:
        assert {o.label for o in out_frames[seg.start : seg.end + 1]} == {seg.label}
        assert seg.t0 == pytest.approx(seg.start / FPS)
        assert seg.t1 == pytest.approx((seg.end + 1) / FPS)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"off .* must be <= on"):
        smoother(on=0.4, off=0.6)
    with pytest.raises(ValueError, match="frame_duration"):
        Smoother("silence", frame_duration=0)
    with pytest.raises(ValueError, match="needs a target"):
        Smoother("x", frame_duration=0.1, on=0.5).push(
            [Output("s", "frame", 0, 0, 0.0, None, {"x": 0.1, "y": 0.5, "z": 0.4}, 0.0)]
        )


# --- outputs that cover more than one step ------------------------------------------------


def windows(labels: str, window_s: float = 1.0, step_s: float = 0.01) -> list[Output]:
    """One window output per character (``s``/``p``) of ``window_s`` seconds, one after
    the other, made of steps of ``step_s``: ``pts`` is the window's last step's."""
    steps = round(window_s / step_s)
    out = []
    for i, ch in enumerate(labels):
        p = 0.9 if ch == "p" else 0.1
        out.append(
            Output(
                stream="mic",
                kind="window",
                start=i * steps,
                end=(i + 1) * steps - 1,
                pts=(i + 1) * window_s - step_s,
                label={"s": "silence", "p": "speech"}[ch],
                scores={"silence": 1.0 - p, "speech": p},
                captured=50.0 + i,
                t0=i * window_s,
                t1=(i + 1) * window_s,
            )
        )
    return out


def test_windows_make_segments_over_their_time_and_min_on_counts_it() -> None:
    """1 s windows: min_on = 1.5 s takes two speech windows, not one; a segment runs from
    its first window's start to its last window's end (not from the last step's pts)."""
    sm = Smoother("silence", frame_duration=0.01, min_on=1.5)
    out = run(sm, windows("spsppss"))
    assert [o.label for o in out if o.kind == "window"] == ["silence"] * 3 + ["speech"] * 2 + [
        "silence"
    ] * 2
    assert segments(out) == [
        ("silence", 0, 299, 0.0, pytest.approx(3.0)),
        ("speech", 300, 499, pytest.approx(3.0), pytest.approx(5.0)),
        ("silence", 500, 699, pytest.approx(5.0), pytest.approx(7.0)),
    ]


def test_a_sequence_output_makes_a_segment_over_the_whole_stream() -> None:
    whole = Output("mic", "sequence", 0, 599, 5.99, "speech", {"speech": 1.0}, 0.0, t0=0.0, t1=6.0)
    out = run(Smoother("silence", frame_duration=0.01, min_on=1.0), [whole])
    assert segments(out) == [("speech", 0, 599, 0.0, 6.0)]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.lists(
            st.sampled_from([0.0, 0.3, 0.5, 0.5, 0.7, 1.0, -2.0, float("nan"), float("inf")]),
            min_size=3,
            max_size=3,
        ),
        min_size=1,
        max_size=8,
    ),
    thresholds=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from([0.3, 0.5, 0.7])),
    default=st.sampled_from([None, "a", "c"]),
)
def test_labeler_rows_equal_the_labeler_on_each_row(
    values: list[list[float]], thresholds: dict[str, float], default: str | None
) -> None:
    """The vectorised labels of a block (what frame heads use) are those of the labeler
    called row by row: ties to the first label, thresholds, the default, NaN and Inf."""
    labeler = Labeler(["a", "b", "c"], thresholds, default)
    rows = [labeler(dict(zip("abc", row, strict=True))) for row in values]
    assert labeler.rows(torch.tensor(values, dtype=torch.float64)) == rows
