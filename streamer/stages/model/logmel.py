"""The ``logmel`` front-end: a log mel spectrogram of mono audio, streamed (resampled to the
model's rate first when the source's differs), and its offline twin :func:`logmel_offline`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import soxr
import torch
from pydantic import Field
from torch import Tensor

from streamer.frames import Frame
from streamer.options import MAX_RATE, Float, Int, Section
from streamer.sources.chunker import resampled_length
from streamer.stages.model.frontend import Features, Step, as_samples, real_count

MelScale = Literal["htk", "slaney"]


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


class LogMelOptions(Section):
    """``feature_options`` of ``features = "logmel"`` (see
    :class:`streamer.stages.model.logmel.LogMel`)."""

    sample_rate: Annotated[Float, Field(ge=1000, le=MAX_RATE)] | None = None
    n_fft: Annotated[Int, Field(ge=2, le=1 << 16)] | None = None
    hop: Annotated[Int, Field(ge=1, le=1 << 16)] | None = None
    window_s: Annotated[Float, Field(gt=0, le=10)] | None = None
    hop_s: Annotated[Float, Field(gt=0, le=10)] | None = None
    n_mels: Annotated[Int, Field(ge=1, le=1024)] = 40
    f_min: Annotated[Float, Field(ge=0, le=MAX_RATE / 2)] = 0.0
    f_max: Annotated[Float, Field(gt=0, le=MAX_RATE / 2)] | None = None
    log_offset: Annotated[Float, Field(gt=0, le=1)] = 1e-6
    mel_scale: Literal["htk", "slaney"] = "htk"


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
        samples = as_samples(data).to(torch.float64).mean(dim=1)
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
        real = real_count(frame.pts, length, self.rate, self.samples)
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
