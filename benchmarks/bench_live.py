"""Live sources: camera capture-to-sink latency and CPU, microphone chunk jitter, as JSON.

Run: ``.venv/bin/python benchmarks/bench_live.py [--camera-seconds S] [--mic-seconds S]``
(about 30 s with the defaults).

1. Camera: the MJPEG-over-HTTP stand-in (``tests/standins/mjpeg_server.py``, 30 fps,
   640x480) in a subprocess. First a bare ``cv2.VideoCapture(url, cv2.CAP_FFMPEG)``
   ``grab()`` + ``retrieve()`` loop (the baseline): frame interval, per-frame read time, and
   server-to-image latency (the server sends frame ``n`` at ``epoch + n / fps``, and ``n``
   is drawn in its pixels). Then the real pipeline (``camera:URL``, the built-in brightness
   threshold stage, a ``CallbackSink``, ``[run] mode = "realtime"``): ``latency_ms``
   stamped at the fan-out, and the sink's own receive time against ``captured`` (both on
   ``time.monotonic``, the pipeline's ``RealClock``). CPU: ``time.process_time()`` of the
   whole process per frame, pipeline against bare loop.
2. Microphone: a private PulseAudio server's virtual mic (``tests/standins/pulse.py``) fed
   with ``tests/data/speech_en_16k.wav``, read by ``MicrophoneSource`` (16 kHz,
   512-sample chunks: 32 ms). Jitter = ``|interval - 32 ms|`` of consecutive frames'
   ``captured`` stamps and of their arrival times at the consumer. Also the start-up (how
   many chunks until one reaches the consumer within a period of its ``captured`` stamp)
   and, after it, the drift of capture-to-arrival delay (ms per s).

A part that cannot run (no pulseaudio, no FFmpeg backend) is ``null`` with a reason.
Ratios are against the baselines run in the same process; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the stand-ins, imported as the tests import them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchlib import emit, loadavg, log
from standins.mjpeg_server import decode_index

from streamer.build import build_pipeline
from streamer.clock import RealClock
from streamer.config import parse_config
from streamer.frames import Frame, Gap, Output
from streamer.sinks import CallbackSink

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "standins" / "mjpeg_server.py"
SPEECH = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech_en_16k.wav"
FPS = 30.0
SIZE = (640, 480)
MIC_RATE, MIC_CHUNK = 16000, 512
SKIP = 10  # start-up frames left out of every distribution
TARGETS = {
    "camera_latency_p99_ms_max": 1000.0 / FPS,  # a frame is through before the next one comes
    "mic_arrival_jitter_p99_ms_max": 1000.0 * MIC_CHUNK / MIC_RATE,  # never a chunk late
}


Values = Sequence[float] | np.ndarray[Any, Any]


def pct(values: Values, q: float) -> float | None:
    """The ``q``-th percentile of ``values``, rounded to 3 decimals (None if empty)."""
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def dist(values: Values) -> dict[str, float | int | None]:
    """p50, p99, max and count of ``values``."""
    top = round(float(max(values)), 3) if len(values) else None
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": top, "n": len(values)}


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


# -- camera ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int, epoch: float) -> subprocess.Popen[str]:
    """The MJPEG stand-in on ``port``; returns once it prints ``ready``."""
    size = f"{SIZE[0]}x{SIZE[1]}"
    args = [str(port), "--fps", str(FPS), "--size", size, "--epoch", repr(epoch)]
    server = subprocess.Popen(
        [sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if line.strip() != "ready":
        server.kill()
        server.wait()
        raise RuntimeError(f"the MJPEG stand-in did not start (said {line.strip()!r})")
    return server


def bare_loop(url: str, seconds: float, epoch: float) -> dict[str, Any]:
    """``grab()`` + ``retrieve()`` for ``seconds`` of frames: the baseline."""
    ms = 5000
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise RuntimeError(f"cv2.VideoCapture cannot open {url}")
    grabs: list[float] = []  # monotonic time each grab() returned
    grab_ms: list[float] = []
    retrieve_ms: list[float] = []
    read_ms: list[float] = []
    server_ms: list[float] = []  # server send time of frame n -> its image in hand
    indices: list[int] = []
    cpu0 = wall0 = None
    try:
        while True:
            t0 = time.monotonic()
            if not cap.grab():
                raise RuntimeError(f"{url}: grab() failed")
            t1 = time.monotonic()
            ok, image = cap.retrieve()
            t2 = time.monotonic()
            wall = time.time()
            if not ok or image is None:
                continue
            if len(grabs) == SKIP:  # CPU from the end of start-up, as for the pipeline
                cpu0, wall0 = time.process_time(), t2
            grabs.append(t1)
            grab_ms.append((t1 - t0) * 1000)
            retrieve_ms.append((t2 - t1) * 1000)
            read_ms.append((t2 - t0) * 1000)
            index = decode_index(image)
            indices.append(index)
            server_ms.append((wall - (epoch + index / FPS)) * 1000)
            if wall0 is not None and t2 - wall0 >= seconds:
                break
        cpu = time.process_time() - (cpu0 or 0.0)
    finally:
        cap.release()
    counted = len(grabs) - SKIP - 1  # frames after the one that started the CPU clock
    steps = np.diff(indices[SKIP:])
    return {
        "frames": len(grabs),
        "frames_skipped_by_server_index": int((steps - 1).clip(min=0).sum()),
        "frame_interval_ms": dist(np.diff(grabs[SKIP:]) * 1000),
        "grab_ms": dist(grab_ms[SKIP:]),
        "retrieve_ms": dist(retrieve_ms[SKIP:]),
        "read_ms": dist(read_ms[SKIP:]),
        "server_to_image_ms": dist(server_ms[SKIP:]),
        "cpu_ms_per_frame": round(cpu * 1000 / max(1, counted), 3),
    }


def pipeline_run(url: str, seconds: float) -> dict[str, Any]:
    """The real pipeline on ``camera:URL`` for ``seconds`` of media time."""
    config = parse_config(
        {
            "source": {"uri": f"camera:{url}"},
            "run": {"mode": "realtime", "duration": seconds},
        }
    )
    latency_ms: list[float] = []
    sink_ms: list[float] = []  # the sink's receive time against captured
    ends: list[int] = []
    cpu_at: list[float] = []  # process CPU time when the SKIP-th output arrived

    def record(output: Output) -> None:
        now = time.monotonic()
        if output.latency_ms is not None:
            latency_ms.append(output.latency_ms)
        sink_ms.append((now - output.captured) * 1000)
        ends.append(output.end)
        if len(ends) == SKIP + 1:
            cpu_at.append(time.process_time())

    built = build_pipeline(config)
    pipeline = dataclasses.replace(
        built, sinks=[CallbackSink(record, name="bench")], deliveries=None
    )
    summary = asyncio.run(pipeline.run())
    cpu_end = time.process_time()
    counted = len(ends) - SKIP - 1
    cpu = cpu_end - cpu_at[0] if cpu_at else None
    return {
        "outputs": len(ends),
        "frames_grabbed": (max(ends) + 1) if ends else 0,
        "dropped": summary["dropped"],
        "stopped": summary["stopped"],
        "fps_out": round(summary["fps_out"], 2) if summary["fps_out"] else None,
        "latency_ms": dist(latency_ms[SKIP:]),
        "capture_to_sink_ms": dist(sink_ms[SKIP:]),
        # includes the shutdown after the last output (a few ms of a 10 s run)
        "cpu_ms_per_frame": round(cpu * 1000 / counted, 3) if cpu and counted > 0 else None,
    }


def bench_camera(pipeline_seconds: float, bare_seconds: float) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/x"
    epoch = time.time()
    server = start_server(port, epoch)
    try:
        bare = bare_loop(url, bare_seconds, epoch)
        streamer = pipeline_run(url, pipeline_seconds)
    finally:
        server.terminate()
        server.wait(timeout=5)
    latency = streamer["capture_to_sink_ms"]
    return {
        "fps": FPS,
        "size": list(SIZE),
        "bare": bare,
        "streamer": streamer,
        "streamer_latency_p50_over_bare_read_p50": ratio(
            streamer["latency_ms"]["p50"], bare["read_ms"]["p50"]
        ),
        "streamer_latency_p99_over_bare_read_p99": ratio(
            streamer["latency_ms"]["p99"], bare["read_ms"]["p99"]
        ),
        # grab() returns when the frame has arrived (FFmpeg decodes in grab); retrieve() is
        # the BGR conversion: the bare loop's own grab-to-image time, like `captured` -> sink
        "streamer_sink_p50_over_bare_retrieve_p50": ratio(
            latency["p50"], bare["retrieve_ms"]["p50"]
        ),
        "streamer_cpu_over_bare_cpu": ratio(streamer["cpu_ms_per_frame"], bare["cpu_ms_per_frame"]),
    }


# -- microphone -----------------------------------------------------------------------------


async def read_mic(seconds: float) -> dict[str, Any]:
    """Frames of the ``pulse`` input for ``seconds`` after start-up: stamps and arrivals."""
    from streamer.sources.base import SourceOptions
    from streamer.sources.microphone import MicrophoneSource

    options = SourceOptions(rate=MIC_RATE, chunk=MIC_CHUNK, mono=True)
    source = MicrophoneSource("mic:pulse", options, RealClock(), policy="drop-oldest")
    captured: list[float] = []
    arrived: list[float] = []
    gaps = 0
    wanted = SKIP + round(seconds * MIC_RATE / MIC_CHUNK) + 1
    try:
        async with asyncio.timeout(seconds + 15.0):
            async for item in source:
                if isinstance(item, Frame):
                    arrived.append(time.monotonic())
                    captured.append(item.captured)
                    if len(captured) >= wanted:
                        break
                elif isinstance(item, Gap):
                    gaps += item.count
    finally:
        await source.aclose()
    period_ms = 1000.0 * MIC_CHUNK / MIC_RATE
    stamps, arrivals = np.array(captured), np.array(arrived)
    delay_ms = (arrivals - stamps) * 1000  # a chunk's first sample's ADC time -> consumer
    # start-up: PortAudio may hand over a backlog whose ADC stamps then catch up; settled
    # from the first chunk that reaches the consumer within one period of its capture
    below = np.flatnonzero(delay_ms < period_ms)
    settled = int(below[0]) if len(below) else len(captured)
    after = slice(max(settled, SKIP), None)
    drift = None
    if len(arrivals[after]) > 2:  # least-squares slope of the delay against time
        drift = round(float(np.polyfit(arrivals[after] - arrivals[0], delay_ms[after], 1)[0]), 3)
    stamp_steps = np.diff(stamps[SKIP:]) * 1000
    arrival_steps = np.diff(arrivals[SKIP:]) * 1000
    settled_steps = np.diff(stamps[after]) * 1000
    return {
        "device": source.device["name"],
        "frames": len(captured),
        "gap_frames": gaps,
        "overflows": source.overflows,
        "captured_interval_ms": dist(stamp_steps),
        "captured_jitter_ms": dist(np.abs(stamp_steps - period_ms)),
        "arrival_interval_ms": dist(arrival_steps),
        "arrival_jitter_ms": dist(np.abs(arrival_steps - period_ms)),
        "capture_to_arrival_ms": dist(delay_ms[SKIP:]),
        "startup": {
            "first_capture_to_arrival_ms": pct(delay_ms[:1], 50),
            "frames_until_settled": settled,
        },
        "settled": {
            "captured_jitter_ms": dist(np.abs(settled_steps - period_ms)),
            "capture_to_arrival_ms": dist(delay_ms[after]),
            "capture_to_arrival_drift_ms_per_s": drift,
        },
    }


def bench_mic(seconds: float) -> dict[str, Any]:
    from standins.pulse import PulseServer

    server = PulseServer()
    server.start()
    player: subprocess.Popen[bytes] | None = None
    try:
        import sounddevice

        sounddevice._terminate()  # PortAudio re-reads its configuration: the new server
        sounddevice._initialize()

        async def run() -> dict[str, Any]:
            nonlocal player
            task = asyncio.create_task(read_mic(seconds))
            await asyncio.sleep(0.3)  # capture first, then play (a playback's start is lost)
            if SPEECH.exists():
                player = server.play(SPEECH)
            return await task

        result = asyncio.run(run())
    finally:
        if player is not None:
            player.terminate()
            player.wait(timeout=5)
        server.stop()
    period_ms = 1000.0 * MIC_CHUNK / MIC_RATE
    return {
        "rate": MIC_RATE,
        "chunk": MIC_CHUNK,
        "period_ms": period_ms,
        "input": SPEECH.name if SPEECH.exists() else "silence (speech_en_16k.wav not found)",
        **result,
        "arrival_jitter_p99_over_period": ratio(result["arrival_jitter_ms"]["p99"], period_ms, 3),
    }


# -- report ---------------------------------------------------------------------------------


def attempt(part: str, fn: Any, *args: Any) -> tuple[dict[str, Any] | None, str | None]:
    """``fn(*args)``, or ``None`` and a one-line reason when the part cannot run here."""
    try:
        return fn(*args), None
    except Exception as exc:
        return None, f"{part}: {type(exc).__name__}: {exc}".splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--camera-seconds", type=float, default=10.0, help="pipeline run")
    parser.add_argument("--bare-seconds", type=float, default=5.0, help="bare OpenCV loop")
    parser.add_argument("--mic-seconds", type=float, default=10.0, help="microphone capture")
    args = parser.parse_args(argv)

    load_before = loadavg()
    started = time.perf_counter()
    log(f"live: camera ({args.camera_seconds:g} s)")
    camera, camera_why = attempt("camera", bench_camera, args.camera_seconds, args.bare_seconds)
    log(f"live: microphone ({args.mic_seconds:g} s)")
    mic, mic_why = attempt("microphone", bench_mic, args.mic_seconds)

    cam_p99 = camera["streamer"]["capture_to_sink_ms"]["p99"] if camera else None
    mic_p99 = mic["arrival_jitter_ms"]["p99"] if mic else None
    measured = {"camera_latency_p99_ms_max": cam_p99, "mic_arrival_jitter_p99_ms_max": mic_p99}
    figures = {
        "camera": camera,
        "microphone": mic,
        "skipped": {k: v for k, v in (("camera", camera_why), ("microphone", mic_why)) if v},
        "opencv": cv2.__version__,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(
        "live",
        figures,
        {k: round(v, 3) for k, v in TARGETS.items()},
        {k: (None if v is None else v <= TARGETS[k]) for k, v in measured.items()},
        load_before,
        measured=measured,
        notes=(
            f"first {SKIP} frames of each run left out; CPU is the whole process"
            " (time.process_time), the stand-in server runs in its own process"
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
