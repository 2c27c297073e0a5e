"""Segment padding for :class:`~streamer.stages.model.postprocess.Smoother` (``pad``):
Silero VAD's ``speech_pad_ms`` rule over a stream's segments, as they close."""

from __future__ import annotations

import dataclasses

from streamer.frames import Output

#: Slack when comparing durations built from float pts against ``min_on``/``min_off``.
EPS = 1e-9


class Padder:
    """Silero's ``speech_pad_ms`` over a stream's segments, as they close (for
    :class:`Smoother`, ``pad > 0``).

    ``get_speech_timestamps`` pads each speech ``[start, end)`` by ``pad`` on both sides,
    the first start clamped at 0 and the last end at the audio's length; when the silence
    between two speeches is shorter than ``2 * pad`` (unpadded edges, ``<``), each side
    takes ``silence // 2`` samples instead. Here in float seconds both take the gap's
    middle (Silero's gaps are whole chunks, an even number of samples: the same edges),
    and a negative gap (overlapping segments) moves neither edge.

    A closed segment's start is padded at once (the previous segment's end is known); it
    is *held* until its end is: the next segment's run starts, an output starting
    ``2 * pad`` or more after it is decided (outputs start in order, so no later segment
    can come closer), or the stream ends.
    """

    def __init__(self, pad: float) -> None:
        self.pad = pad
        self._stream_t0: float | None = None  # the first output's start
        self._stream_t1: float | None = None  # the latest output end seen
        self._last_t1: float | None = None  # the previous segment's unpadded end
        self._last_end: float | None = None  # and its padded end, once released
        self._held: Output | None = None  # a segment whose padded end is not known yet
        self._held_t1 = 0.0  # its unpadded end

    def covers(self, t0: float, t1: float) -> None:
        """An output over media ``[t0, t1]`` was pushed."""
        if self._stream_t0 is None:
            self._stream_t0 = t0
        self._stream_t1 = t1 if self._stream_t1 is None else max(self._stream_t1, t1)

    def decided(self, t0: float, starts_segment: bool, out: list[Output]) -> None:
        """An output starting at ``t0`` was decided; ``starts_segment``: it begins a run
        that will make a segment (whose unpadded start is ``t0``)."""
        if self._held is None:
            return
        if starts_segment:
            self._release(self._end_before(self._held_t1, t0), out)
        elif self._far(self._held_t1, t0):
            self._release(self._held_t1 + self.pad, out)

    def closed(self, segment: Output, t0: float, t1: float, out: list[Output]) -> None:
        """A segment over ``[t0, t1]`` (unpadded) closed: pad its start and hold it."""
        if self._held is not None:  # not reached: the run of ``segment`` released it
            self._release(self._end_before(self._held_t1, t0), out)
        if self._last_t1 is None or self._far(self._last_t1, t0):
            start = t0 - self.pad
        else:
            start = min(t0, self._middle(self._last_t1, t0))
        for floor in (self._stream_t0, self._last_end):
            if floor is not None:
                start = max(start, min(t0, floor))
        self._last_t1 = self._held_t1 = t1
        self._held = dataclasses.replace(segment, t0=start)

    def end(self, out: list[Output]) -> None:
        """The stream ends (or has a gap): the held segment ends at most where it does."""
        if self._held is None:
            return
        t1 = self._held_t1
        end = t1 + self.pad
        if self._stream_t1 is not None:
            end = min(end, max(t1, self._stream_t1))
        self._release(end, out)

    def _end_before(self, t1: float, next_t0: float) -> float:
        """The padded end of a segment ending at ``t1`` followed by one at ``next_t0``."""
        if self._far(t1, next_t0):
            return t1 + self.pad
        return max(t1, self._middle(t1, next_t0))

    def _far(self, t1: float, t0: float) -> bool:
        """Whether a segment starting at ``t0`` is ``2 * pad`` or more after one ending at
        ``t1`` (Silero: not ``silence < 2 * pad``), with :data:`EPS` slack for float
        times: then both get the whole ``pad``."""
        return t0 - t1 >= 2 * self.pad - EPS

    @staticmethod
    def _middle(t1: float, t0: float) -> float:
        """The middle of the gap from ``t1`` to ``t0``: where both padded edges meet."""
        return t1 + (t0 - t1) / 2

    def _release(self, t1: float, out: list[Output]) -> None:
        if self._held is not None:
            out.append(dataclasses.replace(self._held, t1=t1))
            self._last_end = t1
        self._held = None
