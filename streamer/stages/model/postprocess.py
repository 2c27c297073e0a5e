"""Label decisions and smoothing over a stream: argmax or thresholds, hysteresis, minimum
durations, and ``segment`` outputs. Synchronous, per stream, incremental.

:class:`Labeler` picks a label from one output's scores (heads use it). :class:`Smoother`
takes a stream's outputs in order (``frame``, ``window`` or ``sequence`` outputs) and
returns them relabelled, plus a ``segment`` output each time a run of one label ends
(padded, with ``pad``, by Silero VAD's ``speech_pad_ms`` rule:
:class:`~streamer.stages.model.padding.Padder`).
Times come from the media time each output covers (its ``t0``/``t1``, which heads fill in
from their steps), or, for an output without them, ``pts`` and ``frame_duration``. It
handles one output at a time, so the result does not depend on how the outputs were
grouped into calls: streaming equals offline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from streamer.frames import Output
from streamer.stages.model.padding import EPS, Padder


def argmax_label(scores: Mapping[str, float]) -> str:
    """The highest-scoring label (the first of equal ones, in the mapping's order)."""
    if not scores:
        raise ValueError("cannot pick a label from empty scores")
    best, best_score = "", float("-inf")
    for label, score in scores.items():
        if not best or score > best_score:
            best, best_score = label, score
    return best


class Labeler:
    """Picks one label from ``scores`` (label -> float).

    Without ``thresholds``: argmax (ties: the first label). With ``thresholds``: a label is
    *on* when its score >= its threshold (labels without a threshold are never on); the
    chosen label is the highest-scoring label that is on, else ``default`` (the first
    label unless given).
    """

    def __init__(
        self,
        labels: Sequence[str],
        thresholds: Mapping[str, float] | None = None,
        default: str | None = None,
    ) -> None:
        if not labels:
            raise ValueError("Labeler needs at least one label")
        self.labels = list(labels)
        self.thresholds = dict(thresholds or {})
        unknown = sorted(set(self.thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"thresholds name unknown labels {unknown}; labels are {self.labels}")
        if default is not None and default not in self.labels:
            raise ValueError(f"default label {default!r} is not one of {self.labels}")
        self.default = default if default is not None else self.labels[0]
        # for rows(): each label's threshold (inf without one) and whether it has one
        self._limits = torch.tensor(
            [self.thresholds.get(label, math.inf) for label in self.labels], dtype=torch.float64
        )
        self._has = torch.tensor([label in self.thresholds for label in self.labels])

    def __call__(self, scores: Mapping[str, float]) -> str:
        if not self.thresholds:
            return argmax_label({label: scores[label] for label in self.labels})
        on = {
            label: scores[label]
            for label in self.labels
            if label in self.thresholds and scores[label] >= self.thresholds[label]
        }
        return argmax_label(on) if on else self.default

    def rows(self, scores: Tensor) -> list[str]:
        """The label of each row of ``scores [T, L]`` (columns in ``labels`` order): what
        calling the labeler on each row gives, in a few tensor operations. Rows with a NaN
        or an infinity go one by one (their order is Python's, not the tensor's)."""
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ValueError(f"labeler: scores must be [T, {len(self.labels)}]")
        array = scores.detach().cpu().numpy()  # (numpy: a few µs a call where torch takes tens)
        if not np.isfinite(array).all():
            return [self(dict(zip(self.labels, row, strict=True))) for row in array.tolist()]
        if not self.thresholds:
            return [self.labels[i] for i in array.argmax(axis=1).tolist()]
        on = self._has & (scores >= self._limits.to(scores.dtype))
        best = torch.where(on, scores, torch.full_like(scores, -math.inf)).argmax(dim=1)
        return [
            self.labels[i] if any_on else self.default
            for i, any_on in zip(best.tolist(), on.any(dim=1).tolist(), strict=True)
        ]


@dataclasses.dataclass(slots=True)
class _Run:
    """The current segment: a run of outputs with one (confirmed) label."""

    label: str
    first: Output
    last: Output
    sums: dict[str, float]
    count: int


class Smoother:
    """Hysteresis, minimum durations and segments over one stream's outputs.

    The *raw* label of an output is its own ``label`` (as its head chose it; argmax of its
    scores if None), or, with ``on`` set, hysteresis on the ``target`` label's score: the
    target turns on when its score >= ``on`` and stays on while it is >= ``off``
    (``off <= on``; default ``off = on``); otherwise the label is ``default``. ``target``
    defaults to the one label that is not ``default`` when the outputs have two.

    The *confirmed* label starts as ``default``. A run of outputs whose raw label differs
    from it becomes confirmed once it has lasted ``min_off`` seconds (a change to
    ``default``) or ``min_on`` seconds (a change to any other label), measured in the media
    time the run covers: from the first output's start to the last output's end. An
    output's start is its ``t0`` and its end its ``t1`` (the time its step, window or
    sequence covers, see :mod:`streamer.stages.model.heads`); without them, ``pts`` and
    ``pts + frame_duration``. A shorter run takes the confirmed label. Outputs are returned
    relabelled only once their label is decided, so minimum durations **delay** outputs:
    an output waits up to ``max(min_on, min_off)`` seconds of media, less its own
    duration, for its run to be decided (no delay when both are 0).

    A ``segment`` output is returned when a confirmed run ends (a new label is confirmed),
    at :meth:`gap` and at :meth:`end`: ``start``/``end`` the run's frame indices, ``t0`` the
    first output's start, ``t1`` the last output's end (so with overlapping windows,
    adjacent segments overlap as their windows do), ``pts`` and ``captured`` those of the
    last output, ``scores`` the mean of the outputs' scores.
    With ``segment_labels``, only runs of those labels make segments. With ``pad = 0`` a
    segment comes before the first output of the next run; it is returned
    ``max(min_on, min_off)`` after its last frame at most.

    ``pad`` (seconds) widens each segment as Silero VAD's ``speech_pad_ms`` does in
    ``get_speech_timestamps``: ``t0 - pad`` and ``t1 + pad``, but no earlier than the
    stream's start (the first output's start since :meth:`reset`) and no later than its end
    (the last output's end, at :meth:`end` or :meth:`gap`); when two segments are less than
    ``2 * pad`` apart (unpadded edge to unpadded edge) each takes half the gap, so they meet
    in its middle; segments that already overlap (overlapping windows) are not moved. So
    ``pad`` acts only with ``segment_labels`` (otherwise neighbouring segments touch). Only
    ``t0``/``t1`` change: ``start``/``end`` stay the unpadded run's frame indices. A
    segment's padded end is known only when the next segment starts or the decided outputs
    reach ``2 * pad`` past its end, so padding **delays segments** by up to ``2 * pad`` of
    media more (rounded up to whole outputs), never frames. Segments still come in order;
    a padded segment comes before the first output of the next segment's run and before
    the first output starting ``2 * pad`` or more after its end, but may come after some
    outputs of the run that follows it (of a label not in ``segment_labels``).
    """

    def __init__(
        self,
        default: str,
        *,
        frame_duration: float,
        target: str | None = None,
        on: float | None = None,
        off: float | None = None,
        min_on: float = 0.0,
        min_off: float = 0.0,
        segment_labels: Collection[str] | None = None,
        emit_frames: bool = True,
        emit_segments: bool = True,
        pad: float = 0.0,
    ) -> None:
        if frame_duration <= 0:
            raise ValueError(f"frame_duration must be > 0 seconds, not {frame_duration}")
        if min_on < 0 or min_off < 0:
            raise ValueError(f"min_on and min_off must be >= 0 seconds, got {min_on}, {min_off}")
        if not pad >= 0:  # also refuses NaN
            raise ValueError(f"pad must be >= 0 seconds, not {pad}")
        if on is None and off is not None:
            raise ValueError("hysteresis: 'off' needs 'on'")
        if on is not None and off is not None and off > on:
            raise ValueError(f"hysteresis: off ({off}) must be <= on ({on})")
        if target is not None and target == default:
            raise ValueError(f"hysteresis target {target!r} cannot be the default label")
        self.default = default
        self.frame_duration = frame_duration
        self.target = target
        self.on = on
        self.off = on if off is None else off
        self.min_on = min_on
        self.min_off = min_off
        self.segment_labels = None if segment_labels is None else frozenset(segment_labels)
        self.emit_frames = emit_frames
        self.emit_segments = emit_segments
        self.pad = pad
        self.reset()

    def reset(self) -> None:
        """Back to the start of a stream (nothing pending, ``default`` confirmed)."""
        self._confirmed = self.default
        self._active = False  # hysteresis state
        self._candidate: str | None = None
        self._pending: list[Output] = []
        self._run: _Run | None = None
        self._padder = Padder(self.pad) if self.pad > 0 else None

    @property
    def confirmed(self) -> str:
        """The label currently confirmed."""
        return self._confirmed

    def push(self, outputs: Iterable[Output]) -> list[Output]:
        """Take the next outputs (in stream order); return those now decided, and segments."""
        out: list[Output] = []
        for output in outputs:
            if self._padder is not None:
                self._padder.covers(self._start_of(output), self._end_of(output))
            self._one(output, self._raw_label(output), out)
        return out

    def gap(self) -> list[Output]:
        """Outputs are missing: decide what is pending, close the segment, start afresh."""
        return self.end()

    def end(self) -> list[Output]:
        """The stream (or segment) is over: flush pending outputs and the last segment.

        A pending run that has not lasted its minimum duration takes the confirmed label.
        """
        out: list[Output] = []
        self._flush_pending(out)
        self._close_run(out)
        if self._padder is not None:
            self._padder.end(out)
        self.reset()
        return out

    # --- internals ------------------------------------------------------------------------

    def _raw_label(self, output: Output) -> str:
        if self.on is None:
            return output.label if output.label is not None else argmax_label(output.scores)
        target = self.target
        if target is None:
            others = [label for label in output.scores if label != self.default]
            if len(others) != 1:
                raise ValueError(
                    f"hysteresis needs a target label; scores have {list(output.scores)}"
                )
            target = self.target = others[0]
        off = self.on if self.off is None else self.off
        score = output.scores[target]
        self._active = score >= (off if self._active else self.on)
        return target if self._active else self.default

    def _one(self, output: Output, raw: str, out: list[Output]) -> None:
        if self._candidate is not None and raw != self._candidate:
            self._flush_pending(out)  # the candidate run was too short
        if raw == self._confirmed:
            self._emit(output, raw, out)
            return
        if self._candidate is None:
            self._candidate = raw
        self._pending.append(output)
        need = self.min_off if raw == self.default else self.min_on
        lasted = self._end_of(output) - self._start_of(self._pending[0])
        if lasted >= need - EPS:
            self._confirmed = raw
            self._flush_pending(out)

    def _start_of(self, output: Output) -> float:
        """Media time where ``output`` starts: its ``t0``, else its ``pts``."""
        return output.pts if output.t0 is None else output.t0

    def _end_of(self, output: Output) -> float:
        """Media time where ``output`` ends: its ``t1``, else ``pts + frame_duration``."""
        return output.pts + self.frame_duration if output.t1 is None else output.t1

    def _flush_pending(self, out: list[Output]) -> None:
        for output in self._pending:
            self._emit(output, self._confirmed, out)
        self._pending = []
        self._candidate = None

    def _emit(self, output: Output, label: str, out: list[Output]) -> None:
        run = self._run
        if run is not None and run.label != label:
            self._close_run(out)
            run = None
        if self._padder is not None:
            starts_segment = run is None and self._segments(label)
            self._padder.decided(self._start_of(output), starts_segment, out)
        if run is None:
            self._run = _Run(label, output, output, dict.fromkeys(output.scores, 0.0), 0)
            run = self._run
        run.last = output
        run.count += 1
        for key, value in output.scores.items():
            run.sums[key] = run.sums.get(key, 0.0) + float(value)
        if self.emit_frames:
            out.append(
                output if output.label == label else dataclasses.replace(output, label=label)
            )

    def _segments(self, label: str) -> bool:
        """Whether runs of ``label`` make segments."""
        return self.emit_segments and (self.segment_labels is None or label in self.segment_labels)

    def _close_run(self, out: list[Output]) -> None:
        run, self._run = self._run, None
        if run is None or not self._segments(run.label):
            return
        t0, t1 = self._start_of(run.first), self._end_of(run.last)
        segment = Output(
            stream=run.last.stream,
            kind="segment",
            start=run.first.start,
            end=run.last.end,
            pts=run.last.pts,
            label=run.label,
            scores={key: total / run.count for key, total in run.sums.items()},
            captured=run.last.captured,
            t0=t0,
            t1=t1,
        )
        if self._padder is None:
            out.append(segment)
        else:
            self._padder.closed(segment, t0, t1, out)
