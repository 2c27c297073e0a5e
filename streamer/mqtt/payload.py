"""The MQTT frame payload: how ``streamer publish`` sends frames and the MQTT source reads them.

Pure functions, no I/O. A publisher in another language needs only this docstring.

**Messages.** Every message is one of four kinds; its first line (the bytes up to the first
``\\n``, or the whole message when it has none) is a UTF-8 JSON object, the *header*.

1. *Binary frame*: the header, one ``\\n`` byte (0x0A), then the frame's raw array bytes in
   C (row-major) order, **little-endian**. Header keys:

   - ``stream`` (string, 1-200 characters): the stream id.
   - ``index`` (integer >= 0): the frame's index in its stream (0, 1, 2, ...; a hole in the
     indices is a gap: those frames never arrived).
   - ``pts`` (finite number): media time of the frame's start, seconds from the stream's
     start.
   - ``media``: ``"audio"`` or ``"video"``.
   - ``rate`` (finite number > 0): audio samples per second, or video frames per second.
   - ``dtype``: one of ``bool uint8 int8 uint16 int16 uint32 int32 uint64 int64 float16
     float32 float64``.
   - ``shape`` (list of 1-8 integers >= 1): audio ``[samples, channels]``, video
     ``[height, width, 3]`` (BGR), features ``[F]`` or anything else the model takes.
   - ``meta`` (object, optional): the stream's start metadata (e.g. ``samples``: how many
     samples of a padded audio stream are real); ``streamer publish`` sends it with the
     first frame of each stream only.
   - ``v`` (optional): the format version, ``1``.

   The bytes after the ``\\n`` must number exactly ``prod(shape) * itemsize(dtype)``.
2. *JSON frame* (short feature vectors, easy to write anywhere): one JSON object with the
   same keys and ``data``, the array as nested lists, instead of the binary part (no
   ``\\n`` + bytes). ``dtype`` defaults to ``float32`` and ``shape`` to the nested lists'
   own; when given, they must agree with ``data``.
3. *Gap*: ``{"stream": S, "gap": true, "index": I, "count": N, "pts": P, "reason": R}``:
   frames ``I`` to ``I + N - 1`` are missing (``reason``, optional: why, e.g. ``source``).
   Optional: a hole in the indices means the same (reason ``missing``).
4. *End*: ``{"stream": S, "end": true, "frames": N}``: the stream is over; ``N`` is the
   frame count its source gave (``reason``, optional: why it ended). A subscriber that
   has not seen indices up to ``N - 1`` reports the rest as a gap. ``streamer publish``
   sends it at the end of each stream, so a subscriber's stream can end.

Example (a 2-sample stereo float32 audio frame): ``{"stream":"mic","index":7,"pts":0.224,
"media":"audio","rate":16000,"dtype":"float32","shape":[2,2]}`` + ``\\n`` + 16 bytes.

**Limits.** A message over ``max_bytes`` (64 MiB by default) is *oversize*; a header that
is not a JSON object, lacks a key or has a bad value, a byte count that does not match,
more than 64 KiB before the first ``\\n`` of a binary message: *malformed*. Either is
skipped by the subscriber and counted, never a crash (:class:`PayloadError` says why).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.frames import Frame, Gap, Media

VERSION = 1
#: Default largest message the source accepts (bytes).
MAX_BYTES = 64 * 1024 * 1024
#: The header of a binary message must end (``\n``) within this many bytes.
MAX_HEADER = 64 * 1024
MAX_STREAM_ID = 200
MAX_NDIM = 8
DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}
    | {"float16", "float32", "float64"}
)


class PayloadError(ValueError):
    """A message that cannot be read; ``kind`` is ``malformed`` or ``oversize``."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class FrameMessage:
    """A decoded frame: its header's values and the array (``data``, read-only, zero-copy
    over a binary message's bytes)."""

    stream: str
    index: int
    pts: float
    media: Media
    rate: float
    data: np.ndarray[Any, Any]
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class GapMessage:
    stream: str
    index: int
    count: int
    pts: float
    reason: str = "source"


@dataclass(frozen=True, slots=True)
class EndMessage:
    stream: str
    frames: int
    reason: str = "eof"
    extra: dict[str, Any] = field(default_factory=dict)


Message = FrameMessage | GapMessage | EndMessage


# -- encoding -----------------------------------------------------------------------------
def encode_frame(frame: Frame, meta: dict[str, Any] | None = None) -> bytes:
    """A binary frame message for ``frame`` (its ``info`` or its data say media and dtype);
    ``meta``: the stream's start metadata, for the first frame of a stream."""
    data = np.ascontiguousarray(frame.data)
    if data.dtype.name not in DTYPES:
        raise ValueError(f"stream '{frame.stream}': dtype {data.dtype} cannot be sent")
    header: dict[str, Any] = {
        "v": VERSION,
        "stream": frame.stream,
        "index": int(frame.index),
        "pts": float(frame.pts),
        "media": frame.media,
        "rate": float(frame.rate),
        "dtype": data.dtype.name,
        "shape": list(data.shape),
    }
    if meta:
        header["meta"] = _json_safe(meta)
    if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and _big_endian()):
        data = data.astype(data.dtype.newbyteorder("<"))
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return head + b"\n" + data.tobytes()


def encode_gap(gap: Gap) -> bytes:
    """A gap message: frames ``gap.index .. + gap.count - 1`` are missing."""
    body = {
        "v": VERSION,
        "stream": gap.stream,
        "gap": True,
        "index": int(gap.index),
        "count": int(gap.count),
        "pts": float(gap.pts),
        "reason": gap.reason,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def encode_end(stream: str, frames: int, reason: str = "eof") -> bytes:
    """The end message of ``stream`` after ``frames`` frames."""
    body = {"v": VERSION, "stream": stream, "end": True, "frames": int(frames), "reason": reason}
    return json.dumps(body, separators=(",", ":")).encode()


# -- decoding -----------------------------------------------------------------------------
def decode(payload: bytes | bytearray, max_bytes: int = MAX_BYTES) -> Message:
    """The message in ``payload``; raises :class:`PayloadError` (``oversize`` or
    ``malformed``, with the reason) for anything else."""
    size = len(payload)
    if size > max_bytes:
        raise PayloadError("oversize", f"{size} bytes, over max_bytes={max_bytes}")
    newline = payload.find(b"\n", 0, MAX_HEADER + 1)
    if newline < 0 and size > MAX_HEADER:
        raise PayloadError("malformed", f"no header line within the first {MAX_HEADER} bytes")
    header = _json_object(payload if newline < 0 else payload[:newline])
    if header is None and newline >= 0:  # a JSON message written over several lines
        header = _json_object(payload)
        newline = -1
    if header is None:
        raise PayloadError("malformed", "the header is not a JSON object")
    version = header.get("v", VERSION)
    if version != VERSION:
        raise PayloadError("malformed", f"format version {version!r}; this reader knows 1")
    stream = header.get("stream")
    if not isinstance(stream, str) or not 0 < len(stream) <= MAX_STREAM_ID:
        raise PayloadError("malformed", "'stream' must be a string of 1-200 characters")
    if header.get("end") is True:
        return EndMessage(stream, _count(header, "frames"), _text(header, "reason", "eof"))
    if header.get("gap") is True:
        count = _count(header, "count")
        if count < 1:
            raise PayloadError("malformed", "'count' of a gap must be >= 1")
        return GapMessage(
            stream,
            _count(header, "index"),
            count,
            _finite(header, "pts"),
            _text(header, "reason", "source"),
        )
    index = _count(header, "index")
    pts = _finite(header, "pts")
    media = header.get("media")
    if media not in ("audio", "video"):
        raise PayloadError("malformed", '\'media\' must be "audio" or "video"')
    rate = _finite(header, "rate")
    if rate <= 0:
        raise PayloadError("malformed", "'rate' must be > 0")
    meta = header.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise PayloadError("malformed", "'meta' must be an object")
    if newline < 0:
        data = _json_data(header)
    else:
        data = _binary_data(header, memoryview(payload)[newline + 1 :])
    return FrameMessage(stream, index, pts, media, rate, data, meta)


def _binary_data(header: dict[str, Any], body: memoryview) -> np.ndarray[Any, Any]:
    dtype = _dtype(header.get("dtype"))
    shape = _shape(header.get("shape"))
    if shape is None:
        raise PayloadError("malformed", "'shape' must be a list of 1-8 integers >= 1")
    expected = math.prod(shape) * dtype.itemsize
    if len(body) != expected:
        raise PayloadError(
            "malformed",
            f"{len(body)} data bytes, but shape {list(shape)} of {dtype.name} needs {expected}",
        )
    return np.frombuffer(body, dtype=dtype.newbyteorder("<")).reshape(shape)


def _json_data(header: dict[str, Any]) -> np.ndarray[Any, Any]:
    if "data" not in header:
        raise PayloadError("malformed", "a frame needs 'data' or a binary part after its header")
    dtype = _dtype(header.get("dtype", "float32"))
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(header["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError("malformed", f"'data' is not a {dtype.name} array ({exc})") from None
    if data.ndim == 0 or data.ndim > MAX_NDIM or 0 in data.shape:
        raise PayloadError("malformed", "'data' must be a non-empty array of 1-8 dimensions")
    if dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise PayloadError("malformed", "'data' holds values out of the dtype's range")
    if "shape" in header:
        shape = _shape(header["shape"])
        if shape != data.shape:
            raise PayloadError("malformed", f"'shape' {header['shape']} is not data's {data.shape}")
    data.flags.writeable = False
    return data


def _json_object(text: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    try:
        value = json.loads(bytes(text))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _count(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError("malformed", f"'{key}' must be an integer >= 0")
    return value


def _finite(header: dict[str, Any], key: str) -> float:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError("malformed", f"'{key}' must be a finite number")
    return float(value)


def _text(header: dict[str, Any], key: str, default: str) -> str:
    value = header.get(key, default)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STREAM_ID:
        raise PayloadError("malformed", f"'{key}' must be a short string")
    return value


def _dtype(name: Any) -> np.dtype[Any]:
    if not isinstance(name, str) or name not in DTYPES:
        raise PayloadError(
            "malformed", f"'dtype' {name!r} is not one of {' '.join(sorted(DTYPES))}"
        )
    return np.dtype(name)


def _shape(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NDIM:
        return None
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in value):
        return None
    return tuple(value)


def _big_endian() -> bool:
    return bool(np.little_endian is False)


def _json_safe(value: Any) -> Any:
    """``meta`` as plain JSON (numpy scalars made Python ones; other objects as text)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)
