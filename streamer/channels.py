"""Bounded channels between pipeline stages, each with a named overflow policy.

``block``: a full channel makes the sender wait (lossless backpressure).
``drop-oldest``: a full channel drops its oldest item to make room; the sender never waits
(a sink's edge, so that a slow sink holds up nothing; the drops are counted).
``latest``: at most one frame per stream waits (a newer frame replaces it), and a channel full
of other streams' frames drops its oldest frame to make room: the newest frame wins;
the drops are counted and the receiver gets a :class:`~streamer.frames.Gap` marker
(reason ``overflow:NAME``) in place of the frames it never saw. Markers are never dropped
and never displace a frame: a marker waits for room.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from streamer.errors import ChannelClosed
from streamer.frames import Frame, Gap

Policy = Literal["block", "latest", "drop-oldest"]
POLICIES: tuple[Policy, ...] = ("block", "latest", "drop-oldest")

T = TypeVar("T")


@dataclass
class ChannelStats:
    """Counters of one edge, read by metrics."""

    name: str
    policy: Policy
    capacity: int
    sent: int = 0
    received: int = 0
    dropped: int = 0
    depth: int = 0
    max_depth: int = 0
    #: ``dropped`` per stream
    dropped_by_stream: dict[str, int] = field(default_factory=dict)


class _Pending:
    """Overflow gaps of one stream not yet handed out, oldest first.

    Each gap remembers the send sequence numbers of its first and last dropped frame: it is
    due just before the first item of its stream sent after its first frame (whatever that
    item is: a frame, a source gap, a ``StreamEnd``), so a gap can never follow its stream's
    end, nor land before an earlier run's end when a stream id starts again.
    """

    __slots__ = ("first", "gaps", "last")

    def __init__(self) -> None:
        self.gaps: list[Gap] = []
        self.first: list[int] = []  # sequence number of each gap's first dropped frame
        self.last: list[int] = []  # ... and of its last one


class Channel(Generic[T]):
    """A bounded FIFO between ``producers`` senders and one receiving task.

    Iterate it (``async for item in channel``) to receive until every producer has called
    :meth:`close` and the buffer is empty.
    """

    def __init__(self, name: str, capacity: int, policy: Policy = "block", producers: int = 1):
        if capacity < 1:
            raise ValueError(f"channel '{name}': capacity must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"channel '{name}': policy must be one of {POLICIES}, got {policy!r}")
        self.name = name
        self.policy: Policy = policy
        self.capacity = capacity
        self.stats = ChannelStats(name, policy, capacity)
        # (sequence number, sequence number of the stream's previous item or -1, item)
        self._buffer: deque[tuple[int, int, T]] = deque()
        self._seq = 0
        self._last_seq: dict[str, int] = {}  # latest only: per stream, the last item sent
        self._pending_gaps: dict[str, _Pending] = {}
        self._queued: dict[str, int] = {}  # latest only: frames waiting, per stream
        self._producers = producers
        self._receiver_gone = False
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    # -- sending -----------------------------------------------------------------------
    async def send(self, item: T) -> None:
        """Put ``item`` in; waits while full, except a frame under ``latest``: it replaces
        its stream's queued frame (at most one frame per stream waits), and when the
        channel is full of other streams' frames it displaces the oldest of them."""
        self._check_open()
        if self.policy == "drop-oldest":
            self._make_room(1)
        latest = self.policy == "latest"
        if latest and isinstance(item, Frame) and self._queued.get(item.stream):
            self._drop_oldest_frame(item.stream)
        while len(self._buffer) >= self.capacity:
            # Only a newer frame displaces a frame; a marker waits for room like under block.
            if latest and isinstance(item, Frame) and self._drop_oldest_frame(item.stream):
                break
            self._not_full.clear()
            await self._not_full.wait()
            if self._receiver_gone:
                raise ChannelClosed(f"channel '{self.name}': its receiver has gone")
        seq = self._seq
        self._seq = seq + 1
        previous = -1
        if latest:
            stream = getattr(item, "stream", None)
            if isinstance(stream, str):
                previous = self._last_seq.get(stream, -1)
                self._last_seq[stream] = seq
        self._buffer.append((seq, previous, item))
        if latest and isinstance(item, Frame):
            self._queued[item.stream] = self._queued.get(item.stream, 0) + 1
        self.stats.sent += 1
        self._update_depth()
        self._not_empty.set()

    async def send_many(self, items: Sequence[T]) -> None:
        """Each of ``items`` in order, as :meth:`send` would put them, with one wake-up of
        the receiver per run that fits rather than one per item. Under ``latest`` (where a
        frame may displace another) it is :meth:`send` item by item."""
        if self.policy == "latest":
            for item in items:
                await self.send(item)
            return
        done = 0
        while done < len(items):
            self._check_open()
            if self.policy == "drop-oldest":
                self._make_room(min(len(items) - done, self.capacity))
            room = self.capacity - len(self._buffer)
            if room <= 0:
                self._not_full.clear()
                await self._not_full.wait()
                continue
            run = items[done : done + room]
            for item in run:
                self._buffer.append((self._seq, -1, item))
                self._seq += 1
            done += len(run)
            self.stats.sent += len(run)
            self._update_depth()
            self._not_empty.set()

    def _check_open(self) -> None:
        """Sending needs a producer still open and a receiver still there."""
        if self._producers <= 0:
            raise ChannelClosed(f"channel '{self.name}' is closed")
        if self._receiver_gone:
            raise ChannelClosed(f"channel '{self.name}': its receiver has gone")

    def close_receiver(self) -> None:
        """The receiver has gone: senders waiting for room wake with :class:`ChannelClosed`
        and later sends raise it, so nothing waits for ever on a reader that has left."""
        self._receiver_gone = True
        self._not_full.set()

    @property
    def drained(self) -> bool:
        """Every producer has closed and everything sent has been received."""
        return self._producers <= 0 and not self._buffer and not self._pending_gaps

    def close(self) -> None:
        """One producer is done; after the last one the receiver drains and stops."""
        self._producers -= 1
        if self._producers <= 0:
            self._not_empty.set()

    @property
    def closed(self) -> bool:
        return self._producers <= 0

    # -- receiving ---------------------------------------------------------------------
    async def receive(self) -> T:
        """The next item; ``StopAsyncIteration`` once closed and drained."""
        while True:
            item = self._take()
            if item is not None:
                return item
            if self._producers <= 0:
                raise StopAsyncIteration
            self._not_empty.clear()
            await self._not_empty.wait()

    def take_ready(self, limit: int | None = None) -> list[T]:
        """Everything already buffered (at most ``limit`` items), without waiting."""
        if self.policy != "latest":  # no gaps to interleave: the buffer's head, at once
            buffer = self._buffer
            count = len(buffer) if limit is None else min(limit, len(buffer))
            if not count:
                return []
            taken = [buffer.popleft()[2] for _ in range(count)]
            self.stats.received += count
            self._update_depth()
            self._not_full.set()
            return taken
        items: list[T] = []
        while limit is None or len(items) < limit:
            item = self._take()
            if item is None:
                break
            items.append(item)
        return items

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        return await self.receive()

    def _take(self) -> T | None:
        if self._pending_gaps:
            gap = self._due_gap()
            if gap is not None:
                return gap  # type: ignore[return-value]
        if not self._buffer:
            return None
        _, _, item = self._buffer.popleft()
        if self.policy == "latest" and isinstance(item, Frame):
            self._unqueue(item.stream)
        self.stats.received += 1
        self._update_depth()
        self._not_full.set()
        return item

    def _due_gap(self) -> Gap | None:
        """A pending overflow gap that must come before the next buffered item."""
        if self._buffer:
            seq, _, head = self._buffer[0]
            stream = getattr(head, "stream", None)
            pending = self._pending_gaps.get(stream) if isinstance(stream, str) else None
            if pending is None or pending.first[0] > seq:
                return None  # the head is not of a stream whose frames were dropped before it
        elif self._producers > 0:
            return None  # gaps wait for the stream's next item, or for the close
        else:  # closed and drained: what is left had no later item of its stream
            stream = next(iter(self._pending_gaps))
            pending = self._pending_gaps[stream]
        gap = pending.gaps.pop(0)
        del pending.first[0], pending.last[0]
        if not pending.gaps:
            del self._pending_gaps[gap.stream]
        return gap

    # -- overflow ----------------------------------------------------------------------
    def _make_room(self, count: int) -> None:
        """``drop-oldest``: drop the oldest items until ``count`` more fit (counted in
        outputs: an output block as its ``rows``; per stream where an item has one)."""
        stats = self.stats
        while len(self._buffer) > self.capacity - count:
            _, _, item = self._buffer.popleft()
            rows = getattr(item, "rows", 1)  # an output block counts its outputs
            stats.dropped += rows
            stream = getattr(item, "stream", None)
            if isinstance(stream, str):
                stats.dropped_by_stream[stream] = stats.dropped_by_stream.get(stream, 0) + rows

    def _drop_oldest_frame(self, stream: object) -> bool:
        """Drop the oldest frame of ``stream`` (newest wins per stream), else the oldest."""
        oldest: int | None = None
        for position, (_, _, item) in enumerate(self._buffer):
            if isinstance(item, Frame):
                if item.stream == stream:
                    oldest = position
                    break
                if oldest is None:
                    oldest = position
        if oldest is None:
            return False
        seq, previous, frame = self._buffer[oldest]
        del self._buffer[oldest]
        assert isinstance(frame, Frame)
        self._unqueue(frame.stream)
        stats = self.stats
        stats.dropped += 1
        stats.dropped_by_stream[frame.stream] = stats.dropped_by_stream.get(frame.stream, 0) + 1
        self._record_gap(seq, previous, frame)
        return True

    def _unqueue(self, stream: str) -> None:
        left = self._queued[stream] - 1
        if left:
            self._queued[stream] = left
        else:
            del self._queued[stream]

    def _record_gap(self, seq: int, previous: int, frame: Frame) -> None:
        """Note a dropped frame: it extends the stream's last pending gap when it is the
        very next item of that stream (``previous`` is that gap's last frame) and the next
        index, otherwise it opens a new gap."""
        pending = self._pending_gaps.get(frame.stream)
        if pending is None:
            pending = self._pending_gaps[frame.stream] = _Pending()
        gaps = pending.gaps
        if gaps and pending.last[-1] == previous and gaps[-1].index + gaps[-1].count == frame.index:
            last = gaps[-1]
            gaps[-1] = Gap(last.stream, last.index, last.count + 1, last.pts, last.reason)
            pending.last[-1] = seq
        else:
            gaps.append(Gap(frame.stream, frame.index, 1, frame.pts, f"overflow:{self.name}"))
            pending.first.append(seq)
            pending.last.append(seq)

    def _update_depth(self) -> None:
        depth = len(self._buffer)
        self.stats.depth = depth
        if depth > self.stats.max_depth:
            self.stats.max_depth = depth
