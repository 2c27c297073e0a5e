"""The recording format (see :mod:`streamer.recording`): the constants writer and reader
share, the partial folders an unfinished writer leaves (:func:`partial_folders`), and the
validating reader (:func:`read_recording`)."""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from streamer.errors import InputError
from streamer.frames import Gap, Media, StreamEnd

FORMAT = "streamer-recording"
VERSION = 1
META_FILE = "meta.json"

#: One record per frame in a ``.times`` file (32 bytes, little-endian).
TIMES_DTYPE = np.dtype([("index", "<i8"), ("pts", "<f8"), ("captured", "<f8"), ("length", "<i8")])

MEDIA: tuple[Media, ...] = ("audio", "video")


def stored_dtype(name: str) -> np.dtype[Any]:
    """The on-disk (little-endian) dtype for a dtype name such as ``float32``."""
    return np.dtype(name).newbyteorder("<")


# --- partial folders: what an unfinished writer leaves

PARTIAL = ".partial-"
_PARTIAL_TAIL = re.compile(r"(\d+)-[0-9a-f]+")


@dataclass(frozen=True)
class PartialFolder:
    """A hidden ``.NAME.partial-PID-TOKEN`` folder of a :class:`RecordingWriter` for ``NAME``:
    an unfinished recording, still being written while process ``pid`` runs, else left
    behind by a writer that was killed (SIGKILL, power loss)."""

    path: Path
    pid: int

    @property
    def running(self) -> bool:
        """Whether process ``pid`` is still alive (it may still be recording)."""
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        except OSError:
            return False
        return True


def partial_folders(path: str | os.PathLike[str]) -> list[PartialFolder]:
    """The partial folders beside ``path`` that writers of a recording at ``path`` made,
    sorted by name (none when the folder holding ``path`` cannot be listed)."""
    target = Path(path)
    prefix = f".{target.name}{PARTIAL}"
    found: list[PartialFolder] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        tail = _PARTIAL_TAIL.fullmatch(entry.name[len(prefix) :])
        if tail is not None and entry.is_dir(follow_symlinks=False):
            found.append(PartialFolder(Path(entry.path), int(tail.group(1))))
    return sorted(found, key=lambda p: p.path.name)


def remove_partial_folders(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the partial folders beside ``path`` whose writer is no longer running;
    returns what was removed. Those of a running writer are left alone."""
    removed: list[Path] = []
    for partial in partial_folders(path):
        if not partial.running:
            shutil.rmtree(partial.path)
            removed.append(partial.path)
    return removed


def partial_note(path: str | os.PathLike[str]) -> str:
    """For an error about a missing recording ``path``: a clause naming its partial
    folders (or ``""`` when there are none)."""
    partials = partial_folders(path)
    if not partials:
        return ""
    running = [p for p in partials if p.running]
    if running:
        return f" yet: process {running[0].pid} is still recording it (into {running[0].path.name})"
    names = ", ".join(p.path.name for p in partials)
    return (
        f"; only unfinished recordings are beside it ({names}), left by a `streamer record` "
        f"that was killed: record again (`streamer record --clean` removes them)"
    )


# --- reading


@dataclass(frozen=True)
class RecordedStream:
    """One stream of a recording.

    ``data``: ``[rows, ...]`` memory-mapped, all frames concatenated along axis 0 (audio
    ``[samples, channels]``, video ``[frames * H, W, 3]``); ``times``: ``[frames]``
    TIMES_DTYPE records; ``offsets``: ``[frames + 1]`` row offsets into ``data``.
    """

    id: str
    media: Media
    rate: float
    dtype: np.dtype[Any]
    frame_shape: tuple[int, ...]
    frames: int
    data: npt.NDArray[Any]
    times: npt.NDArray[np.void]
    offsets: npt.NDArray[np.int64]
    gaps: list[Gap]
    gap_positions: list[int]
    end: StreamEnd | None
    meta: dict[str, Any]

    def frame_data(self, i: int) -> npt.NDArray[Any]:
        """Frame ``i``'s data as a view into the memory map (copy it to keep it)."""
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def release_before(self, i: int) -> None:
        """A sequential reader is done with the frames before ``i``: their pages of the
        memory map are given back (``madvise(MADV_DONTNEED)``; read again, they come back
        from the page cache), so replaying a long recording keeps its resident memory flat
        instead of growing by the file's size."""
        mapped = getattr(self.data, "_mmap", None)
        if mapped is None or not hasattr(mapped, "madvise") or i <= 0:
            return
        row_bytes = self.data.itemsize * math.prod(self.data.shape[1:])
        end = int(self.offsets[min(i, self.frames)]) * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        if end > 0:
            mapped.madvise(mmap.MADV_DONTNEED, 0, end)

    def frame_duration(self, i: int) -> float:
        """Media seconds covered by frame ``i``."""
        if self.rate <= 0:
            return 0.0
        if self.media == "audio":
            return float(self.times["length"][i]) / self.rate
        return 1.0 / self.rate


@dataclass(frozen=True)
class Recording:
    """A complete recording as read by :func:`read_recording`."""

    path: Path
    created: str
    source: str
    streams: list[RecordedStream]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def total_frames(self) -> int:
        return sum(s.frames for s in self.streams)


def read_recording(path: str | os.PathLike[str]) -> Recording:
    """Open and validate a recording folder; ``InputError`` naming the bad file otherwise."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"recording {root} does not exist{partial_note(root)}")
    if not root.is_dir():
        raise InputError(f"recording {root} is not a folder")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise InputError(
            f"{root} is not a complete recording: {meta_path} is missing "
            f"(an interrupted capture never writes it)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{meta_path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{meta_path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise InputError(
            f"{meta_path}: version {meta.get('version')!r} is not supported (expected {VERSION})"
        )
    entries = meta.get("streams")
    if not isinstance(entries, list):
        raise InputError(f"{meta_path}: 'streams' must be a list")
    streams: list[RecordedStream] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        stream = _read_stream(root, meta_path, n, entry)
        if stream.id in seen:
            raise InputError(f"{meta_path}: stream id {stream.id!r} appears twice")
        seen.add(stream.id)
        streams.append(stream)
    return Recording(
        path=root,
        created=str(meta.get("created", "")),
        source=str(meta.get("source", "")),
        streams=streams,
    )


def _read_stream(root: Path, meta_path: Path, n: int, entry: Any) -> RecordedStream:
    where = f"{meta_path}: streams[{n}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object")
    try:
        stream_id = _field(entry, "id", str, where)
        media = _field(entry, "media", str, where)
        rate = float(_field(entry, "rate", (int, float), where))
        frames = _field(entry, "frames", int, where)
        data_name = _field(entry, "data", str, where)
        times_name = _field(entry, "times", str, where)
        gap_entries = _field(entry, "gaps", list, where)
        stream_meta = _field(entry, "meta", dict, where)
        dtype_name = entry.get("dtype")
        shape_list = entry.get("frame_shape")
        end_entry = entry.get("end")
        if media not in MEDIA:
            raise InputError(f"{where}: media {media!r} must be one of {MEDIA}")
        if frames < 0:
            raise InputError(f"{where}: frames must be >= 0, got {frames}")
        for name in (data_name, times_name):
            if Path(name).name != name or name in ("", ".", ".."):
                raise InputError(f"{where}: file name {name!r} must be a plain name")
        if frames == 0 and (dtype_name is None or shape_list is None):
            dtype = np.dtype(np.float32 if media == "audio" else np.uint8)
            frame_shape: tuple[int, ...] = (0, 1) if media == "audio" else (0, 0, 3)
        else:
            if not isinstance(dtype_name, str):
                raise InputError(f"{where}: 'dtype' must be a dtype name such as 'float32'")
            try:
                dtype = np.dtype(dtype_name)
            except TypeError:
                raise InputError(f"{where}: unknown dtype {dtype_name!r}") from None
            if dtype.kind not in "biufc":
                raise InputError(f"{where}: dtype {dtype_name!r} is not numeric")
            if (
                not isinstance(shape_list, list)
                or not shape_list
                or not all(isinstance(d, int) and d >= 0 for d in shape_list)
            ):
                raise InputError(f"{where}: 'frame_shape' must be a list of sizes")
            frame_shape = tuple(shape_list)
        gaps, positions = _read_gaps(gap_entries, stream_id, frames, where)
        end = None
        if end_entry is not None:
            if not isinstance(end_entry, dict):
                raise InputError(f"{where}: 'end' must be an object or null")
            end = StreamEnd(
                stream_id,
                int(_field(end_entry, "frames", int, where + ".end")),
                str(_field(end_entry, "reason", str, where + ".end")),
            )
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None

    times_path = root / times_name
    if not times_path.is_file():
        raise InputError(f"{times_path}: times file of stream '{stream_id}' is missing")
    expected_times = frames * TIMES_DTYPE.itemsize
    times_size = times_path.stat().st_size
    if times_size != expected_times:
        raise InputError(
            f"{times_path}: {times_size} bytes, expected {expected_times} "
            f"({frames} records of {TIMES_DTYPE.itemsize} bytes); truncated or corrupt"
        )
    times = np.fromfile(times_path, dtype=TIMES_DTYPE) if frames else np.zeros(0, TIMES_DTYPE)
    lengths = times["length"].astype(np.int64)
    if frames and (lengths < 0).any():
        raise InputError(f"{times_path}: negative frame length; corrupt")
    if media == "video" and frames and (lengths != frame_shape[0]).any():
        raise InputError(f"{times_path}: video frame heights differ from {frame_shape[0]}")
    offsets = np.zeros(frames + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = int(offsets[-1])

    data_path = root / data_name
    if not data_path.is_file():
        raise InputError(f"{data_path}: data file of stream '{stream_id}' is missing")
    stored = stored_dtype(dtype.name)
    row_shape = frame_shape[1:]
    row_bytes = stored.itemsize * math.prod(row_shape)
    expected_data = rows * row_bytes
    data_size = data_path.stat().st_size
    if data_size != expected_data:
        raise InputError(
            f"{data_path}: {data_size} bytes, expected {expected_data} ({frames} frames, "
            f"{rows} rows of {list(row_shape)} {dtype.name}); truncated or corrupt"
        )
    data: npt.NDArray[Any]
    if expected_data:
        data = np.memmap(data_path, dtype=stored, mode="r", shape=(rows, *row_shape))
    else:
        data = np.zeros((rows, *row_shape), dtype=stored)
    return RecordedStream(
        id=stream_id,
        media=cast(Media, media),
        rate=rate,
        dtype=dtype,
        frame_shape=frame_shape,
        frames=frames,
        data=data,
        times=times,
        offsets=offsets,
        gaps=gaps,
        gap_positions=positions,
        end=end,
        meta=stream_meta,
    )


def _read_gaps(
    entries: list[Any], stream_id: str, frames: int, where: str
) -> tuple[list[Gap], list[int]]:
    gaps: list[Gap] = []
    positions: list[int] = []
    for k, entry in enumerate(entries):
        at = f"{where}.gaps[{k}]"
        if not isinstance(entry, dict):
            raise InputError(f"{at} must be an object")
        position = _field(entry, "at", int, at)
        if not 0 <= position <= frames or (positions and position < positions[-1]):
            raise InputError(f"{at}: position {position} out of order or past {frames} frames")
        gaps.append(
            Gap(
                stream_id,
                _field(entry, "index", int, at),
                _field(entry, "count", int, at),
                float(_field(entry, "pts", (int, float), at)),
                _field(entry, "reason", str, at),
            )
        )
        positions.append(position)
    return gaps, positions


def _field(entry: dict[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in entry:
        raise InputError(f"{where}: missing key {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where}: key {key!r} has the wrong type ({type(value).__name__})")
    return value
