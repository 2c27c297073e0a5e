"""Clocks that stamp frames and pace sources: real time, or virtual time for replay tests.

A :class:`VirtualClock` makes a 60 s real-time replay finish in milliseconds while every
timestamp is what real time would have given: time stands still while any task on the event
loop can run (or off-loop work marked with :meth:`Clock.busy` is in flight) and jumps to the
earliest sleeper when everything waits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Clock(Protocol):
    """What sources, stages and metrics need of time (seconds, monotonic)."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...

    async def sleep(self, seconds: float) -> None: ...

    def busy(self) -> AbstractContextManager[None]:
        """Mark off-loop work in flight (a thread): virtual time does not pass meanwhile."""
        ...


class RealClock:
    """``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    @contextmanager
    def busy(self) -> Iterator[None]:
        yield


class VirtualClock:
    """Discrete-event time for one event loop: advances only when nothing else can run."""

    #: Without access to the loop's ready queue, yield this many times before advancing.
    _FALLBACK_YIELDS = 50

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._busy = 0
        self._poke_scheduled = False
        self._fallback_countdown = self._FALLBACK_YIELDS

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        self._schedule_poke(loop)
        await future

    def spend(self, seconds: float) -> None:
        """Advance the time by ``seconds`` from inside a busy call (a worker thread's
        blocking call, such as a test model's cost): what waits sees it took that long."""
        self._now += max(0.0, seconds)

    @contextmanager
    def busy(self) -> Iterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0 and self._sleepers:
                self._schedule_poke(asyncio.get_running_loop())

    def _schedule_poke(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._poke_scheduled:
            self._poke_scheduled = True
            loop.call_soon(self._poke, loop)

    def _poke(self, loop: asyncio.AbstractEventLoop) -> None:
        self._poke_scheduled = False
        if self._busy or not self._sleepers:
            return
        if self._others_ready(loop):
            self._schedule_poke(loop)
            return
        self._fallback_countdown = self._FALLBACK_YIELDS
        deadline = self._sleepers[0][0]
        self._now = max(self._now, deadline)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        if self._sleepers:  # the rest wake once what just woke has settled
            self._schedule_poke(loop)

    def _others_ready(self, loop: asyncio.AbstractEventLoop) -> bool:
        ready = getattr(loop, "_ready", None)
        if ready is not None:
            return len(ready) > 0
        self._fallback_countdown -= 1
        return self._fallback_countdown > 0
