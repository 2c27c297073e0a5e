"""``streamer record`` (:func:`record`): capture a source into a recording folder, all or nothing.

Items are written on a :class:`~streamer.worker.Worker` thread in small batches. The folder
appears at ``out_dir`` only when the recording is complete; if the source fails or the task
is cancelled, the partial recording is removed and the exception propagates. A ``stop``
event ends the recording early and keeps it (open streams end with reason ``stopped``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd
from streamer.recording.writer import RecordingWriter
from streamer.worker import Worker

#: Items are handed to the writer thread once this many are pending (or this many bytes).
BATCH_ITEMS = 64
BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RecordingSummary:
    """What :func:`record` wrote: stream ids in order, frames and media seconds per stream."""

    path: Path
    streams: list[str]
    frames: dict[str, int]
    duration: dict[str, float]


async def record(
    source: AsyncIterable[Item],
    out_dir: str | os.PathLike[str],
    *,
    duration: float | None = None,
    max_frames: int | None = None,
    clock: Clock | None = None,
    description: str | None = None,
    stop: asyncio.Event | None = None,
) -> RecordingSummary:
    """Record ``source`` into the new folder ``out_dir``.

    ``duration``: media seconds per stream; a frame with ``pts >= duration`` is not written
    and its stream ends with ``StreamEnd(reason="duration")`` (as soon as a written frame
    reaches the limit, so a live capture does not wait for one more frame).
    ``max_frames``: frames per stream, ending it with reason ``max-frames``. Recording stops
    when the source is exhausted or, once a limit has cut a stream, when every stream seen
    so far has ended (a live source never ends by itself; a stream that a finite source
    only starts after that is not recorded). ``description`` goes into
    ``meta.json`` as the source (default: the source's ``name``). ``stop``: once set, the
    read in progress is cancelled, every stream still open ends with reason ``stopped``
    and the recording is finished and kept (the first Ctrl-C of ``streamer record``);
    cancelling the task instead discards it. The caller still owns (and closes)
    ``source``; an async generator that ``aiter(source)`` returned is closed here.
    """
    if duration is not None and not duration > 0:
        raise InputError(f"record: duration must be > 0 seconds, got {duration}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"record: max_frames must be >= 1, got {max_frames}")
    label = description or str(getattr(source, "name", type(source).__name__))
    worker = Worker("recorder", clock)
    made: list[RecordingWriter] = []  # the writer, once the worker thread has made it

    def make() -> RecordingWriter:
        made.append(RecordingWriter(out_dir, source=label))
        return made[0]

    try:
        try:
            writer = await worker.call(make)
            summary = await _record(source, writer, worker, duration, max_frames, stop)
        except BaseException:
            # Also when cancelled while the writer was being made: the abort runs on the
            # worker thread after it, so its temporary folder is removed too.
            await _abort(made, worker)
            raise
    finally:
        worker.close()
    return summary


async def _record(
    source: AsyncIterable[Item],
    writer: RecordingWriter,
    worker: Worker,
    duration: float | None,
    max_frames: int | None,
    stop: asyncio.Event | None,
) -> RecordingSummary:
    frames: dict[str, int] = {}
    ends: dict[str, float] = {}
    seen: list[str] = []
    stopped: set[str] = set()
    limited = False  # a stream was cut by duration or max_frames
    pending: list[Item] = []
    pending_bytes = 0

    async def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            batch, pending, pending_bytes = pending, [], 0
            await worker.call(_add_all, writer, batch)

    iterator = aiter(source)
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while (item := await _next(iterator, stopping)) is not None:
            sid = item.stream
            if sid not in frames:
                seen.append(sid)
                frames[sid] = 0
                ends[sid] = 0.0
            if sid in stopped:
                continue
            if isinstance(item, Frame):
                if duration is not None and item.pts >= duration:
                    pending.append(StreamEnd(sid, frames[sid], "duration"))
                    stopped.add(sid)
                    limited = True
                else:
                    pending.append(item)
                    pending_bytes += int(getattr(item.data, "nbytes", 0))
                    frames[sid] += 1
                    ends[sid] = max(ends[sid], item.pts + item.duration)
                    if max_frames is not None and frames[sid] >= max_frames:
                        pending.append(StreamEnd(sid, frames[sid], "max-frames"))
                        stopped.add(sid)
                        limited = True
                    elif duration is not None and item.pts + item.duration >= duration:
                        pending.append(StreamEnd(sid, frames[sid], "duration"))
                        stopped.add(sid)
                        limited = True
            elif isinstance(item, Gap) and duration is not None and item.pts >= duration:
                continue
            else:
                pending.append(item)
                if isinstance(item, StreamEnd):
                    stopped.add(sid)
            if len(pending) >= BATCH_ITEMS or pending_bytes >= BATCH_BYTES:
                await flush()
            if limited and len(stopped) == len(seen):
                break  # a live source never ends by itself: stop once every stream is done
        if stopping is not None and stopping.done():
            for sid in seen:
                if sid not in stopped:
                    pending.append(StreamEnd(sid, frames[sid], "stopped"))
    finally:
        if stopping is not None:
            stopping.cancel()
        if iterator is not source:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
    await flush()
    path = await worker.call(writer.close)
    return RecordingSummary(path, seen, frames, ends)


async def _next(iterator: AsyncIterator[Item], stopping: asyncio.Future[Any] | None) -> Item | None:
    """The source's next item; None at its end, or once ``stopping`` is done (the read in
    progress is then cancelled, and an item it still returns is kept)."""
    if stopping is None:
        return await anext(iterator, None)
    if stopping.done():
        return None
    reading: asyncio.Future[Item | None] = asyncio.ensure_future(anext(iterator, None))
    try:
        await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not reading.done():
            reading.cancel()
            # not `await reading`: that would mistake its cancellation for this task's
            await asyncio.wait((reading,))
    if reading.cancelled():
        return None
    return reading.result()


def _add_all(writer: RecordingWriter, items: list[Item]) -> None:
    for item in items:
        writer.add(item)


async def _abort(made: list[RecordingWriter], worker: Worker) -> None:
    """Remove the partial recording, after any call still running on the worker thread."""

    def abort() -> None:
        for writer in made:
            writer.abort()

    try:
        await asyncio.shield(worker.call(abort))
    except BaseException:
        # Cancelled again (or the worker is gone): abort here; the writer's lock waits
        # for a write in flight on the worker thread.
        abort()
