"""The MQTT source, its payload format and ``streamer publish``, over a real mosquitto broker
with real aiomqtt clients (the ``mosquitto`` fixtures of conftest.py)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media import cli_env, streamer_command
from mosquitto import Certificates, Mosquitto, free_port

from streamer.build import Overrides, apply_overrides, build_pipeline
from streamer.cli import main
from streamer.clock import RealClock
from streamer.config import load_config
from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, StreamEnd, StreamStart
from streamer.mqtt.payload import (
    EndMessage,
    FrameMessage,
    GapMessage,
    PayloadError,
    decode,
    encode_end,
    encode_frame,
    encode_gap,
)
from streamer.mqtt.publish import publish, publish_target
from streamer.mqtt.source import MqttSource
from streamer.pipeline import Pipeline
from streamer.recording import RecordingWriter
from streamer.sources import SourceOptions, open_source, uri_path
from streamer.stages import ThresholdStage
from streamer.testing import CaptureSink, replay

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "recordings" / "speech_en"
SPEECH_PIPELINE = ROOT / "pipelines" / "speech_energy.toml"
#: A generous bound for anything that should take well under a second.
WAIT = 20.0


# -- helpers --------------------------------------------------------------------------------
def mqtt_source(url: str, **options: Any) -> MqttSource:
    source = open_source(url, SourceOptions(**options), RealClock())
    assert isinstance(source, MqttSource)
    return source


async def subscribed(source: MqttSource, reader: asyncio.Task[Any]) -> None:
    """Wait until ``source`` has subscribed (failing early if its reader failed)."""
    waiter = asyncio.ensure_future(source.subscribed.wait())
    done, _ = await asyncio.wait({waiter, reader}, timeout=WAIT, return_when="FIRST_COMPLETED")
    if waiter not in done:
        waiter.cancel()
        if reader in done:
            reader.result()  # raises the reader's error
        raise AssertionError("the source did not subscribe")


async def collect(source: MqttSource, items: list[Item] | None = None) -> list[Item]:
    """Every item of ``source`` (appended to ``items`` as they come, when given)."""
    items = [] if items is None else items
    async for item in source:
        items.append(item)
    return items


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def while_reading(source: MqttSource, send: Callable[[], Awaitable[Any]]) -> list[Item]:
    """Read ``source`` to its end while ``send()`` publishes, once it has subscribed."""
    reader = asyncio.create_task(collect(source))
    try:
        await subscribed(source, reader)
        await send()
        return await asyncio.wait_for(reader, WAIT)
    finally:
        reader.cancel()
        await source.aclose()


async def raw_publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``(topic, payload)`` pairs in order with a plain aiomqtt client, QoS 1."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def frame(stream: str, index: int, data: np.ndarray[Any, Any], rate: float = 100.0) -> Frame:
    return Frame(stream, index, index / rate, 0.0, data, rate)


def frames_of(items: list[Item]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def assert_same_frames(got: list[Frame], want: list[Frame]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.stream, g.index, g.pts, g.rate) == (w.stream, w.index, w.pts, w.rate)
        assert g.data.dtype == w.data.dtype and g.data.shape == w.data.shape
        assert g.data.tobytes() == w.data.tobytes()


def two_stream_recording(path: Path) -> Path:
    """An audio stream with a recorded gap (frames 3-4) and a short last frame, and a
    video stream, interleaved."""
    rng = np.random.default_rng(7)
    items: list[Item] = [
        StreamStart("mic", "audio", 8000.0, {"samples": 560, "device": "test"}),
        StreamStart("cam", "video", 10.0),
    ]
    index = 0
    for i in range(6):
        if i == 3:
            items.append(Gap("mic", 3, 2, 3 * 100 / 8000.0, "source"))
            index = 5
        length = 100 if i < 5 else 60
        data = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
        items.append(Frame("mic", index, index * 100 / 8000.0, 1.0 + index / 80, data, 8000.0))
        image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        items.append(Frame("cam", i, i / 10.0, 1.0 + i / 10.0 + 0.001, image, 10.0))
        index += 1
    items += [StreamEnd("mic", index), StreamEnd("cam", 6)]
    with RecordingWriter(path, source="test") as writer:
        for item in items:
            writer.add(item)
    return path


async def recorded_items(path: Path) -> list[Item]:
    source = open_source(f"recording:{path}", SourceOptions(pace="fast"), RealClock())
    try:
        return [item async for item in source]
    finally:
        await source.aclose()


async def publish_recording(path: Path, url: str, **limits: Any) -> Any:
    source = open_source(f"recording:{path}", SourceOptions(pace="fast"), RealClock())
    broker, qos = publish_target(url)
    try:
        return await publish(source, broker, qos=qos, **limits)
    finally:
        await source.aclose()


# -- the payload format (pure) ------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "int16", "uint8", "int64", "float16", "bool"]
)
def test_binary_frames_round_trip_bit_exact(dtype: str) -> None:
    rng = np.random.default_rng(1)
    data = (
        (rng.uniform(-100, 100, (5, 3)) > 0) if dtype == "bool" else rng.uniform(-100, 100, (5, 3))
    )
    data = np.asarray(data).astype(dtype)
    original = Frame("s", 4, 0.25, 9.0, data, 16.0)
    message = decode(encode_frame(original, {"samples": 12}))
    assert isinstance(message, FrameMessage)
    assert (message.stream, message.index, message.pts, message.rate) == ("s", 4, 0.25, 16.0)
    assert message.media == "audio" and message.meta == {"samples": 12}
    assert message.data.dtype == np.dtype(dtype) and message.data.shape == (5, 3)
    assert message.data.tobytes() == data.tobytes()


def test_big_endian_data_is_sent_little_endian() -> None:
    data = np.arange(6, dtype=">i2").reshape(3, 2)
    message = decode(encode_frame(frame("s", 0, data)))
    assert isinstance(message, FrameMessage)
    assert np.array_equal(message.data, data)
    assert encode_frame(frame("s", 0, data)).endswith(data.astype("<i2").tobytes())


def test_json_frames_gaps_and_ends_decode() -> None:
    header = {"stream": "f", "index": 2, "pts": 0.5, "media": "audio", "rate": 4.0}
    message = decode(json.dumps({**header, "data": [[0.5, 1.5]]}).encode())
    assert isinstance(message, FrameMessage)
    assert message.data.dtype == np.float32 and message.data.tolist() == [[0.5, 1.5]]
    pretty = json.dumps({**header, "data": [1, 2], "dtype": "int16"}, indent=2).encode()
    assert decode(pretty).data.tolist() == [1, 2]  # type: ignore[union-attr]
    assert decode(encode_gap(Gap("f", 3, 2, 0.75, "source"))) == GapMessage(
        "f", 3, 2, 0.75, "source"
    )
    assert decode(encode_end("f", 9, "stopped")) == EndMessage("f", 9, "stopped")


GOOD = {"stream": "s", "index": 0, "pts": 0.0, "media": "audio", "rate": 10.0}


def binary(header: dict[str, Any], body: bytes) -> bytes:
    return json.dumps(header).encode() + b"\n" + body


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json at all", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (binary({**GOOD, "dtype": "complex64", "shape": [1]}, b"\0" * 8), "'dtype'"),
        (binary({**GOOD, "dtype": "float32", "shape": [2, 2]}, b"\0" * 12), "16"),
        (binary({**GOOD, "dtype": "float32", "shape": [0]}, b""), "'shape'"),
        (binary({**GOOD, "index": -1, "dtype": "uint8", "shape": [1]}, b"\0"), "'index'"),
        (binary({**GOOD, "index": True, "dtype": "uint8", "shape": [1]}, b"\0"), "'index'"),
        (
            b'{"stream": "s", "index": 0, "pts": NaN, "media": "audio", "rate": 1, "data": [1]}',
            "'pts'",
        ),
        (binary({**GOOD, "media": "text", "dtype": "uint8", "shape": [1]}, b"\0"), "'media'"),
        (binary({**GOOD, "rate": 0, "dtype": "uint8", "shape": [1]}, b"\0"), "'rate'"),
        (binary({**GOOD, "stream": "", "dtype": "uint8", "shape": [1]}, b"\0"), "'stream'"),
        (binary({**GOOD, "v": 2, "dtype": "uint8", "shape": [1]}, b"\0"), "version"),
        (json.dumps(GOOD).encode(), "'data'"),
        (json.dumps({**GOOD, "data": [[1], [2, 3]]}).encode(), "'data'"),
        (json.dumps({**GOOD, "data": [1e300], "dtype": "float16"}).encode(), "range"),
        (json.dumps({"stream": "s", "end": True}).encode(), "'frames'"),
        (
            json.dumps({"stream": "s", "gap": True, "index": 1, "count": 0, "pts": 0}).encode(),
            "'count'",
        ),
        (b"x" * 70_000 + b"\n", "header line"),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, why: str) -> None:
    with pytest.raises(PayloadError, match=why) as info:
        decode(payload)
    assert info.value.kind == "malformed"


def test_oversize_payloads() -> None:
    payload = encode_frame(frame("s", 0, np.zeros(1000, np.float32)))
    assert isinstance(decode(payload, max_bytes=len(payload)), FrameMessage)
    with pytest.raises(PayloadError, match="over max_bytes") as info:
        decode(payload, max_bytes=len(payload) - 1)
    assert info.value.kind == "oversize"


# -- opening: URIs and their options --------------------------------------------------------
def test_mqtt_uris_open_the_mqtt_source() -> None:
    for uri in ("mqtt://localhost/a/b", "mqtts://localhost:8884/a/#"):
        assert uri_path(uri) is None  # a network source: no local file to protect
    source = mqtt_source("mqtt://localhost:1884/cams/+/frames?qos=2&streams=3")
    assert source.name == "source:mqtt://localhost:1884/cams/+/frames"
    assert source.streams == []  # learnt from the messages
    assert (source.settings.qos, source.settings.streams) == (2, 3)


def test_a_declared_stream_is_known_before_the_run() -> None:
    source = mqtt_source("mqtt://localhost/t?stream=cam&media=video&rate=15&shape=240x320x3")
    (info,) = source.streams
    assert (info.stream, info.media, info.rate, info.shape) == ("cam", "video", 15.0, (240, 320, 3))
    assert info.dtype == np.uint8 and info.live


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mqtt://:1883/t", "no broker host"),
        ("mqtt://localhost:99999/t", "port"),
        ("mqtt://localhost", "no topic"),
        ("mqtt://localhost/a/#/b", "'#' must be a whole last level"),
        ("mqtt://localhost/a+/b", "'\\+' must be a whole level"),
        ("mqtt://localhost/t?colour=red", "unknown query key 'colour'"),
        ("mqtt://localhost/t?qos=3", "qos"),
        ("mqtt://localhost/t?password=x", "password: refused in a URL"),
        ("mqtt://localhost/t?media=audio", "declaring a stream needs stream=NAME"),
        ("mqtt://localhost/t?stream=a&media=audio&rate=8000&shape=8xx1", "shape"),
        ("mqtt://localhost/t?stream=a&media=audio&rate=8000&dtype=complex64", "dtype"),
        ("mqtt://localhost/t?stream=a&stream_by=topic", "give one of them"),
        ("mqtt://localhost/t?persistent=1", "client_id"),
        ("mqtt://localhost/t?ca=/no/such/ca.pem", "no such file"),
    ],
)
def test_bad_uris_are_refused_naming_the_problem(uri: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        mqtt_source(uri)


def test_bad_uri_on_the_command_line_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "run",
            str(SPEECH_PIPELINE),
            "--source",
            "mqtt://localhost/t?colour=red",
            "-q",
            "--out",
            os.devnull,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[0]] and "unknown query key 'colour'" in err[0]


# -- publish -> source: the same frames, the same outputs -----------------------------------
async def test_published_recording_arrives_bit_exact(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Two streams (audio with a recorded gap and a short last frame, video) through
    ``publish`` and the source: the same frames, gaps, start metadata and ends."""
    path = two_stream_recording(tmp_path / "rec")
    source = mqtt_source(mosquitto.url("exact/#") + "?streams=2")
    got = await while_reading(
        source, lambda: publish_recording(path, mosquitto.url("exact/{stream}"))
    )
    want = await recorded_items(path)
    assert_same_frames(frames_of(got), frames_of(want))
    assert [g for g in got if isinstance(g, Gap)] == [Gap("mic", 3, 2, 3 * 100 / 8000.0, "source")]
    assert [e for e in got if isinstance(e, StreamEnd)] == [
        StreamEnd("mic", 6),
        StreamEnd("cam", 6),
    ]
    starts = {s.stream: s for s in got if isinstance(s, StreamStart)}
    assert starts["mic"].meta["samples"] == 560 and starts["mic"].meta["topic"] == "exact/mic"
    assert (starts["cam"].media, starts["cam"].rate, starts["cam"].info.shape) == (  # type: ignore[union-attr]
        "video",
        10.0,
        (6, 8, 3),
    )
    assert source.report()["frames"] == 12 and source.report()["out_of_order"] == 0


def test_pipeline_on_published_recording_gives_the_direct_outputs(mosquitto: Mosquitto) -> None:
    """``streamer publish`` (in-process) into a pipeline on the MQTT source, online mode:
    the outputs equal the recording's own run (but for latency)."""
    direct = replay(SPEECH_PIPELINE, str(SPEECH), mode="online")
    url = mosquitto.url("speech/#")
    config = apply_overrides(
        load_config(SPEECH_PIPELINE), Overrides(sources=(url,), mode="online", quiet=True)
    )
    pipeline = build_pipeline(config.model_copy(update={"sinks": []}), RealClock())
    sink = CaptureSink()
    pipeline = Pipeline(
        pipeline.sources, pipeline.stages, [sink], mode="online", metrics=pipeline.metrics
    )
    (source,) = pipeline.sources
    assert isinstance(source, MqttSource)

    async def go() -> dict[str, Any]:
        run = asyncio.create_task(pipeline.run())
        await subscribed(source, run)
        summary = await publish_recording(SPEECH, mosquitto.url("speech/{stream}"))
        assert summary.frames == {"speech_en": 313} and summary.unconfirmed == 0
        return await asyncio.wait_for(run, WAIT)

    summary = asyncio.run(go())
    assert len(sink.outputs) == len(direct.outputs) == 313
    for got, want in zip(sink.outputs, direct.outputs, strict=True):
        assert {**got.to_json(), "latency_ms": None} == {**want.to_json(), "latency_ms": None}
    assert summary["frames_in"] == 313 and summary["dropped"] == 0
    (counts,) = summary["sources"].values()
    assert counts["frames"] == 313 and counts["malformed"] == counts["queue_dropped"] == 0


# -- what the source skips, counts and reports -----------------------------------------------
async def test_bad_messages_are_counted_and_skipped_and_holes_are_gaps(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed, oversize and out-of-order messages among good frames: the good frames
    come through in order, missing indices become a gap, the counts reach the summary,
    and the skips are warned about once (rate-limited), not once each."""
    topic = "bad/in"
    data = np.arange(8, dtype=np.float32).reshape(4, 2)

    def good(index: int) -> tuple[str, bytes]:
        return topic, encode_frame(frame("s", index, data + index))

    header = {**GOOD, "dtype": "float32", "shape": [4, 2]}
    messages = [
        good(0),
        (topic, b"{not json"),
        (topic, binary({**header, "dtype": "complex128"}, data.tobytes())),
        (topic, binary(header, data.tobytes()[:-4])),  # one float short
        (topic, encode_frame(frame("s", 1, np.zeros((600, 2), np.float32)))),  # oversize
        good(1),
        good(0),  # out of order (a duplicate)
        good(4),  # 2 and 3 never came
        (topic, encode_end("s", 5)),
    ]
    source = mqtt_source(mosquitto.url(topic) + "?max_bytes=4096")
    stage = ThresholdStage(kind="energy", threshold=-200.0)
    sink = CaptureSink()
    pipeline = Pipeline([source], [stage], [sink], mode="online", clock=RealClock())
    with caplog.at_level("WARNING", logger="streamer.mqtt.source"):
        run = asyncio.create_task(pipeline.run())
        await subscribed(source, run)
        await raw_publish(mosquitto, messages)
        summary = await asyncio.wait_for(run, WAIT)
    assert [(o.start, o.end) for o in sink.outputs] == [(0, 0), (1, 1), (4, 4)]
    assert summary["streams"]["s"]["frames_missing"] == 2
    assert summary["streams"]["s"]["gaps"] == 1
    counts = summary["sources"][source.name]
    assert counts == {
        "received": 9,
        "frames": 3,
        "malformed": 3,
        "oversize": 1,
        "out_of_order": 1,
        "queue_dropped": 0,
        "reconnects": 0,
    }
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "malformed" in warnings[0]


async def test_gap_pts_follow_the_frames(mosquitto: Mosquitto) -> None:
    topic = "gaps/pts"
    chunk = np.zeros((80, 1), np.float32)  # 10 ms at 8 kHz
    messages = [
        (topic, encode_frame(Frame("a", i, i * 0.01, 0.0, chunk, 8000.0))) for i in (0, 1, 5)
    ]
    source = mqtt_source(mosquitto.url(topic))

    async def send() -> None:
        await raw_publish(mosquitto, [*messages, (topic, encode_end("a", 8))])

    items = await while_reading(source, send)
    gaps = [item for item in items if isinstance(item, Gap)]
    assert [(g.index, g.count, g.reason) for g in gaps] == [(2, 3, "missing"), (6, 2, "missing")]
    assert math.isclose(gaps[0].pts, 0.02) and math.isclose(gaps[1].pts, 0.06)
    assert items[-1] == StreamEnd("a", 8)


async def test_stream_by_topic_and_a_fixed_stream(mosquitto: Mosquitto) -> None:
    one = np.ones((2, 1), np.float32)
    messages = [
        ("bytopic/x", encode_frame(frame("same", 0, one))),
        ("bytopic/y", encode_frame(frame("same", 0, one))),
        ("bytopic/x", encode_end("same", 1)),
        ("bytopic/y", encode_end("same", 1)),
    ]
    source = mqtt_source(mosquitto.url("bytopic/+") + "?stream_by=topic&streams=2")
    items = await while_reading(source, lambda: raw_publish(mosquitto, messages))
    assert [f.stream for f in frames_of(items)] == ["bytopic/x", "bytopic/y"]
    assert [s.stream for s in source.streams] == ["bytopic/x", "bytopic/y"]

    declared = "?stream=mine&media=audio&rate=100&shape=2x1"
    source = mqtt_source(mosquitto.url("fixed/#") + declared)
    video = ("fixed/v", encode_frame(frame("v", 0, np.zeros((2, 2, 3), np.uint8), 100.0)))
    messages = [
        video,
        ("fixed/a", encode_frame(frame("other", 0, one))),
        ("fixed/a", encode_end("x", 1)),
    ]
    items = await while_reading(source, lambda: raw_publish(mosquitto, messages))
    assert [(f.stream, f.index) for f in frames_of(items)] == [("mine", 0)]
    assert source.counts.malformed == 1  # the video frame is not the declared audio


# -- the broker: gone at the start, lost mid-run, credentials ------------------------------
def test_unreachable_broker_is_one_line_naming_host_port_and_time_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}/nobody?timeout=2"
    assert main(["publish", f"recording:{SPEECH}", url, "--pace", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"host 127.0.0.1, port {port}, time-out 2 s" in err[0]
    assert main(["run", str(SPEECH_PIPELINE), "--source", url, "-q", "--out", os.devnull]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {port}" in err[0] and "time-out 2 s" in err[0], err


async def test_source_retries_until_the_broker_appears_and_survives_its_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``retry``, a broker down at the start is waited for; a broker killed mid-run
    is reconnected and subscribed again (what was published meanwhile is a gap)."""
    broker = Mosquitto(tmp_path / "b")
    source = mqtt_source(broker.url("restart/s") + "?retry=1&timeout=2")
    one = np.ones((2, 1), np.float32)
    items: list[Item] = []
    reader = asyncio.create_task(collect(source, items))
    try:
        await asyncio.sleep(0.3)  # the first connections fail: nothing listens yet
        assert not reader.done()
        broker.start()
        await subscribed(source, reader)
        await raw_publish(broker, [("restart/s", encode_frame(frame("s", i, one))) for i in (0, 1)])
        await until(lambda: len(frames_of(items)) == 2, "frames 0 and 1")
        broker.kill()
        await until(lambda: not source.subscribed.is_set(), "the source to see the broker gone")
        broker.start()
        await subscribed(source, reader)
        later = [("restart/s", encode_frame(frame("s", i, one))) for i in (5, 6)]
        await raw_publish(broker, [*later, ("restart/s", encode_end("s", 7))])
        items = await asyncio.wait_for(reader, WAIT)
    finally:
        reader.cancel()
        await source.aclose()
        broker.stop()
    assert [f.index for f in frames_of(items)] == [0, 1, 5, 6]
    assert [(g.index, g.count) for g in items if isinstance(g, Gap)] == [(2, 3)]
    assert source.counts.reconnects == 1
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1 and broker.url().rstrip("/") in lost[0]


def test_tls_and_password_publish_and_subscribe(
    tls_mosquitto: Mosquitto, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = certificates
    monkeypatch.setenv("MQTT_TEST_PASSWORD", "s3cret")
    auth = f"ca={c.ca}&cert={c.client_cert}&key={c.client_key}&username=streamer"
    good = f"{auth}&password_env=MQTT_TEST_PASSWORD"
    source = mqtt_source(tls_mosquitto.url("tls/#", "mqtts") + f"?{good}")

    async def go() -> list[Item]:
        return await while_reading(
            source,
            lambda: publish_recording(
                SPEECH, tls_mosquitto.url("tls/{stream}", "mqtts") + f"?{good}", max_frames=5
            ),
        )

    items = asyncio.run(go())
    assert [f.index for f in frames_of(items)] == [0, 1, 2, 3, 4]
    assert items[-1] == StreamEnd("speech_en", 5, "max-frames")

    monkeypatch.setenv("MQTT_TEST_PASSWORD", "wrong")
    wrong = mqtt_source(tls_mosquitto.url("tls/#", "mqtts") + f"?{good}&retry=1")
    with pytest.raises(InputError, match="not authorised") as info:
        asyncio.run(collect(wrong))
    assert str(info.value).startswith(f"mqtts://127.0.0.1:{tls_mosquitto.port}:")
    untrusted = mqtt_source(
        tls_mosquitto.url("tls/#", "mqtts") + f"?{good}".replace(str(c.ca), str(c.other_ca))
    )
    with pytest.raises(InputError, match="not trusted"):
        asyncio.run(collect(untrusted))


# -- streamer publish ------------------------------------------------------------------------
def test_a_device_publishes_and_a_pipeline_labels_it(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The README's chain: ``streamer publish`` (its own process, a live-paced video
    source) feeds ``streamer run --source mqtt://...`` (an endless subscription, stopped
    by ``--max-frames``), which labels the frames."""
    publisher = subprocess.Popen(
        [
            *streamer_command(),
            "publish",
            "synthetic:shapes?fps=30&size=32x24",
            mosquitto.url("chain/{stream}"),
            "--duration",
            "60",
        ],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "labels.jsonl"
    try:
        url = mosquitto.url("chain/#") + "?streams=0"
        code = main(["run", "--source", url, "--max-frames", "10", "--out", str(out), "-q"])
    finally:
        publisher.kill()
        _, err = publisher.communicate(timeout=WAIT)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10
    assert {line["stream"] for line in lines} == {"shapes"}
    assert all(line["label"] in ("dark", "bright") for line in lines), lines[0]
    indices = [line["start"] for line in lines]
    assert indices == sorted(indices)


async def test_publish_limits_end_the_streams(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = two_stream_recording(tmp_path / "rec")
    source = mqtt_source(mosquitto.url("limits/#") + "?streams=2")
    items = await while_reading(
        source, lambda: publish_recording(path, mosquitto.url("limits/{stream}"), duration=0.2)
    )
    assert [(f.stream, f.index) for f in frames_of(items) if f.stream == "cam"] == [
        ("cam", 0),
        ("cam", 1),
    ]
    ends = {e.stream: e for e in items if isinstance(e, StreamEnd)}
    assert ends["cam"] == StreamEnd("cam", 2, "duration")
    assert ends["mic"].reason in ("duration", "eof")


def test_streamer_publish_prints_one_summary_line(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mosquitto.url("cli/{stream}") + "?qos=0"
    assert (
        main(["publish", f"recording:{SPEECH}", url, "--pace", "fast", "--max-frames", "20"]) == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"published 'speech_en' 20 frames to mqtt://127.0.0.1:{mosquitto.port} (QoS 0)"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://localhost/{camera}/x", "unknown field {camera}"),
        ("mqtt://localhost/a/#", "wildcards"),
        ("http://localhost/a", "expected mqtt://"),
        ("mqtt://localhost/a?qos=5", "qos"),
    ],
)
def test_publish_bad_urls_exit_2(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", f"recording:{SPEECH}", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
