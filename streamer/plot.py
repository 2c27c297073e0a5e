"""``streamer plot``: a JSONL output file as a timeline figure (matplotlib, no display).

Layout, top to bottom, sharing the time axis: one panel per stream (its score lines, one
per label; its segments shaded per label; thin ticks at the top where the label of its
frame/window outputs changes), then, with ``source``, the audio's waveform envelope.
Lines, waveform, ticks and shading are decimated to the figure's pixel width, so an hour
of 32 ms outputs draws a few thousand points per line, not a smear of 100,000.

matplotlib is imported here only; the CLI imports this module only for ``streamer plot``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MultipleLocator

from streamer.errors import InputError
from streamer.timeline import StreamTimeline, Waveform, envelope, read_outputs, read_waveform

#: Most min/max bins per line (each draws at most two points).
MAX_BINS = 1500
#: Most score lines per panel (the labels with the highest peaks are kept).
MAX_LINES = 10
#: Segment shading: the alpha of a span.
SPAN_ALPHA = 0.2
#: The label-change ticks occupy this top part of a panel (axes fraction).
TICKS = (0.88, 1.0)


def plot_timeline(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    streams: Sequence[str] | None = None,
    width: float = 12.0,
    height: float | None = None,
    dpi: float = 100.0,
) -> Figure:
    """The timeline figure of the JSONL output file ``path`` (see the module docstring).

    ``streams`` picks and orders the panels (all streams by default); ``source``, an audio
    file or recording folder, adds its waveform underneath; ``width``/``height`` in inches
    (height by default from the number of panels). ``InputError`` for bad input."""
    if not (width > 0 and dpi > 0 and (height is None or height > 0)):
        raise InputError("plot: --width, --height and --dpi must be positive")
    timelines = read_outputs(path)
    if streams:
        unknown = [s for s in streams if s not in timelines]
        if unknown:
            raise InputError(
                f"--streams: no stream {unknown[0]!r} in {path} (it has: {', '.join(timelines)})"
            )
        timelines = {s: timelines[s] for s in dict.fromkeys(streams)}
    bins = max(50, min(MAX_BINS, int(width * dpi)))
    wave = read_waveform(source, bins, list(timelines)) if source is not None else None
    colors = _colors(timelines.values())
    panels = len(timelines) + (wave is not None)
    if height is None:
        height = 0.7 + 2.3 * len(timelines) + (1.4 if wave is not None else 0.0)
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    ratios = [3.0] * len(timelines) + ([1.5] if wave is not None else [])
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False, height_ratios=ratios)[:, 0]
    for ax, timeline in zip(axes, timelines.values(), strict=False):
        _stream_panel(ax, timeline, colors, bins)
    if wave is not None:
        _waveform_panel(axes[-1], wave)
    end = max([t.end for t in timelines.values()] + ([float(wave.t[-1])] if wave else []))
    start = min([0.0] + [float(t.pts[0]) for t in timelines.values() if len(t.pts)])
    axes[-1].set_xlim(start, end if end > start else start + 1.0)
    if end > 120:  # minutes and hours: ticks at round clock steps
        axes[-1].xaxis.set_major_locator(MultipleLocator(_clock_step(end - start)))
    axes[-1].xaxis.set_major_formatter(FuncFormatter(_clock if end > 120 else _seconds))
    axes[-1].set_xlabel("time (h:mm:ss)" if end > 120 else "time (s)")
    return fig


def save_timeline(fig: Figure, out: str | os.PathLike[str]) -> None:
    """Write the figure (format from the file name's suffix) at the figure's dpi."""
    try:
        fig.savefig(out, dpi=fig.dpi)
    except OSError as exc:
        raise InputError(f"-o: {out}: cannot write ({exc.strerror or exc})") from None


def check_out_suffix(out: Path) -> None:
    """Refuse an output name whose suffix matplotlib cannot write."""
    supported = Figure().canvas.get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in supported:
        raise InputError(
            f"-o: {out}: cannot tell the image format from {out.suffix or 'no suffix'!r} "
            f"(use .png, .svg or .pdf)"
        )


def _stream_panel(
    ax: Axes, timeline: StreamTimeline, colors: dict[str | None, Any], bins: int
) -> None:
    """Score lines, segment spans and label-change ticks of one stream."""
    for t0, t1, label in _merged_spans(timeline, bins):
        ax.axvspan(t0, t1, color=colors[label], alpha=SPAN_ALPHA, lw=0, gid=f"segment:{label}")
    shown = _top_labels(timeline)
    finite: list[float] = []
    for name in shown:
        x, y = envelope(timeline.pts, timeline.scores[name], bins)
        marker = "o" if len(x) < 2 else None  # a sequence output: a single point
        ax.plot(x, y, color=colors[name], lw=1.0, gid=f"score:{name}", marker=marker, ms=3)
        finite += [float(y.min()), float(y.max())] if len(y) else []
    changes = _thinned(timeline.label_changes(), timeline, bins)
    if changes:
        ax.vlines(
            [t for t, _ in changes],
            *TICKS,
            transform=ax.get_xaxis_transform(),
            colors="0.1",
            lw=0.8,
            gid="label-changes",
        )
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (high - low) or 1.0
    ax.set_ylim(low - 0.03 * span, high + 0.16 * span)  # the top strip is for the ticks
    ax.set_ylabel("score")
    counts = {kind: timeline.kinds.count(kind) for kind in dict.fromkeys(timeline.kinds)}
    if timeline.segments:
        counts["segment"] = len(timeline.segments)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    hidden = len(timeline.scores) - len(shown)
    more = f"; {hidden} more labels not drawn" if hidden else ""
    ax.set_title(f"{timeline.stream}  ({summary}{more})", loc="left", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    handles: list[Line2D | Patch] = [
        Line2D([], [], color=colors[name], lw=1.5, label=name) for name in shown
    ]
    seg_labels = dict.fromkeys(label for _, _, label in timeline.segments)
    handles += [
        Patch(color=colors[label], alpha=SPAN_ALPHA * 2, label=f"segment: {label}")
        for label in seg_labels
    ]
    if changes:
        handles.append(Line2D([], [], color="0.3", marker="|", ls="", ms=9, label="label change"))
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            fontsize=8,
            frameon=False,
        )


def _waveform_panel(ax: Axes, wave: Waveform) -> None:
    ax.fill_between(wave.t, wave.low, wave.high, step="post", color="0.35", lw=0, gid="waveform")
    peak = float(max(np.abs(wave.low).max(initial=0), np.abs(wave.high).max(initial=0))) or 1.0
    ax.set_ylim(-1.05 * peak, 1.05 * peak)
    ax.set_ylabel("amplitude")
    ax.set_title(f"waveform: {wave.name}", loc="left", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def _colors(timelines: Iterable[StreamTimeline]) -> dict[str | None, Any]:
    """One colour per label, shared by all panels (tab10, then tab20)."""
    labels: dict[str | None, None] = {}
    for timeline in timelines:
        labels.update(dict.fromkeys(timeline.scores))
        labels.update(dict.fromkeys(label for _, _, label in timeline.segments))
        labels.update(dict.fromkeys(timeline.labels))
    palette: list[Any] = [f"C{i}" for i in range(10)]
    if len(labels) > 10:
        from matplotlib import colormaps

        palette = [colormaps["tab20"](i) for i in range(20)]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _top_labels(timeline: StreamTimeline) -> list[str]:
    """The labels to draw lines for: all, or the MAX_LINES with the highest peaks."""
    names = list(timeline.scores)
    if len(names) <= MAX_LINES:
        return names
    peaks = {
        n: float(np.nanmax(s)) if np.isfinite(s).any() else -np.inf
        for n, s in timeline.scores.items()
    }
    top = set(sorted(names, key=lambda n: -peaks[n])[:MAX_LINES])
    return [n for n in names if n in top]


def _merged_spans(timeline: StreamTimeline, bins: int) -> list[tuple[float, float, str | None]]:
    """The segments as drawn: each one, or, when there are more than ``bins``, runs of one
    label closer than a bin's width merged into one span."""
    spans = sorted(timeline.segments, key=lambda s: s[0])
    if len(spans) <= bins or not len(timeline.pts):
        return spans
    width = (timeline.end - min(spans[0][0], float(timeline.pts[0]))) / bins
    merged: list[tuple[float, float, str | None]] = []
    last: dict[str | None, int] = {}
    for t0, t1, label in spans:
        i = last.get(label)
        if i is not None and t0 - merged[i][1] < width:
            merged[i] = (merged[i][0], max(t1, merged[i][1]), label)
        else:
            last[label] = len(merged)
            merged.append((t0, t1, label))
    return merged


def _thinned(
    changes: list[tuple[float, str | None]], timeline: StreamTimeline, bins: int
) -> list[tuple[float, str | None]]:
    """At most one label-change tick per bin (the first) when there are more than ``bins``."""
    if len(changes) <= bins:
        return changes
    start, span = float(timeline.pts[0]), (timeline.end - float(timeline.pts[0])) or 1.0
    kept: dict[int, tuple[float, str | None]] = {}
    for t, label in changes:
        kept.setdefault(min(int((t - start) / span * bins), bins - 1), (t, label))
    return list(kept.values())


def _seconds(value: float, _pos: object) -> str:
    return f"{value:g}"


def _clock_step(span: float) -> float:
    """A round step in seconds that gives about 6 to 12 ticks over ``span``."""
    steps = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    return float(next((s for s in steps if span / s <= 12), span / 6))


def _clock(value: float, _pos: object) -> str:
    sign, value = ("-", -value) if value < 0 else ("", value)
    hours, rest = divmod(round(value), 3600)
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
