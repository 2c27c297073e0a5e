"""Replay of a recording (``recording:PATH``): the frames and their original arrival pattern.

Each stream comes back as ``StreamStart``, its frames with bit-identical ``data``, ``index``
and ``pts`` (``Gap`` markers where they were recorded, just before the frame that followed
them) and ``StreamEnd``. Streams interleave in the order their frames were captured. With
``pace="realtime"`` frames are delivered at the recorded *capture* offsets (divided by
``speed``), so a replay reproduces the original arrival jitter, not just the media clock;
each frame's ``captured`` is the replay clock's time at delivery.

Options: ``pace``, ``speed`` and ``loop`` apply; ``stream`` renames the stream of a
one-stream recording; ``mono`` averages the channels of multi-channel audio (integer
samples are rounded back to the recorded dtype). Data keeps the recorded dtype (int16,
float64, ... audio replays as it was written, not as float32).
``rate``, ``chunk`` and ``size`` are ignored: a recording is replayed as it was recorded
(resample or resize it with a stage, or record it again with the settings you need).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.clock import Clock, RealClock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd, StreamInfo, StreamStart
from streamer.recording import RecordedStream, Recording, read_recording
from streamer.sources.base import GeneratorSource, Pacer, SourceOptions
from streamer.worker import Worker

#: Frames are copied out of the memory map on the worker thread in blocks of at most this
#: many bytes (at least one frame) or this many frames.
BLOCK_BYTES = 4 * 1024 * 1024
BLOCK_FRAMES = 256


class RecordingSource(GeneratorSource):
    """An async iterator of the items of a recording folder (see the module docstring).

    Opening validates the recording (``InputError`` naming the bad file). ``total_frames``
    is the number of frames one pass delivers, or None when looping. ``streams`` declares
    each recorded stream (renamed by ``options.stream``) with its first frame's shape and
    dtype (one channel with ``mono``); the last audio frame of a recording may be shorter.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: SourceOptions | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.options = options or SourceOptions()
        self.clock: Clock = clock or RealClock()
        self.recording: Recording = read_recording(path)
        self.name = f"source:recording:{self.recording.name}"
        streams = self.recording.streams
        self._ids = [s.id for s in streams]
        if self.options.stream is not None:
            if len(streams) != 1:
                raise InputError(
                    f"{self.name}: option stream={self.options.stream!r} needs a one-stream "
                    f"recording, {self.recording.path} has {len(streams)} streams"
                )
            self._ids = [self.options.stream]
        self.total_frames: int | None = None if self.options.loop else self.recording.total_frames
        #: One per recorded stream, in order, declared before the run (renamed by
        #: ``options.stream``; mono-mixed audio has one channel).
        self.streams: list[StreamInfo] = [
            _declare(stream, stream_id, self.options)
            for stream, stream_id in zip(streams, self._ids, strict=True)
        ]
        self._merge(streams)
        self._worker = Worker(self.name, self.clock)

    def _merge(self, streams: list[RecordedStream]) -> None:
        """Order all frames by capture time, keeping each stream's own order."""
        stream_no: list[npt.NDArray[np.int64]] = []
        frame_no: list[npt.NDArray[np.int64]] = []
        captured: list[npt.NDArray[np.float64]] = []
        key: list[npt.NDArray[np.float64]] = []
        for n, stream in enumerate(streams):
            times = np.asarray(stream.times["captured"], dtype=np.float64)
            stream_no.append(np.full(stream.frames, n, dtype=np.int64))
            frame_no.append(np.arange(stream.frames, dtype=np.int64))
            captured.append(times)
            # A running maximum keeps a stream's frames in order even if its clock stepped back.
            key.append(np.maximum.accumulate(times) if stream.frames else times)
        all_stream = np.concatenate([np.zeros(0, np.int64), *stream_no])
        all_frame = np.concatenate([np.zeros(0, np.int64), *frame_no])
        all_captured = np.concatenate([np.zeros(0, np.float64), *captured])
        all_key = np.concatenate([np.zeros(0, np.float64), *key])
        order = np.lexsort((all_frame, all_stream, all_key))
        self._order_stream = all_stream[order]
        self._order_frame = all_frame[order]
        first = float(all_captured.min()) if len(all_captured) else 0.0
        self._offsets = all_captured[order] - first
        # One loop pass lasts until the latest stream's last frame has been covered.
        cycle = 0.0
        for n, stream in enumerate(streams):
            if stream.frames:
                last_offset = float(captured[n][-1]) - first
                cycle = max(cycle, last_offset + stream.frame_duration(stream.frames - 1))
        self._cycle = cycle

    # -- internals

    async def _items(self) -> AsyncGenerator[Item, None]:
        streams = self.recording.streams
        ids = self._ids
        pacer = Pacer(self.clock, self.options.pace, self.options.speed)
        index_span = [_index_span(s) for s in streams]
        pts_span = [_pts_span(s) for s in streams]
        for n, stream in enumerate(streams):
            meta = dict(stream.meta)
            if self.options.loop:
                meta["loop"] = True  # no end: the recorded "samples" end only one pass
            yield StreamStart(ids[n], stream.media, stream.rate, meta, self.streams[n])
        for n, stream in enumerate(streams):
            if stream.frames == 0:
                for gap in stream.gaps:
                    yield _shift_gap(gap, ids[n], 0, 0.0)
                yield StreamEnd(ids[n], 0)
        total = len(self._order_stream)
        repeat = 0
        while total and not self._closed:
            gap_next = [0] * len(streams)
            block: list[npt.NDArray[Any]] = []
            block_start = 0
            for pos in range(total):
                if self._closed:
                    return
                if pos - block_start >= len(block):
                    block_start = pos
                    block = await self._worker.call(self._load, pos)
                n = int(self._order_stream[pos])
                f = int(self._order_frame[pos])
                stream = streams[n]
                index_shift = repeat * index_span[n]
                pts_shift = repeat * pts_span[n]
                captured = await pacer.wait(float(self._offsets[pos]) + repeat * self._cycle)
                while gap_next[n] < len(stream.gaps) and stream.gap_positions[gap_next[n]] <= f:
                    yield _shift_gap(stream.gaps[gap_next[n]], ids[n], index_shift, pts_shift)
                    gap_next[n] += 1
                record = stream.times[f]
                pts = float(record["pts"])
                yield Frame(
                    stream=ids[n],
                    index=int(record["index"]) + index_shift,
                    pts=pts + pts_shift if repeat else pts,
                    captured=captured,
                    data=block[pos - block_start],
                    rate=stream.rate,
                    info=self.streams[n],
                )
                if f == stream.frames - 1:
                    for gap in stream.gaps[gap_next[n] :]:
                        yield _shift_gap(gap, ids[n], index_shift, pts_shift)
                    if not self.options.loop:
                        yield StreamEnd(ids[n], stream.frames)
            if not self.options.loop:
                return
            repeat += 1

    def _load(self, start: int) -> list[npt.NDArray[Any]]:
        """Copy frames ``start``... (one block) out of the memory maps; runs on the worker."""
        streams = self.recording.streams
        block: list[npt.NDArray[Any]] = []
        size = 0
        pos = start
        while pos < len(self._order_stream) and len(block) < BLOCK_FRAMES:
            stream = streams[int(self._order_stream[pos])]
            data = np.array(stream.frame_data(int(self._order_frame[pos])), dtype=stream.dtype)
            if self.options.mono and _multichannel(stream, data.shape):
                data = _mix_down(data)
            block.append(data)
            size += data.nbytes
            pos += 1
            if size >= BLOCK_BYTES:
                break
        for number, stream in enumerate(streams):  # the pages read so far are given back
            done = self._order_frame[start:pos][self._order_stream[start:pos] == number]
            if len(done):
                stream.release_before(int(done.max()) + 1)
        return block


def _declare(stream: RecordedStream, stream_id: str, options: SourceOptions) -> StreamInfo:
    """What replaying ``stream`` as ``stream_id`` delivers: its first frame's shape (None
    for a stream without frames), one channel when ``mono`` mixes it down."""
    shape: tuple[int, ...] | None = tuple(stream.frame_shape) if stream.frames else None
    if shape is not None and options.mono and _multichannel(stream, shape):
        shape = (shape[0], 1)
    return StreamInfo(
        stream_id,
        stream.media,
        stream.rate,
        shape,
        stream.dtype,
        live=False,
        total_frames=None if options.loop else stream.frames,
    )


def _index_span(stream: RecordedStream) -> int:
    """How far indices advance per loop pass: past the last frame and any trailing gap."""
    span = int(stream.times["index"][-1]) + 1 if stream.frames else 0
    for gap in stream.gaps:
        span = max(span, gap.index + gap.count)
    return span


def _pts_span(stream: RecordedStream) -> float:
    """How far pts advance per loop pass: the end of the last frame (or trailing gap)."""
    if not stream.frames:
        return 0.0
    last = stream.frames - 1
    duration = stream.frame_duration(last)
    span = float(stream.times["pts"][last]) + duration
    for gap in stream.gaps:
        span = max(span, gap.pts + gap.count * duration)
    return span


def _shift_gap(gap: Gap, stream_id: str, index_shift: int, pts_shift: float) -> Gap:
    if not index_shift and not pts_shift:
        return Gap(stream_id, gap.index, gap.count, gap.pts, gap.reason)
    return Gap(stream_id, gap.index + index_shift, gap.count, gap.pts + pts_shift, gap.reason)


def _multichannel(stream: RecordedStream, shape: tuple[int, ...]) -> bool:
    return (
        stream.media == "audio" and len(shape) == 2 and shape[1] > 1 and stream.dtype.kind in "iuf"
    )


def _mix_down(data: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``[samples, channels]`` -> ``[samples, 1]`` in the same dtype (integers rounded)."""
    mixed: npt.NDArray[Any]
    if data.dtype.kind == "f":
        mixed = data.mean(axis=1, keepdims=True, dtype=data.dtype)
        return mixed
    mixed = np.rint(data.mean(axis=1, keepdims=True, dtype=np.float64)).astype(data.dtype)
    return mixed
