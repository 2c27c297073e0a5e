"""The pipeline runner: sources -> stages -> sinks, in one TaskGroup.

Every edge is a bounded :class:`~streamer.channels.Channel`. The run mode picks the source
edge's policy: ``realtime`` uses ``latest`` (the newest frame of a stream wins),
``online`` and ``offline`` use ``block`` (lossless). Later edges always ``block``.
(``latest`` gets two slots per source: a frame and a marker.)

Failure: a stage or sink that raises cancels the run, which raises a
:class:`~streamer.errors.StageError` naming it; a sink whose delivery says ``on_error =
"drop"`` is dropped from the run with a warning instead, and the others go on. A source
that raises is treated as the end of its input: what it delivered is still processed and
written, then the run raises.
Stop: :meth:`Pipeline.stop` drains (sources stop, queued work finishes, sinks close);
:meth:`Pipeline.abort` cancels at once (sinks are still closed). A sink whose pipe's reader
has gone (``BrokenPipeError``) gets no more outputs and stops the run like a drain.
Metrics count an output once every sink is done with it (written, or dropped by its edge).

Sinks: each sink's edge ``fanout>SINK`` has its own :class:`~streamer.sinks.base.Delivery`:
``block`` (lossless backpressure) or ``drop-oldest`` (a slow sink holds up nothing; its
drops are counted in the summary's ``sinks``), with its own capacity.

Frame tap: a :class:`~streamer.sinks.base.FrameSink` (the annotated video) also gets the
input frames and markers of its streams, copied by the source pumps right after each
item enters the first edge, over a bounded channel ``tap>SINK`` of its own: ``latest`` in
realtime (a slow encoder loses frames of the video, counted as that edge's drops, never
holding up the source), ``block`` otherwise (every frame is written; the sink never waits
for an output while its tap is full, so this cannot deadlock). The sink reads it in its
own task, and is closed once both that task and its outputs are done.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from streamer.blocks import OutputBlock, as_outputs
from streamer.channels import Channel, Policy
from streamer.clock import Clock, RealClock
from streamer.collector import run_heap
from streamer.errors import StageError, StreamerError
from streamer.frames import Frame, Output, StreamEnd, StreamStart
from streamer.metrics import Metrics
from streamer.options import MODES as MODES
from streamer.options import Mode as Mode
from streamer.sinks.base import (
    MAX_SEND_BATCH,
    BatchSink,
    Delivery,
    FrameSink,
    Sink,
    default_delivery,
)
from streamer.sources.base import Source
from streamer.stages.base import Stage

log = logging.getLogger(__name__)


def _unique_sink_names(sinks: Sequence[Sink]) -> None:
    """Two sinks of one name (two JSONL files called ``out.jsonl`` in different folders,
    two MQTT sinks with one topic template on different brokers) would share their edge,
    their counts and their line in the summary: the second becomes ``NAME#2``, and so on."""
    seen: dict[str, int] = {}
    for sink in sinks:
        count = seen[sink.name] = seen.get(sink.name, 0) + 1
        if count > 1:
            name = f"{sink.name}#{count}"
            while name in seen:
                count += 1
                name = f"{sink.name}#{count}"
            seen[name] = 1
            sink.name = name


#: Capacity of the lossless edges (frames or outputs in flight per edge).
BLOCK_CAPACITY: dict[Mode, int] = {"realtime": 64, "online": 64, "offline": 1024}
#: Capacity of a frame tap (frames and markers on their way to a frame sink).
TAP_CAPACITY = 8


@dataclass
class Pipeline:
    """Sources feed the first stage; each stage feeds the next; the last fans out to sinks."""

    sources: Sequence[Source]
    stages: Sequence[Stage]
    sinks: Sequence[Sink]
    mode: Mode = "online"
    clock: Clock = field(default_factory=RealClock)
    max_frames: int | None = None
    duration: float | None = None
    source_capacity: int | None = None
    metrics: Metrics | None = None
    fail_fast: bool = False
    #: outputs later than this are marked ``late`` (and counted in the summary)
    latency_budget_ms: float | None = None
    #: per sink, how it gets its outputs (None: each sink's :func:`default_delivery`)
    deliveries: Sequence[Delivery] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.sources:
            raise ValueError("a pipeline needs at least one source")
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        if self.metrics is None:
            self.metrics = Metrics(self.clock, mode=self.mode)
        _unique_sink_names(self.sinks)
        self.metrics.watch(self.sources, self.sinks)
        if self.deliveries is None:
            self.deliveries = [default_delivery(sink) for sink in self.sinks]
        if len(self.deliveries) != len(self.sinks):
            raise ValueError("give one delivery per sink")
        self._source_tasks: list[asyncio.Task[None]] = []
        self._main: asyncio.Task[Any] | None = None
        self._stopping: str | None = None
        self._aborted = False
        self._frames_in = 0
        self._source_errors: list[StageError] = []
        # Outputs handed to the sinks, oldest first, until every sink is done with them.
        self._undelivered: deque[Output | OutputBlock] = deque()
        self._sink_counts = [0] * len(self.sinks)
        self._counted = 0
        # Frame taps: (frame sink, its channel), filled by run().
        self._taps: list[tuple[FrameSink, Channel[Any]]] = []

    # -- control -----------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Drain: sources stop, queued frames are processed, sinks flush and close."""
        if self._stopping is None:
            self._stopping = reason
            assert self.metrics is not None
            self.metrics.stop_reason = reason
        for task in self._source_tasks:
            task.cancel()

    def abort(self) -> None:
        """Cancel everything now; sinks are still closed, so files stay valid."""
        self._aborted = True
        if self._main is not None:
            self._main.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping is not None

    @property
    def aborted(self) -> bool:
        return self._aborted

    # -- running -----------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run to the end of input (or a stop); returns the metrics summary."""
        with run_heap():  # what exists before the run is not rescanned by the collector
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        metrics = self.metrics
        assert metrics is not None
        self._main = asyncio.current_task()
        policy: Policy = "latest" if self.mode == "realtime" else "block"
        # latest: room for one frame and one marker per source, so that starting streams
        # do not displace each other's first frames
        capacity = self.source_capacity or (
            2 * len(self.sources) if policy == "latest" else BLOCK_CAPACITY[self.mode]
        )
        first = self.stages[0].name
        inbox: Channel[Any] = Channel(
            f"source>{first}", capacity, policy, producers=len(self.sources)
        )
        edges = [inbox]
        for before, after in zip(self.stages, [*self.stages[1:], None], strict=True):
            target = after.name if after is not None else "sinks"
            edges.append(Channel(f"{before.name}>{target}", BLOCK_CAPACITY[self.mode], "block"))
        assert self.deliveries is not None
        sink_edges: list[Channel[Output | OutputBlock]] = [
            Channel(f"fanout>{sink.name}", delivery.capacity, delivery.policy)
            for sink, delivery in zip(self.sinks, self.deliveries, strict=True)
        ]
        self._taps = [
            (sink, Channel(f"tap>{sink.name}", TAP_CAPACITY, policy, producers=len(self.sources)))
            for sink in self.sinks
            if isinstance(sink, FrameSink)
        ]
        taps = {id(sink): (sink, tap) for sink, tap in self._taps}
        metrics.channels.extend([*edges, *(tap for _sink, tap in self._taps)])
        metrics.sink_edges.extend(zip(sink_edges, self.deliveries, strict=True))
        metrics.start()
        try:
            async with asyncio.TaskGroup() as group:
                for number, (sink, edge) in enumerate(zip(self.sinks, sink_edges, strict=True)):
                    frames = None
                    if id(sink) in taps:
                        frame_sink, tap = taps[id(sink)]
                        frames = group.create_task(
                            _named(sink.name, self._pump_frames(frame_sink, tap, number))
                        )
                    group.create_task(
                        _named(sink.name, self._pump_sink(number, sink, edge, frames))
                    )
                group.create_task(_named("fanout", self._fan_out(edges[-1], sink_edges)))
                for stage, stage_in, stage_out in zip(
                    self.stages, edges[:-1], edges[1:], strict=True
                ):
                    group.create_task(
                        _named(stage.name, self._run_stage(stage, stage_in, stage_out))
                    )
                self._source_tasks = [
                    group.create_task(self._pump_source(source, inbox)) for source in self.sources
                ]
                if self._stopping is not None:  # stopped before the tasks existed
                    self.stop(self._stopping)
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        finally:
            metrics.finish()
            for sink in self.sinks:  # idempotent; covers sinks whose task never started
                await _close_quietly(sink)
        if self._source_errors:
            raise self._source_errors[0]
        return metrics.summary()

    async def _pump_source(self, source: Source, outbox: Channel[Any]) -> None:
        """Move a source's items into the first edge, applying duration and frame limits."""
        metrics = self.metrics
        assert metrics is not None
        open_streams: dict[str, int] = {}  # stream -> frames delivered so far
        # A live device's media time starts only with its first frame; one that never
        # connects (or stays away) must not keep the run going past the duration for ever.
        limit = None
        if self.duration is not None and any(info.live for info in source.streams):
            limit = self.duration + float(getattr(source, "timeout", 0.0))
        try:
            async with asyncio.timeout(limit):
                await self._pump_items(source, outbox, open_streams)
        except TimeoutError:
            metrics.stop_reason = "duration"
            await self._end_streams(outbox, open_streams, "duration")
        except asyncio.CancelledError:
            if self._stopping is not None and not self._aborted:
                await self._end_streams(outbox, open_streams, self._stopping)
            raise
        except Exception as exc:
            if self.fail_fast:  # one failing source ends the whole run at once
                raise _as_stage_error(source.name, exc) from exc
            # The input ends here; what came before is still processed and written, and
            # the other sources go on.
            self._source_errors.append(_as_stage_error(source.name, exc))
            metrics.stop_reason = "error"
            await self._end_streams(outbox, open_streams, "error")
        finally:
            outbox.close()
            for _sink, tap in self._taps:
                tap.close()
            await source.aclose()

    async def _pump_items(
        self, source: Source, outbox: Channel[Any], open_streams: dict[str, int]
    ) -> None:
        """One source's items into the first edge, up to the duration and frame limits."""
        metrics = self.metrics
        assert metrics is not None
        cut: set[str] = set()  # streams ended early by the duration limit
        # each tap's sink, channel, and its say on which frames go in (looked up once)
        taps = [(sink, tap, _frame_filter(sink)) for sink, tap in self._taps]
        async for item in source:
            if item.stream in cut:
                continue
            if isinstance(item, StreamStart):
                open_streams[item.stream] = 0
            elif isinstance(item, StreamEnd):
                open_streams.pop(item.stream, None)
            elif isinstance(item, Frame):
                if self.duration is not None and item.pts >= self.duration:
                    cut.add(item.stream)
                    metrics.stop_reason = "duration"
                    await self._end_streams(outbox, open_streams, "duration", [item.stream])
                    if not open_streams:
                        break
                    continue
                if self.max_frames is not None and self._frames_in >= self.max_frames:
                    await self._end_streams(outbox, open_streams, "max-frames")
                    self.stop("max-frames")
                    break
            await outbox.send(item)
            metrics.on_input(item)
            if isinstance(item, Frame):
                self._frames_in += 1
                open_streams[item.stream] = item.index + 1
            for sink, tap, wants in taps:
                if item.stream in sink.frame_streams and (
                    wants is None or not isinstance(item, Frame) or wants(item)
                ):
                    await tap.send(item)

    @staticmethod
    async def _end_streams(
        outbox: Channel[Any],
        open_streams: dict[str, int],
        reason: str,
        only: list[str] | None = None,
    ) -> None:
        for stream in list(only if only is not None else open_streams):
            if stream in open_streams:
                await outbox.send(StreamEnd(stream, open_streams.pop(stream), reason))

    @staticmethod
    async def _run_stage(stage: Stage, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        """Run a stage; one that returns before its input ended fails the run (naming it)
        rather than leaving its senders blocked on a full inbox for ever."""
        try:
            await stage.run(inbox, outbox)
            if not inbox.drained:
                raise RuntimeError(
                    f"run() returned before its input ended ('{inbox.name}' still open); a"
                    " stage must read its inbox to the end"
                )
        finally:
            inbox.close_receiver()
            outbox.close()

    async def _fan_out(
        self, inbox: Channel[Any], sink_edges: list[Channel[Output | OutputBlock]]
    ) -> None:
        """Stamp each output's latency (a block's rows at once) and hand it to every sink
        (it is counted in the metrics once every sink is done with it: :meth:`_delivered`)."""
        metrics = self.metrics
        assert metrics is not None
        try:
            async for first in inbox:
                # what is already queued goes on together, stamped at the same moment
                outputs: list[Output | OutputBlock] = []
                now = self.clock.now()
                budget = self.latency_budget_ms
                for item in [first, *inbox.take_ready(MAX_SEND_BATCH - 1)]:
                    if isinstance(item, OutputBlock):  # one stamp for all its rows
                        item.stamp(now, budget)
                        if sink_edges:
                            self._undelivered.append(item)
                            outputs.append(item)
                        else:
                            metrics.on_block(item)
                        continue
                    if not isinstance(item, Output):
                        metrics.on_marker(item)
                        continue
                    latency = (now - item.captured) * 1000.0
                    # Stamped in place: the output is handed over here and not yet shared,
                    # and a copy per output (dataclasses.replace) costs more than the stamp.
                    object.__setattr__(
                        item, "latency_ms", latency if math.isfinite(latency) else None
                    )
                    if budget is not None and latency > budget:
                        object.__setattr__(item, "late", True)
                    if sink_edges:
                        self._undelivered.append(item)
                        outputs.append(item)
                    else:
                        metrics.on_output(item)
                for edge in sink_edges:
                    await edge.send_many(outputs)
        finally:
            for edge in sink_edges:
                edge.close()

    async def _pump_frames(self, sink: FrameSink, tap: Channel[Any], number: int) -> None:
        """Run a frame sink's frame loop; like a stage, it must read its tap to the end.
        A sink dropped from the run after a failure still drains its tap (a source
        blocked on it would otherwise wait for ever)."""
        try:
            try:
                await sink.run_frames(tap)
            except Exception as exc:
                if not self._dropping(number, sink, exc):
                    raise
                async for _item in tap:
                    pass
            if not tap.drained:
                raise RuntimeError(f"run_frames() returned before '{tap.name}' ended")
        finally:
            tap.close_receiver()

    async def _pump_sink(
        self,
        number: int,
        sink: Sink,
        inbox: Channel[Output | OutputBlock],
        frames: asyncio.Task[None] | None = None,
    ) -> None:
        """Hand each output to ``sink``; close it once its frame task (``frames``, for a
        frame sink) is done too. A sink whose pipe's reader is gone (``| head``) gets no
        more outputs and stops the run (a drain, like Ctrl-C); one that raises fails the
        run, or, with ``on_error = "drop"``, gets no more outputs while the others go on.
        The outputs its edge dropped count as done with (they are older than the next one
        it receives). A sink that takes batches and says ``takes_blocks`` (the JSONL file)
        gets blocks as they are; any other gets a block's rows as :class:`Output` objects."""
        skip = False
        batched = isinstance(sink, BatchSink)
        blocks = batched and bool(getattr(sink, "takes_blocks", False))
        accounted = 0  # the edge's drops (outputs) counted as done with so far
        try:
            async for first in inbox:
                # a sink that takes batches gets what is already queued in one call
                items = (
                    [first, *inbox.take_ready(MAX_SEND_BATCH - 1)] if batched or skip else [first]
                )
                rows = sum(_rows(item) for item in items)
                if inbox.stats.dropped > accounted:
                    self._delivered(number, inbox.stats.dropped - accounted)
                    accounted = inbox.stats.dropped
                try:
                    if skip:
                        pass
                    elif batched and (len(items) > 1 or isinstance(first, OutputBlock)):
                        await cast(BatchSink, sink).send_many(
                            items if blocks else as_outputs(items)
                        )
                    else:
                        for output in as_outputs(items):
                            await sink.send(output)
                except BrokenPipeError:
                    skip = True
                    self.stop("broken-pipe")
                except asyncio.CancelledError:
                    # An abort lets the send in flight land first (JsonlSink.send does).
                    self._delivered(number, rows)
                    raise
                except Exception as exc:
                    if not self._dropping(number, sink, exc):
                        raise
                    skip = True
                self._delivered(number, rows)
        finally:
            if frames is not None:
                await asyncio.wait([frames])  # its failure is the TaskGroup's to report
            try:
                await sink.aclose()
            except Exception as exc:
                if not self._dropping(number, sink, exc):
                    raise

    def _dropping(self, number: int, sink: Sink, exc: Exception) -> bool:
        """Whether sink ``number``, which raised ``exc``, is dropped from the run (its
        delivery's ``on_error = "drop"``: warned once, reported in the summary) rather
        than failing it."""
        assert self.deliveries is not None and self.metrics is not None
        if self.deliveries[number].on_error != "drop":
            return False
        if sink.name not in self.metrics.failed_sinks:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.metrics.failed_sinks[sink.name] = message
            log.warning(
                '%s failed and is dropped from the run (on_error = "drop"); the other sinks'
                " go on: %s",
                sink.name,
                message,
            )
        return True

    def _delivered(self, number: int, count: int = 1) -> None:
        """Sink ``number`` is done with its next ``count`` outputs; an output counts in the
        metrics once every sink is done with it, so that after an abort the count is what
        the sinks hold (an output still queued for a sink was never written)."""
        self._sink_counts[number] += count
        counted = min(self._sink_counts)
        metrics = self.metrics
        assert metrics is not None
        while self._counted < counted:
            item = self._undelivered.popleft()
            if isinstance(item, OutputBlock):
                metrics.on_block(item)
                self._counted += item.rows
            else:
                metrics.on_output(item)
                self._counted += 1


def _rows(item: Output | OutputBlock) -> int:
    """How many outputs an item of a sink's edge holds."""
    return item.rows if isinstance(item, OutputBlock) else 1


async def _named(name: str, work: Awaitable[None]) -> None:
    """Run ``work``; a failure becomes a StageError that names the stage."""
    try:
        await work
    except Exception as exc:
        raise _as_stage_error(name, exc) from exc


def _as_stage_error(name: str, exc: BaseException) -> StageError:
    return exc if isinstance(exc, StageError) else StageError(name, exc)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error that caused the run to fail (a StageError when there is one)."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, StreamerError):
            return leaf
    return leaves[0]


async def _close_quietly(sink: Sink) -> None:
    """Close a sink again after the run (closing is idempotent); a failure here must not
    mask the run's own outcome, and the sink's own task has already reported it."""
    try:
        await sink.aclose()
    except Exception:
        return


def _frame_filter(sink: FrameSink) -> Callable[[Frame], bool] | None:
    """``sink``'s say on which frames enter its tap: its ``wants_frame`` when it has one
    (the live view takes only the frames it would show); None: every frame."""
    wants = getattr(sink, "wants_frame", None)
    return wants if callable(wants) else None
