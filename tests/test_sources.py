"""File and synthetic sources, and the URI dispatcher, on real generated media."""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer.clock import RealClock, VirtualClock
from streamer.errors import InputError
from streamer.frames import Frame, Item, StreamEnd, StreamStart
from streamer.sources import Source, SourceOptions, open_source
from streamer.sources.audio_file import AudioFileSource
from streamer.sources.synthetic import BRIGHT, DARK, SyntheticSource, parse_spec
from streamer.sources.video_file import VideoFileSource

# -- helpers -------------------------------------------------------------------------------


async def collect(source: Source, limit: int | None = None) -> list[Item]:
    """Iterate ``source`` (up to ``limit`` items), then close it."""
    items: list[Item] = []
    try:
        async for item in source:
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    finally:
        await source.aclose()
    return items


def frames_of(items: list[Item]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def check_structure(items: list[Item], stream: str) -> list[Frame]:
    """StreamStart first, StreamEnd last with the frame count, contiguous indices between."""
    assert isinstance(items[0], StreamStart) and items[0].stream == stream
    assert isinstance(items[-1], StreamEnd) and items[-1].reason == "eof"
    frames = frames_of(items)
    assert len(frames) == len(items) - 2
    assert items[-1].frames == len(frames)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.stream == stream for f in frames)
    return frames


def audio_of(frames: list[Frame]) -> np.ndarray:
    """Concatenated frame data ``[T, C]``."""
    return np.concatenate([f.data for f in frames])


def raises_input_error(path: Path | str, fn: Callable[[], Any]) -> InputError:
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert str(Path(path).name) in message, message
    assert "\n" not in message
    return info.value


def write_tone(path: Path, samples: int, rate: int, channels: int = 1, **kwargs: Any) -> np.ndarray:
    """A different sine per channel, written with soundfile; returns what was written."""
    n = np.arange(samples)[:, None]
    freqs = 220.0 * (1 + np.arange(channels))[None, :]
    data = (0.5 * np.sin(2 * np.pi * freqs * n / rate)).astype(np.float32)
    sf.write(path, data, rate, **kwargs)
    return data


def write_video(path: Path, fourcc: str, frames: int, fps: float = 30.0) -> None:
    """Frames 64x48 whose brightness and a bright bar's position change with the index."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened(), path
    for i in range(frames):
        image = np.full((48, 64, 3), (i * 7) % 200, np.uint8)
        image[:, (2 * i) % 60 : (2 * i) % 60 + 4] = 255
        writer.write(image)
    writer.release()


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame, decoded by OpenCV directly."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    images = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    return images


OPTIONS = SourceOptions()


@pytest.fixture
def stereo_wav(tmp_path: Path) -> Path:
    path = tmp_path / "stereo.wav"
    write_tone(path, 10_000, 16_000, channels=2, subtype="PCM_16")
    return path


@pytest.fixture
def video_avi(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    write_video(path, "MJPG", 30)
    return path


# -- audio files ---------------------------------------------------------------------------


async def test_wav_frames_are_bit_exact_and_padded(stereo_wav: Path) -> None:
    source = AudioFileSource(stereo_wav, SourceOptions(chunk=512), RealClock())
    assert source.name == "source:stereo"
    assert source.total_frames == math.ceil(10_000 / 512) == 20
    items = await collect(source)
    start = items[0]
    assert isinstance(start, StreamStart)
    assert (start.stream, start.media, start.rate) == ("stereo", "audio", 16_000.0)
    assert start.meta["samples"] == 10_000 and start.meta["channels"] == 2
    frames = check_structure(items, "stereo")
    assert len(frames) == 20
    for f in frames:
        assert f.data.shape == (512, 2) and f.data.dtype == np.float32
        assert f.rate == 16_000.0
        assert f.pts == f.index * 512 / 16_000
    expected, _ = sf.read(stereo_wav, dtype="float32", always_2d=True)
    got = audio_of(frames)
    assert np.array_equal(got[:10_000], expected)
    assert not got[10_000:].any()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("a.flac", {"subtype": "PCM_24"}),
        ("a.ogg", {"format": "OGG", "subtype": "VORBIS"}),
        ("a.aiff", {"subtype": "PCM_16"}),
        ("a.au", {"subtype": "FLOAT"}),
    ],
)
async def test_formats_match_soundfile(tmp_path: Path, name: str, kwargs: dict[str, Any]) -> None:
    path = tmp_path / name
    write_tone(path, 7_000, 22_050, channels=1, **kwargs)
    frames = check_structure(await collect(open_source(str(path), OPTIONS, RealClock())), "a")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    assert np.array_equal(audio_of(frames)[: len(expected)], expected)


async def test_mono_mixdown(stereo_wav: Path) -> None:
    source = AudioFileSource(stereo_wav, SourceOptions(chunk=1000, mono=True), RealClock())
    frames = check_structure(await collect(source), "stereo")
    assert frames[0].data.shape == (1000, 1)
    stereo, _ = sf.read(stereo_wav, dtype="float32", always_2d=True)
    assert np.array_equal(audio_of(frames), stereo.mean(axis=1, keepdims=True, dtype=np.float32))


@pytest.mark.parametrize(
    ("native", "target", "channels"), [(44_100, 16_000, 2), (8_000, 16_000, 1)]
)
async def test_resampling_matches_one_shot_soxr(
    tmp_path: Path, native: int, target: int, channels: int
) -> None:
    path = tmp_path / "in.wav"
    data = write_tone(path, 3 * native + 123, native, channels=channels, subtype="FLOAT")
    options = SourceOptions(rate=target, chunk=300)
    source = AudioFileSource(path, options, RealClock())
    frames = check_structure(await collect(source), "in")
    one_shot = soxr.resample(data, native, target, quality="HQ")
    assert source.samples == len(one_shot)
    assert len(frames) == source.total_frames == math.ceil(len(one_shot) / 300)
    assert all(f.rate == target and f.data.shape == (300, channels) for f in frames)
    got = audio_of(frames)
    np.testing.assert_allclose(got[: len(one_shot)], one_shot, atol=1e-6)
    assert not got[len(one_shot) :].any()


async def test_loop_continues_indices_pts_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    data = write_tone(path, 1_000, 8_000, subtype="FLOAT")
    source = AudioFileSource(path, SourceOptions(chunk=256, loop=True), RealClock())
    assert source.total_frames is None
    items = await collect(source, limit=1 + 12)
    assert isinstance(items[0], StreamStart)
    frames = frames_of(items)
    assert len(frames) == 12  # no StreamEnd at the seams
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == [i * 256 / 8_000 for i in range(12)]
    assert np.array_equal(audio_of(frames), np.tile(data, (4, 1))[: 12 * 256])


async def test_realtime_pacing_on_virtual_clock(stereo_wav: Path) -> None:
    clock = VirtualClock(start=100.0)
    options = SourceOptions(chunk=1000, pace="realtime", speed=2.0)
    frames = frames_of(await collect(AudioFileSource(stereo_wav, options, clock)))
    assert len(frames) == 10
    for f in frames:
        assert f.captured == pytest.approx(100.0 + f.pts / 2.0, abs=1e-9)
    assert clock.now() == pytest.approx(100.0 + frames[-1].pts / 2.0)


async def test_fast_pacing_does_not_sleep(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    write_tone(path, 16_000 * 20, 16_000, subtype="PCM_16")  # 20 s of audio
    virtual = VirtualClock(start=5.0)
    frames = frames_of(await collect(AudioFileSource(path, SourceOptions(chunk=4000), virtual)))
    assert len(frames) == 80
    assert all(f.captured == 5.0 for f in frames)
    started = time.monotonic()
    frames = frames_of(await collect(AudioFileSource(path, SourceOptions(chunk=4000), RealClock())))
    assert len(frames) == 80
    assert time.monotonic() - started < 2.0


async def test_truncated_wav_delivers_what_is_there_then_fails(tmp_path: Path) -> None:
    whole = tmp_path / "whole.wav"
    write_tone(whole, 16_000, 16_000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20_044])  # header promises 16000 samples, 10000 remain
    source = AudioFileSource(cut, SourceOptions(chunk=512), RealClock())
    assert source.truncated and source.samples == 10_000
    items: list[Item] = []
    with pytest.raises(InputError, match=r"cut\.wav: the WAV is truncated"):
        async for item in source:
            items.append(item)
    assert isinstance(items[0], StreamStart) and items[0].meta["truncated"] is True
    assert not any(isinstance(i, StreamEnd) for i in items)
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.index for f in frames] == list(range(len(frames)))
    expected, _ = sf.read(whole, dtype="float32", always_2d=True)
    assert np.array_equal(audio_of(frames)[:10_000], expected[:10_000])
    assert len(frames) == math.ceil(10_000 / 512)


async def test_aclose_mid_stream_releases_the_file(stereo_wav: Path) -> None:
    source = AudioFileSource(stereo_wav, SourceOptions(chunk=100), RealClock())
    items = await collect(source, limit=3)
    assert len(items) == 3
    assert source._file is None
    unused = AudioFileSource(stereo_wav, OPTIONS, RealClock())
    await unused.aclose()
    assert await collect(unused) == []


def test_audio_bad_input(tmp_path: Path) -> None:
    clock = RealClock()
    missing = tmp_path / "missing.wav"
    raises_input_error(missing, lambda: AudioFileSource(missing, OPTIONS, clock))
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    assert "directory" in str(
        raises_input_error(folder, lambda: AudioFileSource(folder, OPTIONS, clock))
    )
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert "empty" in str(raises_input_error(empty, lambda: AudioFileSource(empty, OPTIONS, clock)))
    text = tmp_path / "notes.wav"
    text.write_text("these are notes, not audio\n" * 20)
    raises_input_error(text, lambda: AudioFileSource(text, OPTIONS, clock))
    silent = tmp_path / "nothing.wav"
    sf.write(silent, np.zeros((0, 1), np.float32), 16_000)
    err = raises_input_error(silent, lambda: AudioFileSource(silent, OPTIONS, clock))
    assert "no audio samples" in str(err)
    ogg = tmp_path / "half.ogg"
    write_tone(ogg, 16_000, 16_000, format="OGG", subtype="VORBIS")
    ogg.write_bytes(ogg.read_bytes()[: ogg.stat().st_size // 2])
    raises_input_error(ogg, lambda: AudioFileSource(ogg, OPTIONS, clock))
    ok = tmp_path / "ok.wav"
    write_tone(ok, 100, 16_000)
    raises_input_error(ok, lambda: AudioFileSource(ok, SourceOptions(chunk=0), clock))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    write_tone(path, 100, 16_000)
    path.chmod(0)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    # root reads any file: check as an unprivileged user, who may walk down to the file
    walk = [tmp_path, tmp_path.parent, tmp_path.parent.parent] if as_root else []
    modes = [folder.stat().st_mode for folder in walk]
    for folder, mode in zip(walk, modes, strict=True):
        folder.chmod(mode | 0o005)
    if as_root:
        os.seteuid(65534)
    try:
        message = raises_input_error(path, lambda: AudioFileSource(path, OPTIONS, RealClock()))
    finally:
        if as_root:
            os.seteuid(0)
        for folder, mode in zip(walk, modes, strict=True):
            folder.chmod(mode)
        path.chmod(0o644)
    assert "ermission denied" in str(message), message


def test_path_through_a_file(stereo_wav: Path) -> None:
    inside = stereo_wav / "inner.wav"
    raises_input_error(inside, lambda: AudioFileSource(inside, OPTIONS, RealClock()))


async def test_realtime_pacing_on_the_real_clock() -> None:
    source = SyntheticSource(
        "tone?duration=0.3", SourceOptions(chunk=1600, pace="realtime"), RealClock()
    )
    started = time.monotonic()
    frames = frames_of(await collect(source))
    elapsed = time.monotonic() - started
    assert [f.pts for f in frames] == [0.0, 0.1, 0.2]
    assert 0.19 <= elapsed < 1.0
    gaps = [b.captured - a.captured for a, b in itertools.pairwise(frames)]
    assert all(g == pytest.approx(0.1, abs=0.05) for g in gaps)


async def test_flac_corrupt_mid_stream_raises_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    write_tone(path, 48_000, 16_000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    source = AudioFileSource(path, OPTIONS, RealClock())  # the header is intact
    with pytest.raises(InputError, match=r"cut\.flac.*truncated or corrupt"):
        await collect(source)


# -- video files ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fourcc"), [("clip.mp4", "mp4v"), ("clip.avi", "MJPG")])
async def test_video_frames(tmp_path: Path, name: str, fourcc: str) -> None:
    path = tmp_path / name
    write_video(path, fourcc, 30)
    source = VideoFileSource(path, OPTIONS, RealClock())
    assert source.name == "source:clip" and source.total_frames == 30
    items = await collect(source)
    start = items[0]
    assert isinstance(start, StreamStart) and start.media == "video" and start.rate == 30.0
    frames = check_structure(items, "clip")
    assert len(frames) == 30
    direct = read_video(path)
    for f, image in zip(frames, direct, strict=True):
        assert f.data.shape == (48, 64, 3) and f.data.dtype == np.uint8
        assert f.media == "video" and f.rate == 30.0
        assert f.pts == pytest.approx(f.index / 30.0)
        assert np.array_equal(f.data, image)


async def test_video_resize(video_avi: Path) -> None:
    source = VideoFileSource(video_avi, SourceOptions(size=(32, 20)), RealClock())
    frames = check_structure(await collect(source), "clip")
    direct = read_video(video_avi)
    assert len(frames) == 30
    for f, image in zip(frames, direct, strict=True):
        assert f.data.shape == (20, 32, 3)
        assert np.array_equal(f.data, cv2.resize(image, (32, 20), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize(
    ("rate", "kept"),
    [
        (10.0, list(range(0, 30, 3))),
        (12.0, [math.floor(k * 2.5 + 0.5) for k in range(12)]),
        (60.0, list(range(30))),
        (None, list(range(30))),
    ],
)
async def test_video_fps_decimation(video_avi: Path, rate: float | None, kept: list[int]) -> None:
    source = VideoFileSource(video_avi, SourceOptions(rate=rate), RealClock())
    delivered = rate if rate is not None and rate < 30 else 30.0
    assert source.rate == delivered and source.total_frames == len(kept)
    frames = check_structure(await collect(source), "clip")
    direct = read_video(video_avi)
    assert len(frames) == len(kept)
    assert len(set(kept)) == len(kept)  # never a duplicated frame
    for f, n in zip(frames, kept, strict=True):
        assert f.rate == delivered
        assert f.pts == pytest.approx(n / 30.0)  # the kept frame's own time
        assert np.array_equal(f.data, direct[n])


async def test_video_loop(tmp_path: Path) -> None:
    path = tmp_path / "ten.avi"
    write_video(path, "MJPG", 10, fps=10.0)
    source = VideoFileSource(path, SourceOptions(loop=True, stream="cam"), RealClock())
    assert source.total_frames is None
    items = await collect(source, limit=1 + 25)
    frames = frames_of(items)
    assert [f.index for f in frames] == list(range(25))
    assert all(f.stream == "cam" for f in frames)
    assert [f.pts for f in frames] == pytest.approx([k / 10.0 for k in range(25)])
    direct = read_video(path)
    for f in frames:
        assert np.array_equal(f.data, direct[f.index % 10])


async def test_video_loop_with_decimation(tmp_path: Path) -> None:
    path = tmp_path / "ten.avi"
    write_video(path, "MJPG", 10, fps=10.0)
    source = VideoFileSource(path, SourceOptions(loop=True, rate=4.0), RealClock())
    frames = frames_of(await collect(source, limit=1 + 9))
    kept = [math.floor(k * 2.5 + 0.5) for k in range(9)]  # 0 3 5 8 10 13 15 18 20
    assert [f.pts for f in frames] == pytest.approx([n / 10.0 for n in kept])
    direct = read_video(path)
    for f, n in zip(frames, kept, strict=True):
        assert f.rate == 4.0 and np.array_equal(f.data, direct[n % 10])


async def test_video_realtime_pacing(video_avi: Path) -> None:
    clock = VirtualClock()
    options = SourceOptions(pace="realtime", rate=10.0)
    frames = frames_of(await collect(VideoFileSource(video_avi, options, clock)))
    assert len(frames) == 10
    assert [f.captured for f in frames] == pytest.approx([f.pts for f in frames])
    assert frames[-1].captured == pytest.approx(27 / 30)


def test_video_bad_input(tmp_path: Path, stereo_wav: Path) -> None:
    clock = RealClock()
    missing = tmp_path / "missing.mp4"
    raises_input_error(missing, lambda: VideoFileSource(missing, OPTIONS, clock))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    raises_input_error(empty, lambda: VideoFileSource(empty, OPTIONS, clock))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    raises_input_error(text, lambda: VideoFileSource(text, OPTIONS, clock))
    sound = tmp_path / "sound.mp4"
    sound.write_bytes(stereo_wav.read_bytes())
    raises_input_error(sound, lambda: VideoFileSource(sound, OPTIONS, clock))
    cut = tmp_path / "cut.mp4"
    write_video(cut, "mp4v", 30)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the index (moov) is lost
    raises_input_error(cut, lambda: VideoFileSource(cut, OPTIONS, clock))


def test_video_without_decodable_frames(video_avi: Path) -> None:
    """The AVI container is intact, but every frame's JPEG data is zeroed."""
    data = bytearray(video_avi.read_bytes())
    index = data.find(b"idx1")
    at = data.find(b"movi")
    while (at := data.find(b"00dc", at + 1)) != -1 and at < index:
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        data[at + 8 : at + 8 + size] = bytes(size)
    blank = video_avi.with_name("blank.avi")
    blank.write_bytes(bytes(data))
    err = raises_input_error(blank, lambda: VideoFileSource(blank, OPTIONS, RealClock()))
    assert "no decodable video frame" in str(err)


async def test_video_truncated_mid_stream(tmp_path: Path) -> None:
    path = tmp_path / "cut.avi"
    write_video(path, "MJPG", 60)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    source = VideoFileSource(path, OPTIONS, RealClock())  # the first frames decode
    with pytest.raises(InputError, match=r"cut\.avi.*truncated or corrupt"):
        await collect(source)


# -- synthetic -----------------------------------------------------------------------------


async def test_synthetic_tone() -> None:
    uri = "synthetic:tone?freq=440&rate=8000&duration=1&amplitude=0.25"
    source = SyntheticSource(uri, SourceOptions(chunk=500), RealClock())
    assert source.name == "source:tone" and source.total_frames == 16
    items = await collect(source)
    assert isinstance(items[0], StreamStart) and items[0].rate == 8000.0
    frames = check_structure(items, "tone")
    assert len(frames) == 16 and frames[3].pts == 3 * 500 / 8000
    n = np.arange(8000)
    expected = (0.25 * np.sin(2 * np.pi * 440 * n / 8000)).astype(np.float32)
    np.testing.assert_allclose(audio_of(frames)[:, 0], expected, atol=1e-6)


async def test_synthetic_padding_and_channels() -> None:
    source = SyntheticSource(
        "synthetic:tone?duration=0.1&channels=2", SourceOptions(chunk=512), RealClock()
    )
    frames = check_structure(await collect(source), "tone")
    assert source.samples == 1600 and len(frames) == 4  # 16000 Hz by default
    data = audio_of(frames)
    assert data.shape == (2048, 2) and data[:1600].any() and not data[1600:].any()


async def test_synthetic_noise_deterministic_and_chunk_independent() -> None:
    async def noise(uri: str, chunk: int) -> np.ndarray:
        source = SyntheticSource(uri, SourceOptions(chunk=chunk), RealClock())
        return audio_of(frames_of(await collect(source)))[:4000]

    a = await noise("synthetic:noise?duration=0.25&seed=3", 256)
    b = await noise("synthetic:noise?duration=0.25&seed=3", 1000)
    c = await noise("synthetic:noise?duration=0.25&seed=4", 256)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and np.abs(a).max() <= 0.5 and a.std() > 0.2


async def test_synthetic_silence_endless_and_options_rate() -> None:
    source = SyntheticSource(
        "silence", SourceOptions(rate=22_050, chunk=64, stream="s"), RealClock()
    )
    assert source.total_frames is None and source.name == "source:s"
    frames = frames_of(await collect(source, limit=101))
    assert len(frames) == 100 and frames[-1].index == 99
    assert all(f.rate == 22_050 and not f.data.any() for f in frames)


async def test_synthetic_loop_repeats_content() -> None:
    options = SourceOptions(chunk=300, loop=True)
    frames = frames_of(
        await collect(SyntheticSource("noise?rate=1000&duration=1", options, RealClock()), 8)
    )
    once = frames_of(
        await collect(
            SyntheticSource("noise?rate=1000&duration=1", SourceOptions(chunk=1000), RealClock())
        )
    )
    assert [f.pts for f in frames] == [i * 300 / 1000 for i in range(7)]
    np.testing.assert_array_equal(audio_of(frames)[:2100], np.tile(once[0].data, (3, 1))[:2100])


async def test_synthetic_shapes() -> None:
    uri = "synthetic:shapes?size=64x48&fps=10&duration=4&seed=7"
    source = SyntheticSource(uri, OPTIONS, RealClock())
    assert source.total_frames == 40
    frames = check_structure(await collect(source), "shapes")
    assert all(f.data.shape == (48, 64, 3) and f.data.dtype == np.uint8 for f in frames)
    assert [f.pts for f in frames] == pytest.approx([k / 10 for k in range(40)])
    means = [float(f.data.mean()) for f in frames]
    for f, mean in zip(frames, means, strict=True):
        bright = math.floor(f.pts + 1e-9) % 2 == 1
        assert (mean > 128) == bright
    assert min(means) < DARK + 20 and max(means) > BRIGHT - 20
    # the circle moves
    assert not np.array_equal(frames[0].data, frames[1].data)
    again = frames_of(await collect(SyntheticSource(uri, OPTIONS, RealClock())))
    assert all(np.array_equal(a.data, b.data) for a, b in zip(frames, again, strict=True))
    other = frames_of(
        await collect(SyntheticSource(uri.replace("seed=7", "seed=8"), OPTIONS, RealClock()), 3)
    )
    assert not np.array_equal(frames[0].data, other[1].data)


async def test_synthetic_shapes_size_and_rate_options() -> None:
    options = SourceOptions(size=(40, 30), rate=5.0, pace="realtime")
    clock = VirtualClock()
    source = SyntheticSource("synthetic:shapes?duration=2", options, clock)
    frames = check_structure(await collect(source), "shapes")
    assert len(frames) == 10 and frames[0].data.shape == (30, 40, 3) and frames[0].rate == 5.0
    assert [f.captured for f in frames] == pytest.approx([k / 5 for k in range(10)])


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("synthetic:sine?freq=3", "unknown synthetic kind"),
        ("synthetic:tone?pitch=3", "unknown key 'pitch'"),
        ("synthetic:tone?freq=abc", "freq must be a number"),
        ("synthetic:tone?freq", "no value"),
        ("synthetic:shapes?size=64by48", "size must be"),
        ("synthetic:shapes?size=0x48", "size must be"),
        ("synthetic:noise?duration=-1", "duration must be > 0"),
        ("synthetic:tone?amplitude=2", "amplitude"),
        ("synthetic:tone?channels=1.5", "channels must be an integer"),
        ("synthetic:tone?rate=8000&rate=16000", "given twice"),
    ],
)
def test_synthetic_bad_parameters(uri: str, words: str) -> None:
    with pytest.raises(InputError, match=words) as info:
        open_source(uri, OPTIONS, RealClock())
    assert uri in str(info.value)


def test_parse_spec_mapping() -> None:
    spec = parse_spec({"kind": "shapes", "size": "32x16", "fps": 5})
    assert spec.media == "video" and spec.params["size"] == (32, 16) and spec.params["fps"] == 5.0


# -- dispatcher ----------------------------------------------------------------------------


def test_open_source_dispatch(tmp_path: Path, stereo_wav: Path, video_avi: Path) -> None:
    clock = RealClock()
    assert isinstance(open_source(str(stereo_wav), OPTIONS, clock), AudioFileSource)
    assert isinstance(open_source(f"file:{stereo_wav}", OPTIONS, clock), AudioFileSource)
    assert isinstance(open_source(stereo_wav.as_uri(), OPTIONS, clock), AudioFileSource)
    assert isinstance(open_source(str(video_avi), OPTIONS, clock), VideoFileSource)
    assert isinstance(open_source("synthetic:tone", OPTIONS, clock), SyntheticSource)
    text = tmp_path / "readme.txt"
    text.write_text("hello\n")
    raises_input_error(text, lambda: open_source(str(text), OPTIONS, clock))


@pytest.fixture
def unlabelled(tmp_path: Path, stereo_wav: Path, video_avi: Path) -> tuple[Path, Path]:
    """The WAV and the AVI under names whose extension says nothing."""
    audio, video = tmp_path / "sound.bin", tmp_path / "movie.bin"
    audio.write_bytes(stereo_wav.read_bytes())
    video.write_bytes(video_avi.read_bytes())
    return audio, video


async def test_open_source_probes_unknown_extensions(unlabelled: tuple[Path, Path]) -> None:
    audio_path, video_path = unlabelled
    audio = open_source(str(audio_path), OPTIONS, RealClock())  # soundfile first
    video = open_source(str(video_path), OPTIONS, RealClock())  # then OpenCV
    assert isinstance(audio, AudioFileSource) and isinstance(video, VideoFileSource)
    assert len(frames_of(await collect(audio))) == math.ceil(10_000 / 512)
    assert len(frames_of(await collect(video))) == 30


def test_open_source_bad_uris(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown source scheme") as info:
        open_source("rtsp://example/stream", OPTIONS, RealClock())
    assert "rtsp://example/stream" in str(info.value) and "synthetic:" in str(info.value)
    missing = tmp_path / "nothing_here"
    raises_input_error(missing, lambda: open_source(str(missing), OPTIONS, RealClock()))
    raises_input_error(tmp_path, lambda: open_source(str(tmp_path), OPTIONS, RealClock()))


def test_open_source_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``recording:PATH`` and directories with meta.json go to RecordingSource."""
    calls: list[tuple[Path, SourceOptions]] = []

    class FakeRecording:
        def __init__(self, path: Path, options: SourceOptions, clock: object) -> None:
            calls.append((Path(path), options))

    module = types.ModuleType("streamer.sources.recording")
    module.RecordingSource = FakeRecording  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streamer.sources.recording", module)
    (tmp_path / "meta.json").write_text("{}")
    open_source(f"recording:{tmp_path}", OPTIONS, RealClock())
    open_source(str(tmp_path), OPTIONS, RealClock())
    assert calls == [(tmp_path, OPTIONS), (tmp_path, OPTIONS)]
