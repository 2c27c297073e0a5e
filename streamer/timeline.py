"""What ``streamer plot`` draws, without matplotlib: a JSONL output file read back into
per-stream arrays, an audio source's waveform envelope, and min/max decimation.

Everything here is numpy; :mod:`streamer.plot` turns it into a figure.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import InputError

FloatArray = npt.NDArray[np.float64]

#: The ``kind`` values of the JSONL schema (README, "JSONL output").
KINDS = ("frame", "window", "sequence", "segment", "token")
#: Keys every record has; a segment also has ``t0`` and ``t1``.
REQUIRED = ("kind", "stream", "pts", "label", "scores")


@dataclass
class StreamTimeline:
    """One stream's outputs. ``pts``: ``[N]`` seconds of the non-segment outputs (file
    order, sorted by time); ``scores``: ``{label: [N]}`` (NaN where a record lacks the
    label or wrote null); ``labels``: ``[N]`` their labels; ``kinds``: ``[N]`` their kinds;
    ``segments``: ``(t0, t1, label)`` per segment record."""

    stream: str
    pts: FloatArray
    scores: dict[str, FloatArray]
    labels: list[str | None]
    kinds: list[str]
    segments: list[tuple[float, float, str | None]]

    def label_changes(self) -> list[tuple[float, str | None]]:
        """``(pts, new label)`` at each frame/window output whose label differs from the
        previous frame/window output's."""
        changes: list[tuple[float, str | None]] = []
        previous: str | None = None
        first = True
        for t, label, kind in zip(self.pts, self.labels, self.kinds, strict=True):
            if kind not in ("frame", "window"):
                continue
            if not first and label != previous:
                changes.append((float(t), label))
            previous, first = label, False
        return changes

    @property
    def end(self) -> float:
        """The latest time this stream covers (last pts or segment end)."""
        ends = [float(self.pts[-1])] if len(self.pts) else []
        ends += [t1 for _, t1, _ in self.segments]
        return max(ends, default=0.0)


@dataclass
class _Builder:
    pts: list[float] = field(default_factory=list)
    scores: list[dict[str, float]] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    segments: list[tuple[float, float, str | None]] = field(default_factory=list)

    def build(self, stream: str) -> StreamTimeline:
        order = np.argsort(np.asarray(self.pts, dtype=np.float64), kind="stable")
        names: dict[str, None] = {}
        for record in self.scores:
            names.update(dict.fromkeys(record))
        scores = {
            name: np.array([self.scores[i].get(name, math.nan) for i in order], dtype=np.float64)
            for name in names
        }
        return StreamTimeline(
            stream=stream,
            pts=np.asarray(self.pts, dtype=np.float64)[order],
            scores=scores,
            labels=[self.labels[i] for i in order],
            kinds=[self.kinds[i] for i in order],
            segments=self.segments,
        )


def read_outputs(path: str | os.PathLike[str]) -> dict[str, StreamTimeline]:
    """Read a JSONL output file into one :class:`StreamTimeline` per stream (in order of
    first appearance). ``InputError`` names the file, the line and the key at fault."""
    streams: dict[str, _Builder] = {}
    for where, record in _records(Path(path)):
        missing = [key for key in REQUIRED if key not in record]
        if record.get("kind") == "segment":
            missing += [key for key in ("t0", "t1") if key not in record]
        if missing:
            raise InputError(
                f"{where}: missing key {missing[0]!r} (not a streamer JSONL output record)"
            )
        kind, stream, label = record["kind"], record["stream"], record["label"]
        if kind not in KINDS:
            raise InputError(f"{where}: 'kind' is {kind!r}, expected one of {', '.join(KINDS)}")
        if not isinstance(stream, str):
            raise InputError(f"{where}: 'stream' must be a string, got {stream!r}")
        if label is not None and not isinstance(label, str):
            raise InputError(f"{where}: 'label' must be a string or null, got {label!r}")
        builder = streams.get(stream) or streams.setdefault(stream, _Builder())
        if kind == "segment":
            t0, t1 = _number(record, "t0", where), _number(record, "t1", where)
            if t1 < t0:
                raise InputError(f"{where}: segment ends (t1={t1}) before it starts (t0={t0})")
            builder.segments.append((t0, t1, label))
            continue
        builder.pts.append(_number(record, "pts", where))
        builder.scores.append(_scores(record["scores"], where))
        builder.labels.append(label)
        builder.kinds.append(kind)
    if not streams:
        raise InputError(f"{path}: no output records: nothing to plot")
    return {stream: builder.build(stream) for stream, builder in streams.items()}


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` per non-blank line; ``where`` is ``FILE line N``."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"{where}: expected a JSON object, got {type(record).__name__}"
                    )
                yield where, record
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} line {number + 1}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _number(record: dict[str, Any], key: str, where: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def _scores(value: Any, where: str) -> dict[str, float]:
    """A record's ``scores``: label -> number, null (a non-finite score) read as NaN."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: 'scores' must be an object of label -> number")
    scores: dict[str, float] = {}
    for name, score in value.items():
        if score is None:
            scores[name] = math.nan
        elif isinstance(score, bool) or not isinstance(score, int | float):
            raise InputError(f"{where}: 'scores' {name!r} must be a number, got {score!r}")
        else:
            scores[name] = float(score)
    return scores


# --------------------------------------------------------------------------- decimation


def envelope(x: FloatArray, y: FloatArray, bins: int) -> tuple[FloatArray, FloatArray]:
    """Per-bin min/max decimation of a line ``y[N]`` over sorted ``x[N]``: ``bins`` equal
    slices of the x range, each kept as its minimum and maximum in time order (one point
    when they coincide), plus the first and last points, so at most ``2 * bins + 2``
    points draw the same picture at that width and span the same times. NaN points are
    dropped; a line short enough is returned as is."""
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if len(x) <= 2 * bins:
        return x, y
    span = float(x[-1] - x[0]) or 1.0
    group = np.minimum(((x - x[0]) / span * bins).astype(np.int64), bins - 1)
    order = np.lexsort((y, group))  # by bin, then by value
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    ends = np.r_[starts[1:], len(order)] - 1
    ends_of_line = np.array([0, len(x) - 1])  # the line spans the whole time range
    picks = np.unique(np.concatenate([order[starts], order[ends], ends_of_line]))  # time order
    return x[picks], y[picks]


@dataclass
class Waveform:
    """An audio source's min/max envelope: ``t``: ``[B]`` bin start times (s), ``low`` and
    ``high``: ``[B]`` the mono mix-down's minimum and maximum in each bin."""

    name: str
    t: FloatArray
    low: FloatArray
    high: FloatArray


def read_waveform(source: str, bins: int, streams: list[str]) -> Waveform:
    """The envelope of ``source``: an audio file (soundfile) or a recording folder (its
    first audio stream named in ``streams``, else its first audio stream), read in
    blocks so an hour of audio never sits in memory. ``InputError`` if it cannot be read."""
    from streamer.sources import uri_path

    path = uri_path(source)
    if path is None:
        raise InputError(f"--source: {source} is not an audio file or a recording")
    if path.is_dir():
        return _recording_waveform(path, bins, streams)
    if not path.is_file():
        raise InputError(f"--source: {source} does not exist")
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as audio:
            rate, total = float(audio.samplerate), int(audio.frames)
            per_bin = max(1, math.ceil(total / bins))
            blocks = (b for b in audio.blocks(blocksize=per_bin * 256, dtype="float32"))
            low, high = _block_envelope(blocks, per_bin)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        raise InputError(f"--source: {source}: cannot read audio ({exc})") from None
    return _waveform(str(path), low, high, per_bin, rate, 0.0)


def _recording_waveform(path: Path, bins: int, streams: list[str]) -> Waveform:
    from streamer.recording import read_recording

    try:
        recording = read_recording(path)
    except InputError as exc:
        raise InputError(f"--source: {exc}") from None
    audio = [s for s in recording.streams if s.media == "audio"]
    if not audio:
        raise InputError(f"--source: recording {path} has no audio stream")
    stream = next((s for s in audio if s.id in streams), audio[0])
    total = int(stream.offsets[-1])
    per_bin = max(1, math.ceil(total / bins))
    step = per_bin * 256
    blocks = (stream.data[i : i + step] for i in range(0, total, step))
    low, high = _block_envelope(blocks, per_bin)
    start = float(stream.times["pts"][0]) if stream.frames else 0.0
    return _waveform(f"{path} ({stream.id})", low, high, per_bin, stream.rate, start)


def _block_envelope(
    blocks: Iterator[npt.NDArray[Any]], per_bin: int
) -> tuple[FloatArray, FloatArray]:
    """Min/max per ``per_bin`` samples over blocks of ``[n, channels]`` (or ``[n]``) audio
    whose lengths are multiples of ``per_bin`` except the last."""
    lows: list[FloatArray] = []
    highs: list[FloatArray] = []
    for block in blocks:
        mono = np.asarray(block, dtype=np.float64)
        if mono.ndim > 1:
            mono = mono.reshape(len(mono), -1).mean(axis=1)
        if not len(mono):
            continue
        pad = (-len(mono)) % per_bin
        padded = np.pad(mono, (0, pad), mode="edge").reshape(-1, per_bin)
        lows.append(padded.min(axis=1))
        highs.append(padded.max(axis=1))
    if not lows:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(lows), np.concatenate(highs)


def _waveform(
    name: str, low: FloatArray, high: FloatArray, per_bin: int, rate: float, start: float
) -> Waveform:
    t = start + np.arange(len(low), dtype=np.float64) * per_bin / rate
    return Waveform(name=name, t=t, low=low, high=high)
