"""Cameras on real live streams: an MJPEG-over-HTTP stand-in (a subprocess serving frames
that carry their own number in their pixels) and an FFmpeg MPEG-TS stream over UDP, read by
the real OpenCV/FFmpeg stack in the camera source's reader thread."""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary
from standins.mjpeg_server import decode_index

from streamer.clock import RealClock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, StreamEnd, StreamStart
from streamer.sources.base import SourceOptions
from streamer.sources.camera import CameraSource, parse_camera

SERVER = Path(__file__).parent / "standins" / "mjpeg_server.py"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MjpegServer:
    """The stand-in as a real process that can be killed and started again."""

    def __init__(self, fps: float = 30.0, size: str = "320x240", stall: bool = False) -> None:
        self.port = free_port()
        self.fps = fps
        self.size = size
        self.epoch = time.time()
        self.stall = stall
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> None:
        command = [sys.executable, str(SERVER), str(self.port), "--fps", str(self.fps)]
        command += ["--size", self.size, "--epoch", repr(self.epoch)]
        command += ["--stall"] if self.stall else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    stand_in = MjpegServer()
    stand_in.start()
    yield stand_in
    stand_in.kill()


def camera(url: str, **options: Any) -> CameraSource:
    timeout = options.pop("timeout", 3.0)
    policy = options.pop("policy", "drop-oldest")
    return CameraSource(
        f"camera:{url}", SourceOptions(**options), RealClock(), timeout=timeout, policy=policy
    )


async def collect(source: CameraSource, seconds: float) -> list[Any]:
    """Items for ``seconds`` of capture time after the first frame, then stop the source."""
    items: list[Any] = []
    first: float | None = None
    async for item in source:
        items.append(item)
        if isinstance(item, Frame):
            first = item.captured if first is None else first
            if item.captured - first >= seconds:
                break
    await source.aclose()
    return items


def test_frames_arrive_in_order_at_the_camera_rate(server: MjpegServer) -> None:
    items = asyncio.run(collect(camera(server.url), 2.0))
    assert isinstance(items[0], StreamStart) and items[0].media == "video"
    frames = [i for i in items if isinstance(i, Frame)]
    numbers = [decode_index(f.data) for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert [f.index for f in frames] == list(range(len(frames)))  # nothing was lost
    assert numbers[-1] - numbers[0] == len(frames) - 1  # every served frame, in order
    rate = (len(frames) - 1) / (frames[-1].captured - frames[0].captured)
    assert 27.0 <= rate <= 33.0, rate
    assert all(f.data.shape == (240, 320, 3) for f in frames)


def test_requested_rate_and_size_decimate_and_resize(server: MjpegServer) -> None:
    items = asyncio.run(collect(camera(server.url, rate=10.0, size=(64, 48)), 2.0))
    frames = [i for i in items if isinstance(i, Frame)]
    assert all(f.data.shape == (48, 64, 3) and f.rate == 10.0 for f in frames)
    rate = (len(frames) - 1) / (frames[-1].captured - frames[0].captured)
    assert 9.0 <= rate <= 11.0, rate
    numbers = [decode_index(f.data) for f in frames]
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    # every third frame of 30 fps; a late grab (a loaded machine) shifts one step, not the rate
    assert sorted(steps)[len(steps) // 2] == 3, steps
    assert all(1 <= s <= 6 for s in steps), steps


def test_a_restarted_server_is_reconnected_and_the_outage_is_one_gap(
    server: MjpegServer,
) -> None:
    source = camera(server.url, timeout=1.0)

    async def run() -> list[Any]:
        items: list[Any] = []
        killed = restarted = False
        async for item in source:
            items.append(item)
            frames = [i for i in items if isinstance(i, Frame)]
            if not killed and len(frames) >= 30:
                server.kill()
                killed = True
                await asyncio.sleep(1.5)
                await asyncio.to_thread(server.start)
                restarted = True
            if restarted and len(frames) >= 30 and frames[-1].index > frames[29].index + 60:
                break
        await source.aclose()
        return items

    items = asyncio.run(asyncio.wait_for(run(), timeout=60))
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [g.reason for g in gaps if g.reason == "reconnect"] == ["reconnect"]
    gap = next(g for g in gaps if g.reason == "reconnect")
    frames = [i for i in items if isinstance(i, Frame)]
    before = [f for f in frames if f.index < gap.index]
    after = [f for f in frames if f.index >= gap.index + gap.count]
    assert before and after
    # the outage in served frame numbers, against the gap's estimate at the nominal rate
    served_missing = decode_index(after[0].data) - decode_index(before[-1].data) - 1
    assert abs(gap.count - served_missing) <= 0.25 * served_missing + 6, (gap, served_missing)
    assert gap.count >= 30  # at least the 1.5 s the server was down, at 30 fps
    covered = [f.index for f in before] + list(range(gap.index, gap.index + gap.count))
    assert covered == list(range(gap.index + gap.count))
    assert source.reconnects == 1


def test_an_unreachable_url_names_the_url_and_the_time_out() -> None:
    url = f"http://127.0.0.1:{free_port()}/none.mjpg"
    source = camera(url, timeout=1.0)

    async def first() -> Any:
        try:
            return await anext(aiter(source))
        finally:
            await source.aclose()

    with pytest.raises(InputError, match=r"127\.0\.0\.1.*1 s time-out"):
        asyncio.run(first())


def test_a_camera_that_answers_but_sends_no_frame_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli import main

    stalled = MjpegServer(stall=True)
    stalled.start()
    try:
        out = tmp_path / "out.jsonl"
        code = main(["run", "--source", f"camera:{stalled.url}", "--out", str(out), "-q"])
    finally:
        stalled.kill()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("streamer: error: ")]
    assert stalled.url in line and "time-out" in line


@pytest.mark.parametrize("uri", ["camera:", "camera:front", "camera:-1", "camera:http://"])
def test_garbage_after_camera_colon_is_refused(uri: str) -> None:
    with pytest.raises(InputError, match="camera:N"):
        parse_camera(uri)


def test_an_mpegts_stream_over_udp() -> None:
    ffmpeg = require_binary("ffmpeg")
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    sender = subprocess.Popen(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "20",
            "-f",
            "mpegts",
            url,
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        items = asyncio.run(asyncio.wait_for(collect(camera(url, timeout=5.0), 1.0), 30))
    finally:
        sender.kill()
        sender.wait()
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) >= 20
    assert all(f.data.shape == (240, 320, 3) for f in frames)
    assert isinstance(items[-1], Frame | StreamEnd | Gap)
