"""One stream's logic inside the model stage, synchronous and free of asyncio.

A :class:`ModelStream` holds a stream's feature front-end, head and smoother and the
bookkeeping between them: the steps pending for the model, the lookahead alignment of the
model's outputs with their steps, and where kept gaps fall between those outputs. The
stage (:class:`~streamer.stages.model.ModelStage`) decides when to step which streams,
makes the model calls and sends what the methods here return:

- :meth:`~ModelStream.push` frames -> pending steps; :meth:`~ModelStream.take_chunk` hands
  them to the model;
- :meth:`~ModelStream.deliver` the model's rows ``y [T, K]`` -> outputs (the row of step
  ``i`` belongs to step ``i - L``; the first ``L`` rows after a (re)start have no step);
- :meth:`~ModelStream.gap` and :meth:`~ModelStream.end` -> the outputs they close;
- :meth:`~ModelStream.lookahead_pad`: the ``L`` zero steps that flush the last outputs.

Each returns a list of :data:`Emit`: outputs to send, or an iterator of outputs that cost
model calls (a decoder's tokens), which the stage draws on its worker one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from streamer.blocks import OutputBlock
from streamer.errors import InputError
from streamer.frames import Frame, Output, StreamStart
from streamer.models import State
from streamer.stages.model.features import Features, Step, make_features
from streamer.stages.model.generate import GenerateHead
from streamer.stages.model.heads import FrameHead, Head, HeadOutputs, make_head
from streamer.stages.model.labelwise import LabelwiseSmoother
from streamer.stages.model.postprocess import Labeler, Smoother
from streamer.stages.model.settings import ModelSettings

#: What the stream hands the stage to send: an output, or an iterator of outputs that
#: cost model calls (drawn one by one on the model's worker, each sent as it comes).
Emit = Output | OutputBlock | Iterator[Output]


class ModelStream:
    """One stream's working set: front-end, pending steps, alignment, head, smoother.

    ``lookahead`` ``L``: the model's output at step ``s`` belongs to step ``s - L``.
    Kept gaps reach the head (and smoother) between the outputs of the steps before and
    after them, which may come later (lookahead, chunk, offline pass).
    """

    def __init__(
        self,
        stream: str,
        features: Features,
        head: Head,
        smoother: Smoother | LabelwiseSmoother | None = None,
        lookahead: int = 0,
    ) -> None:
        self.stream = stream
        self.features = features
        self.head = head
        self.smoother = smoother
        self.lookahead = lookahead
        self._x: list[Tensor] = []  # pending features, [T_i, F...] each
        self._steps: list[Step] = []  # and their steps
        self._waiting: deque[Step] = deque()  # stepped, their outputs not yet delivered
        self._skip = lookahead  # rows to drop before the next row that has a step
        self._enqueued = 0  # steps given to the model so far
        self._delivered = 0  # steps whose outputs went to the head so far
        self._gap_marks: deque[int] = deque()  # gaps after that many steps

    @property
    def pending(self) -> int:
        """Steps waiting to be stepped."""
        return len(self._steps)

    # -- input -------------------------------------------------------------------------
    def push(self, frames: Sequence[Frame]) -> Tensor:
        """The stream's next ``frames`` (at least one, in order) through the front-end;
        the steps they complete become pending. Returns those steps ``x [T, F...]``."""
        x, steps = self.features.push_frames(frames)
        if x.shape[0]:
            self._x.append(x)
            self._steps.extend(steps)
            self._enqueued += len(steps)
        return x

    def take_chunk(self, multiple: int = 1) -> tuple[Tensor, list[Step]]:
        """The pending steps (at least ``multiple``) for the model: ``x [T, F...]`` and
        their steps, ``T`` a multiple of ``multiple`` (the rest stays pending)."""
        if self.pending < max(1, multiple):
            raise ValueError(f"stream '{self.stream}': {self.pending} steps pending")
        # (a copy even of one piece: a raw audio step is a view of its frame's data, which
        # may be a read-only map of a recording; the model gets memory of its own)
        x, steps = torch.cat(self._x), self._steps
        self._x, self._steps = [], []
        if multiple > 1:
            whole = x.shape[0] // multiple * multiple
            if whole < x.shape[0]:
                self._x, self._steps = [x[whole:]], steps[whole:]
            x, steps = x[:whole], steps[:whole]
        return x, steps

    def lookahead_pad(self) -> Tensor | None:
        """``L`` zero steps ``[L, F...]`` whose outputs are those of the last ``L`` steps,
        or None when no step waits for its output."""
        if not self._waiting:
            return None
        shape = self.features.shape
        if shape is None:
            return None
        return torch.zeros((self.lookahead, *shape))

    def discard_waiting(self) -> None:
        """Forget the steps still waiting for outputs (an offline pass aligns its own)."""
        self._waiting.clear()

    # -- outputs -----------------------------------------------------------------------
    @property
    def block_head(self) -> FrameHead | None:
        """The head when its rows go out as output blocks (a frame head, no smoothing)."""
        return self.head if isinstance(self.head, FrameHead) and self.smoother is None else None

    def take_plain(self, rows: int, steps: Sequence[Step]) -> list[Step] | None:
        """The steps of the model's next ``rows`` rows for the chunk of ``steps``, paired
        as :meth:`deliver` pairs them, when this stream's rows go out as blocks and nothing
        lies between them (:meth:`_paired`). Then the stage scores these rows together
        with other streams' (one block for the call); otherwise None, and nothing changes
        (use :meth:`deliver`)."""
        return self._paired(rows, steps) if self.block_head is not None else None

    def _paired(self, rows: int, steps: Sequence[Step]) -> list[Step] | None:
        """The common case: with ``steps`` waiting too, every one of the next ``rows`` rows
        has its step and no lookahead row or gap falls between them; their steps, taken.
        Otherwise None, and nothing changes."""
        if self._skip or self._gap_marks or len(self._waiting) + len(steps) < rows:
            return None
        self._waiting.extend(steps)
        self._delivered += rows
        return [self._waiting.popleft() for _ in range(rows)]

    def deliver(self, y: Tensor, steps: Sequence[Step]) -> list[Emit]:
        """The model's rows ``y [T, K]`` for the chunk of ``steps`` (``[]``: lookahead
        zero steps): pair them with their steps (lookahead shift) and run the head; kept
        gaps reach the head between the rows of the steps before and after them."""
        y = y.detach().cpu()
        chunk = self._paired(len(y), steps)
        if chunk is not None:
            head = self.block_head
            if head is not None:
                return [head.block(y, chunk)]  # the hot path: rows as one block
            return self._emit(self.head.push(y, chunk))
        self._waiting.extend(steps)
        out: list[Emit] = []
        rows: list[Tensor] = []
        paired: list[Step] = []
        for row in y:
            if self._skip:
                self._skip -= 1
                continue
            if not self._waiting:
                break
            if self._gap_marks and self._gap_marks[0] <= self._delivered:
                out += self._push(rows, paired)
                rows, paired = [], []
                out += self._due_gaps()
            paired.append(self._waiting.popleft())
            rows.append(row)
            self._delivered += 1
        out += self._push(rows, paired)
        out += self._due_gaps()
        return out

    def deliver_aligned(self, y: Tensor, steps: Sequence[Step]) -> list[Emit]:
        """:meth:`deliver` of rows already aligned with ``steps`` (an offline pass that
        dropped its first ``L`` rows itself)."""
        self._skip = 0
        out = self.deliver(y, steps)
        self._skip = self.lookahead
        return out

    def gap(self, reset: bool) -> list[Emit]:
        """Steps are missing here (everything before was stepped and, with ``reset``,
        delivered). ``reset``: the model's state starts afresh after it, so the next
        ``L`` rows have no step again."""
        if reset:
            self._skip = self.lookahead
        self.features.gap()
        self._gap_marks.append(self._enqueued)
        return self._due_gaps()

    def end(self) -> list[Emit]:
        """The stream is over (everything was stepped and delivered)."""
        return self._emit(self.head.end(), closing="end")

    def _push(self, rows: list[Tensor], paired: list[Step]) -> list[Emit]:
        return self._emit(self.head.push(torch.stack(rows), paired)) if rows else []

    def _due_gaps(self) -> list[Emit]:
        """Gaps whose steps before them all have their outputs reach the head now."""
        out: list[Emit] = []
        while self._gap_marks and self._gap_marks[0] <= self._delivered:
            self._gap_marks.popleft()
            out += self._emit(self.head.gap(), closing="gap")
        return out

    def _emit(
        self, outputs: HeadOutputs, closing: Literal["gap", "end"] | None = None
    ) -> list[Emit]:
        """The head's outputs through the smoother (a decoder's pass as they are)."""
        if not isinstance(outputs, list):
            return [outputs]
        if self.smoother is not None:
            outputs = self.smoother.push(outputs)
            if closing == "gap":
                outputs += self.smoother.gap()
            elif closing == "end":
                outputs += self.smoother.end()
        return list(outputs)


def open_stream(
    start: StreamStart,
    settings: ModelSettings,
    source_info: dict[str, Any],
    decode_step: Callable[[Tensor | int, State], tuple[Tensor, State]],
    state: Callable[[], State],
) -> ModelStream:
    """The :class:`ModelStream` for the stream ``start`` begins.

    Its :class:`~streamer.frames.StreamInfo` says the media, rate and frame shape (audio
    ``chunk``/``channels``, video ``size``), its ``meta`` the real ``samples`` and
    ``loop``; a marker without info falls back to the source's ``source_info`` and
    ``meta`` keys, and an unknown shape is learnt from the first frame. ``decode_step``
    and ``state`` (the stream's model state now) serve a generate head.
    """
    stream, info, s = start.stream, start.info, settings
    if info is not None:
        media, rate = info.media, info.rate
        chunk, channels, size = info.chunk, info.channels, info.size
    else:
        known = {**source_info, **start.meta}
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
    head: Head
    if s.head == "generate":
        head = GenerateHead(
            stream,
            s.labels,
            decode_step,
            max_len=s.max_len,
            end_token=s.end_token,
            sequence=s.decode == "end",
            state=state,
            decode=s.decode,
            min_steps=s.min_steps,
            clip_on_gap=s.on_gap == "reset",
        )
    else:
        options = dict(s.head_options)
        if s.thresholds:  # a step where no label is on takes smoothing's default label
            default = (s.smoothing or {}).get("default")
            options["labeler"] = Labeler(s.labels, s.thresholds, default)
        head = make_head(s.head, stream=stream, labels=s.labels, **options)
    smoother = None
    if s.smoothing:
        duration = features.step_duration or (1.0 / rate if rate else 0.01)
        options = dict(s.smoothing)
        default = options.pop("default", s.labels[0])
        try:
            smoother = _smoother(s, default, duration, options)
        except (TypeError, ValueError) as exc:
            raise InputError(f"[model.smoothing]: {exc}") from None
    return ModelStream(stream, features, head, smoother, s.lookahead)


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
