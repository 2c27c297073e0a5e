"""``streamer record`` from live devices: a camera stand-in and the virtual microphone are
recorded for a few seconds, and the recording replays bit-exactly (data, indices, pts,
gaps) with the original capture pattern."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require, require_binary
from standins.mjpeg_server import decode_index
from standins.pulse import virtual_microphone
from test_camera import MjpegServer

from streamer.cli import main
from streamer.clock import VirtualClock
from streamer.frames import Frame, Gap, StreamEnd, StreamStart
from streamer.recording import read_recording
from streamer.sources.recording import RecordingSource

SPEECH = REPO / "tests" / "data" / "speech_en_16k.wav"


@pytest.fixture
def camera() -> Iterator[MjpegServer]:
    server = MjpegServer(fps=15.0, size="160x120")
    server.start()
    yield server
    server.kill()


def replay(path: Path) -> list[object]:
    async def items() -> list[object]:
        source = RecordingSource(path, clock=VirtualClock())
        try:
            return [item async for item in source]
        finally:
            await source.aclose()

    return asyncio.run(items())


def test_a_camera_recording_replays_what_the_camera_sent(
    camera: MjpegServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cam"
    code = main(["record", f"camera:{camera.url}", str(out), "--duration", "2"])
    assert code == 0, capsys.readouterr().err
    recording = read_recording(out)
    assert len(recording.streams) == 1 and recording.streams[0].media == "video"
    items = replay(out)
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], StreamEnd)
    frames = [i for i in items if isinstance(i, Frame)]
    assert 20 <= len(frames) <= 40  # about 2 s at 15 fps
    numbers = [decode_index(f.data) for f in frames]
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] == len(frames) - 1
    assert all(f.data.shape == (120, 160, 3) and f.data.dtype == np.uint8 for f in frames)
    assert frames[-1].pts < 2.0
    stored = recording.streams[0]
    for i, frame in enumerate(frames):  # bit-exact: the stored bytes are what was captured
        np.testing.assert_array_equal(stored.frame_data(i), frame.data)


def test_a_microphone_recording_replays_bit_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_binary("pulseaudio")
    require(SPEECH.is_file(), f"test speech {SPEECH}")
    out = tmp_path / "mic"
    with virtual_microphone() as server:
        player = server.play(SPEECH)
        try:
            code = main(
                ["record", "mic:pulse", str(out), "--duration", "2", "--rate", "16000", "--mono"]
            )
        finally:
            player.kill()
            player.wait()
    assert code == 0, capsys.readouterr().err
    items = replay(out)
    frames = [i for i in items if isinstance(i, Frame)]
    gaps = [i for i in items if isinstance(i, Gap)]
    lost = [k for g in gaps for k in range(g.index, g.index + g.count)]
    covered = sorted([f.index for f in frames] + lost)
    assert covered == list(range(len(covered)))
    assert len(covered) == math.ceil(2.0 * 16000 / 512)  # chunks that start before 2 s
    assert all(f.data.shape == (512, 1) and f.data.dtype == np.float32 for f in frames)
    assert max(float(np.abs(f.data).max()) for f in frames) > 0.01  # it heard the speech
