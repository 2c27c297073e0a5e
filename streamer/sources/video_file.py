"""Video files through OpenCV's FFMPEG backend (MP4, AVI, MKV, MOV, WebM, MPEG, MJPEG)."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Item, StreamEnd, StreamInfo, StreamStart
from streamer.sources import check_readable_file
from streamer.sources.base import GeneratorSource, Pacer, SourceOptions
from streamer.worker import Worker

EXPECTED = "a video file (MP4, AVI, MKV, MOV, WebM, MPEG or another format FFmpeg decodes)"
#: Used when the container does not say its frame rate.
DEFAULT_FPS = 30.0


class VideoFileSource(GeneratorSource):
    """Frames ``[H, W, 3]`` uint8 BGR from a video file, decoded one per worker call.

    Native frame ``n`` has media time ``n / native_fps``. ``options.size`` (width, height)
    resizes with ``INTER_AREA``. ``options.rate`` below the native fps decimates: output
    frame ``k`` is the native frame nearest ``k / rate`` (``n = floor(k * native_fps /
    rate + 0.5)``), indices stay contiguous, ``Frame.rate`` is the requested fps and
    ``pts`` is the kept frame's own native time (its pixels' true time, within half a
    native frame of ``k / rate``). A rate at or above the native fps (or None) delivers
    the native frames: frames are never duplicated. ``options.loop``: at the end the file
    starts again, native numbering (and so pts) continuing from the frames decoded in a
    pass.

    Bad input raises :class:`InputError` naming the file: in ``__init__`` a missing,
    unreadable or empty file, one FFmpeg cannot open, or one whose first frame does not
    decode; while reading, a file whose frames stop decoding well before the count its
    container declares (truncated or corrupt; a shortfall of up to 2 frames or 5 % is
    taken as an inexact declared count and ends the stream normally).
    """

    name: str
    total_frames: int | None

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions, clock: Clock) -> None:
        self.path = Path(path)
        check_readable_file(self.path, EXPECTED)
        if options.rate is not None and not options.rate > 0:
            raise InputError(f"{self.path}: rate must be > 0 fps, got {options.rate}")
        if options.size is not None and (len(options.size) != 2 or min(options.size) < 1):
            raise InputError(f"{self.path}: size must be (width, height) >= 1, got {options.size}")
        probe = _probe(self.path)
        self.options = options
        self.stream = options.stream or self.path.stem
        self.name = f"source:{self.stream}"
        self.native_fps = probe["fps"]
        self.native_size: tuple[int, int] = probe["size"]
        #: Frames the container declares (0 when it does not say); may be inexact.
        self.declared_frames: int = probe["frames"]
        self.size = (int(options.size[0]), int(options.size[1])) if options.size else None
        decimate = options.rate is not None and options.rate < self.native_fps
        self.rate = float(options.rate) if decimate and options.rate else self.native_fps
        #: Native frames per output frame (1.0: every native frame).
        self.step = self.native_fps / self.rate
        if options.loop or self.declared_frames <= 0:
            self.total_frames = None
        else:
            self.total_frames = math.ceil((self.declared_frames - 0.5) / self.step)
        self._meta: dict[str, Any] = {
            "path": str(self.path),
            "native_fps": self.native_fps,
            "native_size": self.native_size,
            "size": self.size or self.native_size,
            "declared_frames": self.declared_frames,
            "fps_known": probe["fps_known"],
        }
        #: The stream, declared before the run (carried by its StreamStart and frames).
        size = self.size or self.native_size
        self.info = StreamInfo.video(self.stream, self.rate, size, total_frames=self.total_frames)
        self._pacer = Pacer(clock, options.pace, options.speed)
        self._worker = Worker(self.name, clock)
        self._cap: Any = None
        self._next = 0  # native number (counted over passes) of the next frame to decode
        self._pass_start = 0  # native number of the current pass's first frame

    @property
    def streams(self) -> list[StreamInfo]:
        """The one stream this source delivers."""
        return [self.info]

    def native_number(self, k: int) -> int:
        """The native frame (counted over passes) that output frame ``k`` shows."""
        return k if self.step == 1.0 else math.floor(k * self.step + 0.5)

    async def _items(self) -> AsyncGenerator[Item, None]:
        try:
            if self._closed:
                return
            await self._worker.call(self._open)
            yield StreamStart(self.stream, "video", self.rate, dict(self._meta), self.info)
            index = 0
            while not self._closed:
                result = await self._worker.call(self._read, self.native_number(index))
                if result is None:
                    break
                image, number = result
                pts = number / self.native_fps
                captured = await self._pacer.wait(pts)
                yield Frame(self.stream, index, pts, captured, image, self.rate, self.info)
                index += 1
            if not self._closed:
                yield StreamEnd(self.stream, frames=index, reason="eof")
        finally:
            await self._shutdown()

    # The methods below run on the worker thread.

    def _open(self) -> None:
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise InputError(f"{self.path}: cannot open; expected {EXPECTED}")
        self._cap = cap

    def _read(self, target: int) -> tuple[np.ndarray, int] | None:
        """Decode up to native frame ``target``: ``(image, number)``, or None at the end."""
        while self._cap is not None:
            while self._next < target and self._cap.grab():
                self._next += 1
            if self._next == target:
                ok, image = self._cap.read()
                if ok:
                    self._next += 1
                    if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
                        image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
                    return image, target
            decoded = self._next - self._pass_start
            self._check_complete(decoded)
            if not self.options.loop or decoded == 0:
                return None
            self._cap.release()
            self._open()
            self._pass_start = self._next
        return None

    def _check_complete(self, decoded: int) -> None:
        declared = self.declared_frames
        if declared > 0 and decoded < declared - max(2, math.ceil(0.05 * declared)):
            raise InputError(
                f"{self.path}: frames stop decoding after frame {decoded} of the {declared} "
                "the container declares; the file is truncated or corrupt"
            )

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _probe(path: Path) -> dict[str, Any]:
    """Open ``path`` with FFmpeg and decode its first frame; its fps, size and frame count."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: not a video file FFmpeg can open; expected {EXPECTED}")
        ok, image = cap.read()
        if not ok or image is None:
            raise InputError(f"{path}: no decodable video frame; expected {EXPECTED}")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    fps_known = math.isfinite(fps) and 0 < fps < 10_000
    return {
        "fps": fps if fps_known else DEFAULT_FPS,
        "fps_known": fps_known,
        "size": (int(image.shape[1]), int(image.shape[0])),
        "frames": int(count) if math.isfinite(count) and count > 0 else 0,
    }
