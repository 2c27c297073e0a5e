"""The stateful model stage: features -> model (state per stream) -> head -> labels.

Per stream it keeps a feature front-end, a head, optional smoothing, and (in the model's
:class:`~streamer.models.StateStore`) the hidden state, fresh at stream start, reset or kept
on a gap. Model calls run on the stage's own worker thread; chunks of several streams that
are ready together go in one batched call (:func:`~streamer.models.step_batch`).

Modes:

- ``realtime``: every frame that arrives is stepped at once and its output emitted; frames
  dropped upstream arrive as gaps.
- ``online``: lossless; a stream is stepped once ``chunk`` steps are pending.
- ``offline``: a stream's steps are collected to its end (or a resetting gap) and run in
  one ``forward`` (bidirectional models allowed); with ``offline_chunk`` a causal model
  is stepped in pieces of that many steps as soon as each is collected, so reading, the
  model and the outputs overlap (the same result: streaming equals offline).

Lookahead ``L``: the model's output at step ``s`` belongs to step ``s - L`` (a model trained
with an ``L``-step delay), so the output for frame ``t`` is emitted once frame ``t + L`` has
been stepped: a fixed, declared delay. At the end of a stream (and before a resetting
gap) ``L`` zero steps flush the last outputs. Offline runs align the same way, so for a
causal model streaming and offline outputs are equal for any chunking and lookahead.

Before the run: the constructor refuses settings the head cannot use, and
:meth:`ModelStage.dry_check` runs the model on two steps of a zero frame shaped like the
source's, so that a model that does not fit (features, ``(y, state)``, ``y [B, T, K]``,
labels, activation, decoding its own tokens) is refused with the real problem named.

Idle streams: with ``ttl``, a stream that sent nothing for ``ttl`` seconds ends as if its
end marker had come. Activity is stamped when a batch of items is taken and again once it
has been processed, so a slow model call never makes the streams it served look idle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from streamer.channels import Channel
from streamer.clock import Clock, RealClock
from streamer.errors import InputError
from streamer.features import Features, Step, make_features
from streamer.frames import Frame, Gap, Media, Output, StreamEnd, StreamStart
from streamer.heads import GenerateHead, Head, make_head
from streamer.labelwise import LabelwiseSmoother
from streamer.models import State, StatefulModel, StateStore, step_batch
from streamer.options import Mode as Mode
from streamer.postprocess import Labeler, Smoother
from streamer.stages.model_checks import check_head_settings, check_input, find_embedder
from streamer.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    """What the stage does around the model (the ``[model]`` keys besides the model)."""

    labels: tuple[str, ...]
    features: str = "raw"
    feature_options: dict[str, Any] = field(default_factory=dict)
    head: str = "frame"
    head_options: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] | None = None
    smoothing: dict[str, Any] | None = None
    lookahead: int = 0
    chunk: int = 1
    offline_chunk: int = 0
    on_gap: Literal["reset", "keep"] = "reset"
    on_invalid: Literal["drop", "error"] = "drop"
    max_batch: int = 64
    max_wait_ms: float = 0.0
    ttl: float | None = None
    max_len: int = 16
    end_token: str | None = None
    decode: Literal["step", "end"] = "step"
    min_steps: int = 1
    #: realtime: a frame already older than this when its turn comes is skipped
    latency_budget_ms: float | None = None


@dataclass
class _Stream:
    """One stream's working set."""

    media: Media
    features: Features
    head: Head | None
    generator: GenerateHead[State] | None
    smoother: Smoother | LabelwiseSmoother | None
    pending_x: list[Tensor] = field(default_factory=list)
    pending_steps: list[Step] = field(default_factory=list)
    waiting: deque[Step] = field(default_factory=deque)
    skip: int = 0
    active: float = 0.0  # clock time of the stream's last input (for the TTL)
    # a kept gap reaches the head between the outputs of the steps before and after it,
    # which may come later (lookahead, chunk, offline pass): gaps as counts of steps
    enqueued: int = 0  # steps given to the model so far
    delivered: int = 0  # steps whose outputs went to the head so far
    gap_marks: deque[int] = field(default_factory=deque)  # gaps after that many steps
    # decode = "end": the clip so far (its first and last steps, the last output row)
    clip_first: Step | None = None
    clip_last: Step | None = None
    clip_row: Tensor | None = None
    clip_steps: int = 0
    captions: int = 0
    # offline pieces: the one being stepped on the worker, with its steps
    inflight: tuple[asyncio.Future[dict[str, Tensor]], list[Step]] | None = None

    @property
    def pending(self) -> int:
        return len(self.pending_steps)


class ModelStage:
    """Runs a :class:`~streamer.models.StatefulModel` over every stream of its inbox."""

    def __init__(
        self,
        model: StatefulModel,
        settings: ModelSettings,
        mode: Mode = "online",
        clock: Clock | None = None,
        name: str = "model",
        source_info: dict[str, Any] | None = None,
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
        self.name = name
        self.model = model
        self.settings = settings
        self.mode = mode
        self.clock = clock or RealClock()
        self.source_info = dict(source_info or {})
        self.store = StateStore(model, ttl=settings.ttl)
        self.worker = Worker(f"model-{name}", self.clock)
        self._streams: dict[str, _Stream] = {}
        self._checked = False
        self._calls = 0
        self._batched_chunks = 0
        self._step_duration: float | None = None
        self._call_s = 0.0  # how long the last model call took (clock time)
        check_head_settings(model, settings, name)

    def report(self) -> dict[str, Any]:
        """Figures for the run summary: the declared delay and how batching went."""
        lookahead = self.settings.lookahead
        return {
            "lookahead_frames": lookahead,
            "lookahead_s": None if self._step_duration is None else lookahead * self._step_duration,
            "model_calls": self._calls,
            "mean_batch": self._batched_chunks / self._calls if self._calls else None,
        }

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
                self._touch(streams)
                await self._evict_idle(outbox)
                await self._process(items, outbox)
                # processing (a slow model call) takes time: these streams were served now
                self._touch(streams)
        finally:
            self.worker.close()

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
        the budget (older than the budget less the last model call's time, that time
        counted up to half the budget) becomes a gap, ``reason = "deadline"`` (a stream's
        run of them one gap), so the stage catches up with the newest frames; the gap's
        state handling is ``on_gap``'s, as for any gap."""
        assert self.settings.latency_budget_ms is not None
        budget = self.settings.latency_budget_ms / 1000.0
        oldest = self.clock.now() - budget + min(self._call_s, budget / 2)
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

    def _touch(self, streams: set[str]) -> None:
        """The streams with items in the batch at hand are active now."""
        now = self.clock.now()
        for stream in streams:
            ctx = self._streams.get(stream)
            if ctx is not None:
                ctx.active = now

    async def _evict_idle(self, outbox: Channel[Any]) -> None:
        """Streams without input for ``ttl`` seconds end as if their end marker had come.

        Activity is input (a stream filling a chunk, or collected for an offline pass, is
        active), stamped when a batch is taken and after it is processed: a stream with
        items in the batch at hand, or in the one just processed, is never idle, however
        long the model call took. What an idle stream sent is still stepped and output
        before its state is dropped: eviction loses no output.
        """
        ttl = self.settings.ttl
        if ttl is None:
            return
        now = self.clock.now()
        idle = [s for s, ctx in self._streams.items() if now - ctx.active > ttl]
        if not idle:
            return
        await self._step_ready(outbox, force=True, only=set(idle))
        for stream in idle:
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
    def _start(self, start: StreamStart) -> _Stream:
        """Fresh state for the stream ``start`` begins; its
        :class:`~streamer.frames.StreamInfo` says the media, rate and frame shape (audio
        ``chunk``/``channels``, video ``size``), its ``meta`` the real ``samples`` and
        ``loop``. A marker without info falls back to the source's ``source_info`` and
        ``meta`` keys; an unknown shape is learnt from the first frame."""
        stream, info = start.stream, start.info
        s = self.settings
        if info is not None:
            media, rate = info.media, info.rate
            chunk, channels, size = info.chunk, info.channels, info.size
        else:
            known = {**self.source_info, **start.meta}
            media, rate = start.media, start.rate
            chunk, channels, size = known.get("chunk"), known.get("channels"), known.get("size")
        options = dict(s.feature_options)
        if "size" in options:  # pixels' own size: every frame resized to it, not the source's
            size = tuple(options.pop("size"))
        features = make_features(
            s.features,
            media=media,
            rate=rate,
            chunk=chunk if media == "audio" else None,
            channels=channels if media == "audio" else None,
            size=size if media == "video" else None,
            meta=start.meta,
            **options,
        )
        head: Head | None = None
        generator: GenerateHead[State] | None = None
        # with thresholds, a step where no label is on takes smoothing's default label
        default = (s.smoothing or {}).get("default")
        labeler = Labeler(s.labels, s.thresholds, default) if s.thresholds else None
        if s.head == "generate":
            generator = GenerateHead(
                stream,
                s.labels,
                self._decode_step,
                max_len=s.max_len,
                end_token=s.end_token,
                sequence=s.decode == "end",
            )
        else:
            options = dict(s.head_options)
            if labeler is not None:
                options["labeler"] = labeler
            head = make_head(s.head, stream=stream, labels=s.labels, **options)  # type: ignore[assignment]
        smoother = None
        if s.smoothing:
            duration = features.step_duration or (1.0 / rate if rate else 0.01)
            options = dict(s.smoothing)
            default = options.pop("default", s.labels[0])
            try:
                smoother = self._smoother(s, default, duration, options)
            except (TypeError, ValueError) as exc:
                raise InputError(f"[model.smoothing]: {exc}") from None
        if features.step_duration is not None:
            self._step_duration = features.step_duration
        ctx = _Stream(
            media, features, head, generator, smoother, skip=s.lookahead, active=self.clock.now()
        )
        self._streams[stream] = ctx
        self.store.start(stream, self.clock.now())
        return ctx

    @staticmethod
    def _smoother(
        s: ModelSettings, default: str, duration: float, options: dict[str, Any]
    ) -> Smoother | LabelwiseSmoother:
        """``[model.smoothing]``'s smoother: one label sequence, or each label's own."""
        per_label = options.pop("per_label", False)
        hysteresis = options.pop("hysteresis", None) or 0.0
        if not per_label:
            return Smoother(default, frame_duration=duration, **options)
        on = options.pop("on", None)
        labels = options.pop("segment_labels", None) or [x for x in s.labels if x != default]
        thresholds = s.thresholds or {}
        fallback = 0.5 if on is None else on
        return LabelwiseSmoother(
            {label: thresholds.get(label, fallback) for label in labels},
            frame_duration=duration,
            hysteresis=hysteresis,
            **options,
        )

    def _ctx(self, frame: Frame) -> _Stream:
        ctx = self._streams.get(frame.stream)
        if ctx is None:  # a stream whose start marker we never saw
            ctx = self._start(_start_of(frame, frame.stream))
        return ctx

    async def _frames(self, frames: list[Frame], outbox: Channel[Any]) -> None:
        """Features for a run of frames, computed on the worker thread (log-mel is not free
        and must not hold up the event loop). A frame holding NaN or Inf splits the run, so
        that its gap falls between the right frames."""
        for frame in frames:
            self._ctx(frame)  # a stream whose start marker never came starts here
        start = 0
        while start < len(frames):
            done = await self.worker.call(self._featurize, frames, start)
            start += done
            if start < len(frames):
                await self._invalid(frames[start], outbox)
                start += 1

    def _featurize(self, frames: list[Frame], start: int) -> int:
        """Push ``frames[start:]`` through their streams' front-ends up to the first invalid
        frame; returns how many were pushed. Runs on the worker thread."""
        stop = _first_invalid(frames, start)
        at = start
        while at < stop:  # one front-end call per run of one stream's frames
            stream = frames[at].stream
            end = at + 1
            while end < stop and frames[end].stream == stream:
                end += 1
            ctx = self._streams[stream]
            x, steps = ctx.features.push_frames(frames[at:end])
            at = end
            if not self._checked:
                self._checked = True
                self.check_input(x[:1] if x.shape[0] else None)
            if x.shape[0]:
                ctx.pending_x.append(x)
                ctx.pending_steps.extend(steps)
                ctx.enqueued += len(steps)
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
        ctx = self._streams.get(stream)
        if ctx is None:
            return
        reset = self.settings.on_gap == "reset"
        if self.mode == "offline" and reset:
            await self._run_offline(stream, ctx, outbox)
        if reset:
            await self._flush_lookahead(stream, ctx, outbox)
            await self._caption(stream, ctx, outbox, end=False)
            self.store.reset(stream)
            ctx.skip = self.settings.lookahead
        ctx.features.gap()
        ctx.gap_marks.append(ctx.enqueued)
        await self._due_gaps(ctx, outbox)

    async def _due_gaps(self, ctx: _Stream, outbox: Channel[Any]) -> None:
        """Gaps whose steps before them all have their outputs reach the head now."""
        while ctx.gap_marks and ctx.gap_marks[0] <= ctx.delivered:
            ctx.gap_marks.popleft()
            outputs = ctx.head.gap() if ctx.head is not None else []
            await self._emit(ctx, outputs, outbox, closing="gap")

    async def _end(self, stream: str, outbox: Channel[Any]) -> None:
        ctx = self._streams.pop(stream, None)
        if ctx is None:
            return
        if self.mode == "offline":
            await self._run_offline(stream, ctx, outbox)
        await self._flush_lookahead(stream, ctx, outbox)
        await self._caption(stream, ctx, outbox, end=True)
        outputs = ctx.head.end() if ctx.head is not None else []
        await self._emit(ctx, outputs, outbox, closing="end")
        self.store.end(stream)

    # -- model calls -------------------------------------------------------------------
    async def _step_ready(
        self, outbox: Channel[Any], force: bool, only: set[str] | None = None
    ) -> None:
        """Step every stream with enough pending steps (any pending with ``force``), or
        just the streams ``only`` (before their markers are applied)."""
        if self.mode == "offline":
            if not force:
                await self._offline_pieces(outbox)
            return
        need = 1 if (force or self.mode == "realtime") else self.settings.chunk
        ready = {
            s: c
            for s, c in self._streams.items()
            if c.pending >= need and (only is None or s in only)
        }
        if not ready:
            return
        chunks = {s: torch.cat(c.pending_x) for s, c in ready.items()}
        steps = {s: c.pending_steps for s, c in ready.items()}
        for c in ready.values():
            c.pending_x, c.pending_steps = [], []
        await self._step_chunks(ready, chunks, steps, outbox)

    async def _step_chunks(
        self,
        ready: dict[str, _Stream],
        chunks: dict[str, Tensor],
        steps: dict[str, list[Step]],
        outbox: Channel[Any],
    ) -> None:
        """Step the streams' chunks in batched calls and deliver the outputs.

        With a generate head that decodes after each step, one step per call: each step's
        decode starts from the state right after that step, whatever the chunking or mode.
        """
        by_step = self.settings.decode == "step"
        if ready and by_step and all(c.generator is not None for c in ready.values()):
            longest = max(x.shape[0] for x in chunks.values())
            rounds = [
                {s: x[t : t + 1] for s, x in chunks.items() if x.shape[0] > t}
                for t in range(longest)
            ]
            parts = [{s: steps[s][t : t + 1] for s in r} for t, r in enumerate(rounds)]
        else:
            rounds, parts = [chunks], [steps]
        for batch, batch_steps in zip(rounds, parts, strict=True):
            self._calls += math.ceil(len(batch) / self.settings.max_batch)
            self._batched_chunks += len(batch)
            called = self.clock.now()
            ys = await self.worker.call(
                step_batch,
                self.model,
                self.store,
                batch,
                self.clock.now(),
                max_batch=self.settings.max_batch,
            )
            self._call_s = self.clock.now() - called
            for stream, y in ys.items():
                await self._deliver(stream, ready[stream], y, batch_steps[stream], outbox)

    async def _run_offline(self, stream: str, ctx: _Stream, outbox: Channel[Any]) -> None:
        """The whole collected sequence in one forward (or long causal pieces)."""
        await self._land(stream, ctx, outbox)
        if not ctx.pending_x:
            return
        x = torch.cat(ctx.pending_x)
        steps = ctx.pending_steps
        ctx.pending_x, ctx.pending_steps = [], []
        if ctx.generator is not None and self.model.causal:
            # decoding needs the state after each step, which one forward does not give
            await self._step_chunks({stream: ctx}, {stream: x}, {stream: steps}, outbox)
            return
        if self.settings.offline_chunk and self.model.causal:
            await self._step_pieces(stream, ctx, x, steps, outbox, final=True)
            return
        lookahead = self.settings.lookahead
        if lookahead:
            x = torch.cat([x, x.new_zeros((lookahead, *x.shape[1:]))])
        self._count(1)
        y = (await self.worker.call(self.model.forward, x.unsqueeze(0)))[0]
        ctx.skip = 0
        await self._deliver(stream, ctx, y[lookahead:], steps, outbox)
        ctx.skip = lookahead

    async def _offline_pieces(self, outbox: Channel[Any]) -> None:
        """Offline with ``offline_chunk`` and a causal model: each stream's full pieces are
        stepped as soon as they are collected (reading, the model and the outputs overlap);
        the rest waits for more input, the stream's end or a resetting gap."""
        piece = self.settings.offline_chunk
        if not piece or not self.model.causal:
            return
        for stream, ctx in list(self._streams.items()):
            if ctx.generator is None and ctx.pending >= piece:
                x, steps = torch.cat(ctx.pending_x), ctx.pending_steps
                ctx.pending_x, ctx.pending_steps = [], []
                await self._step_pieces(stream, ctx, x, steps, outbox, final=False)

    async def _step_pieces(
        self,
        stream: str,
        ctx: _Stream,
        x: Tensor,
        steps: list[Step],
        outbox: Channel[Any],
        final: bool,
    ) -> None:
        """Step ``x [T, *F]`` in ``offline_chunk``-step pieces from the stream's state. Not
        ``final``: only whole pieces, the rest back to pending. ``final``: all of it, then
        ``lookahead`` zero steps so the last steps get their outputs (``_deliver`` skips
        the first ``lookahead`` rows, as online)."""
        piece = self.settings.offline_chunk
        if not final:
            whole = x.shape[0] // piece * piece
            if whole < x.shape[0]:
                ctx.pending_x, ctx.pending_steps = [x[whole:]], steps[whole:]
            x, steps = x[:whole], steps[:whole]
        elif self.settings.lookahead:
            x = torch.cat([x, x.new_zeros((self.settings.lookahead, *x.shape[1:]))])
        for begin in range(0, x.shape[0], piece):
            self._count(1)
            future = self.worker.start(
                step_batch,
                self.model,
                self.store,
                {stream: x[begin : begin + piece]},
                self.clock.now(),
            )
            # the piece before this one is output while this one runs
            await self._land(stream, ctx, outbox)
            ctx.inflight = (future, steps[begin : begin + piece])
        if final:
            await self._land(stream, ctx, outbox)

    async def _land(self, stream: str, ctx: _Stream, outbox: Channel[Any]) -> None:
        """Wait for the stream's piece in flight (if any) and deliver its outputs."""
        if ctx.inflight is None:
            return
        future, steps = ctx.inflight
        ctx.inflight = None
        out = await future
        await self._deliver(stream, ctx, out[stream], steps, outbox)

    def _count(self, streams: int) -> None:
        """One model call over ``streams`` streams, for the report."""
        self._calls += 1
        self._batched_chunks += streams

    async def _flush_lookahead(self, stream: str, ctx: _Stream, outbox: Channel[Any]) -> None:
        """Step ``L`` zero steps so the last ``L`` steps get their outputs."""
        if not ctx.waiting or self.mode == "offline":
            ctx.waiting.clear()
            return
        shape = ctx.features.shape
        if shape is None:
            return
        pad = torch.zeros((self.settings.lookahead, *shape))
        self._count(1)
        ys = await self.worker.call(
            step_batch, self.model, self.store, {stream: pad}, self.clock.now()
        )
        await self._deliver(stream, ctx, ys[stream], [], outbox)

    async def _deliver(
        self, stream: str, ctx: _Stream, y: Tensor, steps: list[Step], outbox: Channel[Any]
    ) -> None:
        """Pair output rows with their steps (lookahead shift) and run the head; kept gaps
        reach the head between the rows of the steps before and after them."""
        ctx.waiting.extend(steps)
        y = y.detach().cpu()
        if not ctx.skip and not ctx.gap_marks and len(ctx.waiting) >= len(y):
            # the common case: every row has its step and no gap falls between them
            n = len(y)
            ctx.delivered += n
            await self._push_block(
                stream, ctx, y, [ctx.waiting.popleft() for _ in range(n)], outbox
            )
            return
        rows: list[Tensor] = []
        paired: list[Step] = []
        for row in y:
            if ctx.skip:
                ctx.skip -= 1
                continue
            if not ctx.waiting:
                break
            if ctx.gap_marks and ctx.gap_marks[0] <= ctx.delivered:
                await self._push(stream, ctx, rows, paired, outbox)
                rows, paired = [], []
                await self._due_gaps(ctx, outbox)
            paired.append(ctx.waiting.popleft())
            rows.append(row)
            ctx.delivered += 1
        await self._push(stream, ctx, rows, paired, outbox)
        await self._due_gaps(ctx, outbox)

    async def _push(
        self,
        stream: str,
        ctx: _Stream,
        rows: list[Tensor],
        paired: list[Step],
        outbox: Channel[Any],
    ) -> None:
        if rows:
            await self._push_block(stream, ctx, torch.stack(rows), paired, outbox)

    async def _push_block(
        self, stream: str, ctx: _Stream, y_paired: Tensor, paired: list[Step], outbox: Channel[Any]
    ) -> None:
        """Rows ``y_paired [T, K]`` with their steps to the head (or the decoder)."""
        if ctx.generator is not None:
            await self._generate(stream, ctx, y_paired, paired, outbox)
            return
        assert ctx.head is not None
        await self._emit(ctx, ctx.head.push(y_paired, paired), outbox)

    async def _emit(
        self,
        ctx: _Stream,
        outputs: list[Output],
        outbox: Channel[Any],
        closing: str | None = None,
    ) -> None:
        if ctx.smoother is not None:
            outputs = ctx.smoother.push(outputs)
            if closing == "gap":
                outputs += ctx.smoother.gap()
            elif closing == "end":
                outputs += ctx.smoother.end()
        await outbox.send_many(outputs)

    # -- one-to-many -------------------------------------------------------------------
    async def _generate(
        self, stream: str, ctx: _Stream, y: Tensor, steps: list[Step], outbox: Channel[Any]
    ) -> None:
        """Per step: decode greedily from its output, sending each token as it comes.

        Decoding starts from the stream's state after the step and does not change it:
        the next input continues from where the input left the stream.
        """
        assert ctx.generator is not None
        if self.settings.decode == "end":  # the clip goes on: decoded at its end
            if steps:
                ctx.clip_first = ctx.clip_first or steps[0]
                ctx.clip_last, ctx.clip_row = steps[-1], y[-1]
                ctx.clip_steps += len(steps)
            return
        for row, step in zip(y, [*steps], strict=True):
            await self._decode(stream, ctx, row, [step], outbox)

    async def _decode(
        self, stream: str, ctx: _Stream, row: Tensor, steps: list[Step], outbox: Channel[Any]
    ) -> None:
        """Decode from ``row`` (the output of ``steps[-1]``) and the stream's state."""
        assert ctx.generator is not None
        tokens = ctx.generator.generate(row, self.store.get(stream), steps)
        while True:
            output = await self.worker.call(_next_or_none, tokens)
            if output is None:
                break
            await outbox.send(output)

    async def _caption(self, stream: str, ctx: _Stream, outbox: Channel[Any], *, end: bool) -> None:
        """With ``decode = "end"``: decode the clip that ends here (the stream's ``end``, or
        a resetting gap) from the state after its last step. A clip under ``min_steps`` is
        skipped with a warning, or refused when it is all the stream had."""
        first, last, row, count = ctx.clip_first, ctx.clip_last, ctx.clip_row, ctx.clip_steps
        ctx.clip_first = ctx.clip_last = ctx.clip_row = None
        ctx.clip_steps = 0
        if first is None or last is None or row is None:
            return
        if count < self.settings.min_steps:
            if end and not ctx.captions:
                raise InputError(
                    f"stream '{stream}': too short for a caption: {count} steps (frames),"
                    f" the model needs at least {self.settings.min_steps} ([model] min_steps)"
                )
            log.warning(
                "stage '%s': stream '%s': %d steps before a gap, too short for a caption",
                self.name,
                stream,
                count,
            )
            return
        ctx.captions += 1
        await self._decode(stream, ctx, row, [first, last], outbox)

    def _decode_step(self, inp: Tensor | int, state: State) -> tuple[Tensor, State]:
        """First call: the step's own output; then feed the previous token back in."""
        if isinstance(inp, Tensor):
            return inp, state
        x = self.embed_token(inp).reshape(1, 1, -1)
        y, state = self.model.step(x, state)
        return y[0, -1], state

    def embed_token(self, token: int) -> Tensor:
        """The model's ``embed_token(id)`` if it has one, else a one-hot vector ``[F]``."""
        embed = find_embedder(self.model)
        if embed is not None:
            return torch.as_tensor(embed(token), dtype=torch.float32)
        shape = self.model.input_shape
        size = math.prod(shape) if shape else len(self.settings.labels)
        one_hot = torch.zeros(size)
        one_hot[token] = 1.0
        return one_hot

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
        features ``x [T, F...]``; see :func:`~streamer.stages.model_checks.check_input`."""
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


def _next_or_none(tokens: Iterator[Output]) -> Output | None:
    return next(tokens, None)


def _first_invalid(frames: list[Frame], start: int) -> int:
    """The index of the first frame from ``start`` whose data holds NaN or Inf
    (``len(frames)`` when none does). Float arrays are checked in one pass when they can
    be joined; otherwise, or when that pass finds something, frame by frame."""
    datas = [f.data for f in frames[start:]]
    if datas and all(isinstance(d, np.ndarray) and d.dtype.kind == "f" for d in datas):
        try:
            if bool(np.isfinite(np.concatenate([d.reshape(-1) for d in datas])).all()):
                return len(frames)
        except ValueError:
            pass
    for offset, data in enumerate(datas):
        if not _finite(data):
            return start + offset
    return len(frames)


def _finite(data: Any) -> bool:
    if isinstance(data, Tensor):
        return bool(torch.isfinite(data).all())
    try:
        array = np.asarray(data)
        if array.dtype.kind != "f":
            return True
        return bool(np.isfinite(array).all())
    except (TypeError, ValueError):
        return True
