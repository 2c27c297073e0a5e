"""The state the live view shows, shared by the web sink (which fills it) and the server's
handlers (which read it): the streams, each stream's recent outputs and newest annotated
JPEG, the run's health.

Everything here is bounded and nothing waits on a client: outputs go into a ring of the
newest :data:`RING` (each client keeps a cursor into it, so a slow client skips to the
newest rather than queueing) and into each stream's history of the last ``history_s``
seconds (what a page that connects gets first). Each output's JSON text is made once, when
a client first needs it, and shared by every client. Waiters (a WebSocket's sender, an
MJPEG client) wait on a :class:`Signal`, which wakes them all at once: the WebSocket
clients on the server's ticks, so that those equally up to date share one message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.blocks import OutputBlock
from streamer.frames import Output, encode_record

#: Outputs kept for clients that are behind (each gets at most these, the newest).
RING = 4096
#: Outputs kept per stream for a page that connects (besides the ``history_s`` bound).
MAX_HISTORY = 20_000
#: The most outputs in one ``outputs`` message.
BATCH = 2000
#: Seconds a computed health report is reused.
HEALTH_TTL_S = 0.25


class Signal:
    """Wakes every task waiting on it (one shared future; a waiter's cancellation does
    not cancel the others'). ``notify`` with nobody waiting costs one attribute test."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def notify(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, within: float | None = None) -> None:
        """Until the next :meth:`notify`, or ``within`` seconds."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        future = self._future
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(future)
        except TimeoutError:
            pass


class _BlockLines:
    """A block's JSONL lines, made in one pass when a client first needs one of them."""

    __slots__ = ("block", "lines")

    def __init__(self, block: OutputBlock) -> None:
        self.block = block
        self.lines: list[str] | None = None

    def line(self, row: int) -> str:
        if self.lines is None:
            self.lines = self.block.jsonl().split("\n")
        return self.lines[row]


class Entry:
    """One output as the view keeps it: a live :class:`Output`, a row of a block of them
    (``lines``, ``row``), or a review's record."""

    __slots__ = ("_json", "lines", "output", "pts", "record", "row", "seq", "stream")

    def __init__(
        self,
        seq: int,
        stream: str,
        pts: float,
        *,
        output: Output | None = None,
        record: dict[str, Any] | None = None,
        lines: _BlockLines | None = None,
        row: int = 0,
    ) -> None:
        self.seq = seq
        self.stream = stream
        self.pts = pts
        self.output = output
        self.record = record
        self.lines = lines
        self.row = row
        self._json: str | None = None

    def as_record(self) -> dict[str, Any]:
        if self.record is None:
            if self.output is not None:
                self.record = self.output.to_json()
            else:
                self.record = json.loads(self.json())
        return self.record

    def json(self) -> str:
        """The JSON text of its record (the JSONL line's), made once."""
        if self._json is None:
            if self.lines is not None:
                self._json = self.lines.line(self.row)
            else:
                self._json = encode_record(self.as_record())
        return self._json


@dataclass(eq=False)
class StreamView:
    """One stream as the page sees it."""

    name: str
    media: str
    rate: float | None
    video: bool
    ended: bool = False
    history: deque[Entry] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    #: the newest output with scores a frame can show (frame, window), for the overlay
    shown: Output | None = None
    jpeg: bytes | None = None
    jpeg_seq: int = 0
    #: MJPEG clients watching it now (the sink encodes frames only while there are some)
    watchers: int = 0
    frames: Signal = field(default_factory=Signal)

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.name,
            "media": self.media,
            "rate": self.rate,
            "video": self.video,
            "ended": self.ended,
        }


class Hub:
    """The view's state. ``mode``: ``live`` or ``review``; ``history_s``: seconds of
    outputs per stream a connecting page gets (live; a review keeps everything);
    ``health``: makes the health report (None: there is none)."""

    def __init__(
        self,
        mode: str,
        history_s: float,
        health: Callable[[], dict[str, Any]] | None = None,
        hello: dict[str, Any] | None = None,
    ) -> None:
        self.mode = mode
        self.history_s = history_s
        self.streams: dict[str, StreamView] = {}
        self.seq = 0  # outputs added so far (an entry's seq is its number, from 1)
        self.version = 0  # bumped by every change a WebSocket client is told of
        self.streams_version = 0
        #: fired by the server at most ``WS_MAX_RATE`` times a second when something
        #: changed: its WebSocket clients wake together and share the messages made
        self.ticks = Signal()
        self.closed = False
        self._ring: deque[Entry] = deque(maxlen=RING)
        #: the last ``outputs_since`` answers: (cursor, seq) -> messages, shared by the
        #: clients that are equally up to date (most of them, most of the time)
        self._texts: dict[tuple[int, int], list[str]] = {}
        self._snapshot_texts: tuple[int, list[str]] | None = None
        self._health = health
        self._health_cache: tuple[float, dict[str, Any], str] | None = None
        self._hello = dict(hello or {})

    # -- filling (the sink, or the review's loader) -------------------------------------
    def add_stream(
        self, name: str, media: str, rate: float | None, video: bool, ended: bool = False
    ) -> StreamView:
        """The stream ``name`` (made, or marked started again)."""
        view = self.streams.get(name)
        if view is None:
            view = self.streams[name] = StreamView(name, media, rate, video, ended)
            if self.mode == "review":  # a finished run's file is kept whole
                view.history = deque()
        elif view.ended != ended:
            view.ended = ended
        else:
            return view
        self._streams_changed()
        return view

    def end_stream(self, name: str) -> None:
        view = self.streams.get(name)
        if view is not None and not view.ended:
            view.ended = True
            view.frames.notify()
            self._streams_changed()

    def _streams_changed(self) -> None:
        self.streams_version += 1
        self.version += 1

    def add_outputs(self, outputs: Iterable[Output]) -> None:
        """Outputs from the run, in order."""
        added = False
        for output in outputs:
            view = self.streams.get(output.stream)
            if view is None:  # a stream learnt from its outputs (an audio stream, say)
                view = self.add_stream(output.stream, "unknown", None, False)
            if output.kind in ("frame", "window"):
                view.shown = output
            self.seq += 1
            self._keep(view, Entry(self.seq, output.stream, float(output.pts), output=output))
            added = True
        if added:
            self.version += 1

    def add_block(self, block: OutputBlock) -> None:
        """A block of outputs from the run; its rows' JSON is its JSONL lines, made only
        when a client needs them."""
        if not len(block):
            return
        lines = _BlockLines(block)
        newest: dict[str, int] = {}
        for row, (stream, pts) in enumerate(zip(block.streams, block.pts, strict=True)):
            view = self.streams.get(stream)
            if view is None:
                view = self.add_stream(stream, "unknown", None, False)
            self.seq += 1
            self._keep(view, Entry(self.seq, stream, float(pts), lines=lines, row=row))
            newest[stream] = row
        if block.kind in ("frame", "window"):
            for stream, row in newest.items():
                self.streams[stream].shown = _row_output(block, row)
        self.version += 1

    def add_records(self, records: Iterable[dict[str, Any]]) -> None:
        """JSONL records (a review's file), in order; kept whole."""
        for record in records:
            stream = str(record.get("stream"))
            view = self.streams.get(stream) or self.add_stream(stream, "unknown", None, False)
            self.seq += 1
            pts = record.get("pts")
            at = float(pts) if isinstance(pts, int | float) else 0.0
            view.history.append(Entry(self.seq, stream, at, record=record))
        self.version += 1

    def _keep(self, view: StreamView, entry: Entry) -> None:
        self._ring.append(entry)
        history = view.history
        history.append(entry)
        oldest = entry.pts - self.history_s
        while history[0].pts < oldest:
            history.popleft()

    def set_jpeg(self, stream: str, jpeg: bytes) -> None:
        """The stream's newest annotated frame; wakes its MJPEG clients."""
        view = self.streams.get(stream)
        if view is None:
            return
        view.jpeg = jpeg
        view.jpeg_seq += 1
        view.frames.notify()

    def close(self) -> None:
        """Wake every waiter for the last time: the server is stopping."""
        self.closed = True
        self._health_cache = None  # the last report the clients get is the run's last
        self.ticks.notify()
        for view in self.streams.values():
            view.frames.notify()

    # -- reading (the handlers) ----------------------------------------------------------
    async def next_frame(self, stream: str, after: int) -> tuple[int, bytes] | None:
        """The stream's newest JPEG once it is newer than number ``after``; None when the
        stream ended (its last frame sent) or the server stops."""
        view = self.streams[stream]
        while not self.closed:
            if view.jpeg is not None and view.jpeg_seq > after:
                return view.jpeg_seq, view.jpeg
            if view.ended:
                return None
            await view.frames.wait()
        return None

    async def wait_tick(self, within: float) -> None:
        """Until the next tick (or ``within`` seconds); at once once closed."""
        if not self.closed:
            await self.ticks.wait(within)

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "mode": self.mode, "history_s": self.history_s, **self._hello}

    def streams_message(self) -> dict[str, Any]:
        return {"type": "streams", "streams": [v.as_json() for v in self.streams.values()]}

    def snapshot(self) -> list[Entry]:
        """Every stream's kept outputs, in order: what a page that connects gets first."""
        entries = [entry for view in self.streams.values() for entry in view.history]
        entries.sort(key=lambda entry: entry.seq)
        return entries

    def snapshot_messages(self) -> tuple[list[str], int]:
        """:meth:`snapshot` as ``outputs`` messages, and the cursor after it: made once
        per state of the hub, so that pages connecting together (20 browsers after a
        network blip, a review's viewers) share them."""
        cached = self._snapshot_texts
        if cached is None or cached[0] != self.seq:
            cached = self._snapshot_texts = (self.seq, self.outputs_messages(self.snapshot()))
        return cached[1], cached[0]

    def since(self, cursor: int) -> list[Entry]:
        """The outputs after number ``cursor`` (at most the newest :data:`RING`)."""
        ring = self._ring
        if not ring or ring[-1].seq <= cursor:
            return []
        first = max(0, len(ring) - (ring[-1].seq - cursor))
        return [ring[i] for i in range(first, len(ring))]

    def outputs_since(self, cursor: int) -> tuple[list[str], int]:
        """The ``outputs`` messages of what came after number ``cursor`` (see
        :meth:`since`) and the new cursor; made once for all clients at that cursor."""
        key = (cursor, self.seq)
        texts = self._texts.get(key)
        if texts is None:
            texts = self.outputs_messages(self.since(cursor))
            if len(self._texts) >= 8:
                self._texts.clear()
            self._texts[key] = texts
        return texts, self.seq

    @staticmethod
    def outputs_messages(entries: list[Entry]) -> list[str]:
        """``outputs`` messages (JSON text) of ``entries``, at most :data:`BATCH` each."""
        return [
            '{"type":"outputs","outputs":['
            + ",".join(entry.json() for entry in entries[i : i + BATCH])
            + "]}"
            for i in range(0, len(entries), BATCH)
        ]

    def health(self) -> dict[str, Any]:
        """The run's health now (computed at most every :data:`HEALTH_TTL_S`)."""
        return self._health_now()[1]

    def health_text(self) -> str:
        """:meth:`health` as JSON text (made once for every client)."""
        return self._health_now()[2]

    def _health_now(self) -> tuple[float, dict[str, Any], str]:
        now = time.monotonic()
        cached = self._health_cache
        if cached is None or now - cached[0] >= HEALTH_TTL_S:
            report = {"type": "health", **(self._health() if self._health else {})}
            cached = self._health_cache = (now, report, json.dumps(report, allow_nan=False))
        return cached


def _row_output(block: OutputBlock, row: int) -> Output:
    """Row ``row`` of ``block`` as an :class:`Output` (what the overlay draws)."""
    latency = block.latency_ms[row] if block.latency_ms is not None else None
    return Output(
        block.streams[row],
        block.kind,
        block.starts[row],
        block.ends[row],
        block.pts[row],
        block.labels[row],
        dict(zip(block.names, block.scores[row].tolist(), strict=True)),
        block.captured[row],
        latency,
    )
