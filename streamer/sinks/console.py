"""Console sink: a readable line per output on stdout, a progress bar on stderr.

The progress bar (offline runs, or whenever the input length is known and asked for) is
drawn only on a terminal, at most ten times a second.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Literal, TextIO

from pydantic import Field

from streamer.frames import Output
from streamer.metrics import Metrics
from streamer.options import Int
from streamer.sinks.base import SinkContext, SinkOptions


def format_output(output: Output) -> str:
    """One line: stream, frames, media time, label, its score, latency."""
    span = f"{output.start}" if output.start == output.end else f"{output.start}-{output.end}"
    score = output.scores.get(output.label, None) if output.label is not None else None
    parts = [f"[{output.stream}]", f"{output.kind:<8}", f"#{span:<9}", f"{output.pts:9.3f}s"]
    if output.kind == "segment" and output.t0 is not None and output.t1 is not None:
        parts.append(f"{output.t0:.3f}-{output.t1:.3f}s")
    parts.append(f"{output.label or '-':<12}")
    parts.append("" if score is None else f"{score:.3f}")
    if output.latency_ms is not None:
        parts.append(f"({output.latency_ms:.1f} ms)")
    return " ".join(p for p in parts if p)


class ConsoleSink:
    """Prints outputs; with ``progress`` and a known total, draws a bar on stderr."""

    def __init__(
        self,
        stream: TextIO | None = None,
        every: int = 1,
        progress_stream: TextIO | None = None,
    ) -> None:
        self.name = "sink:console"
        self.stream = stream or sys.stdout
        self.every = max(1, every)
        self.progress_stream = progress_stream or sys.stderr
        self._count = 0
        self._total: int | None = None
        self._last_draw = 0.0

    def track(self, metrics: Metrics, total_frames: int | None) -> None:
        """Draw progress of ``metrics.frames_in`` against ``total_frames``."""
        if total_frames and self.progress_stream.isatty():
            self._total = total_frames
            metrics.listeners.append(self._draw)

    def _draw(self, metrics: Metrics) -> None:
        now = time.monotonic()
        if self._total is None or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        done = min(metrics.frames_in, self._total)
        width = 30
        filled = int(width * done / self._total)
        bar = "#" * filled + "." * (width - filled)
        percent = 100.0 * done / self._total
        self.progress_stream.write(f"\r[{bar}] {percent:5.1f}% {done}/{self._total} frames")
        self.progress_stream.flush()

    async def send(self, output: Output) -> None:
        self._count += 1
        if (self._count - 1) % self.every == 0:
            if self._total is not None:
                self.progress_stream.write("\r\x1b[K")
            try:
                self.stream.write(format_output(output) + "\n")
                self.stream.flush()
            except BrokenPipeError:  # `streamer run ... | head`: stop printing; the run drains
                self.every = 1 << 62
                self._silence()
                raise

    def _silence(self) -> None:
        """Point the closed stdout at /dev/null so that the interpreter's exit flush is quiet."""
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
        except (OSError, ValueError):
            pass

    async def aclose(self) -> None:
        if self._total is not None:
            self.progress_stream.write("\n")
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._silence()


class ConsoleSinkConfig(SinkOptions):
    """``type = "console"``: a line per output (every ``every``-th) on stdout."""

    type: Literal["console"]
    every: Annotated[Int, Field(ge=1, le=10**9)] = 1


def build_console(options: ConsoleSinkConfig, context: SinkContext) -> ConsoleSink:
    """The console sink; in offline mode it draws progress against the streams' length."""
    console = ConsoleSink(every=options.every)
    if context.mode == "offline":
        totals = [info.total_frames for source in context.sources for info in source.streams]
        known = None if None in totals else sum(t for t in totals if t is not None)
        console.track(context.metrics, known)
    return console
