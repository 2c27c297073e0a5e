"""The annotation drawn on a video frame: label and score, latency, a score bar per label.

A panel with an opaque background sits in the frame's top-left corner, so what it shows
depends only on the output, never on the picture under it. Its rows are laid out by
:func:`panel_layout` (row 0: the label and its score, row 1: the latency, then one bar per
label); everything scales with the frame's height, so a 64x48 test clip and a 1080p
camera both get a readable panel.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamer.frames import Output

#: The most labels that get a bar (the highest scores when there are more).
MAX_BARS = 8
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = (24, 24, 24)
_MUTED = (150, 150, 150)
_TEXT = (240, 240, 240)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


@dataclass(frozen=True)
class PanelLayout:
    """Where the panel's rows are in a frame of ``width`` x ``height`` pixels."""

    width: int
    height: int
    row: int  # pixels per row
    panel_width: int
    font_scale: float

    def box(self, row: int) -> Box:
        """Row ``row`` of the panel (0: label, 1: latency, 2...: bars), clipped to the frame."""
        y0 = min(self.height, row * self.row)
        return (0, y0, self.panel_width, min(self.height, y0 + self.row))

    @property
    def label_box(self) -> Box:
        return self.box(0)

    @property
    def latency_box(self) -> Box:
        return self.box(1)


def panel_layout(width: int, height: int) -> PanelLayout:
    """The panel's geometry for a frame of ``width`` x ``height``: rows of height/24 pixels
    (at least 10), the panel 12 rows wide (a multiple of 16, so that JPEG blocks do not
    straddle its edge), at most the frame's width."""
    row = max(10, round(height / 24))
    panel_width = min(width, max(16, (row * 12) // 16 * 16))
    # HERSHEY_SIMPLEX is about 22 px tall at scale 1: text fills ~60% of a row
    return PanelLayout(width, height, row, panel_width, 0.6 * row / 22.0)


def label_colour(label: str) -> tuple[int, int, int]:
    """A bright BGR colour of its own per label (stable across runs: a CRC, not hash())."""
    hue = zlib.crc32(label.encode("utf-8")) % 180
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def annotate(image: np.ndarray[Any, Any], output: Output | None) -> np.ndarray[Any, Any]:
    """A copy of ``image`` (``[H, W, 3]`` uint8 BGR) with ``output``'s panel drawn on it;
    ``None`` draws "no output yet"."""
    canvas = np.array(image, dtype=np.uint8, copy=True, order="C")
    height, width = canvas.shape[:2]
    layout = panel_layout(width, height)
    scores = _bars(output)
    rows = 2 + len(scores)
    x1 = layout.panel_width
    y1 = min(height, rows * layout.row)
    cv2.rectangle(canvas, (0, 0), (x1 - 1, y1 - 1), _BACKGROUND, thickness=-1)
    if output is None or output.label is None:
        _text(canvas, layout, 0, "no output yet", _MUTED)
    else:
        score = output.scores.get(output.label)
        shown = output.label if score is None else f"{output.label} {score:.2f}"
        _text(canvas, layout, 0, shown, label_colour(output.label), bold=layout.row >= 18)
    if output is not None and output.latency_ms is not None:
        _text(canvas, layout, 1, f"{output.latency_ms:.1f} ms", _MUTED)
    for number, (label, score) in enumerate(scores):
        _bar(canvas, layout, 2 + number, label, score)
    return canvas


def _bars(output: Output | None) -> list[tuple[str, float]]:
    """The labels that get a bar, in the output's order; the highest scores if too many."""
    if output is None:
        return []
    items = [(str(k), float(v)) for k, v in output.scores.items()]
    if len(items) > MAX_BARS:
        keep = {k for k, _ in sorted(items, key=lambda kv: -kv[1])[:MAX_BARS]}
        items = [(k, v) for k, v in items if k in keep]
    return items


def _text(
    canvas: np.ndarray[Any, Any],
    layout: PanelLayout,
    row: int,
    text: str,
    colour: tuple[int, int, int],
    bold: bool = False,
) -> None:
    x0, y0, _x1, y1 = layout.box(row)
    if y1 <= y0:
        return
    pad = max(1, layout.row // 5)
    origin = (x0 + pad, y1 - pad - max(1, layout.row // 8))
    thickness = 2 if bold else 1
    cv2.putText(canvas, text, origin, _FONT, layout.font_scale, colour, thickness, cv2.LINE_AA)


def _bar(
    canvas: np.ndarray[Any, Any], layout: PanelLayout, row: int, label: str, score: float
) -> None:
    """The label's name in the left part of the row, a bar filled to ``score`` on the right."""
    x0, y0, x1, y1 = layout.box(row)
    if y1 <= y0:
        return
    split = x0 + (x1 - x0) * 2 // 5
    _text(canvas, layout, row, label[:12], _TEXT)
    pad = max(1, layout.row // 5)
    top, bottom, right = y0 + pad, y1 - pad - 1, x1 - pad - 1
    if bottom <= top or right <= split:
        return
    filled = split + round((right - split) * min(1.0, max(0.0, score)))
    cv2.rectangle(canvas, (split, top), (right, bottom), _MUTED, thickness=1)
    if filled > split:
        cv2.rectangle(canvas, (split, top), (filled, bottom), label_colour(label), thickness=-1)
