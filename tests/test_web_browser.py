"""The live view in a real headless Chromium (selenium, Debian's chromium and its driver)
over real pipeline runs: the annotated video moves, the label and the chart are the run's
own outputs, streams come and go, a public bind wants its token, a browser that stops
reading is dropped without costing the run an output, and a finished run's review page
follows its time slider.

Each test starts one pipeline at most, on a thread of its own (``tests/browser.py``:
``LiveRun``), and points the session's browser at its web sink. Without Chromium the
tests skip locally and fail in CI.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import (
    DEADLINE,
    LiveRun,
    element_image,
    iter_stream,
    jsonl_records,
    pipeline_config,
    serving,
    wait_js,
    wait_until,
)
from mosquitto import Mosquitto
from standins.mjpeg_server import decode_index
from test_camera import MjpegServer

pytestmark = pytest.mark.usefixtures("in_repo")

WEBCAM = "pipelines/webcam_labels.toml"  # the motion CNN + GRU, video
ENERGY = "pipelines/speech_energy.toml"  # the loudness thresholder, audio, no model
VIEW = "window.streamerView"


def web(**keys: Any) -> dict[str, Any]:
    return {"type": "web", "bind": "127.0.0.1:0", **keys}


def jsonl(path: Path) -> dict[str, Any]:
    return {"type": "jsonl", "path": str(path)}


def panel(stream: str) -> str:
    return f'section.stream[data-stream="{stream}"]'


def connect(driver: Any, run: LiveRun, streams: list[str]) -> None:
    """Load the run's page and wait until it is connected and lists ``streams``."""
    driver.get(run.url)
    wait_js(driver, f"{VIEW}.connected", "the page to connect")
    names = " && ".join(f"{VIEW}.streams().includes({s!r})" for s in streams)
    wait_js(driver, names, f"the page to list {streams}")


# -- the page over a live run ----------------------------------------------------------------


def test_page_shows_the_live_annotated_video_the_label_and_the_scores(
    page: Any, tmp_path: Path
) -> None:
    camera = MjpegServer(fps=15.0)
    camera.start()
    out = tmp_path / "out.jsonl"
    history = 2.0  # shorter than the run: the chart lets go of older scores
    config = pipeline_config(
        WEBCAM,
        sources=[
            {"uri": f"camera:{camera.url}", "stream": "cam"},
            {"uri": "tests/data/motion_demo.mp4", "stream": "clip", "pace": "realtime"},
        ],
        sinks=[jsonl(out), web(history_s=history)],
        mode="realtime",
    )
    try:
        with LiveRun(config) as run:
            connect(page, run, ["cam", "clip"])
            video = page.find_element("css selector", f"{panel('cam')} img.video")
            assert "/video/cam.mjpg" in video.get_attribute("src")

            # Two looks at the camera's panel some frames apart: the picture moved on, to a
            # newer camera frame (each carries its number in its pixels, under the panel).
            wait_js(page, f"{VIEW}.framesShown('cam') >= 3", "camera frames on the page")
            first = element_image(video)
            shown = page.execute_script(f"return {VIEW}.framesShown('cam')")
            wait_js(page, f"{VIEW}.framesShown('cam') >= {shown + 15}", "15 more frames")
            second = element_image(video)
            assert (first != second).any(), "two screenshots show the same picture"
            assert decode_index(second) > decode_index(first)

            for stream in ("cam", "clip"):
                # The label shown is the run's newest for the stream (or one just before,
                # while the newest is on its way).
                def shown_is_recent(stream: str = stream) -> Any:
                    text = page.find_element("css selector", f"{panel(stream)} .label").text
                    labels = [r["label"] for r in iter_stream(jsonl_records(out), stream)]
                    return text and text in labels[-5:] and text

                label = wait_until(shown_is_recent, f"the label of {stream} on the page")
                assert label in {"still", "left", "right", "up", "down"}

            # The chart holds the clip's scores of the last seconds: the JSONL's own values.
            wait_js(page, f"{VIEW}.series('clip').t.at(-1) >= {history + 1.5}", "3.5 s of clip")
            series = page.execute_script(f"return {VIEW}.series('clip')")
            records = list(iter_stream(jsonl_records(out), "clip"))
        summary = run.summary
    finally:
        camera.kill()

    assert summary is not None and summary["outputs"] > 0
    times = series["t"]
    assert times == sorted(times)
    assert times[-1] - times[0] <= history + 1e-6, "the chart holds more than history_s"
    assert times[0] > records[0]["pts"], "the chart kept scores older than history_s"
    window = [r["pts"] for r in records if times[0] <= r["pts"] <= times[-1]]
    assert len(window) == len(times) >= 10, "the chart misses outputs of its window"
    assert set(series["scores"]) == {"still", "left", "right", "up", "down"}
    by_time = {round(r["pts"], 3): r["scores"] for r in records}
    assert all(round(t, 3) in by_time for t in times), "chart points the run never output"
    for label, values in series["scores"].items():
        expected = [by_time[round(t, 3)][label] for t in times]
        assert values == pytest.approx(expected, abs=1e-6), label
    # the newest point is one of the run's newest outputs when the chart was read
    assert times[-1] >= records[-1]["pts"] - 1.0


async def publish_stream(uri: str, stream: str, url: str) -> None:
    """Publish ``uri`` as stream ``stream`` to MQTT, paced in real time (as a device would)."""
    from streamer.clock import RealClock
    from streamer.mqtt.publish import publish, publish_target
    from streamer.sources import SourceOptions, open_source

    source = open_source(uri, SourceOptions(pace="realtime", stream=stream), RealClock())
    broker, qos = publish_target(url)
    try:
        await publish(source, broker, qos=qos)
    finally:
        await source.aclose()


def test_a_stream_appears_when_it_starts_and_is_marked_ended_when_it_ends(
    page: Any, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The second source is an MQTT subscription: it declares no stream before the run,
    # and its stream starts with the first frame published and ends with the end message.
    topic = "browser-test/frames"
    config = pipeline_config(
        ENERGY,
        sources=[
            {"uri": "synthetic:tone", "stream": "first", "pace": "realtime"},
            {"uri": mosquitto.url(topic)},
        ],
        sinks=[jsonl(tmp_path / "out.jsonl"), web()],
        mode="realtime",
    )
    with LiveRun(config) as run:
        connect(page, run, ["first"])
        wait_js(page, f"{VIEW}.label('first')", "a label for the first stream")
        assert page.execute_script(f"return {VIEW}.streams()") == ["first"]
        assert not page.find_elements("css selector", '#streams li[data-stream="second"]')
        assert not page.find_elements("css selector", panel("second"))

        # the second stream: 3 s of noise, published now
        publisher = threading.Thread(
            target=asyncio.run,
            args=(publish_stream("synthetic:noise?duration=3", "second", mosquitto.url(topic)),),
        )
        publisher.start()
        try:
            wait_js(page, f"{VIEW}.streams().includes('second')", "the second stream to appear")
            item = page.find_element("css selector", '#streams li[data-stream="second"]')
            section = page.find_element("css selector", panel("second"))
            wait_js(page, f"{VIEW}.label('second')", "a label for the second stream")
            assert publisher.is_alive() and not ended(item) and not ended(section)
        finally:
            publisher.join(DEADLINE)
        wait_until(lambda: ended(item) and ended(section), "the second stream marked ended")
        first = page.find_elements(
            "css selector", f'#streams li[data-stream="first"], {panel("first")}'
        )
        assert len(first) == 2 and not any(ended(element) for element in first)
        assert page.execute_script(f"return {VIEW}.connected")
        assert len(page.find_elements("css selector", "section.stream")) == 2
        assert run.running


def ended(element: Any) -> bool:
    return "ended" in (element.get_attribute("class") or "").split()


# -- review: a finished run -------------------------------------------------------------------


def label_at(records: list[dict[str, Any]], t: float) -> str:
    """The label the review shows at ``t``: the newest record's at or before it."""
    return str([r for r in records if r["pts"] <= t + 1e-9][-1]["label"])


def test_the_review_page_follows_its_time_slider(page: Any, tmp_path: Path) -> None:
    from streamer.cli import main
    from streamer.web.review import review_server

    clip, out = "tests/data/motion_demo.mp4", tmp_path / "out.jsonl"
    assert (
        main(["run", WEBCAM, "--source", clip, "--mode", "offline", "-q", "--out", str(out)]) == 0
    )
    records = list(iter_stream(jsonl_records(out), "motion_demo"))
    assert len(records) == 150
    # two moments whose labels differ (the cross changes direction during the clip), on
    # the slider's 0.01 s steps
    first = math.ceil(records[20]["pts"] * 100) / 100
    later_pts = next(r["pts"] for r in records[40:] if r["label"] != records[20]["label"])
    later = math.ceil(later_pts * 100) / 100
    with serving(review_server(str(out), video=clip, bind="127.0.0.1:0", history_s=4.0)) as server:
        page.get(server.url)
        wait_js(page, f"{VIEW}.connected && {VIEW}.mode === 'review'", "the review page")
        slider = page.find_element("css selector", "input#slider[type=range]")
        video = page.find_element("css selector", f"{panel('motion_demo')} img.video")
        label = page.find_element("css selector", f"{panel('motion_demo')} .label")
        shots = []
        for t in (first, later):
            shown = page.execute_script(f"return {VIEW}.framesShown('motion_demo')")
            # as a user drags it: the value changes and the slider fires "input"
            page.execute_script(
                "arguments[0].value = arguments[1];"
                " arguments[0].dispatchEvent(new Event('input'));",
                slider,
                str(t),
            )
            wait_js(page, f"{VIEW}.framesShown('motion_demo') > {shown}", f"the frame at {t}")
            assert f"t={t:.3f}" in video.get_attribute("src")
            assert page.find_element("css selector", "#time").text == f"{t:.2f} s"
            assert label.text == label_at(records, t)
            series = page.execute_script(f"return {VIEW}.series('motion_demo')")
            assert series["t"] and all(t - 2.0 - 1e-6 <= x <= t + 2.0 + 1e-6 for x in series["t"])
            shots.append(element_image(video))
        assert label_at(records, first) != label_at(records, later)
        assert (shots[0] != shots[1]).any()


# -- security --------------------------------------------------------------------------------


async def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        return reply.status


async def websocket_refusal(url: str) -> int | None:
    """The HTTP status a WebSocket handshake is refused with (None: it was accepted)."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url) as ws:
                await ws.receive(timeout=DEADLINE)
                return None
        except aiohttp.WSServerHandshakeError as error:
            return error.status


async def first_message(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        return await ws.receive_json(timeout=DEADLINE)


async def mjpeg_head(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), await reply.content.read(200)


def test_a_public_bind_wants_the_token_for_the_page_the_video_and_the_websocket(
    page: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = pipeline_config(
        WEBCAM,
        sources=[{"uri": "synthetic:shapes?size=160x120", "stream": "shapes", "pace": "realtime"}],
        sinks=[jsonl(tmp_path / "out.jsonl"), web(bind="0.0.0.0:0")],
        mode="realtime",
    )
    with LiveRun(config) as run:
        server = run.web.server
        token = server.token
        assert token, "a public bind without a token given gets one generated"
        base = f"http://127.0.0.1:{server.port}"
        ws = f"ws://127.0.0.1:{server.port}/ws"
        refused = {401, 403}
        for path in ("/", "/video/shapes.mjpg", "/api/streams", "/api/health"):
            assert asyncio.run(status_of(base + path)) in refused, path
            assert asyncio.run(status_of(f"{base}{path}?token=wrong{token}")) in refused, path
        assert asyncio.run(websocket_refusal(ws)) in refused
        assert asyncio.run(websocket_refusal(f"{ws}?token=not-it")) in refused

        # With the token (query or bearer header) everything answers.
        assert asyncio.run(status_of(f"{base}/?token={token}")) == 200
        bearer = {"Authorization": f"Bearer {token}"}
        assert asyncio.run(status_of(f"{base}/api/streams", bearer)) == 200
        status, kind, start = asyncio.run(mjpeg_head(f"{base}/video/shapes.mjpg?token={token}"))
        assert status == 200 and kind.startswith("multipart/x-mixed-replace"), kind
        assert start, "no MJPEG bytes"
        hello = asyncio.run(first_message(f"{ws}?token={token}"))
        assert hello["type"] == "hello" and hello["mode"] == "live"

        # The browser: the page with the token works; a WebSocket without it never opens.
        connect(page, run, ["shapes"])
        opened = page.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const ws = new WebSocket(`ws://${location.host}/ws`);
            ws.onopen = () => { done('open'); ws.close(); };
            ws.onclose = () => done('closed');
            """
        )
        assert opened == "closed"
    err = capfd.readouterr().err
    assert f":{server.port}/?token={token}" in err, err


# -- a browser that stops reading --------------------------------------------------------------

ESTABLISHED = "01"


def server_side_state(server_port: int, client_port: int) -> str | None:
    """The kernel's TCP state (``/proc/net/tcp``, hex) of the server's end of the
    connection from ``client_port``; None when the server holds no such socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            return state
    return None


def test_a_stalled_browser_is_dropped_and_costs_the_run_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stall_timeout = 1.0
    seconds, fps = 8, 15
    config = pipeline_config(
        WEBCAM,
        sources=[
            {
                "uri": f"synthetic:shapes?size=320x240&fps={fps}&duration={seconds}",
                "stream": "shapes",
                "pace": "realtime",
            }
        ],
        sinks=[jsonl(out), web(stall_timeout_s=stall_timeout)],
        mode="realtime",
    )
    with LiveRun(config) as run:
        port = run.web.server.port
        # A client that asks for the video and never reads: a small receive buffer, so the
        # server's writes back up after a few frames.
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(
            f"GET /video/shapes.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        client_port = stalled.getsockname()[1]
        # A client that reads all along, for comparison: it is never dropped.
        reader = socket.create_connection(("127.0.0.1", port))
        reader.sendall(
            f"GET /video/shapes.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        received = [0]

        def read_all() -> None:
            with reader:
                while chunk := reader.recv(65536):
                    received[0] += len(chunk)

        reading = threading.Thread(target=read_all, daemon=True)
        reading.start()
        try:
            wait_until(
                lambda: server_side_state(port, client_port) == ESTABLISHED,
                "the stalled client's connection",
            )
            # dropped (closed or gone) within the time-out once its writes back up, while
            # the run goes on
            wait_until(
                lambda: server_side_state(port, client_port) != ESTABLISHED,
                "the server to drop the stalled client",
                timeout=stall_timeout + 5.0,
            )
            assert run.running, "the run ended before the stalled client was dropped"
            assert run.web.server.stalled == 1  # the server says why: it stopped reading
            before = received[0]
            wait_until(lambda: received[0] > before + 10_000, "the reading client's frames")
            summary = run.wait()
        finally:
            stalled.close()
    reading.join(DEADLINE)
    # every frame of the source was read, labelled and written: none lost to the stall
    frames = seconds * fps
    assert summary["frames_in"] == frames and summary["dropped"] == 0, summary
    assert len(list(iter_stream(jsonl_records(out), "shapes"))) == frames
