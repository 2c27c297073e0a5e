"""How the model stage steps its streams: the model calls, on the stage's worker thread.

:class:`ModelCalls` is the part of :class:`~streamer.stages.model.ModelStage` that calls
the model: batched rounds of the chunks that are ready (the mode's readiness rule),
offline passes (one ``forward``, or causal pieces stepped while the next input is read),
the lookahead flush, the decoder's steps; and sending what the streams make of the
outputs, drawing a decoder's tokens on the worker.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from streamer.blocks import OutputBlock
from streamer.channels import Channel
from streamer.clock import Clock
from streamer.frames import Output
from streamer.models import State, StatefulModel, StateStore, step_batch
from streamer.options import Mode
from streamer.stages.model.checks import find_embedder
from streamer.stages.model.features import Step
from streamer.stages.model.heads import FrameHead
from streamer.stages.model.settings import ModelSettings
from streamer.stages.model.stream import Emit, ModelStream
from streamer.worker import Worker

if TYPE_CHECKING:
    from streamer.cluster.engine import RayEngine


class ModelCalls:
    """The model calls of a model stage over its streams ``_streams``."""

    def __init__(
        self,
        model: StatefulModel,
        settings: ModelSettings,
        mode: Mode,
        clock: Clock,
        name: str,
        engine: RayEngine | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.mode = mode
        self.clock = clock
        #: the Ray engine, whose actors hold the states and make the steps (None: here)
        self.engine = engine
        # the owner of the idle TTL (with an engine: the activity times only)
        self.store: StateStore = engine.store if engine else StateStore(model, ttl=settings.ttl)
        self.worker = Worker(f"model-{name}", clock)
        self._streams: dict[str, ModelStream] = {}
        # offline pieces: each stream's piece being stepped on the worker, with its steps
        self._inflight: dict[str, tuple[asyncio.Future[dict[str, Tensor]], list[Step]]] = {}
        self._calls = 0
        self._batched_chunks = 0
        # how long the recent model calls took (clock time): their shortest is what a
        # call is expected to cost (a stall or a collection does not count)
        self._calls_s: deque[float] = deque(maxlen=8)

    async def _send(self, emits: list[Emit], outbox: Channel[Any]) -> None:
        """A stream's outputs to the outbox; an iterator of outputs that cost model calls
        is drawn on the worker, each output sent as it comes."""
        batch: list[Output | OutputBlock] = []
        for emit in emits:
            if not isinstance(emit, Iterator):
                batch.append(emit)
                continue
            await outbox.send_many(batch)
            batch = []
            while (output := await self.worker.call(_next_or_none, emit)) is not None:
                await outbox.send(output)
        await outbox.send_many(batch)

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
        chunks: dict[str, Tensor] = {}
        steps: dict[str, list[Step]] = {}
        for s, c in ready.items():
            chunks[s], steps[s] = c.take_chunk()
        await self._step_chunks(ready, chunks, steps, outbox)

    async def _step_chunks(
        self,
        ready: dict[str, ModelStream],
        chunks: dict[str, Tensor],
        steps: dict[str, list[Step]],
        outbox: Channel[Any],
    ) -> None:
        """Step the streams' chunks in batched calls and deliver the outputs.

        Streams whose heads decode each step from the state right after it
        (``step_by_step``) go one step per call, whatever the chunking or mode.
        """
        if ready and all(c.head.step_by_step for c in ready.values()):
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
            ys = await self._step(batch, called)
            self._calls_s.append(self.clock.now() - called)
            await self._deliver_call(ready, ys, batch_steps, outbox)

    async def _step(self, chunks: dict[str, Tensor], now: float) -> dict[str, Tensor]:
        """One batched step of ``chunks`` (each ``x [T, F...]``): on the worker thread from
        the store's states, or on the engine's actors."""
        if self.engine is not None:
            return await self.engine.step(chunks)
        return await self.worker.call(
            step_batch, self.model, self.store, chunks, now, max_batch=self.settings.max_batch
        )

    async def _deliver_call(
        self,
        ready: dict[str, ModelStream],
        ys: dict[str, Tensor],
        steps: dict[str, list[Step]],
        outbox: Channel[Any],
    ) -> None:
        """One model call's rows to the streams: the plain ones (frame heads, nothing
        between their rows, :meth:`ModelStream.take_plain`) scored and labelled together
        and sent as one block, the others through their own :meth:`ModelStream.deliver`."""
        rows: list[Tensor] = []
        paired: list[Step] = []
        streams: list[str] = []
        head: FrameHead | None = None
        for stream, y in ys.items():
            ctx = ready[stream]
            plain = ctx.take_plain(len(y), steps[stream])
            if plain is None:
                await self._send(ctx.deliver(y, steps[stream]), outbox)
                continue
            head = head or ctx.block_head
            rows.append(y.detach().cpu())
            paired += plain
            streams += [stream] * len(plain)
        if head is not None:
            await outbox.send(head.block(torch.cat(rows), paired, streams))

    async def _run_offline(self, stream: str, ctx: ModelStream, outbox: Channel[Any]) -> None:
        """The whole collected sequence in one forward (or long causal pieces)."""
        await self._land(stream, ctx, outbox)
        if not ctx.pending:
            return
        x, steps = ctx.take_chunk()
        if ctx.head.reads_state and self.model.causal:
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
        await self._send(ctx.deliver_aligned(y[lookahead:], steps), outbox)

    async def _offline_pieces(self, outbox: Channel[Any]) -> None:
        """Offline with ``offline_chunk`` and a causal model: each stream's full pieces are
        stepped as soon as they are collected (reading, the model and the outputs overlap);
        the rest waits for more input, the stream's end or a resetting gap."""
        piece = self.settings.offline_chunk
        if not piece or not self.model.causal:
            return
        for stream, ctx in list(self._streams.items()):
            if not ctx.head.reads_state and ctx.pending >= piece:
                x, steps = ctx.take_chunk(multiple=piece)
                await self._step_pieces(stream, ctx, x, steps, outbox, final=False)

    async def _step_pieces(
        self,
        stream: str,
        ctx: ModelStream,
        x: Tensor,
        steps: list[Step],
        outbox: Channel[Any],
        final: bool,
    ) -> None:
        """Step ``x [T, *F]`` in ``offline_chunk``-step pieces from the stream's state, each
        piece output while the next one runs. ``final``: then ``lookahead`` zero steps so
        the last steps get their outputs (the stream skips the first ``lookahead`` rows,
        as online), and the last piece lands."""
        piece = self.settings.offline_chunk
        if final and self.settings.lookahead:
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
            self._inflight[stream] = (future, steps[begin : begin + piece])
        if final:
            await self._land(stream, ctx, outbox)

    async def _land(self, stream: str, ctx: ModelStream, outbox: Channel[Any]) -> None:
        """Wait for the stream's piece in flight (if any) and deliver its outputs."""
        inflight = self._inflight.pop(stream, None)
        if inflight is None:
            return
        future, steps = inflight
        out = await future
        await self._send(ctx.deliver(out[stream], steps), outbox)

    def _count(self, streams: int) -> None:
        """One model call over ``streams`` streams, for the report."""
        self._calls += 1
        self._batched_chunks += streams

    async def _flush_lookahead(self, stream: str, ctx: ModelStream, outbox: Channel[Any]) -> None:
        """Step ``L`` zero steps so the last ``L`` steps get their outputs."""
        if self.mode == "offline":
            ctx.discard_waiting()
            return
        pad = ctx.lookahead_pad()
        if pad is None:
            return
        self._count(1)
        ys = await self._step({stream: pad}, self.clock.now())
        await self._send(ctx.deliver(ys[stream], []), outbox)

    # -- decoding (a generate head) --------------------------------------------------------
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


def _next_or_none(tokens: Iterator[Output]) -> Output | None:
    return next(tokens, None)
