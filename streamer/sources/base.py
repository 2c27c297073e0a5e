"""What every source shares: the protocol, its options and real-time pacing.

A source is an ``AsyncIterator`` of items: for each stream a ``StreamStart``, its frames
(``Gap`` markers where frames are missing) and a ``StreamEnd``; the iterator ends with
``StopAsyncIteration``. Blocking reads run on the source's own :class:`~streamer.worker.Worker`
thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from streamer.clock import Clock
from streamer.frames import Item

Pace = Literal["realtime", "fast"]


@runtime_checkable
class Source(Protocol):
    """An async iterator of frames and markers with a name for errors and metrics."""

    name: str

    def __aiter__(self) -> AsyncIterator[Item]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class SourceOptions:
    """The ``[source]`` settings a source may use (each source ignores what it cannot).

    ``rate``: audio sample rate to resample to / video fps to deliver (None: native).
    ``chunk``: audio samples per frame. ``size``: video (width, height) to resize to.
    ``mono``: mix audio down to one channel. ``pace``: ``realtime`` delivers frames when a
    live source would, ``fast`` as fast as they are read. ``speed``: real-time factor.
    ``loop``: restart at the end, with indices and pts continuing. ``stream``: stream id.
    """

    rate: float | None = None
    chunk: int = 512
    size: tuple[int, int] | None = None
    mono: bool = False
    pace: Pace = "fast"
    speed: float = 1.0
    loop: bool = False
    stream: str | None = None


class Pacer:
    """Delivers media time ``pts`` at clock time ``t0 + pts / speed`` (``realtime``)."""

    def __init__(self, clock: Clock, pace: Pace = "fast", speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.clock = clock
        self.pace = pace
        self.speed = speed
        self._t0: float | None = None

    async def wait(self, pts: float) -> float:
        """Wait until ``pts`` is due; returns the capture timestamp to stamp the frame with."""
        if self._t0 is None:
            self._t0 = self.clock.now() - pts / self.speed
        if self.pace == "realtime":
            await self.clock.sleep_until(self._t0 + pts / self.speed)
        return self.clock.now()
