"""``streamer serve OUT.jsonl [--video FILE]``: a finished run in the live view's page.

The page gets every record of the file (mode ``review``) and a time slider over the run;
with a video, ``/frame/{stream}.jpg?t=`` is the frame at ``t`` seconds (OpenCV seeks on a
:class:`~streamer.worker.Worker` thread) with the output shown at that time drawn on, as
the run's annotated video would show it. The video is the stream ``--stream`` or the
file's first stream.
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any

from streamer.errors import InputError
from streamer.frames import Output
from streamer.web.bind import parse_bind, resolve_token
from streamer.web.hub import Hub
from streamer.web.server import WebServer
from streamer.worker import Worker

#: Output kinds a frame shows (as the annotated video: one label and scores per frame).
SHOWN_KINDS = ("frame", "window")


def load_records(path: Path) -> list[dict[str, Any]]:
    """The JSONL file's records; an InputError naming the file (and line) when it cannot
    be read or a line is not an output record."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{path}: cannot read the JSONL file ({reason})") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise InputError(f"{path}: line {number}: not JSON") from None
        if not (
            isinstance(record, dict)
            and isinstance(record.get("stream"), str)
            and isinstance(record.get("pts"), int | float)
        ):
            raise InputError(
                f"{path}: line {number}: not an output record of streamer run (no stream, pts)"
            )
        records.append(record)
    if not records:
        raise InputError(f"{path}: holds no output record")
    return records


class VideoFrames:
    """The frames of ``path`` (the stream ``stream``), each with the output shown at its
    time drawn on (``records``: that stream's records)."""

    def __init__(self, path: Path, stream: str, records: list[dict[str, Any]]) -> None:
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise InputError(f"--video: {path}: cannot open it as a video")
        self.path = path
        self.stream = stream
        self.streams = frozenset({stream})
        self.fps = float(capture.get(cv2.CAP_PROP_FPS)) or 0.0
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._capture: Any = capture
        self._next = 0  # the index the capture reads next
        shown = sorted(
            (r for r in records if r.get("kind") in SHOWN_KINDS), key=lambda r: float(r["pts"])
        )
        self._shown = shown
        self._times = [float(r["pts"]) for r in shown]
        self._worker = Worker(f"review:{path.name}")

    async def jpeg(self, stream: str, t: float) -> bytes:
        return await self._worker.call(self._jpeg, t)

    def output_at(self, t: float) -> Output | None:
        """The newest shown output at or before ``t`` (the first one before any)."""
        if not self._shown:
            return None
        at = max(0, bisect.bisect_right(self._times, t + 1e-9) - 1)
        r = self._shown[at]
        scores = r.get("scores") or {}
        return Output(
            stream=self.stream,
            kind=r.get("kind", "frame"),
            start=int(r.get("start", 0)),
            end=int(r.get("end", 0)),
            pts=float(r["pts"]),
            label=r.get("label"),
            scores={str(k): float(v) for k, v in scores.items() if isinstance(v, int | float)},
            captured=0.0,
            latency_ms=r.get("latency_ms"),
        )

    def _jpeg(self, t: float) -> bytes:
        import cv2

        from streamer.sinks.overlay import annotate

        index = math.floor(t * self.fps + 1e-6) if self.fps > 0 else 0
        if self.frame_count > 0:
            index = min(index, self.frame_count - 1)
        if index != self._next:  # a seek; reading on is cheaper than seeking forward a bit
            if not 0 < index - self._next <= 8:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                self._next = index
            while self._next < index:
                self._capture.grab()
                self._next += 1
        ok, image = self._capture.read()
        if not ok:
            raise RuntimeError(f"{self.path}: cannot read the frame at {t:.3f} s")
        self._next = index + 1
        canvas = annotate(image, self.output_at(t))
        ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise RuntimeError("OpenCV could not encode a frame as JPEG")
        return bytes(encoded)

    def close(self) -> None:
        self._worker.close()
        self._capture.release()


def review_hub(records: list[dict[str, Any]], history_s: float, video: str | None) -> Hub:
    """A hub in review mode holding ``records``; ``video``: the stream with a video."""
    times = [float(r["pts"]) for r in records if math.isfinite(float(r["pts"]))]
    hub = Hub("review", history_s, hello={"t0": min(times), "t1": max(times)})
    for record in records:
        stream = str(record["stream"])
        if stream not in hub.streams:
            media = "video" if stream == video else "unknown"
            hub.add_stream(stream, media, None, stream == video)
    hub.add_records(records)
    return hub


def review_server(
    jsonl: str,
    *,
    video: str | None = None,
    stream: str | None = None,
    bind: str = "127.0.0.1:8080",
    token: str | None = None,
    token_env: str | None = None,
    history_s: float = 30.0,
) -> WebServer:
    """The server of ``streamer serve`` (its socket listening; not started)."""
    if not history_s > 0:
        raise InputError(f"--history: seconds > 0, got {history_s}")
    records = load_records(Path(jsonl))
    names = list(dict.fromkeys(str(r["stream"]) for r in records))
    if stream is not None and stream not in names:
        raise InputError(
            f"--stream: {jsonl} has no stream '{stream}' (its streams: {', '.join(names)})"
        )
    frames = None
    chosen = None
    if video is not None:
        path = Path(video)
        if not path.is_file():
            raise InputError(f"--video: {video}: no such file")
        chosen = stream or names[0]
        frames = VideoFrames(path, chosen, [r for r in records if r["stream"] == chosen])
    address = parse_bind(bind, "--bind")
    secret = resolve_token(address, token, token_env, "--bind")
    hub = review_hub(records, history_s, chosen)
    return WebServer(hub, address, token=secret, frames=frames, where="--bind")
