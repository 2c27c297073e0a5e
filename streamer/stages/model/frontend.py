"""The front-end interface: :class:`Step` (what an output needs to know about one model
step), :class:`Features` (frames in, steps ``x [T, F...]`` out, per stream) and the helpers
the front-ends share (see :mod:`~streamer.stages.model.features` for the front-ends).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from streamer.frames import Frame, Media, Output, OutputKind


@dataclass(frozen=True, slots=True)
class Step:
    """What an output needs to know about one model step (one row of ``x``/``y``).

    ``index`` is the frame index (for ``logmel``: the feature step's index, see
    :class:`LogMel`), ``pts`` its media time in seconds, ``captured`` the capture time of
    the newest frame the step depends on (for latency), ``duration`` the media seconds the
    step stands for from ``pts`` on (None: unknown); consecutive steps tile the media time,
    and a stream's last step ends where its real samples end (when that is known).
    """

    index: int
    pts: float
    captured: float
    duration: float | None = None

    @property
    def end(self) -> float | None:
        """Media time where the step ends: ``pts + duration`` (None when unknown)."""
        return None if self.duration is None else self.pts + self.duration


def covering(
    stream: str,
    kind: OutputKind,
    first: Step,
    last: Step,
    scores: dict[str, float],
    label: str | None,
    extra: dict[str, Any] | None = None,
) -> Output:
    """An output over the steps ``first`` .. ``last`` (its times from theirs)."""
    return Output(
        stream=stream,
        kind=kind,
        start=first.index,
        end=last.index,
        pts=last.pts,
        label=label,
        scores=scores,
        captured=last.captured,
        t0=first.pts,
        t1=last.end,
        extra=extra or {},
    )


class Features:
    """The front-end interface; subclasses implement :meth:`push`.

    ``shape`` is the per-step feature shape (``None`` until known: a ``raw`` or ``pixels``
    front-end without a declared size learns it from the first frame), ``step_duration``
    the media seconds between steps (``None`` when unknown).
    """

    name: ClassVar[str]
    media: ClassVar[Media | None] = None
    #: a step costs about as much as handing it to a thread (``raw``: a reshape): the
    #: stage computes it on the event loop, saving a round trip to its worker per batch
    cheap: ClassVar[bool] = False

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None
        self.step_duration: float | None = None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Per-step feature shape, e.g. ``(F,)`` or ``(C, H, W)``."""
        return self._shape

    @property
    def dim(self) -> int | None:
        """Number of values per step (the product of ``shape``)."""
        return None if self._shape is None else math.prod(self._shape)

    def push(self, data: Any) -> Tensor:
        """The steps completed by one frame's ``data``: ``[T, *shape]`` float32."""
        raise NotImplementedError

    def __call__(self, data: Any) -> Tensor:
        return self.push(data)

    def push_frame(self, frame: Frame) -> tuple[Tensor, list[Step]]:
        """:meth:`push` of ``frame.data``, with one :class:`Step` per row of the result
        (lasting the frame's duration)."""
        x = self.push(frame.data)
        step = Step(frame.index, frame.pts, frame.captured, frame.duration)
        return x, [step] * int(x.shape[0])

    def push_frames(self, frames: Sequence[Frame]) -> tuple[Tensor, list[Step]]:
        """:meth:`push_frame` of each of one stream's ``frames`` (at least one) in order, the steps
        concatenated: ``[T, *shape]``. Front-ends with a faster whole-run path override it;
        the result is the same."""
        xs: list[Tensor] = []
        steps: list[Step] = []
        for frame in frames:
            x, more = self.push_frame(frame)
            xs.append(x)
            steps.extend(more)
        return (xs[0] if len(xs) == 1 else torch.cat(xs)), steps

    def gap(self) -> None:
        """Frames were lost: drop anything carried over that would join across the gap."""

    def reset(self) -> None:
        """A new stream: forget everything."""

    def _learn_shape(self, shape: tuple[int, ...]) -> None:
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"{self.name} features: a frame gives steps of shape {list(shape)},"
                f" expected {list(self._shape)} like the earlier frames"
            )


def real_samples(meta: Mapping[str, Any]) -> int | None:
    """The stream's real sample count from its ``StreamStart.meta``: ``meta["samples"]``,
    or None when unknown or when the stream loops (``meta["loop"]``: it has no end)."""
    samples = meta.get("samples")
    if meta.get("loop") or isinstance(samples, bool) or not isinstance(samples, int | float):
        return None
    return max(0, int(samples))


def real_count(pts: float, length: int, rate: float, samples: int | None) -> int:
    """How many of a frame's ``length`` samples (first at ``pts``) lie before the stream's
    ``samples`` real ones (all when ``samples`` is None)."""
    if samples is None:
        return length
    first = round(pts * rate)
    return max(0, min(length, samples - first))


def as_samples(data: Any) -> Tensor:
    """Audio ``[samples, channels]`` or ``[samples]`` (numpy or torch) -> ``[N, C]``.

    Integer samples (a recording of int16 audio replays as int16) are scaled to [-1, 1]
    by their type's full scale, so features do not depend on the storage type."""
    array = np.asarray(data) if not isinstance(data, Tensor) else None
    if array is not None and array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        scale = float(info.max) + 1.0
        offset = 0.0 if array.dtype.kind == "i" else scale / 2.0
        array = (array.astype(np.float64) - offset) / (scale - offset if offset else scale)
    x = torch.as_tensor(array if array is not None else data)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"audio must be [samples, channels], got shape {list(x.shape)}")
    return x


def as_image(data: Any) -> np.ndarray[Any, Any]:
    image = np.asarray(data)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"video frames must be [H, W, 3], got shape {list(image.shape)}")
    return image


# --- raw ----------------------------------------------------------------------------------
