"""What every source shares: the protocol, its options and real-time pacing.

A source is an ``AsyncIterator`` of items: for each stream a ``StreamStart``, its frames
(``Gap`` markers where frames are missing) and a ``StreamEnd``; the iterator ends with
``StopAsyncIteration``. Blocking reads run on the source's own :class:`~streamer.worker.Worker`
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, cast, runtime_checkable

from streamer.clock import Clock
from streamer.frames import Item, StreamInfo
from streamer.registry import Registry

Pace = Literal["realtime", "fast"]


@runtime_checkable
class Source(Protocol):
    """An async iterator of frames and markers with a name for errors and metrics.

    ``streams`` declares, before the run, every stream it will deliver (the same
    :class:`~streamer.frames.StreamInfo` travels on each stream's ``StreamStart`` and
    frames); a live device may complete it (its frame shape) when it connects.
    """

    name: str

    @property
    def streams(self) -> list[StreamInfo]: ...

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
    Live devices: ``timeout`` (seconds to open, and per read), ``latency`` (microphones:
    PortAudio's ``low``/``high`` or seconds), ``overflow`` (the push buffer's policy:
    ``latest`` in realtime mode, ``drop-oldest`` otherwise), ``retry`` (keep retrying a
    first connection with back-off instead of failing: one of several sources).
    """

    rate: float | None = None
    chunk: int = 512
    size: tuple[int, int] | None = None
    mono: bool = False
    pace: Pace = "fast"
    speed: float = 1.0
    loop: bool = False
    stream: str | None = None
    timeout: float = 5.0
    latency: str | float = "low"
    overflow: Literal["latest", "drop-oldest"] = "drop-oldest"
    retry: bool = False


#: An unpaced source gives the event loop a turn every this many frames.
FAST_YIELD = 8


class Pacer:
    """Delivers media time ``pts`` at clock time ``t0 + pts / speed`` (``realtime``)."""

    def __init__(self, clock: Clock, pace: Pace = "fast", speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.clock = clock
        self.pace = pace
        self.speed = speed
        self._t0: float | None = None
        self._count = 0

    async def wait(self, pts: float) -> float:
        """Wait until ``pts`` is due; returns the capture timestamp to stamp the frame with."""
        if self._t0 is None:
            self._t0 = self.clock.now() - pts / self.speed
        if self.pace == "realtime":
            await self.clock.sleep_until(self._t0 + pts / self.speed)
        else:
            # as fast as possible, but never starving the other tasks: a turn of the event
            # loop every FAST_YIELD frames (a turn per frame costs more than a small frame)
            self._count += 1
            if self._count >= FAST_YIELD:
                self._count = 0
                await asyncio.sleep(0)
        return self.clock.now()


class GeneratorSource:
    """Plumbing shared by sources whose items come from one async generator.

    Subclasses implement ``_items()``; a source with a worker thread or a file to release
    overrides ``_release()`` (run on ``self._worker`` if it has one, once). Iterating twice
    continues the same generator; :meth:`aclose` is idempotent and safe mid-iteration.
    """

    _gen: AsyncGenerator[Item, None] | None = None
    _closed: bool = False
    _shut: bool = False

    def _items(self) -> AsyncGenerator[Item, None]:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Item]:
        if self._gen is None:
            self._gen = self._items()
        return self._gen

    async def aclose(self) -> None:
        """Stop iterating and release resources (after any read in flight)."""
        self._closed = True
        if self._gen is not None:
            # RuntimeError: the generator is running in another task; it stops at its next read.
            with contextlib.suppress(RuntimeError):
                await self._gen.aclose()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        worker = getattr(self, "_worker", None)
        if worker is None:
            self._release()
            return
        try:
            await worker.call(self._release)
        finally:
            worker.close()

    def _release(self) -> None:
        """Release files or devices (on the worker thread, if the source has one)."""


@dataclass(frozen=True)
class SourceKind:
    """A registered kind of source URI (``camera:...``, ``mic:...``): the function that
    opens one, ``"module:function"`` taking ``(uri, options, clock)``, imported only when a
    URI of the kind is opened (so that importing streamer loads no OpenCV or PortAudio), and
    whether its URIs name a local file or folder (``local``: checked against the run's
    outputs before anything is written)."""

    opener: str
    local: bool = False

    def open(self, uri: str, options: SourceOptions, clock: Clock) -> Source:
        module, _, function = self.opener.partition(":")
        opener = getattr(importlib.import_module(module), function)
        return cast(Source, opener(uri, options, clock))


#: The source kinds by URI scheme (``camera`` for ``camera:0``), registered in
#: :mod:`streamer.sources`; a URI with no registered scheme is a file path.
SOURCES: Registry[SourceKind] = Registry("source scheme")
