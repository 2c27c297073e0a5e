"""``streamer plot``: a JSONL output file drawn as a timeline (``streamer/plot.py``).

The figure is checked as an object, not as pixels: one panel per stream (and one for the
waveform with ``--source``), score lines spanning the outputs' times, one shaded span per
segment at its t0..t1, label-change ticks where the frame labels change, and at most a
few thousand points per line for an hour of 32 ms outputs.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, require
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

require(importlib.util.find_spec("matplotlib") is not None, "matplotlib")

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from streamer.cli import main  # noqa: E402
from streamer.plot import MAX_BINS, plot_timeline  # noqa: E402
from streamer.timeline import envelope  # noqa: E402

PIPELINE = REPO / "pipelines" / "audio_tagging.toml"
SPEECH = REPO / "recordings" / "speech_en"

Record = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    """The shipped Silero pipeline run in-process on the bundled speech recording."""
    require(importlib.util.find_spec("silero_vad") is not None, "the silero-vad package")
    out = tmp_path_factory.mktemp("plot") / "speech.jsonl"
    argv = ["run", str(PIPELINE), "--source", str(SPEECH), "--out", str(out), "-q"]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(r["kind"] == "segment" for r in records)
    return out, records


def write_jsonl(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def frame(stream: str, i: int, p: float, step: float = 0.032) -> Record:
    return {
        "kind": "frame", "stream": stream, "start": i, "end": i, "pts": i * step,
        "label": "speech" if p >= 0.5 else "silence",
        "scores": {"silence": 1.0 - p, "speech": p}, "latency_ms": 1.0,
    }  # fmt: skip


def write_hour(path: Path, frames: int = 112_500, step: float = 0.032) -> dict[str, Any]:
    """An hour of 32 ms frame outputs (a noisy speech probability switching every few
    seconds) and the segments of their labels, written as JSONL; returns what was written."""
    rng = np.random.default_rng(0)
    t = np.arange(frames) * step
    on = (np.sin(t / 37.0) + np.sin(t / 5.3)) > 0.6
    p = np.clip(np.where(on, 0.9, 0.1) + rng.normal(0, 0.05, frames), 0.0, 1.0)
    labels = np.where(p >= 0.5, "speech", "silence")
    starts = [0, *(np.flatnonzero(labels[1:] != labels[:-1]) + 1).tolist()]
    segments = [
        (a * step, b * step, str(labels[a]))
        for a, b in zip(starts, [*starts[1:], frames], strict=True)
    ]
    head = '{"kind": "frame", "stream": "hour", "start": %d, "end": %d, "pts": %r, '
    body = '"label": "%s", "scores": {"silence": %r, "speech": %r}, "latency_ms": 1.0}\n'
    with path.open("w") as out:
        for i in range(frames):
            x = float(p[i])
            out.write(head % (i, i, float(t[i])) + body % (labels[i], 1.0 - x, x))
        for t0, t1, label in segments:
            record = {
                "kind": "segment",
                "stream": "hour",
                "start": 0,
                "end": 0,
                "pts": t1,
                "label": label,
                "scores": {},
                "latency_ms": 1.0,
                "t0": t0,
                "t1": t1,
            }
            out.write(json.dumps(record) + "\n")  # fmt: skip
    changes = [float(t[i]) for i in starts[1:]]
    return {"pts": t, "speech": p, "silence": 1.0 - p, "segments": segments, "changes": changes}


def stream_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if any(str(x.get_gid()).startswith("score:") for x in ax.lines)]


def score_lines(ax: Axes) -> dict[str, Line2D]:
    return {str(line.get_gid()).removeprefix("score:"): line for line in ax.lines}


def spans(ax: Axes) -> list[tuple[float, float, str]]:
    """The shaded segment spans (axvspan rectangles): (t0, t1, label)."""
    found = []
    for patch in ax.patches:
        gid = str(patch.get_gid())
        if gid.startswith("segment:"):
            x, width = patch.get_x(), patch.get_width()  # type: ignore[attr-defined]
            found.append((x, x + width, gid.removeprefix("segment:")))
    return sorted(found)


def assert_spans(drawn: list[tuple[float, float, str]], segments: list[Any]) -> None:
    assert [s[2] for s in drawn] == [s[2] for s in segments]
    np.testing.assert_allclose([s[:2] for s in drawn], [s[:2] for s in segments], atol=1e-9)


def change_marks(ax: Axes) -> list[float]:
    marks = [c for c in ax.collections if c.get_gid() == "label-changes"]
    if not marks:
        return []
    assert isinstance(marks[0], LineCollection)
    return sorted(float(seg[0][0]) for seg in marks[0].get_segments())


def label_changes(records: list[Record]) -> list[float]:
    frames = sorted((r for r in records if r["kind"] == "frame"), key=lambda r: r["pts"])
    return [b["pts"] for a, b in itertools.pairwise(frames) if a["label"] != b["label"]]


# --- the real pipeline's output ---------------------------------------------------------


def test_speech_timeline(speech_run: tuple[Path, list[Record]], tmp_path: Path) -> None:
    path, records = speech_run
    fig = plot_timeline(path, source=str(SPEECH))
    assert len(fig.axes) == 2  # the stream's panel, then the waveform
    (ax,) = stream_axes(fig)
    assert ax.get_title(loc="left").startswith("speech_en")
    frames = [r for r in records if r["kind"] == "frame"]
    last_pts = frames[-1]["pts"]
    assert last_pts > 9.9
    lines = score_lines(ax)
    assert set(lines) == {"silence", "speech"}
    for name, line in lines.items():
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert x[0] == 0.0 and x[-1] == last_pts
        np.testing.assert_array_equal(y, [r["scores"][name] for r in frames])  # 313 < cap
    segments = sorted((r["t0"], r["t1"], r["label"]) for r in records if r["kind"] == "segment")
    assert len(segments) >= 4
    assert_spans(spans(ax), segments)
    changes = label_changes(records)
    assert changes and change_marks(ax) == pytest.approx(changes)
    wave = fig.axes[1]
    (fill,) = [c for c in wave.collections if c.get_gid() == "waveform"]
    xs = fill.get_paths()[0].vertices[:, 0]
    assert xs.min() == 0.0 and xs.max() == pytest.approx(10.0, abs=0.05)
    assert ax.get_xlim()[0] <= 0.0 and ax.get_xlim()[1] >= last_pts

    out = tmp_path / "timeline.png"
    assert main(["plot", str(path), "-o", str(out), "--source", str(SPEECH), "--dpi", "50"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_streams_subset_and_order(tmp_path: Path) -> None:
    records = [frame(s, i, (i % 7) / 7) for i in range(40) for s in ("a", "b", "c")]
    path = write_jsonl(tmp_path / "abc.jsonl", records)
    titles = [ax.get_title(loc="left").split()[0] for ax in stream_axes(plot_timeline(path))]
    assert titles == ["a", "b", "c"]
    fig = plot_timeline(path, streams=["c", "a"])
    assert len(fig.axes) == 2
    assert [ax.get_title(loc="left").split()[0] for ax in fig.axes] == ["c", "a"]
    out = tmp_path / "ca.png"
    argv = ["plot", str(path), "-o", str(out), "--streams", "c,a", "--width", "5", "--dpi", "40"]
    assert main(argv) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_one_hour_is_decimated(tmp_path: Path) -> None:
    hour = write_hour(tmp_path / "hour.jsonl")
    fig = plot_timeline(tmp_path / "hour.jsonl")
    (ax,) = fig.axes
    assert len(hour["pts"]) == 112_500
    lines = score_lines(ax)
    assert set(lines) == {"silence", "speech"}
    for name, line in lines.items():
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert len(x) <= 2 * MAX_BINS + 2  # a few thousand points, not 112,500
        assert x[0] == 0.0 and x[-1] == hour["pts"][-1]
        assert y.max() == hour[name].max() and y.min() == hour[name].min()  # peaks are kept
    assert len(hour["segments"]) < MAX_BINS
    assert_spans(spans(ax), hour["segments"])
    assert 0 < len(hour["changes"]) <= MAX_BINS
    np.testing.assert_allclose(change_marks(ax), hour["changes"])


@settings(max_examples=60, deadline=None)
@given(
    y=hnp.arrays(np.float64, st.integers(1, 400), elements=st.floats(-5, 5)),
    bins=st.integers(1, 60),
)
def test_envelope_keeps_each_bins_extremes(y: np.ndarray, bins: int) -> None:
    x = np.arange(len(y), dtype=np.float64) * 0.032
    dx, dy = envelope(x, y, bins)
    assert len(dx) <= max(2 * bins + 2, len(y))
    assert np.all(np.diff(dx) > 0)  # original points, in time order
    np.testing.assert_array_equal(dy, y[np.searchsorted(x, dx)])
    assert dx[0] == x[0] and dx[-1] == x[-1]  # the line still spans the whole range
    if len(y) > 2 * bins:  # every bin's min and max are drawn
        group = np.minimum(((x - x[0]) / (x[-1] - x[0]) * bins).astype(int), bins - 1)
        drawn = np.minimum(((dx - x[0]) / (x[-1] - x[0]) * bins).astype(int), bins - 1)
        for g in np.unique(group):
            assert dy[drawn == g].max() == y[group == g].max()
            assert dy[drawn == g].min() == y[group == g].min()


# --- bad input ----------------------------------------------------------------------------


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    good = write_jsonl(tmp / "good.jsonl", [frame("s", i, 0.5) for i in range(5)])
    no_scores = {k: v for k, v in frame("s", 1, 0.5).items() if k != "scores"}
    (tmp / "notjson.jsonl").write_text(json.dumps(frame("s", 0, 0.5)) + "\n{oops\n")
    write_jsonl(tmp / "noscores.jsonl", [frame("s", 0, 0.5), no_scores])
    write_jsonl(tmp / "schema.jsonl", [{"format": "streamer-recording", "streams": []}])
    (tmp / "empty.jsonl").write_text("\n")
    (tmp / "noise.wav").write_text("not audio")
    out = str(tmp / "t.png")
    return {
        "missing file": (["plot", str(tmp / "none.jsonl"), "-o", out], "none.jsonl: cannot read"),
        "not JSON": (["plot", str(tmp / "notjson.jsonl"), "-o", out], "line 2: not valid JSON"),
        "no scores": (
            ["plot", str(tmp / "noscores.jsonl"), "-o", out], "line 2: missing key 'scores'"
        ),
        "other schema": (["plot", str(tmp / "schema.jsonl"), "-o", out], "line 1: missing key"),
        "empty": (["plot", str(tmp / "empty.jsonl"), "-o", out], "nothing to plot"),
        "out folder": (
            ["plot", str(good), "-o", str(tmp / "nowhere" / "t.png")], "does not exist"
        ),
        "out format": (["plot", str(good), "-o", str(tmp / "t.xyz")], "image format"),
        "source missing": (
            ["plot", str(good), "-o", out, "--source", str(tmp / "none.wav")], "--source"
        ),
        "source unreadable": (
            ["plot", str(good), "-o", out, "--source", str(tmp / "noise.wav")], "cannot read audio"
        ),
        "source not audio": (
            ["plot", str(good), "-o", out, "--source", str(REPO / "recordings" / "shapes")],
            "no audio stream",
        ),
        "unknown stream": (["plot", str(good), "-o", out, "--streams", "x"], "no stream 'x'"),
    }  # fmt: skip


BAD_CASES = [
    "missing file", "not JSON", "no scores", "other schema", "empty", "out folder",
    "out format", "source missing", "source unreadable", "source not audio", "unknown stream",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _bad_cases(tmp_path)
    assert sorted(cases) == sorted(BAD_CASES)
    argv, expected = cases[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streamer: error: ")
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "t.png").exists()


def test_matplotlib_is_imported_only_by_plot() -> None:
    code = "import sys, streamer, streamer.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
