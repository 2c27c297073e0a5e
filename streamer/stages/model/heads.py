"""Heads: a stream's per-step model outputs ``y [T, K]`` in, :class:`Output` objects out.

A head (:class:`Head`; the generate head is in :mod:`~streamer.stages.model.generate`)
is made for one stream and fed in order: ``push(y, steps)`` with one ``Step`` (frame
index, pts, captured) per row of ``y``, then ``gap()`` where frames are missing and
``end()`` at the stream's end. Heads treat each row on its own (activations, window
contents and reductions do not depend on how rows were grouped into pushes), so a stream
gives the same outputs streamed or offline.

Scores (:class:`Scorer`), with ``L = len(labels)``:

- ``K == L``: ``softmax`` over the labels (the ``auto`` choice when ``L > 1``), ``sigmoid``
  per label (multi-label; ``auto`` when ``L == 1``), or ``none`` (the values as they are);
- ``K == 1`` and ``L == 2`` (binary): the single value is ``labels[1]``'s logit
  (``sigmoid``, the ``auto`` choice) or probability (``none``);
  ``labels[0]`` gets ``1 - p``.

Scores are computed in float64 and given as Python floats; labels come from a
:class:`~streamer.stages.model.postprocess.Labeler` (argmax unless thresholds are given).

Every output carries the media time it covers: ``t0`` the first covered step's ``pts``,
``t1`` the last covered step's end (``pts + duration``; None when the step's duration is
unknown). Smoothing measures runs and builds segments from them; the JSONL record writes
them only for segments.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import Field
from torch import Tensor

from streamer.blocks import OutputBlock
from streamer.errors import InputError
from streamer.frames import Output, OutputKind
from streamer.options import Bool, Int
from streamer.registry import Registry
from streamer.stages.model.frontend import Step, covering
from streamer.stages.model.generate import GenerateHead, GenerateHeadOptions
from streamer.stages.model.postprocess import Labeler
from streamer.stages.model.settings import Activation, HeadOptions

Reduce = Literal["mean", "max", "last"]
#: A window reduction: activated scores ``[W, L]`` -> ``[L]``.
ReduceFn = Callable[[Tensor], Tensor]
#: What a head's methods return: the outputs, or an iterator that decodes them lazily.
HeadOutputs = list[Output] | Iterator[Output]

__all__ = [
    "FrameHead",
    "GenerateHead",
    "Head",
    "HeadOutputs",
    "Scorer",
    "SequenceHead",
    "Step",
    "WindowHead",
    "WindowSchedule",
    "make_head",
]


class Head(Protocol):
    """The interface of every head (frame, window, sequence, generate).

    Each method returns the outputs it makes: a list, or, for a head whose outputs cost
    model calls (a decoder), an iterator that makes them one by one as it is drawn (the
    stage draws it on the model's worker and sends each output as it comes; smoothing
    does not apply to such outputs). ``reads_state``: the outputs are decoded from the
    stream's model state, so the model is stepped (never run as one ``forward``) and an
    offline pass is not cut into pieces. ``step_by_step``: each step's outputs need the
    state right after that step, so the stage steps the stream one step per model call.
    """

    kind: OutputKind
    stream: str
    reads_state: bool
    step_by_step: bool

    def push(self, y: Tensor, steps: Sequence[Step]) -> HeadOutputs:
        """Rows ``y [T, K]`` of the steps ``steps`` (``len(steps) == T``) -> outputs."""
        ...

    def gap(self) -> HeadOutputs:
        """Steps are missing before the next push."""
        ...

    def end(self) -> HeadOutputs:
        """The stream is over."""
        ...


class Scorer:
    """Model outputs ``y [T, K]`` -> scores ``[T, L]`` float64, one column per label."""

    def __init__(self, labels: Sequence[str], activation: Activation = "auto") -> None:
        if not labels:
            raise ValueError("a head needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {list(labels)}")
        if activation not in ("auto", "softmax", "sigmoid", "none"):
            raise ValueError(
                f"activation must be auto, softmax, sigmoid or none, not {activation!r}"
            )
        self.labels = list(labels)
        self.activation: Activation = activation

    def __call__(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.ndim != 2:
            shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"head: y must be [T, K], got {shape}")
        k, n = int(y.shape[1]), len(self.labels)
        y = y.detach().to(device="cpu", dtype=torch.float64)
        if k == 1 and n == 2:
            if self.activation == "softmax":
                raise ValueError(
                    "head: softmax over one output makes no sense; for K = 1 with two labels"
                    " use sigmoid (a logit) or none (a probability)"
                )
            p = y[:, 0] if self.activation == "none" else torch.sigmoid(y[:, 0])
            return torch.stack([1.0 - p, p], dim=1)
        if k != n:
            raise ValueError(
                f"head: the model gives K = {k} values per step but there are {n} labels"
                f" {self.labels} (K must equal the labels, or be 1 with two labels)"
            )
        activation = self.activation
        if activation == "auto":
            activation = "softmax" if n > 1 else "sigmoid"
        if activation == "softmax":
            return torch.softmax(y, dim=1)
        if activation == "sigmoid":
            return torch.sigmoid(y)
        return y

    def scores(self, row: Tensor) -> dict[str, float]:
        """One row ``[L]`` of scores as label -> Python float."""
        return dict(zip(self.labels, row.tolist(), strict=True))


def _check(y: Tensor, steps: Sequence[Step]) -> None:
    if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[0] != len(steps):
        shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"head: y must be [T, K] with T = len(steps) = {len(steps)}, got {shape}")


class FrameHead:
    """One ``frame`` output per step (``start == end ==`` the step's index; ``t0``/``t1``
    the step's ``pts`` and end)."""

    kind: OutputKind = "frame"
    reads_state = False
    step_by_step = False

    def __init__(
        self,
        stream: str,
        labels: Sequence[str],
        *,
        activation: Activation = "auto",
        labeler: Labeler | None = None,
    ) -> None:
        self.stream = stream
        self.scorer = Scorer(labels, activation)
        self.labeler = labeler or Labeler(labels)

    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output]:
        """``y [T, K]`` -> T ``frame`` outputs (:meth:`block`'s rows)."""
        return self.block(y, steps).outputs()

    def block(
        self, y: Tensor, steps: Sequence[Step], streams: Sequence[str] | None = None
    ) -> OutputBlock:
        """:meth:`push` as one :class:`~streamer.blocks.OutputBlock` (the same outputs,
        as columns; no :class:`Output` built unless a sink needs one). With ``streams``
        (one per row), rows of several streams whose heads score alike, at once."""
        _check(y, steps)
        labels = self.scorer.labels
        scored = self.scorer(y)
        if self.labeler.labels == labels:  # the labels of all rows at once
            chosen = self.labeler.rows(scored)
        else:
            chosen = [self.labeler(dict(zip(labels, r, strict=True))) for r in scored.tolist()]
        indices = [step.index for step in steps]
        pts = [step.pts for step in steps]
        return OutputBlock(
            "frame",
            tuple(labels),
            list(streams) if streams is not None else [self.stream] * len(steps),
            indices,
            indices,
            pts,
            chosen,
            scored.numpy(),
            [step.captured for step in steps],
            pts,
            [step.end for step in steps],
        )

    def gap(self) -> list[Output]:
        return []

    def end(self) -> list[Output]:
        return []


class WindowSchedule:
    """Where windows of ``window`` steps, every ``hop`` steps, end.

    Counting steps from 0 since the start (or the last :meth:`reset`), the first window
    ends at step ``window - 1``, then one every ``hop`` steps. A stage that runs the model
    over each window itself (fresh state per window) can use this to know when.
    """

    def __init__(self, window: int, hop: int) -> None:
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be >= 1 steps, got {window}, {hop}")
        self.window = window
        self.hop = hop
        self.reset()

    def reset(self) -> None:
        self.seen = 0  # steps counted
        self.next_end = self.window - 1  # the step at which the next window completes

    def advance(self) -> bool:
        """Count one step; True when it completes a window."""
        done = self.seen == self.next_end
        self.seen += 1
        if done:
            self.next_end += self.hop
        return done

    def partial(self) -> int:
        """Steps of the next (unfinished) window that have been counted (0 if none)."""
        start = self.next_end - self.window + 1
        return max(0, self.seen - start)


class WindowHead:
    """A ``window`` output each time a window of ``window`` steps completes (then every
    ``hop`` steps; default ``hop = window``), covering frames ``[start, end]`` of the window
    and media time ``[t0, t1)``: from the first step's ``pts`` to the end of the last step
    (``pts`` is the last step's, as for every output).

    ``reduce`` combines the window's activated scores ``[W, L]``: ``mean``, ``max`` (per
    label) or ``last``, or a callable ``[W, L] -> [L]``. (To run the model over each window
    instead, a stage buffers the features, uses :class:`WindowSchedule` for the timing and
    ``reduce="last"`` on the window's output.) At :meth:`end`, the unfinished next window
    is emitted over the steps of it that arrived only if ``partial=True`` (default False:
    every window has ``window`` steps). With ``reset_on_gap`` (default) a gap ends the
    windows like :meth:`end` and counting starts again after it, so no window spans a gap.
    """

    kind: OutputKind = "window"
    reads_state = False
    step_by_step = False

    def __init__(
        self,
        stream: str,
        labels: Sequence[str],
        window: int,
        hop: int | None = None,
        *,
        reduce: Reduce | ReduceFn = "mean",
        partial: bool = False,
        reset_on_gap: bool = True,
        activation: Activation = "auto",
        labeler: Labeler | None = None,
    ) -> None:
        if isinstance(reduce, str) and reduce not in ("mean", "max", "last"):
            raise ValueError(f"window reduce must be mean, max, last or a callable, not {reduce!r}")
        self.stream = stream
        self.schedule = WindowSchedule(window, window if hop is None else hop)
        self.reduce = reduce
        self.partial = partial
        self.reset_on_gap = reset_on_gap
        self.scorer = Scorer(labels, activation)
        self.labeler = labeler or Labeler(labels)
        self._rows: deque[tuple[Step, Tensor]] = deque(maxlen=window)

    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output]:
        """``y [T, K]`` -> the windows completed by these steps."""
        _check(y, steps)
        out: list[Output] = []
        for step, row in zip(steps, self.scorer(y), strict=True):
            self._rows.append((step, row))
            if self.schedule.advance():
                out.append(self._window(list(self._rows)))
        return out

    def gap(self) -> list[Output]:
        return self.end() if self.reset_on_gap else []

    def end(self) -> list[Output]:
        count = self.schedule.partial()
        rows = list(self._rows)[len(self._rows) - count :] if count else []
        self.schedule.reset()
        self._rows.clear()
        return [self._window(rows)] if self.partial and rows else []

    def _window(self, rows: list[tuple[Step, Tensor]]) -> Output:
        probs = torch.stack([row for _, row in rows])  # [W, L]
        if callable(self.reduce):
            reduced = self.reduce(probs)
        elif self.reduce == "mean":
            reduced = probs.mean(dim=0)
        elif self.reduce == "max":
            reduced = probs.amax(dim=0)
        else:
            reduced = probs[-1]
        scores = self.scorer.scores(reduced)
        return covering(
            self.stream, "window", rows[0][0], rows[-1][0], scores, self.labeler(scores)
        )


class SequenceHead:
    """One ``sequence`` output at :meth:`end` over all steps since the start (or the last
    gap, with ``segment_on_gap``): ``reduce`` ``last`` (the last step's scores) or ``mean``
    (of the activated scores, accumulated step by step in float64). ``t0``/``t1`` span the
    steps' media time, from the first step's ``pts`` to the last one's end. Nothing for a
    stream without steps.
    """

    kind: OutputKind = "sequence"
    reads_state = False
    step_by_step = False

    def __init__(
        self,
        stream: str,
        labels: Sequence[str],
        *,
        reduce: Literal["last", "mean"] = "last",
        segment_on_gap: bool = False,
        activation: Activation = "auto",
        labeler: Labeler | None = None,
    ) -> None:
        if reduce not in ("last", "mean"):
            raise ValueError(f"sequence reduce must be last or mean, not {reduce!r}")
        self.stream = stream
        self.reduce = reduce
        self.segment_on_gap = segment_on_gap
        self.scorer = Scorer(labels, activation)
        self.labeler = labeler or Labeler(labels)
        self._reset()

    def _reset(self) -> None:
        self._first: Step | None = None
        self._last: Step | None = None
        self._total: Tensor | None = None  # [L]: sum (mean) or the last row (last)
        self._count = 0

    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output]:
        """Accumulate ``y [T, K]``; a sequence head outputs nothing until the end."""
        _check(y, steps)
        for step, row in zip(steps, self.scorer(y), strict=True):
            if self._first is None:
                self._first = step
            self._last = step
            self._count += 1
            if self.reduce == "last" or self._total is None:
                self._total = row.clone()
            else:
                self._total += row
        return []

    def gap(self) -> list[Output]:
        return self.end() if self.segment_on_gap else []

    def end(self) -> list[Output]:
        first, last, total, count = self._first, self._last, self._total, self._count
        self._reset()
        if first is None or last is None or total is None:
            return []
        reduced = total / count if self.reduce == "mean" else total
        scores = self.scorer.scores(reduced)
        return [covering(self.stream, "sequence", first, last, scores, self.labeler(scores))]


class FrameHeadOptions(HeadOptions):
    pass


class WindowHeadOptions(HeadOptions):
    window: Annotated[Int, Field(ge=1, le=1_000_000)]
    hop: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    reduce: Reduce = "mean"
    partial: Bool = False


class SequenceHeadOptions(HeadOptions):
    reduce: Literal["last", "mean"] = "last"
    segment_on_gap: Bool = False


@dataclass(frozen=True)
class HeadKind:
    """A registered kind of head: its options model and its class (or factory), called
    as ``make(stream, labels, **options)`` for each stream."""

    options: type[HeadOptions]
    make: Callable[..., Head]


#: The heads by ``[model] head`` name. A new head is its own module (its options model
#: and its class) and one line here.
HEADS: Registry[HeadKind] = Registry("head")
HEADS.register("frame", HeadKind(FrameHeadOptions, FrameHead))
HEADS.register("window", HeadKind(WindowHeadOptions, WindowHead))
HEADS.register("sequence", HeadKind(SequenceHeadOptions, SequenceHead))
HEADS.register("generate", HeadKind(GenerateHeadOptions, GenerateHead))


def make_head(
    name: str,
    *,
    stream: str,
    labels: Sequence[str],
    **params: Any,
) -> Head:
    """The head ``name`` (the ``[model] head`` key, a name in :data:`HEADS`) for one stream.

    ``params`` are the head's options (``window``, ``hop``, ``reduce``, ``activation``,
    ...; ``generate`` takes ``decode_step``, ``max_len``, ``end_token``, with ``labels``
    as the vocabulary). Raises :class:`InputError` naming the key for an unknown head or
    option.
    """
    if name not in HEADS:
        raise InputError(f"[model] head: unknown head {name!r}; expected one of {list(HEADS)}")
    if name == "window" and "window" not in params:
        raise InputError("[model] head: 'window' needs a window size (window = W)")
    if name == "generate" and ("decode_step" not in params or "max_len" not in params):
        raise InputError("[model] head: 'generate' needs decode_step and max_len")
    try:
        return HEADS.get(name).make(stream, labels, **params)
    except TypeError as exc:
        raise InputError(f"[model] head: {name!r}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"[model] head: {exc}") from None
