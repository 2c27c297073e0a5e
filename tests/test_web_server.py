"""The live view's server at the HTTP level: a real aiohttp server serving a real run, read
with aiohttp's client (the browser tests are tests/test_web_browser.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from media import read_jsonl, write_video

from streamer.build import build_pipeline
from streamer.cli import main
from streamer.config import parse_config
from streamer.pipeline import Pipeline
from streamer.sinks.web import WebSink
from streamer.web.review import review_server
from streamer.web.server import WebServer

SHAPES = "synthetic:shapes?size={size}&fps=15&duration={seconds}"


def config(
    tmp_path: Path,
    *,
    seconds: float = 2.0,
    web: dict[str, Any] | None = None,
    mode: str = "online",
    pace: str | None = "realtime",
    size: str = "160x120",
) -> Any:
    """A run of the moving synthetic video through the brightness thresholder, written to
    ``tmp_path/out.jsonl``, with a web sink (``web``: its keys) unless ``web`` is None; by
    default lossless (online) at the media's own pace, so that counts are exact."""
    source: dict[str, Any] = {"uri": SHAPES.format(seconds=seconds, size=size)}
    if pace is not None:
        source["pace"] = pace
    sinks: list[dict[str, Any]] = [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}]
    if web is not None:
        sinks.append({"type": "web", "bind": "127.0.0.1:0", **web})
    return parse_config(
        {
            "source": source,
            "model": {"builtin": "brightness", "labels": ["dark", "bright"]},
            "run": {"mode": mode},
            "sinks": sinks,
        },
        "test",
    )


def web_sink(pipeline: Pipeline) -> WebSink:
    return next(sink for sink in pipeline.sinks if isinstance(sink, WebSink))


async def until(check: Callable[[], Any], what: str, within: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (fails after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def with_run(
    pipeline: Pipeline, client: Callable[[WebServer], Awaitable[Any]]
) -> tuple[dict[str, Any], Any]:
    """Run ``pipeline`` while ``client`` talks to its web server; (summary, client's result)."""
    server = web_sink(pipeline).server
    run = asyncio.get_running_loop().create_task(pipeline.run())
    try:
        result = await asyncio.wait_for(client(server), 30.0)
        summary = await asyncio.wait_for(run, 30.0)
    finally:
        if not run.done():
            pipeline.abort()
            with pytest.raises(BaseException):  # noqa: B017 (cancelled or failed: either)
                await run
    return summary, result


async def mjpeg_parts(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    """The first ``count`` JPEG parts of a ``multipart/x-mixed-replace`` response."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
    parts: list[bytes] = []
    while len(parts) < count:
        line = await response.content.readline()
        assert line, "the MJPEG stream ended early"
        if line.strip() != b"--" + boundary:
            continue
        headers: dict[str, str] = {}
        while (line := await response.content.readline()).strip():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        parts.append(await response.content.readexactly(int(headers["content-length"])))
    return parts


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


# -- the page ----------------------------------------------------------------------------


async def test_page_and_its_files_load_and_need_no_other_host(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=1.0, web={}))

    async def client(server: WebServer) -> list[str]:
        base = f"http://127.0.0.1:{server.port}/"
        async with aiohttp.ClientSession() as session:
            async with session.get(base) as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                page = await response.text()
            links = re.findall(r'(?:src|href)="([^"]+)"', page)
            assert all(link.startswith(("static/", "data:")) for link in links), links
            files = [link for link in links if link.startswith("static/")]
            assert "static/view.js" in files and "static/vendor/uPlot.iife.min.js" in files
            texts = [page]
            for name in files:
                async with session.get(base + name) as response:
                    assert response.status == 200, name
                    texts.append(await response.text())
            async with session.get(base + "static/../server.py") as response:
                assert response.status == 404
        return texts

    _summary, texts = await with_run(pipeline, client)
    for text in texts:
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # a licence comment may link home
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", code, re.I), code[:200]


# -- video -------------------------------------------------------------------------------


async def test_mjpeg_gives_successive_annotated_frames_of_the_stream(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=3.0, web={"max_fps": 30}))

    async def client(server: WebServer) -> list[bytes]:
        url = f"http://127.0.0.1:{server.port}/video/shapes.mjpg"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            return await mjpeg_parts(response, 5)

    _summary, parts = await with_run(pipeline, client)
    images = [decode(part) for part in parts]
    assert all(image.shape == (120, 160, 3) for image in images)
    # the circle moves: successive frames differ (below the overlay's panel)
    lower = [image[60:].astype(np.int16) for image in images]
    assert all(np.abs(a - b).max() > 40 for a, b in itertools.pairwise(lower))
    # the overlay's panel is drawn: its dark background in the top-left corner
    assert all(image[:4, :4].mean() < 40 for image in images)


async def test_a_stream_nobody_watches_is_not_encoded(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=1.0, web={}))
    summary, _ = await with_run(pipeline, lambda server: asyncio.sleep(0))
    assert summary["outputs"] == 15
    assert web_sink(pipeline).frames_encoded == 0


# -- the WebSocket ---------------------------------------------------------------------------


async def test_websocket_gives_hello_streams_health_and_the_runs_outputs(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=2.0, web={}))

    async def client(server: WebServer) -> list[dict[str, Any]]:
        messages = []
        url = f"http://127.0.0.1:{server.port}/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str('{"type": "ping"}')
            await ws.send_str('{"type": "stop"}')  # the page can change nothing: ignored
            async for message in ws:  # until the run ends and the server closes it
                messages.append(json.loads(message.data))
        return messages

    summary, messages = await with_run(pipeline, client)
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["hello", "streams"]
    assert messages[0]["mode"] == "live"
    assert {"outputs", "health", "pong"} <= set(kinds)
    streams = messages[1]["streams"]
    assert streams == [
        {"stream": "shapes", "media": "video", "rate": 15.0, "video": True, "ended": False}
    ]
    assert [m for m in messages if m["type"] == "streams"][-1]["streams"][0]["ended"]
    outputs = [o for m in messages if m["type"] == "outputs" for o in m["outputs"]]
    assert outputs == read_jsonl(tmp_path / "out.jsonl")
    assert len(outputs) == summary["outputs"] == 30
    health = [m for m in messages if m["type"] == "health"][-1]
    # (an output counts once every sink is done with it: the JSONL sink may still be
    # writing the last ones when the web sink closes)
    assert health["frames_in"] == 30 and 27 <= health["outputs"] <= 30
    assert health["streams"]["shapes"]["gaps"] == 0
    assert "source>threshold" in health["queues"] or health["queues"]


async def test_api_streams_and_health(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=1.0, web={}))

    async def client(server: WebServer) -> tuple[Any, Any]:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            await until(lambda: server.hub.seq >= 3, "three outputs")
            async with session.get(base + "/api/streams") as response:
                streams = await response.json()
            async with session.get(base + "/api/health") as response:
                health = await response.json()
        return streams, health

    _summary, (streams, health) = await with_run(pipeline, client)
    assert streams["type"] == "streams" and streams["streams"][0]["stream"] == "shapes"
    assert health["type"] == "health" and health["outputs"] >= 3
    assert {"fps_in", "fps_out", "latency_ms", "dropped", "streams", "queues"} <= set(health)


# -- security ------------------------------------------------------------------------------


async def test_a_non_loopback_bind_needs_the_generated_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=2.0, web={"bind": "0.0.0.0:0"}))
    token = web_sink(pipeline).server.token
    assert token and len(token) >= 16

    async def client(server: WebServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/video/shapes.mjpg", "/api/streams", "/static/view.js"):
                async with session.get(base + path) as response:
                    assert response.status == 401, path
                async with session.get(base + path, params={"token": "wrong" + token}) as r:
                    assert r.status == 401, path
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(base + "/ws")
            assert refused.value.status == 401
            async with session.get(base + "/", params={"token": token}) as response:
                assert response.status == 200
                assert f"?token={token}" in await response.text()  # the page's own files
            bearer = {"Authorization": f"Bearer {token}"}
            async with session.get(base + "/api/streams", headers=bearer) as response:
                assert response.status == 200
            async with session.ws_connect(base + "/ws", params={"token": token}) as ws:
                assert json.loads((await ws.receive()).data)["type"] == "hello"
            video = session.get(base + "/video/shapes.mjpg", headers=bearer)
            async with video as response:
                assert response.status == 200
                assert len(await mjpeg_parts(response, 1)) == 1

    await with_run(pipeline, client)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "live view at" in line]
    assert len(lines) == 1
    assert f"http://127.0.0.1:{web_sink(pipeline).server.port}/?token={token}" in lines[0]


async def test_a_loopback_server_refuses_other_hosts_and_other_sites(tmp_path: Path) -> None:
    pipeline = build_pipeline(config(tmp_path, seconds=1.0, web={}))

    async def client(server: WebServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/", headers={"Host": "evil.example"}) as response:
                assert response.status == 403  # DNS rebinding
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(base + "/ws", headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403
            async with session.get(base + "/") as response:
                assert response.status == 200

    await with_run(pipeline, client)


# -- a client that stops reading ----------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # lossless mode at the media's own pace: the output count is the frame count
    # (large frames, so that the stalled client's buffers fill soon)
    size = "640x480"
    # (online mode is lossless: the count does not depend on the pace)
    plain = build_pipeline(config(tmp_path, seconds=4.0, mode="online", pace="fast", size=size))
    expected = (await plain.run())["outputs"]
    pipeline = build_pipeline(
        config(
            tmp_path,
            size=size,
            seconds=4.0,
            mode="online",
            pace="realtime",
            web={"stall_timeout_s": 0.3, "max_fps": 30, "jpeg_quality": 100},
        )
    )

    async def client(server: WebServer) -> int:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /video/shapes.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        stalled.setblocking(False)
        try:
            await until(lambda: server.stalled >= 1, "the stalled client to be dropped")
            # it was closed: what is buffered drains, then the end (or a reset)
            received = 0
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                try:
                    chunk = stalled.recv(1 << 16)
                except BlockingIOError:
                    await asyncio.sleep(0.02)
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += len(chunk)
            else:
                raise AssertionError("the stalled client's connection was not closed")
            return received
        finally:
            stalled.close()

    summary, received = await with_run(pipeline, client)
    assert received > 0
    assert summary["outputs"] == expected == 60
    assert len(read_jsonl(tmp_path / "out.jsonl")) == expected


# -- bad input --------------------------------------------------------------------------------


def write_pipeline(tmp_path: Path, sinks: str = "") -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        f'[source]\nuri = "{SHAPES.format(seconds=1, size="64x48")}"\n'
        '[model]\nbuiltin = "brightness"\n'
        '[run]\nmode = "online"\n' + sinks,
        encoding="utf-8",
    )
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_port_in_use_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["run", str(write_pipeline(tmp_path)), "--serve", str(port), "-q"])
    assert code == 2
    line = one_error_line(capsys)
    assert "--serve" in line and f"port {port} is in use" in line


@pytest.mark.parametrize(
    "bind", ["nonsense", "127.0.0.1:99999", "::1:80", "no-such-host.invalid:0"]
)
def test_a_bad_bind_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bind: str
) -> None:
    assert main(["run", str(write_pipeline(tmp_path)), "--serve", bind, "-q"]) == 2
    line = one_error_line(capsys)
    assert "--serve" in line and "address" in line


def test_an_unset_token_env_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMER_TEST_NO_TOKEN", raising=False)
    sinks = '[[sinks]]\ntype = "web"\nbind = "0.0.0.0:0"\ntoken_env = "STREAMER_TEST_NO_TOKEN"\n'
    assert main(["run", str(write_pipeline(tmp_path, sinks)), "-q"]) == 2
    line = one_error_line(capsys)
    assert "$STREAMER_TEST_NO_TOKEN" in line and "[[sinks]] #" in line


def test_serve_refuses_a_missing_or_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "none.jsonl"), "--bind", "0"]) == 2
    assert "none.jsonl" in one_error_line(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"stream": "a", "pts": 0}\nnot json\n', encoding="utf-8")
    assert main(["serve", str(bad), "--bind", "0"]) == 2
    assert "bad.jsonl: line 2" in one_error_line(capsys)


# -- review ------------------------------------------------------------------------------------


FPS = 10.0


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path]:
    """A video whose frame i has grey level 8*i in its bottom-right corner, and the JSONL of
    a run on it."""
    frames = []
    for i in range(30):
        image = np.full((96, 128, 3), 30 if i < 15 else 200, np.uint8)
        image[64:, 96:] = 8 * i
        frames.append(image)
    video = write_video(tmp_path / "clip.avi", frames, fps=FPS)
    out = tmp_path / "out.jsonl"
    run_args = ["run", "--source", str(video), "--mode", "offline", "--out", str(out), "-q"]
    assert main(run_args) == 0
    return out, video


async def test_serve_reviews_a_finished_run_with_its_video(
    finished_run: tuple[Path, Path],
) -> None:
    out, video = finished_run
    fps = FPS
    records = read_jsonl(out)
    assert len(records) == 30

    server = review_server(str(out), video=str(video), bind="127.0.0.1:0")
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(base + "/ws") as ws:
                hello = json.loads((await ws.receive()).data)
                assert hello["mode"] == "review"
                assert hello["t0"] == 0.0 and hello["t1"] == pytest.approx(2.9)
                streams = json.loads((await ws.receive()).data)["streams"]
                assert [s["stream"] for s in streams] == ["clip"] and streams[0]["video"]
                served = json.loads((await ws.receive()).data)
                assert served["type"] == "outputs" and served["outputs"] == records
            for index in (0, 7, 22, 29):
                t = index / fps + 0.01
                async with session.get(f"{base}/frame/clip.jpg", params={"t": str(t)}) as r:
                    assert r.status == 200 and r.content_type == "image/jpeg"
                    image = decode(await r.read())
                assert image.shape == (96, 128, 3)
                assert abs(float(image[70:, 100:].mean()) - 8 * index) < 4, index
            async with session.get(f"{base}/frame/clip.jpg", params={"t": "x"}) as r:
                assert r.status == 400
            async with session.get(f"{base}/frame/other.jpg", params={"t": "1"}) as r:
                assert r.status == 404
    finally:
        await server.stop()


# -- the hub: bounded, and a slow client skips to the newest ---------------------------------


def test_the_hub_keeps_history_s_per_stream_and_a_ring_of_the_newest() -> None:
    from streamer.frames import Output
    from streamer.web.hub import RING, Hub

    hub = Hub("live", history_s=2.0)
    outputs = [
        Output("a", "frame", i, i, i * 0.01, "x", {"x": 1.0}, 0.0) for i in range(RING + 500)
    ]
    hub.add_outputs(outputs[:1000])
    cursor = hub.seq
    hub.add_outputs(outputs[1000:])
    # a client that read the first 1000 gets what came after, in order
    assert [e.output for e in hub.since(cursor)] == outputs[1000:]
    # one that fell further behind than the ring gets the newest RING, in order
    behind = hub.since(0)
    assert len(behind) == RING and [e.output for e in behind] == outputs[-RING:]
    assert hub.since(hub.seq) == []
    # a page that connects gets the last history_s seconds of each stream
    kept = hub.snapshot()
    assert kept[-1].output is outputs[-1]
    assert kept[0].pts >= outputs[-1].pts - 2.0 and len(kept) == 201
    assert json.loads(kept[-1].json()) == outputs[-1].to_json()


def test_the_serve_command_serves_until_ctrl_c(finished_run: tuple[Path, Path]) -> None:
    """``streamer serve`` as a process (signals are the point): the line that says where,
    the page's data, and a clean exit on SIGINT."""
    import signal
    import subprocess
    import urllib.request

    from media import cli_env, streamer_command

    out, video = finished_run
    process = subprocess.Popen(
        [*streamer_command(), "serve", str(out), "--video", str(video), "--bind", "0"],
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.fullmatch(r"streamer: review at (http://127\.0\.0\.1:\d+/)\n", line)
        assert match, line
        with urllib.request.urlopen(match.group(1) + "api/streams", timeout=10) as response:
            streams = json.loads(response.read())
        assert [s["stream"] for s in streams["streams"]] == ["clip"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_an_audio_stream_has_outputs_and_no_video(tmp_path: Path) -> None:
    audio = parse_config(
        {
            "source": {"uri": "synthetic:tone?duration=1", "pace": "realtime"},
            "model": {"builtin": "energy"},
            "run": {"mode": "online"},
            "sinks": [{"type": "web", "bind": "0"}],
        },
        "test",
    )
    pipeline = build_pipeline(audio)

    async def client(server: WebServer) -> tuple[Any, int, list[dict[str, Any]]]:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/api/streams") as response:
                streams = await response.json()
            async with session.get(base + "/video/tone.mjpg") as response:
                status = response.status
            async with session.ws_connect(base + "/ws") as ws:
                messages = [json.loads(m.data) async for m in ws]
        return streams, status, messages

    summary, (streams, status, messages) = await with_run(pipeline, client)
    assert streams["streams"] == [
        {"stream": "tone", "media": "audio", "rate": 16000.0, "video": False, "ended": False}
    ]
    assert status == 404
    outputs = [o for m in messages if m["type"] == "outputs" for o in m["outputs"]]
    assert len(outputs) == summary["outputs"] > 0
    assert {o["stream"] for o in outputs} == {"tone"}


async def test_a_models_blocks_of_outputs_reach_the_page_as_the_jsonl_has_them(
    tmp_path: Path, in_repo: None, one_torch_thread: None
) -> None:
    """The motion labeller's model stage sends blocks of outputs: the page gets each row
    as the JSONL file has it, and the overlay the newest row."""
    from streamer.build import Overrides, apply_overrides
    from streamer.config import load_config

    out = tmp_path / "out.jsonl"
    overrides = Overrides(
        sources=(SHAPES.format(seconds=2, size="64x48"),),
        mode="online",
        pace="realtime",
        quiet=True,
        out=str(out),
        serve="127.0.0.1:0",
    )
    pipeline = build_pipeline(
        apply_overrides(load_config("pipelines/webcam_labels.toml"), overrides)
    )

    async def client(server: WebServer) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{server.port}/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            return [json.loads(m.data) async for m in ws]

    summary, messages = await with_run(pipeline, client)
    outputs = [o for m in messages if m["type"] == "outputs" for o in m["outputs"]]
    assert outputs == read_jsonl(out) and len(outputs) == summary["outputs"] == 30
    hub = web_sink(pipeline).hub
    assert all(entry.lines is not None for entry in hub.snapshot())  # rows of blocks
    shown = hub.streams["shapes"].shown
    assert shown is not None and shown.end == 29
    assert shown.label == outputs[-1]["label"] and shown.scores == outputs[-1]["scores"]


def test_a_later_sink_that_fails_to_build_releases_the_views_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web sink's socket listens from its build on; when a sink after it is refused
    (an MQTT CA file that does not exist), the build closes that socket at once, even
    while something still holds the server (not at some later garbage collection): the
    same port can be bound again straight away."""
    from streamer.errors import InputError

    made: list[WebServer] = []
    original = WebServer.__init__

    def keep(self: WebServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)  # held here: only an explicit close frees its port

    monkeypatch.setattr(WebServer, "__init__", keep)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    table = config(tmp_path, web={"bind": f"127.0.0.1:{port}"}).model_dump(exclude_unset=True)
    table["sinks"].append({"type": "mqtt", "url": "mqtts://127.0.0.1:1/t", "ca": "/no/such.pem"})
    with pytest.raises(InputError, match=r"no/such\.pem"):
        build_pipeline(parse_config(table, "test"))
    assert len(made) == 1
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
        again.listen(1)
