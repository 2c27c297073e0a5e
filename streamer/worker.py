"""A dedicated worker thread for blocking calls (file and device reads, model steps).

Each source or model owns one :class:`Worker`, so its calls run in order on one thread and
never on the event loop. While a call is in flight the clock is marked busy, so a
:class:`~streamer.clock.VirtualClock` does not let time pass under it.

The thread is a daemon: a call still running when the process ends (a long model step
after an abort) does not keep the interpreter alive. A cancelled ``call`` returns at once;
the thread finishes the job it is on and skips the ones not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from streamer.clock import Clock, RealClock

P = ParamSpec("P")
R = TypeVar("R")

#: A job for the thread: the future to settle and the call to make; ``None`` stops it.
_Job = tuple[Future[Any], Callable[[], Any]] | None


class Worker:
    """One named thread; ``await worker.call(fn, *args)`` runs ``fn`` there."""

    def __init__(self, name: str, clock: Clock | None = None) -> None:
        self.name = name
        self.clock: Clock = clock or RealClock()
        self._jobs: queue.SimpleQueue[_Job] | None = None

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` on the thread; cancelling the await does not wait."""
        future = self._submit(lambda: fn(*args, **kwargs))
        with self.clock.busy():
            return await asyncio.wrap_future(future)

    def start(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Hand ``fn(*args, **kwargs)`` to the thread now; await the returned future later
        (the caller goes on meanwhile; the clock counts the call busy until it settles).
        Must be called from the event loop's thread."""
        busy = self.clock.busy()
        busy.__enter__()
        future = asyncio.wrap_future(self._submit(lambda: fn(*args, **kwargs)))
        future.add_done_callback(lambda _: busy.__exit__(None, None, None))
        return future

    async def call_through(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Like :meth:`call`, but a cancellation lets a call already handed over finish
        first (then propagates): for a short write that must land together with the
        caller's bookkeeping of it. A second cancellation stops waiting."""
        future = self._submit(lambda: fn(*args, **kwargs))
        with self.clock.busy():
            waiting = asyncio.wrap_future(future)
            try:
                return await asyncio.shield(waiting)
            except asyncio.CancelledError:
                if not waiting.done():
                    with contextlib.suppress(Exception):
                        await waiting
                raise

    def close(self) -> None:
        """Stop the thread once its current call returns (does not wait for it); calls
        not yet started are cancelled. A later :meth:`call` starts a new thread."""
        jobs, self._jobs = self._jobs, None
        if jobs is not None:
            _drain(jobs)
            jobs.put(None)

    def _submit(self, job: Callable[[], R]) -> Future[R]:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            thread = threading.Thread(
                target=_serve, args=(self._jobs,), name=self.name, daemon=True
            )
            thread.start()
            # A worker dropped without close() still lets its idle thread end.
            weakref.finalize(self, self._jobs.put, None)
        future: Future[R] = Future()
        self._jobs.put((future, job))
        return future


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    """The thread's loop: run jobs in order until ``None``."""
    while (job := jobs.get()) is not None:
        future, fn = job
        if not future.set_running_or_notify_cancel():
            continue  # cancelled before it started
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, like an executor does
            future.set_exception(exc)
        else:
            future.set_result(result)
        del job, future, fn


def _drain(jobs: queue.SimpleQueue[_Job]) -> None:
    """Cancel the jobs that have not started."""
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            job[0].cancel()
