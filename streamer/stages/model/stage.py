"""The stateful model stage: features -> model (state per stream) -> head -> labels.

The stage owns the loop, the rounds, the batching, the model calls on its worker thread,
the mode's policy and the idle TTL; each stream's own logic (front-end, pending steps,
lookahead alignment, gaps between outputs, head and smoother) is a synchronous
:class:`~streamer.stages.model.stream.ModelStream`, whose outputs the stage sends. Chunks
of several streams that are ready together go in one batched call
(:func:`~streamer.models.step_batch`); hidden state lives in the model's
:class:`~streamer.models.StateStore`, fresh at stream start, reset or kept on a gap.

Modes:

- ``realtime``: every frame that arrives is stepped at once and its output emitted; frames
  dropped upstream arrive as gaps.
- ``online``: lossless; a stream is stepped once ``chunk`` steps are pending.
- ``offline``: a stream's steps are collected to its end (or a resetting gap) and run in
  one ``forward`` (bidirectional models allowed); with ``offline_chunk`` a causal model
  is stepped in pieces of that many steps as soon as each is collected, so reading, the
  model and the outputs overlap (the same result: streaming equals offline).

Lookahead ``L``: the output for frame ``t`` is emitted once frame ``t + L`` has been
stepped (a fixed, declared delay); at the end of a stream (and before a resetting gap)
``L`` zero steps flush the last outputs. Offline runs align the same way, so for a causal
model streaming and offline outputs are equal for any chunking and lookahead.

Before the run: the constructor refuses settings the head cannot use, and
:meth:`ModelStage.dry_check` runs the model on two steps of a zero frame shaped like the
source's, so that a model that does not fit is refused with the real problem named.

Idle streams: with ``ttl``, a stream that sent nothing for ``ttl`` seconds ends as if its
end marker had come. The :class:`~streamer.models.StateStore` keeps the activity times and
says which streams are idle; the stage stamps a stream active when a batch holding its
items is taken and again once it has been processed, so a slow model call never makes the
streams it served look idle, and ends an idle stream the usual way (no output lost).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from torch import Tensor

from streamer.channels import Channel
from streamer.clock import Clock, RealClock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, StreamEnd, StreamStart
from streamer.models import StatefulModel
from streamer.options import Mode
from streamer.stages.model.calls import ModelCalls
from streamer.stages.model.checks import (
    _first_invalid,
    check_head_settings,
    check_input,
)
from streamer.stages.model.settings import ModelSettings
from streamer.stages.model.stream import ModelStream, open_stream

if TYPE_CHECKING:
    from streamer.cluster.engine import RayEngine

log = logging.getLogger(__name__)


class ModelStage(ModelCalls):
    """Runs a :class:`~streamer.models.StatefulModel` over every stream of its inbox."""

    def __init__(
        self,
        model: StatefulModel,
        settings: ModelSettings,
        mode: Mode = "online",
        clock: Clock | None = None,
        name: str = "model",
        source_info: dict[str, Any] | None = None,
        engine: RayEngine | None = None,
    ) -> None:
        if not model.causal and mode != "offline":
            raise InputError(
                f"stage '{name}': the model is not causal (bidirectional); it runs only in "
                f"offline mode, not {mode}"
            )
        if settings.lookahead < 0 or settings.chunk < 1:
            raise InputError(f"stage '{name}': lookahead must be >= 0 and chunk >= 1")
        if settings.head == "generate" and settings.lookahead:
            raise InputError(f"stage '{name}': the generate head takes no lookahead")
        if settings.head == "generate" and not model.causal:
            raise InputError(
                f"stage '{name}': the generate head steps the model token by token; a"
                " non-causal (bidirectional) model cannot be stepped"
            )
        if engine is not None and mode == "offline":
            raise InputError(
                f"stage '{name}': [run] engine = 'ray' runs the realtime and online modes;"
                " run offline in one process (engine = 'local')"
            )
        if engine is not None and settings.head == "generate":
            raise InputError(
                f"stage '{name}': [run] engine = 'ray' does not run the generate head (it"
                " decodes from the state, which lives on the actors); use engine = 'local'"
            )
        super().__init__(model, settings, mode, clock or RealClock(), name, engine)
        self.name = name
        self.source_info = dict(source_info or {})
        self._checked = False
        self._step_duration: float | None = None
        check_head_settings(model, settings, name)

    def report(self) -> dict[str, Any]:
        """Figures for the run summary: the declared delay and how batching went."""
        lookahead = self.settings.lookahead
        return {
            "lookahead_frames": lookahead,
            "lookahead_s": None if self._step_duration is None else lookahead * self._step_duration,
            "model_calls": self._calls,
            "mean_batch": self._batched_chunks / self._calls if self._calls else None,
            **({"engine": self.engine.report()} if self.engine is not None else {}),
        }

    def discard(self) -> None:
        """Release the stage's worker thread and the engine's actors: at the end of its
        run, or for a stage that will never run."""
        self.worker.close()
        if self.engine is not None:
            self.engine.close()

    # -- the loop ----------------------------------------------------------------------
    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        try:
            async for first in inbox:
                items = [first, *inbox.take_ready()]
                if self.settings.max_wait_ms > 0 and self.mode != "offline":
                    items += await self._wait_for_more(inbox, items)
                if self.settings.latency_budget_ms is not None and self.mode == "realtime":
                    items = self._skip_late(items)
                streams = {item.stream for item in items}
                self.store.touch(streams, self.clock.now())
                await self._evict_idle(outbox)
                await self._process(items, outbox)
                # processing (a slow model call) takes time: these streams were served now
                self.store.touch(streams, self.clock.now())
        finally:
            self.discard()

    async def _wait_for_more(self, inbox: Channel[Any], items: list[Any]) -> list[Any]:
        """Give other streams up to ``max_wait_ms`` to make the batch fuller."""
        deadline = self.clock.now() + self.settings.max_wait_ms / 1000.0
        more: list[Any] = []
        streams = {i.stream for i in items if isinstance(i, Frame)}
        while len(streams) < self.settings.max_batch and self.clock.now() < deadline:
            await self.clock.sleep(min(0.001, deadline - self.clock.now()))
            fresh = inbox.take_ready()
            if not fresh and inbox.closed:
                break
            more += fresh
            streams.update(i.stream for i in fresh if isinstance(i, Frame))
        return more

    def _skip_late(self, items: list[Any]) -> list[Any]:
        """Realtime with a latency budget: each frame too old for its output to come within
        the budget (older than the budget less a call's expected time: the shortest of the
        last eight) becomes a gap,
        ``reason = "deadline"`` (a stream's run of them one gap), so the stage waits for a
        fresh frame instead; the gap's state handling is ``on_gap``'s, as for any gap. A
        model slower than the budget cannot keep any output within it: then only frames
        older than the budget itself are skipped (the stage never starves)."""
        assert self.settings.latency_budget_ms is not None
        budget = self.settings.latency_budget_ms / 1000.0
        expected = min(self._calls_s, default=0.0)
        call = expected if expected < budget else 0.0
        oldest = self.clock.now() - budget + call
        kept: list[Any] = []
        open_gap: dict[str, int] = {}  # stream -> position in kept of its trailing gap
        for item in items:
            if not isinstance(item, Frame) or item.captured >= oldest:
                open_gap.pop(item.stream, None)
                kept.append(item)
                continue
            at = open_gap.get(item.stream)
            if at is not None and kept[at].index + kept[at].count == item.index:
                gap = kept[at]
                kept[at] = Gap(gap.stream, gap.index, gap.count + 1, gap.pts, "deadline")
            else:
                open_gap[item.stream] = len(kept)
                kept.append(Gap(item.stream, item.index, 1, item.pts, "deadline"))
        return kept

    async def _evict_idle(self, outbox: Channel[Any]) -> None:
        """Streams the store finds idle for ``ttl`` seconds end as if their end marker had
        come; what they sent is still stepped and output first: eviction loses no output.
        A stream with items in the batch at hand was stamped active when it was taken."""
        if self.store.ttl is None:
            return
        idle = set(self.store.idle(self.clock.now()))
        ended = [stream for stream in self._streams if stream in idle]
        if not ended:
            return
        await self._step_ready(outbox, force=True, only=set(ended))
        for stream in ended:
            await self._end(stream, outbox)

    async def _process(self, items: list[Any], outbox: Channel[Any]) -> None:
        """Handle a batch of items in rounds: per stream, the frames up to its next marker.

        A round's frames (all streams) are featurized and stepped together, then each
        stream's marker is applied, after its own earlier frames were stepped. Each
        stream's order is kept; a marker of one stream never costs the others a model call
        of their own, so batching holds up when gaps are frequent (realtime overload).
        """
        queues: dict[str, deque[Any]] = {}
        for item in items:
            queues.setdefault(item.stream, deque()).append(item)
        while queues:
            frames: list[Frame] = []
            markers: list[Any] = []
            for stream in list(queues):
                queue = queues[stream]
                while queue and isinstance(queue[0], Frame):
                    frames.append(queue.popleft())
                if queue:
                    markers.append(queue.popleft())
                if not queue:
                    del queues[stream]
            if frames:
                await self._frames(frames, outbox)
            marked = {m.stream for m in markers if not isinstance(m, StreamStart)}
            if marked:
                await self._step_ready(outbox, force=True, only=marked)
            for marker in markers:
                if isinstance(marker, StreamStart):
                    self._start(marker)
                elif isinstance(marker, Gap):
                    await self._gap(marker.stream, outbox)
                elif isinstance(marker, StreamEnd):
                    await self._end(marker.stream, outbox)
                await outbox.send(marker)
        await self._step_ready(outbox, force=False)

    # -- stream events -----------------------------------------------------------------
    def _start(self, start: StreamStart) -> ModelStream:
        """A fresh :class:`ModelStream` and state for the stream ``start`` begins."""
        stream = start.stream
        ctx = open_stream(
            start,
            self.settings,
            self.source_info,
            self._decode_step,
            lambda: self.store.get(stream),
        )
        if ctx.features.step_duration is not None:
            self._step_duration = ctx.features.step_duration
        self._streams[stream] = ctx
        self._inflight.pop(stream, None)  # a piece of the stream this one replaces
        self.store.start(stream, self.clock.now())
        return ctx

    async def _frames(self, frames: list[Frame], outbox: Channel[Any]) -> None:
        """Features for a run of frames, computed on the worker thread (log-mel is not free
        and must not hold up the event loop; a ``cheap`` front-end such as ``raw`` runs
        here instead). A frame holding NaN or Inf splits the run, so
        that its gap falls between the right frames."""
        for frame in frames:
            if frame.stream not in self._streams:  # a stream whose start marker never came
                self._start(_start_of(frame, frame.stream))
        start = 0
        # (the first run goes to the worker: it also checks the model on its first step)
        inline = self._checked and all(self._streams[f.stream].features.cheap for f in frames)
        while start < len(frames):
            if inline:  # a reshape: cheaper here than a round trip to the worker
                done = self._featurize(frames, start)
            else:
                done = await self.worker.call(self._featurize, frames, start)
            start += done
            if start < len(frames):
                await self._invalid(frames[start], outbox)
                start += 1

    def _featurize(self, frames: list[Frame], start: int) -> int:
        """Push ``frames[start:]`` through their streams up to the first invalid frame;
        returns how many were pushed. Runs on the worker thread (for a ``cheap``
        front-end, once the model was checked, on the event loop)."""
        stop = _first_invalid(frames, start)
        at = start
        while at < stop:  # one front-end call per run of one stream's frames
            stream = frames[at].stream
            end = at + 1
            while end < stop and frames[end].stream == stream:
                end += 1
            x = self._streams[stream].push(frames[at:end])
            at = end
            if not self._checked:
                self._checked = True
                self.check_input(x[:1] if x.shape[0] else None)
        return stop - start

    async def _invalid(self, frame: Frame, outbox: Channel[Any]) -> None:
        """A frame with NaN or Inf: stop, or drop it as a gap (``on_invalid``)."""
        if self.settings.on_invalid == "error":
            raise InputError(f"stream '{frame.stream}' frame {frame.index} holds NaN or Inf")
        log.warning(
            "stage '%s': stream '%s' frame %d holds NaN or Inf: dropped (a gap)",
            self.name,
            frame.stream,
            frame.index,
        )
        await self._step_ready(outbox, force=True, only={frame.stream})
        await self._gap(frame.stream, outbox)
        await outbox.send(Gap(frame.stream, frame.index, 1, frame.pts, "invalid"))

    async def _gap(self, stream: str, outbox: Channel[Any]) -> None:
        """A gap in ``stream`` (its pending steps were stepped): with ``on_gap = "reset"``
        its steps so far get their outputs (offline pass, lookahead flush) and the head's
        closing ones, before the state is dropped."""
        ctx = self._streams.get(stream)
        if ctx is None:
            return
        reset = self.settings.on_gap == "reset"
        if reset:
            if self.mode == "offline":
                await self._run_offline(stream, ctx, outbox)
            await self._flush_lookahead(stream, ctx, outbox)
        await self._send(ctx.gap(reset), outbox)
        if reset:
            self.store.reset(stream)

    async def _end(self, stream: str, outbox: Channel[Any]) -> None:
        ctx = self._streams.pop(stream, None)
        if ctx is None:
            return
        if self.mode == "offline":
            await self._run_offline(stream, ctx, outbox)
        await self._flush_lookahead(stream, ctx, outbox)
        await self._send(ctx.end(), outbox)
        self.store.end(stream)

    # -- checks ------------------------------------------------------------------------
    def dry_check(self, frame: Frame) -> None:
        """Refuse, before the run, a model that does not fit frames like ``frame`` (a zero
        frame shaped like the source's): see :meth:`check_input`. Leaves no stream or
        state behind."""
        probe = f"\0probe:{frame.stream}"
        ctx = self._start(_start_of(frame, probe))
        try:
            x, _ = ctx.features.push_frame(frame)
            self.check_input(x if x.shape[0] else None)
            self._checked = x.shape[0] > 0
        finally:
            self._streams.pop(probe, None)
            self.store.end(probe)

    def check_input(self, x: Tensor | None) -> None:
        """A dry run of the model on two steps made of the first step of the source's
        features ``x [T, F...]``; see :func:`~streamer.stages.model.checks.check_input`."""
        check_input(self.model, self.settings, self.mode, self.name, x, self._decode_step)


def dry_check(stage: ModelStage, frame: Frame) -> None:
    """:meth:`ModelStage.dry_check` (refuse a model that does not fit ``frame``)."""
    stage.dry_check(frame)


def _start_of(frame: Frame, stream: str) -> StreamStart:
    """The start marker ``stream`` would have had, from one of its frames."""
    info = frame.info
    if info is not None and info.stream != stream:
        info = dataclasses.replace(info, stream=stream)
    return StreamStart(stream, frame.media, frame.rate if info is None else info.rate, {}, info)
