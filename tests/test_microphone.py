"""Microphones on real PortAudio capture: a private PulseAudio server's virtual microphone,
fed by ``paplay`` with real speech in real time."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import require, require_binary
from standins.pulse import PulseServer, virtual_microphone

from streamer.clock import RealClock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, StreamStart
from streamer.sources.base import SourceOptions
from streamer.sources.microphone import MicrophoneSource, import_sounddevice, retrying_busy

SPEECH = Path(__file__).resolve().parent / "data" / "speech_en_16k.wav"
CHUNK = 512


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    require_binary("pulseaudio")
    require_binary("paplay")
    try:
        import_sounddevice()
    except InputError as exc:
        require(False, f"PortAudio ({exc})")
    with virtual_microphone() as server:
        yield server


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 4 s of the shared speech, as the WAV that is played."""
    require(SPEECH.is_file(), f"test speech {SPEECH}")
    samples, rate = sf.read(SPEECH, dtype="int16", frames=4 * 16000)
    path = tmp_path_factory.mktemp("speech") / "speech4s.wav"
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def mic(**options: Any) -> MicrophoneSource:
    policy = options.pop("policy", "drop-oldest")
    capacity = options.pop("capacity", 64)
    opts = SourceOptions(rate=16000, chunk=CHUNK, mono=True, **options)
    return MicrophoneSource("mic:pulse", opts, RealClock(), policy=policy, capacity=capacity)


async def capture(
    source: MicrophoneSource, server: PulseServer, wav: Path, frames: int, stall: float = 0.0
) -> list[Any]:
    """Start capturing, play ``wav``, take items until ``frames`` frames (stalling the
    consumer for ``stall`` seconds after the 20th)."""
    items: list[Any] = []
    player: subprocess.Popen[bytes] | None = None
    try:
        async for item in source:
            items.append(item)
            if isinstance(item, StreamStart):
                player = server.play(wav)
            count = sum(isinstance(i, Frame) for i in items)
            if stall and count == 20:
                await asyncio.sleep(stall)
            if count >= frames:
                break
    finally:
        await source.aclose()
        if player is not None:
            player.kill()
            player.wait()
    return items


def test_captured_samples_are_the_played_wav_at_the_real_time_rate(
    pulse: PulseServer, speech: Path
) -> None:
    items = asyncio.run(asyncio.wait_for(capture(mic(), pulse, speech, 120), 60))
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.data.shape == (CHUNK, 1) and f.data.dtype == np.float32 for f in frames)
    heard = np.concatenate([f.data[:, 0] for f in frames])
    played, _ = sf.read(speech, dtype="float32")
    # align by cross-correlation on a stretch of speech (the first ~0.2 s may be lost)
    probe = played[16000:24000]
    corr = np.correlate(heard, probe, mode="valid")
    offset = int(np.argmax(corr)) - 16000
    start = max(0, -offset, 4000)
    end = min(len(played), len(heard) - offset)
    assert end - start > 16000, (offset, start, end)
    np.testing.assert_array_equal(heard[start + offset : end + offset], played[start:end])
    # chunks arrive at the real-time rate: 16000 / 512 = 31.25 a second (within 10%). A
    # fresh PulseAudio server first hands over a backlog with start-up time stamps (about
    # 40 chunks, see benchmarks/bench_live.py): the rate is measured after it.
    steady = frames[50:]
    rate = (len(steady) - 1) / (steady[-1].captured - steady[0].captured)
    assert 28.0 <= rate <= 34.5, rate
    assert items[0].meta["live"] is True


def test_a_stalled_consumer_overflows_into_counted_gaps(pulse: PulseServer, speech: Path) -> None:
    source = mic(capacity=4)
    items = asyncio.run(asyncio.wait_for(capture(source, pulse, speech, 60, stall=1.0), 60))
    gaps = [i for i in items if isinstance(i, Gap)]
    assert gaps and all(g.reason == "source-overflow" for g in gaps)
    assert sum(g.count for g in gaps) == source.buffer.dropped >= 20
    covered: list[int] = []
    for item in items:
        if isinstance(item, Frame):
            covered.append(item.index)
        elif isinstance(item, Gap):
            covered += range(item.index, item.index + item.count)
    assert covered == list(range(len(covered)))


def test_unknown_devices_and_refused_rates_list_what_there_is(pulse: PulseServer) -> None:
    clock = RealClock()
    with pytest.raises(InputError, match=r"mic:99: no input device 99; inputs: .*pulse"):
        MicrophoneSource("mic:99", SourceOptions(), clock)
    with pytest.raises(InputError, match=r"no input device named like 'nosuch'; inputs:"):
        MicrophoneSource("mic:nosuch", SourceOptions(), clock)
    with pytest.raises(InputError, match=r"refuses 1e\+07 Hz.*supports .*16000"):
        MicrophoneSource("mic:pulse", SourceOptions(rate=1e7, mono=True), clock)


def test_a_missing_portaudio_names_the_package(tmp_path: Path) -> None:
    """With libportaudio hidden (a bind mount of /dev/null over it, in a private mount
    namespace), a microphone is refused in one line naming libportaudio2."""
    unshare = shutil.which("unshare")
    require(unshare is not None, "unshare (util-linux)")
    code = (
        "import ctypes.util, subprocess, sys\n"
        "lib = ctypes.util.find_library('portaudio')\n"
        "from streamer.sources.microphone import MicrophoneSource\n"
        "from streamer.sources.base import SourceOptions\n"
        "from streamer.clock import RealClock\n"
        "try:\n"
        "    MicrophoneSource('mic:', SourceOptions(), RealClock())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "from streamer.cli import main\n"
        "print('devices exit', main(['devices']))\n"
    )
    import ctypes.util

    name = ctypes.util.find_library("portaudio")
    require(name is not None, "libportaudio2")
    paths = [p for p in Path("/usr/lib").rglob("libportaudio.so*") if p.is_file()]
    mounts = " && ".join(f"mount --bind /dev/null {p}" for p in paths)
    result = subprocess.run(
        [unshare, "--mount", "sh", "-c", f'{mounts} && {sys.executable} -c "$CODE"'],
        env={"CODE": code, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "unshare" in result.stderr:
        require(False, f"a private mount namespace ({result.stderr.strip()})")
    assert "InputError" in result.stdout and "libportaudio2" in result.stdout, result
    # `streamer devices` still works, and says why there are no microphones
    assert "unavailable: microphone: the PortAudio library is missing" in result.stdout
    assert "devices exit 0" in result.stdout


def test_devices_lists_the_virtual_microphone(
    pulse: PulseServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli import main

    assert main(["devices", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in listing["microphones"]]
    assert "pulse" in names and listing["microphone_error"] is None
    assert sum(m["default"] for m in listing["microphones"]) == 1
    assert listing["cameras"] == []  # no /dev/video* here, and no hang looking for one
    assert main(["devices"]) == 0
    text = capsys.readouterr().out
    assert "pulse" in text and "cameras" in text


def test_a_device_busy_for_a_moment_is_tried_again_and_other_errors_are_not() -> None:
    """PortAudio's "cannot open just now" codes are retried within the budget; a refused
    rate is reported at once; a device busy past the budget gives its last error."""
    sd = import_sounddevice()
    calls: list[int] = []

    def opens_third_time() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sd.PortAudioError("Illegal combination of I/O devices", -9993)
        return "open"

    assert retrying_busy(opens_third_time, "mic:test") == "open" and len(calls) == 3

    def refuses_rate() -> None:
        calls.append(1)
        raise sd.PortAudioError("Invalid sample rate", -9997)

    calls.clear()
    with pytest.raises(sd.PortAudioError, match="Invalid sample rate"):
        retrying_busy(refuses_rate, "mic:test")
    assert len(calls) == 1

    def always_busy() -> None:
        calls.append(1)
        raise sd.PortAudioError("Device unavailable", -9985)

    calls.clear()
    with pytest.raises(sd.PortAudioError, match="Device unavailable"):
        retrying_busy(always_busy, "mic:test", budget_s=0.5)
    assert 2 <= len(calls) <= 5
