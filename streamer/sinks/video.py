"""Annotated video: the input frames of one stream with each frame's label, a score bar
per label and the latency drawn on (:mod:`streamer.sinks.overlay`), written with OpenCV
and/or shown in a preview window.

How frames meet outputs. The pipeline's frame tap hands this sink the stream's frames
(:meth:`VideoSink.run_frames`, its own task); outputs come through :meth:`VideoSink.send`.

- ``realtime``: a frame is written as soon as it arrives, with the newest output of its
  stream available at that moment (what a live viewer sees; the label lags the picture by
  the model's latency).
- ``online`` / ``offline`` (lossless): a frame waits until an output that ends at or after
  its index arrives, then shows the output that covers it (matched by stream and frame
  index; the earliest such window for a window head), or else the newest output before it.
  Offline outputs come only after the whole stream was read, so frames wait in a buffer
  bounded by ``max_buffer_mb``: when it is full, the oldest waiting frame is written at
  once with the newest output known before it ("no output yet" when there is none), and
  a warning says so once. At the end of the run every frame still waiting is written.

Encoding and the window run on the sink's own :class:`~streamer.worker.Worker` thread,
never on the event loop. The file is checked when the sink is made and created only at
its stream's start (or first frame), so a run refused before it starts leaves nothing
behind; ``aclose`` always releases the writer (an mp4 is valid only once released), even
during an abort, so the frames written so far stay a playable file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from streamer.channels import Channel
from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Marker, Output, StreamStart
from streamer.options import Bool, Float, Str
from streamer.safety import check_writable
from streamer.sinks.base import SinkContext, SinkOptions
from streamer.worker import Worker

log = logging.getLogger(__name__)

#: The codec chosen by the file's suffix (all three are written by OpenCV's FFmpeg
#: backend): mp4v plays in video players, MJPG is near lossless, VP8 (.webm) also plays
#: in browsers but encodes several times slower.
CODECS: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
#: Output kinds a frame can show (one label and scores per frame or window).
SHOWN_KINDS = frozenset({"frame", "window"})
DEFAULT_BUFFER_MB = 512.0
DEFAULT_FPS = 30.0


def video_codec(path: Path, codec: str | None, name: str) -> str:
    """The FourCC to write ``path`` with: ``codec``, or the one its suffix implies."""
    if codec is not None:
        return codec
    chosen = CODECS.get(path.suffix.lower())
    if chosen is None:
        known = ", ".join(f"{suffix} ({fourcc})" for suffix, fourcc in CODECS.items())
        raise InputError(
            f"{name}: {path}: cannot tell the video codec from the suffix"
            f" '{path.suffix}'; use {known}, or give codec"
        )
    return chosen


def check_video_path(path: Path, name: str, codec: str | None = None) -> str:
    """Refuse, touching nothing, a video path that cannot be written; returns its codec."""
    check_writable(path, name)
    return video_codec(path, codec, name)


def check_display(name: str) -> None:
    """Refuse a preview window where there is no display to put it on."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise InputError(
            f"{name}: no display for a preview window ($DISPLAY and $WAYLAND_DISPLAY are"
            " unset); write the annotated video with --video-out FILE.mp4 instead"
        )


class OutputMatcher:
    """Which output each frame of one stream shows (outputs of a stream arrive in order of
    their last frame, as the frame and window heads emit them)."""

    def __init__(self) -> None:
        self._outputs: deque[Output] = deque()
        self.newest_end = -1
        self.latest: Output | None = None

    def add(self, output: Output) -> None:
        if output.kind not in SHOWN_KINDS:
            return
        self._outputs.append(output)
        self.newest_end = max(self.newest_end, output.end)
        self.latest = output

    def ready(self, index: int) -> bool:
        """Whether frame ``index``'s output is known (an output ends at or after it)."""
        return self.newest_end >= index

    def shown(self, index: int) -> Output | None:
        """The earliest output covering frame ``index``, else the newest one before it."""
        before = None
        for output in self._outputs:
            if output.start <= index <= output.end:
                return output
            if output.end < index:
                before = output
        return before

    def forget_before(self, index: int) -> None:
        """Drop outputs no frame from ``index`` on can show (keeps the newest before it)."""
        outputs = self._outputs
        while len(outputs) >= 2 and outputs[0].end < index and outputs[1].end < index:
            outputs.popleft()


class VideoSink:
    """Writes stream ``stream``'s frames, annotated, to ``path`` and/or a preview window.

    ``wait``: match outputs by frame index (lossless modes) rather than show the newest
    (realtime). ``fps``: the file's frame rate (default: the frames' rate). ``codec``: a
    FourCC (default: by suffix, :data:`CODECS`). ``where`` names the sink in errors.
    """

    def __init__(
        self,
        path: Path | None,
        stream: str,
        *,
        wait: bool,
        fps: float | None = None,
        codec: str | None = None,
        preview: bool = False,
        max_buffer_mb: float = DEFAULT_BUFFER_MB,
        clock: Clock | None = None,
        where: str = "video sink",
    ) -> None:
        if path is None and not preview:
            raise InputError(f"{where}: give a path, or preview = true")
        self.path = path
        self.stream = stream
        self.frame_streams = frozenset({stream})
        self.wait = wait
        self.fps = fps
        self.preview = preview
        # a window only shows: a slow one should lose outputs, not hold up the run
        self.default_policy = "block" if path is not None else "drop-oldest"
        self.max_buffer_bytes = int(max_buffer_mb * (1 << 20))
        label = path.name if path is not None else "preview"
        self.name = f"sink:video:{label}"
        self.codec = check_video_path(path, where, codec) if path is not None else None
        if preview:
            check_display(where)
        self.matcher = OutputMatcher()
        self.frames_written = 0
        self.frames_unmatched = 0  # written before their output came (buffer full)
        self._pending: deque[Frame] = deque()
        self._pending_bytes = 0
        self._lock = asyncio.Lock()  # one writer at a time: the frame task or send()
        self._thread_lock = threading.Lock()  # the writer between its thread and aclose
        self._writer: Any = None
        self._window: str | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the file
        self._declared_size: tuple[int, int] | None = None
        self._closed = False
        self._worker = Worker(self.name, clock)

    # -- outputs -------------------------------------------------------------------------
    async def send(self, output: Output) -> None:
        if output.stream != self.stream or self._closed:
            return
        self.matcher.add(output)
        if self.wait and self._pending:
            await self._flush()

    # -- frames --------------------------------------------------------------------------
    async def run_frames(self, inbox: Channel[Frame | Marker]) -> None:
        """Read the frame tap to its end: write (realtime) or queue (lossless) each frame."""
        async for item in inbox:
            if isinstance(item, StreamStart):
                if item.stream == self.stream and item.info is not None:
                    self._declared_size = self._declared_size or item.info.size
                    if self.fps is None and item.info.rate > 0:
                        self.fps = item.info.rate
                    if self._declared_size is not None and self.path is not None:
                        # now rather than at the first frame: opening takes a while, and
                        # in realtime the frames behind it would be lost
                        await self._worker.call(self._open_now, *self._declared_size)
                continue
            if not isinstance(item, Frame) or item.stream != self.stream:
                continue  # gaps and ends change nothing: a frame shows what it can
            if not self.wait:
                await self._write(item, self.matcher.latest)
                continue
            self._pending.append(item)
            self._pending_bytes += _nbytes(item)
            await self._flush()

    async def _flush(self, everything: bool = False) -> None:
        """Write the waiting frames whose output is known (all of them with
        ``everything``), and the oldest while the buffer is over its bound."""
        async with self._lock:
            while self._pending:
                frame = self._pending[0]
                over = self._pending_bytes > self.max_buffer_bytes
                if not (everything or over or self.matcher.ready(frame.index)):
                    return
                if not self.matcher.ready(frame.index) and over:
                    self._note_overflow()
                self._pending.popleft()
                self._pending_bytes -= _nbytes(frame)
                await self._write(frame, self.matcher.shown(frame.index))
                self.matcher.forget_before(frame.index)

    def _note_overflow(self) -> None:
        if self.frames_unmatched == 0:
            log.warning(
                "%s: over %g MiB of frames wait for their outputs; the oldest are written"
                " with the newest output known before them (raise max_buffer_mb, or run in"
                " online mode)",
                self.name,
                self.max_buffer_bytes / (1 << 20),
            )
        self.frames_unmatched += 1

    async def _write(self, frame: Frame, output: Output | None) -> None:
        await self._worker.call(self._encode, frame.data, frame.rate, output)

    # -- on the worker thread ------------------------------------------------------------
    def _encode(self, data: Any, rate: float, output: Output | None) -> None:
        """Draw the panel on a copy of ``data`` ``[H, W, 3]`` BGR; write and/or show it."""
        import cv2  # here, not at import: a pipeline file naming no video sink never loads it

        from streamer.sinks.overlay import annotate

        image = _bgr(data)
        with self._thread_lock:
            if self._closed:
                return
            if self.path is not None:
                self._open(image.shape[1], image.shape[0], rate)
            if self._size is not None and (image.shape[1], image.shape[0]) != self._size:
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            canvas = annotate(image, output)
            if self._writer is not None:
                self._writer.write(canvas)
            self.frames_written += 1  # here: a write an abort did not wait for still counts
            if self.preview:
                self._window = self._window or f"streamer: {self.stream}"
                cv2.imshow(self._window, canvas)
                cv2.waitKey(1)

    def _open_now(self, width: int, height: int) -> None:
        with self._thread_lock:
            if not self._closed:
                self._open(width, height, self.fps or DEFAULT_FPS)

    def _open(self, width: int, height: int, rate: float) -> None:
        if self._writer is not None or self.path is None or self.codec is None:
            return
        import cv2

        fps = self.fps or (rate if rate > 0 else DEFAULT_FPS)
        writer = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter.fourcc(*self.codec), fps, (width, height)
        )
        if not writer.isOpened():
            raise InputError(
                f"{self.path}: cannot write video: OpenCV has no {self.codec} encoder for"
                f" '{self.path.suffix}' files here (try .mp4 or .avi)"
            )
        self._writer, self._size = writer, (width, height)

    def _release(self) -> None:
        """Finish the file (idempotent); with no frame written, an empty video of the
        declared size replaces whatever the path held, as a JSONL file would be emptied."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            if self._writer is None and self.path is not None and self._declared_size:
                with contextlib.suppress(InputError):
                    self._open(*self._declared_size, self.fps or DEFAULT_FPS)
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.release()
            if self._window is not None:
                import cv2

                window, self._window = self._window, None
                with contextlib.suppress(cv2.error):
                    cv2.destroyWindow(window)

    # -- closing ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Write the frames still waiting (not during a cancellation: an abort keeps only
        what was written) and release the file; idempotent."""
        if self._closed:
            return
        task = asyncio.current_task()
        try:
            if not (task is not None and task.cancelling()):
                if self._pending:
                    await self._flush(everything=True)
                await self._worker.call(self._release)
        finally:
            # Synchronous on purpose: it must complete even while the run is cancelled. It
            # waits only for the frame being encoded, if any.
            self._release()
            self._pending.clear()
            self._worker.close()


def _nbytes(frame: Frame) -> int:
    return int(getattr(frame.data, "nbytes", 0))


def _bgr(data: Any) -> np.ndarray[Any, Any]:
    """``data`` as ``[H, W, 3]`` uint8 BGR (grey frames converted)."""
    import cv2

    image = np.asarray(data)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    return image


class VideoSinkConfig(SinkOptions):
    """``type = "video"``: the input frames of one video stream with their labels drawn on
    (see :class:`VideoSink`), written to ``path`` and/or shown (``preview``)."""

    type: Literal["video"]
    path: Annotated[Str, Field(min_length=1)] | None = None
    stream: Annotated[Str, Field(min_length=1, max_length=200)] | None = None
    fps: Annotated[Float, Field(gt=0, le=1000)] | None = None
    codec: Literal["mp4v", "MJPG", "VP80"] | None = None
    preview: Bool = False
    max_buffer_mb: Annotated[Float, Field(gt=0, le=1 << 20)] = DEFAULT_BUFFER_MB

    @model_validator(mode="after")
    def _consistent(self) -> VideoSinkConfig:
        if self.path is None and not self.preview:
            raise ValueError(
                "path: a video sink writes a file (path = ...) or shows a window (preview = true)"
            )
        return self


def build_video(config: VideoSinkConfig, context: SinkContext) -> VideoSink:
    """A video sink of the stream it names, or of the first video stream declared."""
    name = context.name
    flag = name.startswith("--")
    path = Path(config.path) if config.path is not None else None
    if path is not None:
        check_video_path(path, name if flag else f"{name} path", config.codec)
    if config.preview:
        check_display(name if flag else f"{name} preview")
    infos = [info for source in context.sources for info in source.streams]
    video = [info for info in infos if info.media == "video"]
    what = name if flag else f"{name} (video{f', {path}' if path else ''})"
    if not video:
        audio = ", ".join(f"'{info.stream}'" for info in infos)
        raise InputError(
            f"{what}: the sources deliver no video stream (only audio: {audio}); a video"
            " sink draws on video frames"
        )
    if config.stream is not None and config.stream not in {info.stream for info in video}:
        known = ", ".join(f"'{info.stream}'" for info in video)
        raise InputError(
            f"{what}: stream '{config.stream}' is not a video stream of the sources"
            f" (video streams: {known})"
        )
    info = next(info for info in video if config.stream in (None, info.stream))
    return VideoSink(
        path,
        info.stream,
        wait=context.mode != "realtime",
        fps=config.fps or (info.rate if info.rate > 0 else None),
        codec=config.codec,
        preview=config.preview,
        max_buffer_mb=config.max_buffer_mb,
        clock=context.clock,
        where=what,
    )
