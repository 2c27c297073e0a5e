"""Several live devices in one run: four camera stand-ins (real MJPEG-over-HTTP servers)
and a microphone (a private PulseAudio virtual mic fed with real speech) through one model
stage that keeps state per stream and batches the cameras' frames. One camera is killed
for good mid-run: the other streams go on to the end, and the run still ends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require, require_binary
from standins.pulse import PulseServer, virtual_microphone
from test_camera import MjpegServer

from streamer.cli import main

SPEECH = REPO / "tests" / "data" / "speech_en_16k.wav"
DURATION = 4.0


@pytest.fixture
def cameras() -> Iterator[list[MjpegServer]]:
    servers = [MjpegServer(fps=15.0, size="160x120") for _ in range(4)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.kill()


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    require_binary("pulseaudio")
    require(SPEECH.is_file(), f"test speech {SPEECH}")
    with virtual_microphone() as server:
        yield server


def toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists read the same in TOML


def test_four_cameras_and_a_microphone_share_one_batched_model_stage(
    cameras: list[MjpegServer],
    pulse: PulseServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    lines = []
    for number, camera in enumerate(cameras):
        lines += [
            "[[sources]]",
            f"uri = {toml('camera:' + camera.url)}",
            f'stream = "cam{number}"',
            "size = [32, 24]",
            "timeout = 3.0",
        ]
    lines += [
        "[[sources]]",
        'uri = "mic:pulse"',
        'stream = "mic"',
        "rate = 16000",
        "chunk = 1600",
        "mono = true",
        "[model]",
        'factory = "tests.live_models:build"',
        'features = "raw"',
        'labels = ["quiet", "busy"]',
        "max_wait_ms = 20",
        "[run]",
        'mode = "online"',
        f"duration = {DURATION}",
    ]
    pipeline = tmp_path / "live.toml"
    pipeline.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"

    player = pulse.play(SPEECH)
    done = threading.Event()

    def kill_camera_3_once_it_delivers() -> None:
        while not done.wait(0.05):
            text = out.read_text(encoding="utf-8") if out.exists() else ""
            if text.count('"stream": "cam3"') >= 5:
                cameras[3].kill()  # for good
                return

    killer = threading.Thread(target=kill_camera_3_once_it_delivers, daemon=True)
    killer.start()
    try:
        code = main(["run", str(pipeline), "--out", str(out), "--metrics", str(metrics), "-q"])
    finally:
        done.set()
        killer.join()
        player.kill()
        player.wait()
    assert code == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    last_pts: dict[str, float] = {}
    for record in records:
        last_pts[record["stream"]] = max(last_pts.get(record["stream"], 0.0), record["pts"])
    assert set(last_pts) == {"cam0", "cam1", "cam2", "cam3", "mic"}
    for stream in ("cam0", "cam1", "cam2"):
        assert last_pts[stream] >= DURATION - 1.0, (stream, last_pts)
    assert last_pts["cam3"] < DURATION - 1.0  # it stopped delivering when its server died
    assert last_pts["mic"] >= 1.0
    assert all(r["label"] in ("quiet", "busy") for r in records)
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["mean_batch"] > 1.0  # the cameras' frames shared model calls
    assert summary["stopped"] == "duration"  # the dead camera did not keep the run alive
