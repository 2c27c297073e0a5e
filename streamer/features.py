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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import soxr
import torch
from torch import Tensor

from streamer.errors import InputError
from streamer.frames import Frame, Media
from streamer.sources.chunker import resampled_length

MelScale = Literal["htk", "slaney"]

#: ImageNet statistics (RGB), what torchvision's pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class Features:
    """The front-end interface; subclasses implement :meth:`push`.

    ``shape`` is the per-step feature shape (``None`` until known: a ``raw`` or ``pixels``
    front-end without a declared size learns it from the first frame), ``step_duration``
    the media seconds between steps (``None`` when unknown).
    """

    name: ClassVar[str]
    media: ClassVar[Media | None] = None

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


def _real_count(pts: float, length: int, rate: float, samples: int | None) -> int:
    """How many of a frame's ``length`` samples (first at ``pts``) lie before the stream's
    ``samples`` real ones (all when ``samples`` is None)."""
    if samples is None:
        return length
    first = round(pts * rate)
    return max(0, min(length, samples - first))


def _as_samples(data: Any) -> Tensor:
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


def _as_image(data: Any) -> np.ndarray[Any, Any]:
    image = np.asarray(data)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"video frames must be [H, W, 3], got shape {list(image.shape)}")
    return image


# --- raw ----------------------------------------------------------------------------------


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
        if self.media_kind == "video":
            image = _as_image(data)
            x = torch.from_numpy(image.reshape(1, -1).astype(np.float32) / np.float32(255.0))
        else:
            samples = _as_samples(data).to(torch.float32)
            if self.chunk is not None and samples.shape[0] < self.chunk:
                pad = samples.new_zeros(self.chunk - samples.shape[0], samples.shape[1])
                samples = torch.cat([samples, pad])
            x = samples.reshape(1, -1)
        self._learn_shape((int(x.shape[1]),))
        return x

    def push_frame(self, frame: Frame) -> tuple[Tensor, list[Step]]:
        """One step; for audio its duration is the frame's real samples over the rate."""
        x = self.push(frame.data)
        duration = frame.duration
        if self.media_kind == "audio":
            real = _real_count(frame.pts, len(frame.data), frame.rate, self.samples)
            duration = real / frame.rate
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
            Step(f.index, f.pts, f.captured, _real_count(f.pts, length, rate, samples) / rate)
            for f in frames
        ]
        return x, steps


# --- logmel -------------------------------------------------------------------------------


def hz_to_mel(hz: Tensor, scale: MelScale = "htk") -> Tensor:
    """Mel value of frequencies ``hz`` (any shape): HTK ``2595 log10(1 + f/700)``, or Slaney
    (linear ``f / (200/3)`` below 1 kHz, logarithmic above)."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / (200.0 / 3.0)
    logstep = math.log(6.4) / 27.0
    log = 15.0 + torch.log(torch.clamp(hz, min=1e-10) / 1000.0) / logstep
    return torch.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: Tensor, scale: MelScale = "htk") -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * (200.0 / 3.0)
    logstep = math.log(6.4) / 27.0
    log = 1000.0 * torch.exp(logstep * (mel - 15.0))
    return torch.where(mel >= 15.0, log, linear)


def mel_filterbank(
    *,
    rate: float,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: MelScale = "htk",
) -> Tensor:
    """Triangular mel filters ``[n_fft // 2 + 1, n_mels]`` float64 (no area normalisation).

    Filter ``m`` rises from 0 at ``f[m]`` to 1 at ``f[m+1]`` and falls to 0 at ``f[m+2]``,
    where ``f`` are ``n_mels + 2`` points evenly spaced on the mel scale from ``f_min`` to
    ``f_max``; evaluated at the FFT bin frequencies ``k * rate / n_fft``. The same as
    torchaudio's ``melscale_fbanks(norm=None)`` (for an even rate).
    """
    f_max = rate / 2.0 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= rate / 2.0:
        raise ValueError(f"mel filterbank needs 0 <= f_min < f_max <= rate/2, got {f_min}, {f_max}")
    n_freqs = n_fft // 2 + 1
    freqs = torch.arange(n_freqs, dtype=torch.float64) * (rate / n_fft)
    bounds = torch.tensor([f_min, f_max], dtype=torch.float64)
    m_lo, m_hi = hz_to_mel(bounds, scale).tolist()
    f_pts = mel_to_hz(torch.linspace(m_lo, m_hi, n_mels + 2, dtype=torch.float64), scale)
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class LogMel(Features):
    """Log mel spectrogram of mono audio, streamed: ``[T, n_mels]`` per push.

    Rates: ``rate`` is the input's (the source's) sample rate; ``sample_rate`` (default:
    ``rate``) the model's, the rate its features were trained at. When they differ the
    input is resampled to ``sample_rate`` first, with a streaming ``soxr.ResampleStream``
    (HQ, float64), whose chunked output equals one-shot ``soxr.resample``; so a model
    trained at 16 kHz gets (nearly) the same features from a 44.1 kHz file as from a 16 kHz
    one. Window and hop are counted at ``sample_rate``: ``n_fft``/``hop`` in samples
    (defaults 400 and 160: 25 ms and 10 ms at 16 kHz), or ``window_s``/``hop_s`` in seconds
    instead (rounded to whole samples; give one of each pair, not both).

    Frame ``t`` covers samples ``[t*hop, t*hop + n_fft)`` of the (resampled) stream (no
    centre padding: the first starts at sample 0) and is emitted by the push in which its
    last sample arrives; leftover samples are kept for the next push, so the features of any
    chunking of a signal, concatenated, equal :func:`logmel_offline` of the whole signal.
    Per frame: periodic Hann window, ``|rfft|^2`` (power spectrum), the HTK (default) or
    Slaney mel filterbank of :func:`mel_filterbank`, then ``log(mel + log_offset)``.
    Multi-channel audio is averaged to mono first. Computed in float64, returned float32.

    The end: ``samples`` is the number of real samples in the stream (at ``rate``; the
    source's ``StreamStart.meta["samples"]``, None when unknown). :meth:`push_frame` ignores
    the samples past it (a source's zero padding of its last frame), and the frame that
    reaches it flushes the resampler, so the steps do not depend on the chunk size and none
    lies past the end of the media. :meth:`push` takes ``last=True`` for the same flush.
    Without a known end (a live stream) the resampler holds back its delay (about 10 ms
    from 44.1 or 48 kHz, 30 ms from 8 kHz, to 16 kHz), so the last step or few of such a
    stream are not made.

    :meth:`push_frame` steps: ``index`` counts feature steps from the stream's start (so
    outputs' ``start``/``end`` are step indices, ``hop`` samples apart, not frame indices),
    ``pts`` is the media time of the step's first sample (seconds of the stream's media
    time, whatever the rates), ``duration`` is ``hop / sample_rate`` (the step duration),
    except that the last step the real samples hold lasts to the end of the media (so the
    steps tile it), ``captured`` that of the frame that completed it.
    After :meth:`gap`, leftover samples (and the resampler's state) are dropped and the next
    frame starts a new run (step indices keep counting).
    """

    name = "logmel"
    media = "audio"

    def __init__(
        self,
        rate: float = 16000,
        *,
        sample_rate: float | None = None,
        n_fft: int | None = None,
        hop: int | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_offset: float = 1e-6,
        mel_scale: MelScale = "htk",
        samples: int | None = None,
    ) -> None:
        super().__init__()
        if not rate > 0 or (sample_rate is not None and not sample_rate > 0):
            raise ValueError(f"logmel: rates must be > 0 Hz, got {rate} and {sample_rate}")
        self.rate = float(rate)
        self.sample_rate = float(sample_rate) if sample_rate is not None else self.rate
        n_fft = _samples_of("n_fft", n_fft, "window_s", window_s, self.sample_rate, 400)
        hop = _samples_of("hop", hop, "hop_s", hop_s, self.sample_rate, 160)
        if n_fft < 1 or hop < 1 or n_mels < 1:
            raise ValueError(
                f"logmel: n_fft, hop and n_mels must be >= 1, got {n_fft}, {hop}, {n_mels}"
            )
        if mel_scale not in ("htk", "slaney"):
            raise ValueError(f"logmel: mel_scale must be 'htk' or 'slaney', not {mel_scale!r}")
        self.n_fft = n_fft
        self.hop = hop
        self.n_mels = n_mels
        self.log_offset = log_offset
        self.mel_scale: MelScale = mel_scale
        self.samples = samples
        self.resampling = self.sample_rate != self.rate
        self.window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        self.filterbank = mel_filterbank(
            rate=self.sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            scale=mel_scale,
        )
        self._shape = (n_mels,)
        self.step_duration = hop / self.sample_rate
        self.reset()

    def reset(self) -> None:
        self._steps = 0  # feature steps emitted in this stream
        self.gap()

    def gap(self) -> None:
        self._buffer = torch.zeros(0, dtype=torch.float64)
        self._skip = 0  # samples still to drop before the next step starts (hop > n_fft)
        self._run_steps = 0  # steps emitted since the run's first sample
        self._run_pts: float | None = None  # media time of the run's first sample
        self._run_last = math.inf  # the run's last step (index in the run), if known
        self._resampler: Any = (
            soxr.ResampleStream(self.rate, self.sample_rate, 1, dtype="float64", quality="HQ")
            if self.resampling
            else None
        )

    def push(self, data: Any, *, last: bool = False) -> Tensor:
        """Samples ``[N, C]`` or ``[N]`` at ``rate`` -> the completed steps ``[T, n_mels]``
        float32. ``last``: no more samples follow in this run (flush the resampler; the
        next push starts a new run, as after :meth:`gap`)."""
        samples = _as_samples(data).to(torch.float64).mean(dim=1)
        if self._resampler is not None:
            out = self._resampler.resample_chunk(samples.numpy(), last=last)
            samples = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float64))
        x = self._frames(samples)
        if last:
            self.gap()
        return x

    def _frames(self, samples: Tensor) -> Tensor:
        """Samples ``[N]`` at ``sample_rate`` -> completed steps ``[T, n_mels]``."""
        if self._skip:
            dropped = min(self._skip, int(samples.shape[0]))
            samples = samples[dropped:]
            self._skip -= dropped
        buffer = torch.cat([self._buffer, samples])
        count = (
            0 if buffer.shape[0] < self.n_fft else (buffer.shape[0] - self.n_fft) // self.hop + 1
        )
        if count == 0:
            self._buffer = buffer
            return torch.zeros(0, self.n_mels, dtype=torch.float32)
        frames = buffer.unfold(0, self.n_fft, self.hop)[:count]  # [T, n_fft]
        consumed = count * self.hop
        self._buffer = buffer[consumed:].clone()
        self._skip = max(0, consumed - int(buffer.shape[0]))
        self._steps += count
        self._run_steps += count
        return self._features(frames)

    def push_frame(self, frame: Frame) -> tuple[Tensor, list[Step]]:
        data = frame.data
        length = len(data)
        real = _real_count(frame.pts, length, self.rate, self.samples)
        if real == 0 and length:
            return torch.zeros(0, self.n_mels, dtype=torch.float32), []
        last = self.samples is not None and round(frame.pts * self.rate) + real >= self.samples
        if real < length:
            data = data[:real]
        if self._run_pts is None:
            self._run_pts = frame.pts
            self._run_last = self._last_step(frame.pts)
        run_pts, final, first = self._run_pts, self._run_last, self._run_steps
        x = self.push(data, last=last)
        count = int(x.shape[0])
        base = self._steps - count
        hop_s = self.hop / self.sample_rate
        end = math.inf if self.samples is None else self.samples / self.rate
        steps = []
        for i in range(count):
            pts = run_pts + (first + i) * hop_s
            duration = hop_s if first + i < final else max(0.0, end - pts)
            steps.append(Step(base + i, pts, frame.captured, duration))
        return x, steps

    def _last_step(self, run_pts: float) -> float:
        """The last step (index in the run starting at ``run_pts``) that the real samples
        hold, ``inf`` when the stream's end is unknown. It lasts to the end of the media,
        so a stream's steps tile it."""
        if self.samples is None:
            return math.inf
        start = round(run_pts * self.rate)  # the run's first sample
        length = resampled_length(max(0, self.samples - start), self.rate, self.sample_rate)
        return (length - self.n_fft) // self.hop

    def _features(self, frames: Tensor) -> Tensor:
        """``frames [T, n_fft]`` float64 -> ``[T, n_mels]`` float32."""
        spectrum = torch.fft.rfft(frames * self.window, dim=1)
        power = spectrum.real.square() + spectrum.imag.square()  # [T, n_fft // 2 + 1]
        mel = power @ self.filterbank
        return torch.log(mel + self.log_offset).to(torch.float32)


def _samples_of(
    name: str,
    count: int | None,
    seconds_name: str,
    seconds: float | None,
    rate: float,
    default: int,
) -> int:
    """A window or hop in samples at ``rate``: ``count``, or ``seconds`` rounded, or the
    default."""
    if seconds is None:
        return default if count is None else count
    if count is not None:
        raise ValueError(f"logmel: give {name} (samples) or {seconds_name} (seconds), not both")
    if not seconds > 0:
        raise ValueError(f"logmel: {seconds_name} must be > 0 seconds, got {seconds}")
    return max(1, round(seconds * rate))


def logmel_offline(signal: Any, **params: Any) -> Tensor:
    """The log mel features ``[T, n_mels]`` of a whole ``signal [N]`` or ``[N, C]`` at once.

    ``params`` are :class:`LogMel`'s (``rate``, ``sample_rate``, ``n_fft``, ``hop``, ...);
    the whole signal is real (``samples`` plays no part).
    """
    return LogMel(**params).push(signal, last=True)


# --- pixels -------------------------------------------------------------------------------


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
        image = _as_image(data)
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

FEATURES: dict[str, type[Features]] = {"raw": Raw, "logmel": LogMel, "pixels": Pixels}
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
    cls = FEATURES.get(name)
    if cls is None:
        raise InputError(
            f"[model] features: unknown front-end {name!r}; expected one of {sorted(FEATURES)}"
        )
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
        if cls is Raw:
            return Raw(media, rate=rate, chunk=chunk, channels=channels, size=size, samples=samples)
        if cls is LogMel:
            if rate is None:
                raise InputError("[model] features: 'logmel' needs the audio rate ([source] rate)")
            return LogMel(rate, samples=samples, **params)
        return Pixels(size, rate=rate, **params)
    except (TypeError, ValueError) as exc:
        raise InputError(f"[model] features: {exc}") from None
