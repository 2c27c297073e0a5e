"""The MQTT sink against a real mosquitto, checked by a real subscriber (an aiomqtt client
on its own thread): JSONL payloads in order at QoS 0 and 1, topic templates, the online
and offline status, block messages, the broker killed mid-run and down at start, TLS with
credentials, bad input, and a broker that never answers holding up nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mosquitto import Certificates, Mosquitto

from streamer.blocks import OutputBlock
from streamer.cli import main
from streamer.clock import Clock, RealClock
from streamer.frames import Frame, Item, Output
from streamer.metrics import Metrics
from streamer.mqtt.broker import Broker, BrokerOptions, resolve
from streamer.pipeline import Pipeline
from streamer.sinks.base import Delivery, SinkContext
from streamer.sinks.mqtt import MqttSink, MqttSinkConfig, build_mqtt
from streamer.stages import ThresholdStage
from streamer.testing import CaptureSink, audio_script, declare_streams

PIPELINE = "pipelines/speech_energy.toml"  # the bundled recording: 313 outputs
#: the pipeline's own JSONL file (out/...) replaced where a test does not read it: a fresh
#: clone has no out/ folder
NO_FILE = ["--out", os.devnull]
OUTPUTS = 313
WAIT = 20.0  # seconds a test waits for the broker or a subscriber before it fails


# -- a real subscriber -----------------------------------------------------------------------
class Subscriber:
    """An aiomqtt client on its own thread and event loop, subscribed to ``topic``, keeping
    every message as ``(topic, payload)``; it reconnects (and subscribes again) when the
    broker goes away. ``persistent``: a session the broker keeps while it is away."""

    def __init__(self, broker: Broker, topic: str, qos: int = 1, persistent: bool = False):
        self.broker, self.topic, self.qos, self.persistent = broker, topic, qos, persistent
        self.messages: list[tuple[str, str]] = []
        self.subscriptions = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self._ready.wait(WAIT), f"subscriber: no connection to {self.broker.label}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(WAIT)

    def payloads(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [payload for topic, payload in self.messages if topic.startswith(prefix)]

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _payload in self.messages]

    def _main(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stopped by __exit__
            asyncio.run(self._serve())

    async def _serve(self) -> None:
        import aiomqtt

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        extra: dict[str, Any] = {"clean_session": False} if self.persistent else {}
        while True:
            try:
                async with self.broker.client(**extra) as client:
                    await client.subscribe(self.topic, qos=self.qos)
                    self.subscriptions += 1
                    self._ready.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        with self._lock:
                            self.messages.append((str(message.topic), payload.decode()))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)


def plain(port: int, client_id: str | None = None) -> Broker:
    return resolve(BrokerOptions(url=f"mqtt://127.0.0.1:{port}/", client_id=client_id), "test")


def wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        time.sleep(0.02)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        await asyncio.sleep(0.02)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(path: Path) -> list[str]:
    return path.read_text().splitlines()


def first_occurrences(received: list[str]) -> list[str]:
    return list(dict.fromkeys(received))


# -- through the command line ----------------------------------------------------------------
@pytest.mark.parametrize("qos", [0, 1])
def test_outputs_arrive_in_order_as_the_jsonl_lines_with_status_around_them(
    qos: int,
    mosquitto: Mosquitto,
    tmp_path: Path,
    in_repo: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = unique(f"order{qos}")
    status = f"{prefix}/status"
    url = mosquitto.url(prefix + "/{stream}/{label}/{kind}") + f"?qos={qos}&status_topic={status}"
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    with Subscriber(plain(mosquitto.port), f"{prefix}/#", qos) as sub:
        code, _, err = run_cli(
            ["run", PIPELINE, "-q", "--out", str(out), "--mqtt", url, "--metrics", str(metrics)],
            capsys,
        )
        assert code == 0, err
        wait(lambda: len(sub.messages) >= OUTPUTS + 2, "every output and both status messages")
    lines = jsonl(out)
    assert len(lines) == OUTPUTS
    topics, payloads = sub.topics(), sub.payloads()
    # online first, then every output as its JSONL line, in order, then a clean offline
    assert topics[0] == topics[-1] == status
    assert json.loads(payloads[0])["status"] == "online"
    assert json.loads(payloads[-1]) == {
        **json.loads(payloads[0]),
        "status": "offline",
        "clean": True,
    }
    assert payloads[1:-1] == lines
    for topic, line in zip(topics[1:-1], lines, strict=True):  # the template, expanded
        record = json.loads(line)
        assert topic == f"{prefix}/{record['stream']}/{record['label']}/{record['kind']}"
    assert {json.loads(line)["label"] for line in lines} == {"silence", "sound"}
    counts = next(
        iter(s for n, s in json.loads(metrics.read_text())["sinks"].items() if "mqtt" in n)
    )
    assert (counts["published"], counts["dropped"], counts["policy"]) == (OUTPUTS, 0, "drop-oldest")
    assert "published 313, dropped 0 outputs" in err
    # the offline status stays on the broker for whoever subscribes later
    with Subscriber(plain(mosquitto.port), status) as late:
        wait(lambda: len(late.messages) >= 1, "the retained status")
        assert json.loads(late.payloads()[0])["status"] == "offline"


def test_a_crashed_run_leaves_its_last_will_offline(mosquitto: Mosquitto, in_repo: None) -> None:
    """The run's process killed (SIGKILL): no clean close, so the broker publishes the
    will it was given, retained: the status says offline."""
    prefix = unique("will")
    status = f"{prefix}/status"
    url = mosquitto.url(prefix + "/{kind}") + f"?status_topic={status}"
    command = [
        sys.executable,
        "-m",
        "streamer.cli",
        "run",
        PIPELINE,
        "-q",
        *NO_FILE,
        "--pace",
        "realtime",
    ]
    with Subscriber(plain(mosquitto.port), status) as sub:
        process = subprocess.Popen(
            [*command, "--mqtt", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait(lambda: len(sub.messages) >= 1, "the run to say online")
        finally:
            process.kill()
            process.wait()
        wait(lambda: len(sub.messages) >= 2, "the last will")
    online, will = (json.loads(payload) for payload in sub.payloads())
    assert online["status"] == "online"
    assert will == {**online, "status": "offline", "clean": False}


def test_a_broker_that_never_answers_holds_up_nothing(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listener that never accepts: the TCP connection is made, CONNACK never comes.
    The run still writes every output to the file, and the sink's counts add up."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)
        port = hole.getsockname()[1]
        out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
        url = f"mqtt://127.0.0.1:{port}/hole?buffer=50&drain_timeout=0.2"
        code, _, err = run_cli(
            ["run", PIPELINE, "-q", "--out", str(out), "--mqtt", url, "--metrics", str(metrics)],
            capsys,
        )
    assert code == 0, err
    assert len(jsonl(out)) == OUTPUTS  # as many as a run with --out alone gives
    summary = json.loads(metrics.read_text())
    assert summary["outputs"] == OUTPUTS
    (counts,) = [s for name, s in summary["sinks"].items() if "mqtt" in name]
    assert counts["published"] == 0
    assert counts["buffer_peak"] == 50
    assert counts["overflow"] + counts["unsent"] + counts["rejected"] <= counts["dropped"]
    assert counts["unsent"] == 50 and counts["overflow"] > 0
    assert counts["published"] + counts["dropped"] == summary["outputs"]


def test_tls_with_a_client_certificate_and_a_password_publishes(
    tls_mosquitto: Mosquitto,
    certificates: Certificates,
    in_repo: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = certificates
    monkeypatch.setenv("STREAMER_TEST_MQTT_PASSWORD", "s3cret")
    tls = f"ca={c.ca}&cert={c.client_cert}&key={c.client_key}&username=streamer"
    query = f"{tls}&password_env=STREAMER_TEST_MQTT_PASSWORD"
    prefix = unique("tls")
    options = BrokerOptions(
        url=tls_mosquitto.url("", "mqtts"),
        ca=str(c.ca),
        cert=str(c.client_cert),
        key=str(c.client_key),
        username="streamer",
        password="s3cret",
    )
    with Subscriber(resolve(options, "test"), f"{prefix}/#") as sub:
        url = tls_mosquitto.url(prefix + "/{kind}", "mqtts") + f"?{query}"
        code, _, err = run_cli(["run", PIPELINE, "-q", *NO_FILE, "--mqtt", url], capsys)
        assert code == 0, err
        wait(lambda: len(sub.payloads(f"{prefix}/frame")) >= OUTPUTS, "every output over TLS")
    assert "s3cret" not in err


@pytest.mark.parametrize("problem", ["wrong password", "untrusted CA"])
def test_tls_refusals_fail_the_run_naming_the_broker(
    problem: str,
    tls_mosquitto: Mosquitto,
    certificates: Certificates,
    in_repo: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = certificates
    password, ca = ("nope", c.ca) if problem == "wrong password" else ("s3cret", c.other_ca)
    monkeypatch.setenv("STREAMER_TEST_MQTT_PASSWORD", password)
    query = (
        f"ca={ca}&cert={c.client_cert}&key={c.client_key}&username=streamer"
        "&password_env=STREAMER_TEST_MQTT_PASSWORD"
    )
    url = tls_mosquitto.url("refused/{kind}", "mqtts") + f"?{query}"
    code, _, err = run_cli(["run", PIPELINE, "-q", *NO_FILE, "--mqtt", url], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("streamer: error:")]
    assert len(errors) == 1, err
    assert f"mqtts://127.0.0.1:{tls_mosquitto.port}" in errors[0]
    expected = "not authorised" if problem == "wrong password" else "TLS: "
    assert expected in errors[0]
    assert "Traceback" not in err and password not in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/t", "--mqtt: http://127.0.0.1/t: expected mqtt://"),
        ("mqtt://127.0.0.1:99999/t", "port '99999' is not 1-65535"),
        ("mqtt:///t", "no broker host"),
        ("mqtt://127.0.0.1/t/{nope}", "topic: 't/{nope}' names an unknown field {nope}"),
        ("mqtt://127.0.0.1/t/{stream:>4}", "write fields plainly"),
        ("mqtt://127.0.0.1/t/+/x", "no wildcards"),
        ("mqtt://127.0.0.1/t?status_topic=s/{stream}", "status_topic: 's/{stream}' names an"),
        ("mqtt://127.0.0.1/t?ca=/no/such/ca.pem", "ca: /no/such/ca.pem: no such file"),
        ("mqtt://127.0.0.1/t?ca=pipelines/speech_energy.toml", "not a usable CA file"),
        ("mqtt://127.0.0.1/t?password_env=STREAMER_NO_SUCH_VARIABLE", "is not set"),
        ("mqtt://127.0.0.1/t?qos=3", "qos"),
        ("mqtt://127.0.0.1/t?buffer=0", "buffer"),
        ("mqtt://127.0.0.1/t?bogus=1", "unknown query key 'bogus'"),
        ("mqtt://u:pw@127.0.0.1/t", "a password in the URL is refused"),
        ("mqtt://127.0.0.1/a?topic=b", "give the topic once"),
    ],
)
def test_bad_mqtt_input_is_one_line_and_exit_code_2(
    url: str, expected: str, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["run", PIPELINE, "-q", *NO_FILE, "--mqtt", url], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("streamer: error: ")
    assert expected in err
    assert "--mqtt" in err or "[[sinks]]" in err
    assert "Traceback" not in err and out == ""


def test_a_bad_sink_table_names_the_pipeline_file_and_key(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.toml"
    text = Path(PIPELINE).read_text().replace('path = "out/speech_energy.jsonl"', "")
    text = text.replace(
        'type = "jsonl"', 'type = "mqtt"\nurl = "mqtt://127.0.0.1"\ntopic = "{head}"'
    )
    pipeline.write_text(text)
    code, _, err = run_cli(["run", str(pipeline)], capsys)
    assert code == 2
    assert err.startswith(f"streamer: error: {pipeline}: [[sinks]] #2: topic: '{{head}}' names")
    assert "{stream}, {kind}, {label}, {client_id}" in err


# -- in-process: the test decides when frames come ---------------------------------------------
class GatedSource:
    """The frames of an audio script, let through a few at a time by the test."""

    def __init__(self, items: list[Item], clock: Clock) -> None:
        self.name = "source:gated"
        self.items = items
        self.streams = declare_streams(items)
        self.clock = clock
        self.allowed = 0
        self._more = asyncio.Event()

    def release(self, frames: int) -> None:
        self.allowed += frames
        self._more.set()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._play()

    async def _play(self) -> AsyncIterator[Item]:
        declared = {info.stream: info for info in self.streams}
        sent = 0
        for item in self.items:
            if isinstance(item, Frame):
                while sent >= self.allowed:
                    self._more.clear()
                    await self._more.wait()
                sent += 1
                info = item.info or declared[item.stream]
                item = Frame(
                    item.stream, item.index, item.pts, self.clock.now(), item.data, item.rate, info
                )
            yield item

    async def aclose(self) -> None:
        return None


def persistent(folder: Path, port: int | None = None) -> Mosquitto:
    """A broker that keeps sessions on disk after every change, so a subscriber's session
    outlives a SIGKILL: what the sink publishes before the subscriber is back waits for it."""
    broker = Mosquitto(folder, port=port)
    text = broker.config.read_text().replace(
        "persistence false",
        f"persistence true\npersistence_location {folder}/\nautosave_on_changes true\n"
        "autosave_interval 1",
    )
    broker.config.write_text(text)
    return broker


def gated_run(
    port: int, frames: int, **options: Any
) -> tuple[GatedSource, MqttSink, CaptureSink, Pipeline]:
    """A pipeline: gated source -> thresholder -> [MQTT sink, capture], on a real clock."""
    clock = RealClock()
    levels = [0.5 if (i // 7) % 2 else 0.001 for i in range(frames)]  # both labels
    source = GatedSource(audio_script("mic", frames=frames, amplitude=levels), clock)
    metrics = Metrics(clock, mode="online")
    config = MqttSinkConfig(
        type="mqtt", url=f"mqtt://127.0.0.1:{port}/", reconnect_max=0.2, **options
    )
    sink = build_mqtt(config, SinkContext("[[sinks]] #1", [source], "online", clock, metrics))
    capture = CaptureSink()
    pipeline = Pipeline(
        [source],
        [ThresholdStage()],
        [sink, capture],
        mode="online",
        clock=clock,
        metrics=metrics,
        deliveries=[Delivery("drop-oldest"), Delivery()],
    )
    return source, sink, capture, pipeline


def lines_of(outputs: list[Output]) -> list[str]:
    return [json.dumps(o.to_json(), ensure_ascii=False) for o in outputs]


@pytest.fixture
def broker_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="streamer.sinks.mqtt"):
        yield caplog


async def test_the_broker_killed_and_restarted_mid_run(
    tmp_path: Path, broker_log: pytest.LogCaptureFixture
) -> None:
    broker = persistent(tmp_path / "broker")
    broker.start()
    try:
        sub = Subscriber(plain(broker.port, unique("sub")), "kill/#", persistent=True)
        with sub:
            source, sink, capture, pipeline = gated_run(
                broker.port, 100, topic="kill/{stream}", status_topic="killstatus"
            )
            run = asyncio.create_task(pipeline.run())
            source.release(20)
            await until(lambda: len(sub.payloads()) >= 20, "the first outputs")
            source.release(30)
            await until(lambda: sink.published > 20, "more publishing")
            broker.kill()  # while the sink publishes: some are in flight
            source.release(30)  # while the broker is down: buffered
            await until(lambda: sink.received == 80, "the outputs to reach the sink")
            broker.start()
            await until(lambda: sink.connected and sub.subscriptions >= 2, "both back")
            source.release(20)
            summary = await run
            lines = lines_of(capture.outputs)
            await until(lambda: lines[-1] in sub.payloads(), "the last output")
            received = sub.payloads()
    finally:
        broker.stop()
    assert summary["outputs"] == len(lines) == 100
    counts = summary["sinks"][sink.name]
    assert counts["published"] + counts["dropped"] == summary["outputs"]
    assert counts["dropped"] == 0  # the buffer held everything until the broker was back
    order = {line: index for index, line in enumerate(lines)}
    assert all(payload in order for payload in received)  # valid lines of this run
    firsts = [order[payload] for payload in first_occurrences(received)]
    assert firsts == sorted(firsts)  # in order (a QoS 1 resend may repeat one)
    # what was buffered during the outage and what came after all arrived; only what the
    # broker had taken just before it died may be lost with it
    assert set(lines[50:]) <= set(received)
    warnings = [r.getMessage() for r in broker_log.records if r.name == "streamer.sinks.mqtt"]
    assert len([w for w in warnings if "connection lost" in w]) == 1, warnings
    assert len([w for w in warnings if "connected again" in w]) == 1, warnings
    assert f"127.0.0.1:{broker.port}" in warnings[0]


async def test_the_broker_down_at_start_gets_the_buffered_outputs_once_it_is_up(
    tmp_path: Path, broker_log: pytest.LogCaptureFixture
) -> None:
    broker = persistent(tmp_path / "broker")
    subscriber = plain(broker.port, unique("sub"))
    broker.start()  # the subscriber's session is made, then the broker goes away
    with Subscriber(subscriber, "late/#", persistent=True):
        pass
    broker.stop()
    try:
        source, sink, capture, pipeline = gated_run(broker.port, 60, topic="late/{stream}")
        run = asyncio.create_task(pipeline.run())
        source.release(40)
        await until(lambda: sink.received == 40 and bool(broker_log.records), "a warning")
        assert sink.published == 0 and not run.done()  # the run goes on meanwhile
        broker.start()
        await until(lambda: sink.published == 40, "the buffered outputs")
        with Subscriber(subscriber, "late/#", persistent=True) as sub:
            source.release(20)
            summary = await run
            lines = lines_of(capture.outputs)
            await until(lambda: len(sub.payloads()) >= len(lines), "every output")
            assert sub.payloads() == lines
    finally:
        broker.stop()
    counts = summary["sinks"][sink.name]
    assert (counts["published"], counts["dropped"], summary["outputs"]) == (60, 0, 60)
    assert counts["buffer_peak"] >= 40
    (first, back) = [r.getMessage() for r in broker_log.records if r.levelno >= logging.WARNING]
    assert f"cannot connect (host 127.0.0.1, port {broker.port}" in first
    assert "connected again" in back


async def test_blocks_as_one_message_per_topic_and_unsafe_stream_ids(mosquitto: Mosquitto) -> None:
    prefix = unique("blocks")
    clock = RealClock()
    block = OutputBlock(
        kind="frame",
        names=("a", "b"),
        streams=["s1", "s2", "s1"],
        starts=[0, 0, 1],
        ends=[0, 0, 1],
        pts=[0.0, 0.0, 0.5],
        labels=["a", "b", "a"],
        scores=np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]),
        captured=[0.0, 0.0, 0.0],
    )
    block.stamp(1.0)
    lines = block.jsonl().splitlines()
    odd = Output("cam/1+x#", "frame", 0, 0, 0.0, None, {"a": 1.0, "b": 0.0}, 0.0, 2.0)
    with Subscriber(plain(mosquitto.port), f"{prefix}/#") as sub:
        for blocks in (True, False):
            config = MqttSinkConfig(
                type="mqtt",
                url=mosquitto.url(f"{prefix}/{blocks}/{{stream}}/{{label}}"),
                blocks=blocks,
                status_topic="",
            )
            sink = build_mqtt(config, SinkContext("--mqtt", [], "online", clock, Metrics(clock)))
            await sink.send_many([block, odd])
            await sink.aclose()
            assert sink.counts()["published"] == 4
        wait(lambda: len(sub.messages) >= 7, "both runs' messages")
        messages = list(sub.messages)
    odd_line = json.dumps(odd.to_json(), ensure_ascii=False)
    assert messages == [
        # blocks: the rows of the block that share a topic in one message, a JSON array
        (f"{prefix}/True/s1/a", f"[{lines[0]},{lines[2]}]"),
        (f"{prefix}/True/s2/b", f"[{lines[1]}]"),
        (f"{prefix}/True/cam_1_x_/none", f"[{odd_line}]"),
        # one message per output, its JSONL line
        (f"{prefix}/False/s1/a", lines[0]),
        (f"{prefix}/False/s2/b", lines[1]),
        (f"{prefix}/False/s1/a", lines[2]),
        (f"{prefix}/False/cam_1_x_/none", odd_line),
    ]
    assert json.loads(messages[0][1])[0]["scores"] == {"a": 0.9, "b": 0.1}
