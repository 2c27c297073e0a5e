"""Per-label segments (``[model.smoothing] per_label = true``,
:mod:`streamer.stages.model.labelwise`): each label's events found on its own score,
overlapping where the events overlap; the same segments whichever way the outputs are
split into calls; config mistakes in one line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import load_config
from streamer.errors import InputError
from streamer.frames import Output
from streamer.stages.model.labelwise import LabelwiseSmoother
from streamer.stages.model.postprocess import Smoother

STEP = 0.01
LABELS = ("noise", "speech", "music")


def outputs(scores: list[tuple[float, float, float]]) -> list[Output]:
    """One frame output per row of (noise, speech, music) scores, 10 ms apart."""
    return [
        Output(
            stream="a",
            kind="frame",
            start=i,
            end=i,
            pts=i * STEP,
            label="noise",
            scores=dict(zip(LABELS, row, strict=True)),
            captured=100.0 + i * STEP,
            t0=i * STEP,
            t1=(i + 1) * STEP,
        )
        for i, row in enumerate(scores)
    ]


def spans(out: list[Output], label: str) -> list[tuple[int, int]]:
    return [(o.start, o.end) for o in out if o.kind == "segment" and o.label == label]


def labelwise(**options: float) -> LabelwiseSmoother:
    return LabelwiseSmoother(
        {"speech": 0.5, "music": 0.6}, frame_duration=STEP, hysteresis=0.2, **options
    )


def test_overlapping_events_each_get_their_own_segment() -> None:
    # speech on 10..39, music on 25..59: a single-label smoother could not give both
    rows = [(0.1, 0.9 if 10 <= i < 40 else 0.1, 0.9 if 25 <= i < 60 else 0.1) for i in range(80)]
    sm = labelwise()
    out = sm.push(outputs(rows)) + sm.end()
    assert spans(out, "speech") == [(10, 39)]
    assert spans(out, "music") == [(25, 59)]
    assert [o for o in out if o.kind == "frame"] == outputs(rows)  # frames pass unchanged


def test_hysteresis_and_minimum_durations_per_label() -> None:
    # speech dips to 0.35 (above 0.5 - 0.2: stays on), then a 30 ms blip (< min_on)
    speech = [0.9] * 20 + [0.35] * 10 + [0.9] * 20 + [0.1] * 30 + [0.9] * 3 + [0.1] * 20
    rows = [(0.1, p, 0.1) for p in speech]
    sm = labelwise(min_on=0.05, min_off=0.1)
    out = sm.push(outputs(rows)) + sm.end()
    assert spans(out, "speech") == [(0, 49)]
    assert spans(out, "music") == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), max_size=120),
    st.lists(st.integers(0, 200), max_size=6),
    st.floats(0, 0.05),
    st.floats(0, 0.05),
    st.floats(0, 0.03),
)
def test_splitting_the_outputs_changes_nothing_and_each_label_is_its_own_smoother(
    rows: list[tuple[float, float, float]],
    cuts: list[int],
    min_on: float,
    min_off: float,
    pad: float,
) -> None:
    options = {"min_on": min_on, "min_off": min_off, "pad": pad}
    items = outputs(rows)
    whole = labelwise(**options)
    expected = whole.push(items) + whole.end()
    split = labelwise(**options)
    got: list[Output] = []
    bounds = [0, *sorted(c % (len(items) + 1) for c in cuts), len(items)]
    for a, b in itertools.pairwise(bounds):
        got += split.push(items[a:b])
    got += split.end()
    assert got == expected
    for label, on in (("speech", 0.5), ("music", 0.6)):
        alone = Smoother(
            "",
            frame_duration=STEP,
            target=label,
            on=on,
            off=on - 0.2,
            segment_labels=[label],
            emit_frames=False,
            **options,
        )
        mine = [o for o in expected if o.kind == "segment" and o.label == label]
        assert mine == alone.push(items) + alone.end()


PIPELINE = """
[source]
uri = "x.wav"
[model]
factory = "pipelines.sound_events:build"
features = "logmel"
labels = ["noise", "speech", "music", "alarm", "knock"]
activation = "sigmoid"
[model.thresholds]
speech = 0.5
[model.smoothing]
per_label = true
"""


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("off = 0.3", "per_label"),
        ('target = "speech"', "per_label"),
        ("hysteresis = 1.5", "hysteresis"),
    ],
)
def test_per_label_mistakes_are_one_line(tmp_path: Path, extra: str, words: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE + extra + "\n")
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and words in message and str(path) in message


def test_hysteresis_without_per_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.replace("per_label = true", "hysteresis = 0.1"))
    with pytest.raises(InputError, match="per_label"):
        load_config(path)
