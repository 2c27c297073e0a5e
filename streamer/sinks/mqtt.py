"""The MQTT sink: every output published as JSON to a topic template, through a bounded
buffer that outlives the broker's outages.

Messages. One message per output; its payload is exactly the output's JSONL line (no
newline). With ``blocks = true``, the rows of one model call (an
:class:`~streamer.blocks.OutputBlock`) that share a topic go out as ONE message, a JSON
array of those lines (``[{...},{...}]``); an output that comes alone is an array of one.
The topic is a template (``streamer/{stream}/{kind}`` by default, from the URL's path or
the ``topic`` key) over the fields :data:`TOPIC_FIELDS`; a value's ``/``, ``+`` and ``#``
become ``_`` so that a stream id cannot add topic levels or wildcards, and a missing
label is ``none``.

Status. On every connection the sink publishes a retained ``{"status": "online", ...}``
to ``status_topic`` (default ``streamer/status``, may name ``{client_id}``; empty: none),
and sets a retained ``{"status": "offline", "clean": false, ...}`` as the connection's
last will; a clean close publishes ``{"status": "offline", "clean": true, ...}``.

Never blocking, bounded. ``send`` only encodes and appends to a buffer of unsent
messages (``buffer`` messages; full: the oldest is dropped and counted); the publisher,
one task owned by the sink (started at the first output, cancelled and awaited in
``aclose``), connects, publishes in order and, when the connection is lost, reconnects
with a capped exponential back-off (0.1 s doubling to ``reconnect_max``) and goes on from
the oldest message still buffered. A message counts as published when aiomqtt's publish
returns (QoS 1 and 2: acknowledged by the broker); the one in flight when the connection
drops goes back to the head of the buffer, so QoS >= 1 is at-least-once (the broker may
have taken it before it died: a subscriber can see it twice). QoS 0 is at-most-once.
The sink's edge drops its oldest outputs when full (``default_policy = "drop-oldest"``),
so the model stage never waits for a broker.

Closing. The publisher gets ``drain_timeout`` seconds to flush the buffer (a publisher
that is between connections gets one more try right away, no back-off); what is left
counts as dropped. An abort (second Ctrl-C) does not wait. The summary's ``sinks``
section of the sink reports ``published``, ``buffered`` (waiting now; ``buffer_peak``:
the most at once, in messages), ``dropped`` (the edge's drops + ``overflow`` + ``unsent``
at close), and published + dropped equals the outputs the run produced.

Outage or bad configuration. A broker that cannot be reached (refused, no answer) is an
outage, at start as mid-run: the run goes on, the sink warns once (naming host, port and
why) and once more when it is connected again. A broker that answers but refuses the
credentials (or the client id), or a TLS handshake that fails, at the FIRST connection is
bad configuration: the run fails with one line naming the broker (exit code 2), at the
next output or at close. The same refusal after a connection once worked (a broker
restarted with other settings) is treated as an outage and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from streamer.blocks import OutputBlock
from streamer.errors import InputError
from streamer.frames import Output
from streamer.mqtt.broker import Broker, BrokerOptions, check_template, resolve, split_url
from streamer.options import Bool, Float, Int, Str
from streamer.sinks.base import SinkContext, SinkOptions

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)
# paho's own log (a failed read when the broker goes away...): the sink says it once, in
# its own words, so paho's lines stay below what reaches stderr.
_client_log = logging.getLogger(f"{__name__}.client")
_client_log.setLevel(logging.CRITICAL)

DEFAULT_TOPIC = "streamer/{stream}/{kind}"
DEFAULT_STATUS_TOPIC = "streamer/status"
#: The fields a topic template may name.
TOPIC_FIELDS = ("stream", "kind", "label", "client_id")
#: The first pause before a reconnection (doubled after each failed try).
RECONNECT_MIN = 0.1
# CONNACK codes that mean "you are not welcome" (3.1.1 and 5): identifier rejected, bad
# user name or password, not authorised. Refused at the first connection: bad config.
_REFUSALS = {2, 4, 5, 133, 134, 135}
_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})

#: A buffered message: topic, payload, and how many outputs it carries.
Message = tuple[str, str, int]


class MqttSinkConfig(SinkOptions, BrokerOptions):
    """``type = "mqtt"``: every output as JSON to ``url``'s broker.

    ``topic``: the template (default: the URL's path, else ``streamer/{stream}/{kind}``);
    ``qos`` 0, 1 or 2; ``retain``; ``blocks``: a model call's rows as one message (a JSON
    array); ``status_topic``; ``buffer``: unsent messages kept; ``reconnect_max``: the
    longest pause between reconnections (s); ``drain_timeout``: seconds to flush at close.
    The connection's keys are :class:`~streamer.mqtt.broker.BrokerOptions`'."""

    type: Literal["mqtt"]
    topic: Str | None = None
    qos: Annotated[Int, Field(ge=0, le=2)] = 1
    retain: Bool = False
    blocks: Bool = False
    status_topic: Str = DEFAULT_STATUS_TOPIC
    buffer: Annotated[Int, Field(ge=1, le=10_000_000)] = 10_000
    reconnect_max: Annotated[Float, Field(gt=0, le=3600)] = 5.0
    drain_timeout: Annotated[Float, Field(ge=0, le=3600)] = 5.0


class MqttSink:
    """Publishes outputs to ``broker`` (see the module's docstring for the behaviour).

    Counts (outputs): ``received``, ``published``, ``overflow`` (dropped from a full
    buffer), ``unsent`` (left at close), ``rejected`` (a topic the client refuses: empty
    or too long); :meth:`counts` is what the run summary shows."""

    takes_blocks = True  # a block's lines come from OutputBlock.jsonl in one pass
    default_policy = "drop-oldest"  # a broker's outage never holds up the model stage

    def __init__(
        self,
        broker: Broker,
        topic: str = DEFAULT_TOPIC,
        *,
        qos: int = 1,
        retain: bool = False,
        blocks: bool = False,
        status_topic: str = DEFAULT_STATUS_TOPIC,
        buffer: int = 10_000,
        reconnect_max: float = 5.0,
        drain_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        self.client_id = broker.client_id or f"streamer-{secrets.token_hex(4)}"
        if broker.client_id is None:
            from dataclasses import replace

            broker = replace(broker, client_id=self.client_id)
        self.broker = broker
        self.template = topic
        self.name = name or f"sink:mqtt:{topic}"
        self.qos = qos
        self.retain = retain
        self.blocks = blocks
        self.status_topic = (
            status_topic.replace("{client_id}", self.client_id) if status_topic else None
        )
        self.capacity = buffer
        self.reconnect_max = reconnect_max
        self.drain_timeout = drain_timeout
        self.received = self.published = self.overflow = self.unsent = self.rejected = 0
        self.buffer_peak = 0
        self._buffer: deque[Message] = deque()
        self._inflight: Message | None = None
        self._topics: dict[tuple[str, str, str | None], str] = {}
        self._wake = asyncio.Event()  # a message was buffered, or the sink is closing
        self._closing = asyncio.Event()
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        self._fatal: InputError | None = None
        self._fatal_raised = False
        self._closed = False

    # -- the pipeline's side: never waits on the network ---------------------------------
    @property
    def connected(self) -> bool:
        """Whether the publisher holds a connection to the broker now."""
        return self._connected

    def counts(self) -> dict[str, int]:
        """The summary's figures: outputs, except ``buffered`` and ``buffer_peak``
        (messages)."""
        return {
            "received": self.received,
            "published": self.published,
            "buffered": len(self._buffer) + (self._inflight is not None),
            "buffer_peak": self.buffer_peak,
            "overflow": self.overflow,
            "unsent": self.unsent,
            "rejected": self.rejected,
            "dropped": self.overflow + self.unsent + self.rejected,
        }

    async def send(self, output: Output) -> None:
        self._check()
        self._push_output(output)
        self._start()

    def _push_output(self, output: Output) -> None:
        self.received += 1
        line = output.json_line()
        topic = self._topic(output.stream, output.kind, output.label)
        self._push((topic, f"[{line}]" if self.blocks else line, 1))

    async def send_many(self, outputs: Sequence[Output | OutputBlock]) -> None:
        """Outputs and blocks of them, in order (a block's lines in one pass)."""
        self._check()
        for item in outputs:
            if not isinstance(item, OutputBlock):
                self._push_output(item)
                continue
            rows = len(item)
            if not rows:
                continue
            self.received += rows
            lines = item.jsonl().split("\n")  # JSON escapes newlines within a line
            kind, topic_of = item.kind, self._topic
            topics = [
                topic_of(stream, kind, label)
                for stream, label in zip(item.streams, item.labels, strict=True)
            ]
            if not self.blocks:
                for topic, line in zip(topics, lines, strict=False):
                    self._push((topic, line, 1))
                continue
            grouped: dict[str, list[str]] = {}
            for topic, line in zip(topics, lines, strict=False):
                grouped.setdefault(topic, []).append(line)
            for topic, group in grouped.items():
                self._push((topic, "[" + ",".join(group) + "]", len(group)))
        self._start()

    def _check(self) -> None:
        if self._fatal is not None:
            self._fatal_raised = True
            raise self._fatal
        if self._closed:
            raise RuntimeError(f"{self.name}: send after close")

    def _topic(self, stream: str, kind: str, label: str | None) -> str:
        key = (stream, kind, label)
        topic = self._topics.get(key)
        if topic is None:
            if len(self._topics) >= 4096:  # many labels or streams: stay bounded
                self._topics.clear()
            topic = self._topics[key] = self.template.format(
                stream=stream.translate(_UNSAFE),
                kind=kind,
                label=(label if label is not None else "none").translate(_UNSAFE),
                client_id=self.client_id.translate(_UNSAFE),
            )
        return topic

    def _push(self, message: Message) -> None:
        buffer = self._buffer
        if len(buffer) >= self.capacity:
            self.overflow += buffer.popleft()[2]
        buffer.append(message)
        if len(buffer) > self.buffer_peak:
            self.buffer_peak = len(buffer)
        self._wake.set()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publisher(), name=f"{self.name} publisher"
            )

    async def start(self) -> None:
        """Start the publisher now (it connects and says ``online``) rather than at the
        first output."""
        self._check()
        self._start()

    async def aclose(self) -> None:
        """Flush for at most ``drain_timeout`` seconds (none on an abort), say
        ``offline``, disconnect; what is left unsent counts as dropped. Raises the bad
        configuration the first connection found, if no send has raised it yet."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        current = asyncio.current_task()
        aborting = current is not None and current.cancelling() > 0
        if self._task is None and not aborting and self._fatal is None:
            self._start()  # a run without outputs still says online/offline (and checks)
        task = self._task
        try:
            if task is not None and not aborting:
                await asyncio.wait([task], timeout=self.drain_timeout)
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
            self._connected = False
            left = sum(rows for _topic, _payload, rows in self._buffer)
            if self._inflight is not None:
                left += self._inflight[2]
                self._inflight = None
            self._buffer.clear()
            self.unsent += left
        if self._fatal is not None and not self._fatal_raised:
            self._fatal_raised = True
            raise self._fatal

    # -- the publisher: connects, publishes in order, reconnects ---------------------------
    async def _publisher(self) -> None:
        """Connect and publish until closed; on a lost connection, back off and again."""
        import aiomqtt

        broker = self.broker
        delay = RECONNECT_MIN
        ever_connected = False
        down_since: float | None = None  # when the outage was warned about
        loop = asyncio.get_running_loop()
        will = None
        if self.status_topic:
            will = (self.status_topic, self._status("offline", clean=False).encode(), 1, True)
        while True:
            last_try = self._closing.is_set()
            try:
                client = broker.client(will=will, logger=_client_log)
                async with client:
                    self._connected = True
                    if down_since is not None:
                        log.warning(
                            "%s: %s: connected again after %.1f s; publishing %d buffered messages",
                            self.name,
                            broker.label,
                            loop.time() - down_since,
                            len(self._buffer),
                        )
                        down_since = None
                    ever_connected = True
                    delay = RECONNECT_MIN
                    try:
                        await self._session(client)
                    finally:
                        self._connected = False
                    return
            except (aiomqtt.MqttError, OSError, _Lost) as exc:
                self._connected = False
                cause = exc.cause if isinstance(exc, _Lost) else exc
                if not ever_connected and _refused(cause):
                    self._fatal = InputError(broker.error(cause))
                    return
                if down_since is None:
                    down_since = loop.time()
                    what = (
                        f"{broker.label}: connection lost ({_reason(broker, cause)})"
                        if ever_connected
                        else broker.cannot_connect(cause)
                    )
                    log.warning(
                        "%s: %s; buffering outputs (up to %d messages), retrying every %g s"
                        " at most",
                        self.name,
                        what,
                        self.capacity,
                        self.reconnect_max,
                    )
            if last_try or (self._closing.is_set() and not self._buffer):
                return
            if not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._closing.wait()  # closing: one more try at once
                delay = min(delay * 2, self.reconnect_max)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: ``online``, the buffer in order, and at close ``offline``.
        Raises :class:`_Lost` when the connection drops (noticed at once, even while a
        QoS 1 publish waits for its acknowledgement)."""
        try:
            async with asyncio.TaskGroup() as group:
                watch = group.create_task(_until_lost(client))
                if self.status_topic:
                    await client.publish(
                        self.status_topic, self._status("online"), qos=1, retain=True
                    )
                await self._publish_buffer(client)
                if self.status_topic:
                    await client.publish(
                        self.status_topic, self._status("offline", clean=True), qos=1, retain=True
                    )
                watch.cancel()
        except BaseExceptionGroup as group_error:
            error = group_error.exceptions[0]
            raise (error if isinstance(error, _Lost) else _Lost(error)) from None
        except asyncio.CancelledError:
            # Closed without a drain (an abort, or the drain's time ran out): say offline
            # without waiting for the broker; the clean DISCONNECT that follows keeps the
            # broker from publishing the will.
            if self.status_topic:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(0.5):
                        await client.publish(
                            self.status_topic,
                            self._status("offline", clean=False),
                            qos=0,
                            retain=True,
                        )
            raise

    async def _publish_buffer(self, client: aiomqtt.Client) -> None:
        """Publish the oldest buffered message, then the next, until closing and empty.
        A message in flight when this is interrupted goes back to the head of the
        buffer (unless the buffer filled up meanwhile: then it is the oldest, dropped)."""
        buffer, wake, closing = self._buffer, self._wake, self._closing
        qos, retain, publish = self.qos, self.retain, client.publish
        while True:
            if not buffer:
                if closing.is_set():
                    return
                wake.clear()
                await wake.wait()
                continue
            message = self._inflight = buffer.popleft()
            try:
                await publish(message[0], message[1], qos=qos, retain=retain)
            except ValueError as exc:  # paho refuses the topic (empty, too long): not ours
                self._inflight = None
                self.rejected += message[2]
                if self.rejected == message[2]:
                    log.warning("%s: topic %r refused (%s); dropped", self.name, message[0], exc)
                continue
            except BaseException:
                self._inflight = None
                if len(buffer) >= self.capacity:
                    self.overflow += message[2]
                else:
                    buffer.appendleft(message)
                raise
            self._inflight = None
            self.published += message[2]

    def _status(self, status: str, clean: bool | None = None) -> str:
        record: dict[str, Any] = {"status": status, "client_id": self.client_id}
        if clean is not None:
            record["clean"] = clean
        return json.dumps(record)


class _Lost(Exception):
    """The connection ended (``cause``: aiomqtt's error, or the publish's)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _until_lost(client: aiomqtt.Client) -> None:
    """Return never; raise :class:`_Lost` when the connection drops (the sink subscribes
    to nothing, so the message iterator ends only then)."""
    import aiomqtt

    try:
        async for _message in client.messages:
            pass
    except aiomqtt.MqttError as exc:  # "disconnected during message iteration": why?
        raise _Lost(exc.__cause__ or exc) from exc


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker refusing us (credentials, client id) or TLS failing:
    configuration, not an outage."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        rc = getattr(seen, "rc", None)
        connack = type(seen).__name__ == "MqttConnectError" or not isinstance(rc, int | None)
        if connack and getattr(rc, "value", rc) in _REFUSALS:  # not paho's error numbers
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(broker: Broker, exc: BaseException) -> str:
    """Why a connection failed or ended, without the broker's label."""
    rc = getattr(exc, "rc", None)
    dropped = isinstance(rc, int) and rc in (4, 7)  # paho: not connected, connection lost
    if dropped or (exc.args and exc.args[-1] == "Unexpected disconnection"):
        return "the broker closed it or went away"
    return broker.error(exc).removeprefix(f"{broker.label}: ")


def build_mqtt(options: MqttSinkConfig, context: SinkContext) -> MqttSink:
    """The sink of a ``[[sinks]] type = "mqtt"`` table or ``--mqtt URL``: the URL, TLS
    files, ``password_env`` and topic templates are checked here, before the run."""
    try:
        broker = resolve(options, context.name, DEFAULT_TOPIC)
    except InputError as exc:  # a TLS file's error names the broker, not the sink
        if str(exc).startswith(context.name):
            raise
        raise InputError(f"{context.name}: {exc}") from None
    _, _, _, url_topic, _ = split_url(options.url, context.name)
    if options.topic is not None and url_topic and options.topic != url_topic:
        raise InputError(
            f"{context.name}: topic: {options.topic!r}, but the URL names {url_topic!r}; give"
            " the topic once"
        )
    topic = options.topic if options.topic is not None else broker.topic
    check_template(topic, "topic", context.name, TOPIC_FIELDS)
    if options.status_topic:
        check_template(options.status_topic, "status_topic", context.name, ("client_id",))
    sink = MqttSink(
        broker,
        topic,
        qos=options.qos,
        retain=options.retain,
        blocks=options.blocks,
        status_topic=options.status_topic,
        buffer=options.buffer,
        reconnect_max=options.reconnect_max,
        drain_timeout=options.drain_timeout,
    )
    return sink
