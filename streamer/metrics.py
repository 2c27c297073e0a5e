"""Run metrics, attached to the pipeline as an observer: latency, fps, drops, queue depth.

The counts add up: ``dropped`` is every frame the pipeline itself discarded: the frames a
``latest`` edge displaced (per edge in ``edges``), the frames a stage dropped as invalid
(NaN/Inf, reported as ``invalid``) and the frames a live source's push buffer dropped when
the pipeline fell behind the device (``source_overflow``), and in realtime mode the
frames the model stage skipped as older than ``[run] latency_budget_ms`` (``deadline``).
Outputs later than that budget are counted as ``late``. Per stream, ``dropped`` is that
stream's share (the streams' ``dropped`` sum to the total) and ``frames_missing`` counts
the frames of every gap marker that reached the sinks' side: the dropped frames, once their
markers are through, plus what the device itself lost (an outage, an input overflow), so
it is never less than ``dropped`` on a run that finished. For a stage with one output per
frame, ``frames_in = outputs + dropped``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.channels import Channel
from streamer.clock import Clock
from streamer.frames import Frame, Gap, Item, Output

if TYPE_CHECKING:
    from streamer.blocks import OutputBlock
    from streamer.sinks.base import Delivery


@dataclass
class StreamCounts:
    frames_in: int = 0
    outputs: int = 0
    gaps: int = 0
    frames_missing: int = 0
    invalid: int = 0  # frames a stage dropped as invalid (Gap reason "invalid")
    overflowed: int = 0  # frames a live source's push buffer dropped ("source-overflow")
    deadline: int = 0  # frames the model stage skipped, older than the budget ("deadline")
    late: int = 0  # outputs later than the latency budget


@dataclass
class Metrics:
    """Counts what enters and leaves a pipeline; :meth:`summary` is the end-of-run report."""

    clock: Clock
    mode: str = "online"
    latencies_ms: list[float] = field(default_factory=list)
    streams: dict[str, StreamCounts] = field(default_factory=dict)
    channels: list[Channel[Any]] = field(default_factory=list)
    listeners: list[Callable[[Metrics], None]] = field(default_factory=list)
    reporters: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    #: each sink's edge with its delivery (outputs, not frames: their drops are the
    #: summary's ``sinks``, not its ``dropped``)
    sink_edges: list[tuple[Channel[Any], Delivery]] = field(default_factory=list)
    #: sources that count what they received and skipped (``report()``; the MQTT source),
    #: by name: the summary's ``sources``
    source_reports: dict[str, Callable[[], dict[str, int]]] = field(default_factory=dict)
    #: sinks dropped from the run after a failure (``on_error = "drop"``) -> the error
    failed_sinks: dict[str, str] = field(default_factory=dict)
    #: a sink's own figures by sink name, merged into its ``sinks`` section (its
    #: ``dropped`` adds to the edge's: the MQTT sink's buffer overflow and unsent outputs)
    sink_reports: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    frames_in: int = 0
    outputs: int = 0
    started: float | None = None
    finished: float | None = None
    first_input: float | None = None
    last_input: float | None = None
    first_output: float | None = None
    last_output: float | None = None
    stop_reason: str = "eof"

    def _stream(self, stream: str) -> StreamCounts:
        counts = self.streams.get(stream)
        if counts is None:
            counts = self.streams[stream] = StreamCounts()
        return counts

    def start(self) -> None:
        self.started = self.clock.now()

    def watch(self, sources: Sequence[object], sinks: Sequence[object]) -> None:
        """Report the counts of every source that keeps them (a ``report()`` method: the
        MQTT source's skipped messages) and of every sink (a ``counts()`` method: the MQTT
        sink's published and dropped)."""
        for source in sources:
            report = getattr(source, "report", None)
            if callable(report):
                self.source_reports[str(getattr(source, "name", source))] = report
        for sink in sinks:
            counts = getattr(sink, "counts", None)
            if callable(counts):
                self.sink_reports[str(getattr(sink, "name", sink))] = counts

    def finish(self) -> None:
        self.finished = self.clock.now()

    def on_input(self, item: Item) -> None:
        """An item left a source."""
        if isinstance(item, Frame):
            now = self.clock.now()
            self.frames_in += 1
            self._stream(item.stream).frames_in += 1
            if self.first_input is None:
                self.first_input = now
            self.last_input = now
            for listener in self.listeners:
                listener(self)

    def on_output(self, output: Output) -> None:
        """An output is handed to the sinks (its latency already stamped)."""
        self.outputs += 1
        counts = self._stream(output.stream)
        counts.outputs += 1
        if output.late:
            counts.late += 1
        if output.latency_ms is not None:
            self.latencies_ms.append(output.latency_ms)
        self._output_now()

    def on_block(self, block: OutputBlock) -> None:
        """A block of outputs is handed to the sinks (its latencies already stamped)."""
        if not len(block):
            return
        self.outputs += len(block)
        streams = block.streams
        first = streams[0]
        if streams.count(first) == len(streams):  # one stream's rows (an offline piece)
            self._stream(first).outputs += len(streams)
        else:
            for stream in streams:
                self._stream(stream).outputs += 1
        if block.late is not None:
            for stream, late in zip(streams, block.late, strict=True):
                if late:
                    self._stream(stream).late += 1
        if block.latency_ms is not None:
            self.latencies_ms.extend(v for v in block.latency_ms if v is not None)
        self._output_now()

    def _output_now(self) -> None:
        """Outputs left now: the first and last output times (``fps_out``)."""
        now = self.clock.now()
        if self.first_output is None:
            self.first_output = now
        self.last_output = now

    def on_marker(self, item: Item) -> None:
        """A marker reached the end of the pipeline."""
        if isinstance(item, Gap):
            counts = self._stream(item.stream)
            counts.gaps += 1
            counts.frames_missing += item.count
            if item.reason == "invalid":
                counts.invalid += item.count
            elif item.reason == "source-overflow":
                counts.overflowed += item.count
            elif item.reason == "deadline":
                counts.deadline += item.count

    def summary(self) -> dict[str, Any]:
        """The end-of-run figures as plain JSON-able values."""
        elapsed = (self.finished or self.clock.now()) - (self.started or 0.0)
        edges = {
            c.name: {
                "policy": c.stats.policy,
                "capacity": c.stats.capacity,
                "sent": c.stats.sent,
                "dropped": c.stats.dropped,
                "max_depth": c.stats.max_depth,
            }
            for c in [*self.channels, *(edge for edge, _delivery in self.sink_edges)]
        }
        sinks = {
            edge.name.removeprefix("fanout>"): {
                "policy": delivery.policy,
                "capacity": delivery.capacity,
                "on_error": delivery.on_error,
                "dropped": edge.stats.dropped,
                "max_depth": edge.stats.max_depth,
                "failed": self.failed_sinks.get(edge.name.removeprefix("fanout>")),
            }
            for edge, delivery in self.sink_edges
        }
        for name, report in self.sink_reports.items():
            if name in sinks:
                own = dict(report())
                sinks[name]["dropped"] += own.pop("dropped", 0)
                sinks[name].update(own)
        overflow: dict[str, int] = {}  # frames displaced by latest edges, per stream
        for channel in self.channels:
            for stream, count in channel.stats.dropped_by_stream.items():
                overflow[stream] = overflow.get(stream, 0) + count
        for stream in overflow:
            self._stream(stream)
        invalid = sum(c.invalid for c in self.streams.values())
        overflowed = sum(c.overflowed for c in self.streams.values())
        deadline = sum(c.deadline for c in self.streams.values())
        return {
            "mode": self.mode,
            "stopped": self.stop_reason,
            "elapsed_s": elapsed,
            "frames_in": self.frames_in,
            "outputs": self.outputs,
            "dropped": sum(c.stats.dropped for c in self.channels)
            + invalid
            + overflowed
            + deadline,
            "invalid": invalid,
            "source_overflow": overflowed,
            "deadline": deadline,
            "late": sum(c.late for c in self.streams.values()),
            "fps_in": _rate(self.frames_in, self.first_input, self.last_input),
            "fps_out": _rate(self.outputs, self.first_output, self.last_output),
            "latency_ms": _percentiles(self.latencies_ms),
            "edges": edges,
            "sinks": sinks,
            "streams": {
                name: {
                    "frames_in": c.frames_in,
                    "outputs": c.outputs,
                    "dropped": overflow.get(name, 0) + c.invalid + c.overflowed + c.deadline,
                    "invalid": c.invalid,
                    "source_overflow": c.overflowed,
                    "deadline": c.deadline,
                    "late": c.late,
                    "gaps": c.gaps,
                    "frames_missing": c.frames_missing,
                }
                for name, c in self.streams.items()
            },
            **{k: v for reporter in self.reporters for k, v in reporter().items()},
            **(
                {"sources": {name: report() for name, report in self.source_reports.items()}}
                if self.source_reports
                else {}
            ),
        }


def _rate(count: int, first: float | None, last: float | None) -> float | None:
    """Events per second between the first and the last event (None if undefined)."""
    if first is None or last is None or count < 2 or last <= first:
        return None
    return (count - 1) / (last - first)


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(array.max()),
        "mean": float(array.mean()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines for the console."""
    lines = [
        f"mode {summary['mode']}, stopped: {summary['stopped']}, "
        f"elapsed {summary['elapsed_s']:.3f} s",
        f"frames in {summary['frames_in']}, outputs {summary['outputs']}, "
        f"dropped {summary['dropped']}"
        + (f" ({summary['invalid']} invalid)" if summary.get("invalid") else "")
        + (f" ({summary['deadline']} past the deadline)" if summary.get("deadline") else ""),
    ]
    if summary.get("late"):
        lines.append(f"late outputs (over the latency budget) {summary['late']}")
    fps_in, fps_out = summary["fps_in"], summary["fps_out"]
    if fps_in is not None or fps_out is not None:
        lines.append(f"fps in {_fmt(fps_in)}, fps out {_fmt(fps_out)}")
    latency = summary["latency_ms"]
    if latency:
        lines.append(
            "latency ms p50 {p50:.2f}  p95 {p95:.2f}  p99 {p99:.2f}  max {max:.2f}".format(
                **latency
            )
        )
    if summary.get("model_calls") is not None:
        mean_batch = summary.get("mean_batch")
        line = f"model calls {summary['model_calls']}, mean batch {_fmt(mean_batch)}"
        if summary.get("lookahead_frames"):
            seconds = summary.get("lookahead_s")
            delay = "" if seconds is None else f" = {seconds * 1000:.0f} ms"
            line += f", declared lookahead delay {summary['lookahead_frames']} steps{delay}"
        lines.append(line)
    for name, counts in summary.get("sources", {}).items():
        skipped = {k: n for k, n in counts.items() if n and k not in ("received", "frames")}
        if skipped:
            what = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in skipped.items())
            lines.append(f"{name}: received {counts.get('received', 0)}, {what}")
    sink_edges = {f"fanout>{name}" for name in summary.get("sinks", {})}
    for name, edge in summary["edges"].items():
        if edge["dropped"] and name not in sink_edges:
            lines.append(f"edge {name} ({edge['policy']}): dropped {edge['dropped']}")
    for name, sink in summary.get("sinks", {}).items():
        if "published" in sink:  # a sink with a buffer of its own (MQTT)
            own = {
                "buffer full": sink.get("overflow", 0),
                "unsent at close": sink.get("unsent", 0),
                "topic refused": sink.get("rejected", 0),
            }
            why = {"by its edge": sink["dropped"] - sum(own.values()), **own}
            detail = ", ".join(f"{n} {k}" for k, n in why.items() if n)
            lines.append(
                f"{name}: published {sink['published']}, dropped {sink['dropped']} outputs"
                + (f" ({detail})" if detail else "")
                + f", buffer peak {sink.get('buffer_peak', 0)} messages"
            )
        elif sink["dropped"]:
            lines.append(f"{name} ({sink['policy']}): dropped {sink['dropped']} outputs")
        if sink["failed"]:
            lines.append(f"{name} failed and was dropped from the run: {sink['failed']}")
    return "\n".join("summary: " + line for line in lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
