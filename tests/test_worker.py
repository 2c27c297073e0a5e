"""The worker thread: a daemon, a cancelled call returns at once, ``call_through`` lets the
call in flight land before the cancellation propagates."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streamer.clock import VirtualClock
from streamer.worker import Worker


async def test_thread_is_a_daemon_and_calls_run_in_order() -> None:
    worker = Worker("w-order")
    seen: list[int] = []

    def job(n: int) -> str:
        seen.append(n)
        return threading.current_thread().name

    names = await asyncio.gather(*(worker.call(job, n) for n in range(5)))
    assert seen == [0, 1, 2, 3, 4]
    assert set(names) == {"w-order"}
    (thread,) = [t for t in threading.enumerate() if t.name == "w-order"]
    assert thread.daemon  # a call still running cannot keep the process alive
    worker.close()


async def test_cancelled_call_returns_while_the_thread_is_busy() -> None:
    worker = Worker("w-cancel")
    release = threading.Event()
    started = threading.Event()
    done: list[str] = []

    def block() -> None:
        started.set()
        release.wait(30)
        done.append("block")

    task = asyncio.create_task(worker.call(block))
    queued = asyncio.create_task(worker.call(done.append, "queued"))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # returns although block() is still running
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert done == []
    release.set()
    assert await worker.call(lambda: "after") == "after"
    assert done == ["block"]  # the job that had not started was skipped
    worker.close()


async def test_call_through_lands_the_call_before_cancelling() -> None:
    worker = Worker("w-through")
    release = threading.Event()
    started = threading.Event()
    written: list[str] = []

    def write(line: str) -> None:
        started.set()
        release.wait(30)
        written.append(line)

    task = asyncio.create_task(worker.call_through(write, "line"))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for the write in flight
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == ["line"]
    worker.close()


async def test_started_call_runs_while_the_caller_goes_on_and_holds_virtual_time() -> None:
    """``start`` hands the call over at once; the caller keeps running, the result comes
    when awaited, and virtual time does not pass while the call is in flight."""
    clock = VirtualClock()
    worker = Worker("w", clock)
    release = threading.Event()
    future = worker.start(lambda: (release.wait(5), 42)[1])
    sleeper = asyncio.ensure_future(clock.sleep(1.0))
    for _ in range(100):
        await asyncio.sleep(0)
    assert not future.done() and not sleeper.done() and clock.now() == 0.0
    release.set()
    assert await future == 42
    await asyncio.wait_for(sleeper, 5)  # once the call settled, time may pass again
    worker.close()
