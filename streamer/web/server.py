"""The live view's HTTP server (aiohttp): the page, its files, the MJPEG video of each
stream, a WebSocket of outputs and health, and their JSON twins.

Routes (each needs the token when there is one: ``?token=`` or ``Authorization: Bearer``,
else 401):

- ``GET /``: the page; ``GET /static/...``: its script, style and vendored uPlot;
- ``GET /video/{stream}.mjpg``: ``multipart/x-mixed-replace`` JPEGs of the annotated
  frames. One frame in flight per client: the next is the newest there is once the last
  was handed to the kernel, so a slow client gets fewer frames, never old ones; a client
  whose write does not finish within ``stall_timeout_s`` is dropped.
- ``GET /ws``: server -> client JSON messages ``hello``, ``streams``, ``outputs`` (batched,
  newest last), ``health``; at most :data:`WS_MAX_RATE` sends a second, each client with
  a cursor into the hub's ring (a slow one skips to the newest). Messages from the client
  are ignored, but for ``{"type": "ping"}`` (answered ``pong``): the page changes nothing.
- ``GET /api/streams``, ``GET /api/health``: the same as the WebSocket's messages.
- review (``streamer serve``): ``GET /frame/{stream}.jpg?t=SECONDS``.

Loopback servers also refuse a ``Host`` that is not loopback (DNS rebinding), and every
server refuses a WebSocket whose ``Origin`` is another site.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from aiohttp import WSMsgType, web

from streamer.web.bind import Bind, is_loopback, is_wildcard, open_socket, url_host
from streamer.web.hub import Hub

log = logging.getLogger(__name__)

#: WebSocket sends a second per client, at most.
WS_MAX_RATE = 10.0
#: Seconds between health messages on a WebSocket.
HEALTH_PERIOD_S = 0.5
#: Seconds a stopping server waits for its handlers before cancelling them.
SHUTDOWN_S = 1.0
#: The kernel's send buffer of an MJPEG client (bytes): a few frames, so that a slow
#: client's frames are not seconds old when they arrive (and its memory is bounded).
VIDEO_SNDBUF = 128 * 1024
_BOUNDARY = "frame"
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:;"
    " style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


class FrameSource(Protocol):
    """What serves a review's ``/frame/{stream}.jpg?t=``: the JPEG at ``t`` seconds."""

    streams: frozenset[str]

    async def jpeg(self, stream: str, t: float) -> bytes: ...


def static_dir() -> Path:
    """The page's files (installed with the package)."""
    return Path(str(resources.files("streamer.web") / "static"))


class WebServer:
    """Serves ``hub`` on ``bind`` (or on ``sock``, already listening). The socket is
    opened here, so a port in use is an InputError now and :attr:`port` is known (port
    0: a free one). ``token``: what every request must carry (None: nothing)."""

    def __init__(
        self,
        hub: Hub,
        bind: Bind,
        *,
        token: str | None = None,
        stall_timeout_s: float = 10.0,
        frames: FrameSource | None = None,
        sock: socket.socket | None = None,
        where: str = "web",
    ) -> None:
        self.hub = hub
        self.token = token
        self.stall_timeout_s = stall_timeout_s
        self.frames = frames
        self._sock = sock if sock is not None else open_socket(bind, where)
        self.host = bind.host
        self.port = int(self._sock.getsockname()[1])
        self._loopback = bind.loopback
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._index: str | None = None
        #: clients dropped because they stopped reading (MJPEG or WebSocket)
        self.stalled = 0
        #: clients connected now, by kind ("video", "ws")
        self.clients: dict[str, int] = {"video": 0, "ws": 0}

    @property
    def url(self) -> str:
        """Where to open the page (this machine's loopback for a wildcard address)."""
        host = self.host
        if is_wildcard(host):
            host = "::1" if ":" in host else "127.0.0.1"
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        return f"http://{url_host(host)}:{self.port}/{query}"

    def announce(self, what: str = "live view") -> None:
        """The one line on stderr that says where the page is."""
        where = f" (listening on {self.host}: every interface)" if is_wildcard(self.host) else ""
        print(f"streamer: {what} at {self.url}{where}", file=sys.stderr, flush=True)

    # -- lifetime ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{path:.+}", self._static)
        app.router.add_get("/video/{stream}.mjpg", self._video)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/streams", self._api_streams)
        app.router.add_get("/api/health", self._api_health)
        if self.frames is not None:
            app.router.add_get("/frame/{stream}.jpg", self._frame)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_S
        )
        await runner.setup()
        site = web.SockSite(runner, self._sock)
        await site.start()
        self._runner = runner
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def discard(self) -> None:
        """Close the listening socket of a server that was never started."""
        if self._runner is None:
            self._sock.close()

    async def stop(self) -> None:
        """Wake and end every client, stop listening; idempotent."""
        self.hub.close()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._sock.close()
        close = getattr(self.frames, "close", None)
        if callable(close):
            close()

    # -- security ------------------------------------------------------------------------
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._loopback and not is_loopback(_host_name(request.host)):
            raise web.HTTPForbidden(text="this live view is served to this machine only\n")
        if self.token is not None and not self._authorized(request):
            raise web.HTTPUnauthorized(
                text="a token is needed: open the URL streamer printed (?token=...)\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        assert self.token is not None
        given = request.query.get("token")
        if given is None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        if given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    # -- the page ------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        if self._index is None:
            self._index = (static_dir() / "index.html").read_text(encoding="utf-8")
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        text = self._index.replace("{{query}}", html.escape(query))
        return web.Response(text=text, content_type="text/html", headers=_PAGE_HEADERS)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        root = static_dir().resolve()
        path = (root / request.match_info["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        kind = _TYPES.get(path.suffix)
        headers = {**_HEADERS, **({"Content-Type": kind} if kind else {})}
        return web.FileResponse(path, headers=headers)

    async def _api_streams(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.streams_message(), headers=_HEADERS)

    async def _api_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.health(), headers=_HEADERS)

    # -- video ---------------------------------------------------------------------------
    async def _video(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["stream"]
        view = self.hub.streams.get(name)
        if view is None or not view.video:
            raise web.HTTPNotFound(text=f"no video stream '{name}'\n")
        response = web.StreamResponse(
            headers={
                **_HEADERS,
                "Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
            }
        )
        await response.prepare(request)
        transport = request.transport
        if transport is not None:  # wait on each frame until it is all in the kernel's hands
            transport.set_write_buffer_limits(high=0)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIDEO_SNDBUF)
        view.watchers += 1
        self.clients["video"] += 1
        seen = 0
        # Each part is followed at once by the next part's boundary: a browser shows a part
        # only once it sees the boundary after it (else it would show the one before last).
        boundary = f"\r\n--{_BOUNDARY}\r\n".encode("ascii")
        try:
            await response.write(boundary[2:])
            while True:
                got = await self.hub.next_frame(name, seen)
                if got is None:
                    break
                seen, jpeg = got
                head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                try:
                    async with asyncio.timeout(self.stall_timeout_s):
                        await response.write(head.encode("ascii") + jpeg + boundary)
                        await request.writer.drain()
                except TimeoutError:
                    self._drop_stalled(request, f"video of '{name}'")
                    return response
        except (ConnectionResetError, ConnectionError):
            return response
        finally:
            view.watchers -= 1
            self.clients["video"] -= 1
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def _drop_stalled(self, request: web.Request, what: str) -> None:
        self.stalled += 1
        log.info("web: dropped a client of the %s: it stopped reading", what)
        if request.transport is not None:
            request.transport.abort()

    async def _frame(self, request: web.Request) -> web.Response:
        assert self.frames is not None
        name = request.match_info["stream"]
        if name not in self.frames.streams:
            raise web.HTTPNotFound(text=f"no video for stream '{name}'\n")
        try:
            t = float(request.query.get("t", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="t: seconds, a number\n") from None
        if not t == t or abs(t) == float("inf"):  # NaN or infinite
            raise web.HTTPBadRequest(text="t: seconds, a finite number\n")
        jpeg = await self.frames.jpeg(name, max(0.0, t))
        return web.Response(body=jpeg, content_type="image/jpeg", headers=_HEADERS)

    # -- WebSocket -----------------------------------------------------------------------
    async def _tick(self) -> None:
        """Wake the WebSocket clients together, at most :data:`WS_MAX_RATE` times a second,
        when the hub changed."""
        hub = self.hub
        seen = hub.version
        while not hub.closed:
            await asyncio.sleep(1.0 / WS_MAX_RATE)
            if hub.version != seen:
                seen = hub.version
                hub.ticks.notify()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            raise web.HTTPForbidden(text="a page of another site may not read this view\n")
        # no per-message deflate: each client's copy would be compressed on its own, on
        # the run's event loop, for little gain on small JSON messages
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 16, compress=False)
        await ws.prepare(request)
        self.clients["ws"] += 1
        sender = asyncio.get_running_loop().create_task(self._ws_send(ws, request))
        try:
            async for message in ws:  # control frames are handled by aiohttp while reading
                if message.type == WSMsgType.TEXT and _is_ping(message.data):
                    with contextlib.suppress(ConnectionError):
                        await ws.send_str('{"type":"pong"}')
                if sender.done():
                    break
        finally:
            self.clients["ws"] -= 1
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            await ws.close()
        return ws

    async def _ws_send(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        """Send the state, then what changed, at most :data:`WS_MAX_RATE` times a second."""
        hub = self.hub
        try:
            await self._send(ws, request, json.dumps(hub.hello()))
            await self._send(ws, request, json.dumps(hub.streams_message()))
            streams_seen = hub.streams_version
            texts, cursor = hub.snapshot_messages()
            for text in texts:
                await self._send(ws, request, text)
            if hub.mode == "live":
                await self._send(ws, request, hub.health_text())
            health_due = asyncio.get_running_loop().time() + HEALTH_PERIOD_S
            while True:
                await hub.wait_tick(HEALTH_PERIOD_S)
                closing = hub.closed  # then what came last is sent, and the socket closed
                if hub.streams_version != streams_seen:
                    streams_seen = hub.streams_version
                    await self._send(ws, request, json.dumps(hub.streams_message()))
                texts, cursor = hub.outputs_since(cursor)
                for text in texts:
                    await self._send(ws, request, text)
                now = asyncio.get_running_loop().time()
                if hub.mode == "live" and (now >= health_due or closing):
                    health_due = now + HEALTH_PERIOD_S
                    await self._send(ws, request, hub.health_text())
                if closing:
                    break
        except (ConnectionError, _Stalled):
            pass
        finally:
            if not ws.closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(SHUTDOWN_S):
                        await ws.close()

    async def _send(self, ws: web.WebSocketResponse, request: web.Request, text: str) -> None:
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                await ws.send_str(text)
        except TimeoutError:
            self._drop_stalled(request, "WebSocket")
            raise _Stalled from None


class _Stalled(Exception):
    """A client did not take a message within the stall time-out."""


def _is_ping(data: Any) -> bool:
    try:
        message = json.loads(data)
    except (TypeError, ValueError):
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host
