"""``streamer publish SOURCE URL``: send any source's frames to an MQTT broker.

Every item of the source goes out in the format of :mod:`streamer.mqtt.payload`: a frame
as a binary frame message (the stream's start ``meta`` with its first frame), a gap as a
gap message, a stream's end as an end message, each to the URL's topic, a template whose
``{stream}`` is the stream id (default :data:`DEFAULT_TOPIC`). So a remote device feeds a
pipeline elsewhere (``streamer run ... --source mqtt://broker/streamer/frames/#``).

QoS 1 by default: each message is acknowledged by the broker; up to :data:`WINDOW` wait
for their acknowledgement at once, in order (paho sends them in the order published). The
source is read only as fast as the broker takes its frames: while the connection is
down, nothing is read (a live device's own buffer then drops frames, which it reports as
gaps; a file just waits). A lost connection is reconnected with capped back-off (one
warning per outage); messages whose acknowledgement never came are counted as
``unconfirmed``. The first connection must succeed within the broker's ``timeout``.

Limits, as ``streamer record`` has them: ``duration`` (media seconds per stream) and
``max_frames`` (frames per stream) end a stream with that reason (its end message says
so); once a limit cut a stream, publishing stops when every stream seen has ended. A
``stop`` event (the first Ctrl-C) ends every open stream with reason ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd, StreamStart
from streamer.mqtt.broker import (
    Broker,
    BrokerOptions,
    check_template,
    describe,
    options_from_url,
    resolve,
)
from streamer.mqtt.payload import encode_end, encode_frame, encode_gap
from streamer.options import Int
from streamer.sources.base import Source

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "streamer/frames/{stream}"
#: Messages awaiting the broker's acknowledgement at once (QoS 1 and 2).
WINDOW = 64
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0


class PublishOptions(BrokerOptions):
    """``streamer publish``'s URL query keys: the broker's, and ``qos`` (default 1)."""

    qos: Annotated[Int, Field(ge=0, le=2)] = 1


@dataclass
class PublishSummary:
    """What was published: frames per stream (in order of first appearance), gap and end
    messages, messages never acknowledged, reconnections."""

    frames: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    ends: int = 0
    unconfirmed: int = 0
    reconnects: int = 0

    def line(self, broker: Broker, qos: int) -> str:
        streams = ", ".join(f"'{s}' {n} frames" for s, n in self.frames.items()) or "no frames"
        extra = f"; {self.unconfirmed} never acknowledged" if self.unconfirmed else ""
        again = f"; reconnected {self.reconnects} times" if self.reconnects else ""
        return f"published {streams} to {broker.label} (QoS {qos}){extra}{again}"


def publish_target(url: str, what: str = "URL") -> tuple[Broker, int]:
    """The broker and QoS of ``url`` (``mqtt[s]://HOST[:PORT][/TOPIC][?qos=..&...]``); the
    topic template may name ``{stream}`` and nothing else, and holds no wildcard."""
    options: PublishOptions = options_from_url(url, what, PublishOptions)
    broker = resolve(options, what, DEFAULT_TOPIC)
    check_template(broker.topic, "topic", what, ("stream",))
    return broker, options.qos


async def publish(
    source: Source,
    broker: Broker,
    *,
    qos: int = 1,
    duration: float | None = None,
    max_frames: int | None = None,
    stop: asyncio.Event | None = None,
) -> PublishSummary:
    """Publish every item of ``source`` (see the module docstring); raises
    :class:`InputError` naming the broker when the first connection fails."""
    return await _Publisher(source, broker, qos, duration, max_frames, stop).run()


class _Lost(Exception):
    """The connection broke while publishing (a publish failed)."""


class _Publisher:
    def __init__(
        self,
        source: Source,
        broker: Broker,
        qos: int,
        duration: float | None,
        max_frames: int | None,
        stop: asyncio.Event | None,
    ) -> None:
        self.source = source
        self.broker = broker
        self.qos = qos
        self.duration = duration
        self.max_frames = max_frames
        self.stop = stop or asyncio.Event()
        self.summary = PublishSummary()
        self._lost = asyncio.Event()
        self._window = asyncio.Semaphore(WINDOW)
        self._stopped: asyncio.Future[Any] | None = None

    async def run(self) -> PublishSummary:
        import aiomqtt

        client = self.broker.client()
        client.pending_calls_threshold = WINDOW + 1  # the window is the bound, not a problem
        messages = self._messages()
        pending: tuple[str, bytes] | None = None
        connected = False
        down_since: float | None = None
        delay = BACKOFF_FIRST
        try:
            while True:
                try:
                    async with client:
                        if down_since is not None:
                            log.warning(
                                "%s: reconnected after %.1f s",
                                self.broker.label,
                                time.monotonic() - down_since,
                            )
                            self.summary.reconnects += 1
                        connected, down_since, delay = True, None, BACKOFF_FIRST
                        self._lost.clear()
                        async with asyncio.TaskGroup() as acks:
                            while True:
                                if pending is None:
                                    pending = await anext(messages, None)
                                    if pending is None:
                                        break
                                await self._window.acquire()
                                if self._lost.is_set():
                                    self._window.release()
                                    raise _Lost
                                topic, payload = pending
                                acks.create_task(self._send(client, topic, payload))
                                pending = None
                    return self.summary
                except (aiomqtt.MqttError, _Lost) as exc:
                    if not connected:
                        raise InputError(self.broker.cannot_connect(exc)) from None
                    if down_since is None:
                        down_since = time.monotonic()
                        why = (
                            "a publish failed"
                            if isinstance(exc, _Lost)
                            else describe(exc, self.broker.timeout)
                        )
                        log.warning(
                            "%s: connection lost (%s); reconnecting with back-off",
                            self.broker.label,
                            why,
                        )
                    await asyncio.sleep(delay)
                    delay = min(BACKOFF_MAX, delay * 2)
        finally:
            await messages.aclose()
            await self._close()

    async def _send(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One publish, awaiting its acknowledgement (QoS 1, 2); a failure marks the
        connection lost rather than failing the run."""
        import aiomqtt

        try:
            await client.publish(topic, payload, qos=self.qos)
        except aiomqtt.MqttError:
            self.summary.unconfirmed += 1
            self._lost.set()
        finally:
            self._window.release()

    async def _messages(self) -> AsyncGenerator[tuple[str, bytes], None]:
        """(topic, payload) for each item of the source, within the limits; the open
        streams' end messages when stopped."""
        metas: dict[str, dict[str, Any]] = {}
        open_streams: dict[str, int] = {}  # stream -> frames so far
        cut = False
        items = aiter(self.source)
        while True:
            item = await self._next(items)
            if item is None:
                break
            stream = item.stream
            if isinstance(item, StreamStart):
                metas[stream] = dict(item.meta)
                open_streams[stream] = 0
                self.summary.frames.setdefault(stream, 0)
                continue
            if stream not in open_streams:
                continue  # a stream a limit already ended
            topic = self.broker.topic.replace("{stream}", stream)
            if isinstance(item, Frame):
                if self.duration is not None and item.pts >= self.duration:
                    yield self._end(topic, stream, open_streams, "duration")
                    cut = True
                else:
                    yield topic, encode_frame(item, metas.pop(stream, None))
                    self.summary.frames[stream] += 1
                    open_streams[stream] = item.index + 1
                    limit = self.max_frames
                    if limit is not None and self.summary.frames[stream] >= limit:
                        yield self._end(topic, stream, open_streams, "max-frames")
                        cut = True
            elif isinstance(item, Gap):
                yield topic, encode_gap(item)
                self.summary.gaps += 1
                open_streams[stream] = item.index + item.count
            elif isinstance(item, StreamEnd):
                open_streams[stream] = item.frames
                yield self._end(topic, stream, open_streams, item.reason)
            if cut and not open_streams:
                break
        for stream in list(open_streams):
            topic = self.broker.topic.replace("{stream}", stream)
            yield self._end(topic, stream, open_streams, "stopped")

    def _end(
        self, topic: str, stream: str, open_streams: dict[str, int], reason: str
    ) -> tuple[str, bytes]:
        self.summary.ends += 1
        return topic, encode_end(stream, open_streams.pop(stream), reason)

    async def _next(self, items: AsyncIterator[Item]) -> Item | None:
        """The source's next item, or None at its end or once ``stop`` is set (the read in
        progress is then cancelled)."""
        if self.stop.is_set():
            return None
        if self._stopped is None:  # one waiter for the whole run, not one per item
            self._stopped = asyncio.ensure_future(self.stop.wait())
        read = asyncio.ensure_future(anext(items, None))
        try:
            await asyncio.wait((read, self._stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
        if read.cancelled():
            return None
        return read.result()

    async def _close(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopped
