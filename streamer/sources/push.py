"""Devices that push: a bounded hand-over from a device thread or driver callback to the loop.

A camera's reader thread or a microphone's PortAudio callback calls
:meth:`PushBuffer.offer` with each frame it builds. ``offer`` never blocks the device: it
takes a lock for a few instructions, appends to a bounded buffer on the loop side and, if
the loop has not been woken yet, wakes it once with ``loop.call_soon_threadsafe`` (so the
loop's own queue holds at most one wake-up per buffer, whatever the device's rate).

Overflow policy, named per buffer: ``latest`` keeps only the newest frame waiting (realtime
mode: the newest frame wins), ``drop-oldest`` keeps up to ``capacity`` frames and drops the
oldest when a new one arrives (online mode: the device is never blocked, and a consumer that
falls behind by more than the buffer loses the oldest frames, not the newest). Markers
(gaps the device reports itself) never displace frames.

:class:`PushSource` turns the buffer into a source: every index the consumer never sees
becomes a ``Gap(reason="source-overflow")`` just before the next frame of its stream, so
delivered frames plus gap counts cover every frame the device produced, once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Literal, TypeVar

import numpy as np

from streamer.frames import Frame, Gap, Item, StreamEnd, StreamInfo, StreamStart
from streamer.sources.base import GeneratorSource

R = TypeVar("R")
PushPolicy = Literal["latest", "drop-oldest"]
PUSH_POLICIES: tuple[PushPolicy, ...] = ("latest", "drop-oldest")
#: Markers waiting beyond this many are dropped (their frames still show up as a gap).
MARKER_CAPACITY = 64


class PushBuffer:
    """Frames and markers offered from any thread, taken on the event loop.

    ``offer``/``close`` are thread-safe and never block; ``get`` is a coroutine for the
    loop. ``dropped`` counts the frames the policy discarded.
    """

    def __init__(self, name: str, capacity: int = 1, policy: PushPolicy = "latest") -> None:
        if policy not in PUSH_POLICIES:
            raise ValueError(f"push buffer '{name}': policy must be one of {PUSH_POLICIES}")
        if capacity < 1:
            raise ValueError(f"push buffer '{name}': capacity must be >= 1, got {capacity}")
        self.name = name
        self.policy: PushPolicy = policy
        self.capacity = 1 if policy == "latest" else capacity
        self.dropped = 0
        self._lock = threading.Lock()
        self._items: deque[Frame | Gap] = deque()
        self._frames = 0
        self._markers = 0
        self._closed = False
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._woken = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop that will ``get`` (call on the loop before the device starts)."""
        self._loop = loop
        self._event = asyncio.Event()

    # -- device side (any thread) --------------------------------------------------------
    def offer(self, item: Frame | Gap) -> None:
        """Hand over a frame or a device-reported gap; never blocks, never raises."""
        with self._lock:
            if self._closed:
                return
            if isinstance(item, Frame):
                if self._frames >= self.capacity:
                    self._drop_oldest_frame()
                self._frames += 1
            else:
                if self._markers >= MARKER_CAPACITY:
                    return  # the frames it covers will still be reported as a gap
                self._markers += 1
            self._items.append(item)
            self._wake_locked()

    def close(self, error: BaseException | None = None) -> None:
        """No more items (``error``: why the device stopped); the consumer drains, then ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
            self._wake_locked()

    def _drop_oldest_frame(self) -> None:
        for position, queued in enumerate(self._items):
            if isinstance(queued, Frame):
                del self._items[position]
                self._frames -= 1
                self.dropped += 1
                return

    def _wake_locked(self) -> None:
        if self._woken or self._loop is None:
            return
        self._woken = True
        # RuntimeError: the loop is closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._set)

    # -- loop side -----------------------------------------------------------------------
    def _set(self) -> None:
        if self._event is not None:
            self._event.set()

    async def get(self) -> Frame | Gap | None:
        """The next item; None once closed and drained (then :attr:`error` says why)."""
        if self._event is None:
            raise RuntimeError(f"push buffer '{self.name}': bind() it to the loop first")
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    if isinstance(item, Frame):
                        self._frames -= 1
                    else:
                        self._markers -= 1
                    return item
                if self._closed:
                    return None
                self._woken = False
                self._event.clear()
            await self._event.wait()

    @property
    def error(self) -> BaseException | None:
        return self._error


async def in_daemon_thread(fn: Callable[[], R], name: str) -> R:
    """``fn()`` on a new daemon thread, awaited. Unlike ``asyncio.to_thread`` nothing waits
    for it at exit, so an abort never waits for a device that is slow to open or close."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(result: R | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            outcome: tuple[R | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody awaits it
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class PushSource(GeneratorSource):
    """A one-stream source fed by a :class:`PushBuffer`; subclasses start the device.

    Subclasses implement :meth:`_start_device` (start the thread or callback that calls
    ``self.buffer.offer``; runs on a thread) and :meth:`_stop_device` (stop it and release
    the device; must be safe to call in any state and more than once), and set
    ``self.stream``, ``self.media``, ``self.rate`` and ``self.meta`` for the start marker,
    and ``self.period``, the media seconds one frame covers (for the pts of a gap). They
    declare the stream in ``self.info`` (live, endless; frames carry it too), which may
    change until the device is connected: the start marker carries it as it is then.
    Without ``self.info`` the stream is described from ``stream``/``media``/``rate``,
    shape unknown.
    """

    name: str
    stream: str
    media: Literal["audio", "video"]
    rate: float
    period: float
    meta: dict[str, object]
    info: StreamInfo | None = None

    def __init__(self, buffer: PushBuffer) -> None:
        self.buffer = buffer

    @property
    def streams(self) -> list[StreamInfo]:
        """The one stream this device delivers, as known now (see the class docstring)."""
        return [self._declared()]

    def _declared(self) -> StreamInfo:
        if self.info is not None:
            return self.info
        dtype = np.dtype(np.uint8 if self.media == "video" else np.float32)
        return StreamInfo(self.stream, self.media, self.rate, None, dtype, live=True)

    def _start_device(self) -> None:
        raise NotImplementedError

    def _stop_device(self) -> None:
        raise NotImplementedError

    async def _items(self) -> AsyncGenerator[Item, None]:
        self.buffer.bind(asyncio.get_running_loop())
        expected = 0
        next_pts = 0.0
        try:
            if self._closed:
                return
            await in_daemon_thread(self._start_device, f"{self.name}:start")
            info = self._declared()
            yield StreamStart(self.stream, self.media, self.rate, dict(self.meta), info)
            while True:
                item = await self.buffer.get()
                if item is None:
                    break
                if item.index > expected:
                    count = item.index - expected
                    yield Gap(self.stream, expected, count, next_pts, "source-overflow")
                yield item
                if isinstance(item, Gap):
                    expected = item.index + item.count
                    next_pts = item.pts + item.count * self.period
                else:
                    expected = item.index + 1
                    next_pts = item.pts + self.period
            if self.buffer.error is not None:
                raise self.buffer.error
            yield StreamEnd(self.stream, expected, "eof")
        finally:
            self.buffer.close()
            await in_daemon_thread(self._stop_device, f"{self.name}:stop")

    def _release(self) -> None:
        self.buffer.close()
