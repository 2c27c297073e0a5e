"""A dedicated worker thread for blocking calls (file and device reads, model steps).

Each source or model owns one :class:`Worker`, so its calls run in order on one thread and
never on the event loop. While a call is in flight the clock is marked busy, so a
:class:`~streamer.clock.VirtualClock` does not let time pass under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from streamer.clock import Clock, RealClock

P = ParamSpec("P")
R = TypeVar("R")


class Worker:
    """One named thread; ``await worker.call(fn, *args)`` runs ``fn`` there."""

    def __init__(self, name: str, clock: Clock | None = None) -> None:
        self.name = name
        self.clock: Clock = clock or RealClock()
        self._executor: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        loop = asyncio.get_running_loop()
        with self.clock.busy():
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Stop the thread once its current call returns (does not wait for it)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
