"""Audio in blocks of any size -> frames of exactly ``chunk`` samples.

One :class:`Chunker` per audio stream, shared by the file, synthetic and microphone
sources. Each block ``[T, C]`` goes through, in order:

1. mono mix-down (``mono``): the mean of the channels, in float32;
2. resampling (``rate`` -> ``out_rate``): a streaming ``soxr.ResampleStream`` (HQ,
   float32), whose output over the whole signal equals one-shot ``soxr.resample`` of it,
   whatever the block sizes; resampled samples are clipped to [-1, 1];
3. cutting into ``[chunk, C']`` frames; what is left waits for the next block.

:meth:`Chunker.finish` flushes the resampler and zero-pads the last frame; ``samples``
counts the real samples handed out, so ``padding`` says how many zeros the last frame
holds. Chunks never share memory with the blocks given, so a caller may reuse its buffer
(a PortAudio callback's ``indata``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

Audio = npt.NDArray[np.float32]


class Chunker:
    """Cuts a stream of ``[T, channels]`` float32 blocks into ``[chunk, C']`` frames.

    ``C'`` is 1 with ``mono``, otherwise ``channels``. ``rate``/``out_rate``: the blocks'
    sample rate and the one to deliver (resampling only when both are given and differ).
    Not thread-safe: one thread at a time (a source's worker, or the device's callback).
    """

    def __init__(
        self,
        chunk: int,
        channels: int,
        *,
        mono: bool = False,
        rate: float | None = None,
        out_rate: float | None = None,
    ) -> None:
        if chunk < 1 or channels < 1:
            raise ValueError(f"chunker: chunk and channels must be >= 1, got {chunk}, {channels}")
        self.chunk = chunk
        self.channels = channels
        self.mono = mono and channels > 1
        self.out_channels = 1 if mono else channels
        self.rate = rate
        self.out_rate = out_rate if out_rate is not None else rate
        self.resampling = rate is not None and out_rate is not None and rate != out_rate
        #: Real samples handed out so far; ``chunks`` frames of ``chunk`` hold them.
        self.samples = 0
        self.chunks = 0
        self._resampler: Any = self._new_resampler()
        self._pending: Audio = np.zeros((0, self.out_channels), np.float32)
        self._finished = False

    def _new_resampler(self) -> Any:
        if not self.resampling:
            return None
        return soxr.ResampleStream(
            self.rate, self.out_rate, self.out_channels, dtype="float32", quality="HQ"
        )

    @property
    def pending(self) -> int:
        """Samples waiting for a frame to be completed (at the delivered rate)."""
        return len(self._pending)

    @property
    def padding(self) -> int:
        """Zeros in the frames handed out so far (only :meth:`finish` pads the last one)."""
        return self.chunks * self.chunk - self.samples

    def push(self, block: npt.ArrayLike) -> list[Audio]:
        """The frames ``[chunk, C']`` that ``block`` ``[T, channels]`` completes."""
        if self._finished:
            raise ValueError("chunker: the stream is finished; reset() it to start another")
        x = self._prepare(block, copy=self._resampler is None)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
            np.clip(x, -1.0, 1.0, out=x)
        return self._cut(x)

    def finish(self) -> list[Audio]:
        """The end of the stream: flush the resampler, zero-pad what is left to one last
        frame; the frames that completes (none, one or, after a resampler flush, more).
        Finishing again gives nothing."""
        frames: list[Audio] = []
        if self._finished:
            return frames
        self._finished = True
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(
                np.zeros((0, self.out_channels), np.float32), last=True
            )
            np.clip(tail, -1.0, 1.0, out=tail)
            frames = self._cut(tail)
        if len(self._pending):
            padded = np.zeros((self.chunk, self.out_channels), np.float32)
            padded[: len(self._pending)] = self._pending
            self.samples += len(self._pending)
            self.chunks += 1
            self._pending = self._pending[:0]
            frames.append(padded)
        return frames

    def reset(self) -> int:
        """Forget the pending samples and the resampler's history (samples were lost in
        between, or a new stream starts); returns how many pending samples were dropped.
        The counters go on."""
        dropped = len(self._pending)
        self._pending = self._pending[:0]
        self._resampler = self._new_resampler()
        self._finished = False
        return dropped

    def _prepare(self, block: npt.ArrayLike, copy: bool) -> Audio:
        """``block`` as float32 ``[T, C']``, mixed down; with ``copy``, never the caller's
        array (the resampler makes a new one anyway)."""
        original = block
        x = np.asarray(block, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"chunker: blocks must be [samples, {self.channels}], got {list(x.shape)}"
            )
        if self.mono:
            mixed: Audio = x.mean(axis=1, keepdims=True, dtype=np.float32)
            return mixed
        if copy and isinstance(original, np.ndarray) and np.shares_memory(x, original):
            x = x.copy()
        return x

    def _cut(self, x: Audio) -> list[Audio]:
        if len(self._pending):
            x = np.concatenate([self._pending, x])
        full = len(x) // self.chunk
        frames = [x[j * self.chunk : (j + 1) * self.chunk] for j in range(full)]
        self._pending = x[full * self.chunk :]
        self.samples += full * self.chunk
        self.chunks += full
        return frames


def resampled_length(samples: int, rate: float, new_rate: float) -> int:
    """How many samples ``soxr`` makes of ``samples`` at ``rate`` resampled to ``new_rate``
    (one shot, or streamed to the last chunk): ``samples * new_rate / rate`` rounded, halves
    up (exact arithmetic)."""
    if rate == new_rate:
        return samples
    scaled = Fraction(samples) * Fraction(new_rate) / Fraction(rate)
    return math.floor(scaled + Fraction(1, 2))
