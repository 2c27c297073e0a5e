"""The recording writer: :class:`RecordingWriter` writes a recording folder atomically
(a hidden sibling folder, renamed into place on close)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from streamer.errors import InputError
from streamer.frames import Frame, Gap, Item, Media, StreamEnd, StreamStart
from streamer.recording.format import (
    FORMAT,
    MEDIA,
    META_FILE,
    PARTIAL,
    TIMES_DTYPE,
    VERSION,
    stored_dtype,
)


@dataclass
class _StreamWriter:
    """Per-stream state of a :class:`RecordingWriter`."""

    id: str
    number: int
    media: Media
    rate: float
    meta: dict[str, Any]
    data_file: IO[bytes]
    times_file: IO[bytes]
    dtype: np.dtype[Any] | None = None
    frame_shape: tuple[int, ...] | None = None
    frames: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    #: media and rate came from a StreamStart (else from the first frame).
    declared: bool = False

    def entry(self) -> dict[str, Any]:
        """This stream's entry in ``meta.json``."""
        return {
            "id": self.id,
            "media": self.media,
            "rate": self.rate,
            "dtype": None if self.dtype is None else self.dtype.name,
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "frames": self.frames,
            "data": f"s{self.number}.data",
            "times": f"s{self.number}.times",
            "gaps": self.gaps,
            "end": self.end,
            "meta": self.meta,
        }


class RecordingWriter:
    """Writes items into a new recording folder at ``path``, atomically on :meth:`close`.

    ``add`` takes ``StreamStart``, ``Frame``, ``Gap`` and ``StreamEnd`` items in stream
    order. Until ``close`` returns, everything lives in a hidden sibling folder
    (``.NAME.partial-<pid>-<random>``) without ``meta.json``; ``abort`` (or an exception in
    a ``with`` block) removes it. A killed process leaves that hidden folder behind, never
    anything at ``path``. ``source`` and ``created`` (ISO time; default now) go into
    ``meta.json``. Thread-safe, but meant to be driven from one worker thread.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, source: str = "", created: str | None = None
    ) -> None:
        self.path = Path(path)
        self.source = source
        self.created = created or datetime.now(UTC).isoformat(timespec="seconds")
        if not self.path.name or self.path.name in (".", ".."):
            raise InputError(f"recording path {str(path)!r} must name a new folder")
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"folder {parent} does not exist (needed for recording {self.path})")
        if self.path.exists() or self.path.is_symlink():
            raise InputError(f"recording target {self.path} already exists; choose a new path")
        token = secrets.token_hex(4)
        self.temp_path = parent / f".{self.path.name}{PARTIAL}{os.getpid()}-{token}"
        try:
            self.temp_path.mkdir()
        except OSError as exc:
            raise InputError(
                f"cannot write recording {self.path}: {exc.strerror or exc} in {parent}"
            ) from None
        self._streams: dict[str, _StreamWriter] = {}
        self._lock = threading.Lock()
        self._state = "open"  # open | closed | aborted

    # -- context manager

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- public API

    @property
    def streams(self) -> list[str]:
        """Stream ids in the order they were first seen."""
        return list(self._streams)

    def add(self, item: Item) -> None:
        """Append one item; frames are written through to the stream files."""
        with self._lock:
            self._check_open()
            if isinstance(item, StreamStart):
                self._start(item)
            elif isinstance(item, Frame):
                self._frame(item)
            elif isinstance(item, Gap):
                stream = self._stream_for(item.stream, None)
                stream.gaps.append(
                    {
                        "index": int(item.index),
                        "count": int(item.count),
                        "pts": float(item.pts),
                        "reason": str(item.reason),
                        "at": stream.frames,
                    }
                )
            elif isinstance(item, StreamEnd):
                stream = self._stream_for(item.stream, None)
                stream.end = {"frames": int(item.frames), "reason": str(item.reason)}
            else:
                raise TypeError(f"cannot record {type(item).__name__}")

    def close(self) -> Path:
        """Flush and fsync everything, write ``meta.json`` last, rename into place."""
        with self._lock:
            self._check_open()
            try:
                for stream in self._streams.values():
                    for handle in (stream.data_file, stream.times_file):
                        handle.flush()
                        os.fsync(handle.fileno())
                        handle.close()
                meta = {
                    "format": FORMAT,
                    "version": VERSION,
                    "created": self.created,
                    "source": self.source,
                    "streams": [s.entry() for s in self._streams.values()],
                }
                with open(self.temp_path / META_FILE, "w", encoding="utf-8") as meta_file:
                    json.dump(meta, meta_file, indent=2, allow_nan=False)
                    meta_file.write("\n")
                    meta_file.flush()
                    os.fsync(meta_file.fileno())
                _fsync_dir(self.temp_path)
                if self.path.exists() or self.path.is_symlink():
                    raise InputError(
                        f"recording target {self.path} appeared while recording; "
                        f"nothing was written there"
                    )
                os.rename(self.temp_path, self.path)
                _fsync_dir(self.path.parent)
            except BaseException:
                self._abort_locked()
                raise
            self._state = "closed"
            return self.path

    def abort(self) -> None:
        """Discard everything written (idempotent; a no-op after :meth:`close`)."""
        with self._lock:
            if self._state == "open":
                self._abort_locked()

    # -- internals

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"recording writer for {self.path} is {self._state}")

    def _abort_locked(self) -> None:
        self._state = "aborted"
        for stream in self._streams.values():
            for handle in (stream.data_file, stream.times_file):
                handle.close()
        shutil.rmtree(self.temp_path, ignore_errors=True)

    def _start(self, item: StreamStart) -> None:
        if item.stream in self._streams:
            raise InputError(f"recording {self.path}: stream '{item.stream}' started twice")
        if item.media not in MEDIA:
            raise InputError(
                f"recording {self.path}: stream '{item.stream}' has media {item.media!r}, "
                f"expected one of {MEDIA}"
            )
        stream = self._new_stream(item.stream, item.media, float(item.rate), dict(item.meta))
        stream.declared = True

    def _stream_for(self, stream_id: str, frame: Frame | None) -> _StreamWriter:
        stream = self._streams.get(stream_id)
        if stream is None:
            # No StreamStart seen: take media and rate from the first frame.
            media: Media = frame.media if frame is not None else "audio"
            rate = float(frame.rate) if frame is not None else 0.0
            stream = self._new_stream(stream_id, media, rate, {})
        if stream.end is not None:
            raise InputError(f"recording {self.path}: stream '{stream_id}' has items after its end")
        return stream

    def _new_stream(
        self, stream_id: str, media: Media, rate: float, meta: dict[str, Any]
    ) -> _StreamWriter:
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"recording {self.path}: meta of stream '{stream_id}' is not JSON: {exc}"
            ) from None
        number = len(self._streams)
        data_file = open(self.temp_path / f"s{number}.data", "xb")  # noqa: SIM115
        times_file = open(self.temp_path / f"s{number}.times", "xb")  # noqa: SIM115
        stream = _StreamWriter(stream_id, number, media, rate, meta, data_file, times_file)
        self._streams[stream_id] = stream
        return stream

    def _frame(self, frame: Frame) -> None:
        stream = self._stream_for(frame.stream, frame)
        where = f"recording {self.path}: stream '{frame.stream}'"
        if not stream.declared and stream.frames == 0:
            stream.media = frame.media
            stream.rate = float(frame.rate)
        data = np.asarray(frame.data)
        if data.ndim < 1 or data.dtype.kind not in "biufc":
            raise InputError(
                f"{where}: frame data must be a numeric array of at least 1 dimension, "
                f"got {data.dtype} with shape {data.shape}"
            )
        if stream.dtype is None or stream.frame_shape is None:
            stream.dtype = data.dtype
            stream.frame_shape = tuple(int(n) for n in data.shape)
        expected = stream.frame_shape
        same_shape = (
            data.shape[1:] == expected[1:] if stream.media == "audio" else data.shape == expected
        )
        if data.dtype != stream.dtype or not same_shape:
            raise InputError(
                f"{where}: frame {frame.index} is {data.dtype} {list(data.shape)}, but the "
                f"stream's frames are {stream.dtype} {list(expected)}"
            )
        if stream.rate == 0.0:
            stream.rate = float(frame.rate)
        elif float(frame.rate) != stream.rate:
            raise InputError(
                f"{where}: frame {frame.index} has rate {frame.rate}, the stream {stream.rate}"
            )
        raw = np.ascontiguousarray(data, dtype=stored_dtype(stream.dtype.name))
        stream.data_file.write(raw.tobytes())
        record = np.array(
            [(frame.index, frame.pts, frame.captured, data.shape[0])], dtype=TIMES_DTYPE
        )
        stream.times_file.write(record.tobytes())
        stream.frames += 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
