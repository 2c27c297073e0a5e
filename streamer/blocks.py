"""Outputs in blocks: the rows a head emits for one model call, kept as columns.

A model call over a batch of streams (or over a long offline piece) gives many outputs of
one kind at once. Building an :class:`~streamer.frames.Output` per row, stamping it,
counting it and encoding it one by one is what caps the runtime (tens of microseconds an
output); an :class:`OutputBlock` carries the rows as columns instead: scores ``[N, K]``,
one capture time per row, latencies stamped at once. The fan-out stamps it, the metrics
take it whole, the JSONL sink writes it in one piece (:meth:`OutputBlock.jsonl`, the same
bytes as the outputs' own lines), and only a sink that needs ``Output`` objects gets them,
built on first use (:meth:`OutputBlock.outputs`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.frames import Output, OutputKind


@dataclass(eq=False)
class OutputBlock:
    """``N`` outputs of one ``kind``, as columns: per row its ``streams``, ``starts``,
    ``ends``, ``pts``, ``labels``, ``captured`` and ``scores [N, K]`` over ``names``."""

    kind: OutputKind
    names: tuple[str, ...]
    streams: list[str]
    starts: list[int]
    ends: list[int]
    pts: list[float]
    labels: Sequence[str | None]
    scores: np.ndarray[Any, np.dtype[np.float64]]
    captured: list[float]
    #: the media time each row covers (:class:`Output`'s ``t0``/``t1``; not in the JSONL
    #: of frame and window rows)
    t0: Sequence[float | None] | None = None
    t1: Sequence[float | None] | None = None
    #: ms per row, stamped by the fan-out (None until then, or where not finite)
    latency_ms: list[float | None] | None = None
    #: rows over the run's latency budget (None: none marked)
    late: list[bool] | None = None
    _outputs: list[Output] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def rows(self) -> int:
        """Outputs in the block (what a channel counts when it drops it)."""
        return len(self.streams)

    def stamp(self, now: float, budget_ms: float | None = None) -> None:
        """Latency of every row at ``now`` (clock seconds); rows over ``budget_ms`` late."""
        latency = (now - np.asarray(self.captured, dtype=np.float64)) * 1000.0
        finite = np.isfinite(latency)
        values = latency.tolist()
        self.latency_ms = (
            values
            if finite.all()
            else [v if ok else None for v, ok in zip(values, finite.tolist(), strict=True)]
        )
        if budget_ms is not None:
            over = (latency > budget_ms) & finite
            self.late = over.tolist() if over.any() else None
        self._outputs = None

    def _stamps(self) -> tuple[Sequence[float | None], Sequence[bool]]:
        """Each row's latency (None until stamped) and whether it is late."""
        return self.latency_ms or [None] * len(self), self.late or [False] * len(self)

    def outputs(self) -> list[Output]:
        """The rows as :class:`Output` objects (built once, on first use)."""
        if self._outputs is None:
            names = self.names
            latency, late = self._stamps()
            t0, t1 = self.t0 or [None] * len(self), self.t1 or [None] * len(self)
            self._outputs = [
                Output(
                    stream,
                    self.kind,
                    start,
                    end,
                    pts,
                    label,
                    dict(zip(names, row, strict=True)),
                    captured,
                    lat,
                    begin,
                    until,
                    late=is_late,
                )
                for (
                    stream,
                    start,
                    end,
                    pts,
                    label,
                    row,
                    captured,
                    lat,
                    begin,
                    until,
                    is_late,
                ) in zip(
                    self.streams,
                    self.starts,
                    self.ends,
                    self.pts,
                    self.labels,
                    self.scores.tolist(),
                    self.captured,
                    latency,
                    t0,
                    t1,
                    late,
                    strict=True,
                )
            ]
        return self._outputs

    def jsonl(self) -> str:
        """Every row as a JSON line, the bytes ``json.dumps(output.to_json(),
        ensure_ascii=False)`` gives each output, in one pass over the columns."""
        kind = _text(self.kind)
        keys = [f"{_text(name)}: " for name in self.names]
        latency, late = self._stamps()
        texts: dict[str, str] = {}
        number = repr if bool(np.isfinite(self.scores).all()) else _number
        lines = []
        for stream, start, end, pts, label, row, lat, is_late in zip(
            self.streams,
            self.starts,
            self.ends,
            self.pts,
            self.labels,
            self.scores.tolist(),
            latency,
            late,
            strict=True,
        ):
            name = texts.get(stream)
            if name is None:
                name = texts[stream] = _text(stream)
            scores = ", ".join([k + number(v) for k, v in zip(keys, row, strict=True)])
            lines.append(
                f'{{"kind": {kind}, "stream": {name}, "start": {int(start)}, "end": {int(end)},'
                f' "pts": {_number(pts)}, "label": {_label(label, texts)}, "scores": {{{scores}}},'
                f' "latency_ms": {"null" if lat is None else _number(lat)}'
                f"{_LATE if is_late else ''}}}\n"
            )
        return "".join(lines)


def as_outputs(items: Iterable[object]) -> list[Output]:
    """The outputs among ``items`` (anything else, such as markers, left out), each
    block's rows as :class:`Output` objects: what a sink that takes outputs one by one
    receives."""
    out: list[Output] = []
    for item in items:
        if isinstance(item, OutputBlock):
            out += item.outputs()
        elif isinstance(item, Output):
            out.append(item)
    return out


_LATE = ', "late": true'  # a late row's last key (Output.to_json adds it only then)


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _label(label: str | None, texts: dict[str, str]) -> str:
    if label is None:
        return "null"
    text = texts.get(label)
    if text is None:
        text = texts[label] = _text(label)
    return text


def _number(value: float) -> str:
    """A float as ``json.dumps`` writes it (``repr``), null where not finite (as
    :meth:`Output.to_json` makes it)."""
    number = float(value)
    return repr(number) if math.isfinite(number) else "null"
