"""Cameras through OpenCV: ``camera:N`` (a local device) or ``camera:URL`` (an IP camera).

A reader thread grabs continuously, so the driver's buffer never holds stale frames, and
stamps each frame with the pipeline clock at grab. Frames reach the loop through a
:class:`~streamer.sources.push.PushBuffer` (newest wins in realtime mode; the oldest is
dropped, and said so, in online mode), so a slow pipeline never blocks the camera.

URLs are whatever OpenCV's FFmpeg backend opens: ``http://`` MJPEG, ``rtsp://``,
``udp://`` or ``tcp://`` MPEG-TS, files. Options: ``rate`` (deliver at most this many frames
a second, decimating by capture time; a local device is also asked for it), ``size`` (resize
to ``(width, height)``; a local device is asked for it first), ``timeout`` (seconds for
opening and for each read). The first connection must succeed within ``timeout`` (else an
:class:`InputError` naming the URL and the time-out). After that, a dropped stream is
reopened with capped exponential back-off (so is the first connection with ``retry``, when
the camera is one of several sources), and when frames flow again one ``Gap`` (reason
``reconnect``) says how long the stream was gone and how many frames that was at the
nominal rate. Stopping releases the capture from any state: connecting, running, waiting to
reconnect.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from typing import Any

import numpy as np

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, StreamInfo
from streamer.sources.base import SourceOptions
from streamer.sources.push import PushBuffer, PushPolicy, PushSource

log = logging.getLogger(__name__)

#: Frames per second assumed when neither the options nor the camera say.
DEFAULT_FPS = 30.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)


def parse_camera(uri: str) -> int | str:
    """``camera:0`` -> 0, ``camera:rtsp://...`` -> the URL; InputError for anything else."""
    target = uri.removeprefix("camera:")
    if target.isdigit():
        return int(target)
    if _URL.match(target):
        return target
    raise InputError(
        f"{uri}: expected camera:N (a device index such as camera:0) or camera:URL "
        "(http://, rtsp://, udp://, tcp://)"
    )


class CameraSource(PushSource):
    """One camera as a live video stream (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        options: SourceOptions,
        clock: Clock,
        *,
        timeout: float = 5.0,
        policy: PushPolicy = "latest",
        capacity: int = 32,
    ) -> None:
        super().__init__(PushBuffer(f"camera:{uri}", capacity, policy))
        self.uri = uri
        self.target = parse_camera(uri)
        self.clock = clock
        self.options = options
        self.timeout = timeout
        self.stream = options.stream or _stream_name(self.target)
        self.name = f"source:{self.stream}"
        self.media = "video"
        self.requested_rate = options.rate
        self.rate = float(options.rate or DEFAULT_FPS)
        self.period = 1.0 / self.rate
        self.size = options.size
        self.total_frames = None
        self.meta: dict[str, object] = {"uri": uri, "live": True}
        self.info = self._describe(None)
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: Any = None
        self._cap_lock = threading.Lock()
        self._grabbed_first = False
        self._first_grab_at = 0.0

    # -- device lifecycle (called by PushSource on a thread) --------------------------------
    def _start_device(self) -> None:
        """Open the first connection and grab its first frame (each within ``timeout``),
        then start the reader thread."""
        cap = self._open()
        if cap is not None and not self._first_grab(cap):
            cap = None
            if not self.options.retry:
                raise InputError(
                    f"{self.uri}: the camera opened but delivered no frame within the"
                    f" {self.timeout:g} s time-out"
                )
        if cap is None and self.options.retry and not self._stop.is_set():
            log.warning(
                "%s: cannot open the camera within %g s; retrying with back-off",
                self.uri,
                self.timeout,
            )
            cap = self._reconnect()
        if cap is None:
            if self._stop.is_set():
                return
            raise InputError(
                f"{self.uri}: cannot open the camera within the {self.timeout:g} s time-out"
                + ("" if isinstance(self.target, str) else " (is it connected, or busy?)")
            )
        fps = float(cap.get(_cv2().CAP_PROP_FPS) or 0.0)
        nominal = fps if 0 < fps <= 1000 else DEFAULT_FPS
        if self.requested_rate is None:
            self.rate = nominal
        self.period = 1.0 / self.rate
        native_size = _size_of(cap)
        self.meta.update(native_fps=nominal, native_size=native_size)
        self.info = self._describe(native_size)  # before the reader makes frames with it
        with self._cap_lock:
            self._cap = cap
        self._thread = threading.Thread(target=self._read_loop, name=self.name, daemon=True)
        self._thread.start()

    def _first_grab(self, cap: Any) -> bool:
        """Grab the first frame now (the reader thread retrieves it); False if none came."""
        if cap.grab():
            self._first_grab_at = self.clock.now()
            self._grabbed_first = True
            return True
        cap.release()
        return False

    def _describe(self, native_size: list[int] | None) -> StreamInfo:
        """The stream: ``(H, W, 3)`` uint8 at ``size`` if asked for, else at the camera's own
        size once connected (unknown before, or when the camera does not say)."""
        size = self.size or native_size
        known = (int(size[0]), int(size[1])) if size else None
        return StreamInfo.video(self.stream, self.rate, known, live=True)

    def _stop_device(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.timeout + 2.0)
        self._close_capture()

    # -- the reader thread -----------------------------------------------------------------
    def _read_loop(self) -> None:
        """Grab, stamp, offer; reconnect on failure; until stopped."""
        index = 0
        t0: float | None = None
        next_due = 0.0
        lost_at: float | None = None
        intervals: deque[float] = deque(maxlen=31)  # between delivered frames, for outages
        last: float | None = None
        try:
            while not self._stop.is_set():
                cap = self._cap
                if cap is None:
                    cap = self._reconnect()
                    if cap is None:
                        break
                    with self._cap_lock:
                        self._cap = cap
                if self._grabbed_first:  # the first connection's frame, grabbed at start
                    self._grabbed_first = False
                    now = self._first_grab_at
                elif cap.grab():
                    now = self.clock.now()
                else:
                    lost_at = self.clock.now()
                    log.warning("%s: the stream dropped; reconnecting", self.uri)
                    self._close_capture()
                    continue
                if t0 is None:
                    t0 = now
                if lost_at is not None and last is not None:
                    # the outage in frames at the rate frames really came (median interval)
                    period = sorted(intervals)[len(intervals) // 2] if intervals else self.period
                    missing = max(0, round((now - last) / period) - 1)
                    if missing:
                        pts = last - t0 + period
                        self.buffer.offer(Gap(self.stream, index, missing, pts, "reconnect"))
                        index += missing
                    next_due = now - t0
                    lost_at, last = None, None
                if self.requested_rate is not None:
                    if now - t0 + 1e-9 < next_due:
                        continue  # decimating to the requested rate: grabbed, not decoded
                    next_due = max(next_due + self.period, now - t0 - self.period)
                ok, image = cap.retrieve()
                if not ok or image is None:
                    continue
                data = self._shape(image)
                frame = Frame(self.stream, index, now - t0, now, data, self.rate, self.info)
                self.buffer.offer(frame)
                if last is not None:
                    intervals.append(now - last)
                last = now
                index += 1
        except Exception as exc:  # a device fault ends the stream with its error
            self.buffer.close(InputError(f"{self.uri}: camera read failed: {exc}"))
            return
        finally:
            self._close_capture()
        self.buffer.close()

    def _reconnect(self) -> Any:
        """Reopen with capped exponential back-off until it works or the source stops."""
        delay = BACKOFF_FIRST
        while not self._stop.wait(delay):
            cap = self._open()
            if cap is not None:
                self.reconnects += 1
                log.warning("%s: reconnected", self.uri)
                return cap
            delay = min(BACKOFF_MAX, delay * 2)
        return None

    def _open(self) -> Any:
        cv2 = _cv2()
        ms = int(self.timeout * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        try:
            if isinstance(self.target, int):
                cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
                if cap.isOpened():
                    if self.requested_rate:
                        cap.set(cv2.CAP_PROP_FPS, float(self.requested_rate))
                    if self.size:
                        cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(self.size[0]))
                        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(self.size[1]))
            else:
                cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        except cv2.error as exc:
            log.debug("%s: open failed: %s", self.uri, exc)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        if self._stop.is_set():
            cap.release()
            return None
        return cap

    def _shape(self, image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if image.ndim == 2:
            image = _cv2().cvtColor(image, _cv2().COLOR_GRAY2BGR)
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = _cv2().resize(image, self.size, interpolation=_cv2().INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _close_capture(self) -> None:
        with self._cap_lock:
            cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def _stream_name(target: int | str) -> str:
    if isinstance(target, int):
        return f"camera{target}"
    host = re.sub(r"^[a-z0-9+.-]*://", "", target, flags=re.IGNORECASE)
    return "camera-" + re.sub(r"[^A-Za-z0-9]+", "-", host).strip("-")[:60]


def _size_of(cap: Any) -> list[int]:
    cv2 = _cv2()
    return [int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))]


def _cv2() -> Any:
    import cv2

    return cv2


def open_camera(uri: str, options: SourceOptions, clock: Clock) -> CameraSource:
    """``camera:N`` or ``camera:URL`` (the registered opener of the ``camera`` scheme)."""
    return CameraSource(uri, options, clock, timeout=options.timeout, policy=options.overflow)
