"""A built-in, model-free stage: audio energy or image brightness against a threshold.

It makes a pipeline produce labels before a real model is configured, and it is the
reference stage in the runtime's tests. ``kind=None`` picks per stream: ``energy`` for
audio, ``brightness`` for video.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from streamer.channels import Channel
from streamer.frames import Frame, Media, Output, StreamStart

ThresholdKind = Literal["energy", "brightness"]

#: Per kind: (threshold, softness of the score, default labels [below, above]).
DEFAULTS: dict[ThresholdKind, tuple[float, float, tuple[str, str]]] = {
    "energy": (-40.0, 3.0, ("silence", "sound")),  # dBFS of the chunk's RMS
    "brightness": (0.5, 0.05, ("dark", "bright")),  # mean luma in [0, 1]
}
KIND_FOR_MEDIA: dict[Media, ThresholdKind] = {"audio": "energy", "video": "brightness"}


def measure(kind: ThresholdKind, data: np.ndarray[Any, Any]) -> float:
    """Energy in dBFS of ``data [samples, channels]`` or mean luma of ``data [H, W, 3]``."""
    if kind == "energy":
        rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
        return 20.0 * math.log10(max(rms, 1e-10))
    b, g, r = (data[..., c].mean(dtype=np.float64) for c in range(3))
    return float(0.114 * b + 0.587 * g + 0.299 * r) / 255.0


class ThresholdStage:
    """Labels every frame ``above`` or ``below`` a threshold, with a soft score."""

    def __init__(
        self,
        name: str = "threshold",
        kind: ThresholdKind | None = None,
        threshold: float | None = None,
        labels: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.threshold = threshold
        self.labels = labels
        self._kinds: dict[str, ThresholdKind] = {}

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            if isinstance(item, Frame):
                await outbox.send(self.label(item))
                continue
            if isinstance(item, StreamStart):
                self._kinds[item.stream] = self.kind or KIND_FOR_MEDIA[item.media]
            await outbox.send(item)

    def label(self, frame: Frame) -> Output:
        """The output for one frame."""
        kind = self._kinds.get(frame.stream) or self.kind or KIND_FOR_MEDIA[frame.media]
        default_threshold, softness, default_labels = DEFAULTS[kind]
        threshold = default_threshold if self.threshold is None else self.threshold
        below, above = self.labels or default_labels
        value = measure(kind, frame.data)
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
