"""The MQTT source: ``mqtt://HOST[:PORT]/TOPIC`` (``mqtts://`` for TLS) subscribes to frames.

Messages are in the format of :mod:`streamer.mqtt.payload` (what ``streamer publish``
sends). The topic may hold wildcards (``streamer/frames/#``). Query keys (besides the
broker's: ``username``, ``password_env``, ``ca``, ``cert``, ``key``, ``tls_insecure``,
``client_id``, ``keepalive``, ``timeout``):

- ``qos`` (0, 1, 2; default 1): the subscription's QoS.
- Which stream a message belongs to: its header's ``stream`` field (default), the topic it
  came on (``stream_by=topic``: one stream per topic), or one fixed stream for everything
  (``stream=NAME``, also ``[source] stream``).
- ``media``, ``rate``, ``shape`` (``512x1``, ``240x320x3``), ``dtype`` (with ``stream=NAME``):
  declare the stream before the run, so the model is checked on it and a video sink can
  draw it; frames that do not match the declared media and rate are skipped as
  malformed. Without them the source declares nothing before the run and each stream is
  described by its first message (the model is then checked at its first frame).
- ``streams`` (default 1): the source ends once this many streams have started and every
  stream it has seen has ended (each ends on its end message); ``streams=0``: never (a
  feed that runs until ``--duration``, ``--max-frames`` or Ctrl-C; a stream that ended
  starts again at a frame with index 0). A subscription that sees nothing waits.
- ``max_bytes`` (default 64 MiB): larger messages are skipped as oversize.
- ``queue`` (messages; default 1024, 16 in realtime mode) and ``queue_mb`` (default 256):
  the bound of the queue of received messages waiting for the pipeline; when full, the
  oldest message is dropped (the newest frames win; counted as ``queue_dropped``, and
  the hole shows as a gap). The broker does not wait for the pipeline, so this bound,
  not back-pressure, is what protects memory from a publisher faster than the pipeline.
- ``retry`` (also set for one of several sources): keep retrying a first connection that
  fails (host down, refused) instead of refusing the source after ``timeout``.
- ``persistent`` (needs ``client_id``): keep the broker-side session across reconnects, so
  QoS 1/2 messages published during an outage are delivered after it (while the broker
  itself stays up).

A stream starts (``StreamStart``, with the first frame's ``meta``) at the first frame
received for it; indices before that one are not reported. After that every hole in the
indices becomes a ``Gap(reason="missing")`` (a gap message keeps its own reason), and a
frame whose index is not above the last one delivered (a duplicate, or out of order) is
skipped and counted as ``out_of_order``. Malformed and oversize messages are skipped and
counted too; a warning says so at most once per :data:`WARN_EVERY` seconds. The counts are
the run summary's ``sources``.

A broker that is down at the start (with ``retry``) or lost mid-run is reconnected with
capped exponential back-off and the topic subscribed again; one warning per outage. A
first connection that fails on credentials or TLS is an :class:`InputError` naming the
broker, whatever ``retry`` says.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd, StreamInfo, StreamStart
from streamer.mqtt.broker import Broker, BrokerOptions, describe, options_from_url, resolve
from streamer.mqtt.payload import (
    DTYPES,
    MAX_BYTES,
    EndMessage,
    FrameMessage,
    GapMessage,
    PayloadError,
    decode,
)
from streamer.options import MAX_RATE, Float, Int, Str
from streamer.sources.base import GeneratorSource, SourceOptions

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
#: Skipped messages are warned about at most once per this many seconds (with a count).
WARN_EVERY = 5.0
QUEUE = 1024
REALTIME_QUEUE = 16


class MqttSourceOptions(BrokerOptions):
    """The source's URL query keys (see the module docstring) on top of the broker's."""

    qos: Annotated[Int, Field(ge=0, le=2)] = 1
    stream: Str | None = None
    stream_by: Literal["field", "topic"] = "field"
    streams: Annotated[Int, Field(ge=0, le=1_000_000)] = 1
    max_bytes: Annotated[Int, Field(ge=64, le=1 << 31)] = MAX_BYTES
    queue: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    queue_mb: Annotated[Float, Field(gt=0, le=1 << 20)] = 256.0
    media: Literal["audio", "video"] | None = None
    rate: Annotated[Float, Field(gt=0, le=MAX_RATE)] | None = None
    shape: Str | None = None
    dtype: Str | None = None
    retry: bool = False
    persistent: bool = False


@dataclass
class SourceCounts:
    """What the source received and skipped (the run summary's ``sources``)."""

    received: int = 0
    frames: int = 0
    malformed: int = 0
    oversize: int = 0
    out_of_order: int = 0
    queue_dropped: int = 0
    reconnects: int = 0


@dataclass
class _Stream:
    info: StreamInfo
    expected: int  # the next index
    next_pts: float
    period: float
    ended: bool = False


def bounded_queue(
    capacity: int, max_bytes: int, on_drop: Callable[[], None]
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An ``asyncio.Queue`` class for aiomqtt's received messages: at most ``capacity``
    messages and ``max_bytes`` payload bytes; a new message past either drops the oldest
    (``drop-oldest``: the newest frames win) and calls ``on_drop``. ``put_nowait`` (what
    aiomqtt's callback calls) never blocks and never raises."""

    class DropOldestQueue(asyncio.Queue["aiomqtt.Message"]):
        _queue: deque[aiomqtt.Message]

        def _init(self, maxsize: int) -> None:
            self._queue = deque()
            self._bytes = 0

        def _put(self, item: aiomqtt.Message) -> None:
            self._queue.append(item)
            self._bytes += _size(item)
            while len(self._queue) > 1 and (len(self._queue) > capacity or self._bytes > max_bytes):
                self._bytes -= _size(self._queue.popleft())
                on_drop()

        def _get(self) -> aiomqtt.Message:
            item = self._queue.popleft()
            self._bytes -= _size(item)
            return item

    return DropOldestQueue


def _size(message: aiomqtt.Message) -> int:
    payload = message.payload
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


class MqttSource(GeneratorSource):
    """Frames from an MQTT subscription (see the module docstring).

    ``subscribed`` is set once the subscription is in place (each time it is again after
    a reconnect), so a test can publish knowing nothing is missed; ``counts`` holds what
    was received and skipped.
    """

    def __init__(self, uri: str, options: SourceOptions, clock: Clock) -> None:
        self.uri = uri
        self.clock = clock
        opts: MqttSourceOptions = options_from_url(uri, uri, MqttSourceOptions)
        self.settings = opts
        self.broker: Broker = resolve(opts, uri)
        self.topic = self.broker.topic
        _check_topic(self.topic, uri)
        self.name = f"source:{self.broker.label}/{self.topic}"
        self.timeout = self.broker.timeout
        self.retry = opts.retry or options.retry
        self.fixed = opts.stream or options.stream
        if opts.stream_by == "topic" and self.fixed is not None:
            raise InputError(f"{uri}: stream_by=topic and stream={self.fixed}: give one of them")
        if opts.persistent and opts.client_id is None:
            raise InputError(
                f"{uri}: persistent: a persistent session needs a client_id=NAME (the broker"
                " keeps the session of that client)"
            )
        self.declared = _declared(opts, self.fixed, uri)
        realtime = options.overflow == "latest"
        self.capacity = opts.queue or (REALTIME_QUEUE if realtime else QUEUE)
        self.counts = SourceCounts()
        self.subscribed = asyncio.Event()
        self._streams: dict[str, _Stream] = {}
        self._order: list[str] = []
        self._warned_at: float | None = None
        self._unwarned = 0

    @property
    def streams(self) -> list[StreamInfo]:
        """The declared stream (``stream=NAME&media=...``), else the streams seen so far
        (none before the run: a network source learns them from its messages)."""
        infos = [self._streams[s].info for s in self._order]
        if self.declared is not None and self.declared.stream not in self._streams:
            infos.insert(0, self.declared)
        return infos

    def report(self) -> dict[str, int]:
        """The counts, for the run summary."""
        return asdict(self.counts)

    # -- the connection ------------------------------------------------------------------
    async def _items(self) -> AsyncGenerator[Item, None]:
        import aiomqtt

        def dropped() -> None:
            self.counts.queue_dropped += 1

        queue = bounded_queue(self.capacity, int(self.settings.queue_mb * 2**20), dropped)
        client = self.broker.client(queue_type=queue, clean_session=not self.settings.persistent)
        connected = False
        down_since: float | None = None
        delay = BACKOFF_FIRST
        while not self._done():
            try:
                async with client:
                    await self._subscribe(client)
                    if down_since is not None:
                        log.warning(
                            "%s: reconnected after %.1f s; subscribed to %s again",
                            self.broker.label,
                            time.monotonic() - down_since,
                            self.topic,
                        )
                        if connected:
                            self.counts.reconnects += 1
                    connected, down_since, delay = True, None, BACKOFF_FIRST
                    self.subscribed.set()
                    async for message in client.messages:
                        for item in self._take(message):
                            yield item
                        if self._done():
                            return
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                if self._closed:
                    return
                if not connected and (not self.retry or _fatal(exc, self.timeout)):
                    raise InputError(self.broker.cannot_connect(exc)) from None
                if down_since is None:
                    down_since = time.monotonic()
                    what = "connection lost" if connected else "cannot connect"
                    log.warning(
                        "%s: %s (%s); reconnecting with back-off",
                        self.broker.label,
                        what,
                        describe(exc, self.timeout),
                    )
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        granted = await client.subscribe(self.topic, qos=self.settings.qos)
        for code in granted if isinstance(granted, list | tuple) else [granted]:
            value: Any = getattr(code, "value", code)
            if int(value) >= 0x80:
                raise InputError(
                    f"{self.broker.label}: the broker refused the subscription to"
                    f" {self.topic} (not allowed for this user?)"
                )

    def _done(self) -> bool:
        """Every stream seen has ended, and at least ``streams`` were seen (never for 0)."""
        wanted = self.settings.streams
        if wanted == 0 or len(self._streams) < wanted:
            return False
        return all(state.ended for state in self._streams.values())

    # -- one message -------------------------------------------------------------------
    def _take(self, message: aiomqtt.Message) -> list[Item]:
        """The items one message makes (none when it is skipped)."""
        self.counts.received += 1
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            decoded = decode(payload, self.settings.max_bytes)
        except PayloadError as exc:
            self._skip(exc.kind, topic, str(exc))
            return []
        stream = self.fixed or (topic if self.settings.stream_by == "topic" else decoded.stream)
        state = self._streams.get(stream)
        if isinstance(decoded, EndMessage):
            return self._end(stream, state, decoded)
        if isinstance(decoded, GapMessage):
            return self._gap(stream, state, decoded, topic)
        return self._frame(stream, state, decoded, topic)

    def _frame(
        self, stream: str, state: _Stream | None, message: FrameMessage, topic: str
    ) -> list[Item]:
        items: list[Item] = []
        if state is None or state.ended:
            if state is not None and message.index != 0:
                self._skip("out_of_order", topic, f"frame {message.index} of ended '{stream}'")
                return []
            info = self._describe(stream, message)
            if info is None:
                self._skip("malformed", topic, f"not the declared {self._declaration()}")
                return []
            meta: dict[str, Any] = {**(message.meta or {}), "topic": topic}
            items.append(StreamStart(stream, info.media, info.rate, meta, info))
            if state is None:
                self._order.append(stream)
            state = self._streams[stream] = _Stream(info, message.index, message.pts, 0.0)
        info = state.info
        if (message.media, message.rate) != (info.media, info.rate):
            self._skip("malformed", topic, f"'{stream}' is {info.media} at {info.rate:g}, not this")
            return items
        if message.index < state.expected:
            self._skip("out_of_order", topic, f"frame {message.index} of '{stream}' again")
            return items
        if message.index > state.expected:
            count = message.index - state.expected
            items.append(Gap(stream, state.expected, count, state.next_pts, "missing"))
        data = message.data
        now = self.clock.now()
        items.append(Frame(stream, message.index, message.pts, now, data, info.rate, info))
        self.counts.frames += 1
        period = len(data) / info.rate if info.media == "audio" else 1.0 / info.rate
        state.expected, state.next_pts, state.period = (
            message.index + 1,
            message.pts + period,
            period,
        )
        return items

    def _gap(
        self, stream: str, state: _Stream | None, message: GapMessage, topic: str
    ) -> list[Item]:
        if state is None or state.ended:
            return []  # nothing started: the next frame's index says where it begins
        end = message.index + message.count
        if end <= state.expected:
            self._skip("out_of_order", topic, f"gap {message.index}+{message.count} again")
            return []
        items: list[Item] = []
        if message.index > state.expected:
            count = message.index - state.expected
            items.append(Gap(stream, state.expected, count, state.next_pts, "missing"))
        start = max(message.index, state.expected)
        pts = message.pts + (start - message.index) * state.period
        items.append(Gap(stream, start, end - start, pts, message.reason))
        state.expected, state.next_pts = end, message.pts + message.count * state.period
        return items

    def _end(self, stream: str, state: _Stream | None, message: EndMessage) -> list[Item]:
        if state is None or state.ended:
            return []  # the end of a stream this subscription never saw begin
        items: list[Item] = []
        if message.frames > state.expected:
            count = message.frames - state.expected
            items.append(Gap(stream, state.expected, count, state.next_pts, "missing"))
        items.append(StreamEnd(stream, message.frames, message.reason))
        state.ended = True
        return items

    def _describe(self, stream: str, message: FrameMessage) -> StreamInfo | None:
        """The stream's info: the declared one (None if the message does not match it),
        else from this first message."""
        declared = self.declared
        if declared is not None:
            if (declared.media, declared.rate) != (message.media, message.rate):
                return None
            return declared
        data = message.data
        return StreamInfo(stream, message.media, message.rate, data.shape, data.dtype, live=True)

    def _declaration(self) -> str:
        declared = self.declared
        return "" if declared is None else f"{declared.media} at {declared.rate:g}"

    def _skip(self, kind: str, topic: str, why: str) -> None:
        """Count a skipped message; warn at most once per WARN_EVERY seconds."""
        setattr(self.counts, kind, getattr(self.counts, kind) + 1)
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            self._unwarned += 1
            return
        since = f"; {self._unwarned} more skipped since the last warning" if self._unwarned else ""
        log.warning(
            "%s: skipped a%s %s message on %s (%s)%s",
            self.name,
            "n" if kind[0] in "aeiou" else "",
            kind.replace("_", "-"),
            topic,
            why,
            since,
        )
        self._warned_at, self._unwarned = now, 0


def _fatal(exc: BaseException, timeout: float) -> bool:
    """A failure that retrying cannot mend: credentials or TLS."""
    return describe(exc, timeout).startswith(("not authorised", "TLS"))


def _check_topic(topic: str, uri: str) -> None:
    """A subscription topic filter: not empty, ``#`` only as the last level, ``+`` a whole
    level."""
    if not topic:
        raise InputError(f"{uri}: no topic to subscribe to; expected mqtt://HOST[:PORT]/TOPIC")
    levels = topic.split("/")
    for number, level in enumerate(levels):
        if "#" in level and (level != "#" or number != len(levels) - 1):
            raise InputError(f"{uri}: topic {topic}: '#' must be a whole last level ('a/#')")
        if "+" in level and level != "+":
            raise InputError(f"{uri}: topic {topic}: '+' must be a whole level ('a/+/b')")


_SHAPE = re.compile(r"^\d+(x\d+){0,7}$")


def _declared(opts: MqttSourceOptions, stream: str | None, uri: str) -> StreamInfo | None:
    """The stream the URL declares (``stream=NAME&media=...&rate=...``), or None."""
    keys = {k: getattr(opts, k) for k in ("media", "rate", "shape", "dtype")}
    given = [k for k, v in keys.items() if v is not None]
    if not given:
        return None
    if stream is None or opts.media is None or opts.rate is None:
        raise InputError(
            f"{uri}: {', '.join(given)}: declaring a stream needs stream=NAME, media=audio|video"
            " and rate=N (and optionally shape=AxB... and dtype)"
        )
    shape: tuple[int, ...] | None = None
    if opts.shape is not None:
        if not _SHAPE.match(opts.shape):
            raise InputError(f"{uri}: shape {opts.shape!r}: expected sizes such as 512x1")
        shape = tuple(int(n) for n in opts.shape.split("x"))
        if 0 in shape:
            raise InputError(f"{uri}: shape {opts.shape!r}: sizes must be >= 1")
    default = "uint8" if opts.media == "video" else "float32"
    dtype = opts.dtype or default
    if dtype not in DTYPES:
        raise InputError(f"{uri}: dtype {dtype!r}: expected one of {' '.join(sorted(DTYPES))}")
    if not math.isfinite(opts.rate):
        raise InputError(f"{uri}: rate must be finite")
    return StreamInfo(stream, opts.media, opts.rate, shape, np.dtype(dtype), live=True)


def open_mqtt(uri: str, options: SourceOptions, clock: Clock) -> MqttSource:
    """``mqtt://...`` / ``mqtts://...`` (the registered opener of both schemes)."""
    return MqttSource(uri, options, clock)
