"""Per-label segments for multi-label taggers: each label's events, independently.

A sound-event tagger gives one sigmoid per label, and its events overlap (speech over
music, a knock during an alarm). :class:`Smoother` follows one label sequence, so its
segments cannot overlap. :class:`LabelwiseSmoother` runs one :class:`Smoother` per label,
each with hysteresis on that label's own score (on at the label's threshold, off below it
less ``hysteresis``), the same minimum durations and padding, and makes only that label's
segments. Frames pass through unchanged (their label is the head's, e.g. from
``[model.thresholds]``). Outputs are handled one at a time, so streaming equals offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from streamer.frames import Output
from streamer.stages.model.postprocess import Smoother

#: The run label of a per-label smoother while its label is off (never a segment).
OFF = ""


class LabelwiseSmoother:
    """One :class:`Smoother` per label of ``on`` (label -> on-threshold), same interface.

    Label ``L`` turns on when its score >= ``on[L]`` and stays on while it is >=
    ``on[L] - hysteresis``; runs shorter than ``min_on`` (on) or ``min_off`` (off) take the
    state before them; each on-run is a ``segment`` output labelled ``L``, padded by
    ``pad`` seconds (see :class:`Smoother`). Segments of different labels may overlap;
    each comes out when its own run is decided.
    """

    def __init__(
        self,
        on: Mapping[str, float],
        *,
        frame_duration: float,
        hysteresis: float = 0.0,
        min_on: float = 0.0,
        min_off: float = 0.0,
        pad: float = 0.0,
        emit_frames: bool = True,
        emit_segments: bool = True,
    ) -> None:
        if not on:
            raise ValueError("per-label segments need at least one label")
        if not 0.0 <= hysteresis <= 1.0:
            raise ValueError(f"hysteresis must be in [0, 1], not {hysteresis}")
        self.labels: Sequence[str] = list(on)
        self.emit_frames = emit_frames
        self._smoothers = [
            Smoother(
                OFF,
                frame_duration=frame_duration,
                target=label,
                on=threshold,
                off=max(0.0, threshold - hysteresis),
                min_on=min_on,
                min_off=min_off,
                segment_labels=[label],
                emit_frames=False,
                emit_segments=emit_segments,
                pad=pad,
            )
            for label, threshold in on.items()
        ]

    def reset(self) -> None:
        """Back to the start of a stream."""
        for smoother in self._smoothers:
            smoother.reset()

    def push(self, outputs: Iterable[Output]) -> list[Output]:
        """Take the next outputs; return them (unchanged) and the segments now decided."""
        out: list[Output] = []
        for output in outputs:
            if self.emit_frames:
                out.append(output)
            for smoother in self._smoothers:
                out += smoother.push((output,))
        return out

    def gap(self) -> list[Output]:
        """Outputs are missing: close every label's segment and start afresh."""
        return [segment for smoother in self._smoothers for segment in smoother.gap()]

    def end(self) -> list[Output]:
        """The stream is over: every label's last segment."""
        return [segment for smoother in self._smoothers for segment in smoother.end()]
