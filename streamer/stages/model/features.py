"""Feature front-ends: frames in, model steps ``x [T, F...]`` out, incrementally, per stream.

Each front-end is a small object made for one stream: :meth:`~Features.push` takes a frame's
data and returns the steps it completes (``[T, *shape]`` float32, ``T`` may be 0), and
:meth:`~Features.push_frame` also returns one :class:`Step` (index, pts, captured) per row,
which is what heads need to build outputs. Streaming and offline runs give the same
features: a front-end never looks at where chunks begin.

- ``raw``: one step per frame, the frame's data flattened (audio as is, video scaled to
  [0, 1], channels kept in BGR order).
- ``logmel``: log mel spectrogram of mono audio, hop-spaced steps (see :class:`LogMel`).
- ``pixels``: one ``[C, H, W]`` image per frame, resized, RGB, normalised (see :class:`Pixels`).

Audio sources zero-pad their last frame to a full chunk; ``samples`` (from
``StreamStart.meta["samples"]``, see :func:`real_samples`) says how many samples of the
stream are real. ``logmel`` ignores the padding (the same audio gives the same steps
whatever the chunk); ``raw`` keeps it in its input (the model's format) but no step's
duration reaches past the last real sample.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from streamer.errors import InputError
from streamer.frames import Frame, Media
from streamer.options import MAX_SIDE, Bool, Float, Int, Section
from streamer.registry import Registry
from streamer.stages.model.frontend import (
    Features,
    Step,
    as_image,
    as_samples,
    real_count,
    real_samples,
)
from streamer.stages.model.logmel import (
    LogMel,
    LogMelOptions,
    MelScale,
    hz_to_mel,
    logmel_offline,
    mel_filterbank,
    mel_to_hz,
)

__all__ = [
    "FEATURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCE_KEYS",
    "Features",
    "LogMel",
    "MelScale",
    "Pixels",
    "Raw",
    "Step",
    "hz_to_mel",
    "logmel_offline",
    "make_features",
    "mel_filterbank",
    "mel_to_hz",
    "real_samples",
]

#: ImageNet statistics (RGB), what torchvision's pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RawOptions(Section):
    """``feature_options`` of ``features = "raw"``: none (the source decides the shape)."""


class Raw(Features):
    """One step per frame: the frame's data flattened, float32.

    Audio ``[samples, channels]`` -> ``[1, samples*channels]`` (interleaved, values as
    given); a frame shorter than ``chunk`` samples (a file's last chunk) is zero-padded.
    Video ``[H, W, 3]`` uint8 -> ``[1, H*W*3]`` scaled to [0, 1], channels left in BGR order.
    ``chunk``/``channels`` (audio) or ``size`` (video, ``(W, H)``) declare the shape up
    front; otherwise the first frame sets it and later frames must match.

    The padding stays in the step (it is the model's input format), but an audio step's
    ``duration`` counts only the frame's real samples: those given (not padded here), and
    of them only those before the stream's ``samples`` real ones when that is known.
    """

    cheap = True

    name = "raw"

    def __init__(
        self,
        media: Media = "audio",
        *,
        rate: float | None = None,
        chunk: int | None = None,
        channels: int | None = None,
        size: tuple[int, int] | None = None,
        samples: int | None = None,
    ) -> None:
        super().__init__()
        self.media_kind: Media = media
        self.chunk = chunk
        self.samples = samples
        if media == "audio":
            if chunk is not None and channels is not None:
                self._shape = (chunk * channels,)
            if rate and chunk:
                self.step_duration = chunk / rate
        else:
            if size is not None:
                self._shape = (size[0] * size[1] * 3,)
            if rate:
                self.step_duration = 1.0 / rate

    def push(self, data: Any) -> Tensor:
        """``[samples, channels]`` or ``[H, W, 3]`` -> ``[1, F]`` float32."""
        if (  # the common case, a full float32 chunk of the known shape: a view as it is
            self.media_kind == "audio"
            and type(data) is np.ndarray
            and data.dtype == np.float32
            and data.ndim == 2
            and data.shape[0] == self.chunk
            and self._shape == (data.size,)
        ):
            array = data if data.flags.writeable else data.copy()  # (torch warns on read-only)
            return torch.from_numpy(array).reshape(1, -1)
        if self.media_kind == "video":
            image = as_image(data)
            x = torch.from_numpy(image.reshape(1, -1).astype(np.float32) / np.float32(255.0))
        else:
            samples = as_samples(data).to(torch.float32)
            if self.chunk is not None and samples.shape[0] < self.chunk:
                pad = samples.new_zeros(self.chunk - samples.shape[0], samples.shape[1])
                samples = torch.cat([samples, pad])
            x = samples.reshape(1, -1)
        self._learn_shape((int(x.shape[1]),))
        return x

    def push_frame(self, frame: Frame) -> tuple[Tensor, list[Step]]:
        """One step; for audio its duration is the frame's real samples over the rate."""
        x = self.push(frame.data)
        if self.media_kind == "audio":
            duration = real_count(frame.pts, len(frame.data), frame.rate, self.samples) / frame.rate
        else:
            duration = frame.duration
        return x, [Step(frame.index, frame.pts, frame.captured, duration)]

    def push_frames(self, frames: Sequence[Frame]) -> tuple[Tensor, list[Step]]:
        """Full float32 audio chunks of one shape are stacked in one copy ``[T, F]``; any
        other run (video, integer samples, a short last chunk) goes frame by frame."""
        chunk = self.chunk
        first = frames[0].data if frames else None
        if (
            self.media_kind != "audio"
            or len(frames) < 2
            or not isinstance(first, np.ndarray)
            or first.dtype != np.float32
            or first.ndim not in (1, 2)
            or (chunk is not None and first.shape[0] != chunk)
        ):
            return super().push_frames(frames)
        shape = first.shape
        if not all(
            isinstance(f.data, np.ndarray) and f.data.shape == shape and f.data.dtype == np.float32
            for f in frames
        ):
            return super().push_frames(frames)
        x = torch.from_numpy(np.stack([f.data for f in frames]).reshape(len(frames), -1))
        self._learn_shape((int(x.shape[1]),))
        rate, samples, length = frames[0].rate, self.samples, shape[0]
        steps = [
            Step(f.index, f.pts, f.captured, real_count(f.pts, length, rate, samples) / rate)
            for f in frames
        ]
        return x, steps


# --- logmel -------------------------------------------------------------------------------

# --- pixels -------------------------------------------------------------------------------


class PixelsOptions(Section):
    """``feature_options`` of ``features = "pixels"`` (see
    :class:`streamer.stages.model.features.Pixels`)."""

    size: (
        tuple[Annotated[Int, Field(ge=1, le=MAX_SIDE)], Annotated[Int, Field(ge=1, le=MAX_SIDE)]]
        | None
    ) = None
    rgb: Bool = True
    mean: tuple[Float, Float, Float] | None = None
    std: (
        tuple[
            Annotated[Float, Field(gt=0)],
            Annotated[Float, Field(gt=0)],
            Annotated[Float, Field(gt=0)],
        ]
        | None
    ) = None


class Pixels(Features):
    """One image per frame: ``[H, W, 3]`` uint8 BGR -> ``[1, 3, H, W]`` float32.

    Steps, in order: resize to ``size = (W, H)`` with ``cv2.INTER_AREA`` (if given);
    BGR -> RGB (``rgb=True``, the default, as torchvision models expect); scale to [0, 1];
    ``(x - mean) / std`` per channel (defaults: ImageNet's RGB statistics; pass
    ``mean=(0.5,)*3, std=(0.5,)*3`` for [-1, 1]). Stacked over streams and steps, a batch
    is ``[B, T, 3, H, W]``.
    """

    name = "pixels"
    media = "video"

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        *,
        rate: float | None = None,
        rgb: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"pixels: mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.rgb = rgb
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        if self.size is not None:
            self._shape = (3, self.size[1], self.size[0])
        if rate:
            self.step_duration = 1.0 / rate

    def push(self, data: Any) -> Tensor:
        """``[H, W, 3]`` uint8 BGR -> ``[1, 3, H', W']`` float32, normalised."""
        return self._normalised(self._resized(data)[None])

    def push_frames(self, frames: Sequence[Frame]) -> tuple[Tensor, list[Step]]:
        """Each frame resized, then all normalised in one pass ``[T, 3, H', W']`` (the same
        values as frame by frame: the same element-wise operations)."""
        images = [self._resized(frame.data) for frame in frames]
        if len({image.shape for image in images}) != 1:  # learnt shape: the error per frame
            return super().push_frames(frames)
        x = self._normalised(np.stack(images))
        return x, [Step(f.index, f.pts, f.captured, f.duration) for f in frames]

    def _resized(self, data: Any) -> np.ndarray[Any, Any]:
        image = as_image(data)
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            import cv2  # imported on first use: only resizing needs OpenCV

            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        return image

    def _normalised(self, images: np.ndarray[Any, Any]) -> Tensor:
        """``[N, H, W, 3]`` uint8 BGR -> ``[N, 3, H, W]`` float32."""
        if self.rgb:
            images = images[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        x = x.permute(0, 3, 1, 2) / 255.0
        x = ((x - self.mean) / self.std).contiguous()
        self._learn_shape(tuple(int(n) for n in x.shape[1:]))
        return x


# --- factory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureKind:
    """A registered feature front-end: its ``feature_options`` model, its class, and
    ``make(media=, rate=, chunk=, channels=, size=, samples=, **options)`` (what the
    source declares, then the options) that opens one for a stream."""

    options: type[Section]
    cls: type[Features]
    make: Callable[..., Features]


def _raw(
    *,
    media: Media,
    rate: float | None,
    chunk: int | None,
    channels: int | None,
    size: tuple[int, int] | None,
    samples: int | None,
) -> Features:
    return Raw(media, rate=rate, chunk=chunk, channels=channels, size=size, samples=samples)


def _logmel(*, rate: float | None, samples: int | None, **params: Any) -> Features:
    if rate is None:
        raise InputError("[model] features: 'logmel' needs the audio rate ([source] rate)")
    params = {k: v for k, v in params.items() if k not in ("media", "chunk", "channels", "size")}
    return LogMel(rate, samples=samples, **params)


def _pixels(*, size: tuple[int, int] | None, rate: float | None, **params: Any) -> Features:
    params = {k: v for k, v in params.items() if k not in ("media", "chunk", "channels", "samples")}
    return Pixels(size, rate=rate, **params)


#: The feature front-ends by ``[model] features`` name: a new one is its own module (its
#: options model and its class) and one line here.
FEATURES: Registry[FeatureKind] = Registry("feature front-end")
FEATURES.register("raw", FeatureKind(RawOptions, Raw, _raw))
FEATURES.register("logmel", FeatureKind(LogMelOptions, LogMel, _logmel))
FEATURES.register("pixels", FeatureKind(PixelsOptions, Pixels, _pixels))
#: Front-end arguments that describe the source or stream, not options a user sets.
SOURCE_KEYS = ("media", "rate", "chunk", "channels", "size", "samples", "meta")


def make_features(
    name: str,
    *,
    media: Media,
    rate: float | None = None,
    chunk: int | None = None,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    meta: Mapping[str, Any] | None = None,
    **params: Any,
) -> Features:
    """The front-end ``name`` (the ``[model] features`` key) for a stream of ``media``.

    ``rate``/``chunk``/``channels``/``size`` describe the source (``[source]`` keys),
    ``meta`` is the stream's ``StreamStart.meta`` (audio front-ends take the number of real
    samples from it, see :func:`real_samples`); ``params`` are the front-end's own options
    (e.g. ``n_mels`` or ``sample_rate`` for ``logmel``). Raises :class:`InputError` for an
    unknown name, one that does not fit the media, or an option the front-end does not take.
    """
    if name not in FEATURES:
        raise InputError(
            f"[model] features: unknown front-end {name!r}; expected one of {sorted(FEATURES)}"
        )
    kind = FEATURES.get(name)
    cls = kind.cls
    if cls.media is not None and cls.media != media:
        raise InputError(f"[model] features: {name!r} needs {cls.media}, but the source is {media}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *SOURCE_KEYS}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise InputError(
            f"[model] features: {name!r} takes no option {unknown[0]!r};"
            f" it takes {sorted(accepted)}"
        )
    samples = real_samples(meta or {}) if media == "audio" else None
    try:
        return kind.make(
            media=media,
            rate=rate,
            chunk=chunk,
            channels=channels,
            size=size,
            samples=samples,
            **params,
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"[model] features: {exc}") from None
