"""Publishing through the MQTT sink, against a bare aiomqtt loop, to a local mosquitto.

Run: ``.venv/bin/python benchmarks/bench_mqtt.py [--outputs N] [--repeats R]`` (about
25 s with the defaults).

A local mosquitto is started here on a free port (as the tests start it). For QoS 0 and
QoS 1: ``N`` outputs (frame outputs with two scores, latency stamped: what the thresholder
gives) are handed to an :class:`~streamer.sinks.mqtt.MqttSink` as the pipeline hands them
(``send_many`` of up to 256 at a time, as fast as it takes them), and the time runs from
the first hand-over until the sink's close returns: the last output published (QoS 1:
acknowledged) and the connection closed; its status messages are off. The baseline is a
bare aiomqtt loop that connects, publishes the same payloads (the outputs' JSONL lines,
encoded beforehand) to the same topic, awaiting each publish (QoS 1: its
acknowledgement), and disconnects. The sink's time includes encoding each output as
JSON; the loop's does not. ``R`` pairs of runs, one of each, in turn first; the figure is
the median of the pairs' ratios (the machine's load makes single runs noisy, and a pair's
two runs see the same moment of it); the best rates and their ratio are reported too.

Target: the sink publishes at >= 0.9x the bare loop's rate, at each QoS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the broker fixture

from benchlib import check, emit, loadavg, log
from mosquitto import Mosquitto

from streamer.clock import RealClock
from streamer.frames import Output
from streamer.metrics import Metrics
from streamer.mqtt.broker import BrokerOptions, resolve
from streamer.sinks.base import MAX_SEND_BATCH, SinkContext
from streamer.sinks.mqtt import MqttSinkConfig, build_mqtt

TARGETS = {"sink_vs_bare_qos0_min": 0.9, "sink_vs_bare_qos1_min": 0.9}
TOPIC = "bench/{stream}/{kind}"


def make_outputs(count: int) -> list[Output]:
    outputs = []
    for i in range(count):
        score = (i % 100) / 100.0
        output = Output(
            "bench",
            "frame",
            i,
            i,
            i * 0.032,
            "sound" if score > 0.5 else "silence",
            {"silence": 1.0 - score, "sound": score},
            0.0,
            1.234 + i * 1e-4,
        )
        outputs.append(output)
    return outputs


async def through_sink(url: str, qos: int, outputs: list[Output]) -> float:
    """Seconds from the first hand-over to the sink's close, which returns once the last
    output is published (and the connection closed)."""
    clock = RealClock()
    config = MqttSinkConfig(
        type="mqtt",
        url=url,
        topic=TOPIC,
        qos=qos,
        status_topic="",
        buffer=len(outputs),
        drain_timeout=600.0,
    )
    sink = build_mqtt(config, SinkContext("bench", [], "online", clock, Metrics(clock)))
    started = time.perf_counter()
    for first in range(0, len(outputs), MAX_SEND_BATCH):
        await sink.send_many(outputs[first : first + MAX_SEND_BATCH])
        await asyncio.sleep(0)  # the pipeline's sink task yields between hand-overs
    await sink.aclose()
    seconds = time.perf_counter() - started
    if sink.published != len(outputs):
        raise RuntimeError(f"the sink published {sink.published} of {len(outputs)}")
    return seconds


async def bare_loop(url: str, qos: int, payloads: list[str]) -> float:
    """Seconds for a bare aiomqtt loop to connect, publish ``payloads`` awaiting each,
    and disconnect."""
    broker = resolve(BrokerOptions(url=url), "bench")
    topic = TOPIC.format(stream="bench", kind="frame")
    started = time.perf_counter()
    async with broker.client() as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=qos)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    load_before = loadavg()
    outputs = make_outputs(args.outputs)
    payloads = [json.dumps(o.to_json(), ensure_ascii=False) for o in outputs]
    figures: dict[str, Any] = {"outputs": args.outputs, "repeats": args.repeats}
    measured: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as folder:
        broker = Mosquitto(Path(folder) / "broker")
        broker.start()
        try:
            url = broker.url()
            asyncio.run(through_sink(url, 0, outputs[:200]))  # warm-up: imports, first calls
            for qos in (0, 1):
                sink_runs: list[float] = []
                bare_runs: list[float] = []
                for repeat in range(args.repeats):  # in pairs, in turn first
                    if repeat % 2:
                        sink_runs.append(asyncio.run(through_sink(url, qos, outputs)))
                    bare_runs.append(asyncio.run(bare_loop(url, qos, payloads)))
                    if not repeat % 2:
                        sink_runs.append(asyncio.run(through_sink(url, qos, outputs)))
                    log(
                        f"qos {qos} pair {repeat + 1}: bare {bare_runs[-1]:.3f} s,"
                        f" sink {sink_runs[-1]:.3f} s"
                    )
                # a pair's two runs see the same moment of the machine: the median of the
                # pairs' ratios is steadier than a ratio of two bests
                pairs = sorted(b / s for s, b in zip(sink_runs, bare_runs, strict=True))
                ratio = statistics.median(pairs)
                figures[f"qos{qos}"] = {
                    "sink_msgs_per_s": round(args.outputs / min(sink_runs), 1),
                    "bare_msgs_per_s": round(args.outputs / min(bare_runs), 1),
                    "sink_vs_bare": round(ratio, 3),
                    "pair_ratios": [round(r, 3) for r in pairs],
                    "best_over_best": round(min(bare_runs) / min(sink_runs), 3),
                }
                measured[f"sink_vs_bare_qos{qos}_min"] = round(ratio, 3)
        finally:
            broker.stop()
    met: dict[str, bool | None] = {
        name: check(measured.get(name), bound, ceiling=False) for name, bound in TARGETS.items()
    }
    emit(
        "mqtt",
        figures,
        TARGETS,
        met,
        load_before,
        measured,
        notes="the sink and the bare loop share one process and event loop (each its own"
        " connection, run one after the other); mosquitto is its own process; no subscriber",
    )


if __name__ == "__main__":
    main()
