"""The data that flows through a pipeline: frames, markers and outputs.

Frames and markers travel in the same channels so that order is kept: a stage sees
``StreamStart``, then frames (with ``Gap`` markers where frames are missing), then
``StreamEnd``. Everything here is immutable.

A source declares each of its streams before the run as a :class:`StreamInfo` (media,
rate, frame shape and dtype, live or replay, length); the same description travels on the
stream's ``StreamStart`` and on each ``Frame``, so no stage has to guess from the data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Media = Literal["audio", "video"]
OutputKind = Literal["frame", "window", "sequence", "segment", "token"]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source declares about one stream, before the run.

    ``stream``: the stream id. ``media``: ``audio`` or ``video``. ``rate``: samples per
    second (audio) or frames per second (video). ``shape``/``dtype``: those of
    ``Frame.data`` (audio ``(chunk, channels)``, video ``(H, W, 3)``); ``shape`` is None when
    it is not known yet (a live device that only learns it on connecting: its
    ``StreamStart`` then carries the real one). ``live``: a device (frames come when it makes
    them) rather than a replay. ``total_frames``: the frames the stream will deliver, None
    when unknown or endless (live, looping).
    """

    stream: str
    media: Media
    rate: float
    shape: tuple[int, ...] | None
    dtype: np.dtype[Any]
    live: bool = False
    total_frames: int | None = None

    def __post_init__(self) -> None:
        if self.media not in ("audio", "video"):
            raise ValueError(
                f"stream '{self.stream}': media must be audio or video, not {self.media!r}"
            )
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @classmethod
    def audio(
        cls,
        stream: str,
        rate: float,
        chunk: int,
        channels: int,
        *,
        live: bool = False,
        total_frames: int | None = None,
    ) -> StreamInfo:
        """An audio stream: frames of ``chunk`` samples x ``channels``, float32."""
        shape = (chunk, channels)
        return cls(stream, "audio", rate, shape, np.dtype(np.float32), live, total_frames)

    @classmethod
    def video(
        cls,
        stream: str,
        rate: float,
        size: tuple[int, int] | None,
        *,
        live: bool = False,
        total_frames: int | None = None,
    ) -> StreamInfo:
        """A video stream: ``[H, W, 3]`` uint8 BGR frames of ``size`` (width, height); an
        unknown size (None, or a zero side) leaves the shape undeclared."""
        known = size is not None and size[0] > 0 and size[1] > 0
        shape = (int(size[1]), int(size[0]), 3) if known and size is not None else None
        return cls(stream, "video", rate, shape, np.dtype(np.uint8), live, total_frames)

    @property
    def chunk(self) -> int | None:
        """Audio samples per frame (None for video or when the shape is unknown)."""
        if self.media != "audio" or not self.shape:
            return None
        return self.shape[0]

    @property
    def channels(self) -> int | None:
        """Audio channels per sample (None for video or when the shape is unknown)."""
        if self.media != "audio" or self.shape is None:
            return None
        return self.shape[1] if len(self.shape) > 1 else 1

    @property
    def size(self) -> tuple[int, int] | None:
        """Video ``(width, height)`` (None for audio or when the shape is unknown)."""
        if self.media != "video" or self.shape is None or len(self.shape) < 2:
            return None
        return (self.shape[1], self.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One chunk of a stream.

    ``data`` is ``[H, W, 3]`` uint8 BGR for video and ``[samples, channels]`` float32 in
    [-1, 1] for audio; later stages may replace it with features (a tensor). ``pts`` is
    media time in seconds from the stream's start, ``captured`` the clock's time when the
    frame was captured (for latency), ``rate`` frames per second (video) or samples per
    second (audio). ``info`` is the stream's :class:`StreamInfo` (one shared object per
    stream), None for a frame made without one.
    """

    stream: str
    index: int
    pts: float
    captured: float
    data: Any
    rate: float
    info: StreamInfo | None = None

    @property
    def media(self) -> Media:
        """The stream's declared media; without ``info``, a guess: ``video`` for
        ``[H, W, C]`` uint8 data, otherwise ``audio``."""
        if self.info is not None:
            return self.info.media
        data = self.data
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
            return "video"
        return "audio"

    @property
    def duration(self) -> float:
        """Media seconds this frame covers."""
        if self.media == "audio":
            return float(len(self.data)) / self.rate
        return 1.0 / self.rate


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A stream begins: a model stage gives it fresh state.

    ``info`` is the stream's :class:`StreamInfo` (its ``stream``, ``media`` and ``rate`` must
    agree with the marker's); it is left out of equality, which compares what the marker
    says (``stream``, ``media``, ``rate``, ``meta``). ``meta`` carries the rest: the real
    sample count of a padded stream (``samples``), ``loop``, the path...
    """

    stream: str
    media: Media
    rate: float
    meta: dict[str, Any] = field(default_factory=dict)
    info: StreamInfo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        info = self.info
        if info is not None and (info.stream, info.media, info.rate) != (
            self.stream,
            self.media,
            self.rate,
        ):
            raise ValueError(
                f"StreamStart of '{self.stream}' ({self.media}, {self.rate:g}) carries the"
                f" info of '{info.stream}' ({info.media}, {info.rate:g})"
            )


@dataclass(frozen=True, slots=True)
class Gap:
    """``count`` frames starting at frame ``index`` (media time ``pts``) never arrived.

    ``reason`` says why: ``overflow:EDGE`` (dropped by a ``latest`` channel), ``source``
    (lost by the device or the recording), ``invalid`` (dropped by a stage).
    """

    stream: str
    index: int
    count: int
    pts: float
    reason: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """A stream is over (``reason``: ``eof``, ``stopped``, ``duration``, ``max-frames``)."""

    stream: str
    frames: int
    reason: str = "eof"


Marker = StreamStart | Gap | StreamEnd
Item = Frame | Marker


@dataclass(frozen=True, slots=True)
class Output:
    """One result of a stage, as written to sinks (see the JSONL schema in the README).

    ``start``/``end`` are the frame indices covered (inclusive), ``pts`` the media time of
    the newest covered frame, ``captured`` its capture time; ``latency_ms`` is filled in
    when the pipeline hands the output to its sinks.
    """

    stream: str
    kind: OutputKind
    start: int
    end: int
    pts: float
    label: str | None
    scores: dict[str, float]
    captured: float
    latency_ms: float | None = None
    t0: float | None = None
    t1: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: its latency exceeded the run's ``latency_budget_ms`` (stamped with the latency)
    late: bool = False

    def json_line(self) -> str:
        """Its JSON Lines line, without the newline: what the JSONL file, an MQTT
        message and the live view carry."""
        return encode_record(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The JSONL record: plain Python types, floats at full precision."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "stream": self.stream,
            "start": int(self.start),
            "end": int(self.end),
            "pts": _finite(self.pts),
            "label": self.label,
            "scores": {str(k): _finite(v) for k, v in self.scores.items()},
            "latency_ms": None if self.latency_ms is None else _finite(self.latency_ms),
        }
        if self.kind == "segment":
            record["t0"] = None if self.t0 is None else _finite(self.t0)
            record["t1"] = None if self.t1 is None else _finite(self.t1)
        record.update({str(k): _json_safe(v) for k, v in self.extra.items()})
        if self.late:
            record["late"] = True
        return record


def _finite(value: float) -> float | None:
    """JSON has no NaN/Infinity: write them as null rather than invalid JSON."""
    number = float(value)
    return number if math.isfinite(number) else None


def _json_safe(value: Any) -> Any:
    """An ``extra`` value with every float (Python or numpy, nested in lists and dicts)
    made finite-or-null, numpy integers and bools made Python ones."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, float | np.floating):
        return _finite(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


#: A JSONL record (:meth:`Output.to_json`) as its line, without the newline: UTF-8 kept,
#: NaN refused so that every line is strict JSON. One encoder for every call.
encode_record = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
