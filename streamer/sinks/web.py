"""The live view: a web page of the run (``[[sinks]] type = "web"``, ``--serve PORT``).

The sink fills a :class:`~streamer.web.hub.Hub` that the server's handlers read
(:mod:`streamer.web.server`): its outputs (``send``), the start and end of every stream,
and for each video stream only its NEWEST annotated frame as a JPEG. Frames come through
the frame tap (``run_frames``, its own task); a frame is encoded only while someone
watches its stream, at most ``max_fps`` a second per stream, and never while that
stream's previous frame is still being encoded (the frame is skipped: the tap is never
held up). Drawing and encoding run on the sink's :class:`~streamer.worker.Worker`.

The server's socket is opened when the sink is made, so a port in use refuses the run
before it starts; the server starts with the run (one line on stderr says where) and
stops when the sink closes. Its delivery is ``drop-oldest``: a view never holds up the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from streamer.blocks import OutputBlock
from streamer.channels import Channel
from streamer.clock import Clock
from streamer.frames import Frame, Marker, Output, StreamEnd, StreamInfo, StreamStart
from streamer.options import Float, Int, Str
from streamer.sinks.base import ALL_STREAMS, SinkContext, SinkOptions
from streamer.web.bind import parse_bind, resolve_token
from streamer.web.health import HealthProbe
from streamer.web.hub import Hub
from streamer.worker import Worker

if TYPE_CHECKING:
    from streamer.web.server import WebServer

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:8080"


class WebSink:
    """Feeds ``server``'s hub from the run; ``infos``: the streams declared before it."""

    default_policy = "drop-oldest"
    takes_blocks = True  # a block's rows keep its JSONL lines (made only if a client needs)

    def __init__(
        self,
        server: WebServer,
        infos: Sequence[StreamInfo],
        *,
        max_fps: float = 15.0,
        jpeg_quality: int = 80,
        clock: Clock | None = None,
    ) -> None:
        self.server = server
        self.hub = server.hub
        self.name = f"sink:web:{server.port}"
        # every stream, also one that starts during the run: its start and end markers
        # say when it is live (audio frames are skipped at once)
        self.frame_streams = ALL_STREAMS
        self.max_fps = max_fps
        self.jpeg_quality = jpeg_quality
        for info in infos:
            self.hub.add_stream(info.stream, info.media, info.rate, info.media == "video")
        self._video = {info.stream for info in infos if info.media == "video"}
        self._next_due: dict[str, float] = {}
        self._encoding: dict[str, asyncio.Future[bytes]] = {}
        self._failure: BaseException | None = None
        self._started = False
        self._closed = False
        self._worker = Worker(self.name, clock)
        self.frames_encoded = 0

    async def start(self) -> None:
        """Start serving (at the run's start) and say where; idempotent."""
        if self._started or self._closed:
            return
        self._started = True
        await self.server.start()
        self.server.announce()

    # -- outputs -------------------------------------------------------------------------
    async def send(self, output: Output) -> None:
        self.hub.add_outputs((output,))

    async def send_many(self, outputs: Sequence[Output | OutputBlock]) -> None:
        for item in outputs:
            if isinstance(item, OutputBlock):
                self.hub.add_block(item)
            else:
                self.hub.add_outputs((item,))

    # -- frames --------------------------------------------------------------------------
    async def run_frames(self, inbox: Channel[Frame | Marker]) -> None:
        await self.start()
        async for item in inbox:
            if isinstance(item, Frame):
                self._offer(item)
            elif isinstance(item, StreamStart):
                info = item.info
                if info is not None:
                    video = info.media == "video"
                    if video:
                        self._video.add(item.stream)
                    self.hub.add_stream(item.stream, info.media, info.rate, video)
                elif item.stream in self.hub.streams:
                    view = self.hub.streams[item.stream]
                    self.hub.add_stream(item.stream, view.media, view.rate, view.video)
            elif isinstance(item, StreamEnd):
                self.hub.end_stream(item.stream)
            if self._failure is not None:
                raise self._failure

    def wants_frame(self, frame: Frame) -> bool:
        """Whether the pump should put ``frame`` in the tap: only a video frame that is
        watched, due, and whose stream is not busy encoding (the rest never costs a
        channel round trip; :meth:`_offer` decides again)."""
        stream = frame.stream
        if stream not in self._video or stream in self._encoding:
            return False
        view = self.hub.streams.get(stream)
        return (
            view is not None
            and view.watchers > 0
            and time.monotonic() >= self._next_due.get(stream, 0.0)
        )

    def _offer(self, frame: Frame) -> None:
        """Encode ``frame`` if the view still wants it (:meth:`wants_frame`: the tap may
        hold frames that were due when the pump asked)."""
        if not self.wants_frame(frame):
            return
        stream = frame.stream
        # 10 % short of the period: a source at exactly max_fps, whose frames arrive a
        # hair early or late, gets all its frames shown, not every other one
        self._next_due[stream] = time.monotonic() + 0.9 / self.max_fps
        shown = self.hub.streams[stream].shown
        future = self._worker.start(_encode, frame.data, shown, self.jpeg_quality)
        self._encoding[stream] = future
        future.add_done_callback(lambda done: self._encoded(stream, done))

    def _encoded(self, stream: str, future: asyncio.Future[bytes]) -> None:
        self._encoding.pop(stream, None)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self._failure = self._failure or error
            return
        self.frames_encoded += 1
        self.hub.set_jpeg(stream, future.result())

    # -- closing ---------------------------------------------------------------------------
    def discard(self) -> None:
        """Release the listening socket and the encoder of a sink that never ran (a later
        part of the pipeline failed to build)."""
        if self._started or self._closed:
            return
        self._closed = True
        self.server.discard()
        self._worker.close()

    async def aclose(self) -> None:
        """Stop serving (every client is ended) and the encoder; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for future in list(self._encoding.values()):
                future.cancel()
            await self.server.stop()
        finally:
            self._worker.close()


def _encode(data: Any, output: Output | None, quality: int) -> bytes:
    """``data`` ``[H, W, 3]`` with ``output``'s panel drawn on, as JPEG (on the worker)."""
    import cv2

    from streamer.sinks.overlay import annotate
    from streamer.sinks.video import _bgr

    canvas = annotate(_bgr(data), output)
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame as JPEG")
    return bytes(encoded)


class WebSinkConfig(SinkOptions):
    """``type = "web"``: the live view in a browser (see :class:`WebSink`)."""

    type: Literal["web"]
    bind: Annotated[Str, Field(min_length=1, max_length=300)] = DEFAULT_BIND
    token: Annotated[Str, Field(min_length=8, max_length=1000)] | None = None
    token_env: Annotated[Str, Field(min_length=1, max_length=200)] | None = None
    history_s: Annotated[Float, Field(gt=0, le=3600)] = 30.0
    jpeg_quality: Annotated[Int, Field(ge=1, le=100)] = 80
    max_fps: Annotated[Float, Field(gt=0, le=240)] = 15.0
    stall_timeout_s: Annotated[Float, Field(gt=0, le=3600)] = 10.0

    @model_validator(mode="after")
    def _one_token(self) -> WebSinkConfig:
        if self.token is not None and self.token_env is not None:
            raise ValueError("token: give token or token_env, not both")
        return self


def build_web(config: WebSinkConfig, context: SinkContext) -> WebSink:
    """A web sink serving every stream of the sources; its socket is listening already."""
    name = context.name
    where = name if name.startswith("--") else f"{name} bind"
    bind = parse_bind(config.bind, where)
    token = resolve_token(bind, config.token, config.token_env, name)
    infos = [info for source in context.sources for info in source.streams]
    from streamer.web.server import WebServer  # aiohttp: only for a run that serves

    hub = Hub("live", config.history_s, health=HealthProbe(context.metrics))
    server = WebServer(hub, bind, token=token, stall_timeout_s=config.stall_timeout_s, where=where)
    return WebSink(
        server,
        infos,
        max_fps=config.max_fps,
        jpeg_quality=config.jpeg_quality,
        clock=context.clock,
    )
