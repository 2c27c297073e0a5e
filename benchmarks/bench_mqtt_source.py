"""Frames per second through the MQTT source, next to the same frames read directly, as JSON.

Run: ``.venv/bin/python benchmarks/bench_mqtt_source.py [--audio-frames N] [--video-frames N]``
(about 15 s with the defaults).

A local mosquitto (started here, on a free port, as the tests start it). Two workloads:

- ``audio``: ``recordings/speech_en`` looped (512-sample float32 frames, 2 KiB each);
- ``video``: ``synthetic:shapes`` at 640x480 (900 KiB frames).

For each, in the same process and run: (1) *direct*: a pipeline (online mode, the built-in
threshold stage, no sink) reading the source itself, ``--max-frames N``; (2) *mqtt*: the
same pipeline on ``mqtt://.../bench/#`` while ``streamer publish``'s coroutine sends the
source's first ``N`` frames (QoS 1, ``--pace fast``) from the same event loop: wall time
from the first publish to the pipeline's end; (3) *publish only*: the publisher alone (no
subscriber), what the broker round trips cost by themselves. The ratio is mqtt / direct.
Publisher, broker client and pipeline share this process's event loop (the broker is its
own process), so on a 2-core machine the figure is a floor for two machines. Nothing
asserts a speed; the issue sets no target for this ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the broker fixture, imported as the tests import it
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchlib import emit, loadavg, log
from mosquitto import Mosquitto

from streamer.build import build_pipeline
from streamer.clock import RealClock
from streamer.config import parse_config
from streamer.mqtt.publish import publish, publish_target
from streamer.mqtt.source import MqttSource
from streamer.sources import SourceOptions, open_source

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "audio": {"uri": f"recording:{ROOT / 'recordings' / 'speech_en'}", "loop": True},
    "video": {"uri": "synthetic:shapes?size=640x480&fps=30"},
}


def pipeline_for(source: dict[str, Any], frames: int) -> Any:
    config = parse_config(
        {
            "source": {**source, "pace": "fast"},
            "model": {"builtin": "auto"},
            "run": {"mode": "online", "max_frames": frames},
            "sinks": [],
        },
        "bench",
    )
    return build_pipeline(config, RealClock())


async def direct(source: dict[str, Any], frames: int) -> dict[str, Any]:
    pipeline = pipeline_for(source, frames)
    began = time.perf_counter()
    summary = await pipeline.run()
    seconds = time.perf_counter() - began
    return {"frames": summary["frames_in"], "seconds": round(seconds, 3)}


def publisher_source(source: dict[str, Any]) -> Any:
    options = SourceOptions(pace="fast", loop=bool(source.get("loop")))
    return open_source(source["uri"], options, RealClock())


async def timed_publish(url: str, source: dict[str, Any], frames: int) -> tuple[Any, float]:
    """``streamer publish`` of ``frames`` frames of ``source`` to ``url``: what it sent,
    and the seconds it took."""
    target, qos = publish_target(url)
    feed = publisher_source(source)
    began = time.perf_counter()
    try:
        sent = await publish(feed, target, qos=qos, max_frames=frames)
    finally:
        await feed.aclose()
    return sent, time.perf_counter() - began


async def through_mqtt(broker: Mosquitto, source: dict[str, Any], frames: int) -> dict[str, Any]:
    pipeline = pipeline_for({"uri": broker.url("bench/#") + "?queue=100000"}, frames + 1)
    (subscriber,) = pipeline.sources
    assert isinstance(subscriber, MqttSource)
    run = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(subscriber.subscribed.wait(), 10)
    began = time.perf_counter()
    sent, published = await timed_publish(broker.url("bench/{stream}"), source, frames)
    summary = await asyncio.wait_for(run, 120)
    seconds = time.perf_counter() - began
    (counts,) = summary["sources"].values()
    return {
        "frames": summary["frames_in"],
        "seconds": round(seconds, 3),
        "publish_seconds": round(published, 3),
        "unconfirmed": sent.unconfirmed,
        "queue_dropped": counts["queue_dropped"],
        "missing": sum(s["frames_missing"] for s in summary["streams"].values()),
    }


async def publish_only(broker: Mosquitto, source: dict[str, Any], frames: int) -> dict[str, Any]:
    sent, seconds = await timed_publish(broker.url("nobody/{stream}"), source, frames)
    return {"frames": sum(sent.frames.values()), "seconds": round(seconds, 3)}


def fps(result: dict[str, Any]) -> float | None:
    return round(result["frames"] / result["seconds"], 1) if result["seconds"] > 0 else None


async def measure(broker: Mosquitto, sizes: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, frames in sizes.items():
        source = WORKLOADS[name]
        await direct(source, min(frames, 50))  # warm-up: imports, first-call costs
        log(f"{name}: direct, {frames} frames")
        plain = await direct(source, frames)
        log(f"{name}: through mqtt")
        mqtt = await through_mqtt(broker, source, frames)
        log(f"{name}: publish only")
        alone = await publish_only(broker, source, frames)
        direct_fps, mqtt_fps = fps(plain), fps(mqtt)
        figures[name] = {
            "direct": {**plain, "fps": direct_fps},
            "mqtt": {**mqtt, "fps": mqtt_fps},
            "publish_only": {**alone, "fps": fps(alone)},
            "ratio": round(mqtt_fps / direct_fps, 3) if direct_fps and mqtt_fps else None,
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-frames", type=int, default=3000)
    parser.add_argument("--video-frames", type=int, default=300)
    args = parser.parse_args(argv)
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as folder:
        broker = Mosquitto(Path(folder))
        broker.start()
        try:
            figures = asyncio.run(
                measure(broker, {"audio": args.audio_frames, "video": args.video_frames})
            )
        finally:
            broker.stop()
    emit(
        "mqtt_source",
        figures,
        {},
        {},
        load_before,
        notes=(
            "publisher (QoS 1, 64 acknowledgements awaited at once), subscriber and pipeline"
            " share one process and event loop; mosquitto is its own process. No target."
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
