"""The audio chunker: any block sizes in, exactly ``chunk``-sample frames out, equal to
processing the whole signal at once (mono mix-down, one-shot soxr, clip), last frame
zero-padded with the padding counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soxr
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamer.sources.chunker import Chunker

RATES = (8_000, 11_025, 16_000, 22_050, 44_100, 48_000)


def one_shot(x: np.ndarray, mono: bool, rate: int, out_rate: int) -> np.ndarray:
    """The whole signal processed at once: what the chunks must concatenate to."""
    if mono and x.shape[1] > 1:
        x = x.mean(axis=1, keepdims=True, dtype=np.float32)
    if rate == out_rate:
        return x
    return np.clip(soxr.resample(x, rate, out_rate, quality="HQ"), -1.0, 1.0)


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, list[int], int, bool, int, int]:
    channels = draw(st.integers(1, 3))
    length = draw(st.integers(1, 4_000))
    seed = draw(st.integers(0, 2**32 - 1))
    signal = np.random.default_rng(seed).uniform(-1.0, 1.0, (length, channels))
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=20)))  # repeats: empty blocks
    blocks = [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
    chunk = draw(st.integers(1, 700))
    mono = draw(st.booleans())
    rate = draw(st.sampled_from(RATES))
    out_rate = draw(st.sampled_from(RATES))
    return signal.astype(np.float32), blocks, chunk, mono, rate, out_rate


@settings(max_examples=80, deadline=None)
@given(cases())
@example((np.full((1, 1), 0.3, np.float32), [1], 1, False, 22_050, 8_000))  # no sample out
def test_chunks_equal_the_whole_signal_processed_at_once(
    case: tuple[np.ndarray, list[int], int, bool, int, int],
) -> None:
    signal, blocks, chunk, mono, rate, out_rate = case
    channels = signal.shape[1]
    chunker = Chunker(chunk, channels, mono=mono, rate=rate, out_rate=out_rate)
    frames: list[np.ndarray] = []
    start = 0
    for size in blocks:
        frames += chunker.push(signal[start : start + size])
        start += size
    frames += chunker.finish()
    expected = one_shot(signal, mono, rate, out_rate)
    out_channels = 1 if mono else channels
    assert all(f.shape == (chunk, out_channels) and f.dtype == np.float32 for f in frames)
    assert len(frames) == math.ceil(len(expected) / chunk)
    got = np.concatenate([np.zeros((0, out_channels), np.float32), *frames])
    assert np.array_equal(got[: len(expected)], expected)
    assert chunker.samples == len(expected) and chunker.chunks == len(frames)
    assert chunker.padding == len(frames) * chunk - len(expected) < chunk
    assert not got[len(expected) :].any()
    assert chunker.pending == 0 and chunker.finish() == []  # finishing twice adds nothing
    with pytest.raises(ValueError, match="finished"):
        chunker.push(signal)


def test_frames_never_share_the_callers_buffer() -> None:
    chunker = Chunker(4, 1)
    buffer = np.arange(6, dtype=np.float32)[:, None]
    first = chunker.push(buffer)  # 4 out, 2 pending
    buffer[:] = -1.0  # a device reusing its buffer
    second = chunker.push(buffer)
    assert first[0][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert second[0][:, 0].tolist() == [4.0, 5.0, -1.0, -1.0]
    assert not np.shares_memory(second[0], buffer)


def test_reset_drops_the_pending_samples_and_the_resampler_history() -> None:
    tone = np.sin(np.arange(2_000) / 5.0).astype(np.float32)[:, None].repeat(2, axis=1)
    plain = Chunker(10, 2)
    plain.push(tone[:35])
    assert plain.reset() == 5 and plain.pending == 0
    assert np.array_equal(plain.push(tone[:10])[0], tone[:10])
    chunker = Chunker(10, 2, rate=16_000, out_rate=8_000)
    chunker.push(tone[:1_000])  # the resampler has history, maybe samples pending
    chunker.reset()
    assert chunker.pending == 0
    frames = chunker.push(tone) + chunker.finish()
    fresh = Chunker(10, 2, rate=16_000, out_rate=8_000)
    assert np.array_equal(np.concatenate(frames), np.concatenate(fresh.push(tone) + fresh.finish()))


def test_bad_blocks_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk and channels must be >= 1"):
        Chunker(0, 1)
    with pytest.raises(ValueError, match=r"blocks must be \[samples, 2\], got \[5, 1\]"):
        Chunker(4, 2).push(np.zeros((5, 1), np.float32))
