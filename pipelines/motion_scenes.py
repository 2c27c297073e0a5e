"""Rendered motion clips for the webcam motion labeller (and the clip captioner): OpenCV and
numpy only, every clip drawn from one ``numpy.random.Generator``.

A clip shows one *main object* (a named shape in a named colour, solid or textured) that
moves in axis-aligned motions (``left``, ``right``, ``up``, ``down``) and stops (``still``),
over a textured, cluttered, static background. What varies, per clip:

- the resolution (64x48 to 320x240, 4:3 and 16:9) and the frame rate (10 to 30 fps);
- the object: shape (:data:`SHAPES`), colour (:data:`COLOURS`, with a random tint),
  texture (solid, stripes, checks, speckle, shading), size (8-22 % of the height);
- the motions: 8-24 frames each, never the same direction twice in a row, speeds from
  slow drifts (1.2 % of the height a frame) to fast moves (7 %), each frame's step
  jittered by +-15 %, with stops between;
- the background: a colour with low-frequency blotches, a gradient, stripes or checks,
  and up to 8 static clutter shapes and lines in muted colours;
- partial occlusion: a static bar in front, narrower than the object, so it is never
  hidden whole;
- the camera and sensor: jitter (the whole view shifts by a pixel or so), lighting
  (slow swells and a sudden switch), Gaussian blur, motion blur of the object, sensor
  noise, JPEG compression.

Labels: frame ``t`` is labelled with the motion from frame ``t - 1`` to frame ``t``
(frame 0 with the first motion's label), as indices into :data:`LABELS`. A clip's
:class:`ClipDescription` names the shape and colour and lists the motions with their
frame spans, so a captioner can be trained on the same clips (:meth:`ClipDescription.caption`).

    >>> clip = render_clip(np.random.default_rng(0), frames=40)
    >>> clip.frames.shape[0], clip.labels.shape, clip.description.caption()  # doctest: +SKIP
    (40, (40,), 'red star moves left then stops then moves up')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

LABELS = ("still", "left", "right", "up", "down")
#: Unit step (x, y) of each label, image coordinates (y grows downwards).
STEPS = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon")
#: Named colours, BGR.
COLOURS = {
    "red": (40, 40, 210),
    "green": (60, 170, 40),
    "blue": (200, 90, 30),
    "yellow": (40, 210, 230),
    "orange": (30, 130, 240),
    "purple": (160, 50, 130),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
TEXTURES = ("solid", "stripes", "checks", "speckle", "shaded")
#: Rendering resolutions (width, height) and their weights: mostly small (fast to render).
RESOLUTIONS = ((64, 48), (80, 60), (96, 72), (128, 96), (160, 120), (160, 90), (320, 240))
RESOLUTION_WEIGHTS = (0.22, 0.2, 0.18, 0.14, 0.12, 0.08, 0.06)
FRAME_RATES = (10.0, 15.0, 24.0, 25.0, 30.0)
SPEED = (0.012, 0.07)  # per-frame step, as a fraction of the height (log-uniform)
DURATION = (8, 24)  # frames per motion
SETTLE = 5  # frames of a motion before its label is counted (from the 6th frame on)

Rng = np.random.Generator


@dataclass(frozen=True)
class Motion:
    """One motion: ``label`` over frames ``[start, end)``; ``speed`` in pixels a frame."""

    label: str
    start: int
    end: int
    speed: float


@dataclass(frozen=True)
class ClipDescription:
    """What a clip shows: the main object and its motions, in order."""

    shape: str
    colour: str
    texture: str
    radius: float  # pixels, at the clip's resolution
    size: tuple[int, int]  # (width, height)
    fps: float
    motions: tuple[Motion, ...]

    def caption(self) -> str:
        """``"red circle moves left then stops"``: the motions in order, repeats merged."""
        words: list[str] = []
        for motion in self.motions:
            phrase = "stops" if motion.label == "still" else f"moves {motion.label}"
            if not words or words[-1] != phrase:
                words.append(phrase)
        if words and words[0] == "stops":
            words[0] = "is still"
        return f"{self.colour} {self.shape} " + " then ".join(words)


@dataclass(frozen=True)
class Clip:
    """``frames [T, H, W, 3]`` uint8 BGR, ``labels [T]`` int64 (indices into :data:`LABELS`),
    ``centres [T, 2]`` float32: where the object's centre is in each frame (x, y pixels,
    camera jitter included; for training a localiser)."""

    frames: np.ndarray
    labels: np.ndarray
    description: ClipDescription
    centres: np.ndarray


def counted(labels: np.ndarray, settle: int = SETTLE) -> np.ndarray:
    """``[..., T]`` bool: the frames from the ``settle + 1``-th frame of each motion on
    (a motion is a run of equal labels; the frames where its direction cannot yet be told
    from the ones before are not counted)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    flat_in = labels.reshape(-1, labels.shape[-1])
    flat_out = out.reshape(-1, labels.shape[-1])
    for row, mask in zip(flat_in, flat_out, strict=True):
        run = 0
        for t in range(len(row)):
            run = run + 1 if t and row[t] == row[t - 1] else 1
            mask[t] = run > settle
    return out


# --- the plan: motions and positions --------------------------------------------------


def plan_motions(
    rng: Rng, frames: int, width: int, height: int, radius: float
) -> tuple[list[Motion], np.ndarray]:
    """Motions covering ``frames`` frames and the object's centre ``[T, 2]`` (x, y) per
    frame, kept inside the frame (the centre at least half a radius from each edge)."""
    low = np.array([0.5 * radius, 0.5 * radius])
    high = np.array([width - 0.5 * radius, height - 0.5 * radius])
    pos = low + rng.random(2) * (high - low)
    centres = [pos.copy()]
    motions: list[Motion] = []
    t = 1  # frame 0 carries the first motion's label, with no step
    previous = ""
    while t < frames or not motions:
        length = int(rng.integers(DURATION[0], DURATION[1] + 1))
        label, speed = "still", 0.0
        if previous == "still" or rng.random() > 0.25:
            options = [d for d in LABELS[1:] if d != previous]
            for k in rng.permutation(len(options)):
                step = np.array(STEPS[options[k]], dtype=float)
                axis = 0 if step[0] else 1
                room = (high[axis] - pos[axis]) if step[axis] > 0 else (pos[axis] - low[axis])
                want = height * math.exp(rng.uniform(math.log(SPEED[0]), math.log(SPEED[1])))
                fits = room / (1.2 * length)  # 1.2: the per-frame jitter's worst case
                if fits >= SPEED[0] * height:
                    label, speed = options[k], min(want, fits)
                    break
        end = min(frames, t + length)
        for _ in range(t, end):
            step = np.array(STEPS[label], dtype=float) * speed * rng.uniform(0.85, 1.15)
            pos = np.clip(pos + step, low, high)
            centres.append(pos.copy())
        if motions and motions[-1].label == label:  # a stop with nowhere to go: longer
            last = motions[-1]
            motions[-1] = Motion(label, last.start, end, last.speed)
        else:
            motions.append(Motion(label, t if motions else 0, end, float(speed)))
        previous = label
        t = end
        if frames <= 1:
            break
    return motions, np.asarray(centres[:frames])


def labels_of(motions: list[Motion], frames: int) -> np.ndarray:
    """``[T]`` int64 label indices from the motions' spans."""
    labels = np.zeros(frames, dtype=np.int64)
    for motion in motions:
        labels[motion.start : motion.end] = LABELS.index(motion.label)
    return labels


# --- drawing --------------------------------------------------------------------------


def shape_points(shape: str, radius: float, angle: float) -> np.ndarray:
    """The polygon ``[N, 2]`` of ``shape`` around (0, 0) (circles: many points)."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1) * radius
    if shape == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * radius * 0.85
    elif shape == "triangle":
        a = np.array([-90, 30, 150]) * np.pi / 180
        corners = np.stack([np.cos(a), np.sin(a)], 1) * radius
    elif shape == "diamond":
        corners = np.array([[0, -1], [0.7, 0], [0, 1], [-0.7, 0]]) * radius
    elif shape == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * radius
        corners = np.stack([np.cos(a) * r, np.sin(a) * r], 1)
    elif shape == "cross":
        w = 0.35
        corners = (
            np.array(
                [
                    [-w, -1],
                    [w, -1],
                    [w, -w],
                    [1, -w],
                    [1, w],
                    [w, w],
                    [w, 1],
                    [-w, 1],
                    [-w, w],
                    [-1, w],
                    [-1, -w],
                    [-w, -w],
                ]
            )
            * radius
        )
    elif shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        corners = np.stack([np.cos(a), np.sin(a)], 1) * radius
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(corners @ np.array([[c, s], [-s, c]]))


def object_patch(
    rng: Rng, shape: str, colour: str, texture: str, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """The object centred in a square patch: colour ``[P, P, 3]`` float32 and alpha
    ``[P, P]`` float32 in [0, 1] (anti-aliased: drawn 4x larger, then shrunk)."""
    side = 2 * math.ceil(radius) + 6
    big = side * 4
    centre = big / 2
    angle = rng.uniform(-0.3, 0.3) if shape != "circle" else 0.0
    points = shape_points(shape, radius * 4, angle) + centre
    mask = np.zeros((big, big), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    base = np.array(COLOURS[colour], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) - side / 2
    if texture == "stripes":
        period = rng.uniform(2.5, 6.0)
        theta = rng.uniform(0, np.pi)
        wave = np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * np.pi / period)
        shade = 1.0 + 0.3 * np.sign(wave)
    elif texture == "checks":
        cell = rng.uniform(2.0, 5.0)
        shade = 1.0 + 0.3 * (((xs // cell + ys // cell) % 2) * 2 - 1)
    elif texture == "speckle":
        shade = 1.0 + rng.normal(0, 0.18, (side, side))
    elif texture == "shaded":
        lx, ly = rng.normal(size=2)
        shade = 1.0 + 0.35 * (xs * lx + ys * ly) / (radius * math.hypot(lx, ly) + 1e-6)
    else:
        shade = np.ones((side, side))
    dark = colour == "black"
    factor = (2.0 - shade) if dark else shade  # black: texture as lighter marks
    colour_img = np.clip(base[None, None, :] * factor[..., None], 0, 255)
    if dark:
        colour_img = np.clip(colour_img + (shade[..., None] - 1.0) * -120, 0, 255)
    return colour_img.astype(np.float32), alpha


def background(rng: Rng, width: int, height: int) -> np.ndarray:
    """A static, textured and cluttered background ``[H, W, 3]`` float32."""
    base = rng.uniform(30, 220, 3)
    kind = rng.integers(0, 4)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # blotches: low-frequency noise
        cells = rng.normal(0, 35, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
        image = base + cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # a gradient
        other = rng.uniform(30, 220, 3)
        ramp = (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1)) / max(width, height)
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
        image = base + (other - base) * ramp[..., None]
    elif kind == 2:  # stripes (a wall, a shelf)
        period = rng.uniform(0.05, 0.25) * height
        theta = rng.uniform(0, np.pi)
        wave = np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * np.pi / period)
        image = base + rng.uniform(8, 30) * wave[..., None]
    else:  # checks (tiles)
        cell = rng.uniform(0.06, 0.2) * height
        check = ((xs // cell + ys // cell) % 2) * 2 - 1
        image = base + rng.uniform(8, 30) * check[..., None]
    image = image + rng.normal(0, 4, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.float32)
    for _ in range(rng.integers(0, 9)):  # clutter, muted towards the background
        tint = 0.5 * rng.uniform(20, 235, 3) + 0.5 * base
        colour = tuple(float(v) for v in tint)
        if rng.random() < 0.3:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            thick = max(1, int(rng.uniform(0.01, 0.04) * height))
            cv2.line(image, p1, p2, colour, thick, cv2.LINE_AA)
        else:
            r = rng.uniform(0.04, 0.15) * height
            shape = SHAPES[rng.integers(0, len(SHAPES))]
            centre = rng.uniform([0, 0], [width, height])
            points = shape_points(shape, r, rng.uniform(0, np.pi)) + centre
            pts = np.round(points * 16).astype(np.int32)
            cv2.fillPoly(image, [pts], colour, cv2.LINE_AA, shift=4)
    return np.asarray(image, dtype=np.float32)


def paste(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x: float, y: float) -> None:
    """Blend the patch onto ``canvas`` (float32, in place) with its centre at (x, y),
    sub-pixel (bilinear), clipped at the canvas's edges."""
    side = alpha.shape[0]
    left, top = math.floor(x - side / 2), math.floor(y - side / 2)
    dx, dy = x - side / 2 - left, y - side / 2 - top
    shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    size = (side + 1, side + 1)
    col = cv2.warpAffine(colour, shift, size, flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(alpha, shift, size, flags=cv2.INTER_LINEAR)
    h, w = canvas.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side + 1, w), min(top + side + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    a = a[y0 - top : y1 - top, x0 - left : x1 - left, None]
    col = col[y0 - top : y1 - top, x0 - left : x1 - left]
    region = canvas[y0:y1, x0:x1]
    region *= 1 - a
    region += col * a


def render_clip(
    rng: Rng,
    frames: int = 48,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    shape: str | None = None,
    colour: str | None = None,
) -> Clip:
    """One clip of ``frames`` frames (see the module docstring); ``size`` (width, height),
    ``fps``, ``shape`` and ``colour`` are drawn from ``rng`` unless given."""
    if size is None:
        size = RESOLUTIONS[rng.choice(len(RESOLUTIONS), p=RESOLUTION_WEIGHTS)]
    width, height = size
    fps = float(fps if fps is not None else FRAME_RATES[rng.integers(0, len(FRAME_RATES))])
    shape = shape or SHAPES[rng.integers(0, len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(0, len(COLOURS))]
    texture = TEXTURES[rng.integers(0, len(TEXTURES))]
    radius = rng.uniform(0.08, 0.22) * height
    motions, centres = plan_motions(rng, frames, width, height, radius)
    labels = labels_of(motions, frames)
    patch, alpha = object_patch(rng, shape, colour, texture, radius)

    # the camera: jitter, lighting, blur, noise, compression (per clip, then per frame)
    margin = max(2, math.ceil(0.03 * height))
    jitter = rng.uniform(0, 0.012) * height if rng.random() < 0.4 else 0.0
    scene = background(rng, width + 2 * margin, height + 2 * margin)
    occluder = None
    if rng.random() < 0.3:
        along = rng.random() < 0.5  # a vertical bar (crossed by left/right moves) or not
        thick = rng.uniform(0.3, 0.8) * 2 * radius
        at = rng.uniform(0.15, 0.85) * (width if along else height)
        tint = tuple(float(v) for v in rng.uniform(20, 235, 3))
        occluder = (along, at, thick, tint)
    gain0, swell, period, phase = (
        rng.uniform(0.75, 1.2),
        rng.uniform(0, 0.15),
        rng.uniform(20, 80),
        rng.uniform(0, 2 * np.pi),
    )
    switch = int(rng.integers(1, frames)) if rng.random() < 0.2 and frames > 1 else -1
    switch_gain = rng.uniform(0.6, 1.4)
    sigma = rng.choice([0.0, 0.0, rng.uniform(0.4, 1.2)]) * width / 80
    smear = rng.random() < 0.4
    noise = rng.uniform(0, 8)
    jpeg = int(rng.integers(35, 90)) if rng.random() < 0.3 else 0

    out = np.empty((frames, height, width, 3), np.uint8)
    seen = np.empty((frames, 2), np.float32)
    for t in range(frames):
        canvas = scene.copy()
        x, y = centres[t] + margin
        if smear and t > 0:  # motion blur: fainter copies along the last step
            px, py = centres[t - 1] + margin
            for f in (1 / 3, 2 / 3):
                paste(canvas, patch, alpha * 0.35, px + (x - px) * f, py + (y - py) * f)
        paste(canvas, patch, alpha, x, y)
        if occluder is not None:
            along, at, thick, tint = occluder
            if along:
                x0 = int(at + margin - thick / 2)
                canvas[:, max(x0, 0) : x0 + max(1, int(thick))] = tint
            else:
                y0 = int(at + margin - thick / 2)
                canvas[max(y0, 0) : y0 + max(1, int(thick)), :] = tint
        jx, jy = (np.clip(np.round(rng.normal(0, jitter, 2)), -margin, margin)).astype(int)
        seen[t] = centres[t] - (jx, jy)
        image = canvas[margin + jy : margin + jy + height, margin + jx : margin + jx + width]
        gain = gain0 * (1 + swell * math.sin(2 * np.pi * t / period + phase))
        if 0 <= switch <= t:
            gain *= switch_gain
        image = image * gain
        if sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        if noise > 0:
            image = image + rng.normal(0, noise, image.shape)
        frame = np.clip(image, 0, 255).astype(np.uint8)
        if jpeg:
            _, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg])
            frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
        out[t] = frame
    description = ClipDescription(
        shape, colour, texture, float(radius), (width, height), fps, tuple(motions)
    )
    return Clip(out, labels, description, seen)


def render_set(
    seed: int, count: int, frames: int = 48, first: int = 0, **options: Any
) -> list[Clip]:
    """Clips ``first .. first + count - 1`` of set ``seed``: clip ``i`` is drawn from
    ``numpy.random.default_rng([seed, i])`` (so parts of a set render apart, in any order;
    ``options``: see :func:`render_clip`)."""
    return [
        render_clip(np.random.default_rng([seed, i]), frames, **options)
        for i in range(first, first + count)
    ]


def write_video(path: str, frames: np.ndarray, fps: float, fourcc: str = "mp4v") -> None:
    """Write ``frames [T, H, W, 3]`` uint8 BGR (or ``[T, H, W]`` grey) with OpenCV."""
    height, width = frames.shape[1:3]
    colour = frames.ndim == 4
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), fps, (width, height), colour)
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write {fourcc!r} video here")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()


def main(argv: list[str] | None = None) -> int:
    """``python pipelines/motion_scenes.py OUT.mp4 [--seed S] [--frames T] [--size WxH]``:
    render one clip to a video file (mp4v) and print its description as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    clip = render_clip(np.random.default_rng(args.seed), args.frames, (width, height), args.fps)
    write_video(args.out, clip.frames, args.fps)
    d = clip.description
    print(json.dumps({"caption": d.caption(), "motions": [m.__dict__ for m in d.motions]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
