"""A built-in, model-free stage: audio energy or image brightness against a threshold.

It makes a pipeline produce labels before a real model is configured, and it is the
reference stage in the runtime's tests. ``kind=None`` picks per stream, from the media its
``StreamStart`` declares (its :class:`~streamer.frames.StreamInfo`): ``energy`` for audio,
``brightness`` for video. Integer audio (int16, uint8, ...) is measured against its
own full scale, so a recording replayed as int16 gets the same dBFS as its float32 twin.

A frame whose measure is not finite (NaN or Inf samples, or values too large to square)
gives no output: with ``on_invalid="drop"`` (the default, as in the model stage) it is
dropped as a ``Gap(reason="invalid")`` with a warning, so no sink ever sees a NaN; with
``"error"`` the run stops with an ``InputError`` naming the stage, stream and frame.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np

from streamer.channels import Channel
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Media, Output, StreamEnd, StreamStart

log = logging.getLogger(__name__)

ThresholdKind = Literal["energy", "brightness"]

#: Per kind: (threshold, softness of the score, default labels [below, above]).
DEFAULTS: dict[ThresholdKind, tuple[float, float, tuple[str, str]]] = {
    "energy": (-40.0, 3.0, ("silence", "sound")),  # dBFS of the chunk's RMS
    "brightness": (0.5, 0.05, ("dark", "bright")),  # mean luma in [0, 1]
}
KIND_FOR_MEDIA: dict[Media, ThresholdKind] = {"audio": "energy", "video": "brightness"}


def measure(kind: ThresholdKind, data: np.ndarray[Any, Any]) -> float:
    """Energy in dBFS of ``data [samples, channels]`` or mean luma in [0, 1] of an image:
    ``[H, W, 3]`` BGR, or ``[H, W]`` / ``[H, W, 1]`` grey; integer pixels against their
    type's full scale (uint8: 255), float pixels as they are (0 to 1).

    Not finite when ``data`` holds NaN or Inf (or squares past float64's range)."""
    if kind == "energy":
        samples = _full_scale(np.asarray(data))
        if not samples.size:
            return 20.0 * math.log10(1e-10)  # an empty chunk is silence
        with np.errstate(over="ignore", invalid="ignore"):
            rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        if not math.isfinite(rms):
            return rms
        return 20.0 * math.log10(max(rms, 1e-10))
    image = np.asarray(data)
    scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "iu" else 1.0
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return float(image.mean(dtype=np.float64)) / scale
    b, g, r = (image[..., c].mean(dtype=np.float64) for c in range(3))
    return float(0.114 * b + 0.587 * g + 0.299 * r) / scale


def _full_scale(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Integer samples as fractions of their dtype's full scale (unsigned ones centred);
    float samples as they are."""
    if data.dtype.kind == "i":
        return data / float(2 ** (8 * data.dtype.itemsize - 1))
    if data.dtype.kind == "u":
        half = float(2 ** (8 * data.dtype.itemsize - 1))
        return (data - half) / half
    return data


class ThresholdStage:
    """Labels every frame ``above`` or ``below`` a threshold, with a soft score."""

    def __init__(
        self,
        name: str = "threshold",
        kind: ThresholdKind | None = None,
        threshold: float | None = None,
        labels: tuple[str, str] | None = None,
        on_invalid: Literal["drop", "error"] = "drop",
    ) -> None:
        self.name = name
        self.kind = kind
        self.threshold = threshold
        self.labels = labels
        self.on_invalid = on_invalid
        self._kinds: dict[str, ThresholdKind] = {}
        self._invalid_run: set[str] = set()  # streams whose last frame was invalid

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            if isinstance(item, Frame):
                output = self.label(item)
                await outbox.send(output if output is not None else self._invalid(item))
                continue
            if isinstance(item, StreamStart):
                media = item.info.media if item.info is not None else item.media
                self._kinds[item.stream] = self.kind or KIND_FOR_MEDIA[media]
            elif isinstance(item, StreamEnd):
                self._invalid_run.discard(item.stream)
            await outbox.send(item)

    def label(self, frame: Frame) -> Output | None:
        """The output for one frame; None when its measure is not finite."""
        kind = self._kinds.get(frame.stream) or self.kind or KIND_FOR_MEDIA[frame.media]
        default_threshold, softness, default_labels = DEFAULTS[kind]
        threshold = default_threshold if self.threshold is None else self.threshold
        below, above = self.labels or default_labels
        value = measure(kind, frame.data)
        if not math.isfinite(value):
            return None
        self._invalid_run.discard(frame.stream)
        z = max(-60.0, min(60.0, (value - threshold) / softness))
        p_above = 1.0 / (1.0 + math.exp(-z))
        return Output(
            stream=frame.stream,
            kind="frame",
            start=frame.index,
            end=frame.index,
            pts=frame.pts,
            label=above if value >= threshold else below,
            scores={below: 1.0 - p_above, above: p_above},
            captured=frame.captured,
            extra={kind: value},
        )

    def _invalid(self, frame: Frame) -> Gap:
        """A frame with NaN or Inf: stop, or drop it as a gap (``on_invalid``). One warning
        per run of invalid frames of a stream, not one per frame."""
        if self.on_invalid == "error":
            # the pipeline's StageError adds "stage 'NAME': " in front
            raise InputError(f"stream '{frame.stream}' frame {frame.index} holds NaN or Inf")
        if frame.stream not in self._invalid_run:
            self._invalid_run.add(frame.stream)
            log.warning(
                "stage '%s': stream '%s' frame %d holds NaN or Inf: dropped (a gap)",
                self.name,
                frame.stream,
                frame.index,
            )
        return Gap(frame.stream, frame.index, 1, frame.pts, "invalid")
