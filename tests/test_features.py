"""Feature front-ends: raw, logmel (streaming == offline, against a direct DFT), pixels."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import soxr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.errors import InputError
from streamer.frames import Frame
from streamer.sources.chunker import resampled_length
from streamer.stages.model.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LogMel,
    MelScale,
    Pixels,
    Raw,
    Step,
    hz_to_mel,
    logmel_offline,
    make_features,
    mel_filterbank,
    mel_to_hz,
    real_samples,
)


def noise(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, channels)).astype(np.float32)


def chunked(signal: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    bounds = [0, *sorted(c % (len(signal) + 1) for c in cuts), len(signal)]
    return [signal[a:b] for a, b in itertools.pairwise(bounds)]


# --- logmel: streaming == offline ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    seed=st.integers(0, 1000),
    channels=st.sampled_from([1, 2]),
)
def test_logmel_any_chunking_equals_offline(
    n: int, cuts: list[int], seed: int, channels: int
) -> None:
    signal = noise(n, channels, seed)
    offline = logmel_offline(signal, rate=16000)
    features = LogMel(16000)
    streamed = torch.cat([features.push(chunk) for chunk in chunked(signal, cuts)])
    assert streamed.shape == offline.shape == (max(0, (n - 400) // 160 + 1), 40)
    assert torch.allclose(streamed, offline, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    n_fft=st.integers(8, 64),
    hop=st.integers(1, 100),
    n=st.integers(0, 600),
    cuts=st.lists(st.integers(0, 600), max_size=10),
)
def test_logmel_chunking_any_hop_even_longer_than_the_window(
    n_fft: int, hop: int, n: int, cuts: list[int]
) -> None:
    signal = noise(n, seed=n)
    params: dict[str, Any] = {"rate": 8000, "n_fft": n_fft, "hop": hop, "n_mels": 6}
    offline = logmel_offline(signal, **params)
    features = LogMel(**params)
    streamed = torch.cat([features.push(chunk) for chunk in chunked(signal, cuts)])
    expected = 0 if n < n_fft else (n - n_fft) // hop + 1
    assert offline.shape[0] == expected
    assert torch.allclose(streamed, offline, atol=1e-5, rtol=0)


def test_logmel_of_stereo_is_logmel_of_the_channel_mean() -> None:
    stereo = noise(2000, 2, seed=3)
    mono = stereo.mean(axis=1, dtype=np.float64)
    assert torch.allclose(logmel_offline(stereo), logmel_offline(mono), atol=1e-5)


def test_logmel_short_signal_gives_no_steps_then_completes() -> None:
    features = LogMel(16000)
    assert features.push(noise(399)).shape == (0, 40)
    assert features.push(noise(1)).shape == (1, 40)
    assert features.push(noise(159)).shape == (0, 40)
    assert features.push(noise(1)).shape == (1, 40)


# --- logmel: against an independent reference ---------------------------------------------


def direct_power(frame: np.ndarray) -> np.ndarray:
    """|DFT|^2 of a Hann-windowed frame, by the definition (no FFT)."""
    n = len(frame)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann
    x = frame.astype(np.float64) * window
    k = np.arange(n // 2 + 1)[:, None]
    angle = 2 * np.pi * k * np.arange(n)[None, :] / n
    re = (x * np.cos(angle)).sum(axis=1)
    im = -(x * np.sin(angle)).sum(axis=1)
    power: np.ndarray = re**2 + im**2
    return power


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_logmel_equals_a_direct_dft_computation(scale: MelScale) -> None:
    rate, n_fft, hop, n_mels = 8000, 64, 24, 10
    signal = noise(300, seed=7)[:, 0]
    got = logmel_offline(signal, rate=rate, n_fft=n_fft, hop=hop, n_mels=n_mels, mel_scale=scale)
    fb = mel_filterbank(rate=rate, n_fft=n_fft, n_mels=n_mels, scale=scale).numpy()
    frames = [signal[t * hop : t * hop + n_fft] for t in range((300 - n_fft) // hop + 1)]
    expected = np.log(np.stack([direct_power(f) for f in frames]) @ fb + 1e-6)
    assert got.shape == expected.shape
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_is_triangles_that_sum_to_one_inside(scale: MelScale) -> None:
    rate, n_fft, n_mels, f_min, f_max = 16000, 512, 24, 50.0, 7000.0
    fb = mel_filterbank(
        rate=rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max, scale=scale
    )
    assert fb.shape == (n_fft // 2 + 1, n_mels)
    assert bool((fb >= 0).all()) and bool((fb <= 1 + 1e-12).all())
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    m_lo, m_hi = hz_to_mel(torch.tensor([f_min, f_max]), scale).tolist()
    mels = np.linspace(m_lo, m_hi, n_mels + 2)
    edges = mel_to_hz(torch.tensor(mels), scale).numpy()
    for m in range(n_mels):
        column = fb[:, m].numpy()
        support = np.nonzero(column)[0]
        assert freqs[support].min() > edges[m] and freqs[support].max() < edges[m + 2]
        peak = int(column.argmax())
        assert (np.diff(column[: peak + 1]) >= 0).all() and (np.diff(column[peak:]) <= 0).all()
    inside = (freqs >= edges[1]) & (freqs <= edges[n_mels])
    np.testing.assert_allclose(fb.sum(dim=1).numpy()[inside], 1.0, atol=1e-9)
    assert float(fb.sum(dim=1)[freqs < f_min].abs().max()) == 0.0


def test_mel_scales_known_values_and_round_trip() -> None:
    hz = torch.tensor([0.0, 440.0, 1000.0, 4000.0, 8000.0], dtype=torch.float64)
    assert hz_to_mel(hz, "htk")[2].item() == pytest.approx(2595 * math.log10(1 + 1000 / 700))
    assert hz_to_mel(hz, "slaney")[2].item() == pytest.approx(15.0)
    assert hz_to_mel(hz, "slaney")[1].item() == pytest.approx(440 / (200 / 3))
    scales: list[MelScale] = ["htk", "slaney"]
    for scale in scales:
        torch.testing.assert_close(mel_to_hz(hz_to_mel(hz, scale), scale), hz)


def test_a_tone_peaks_in_the_band_around_its_frequency() -> None:
    rate = 16000
    t = np.arange(rate // 4) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    feats = logmel_offline(tone, rate=rate)
    mels = np.linspace(0, float(hz_to_mel(torch.tensor(8000.0))), 42)
    centres = mel_to_hz(torch.tensor(mels[1:-1])).numpy()
    assert int(feats.mean(dim=0).argmax()) == int(np.abs(centres - 1000.0).argmin())


def test_logmel_steps_carry_index_pts_and_capture_time() -> None:
    features = LogMel(16000, n_fft=400, hop=160)
    frames = [
        Frame("s", i, pts=i * 256 / 16000, captured=100.0 + i, data=noise(256, seed=i), rate=16000)
        for i in range(6)
    ]
    steps: list[Step] = []
    for frame in frames:
        x, new = features.push_frame(frame)
        assert x.shape[0] == len(new)
        steps.extend(new)
    assert [s.index for s in steps] == list(range((6 * 256 - 400) // 160 + 1))
    assert [s.pts for s in steps] == pytest.approx([i * 160 / 16000 for i in range(len(steps))])
    # step 0 needs samples 0..399: complete in frame 1 (samples 256..511)
    assert steps[0].captured == 101.0
    # after a gap the leftover is dropped; a new run starts at the next frame's pts
    features.gap()
    x, new = features.push_frame(
        Frame("s", 10, pts=10 * 256 / 16000, captured=110.0, data=noise(400), rate=16000)
    )
    assert [s.index for s in new] == [len(steps)]
    assert new[0].pts == pytest.approx(10 * 256 / 16000)
    assert features.step_duration == pytest.approx(0.01)


# --- raw ----------------------------------------------------------------------------------


def test_raw_audio_flattens_and_pads_a_short_last_chunk() -> None:
    raw = Raw("audio", rate=16000, chunk=4, channels=2)
    assert raw.shape == (8,) and raw.dim == 8 and raw.step_duration == pytest.approx(4 / 16000)
    data = np.arange(8, dtype=np.float32).reshape(4, 2)
    x = raw(data)
    assert x.dtype == torch.float32 and x.shape == (1, 8)
    assert x[0].tolist() == list(range(8))
    short = raw.push(data[:3])
    assert short[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]


def test_raw_video_scales_to_unit_range_and_learns_its_shape() -> None:
    raw = Raw("video", rate=30)
    assert raw.shape is None
    image = np.full((2, 3, 3), 255, dtype=np.uint8)
    image[0, 0] = (0, 51, 102)
    x = raw.push(image)
    assert x.shape == (1, 18) and raw.shape == (18,)
    assert x[0, :3].tolist() == pytest.approx([0.0, 0.2, 0.4])
    assert float(x.max()) == 1.0
    with pytest.raises(ValueError, match="shape"):
        raw.push(np.zeros((4, 4, 3), dtype=np.uint8))


def test_raw_push_frame_gives_one_step_per_frame() -> None:
    raw = Raw("audio", chunk=4, channels=1)
    frame = Frame("s", 7, pts=0.5, captured=9.0, data=noise(4), rate=8)
    x, steps = raw.push_frame(frame)
    assert x.shape == (1, 4) and steps == [Step(7, 0.5, 9.0, duration=4 / 8)]


# --- pixels -------------------------------------------------------------------------------


def test_pixels_rgb_and_imagenet_normalisation() -> None:
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[..., 0] = 255  # blue in BGR
    x = Pixels().push(image)
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    expected = [
        (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
        (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    assert x[0, :, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert bool((x == x[:, :, :1, :1]).all())


def test_pixels_resize_keep_bgr_and_half_normalisation() -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pixels = Pixels((32, 24), rgb=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert pixels.shape == (3, 24, 32)
    x = pixels.push(image)
    assert x.shape == (1, 3, 24, 32)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # INTER_AREA by 2: each output pixel is the mean of a 2x2 block
    block = image[:2, :2, 0].astype(np.float64).mean() / 255.0
    assert float(x[0, 0, 0, 0]) == pytest.approx(2 * block - 1, abs=2 / 255)  # uint8 rounding


def test_pixels_batch_of_streams_stacks_to_b_t_c_h_w() -> None:
    pixels = Pixels((8, 8))
    frames = [np.zeros((8, 8, 3), dtype=np.uint8)] * 3
    per_stream = torch.cat([pixels.push(f) for f in frames])  # [T, C, H, W]
    assert torch.stack([per_stream, per_stream]).shape == (2, 3, 3, 8, 8)


# --- factory ------------------------------------------------------------------------------


def test_make_features_builds_each_front_end() -> None:
    raw = make_features("raw", media="audio", rate=16000, chunk=512, channels=1)
    assert isinstance(raw, Raw) and raw.shape == (512,)
    logmel = make_features("logmel", media="audio", rate=16000, n_mels=64)
    assert isinstance(logmel, LogMel) and logmel.shape == (64,)
    pixels = make_features("pixels", media="video", rate=30, size=(96, 64), rgb=False)
    assert isinstance(pixels, Pixels) and pixels.shape == (3, 64, 96)
    assert pixels.step_duration == pytest.approx(1 / 30)


@pytest.mark.parametrize(
    ("name", "media", "params", "match"),
    [
        ("mfcc", "audio", {}, "unknown front-end 'mfcc'"),
        ("logmel", "video", {}, "'logmel' needs audio"),
        ("pixels", "audio", {}, "'pixels' needs video"),
        ("logmel", "audio", {"n_mel": 3}, "takes no option 'n_mel'"),
        ("logmel", "audio", {"hop": 0}, "must be >= 1"),
        ("raw", "audio", {"n_mels": 3}, "takes no option 'n_mels'"),
    ],
)
def test_make_features_errors_name_the_key(
    name: str, media: str, params: dict[str, int], match: str
) -> None:
    with pytest.raises(InputError, match=r"\[model\] features") as info:
        make_features(name, media=media, rate=16000, **params)  # type: ignore[arg-type]
    assert match in str(info.value)


# --- the end of the real samples, model rate, seconds -------------------------------------


def frames_of(signal: np.ndarray, chunk: int, rate: float = 16000) -> list[Frame]:
    """``signal`` as a file source delivers it: frames of ``chunk``, the last zero-padded."""
    out = []
    for i in range(math.ceil(len(signal) / chunk)):
        data = np.zeros((chunk, signal.shape[1]), np.float32)
        part = signal[i * chunk : (i + 1) * chunk]
        data[: len(part)] = part
        out.append(Frame("s", i, i * chunk / rate, float(i), data, rate))
    return out


def push_frames(features: Any, frames: list[Frame]) -> tuple[torch.Tensor, list[Step]]:
    xs, steps = [], []
    for frame in frames:
        x, new = features.push_frame(frame)
        assert x.shape[0] == len(new)
        xs.append(x)
        steps += new
    return torch.cat(xs), steps


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), chunk=st.integers(1, 4000))
def test_logmel_makes_no_step_from_the_padding(n: int, chunk: int) -> None:
    signal = noise(n, seed=n)
    features = make_features("logmel", media="audio", rate=16000, meta={"samples": n})
    x, steps = push_frames(features, frames_of(signal, chunk))
    want = logmel_offline(signal, rate=16000)
    assert x.shape == want.shape == (max(0, (n - 400) // 160 + 1), 40)
    assert torch.allclose(x, want, atol=1e-5, rtol=0)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert all(s.duration == pytest.approx(0.01) for s in steps[:-1])
    if steps:  # the last step lasts to the end of the media: the steps tile it
        assert steps[-1].end == pytest.approx(n / 16000)
        assert steps[-1].pts + 400 / 16000 <= n / 16000 + 1e-12


def test_real_samples_come_from_the_stream_meta_unless_it_loops() -> None:
    assert real_samples({"samples": 96000, "chunk": 512}) == 96000
    assert real_samples({"samples": 96000, "loop": True}) is None
    assert real_samples({}) is None
    assert real_samples({"samples": True}) is None
    looped = make_features("logmel", media="audio", rate=16000, meta={"samples": 10, "loop": 1})
    x, _ = push_frames(looped, frames_of(noise(800), 400))
    assert x.shape[0] == 3  # every sample counts


def test_raw_keeps_the_padding_but_its_last_step_ends_with_the_media() -> None:
    raw = make_features(
        "raw", media="audio", rate=16000, chunk=512, channels=1, meta={"samples": 1000}
    )
    x, steps = push_frames(raw, frames_of(noise(1000), 512))
    assert x.shape == (2, 512) and float(x[1, 1000 - 512 :].abs().max()) == 0.0
    assert [s.duration for s in steps] == pytest.approx([512 / 16000, 488 / 16000])
    assert steps[-1].end == pytest.approx(1000 / 16000)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 9000),
    cuts=st.lists(st.integers(0, 9000), max_size=10),
    rate=st.sampled_from([44100, 22050, 48000, 8000]),
)
def test_logmel_at_a_declared_sample_rate_streams_like_one_shot_resampling(
    n: int, cuts: list[int], rate: int
) -> None:
    """Any chunking, flushed at the end, equals ``soxr.resample`` of the whole signal to
    the model's rate, then log-mel at that rate."""
    signal = noise(n, seed=n)
    features = LogMel(rate, sample_rate=16000)
    parts = chunked(signal, cuts)
    streamed = torch.cat(
        [features.push(part, last=i == len(parts) - 1) for i, part in enumerate(parts)]
    )
    once = soxr.resample(signal.mean(axis=1, dtype=np.float64), rate, 16000, quality="HQ")
    want = logmel_offline(once, rate=16000)
    assert streamed.shape == want.shape
    assert torch.allclose(streamed, want, atol=1e-5, rtol=0)
    assert torch.allclose(logmel_offline(signal, rate=rate, sample_rate=16000), want, atol=1e-5)
    assert len(once) == resampled_length(n, rate, 16000)


def test_logmel_steps_at_a_declared_rate_keep_the_stream_media_time() -> None:
    rate, n = 44100, 44100 // 2
    features = make_features(
        "logmel", media="audio", rate=rate, meta={"samples": n}, sample_rate=16000
    )
    assert features.step_duration == pytest.approx(0.01)
    x, steps = push_frames(features, frames_of(noise(n), 1000, rate=rate))
    count = (resampled_length(n, rate, 16000) - 400) // 160 + 1
    assert x.shape == (count, 40)
    assert [s.pts for s in steps] == pytest.approx([i * 0.01 for i in range(count)])
    assert steps[-1].end == pytest.approx(0.5)


def test_logmel_window_and_hop_in_seconds() -> None:
    at16 = LogMel(16000, window_s=0.025, hop_s=0.01)
    assert (at16.n_fft, at16.hop) == (400, 160)
    at48 = LogMel(48000, window_s=0.025, hop_s=0.01)
    assert (at48.n_fft, at48.hop, at48.step_duration) == (1200, 480, pytest.approx(0.01))
    model_rate = LogMel(48000, sample_rate=16000, window_s=0.025, hop_s=0.01)
    assert (model_rate.n_fft, model_rate.hop) == (400, 160)
    assert LogMel(16000, n_fft=512, hop_s=0.02).hop == 320


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_fft": 400, "window_s": 0.025}, "n_fft .* or window_s .* not both"),
        ({"hop": 160, "hop_s": 0.01}, "hop .* or hop_s .* not both"),
        ({"hop_s": 0.0}, "hop_s must be > 0"),
        ({"sample_rate": -1}, "rates must be > 0"),
        ({"samples": 5}, "takes no option 'samples'"),
        ({"meta": {}, "n_mels": 3, "mfcc": 1}, "takes no option 'mfcc'"),
    ],
)
def test_logmel_rate_and_seconds_options_are_checked(params: dict[str, Any], match: str) -> None:
    meta = params.pop("meta", None)
    with pytest.raises(InputError, match=r"\[model\] features: .*" + match):
        make_features("logmel", media="audio", rate=16000, meta=meta, **params)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([8, 8, 8, 5, 1]), min_size=1, max_size=12),
    channels=st.sampled_from([1, 2]),
    dtype=st.sampled_from(["float32", "float64", "int16"]),
    flat=st.booleans(),
    samples=st.one_of(st.none(), st.integers(0, 100)),
)
def test_raw_push_frames_equals_frame_by_frame(
    sizes: list[int], channels: int, dtype: str, flat: bool, samples: int | None
) -> None:
    """The whole-run path (one stacked copy) gives exactly the steps and values that
    ``push_frame`` gives frame by frame, whatever the frames' types and lengths."""
    frames, pts = [], 0
    for index, size in enumerate(sizes):
        data = noise(size, channels, seed=index)
        data = (data * 30000).astype(np.int16) if dtype == "int16" else data.astype(dtype)
        if flat and channels == 1:
            data = data[:, 0]
        frames.append(
            Frame("s", index, pts=pts / 8000, captured=float(index), data=data, rate=8000)
        )
        pts += size
    meta = {} if samples is None else {"samples": samples}
    one = make_features("raw", media="audio", rate=8000, chunk=8, channels=channels, meta=meta)
    run = make_features("raw", media="audio", rate=8000, chunk=8, channels=channels, meta=meta)
    by_frame = [one.push_frame(frame) for frame in frames]
    x, steps = run.push_frames(frames)
    assert torch.equal(x, torch.cat([xi for xi, _ in by_frame]))
    assert steps == [step for _, more in by_frame for step in more]


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 6),
    height=st.integers(2, 30),
    width=st.integers(2, 30),
    size=st.one_of(st.none(), st.tuples(st.integers(1, 12), st.integers(1, 12))),
    rgb=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_pixels_push_frames_equals_frame_by_frame(
    count: int, height: int, width: int, size: tuple[int, int] | None, rgb: bool, seed: int
) -> None:
    """A run of frames normalised in one pass holds exactly the values and steps that
    ``push_frame`` gives frame by frame (resized or not, RGB or BGR)."""
    rng = np.random.default_rng(seed)
    frames = [
        Frame("cam", i, i / 30, float(i), rng.integers(0, 256, (height, width, 3), np.uint8), 30)
        for i in range(count)
    ]
    one = Pixels(size, rate=30, rgb=rgb)
    run = Pixels(size, rate=30, rgb=rgb)
    by_frame = [one.push_frame(frame) for frame in frames]
    x, steps = run.push_frames(frames)
    assert torch.equal(x, torch.cat([xi for xi, _ in by_frame]))
    assert steps == [step for _, more in by_frame for step in more]
