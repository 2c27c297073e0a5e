"""The run's health for the live view, read from its :class:`~streamer.metrics.Metrics`.

Cheap enough to make a few times a second while a run goes: rates over the time since the
previous report (not since the start), latency percentiles over the newest
:data:`LATENCY_WINDOW` outputs, and counters and queue depths read as they are. Nothing
here changes the metrics.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamer.metrics import Metrics

#: Outputs whose latencies make the percentiles.
LATENCY_WINDOW = 1000


class HealthProbe:
    """``probe()`` -> the health report's fields (see :meth:`__call__`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._last: tuple[float, int, int] | None = None  # (time, frames_in, outputs)
        self._rates: tuple[float | None, float | None] = (None, None)

    def _fps(self) -> tuple[float | None, float | None]:
        m = self.metrics
        now = time.monotonic()
        last = self._last
        if last is None:
            self._last = (now, m.frames_in, m.outputs)
            return None, None
        elapsed = now - last[0]
        if elapsed >= 0.2:
            self._rates = ((m.frames_in - last[1]) / elapsed, (m.outputs - last[2]) / elapsed)
            self._last = (now, m.frames_in, m.outputs)
        return self._rates

    def __call__(self) -> dict[str, Any]:
        """fps in and out (recent), latency p50/p99 (ms, recent outputs), frames dropped,
        per stream its counts and gaps, per edge its queue depth."""
        m = self.metrics
        fps_in, fps_out = self._fps()
        tail = m.latencies_ms[-LATENCY_WINDOW:]
        latency = None
        if tail:
            p50, p99 = np.percentile(np.asarray(tail, dtype=np.float64), [50, 99])
            latency = {"p50": float(p50), "p99": float(p99)}
        overflow: dict[str, int] = {}
        for channel in m.channels:
            for stream, count in channel.stats.dropped_by_stream.items():
                overflow[stream] = overflow.get(stream, 0) + count
        streams = {
            name: {
                "frames_in": c.frames_in,
                "outputs": c.outputs,
                "dropped": overflow.get(name, 0) + c.invalid + c.overflowed + c.deadline,
                "gaps": c.gaps,
                "frames_missing": c.frames_missing,
                "late": c.late,
            }
            for name, c in list(m.streams.items())
        }
        edges = [*m.channels, *(edge for edge, _delivery in m.sink_edges)]
        return {
            "mode": m.mode,
            "elapsed_s": None if m.started is None else m.clock.now() - m.started,
            "frames_in": m.frames_in,
            "outputs": m.outputs,
            "fps_in": fps_in,
            "fps_out": fps_out,
            "latency_ms": latency,
            "dropped": sum(s["dropped"] for s in streams.values()),
            "streams": streams,
            "queues": {
                edge.name: {
                    "depth": edge.stats.depth,
                    "capacity": edge.stats.capacity,
                    "dropped": edge.stats.dropped,
                }
                for edge in edges
            },
        }
