"""The webcam motion labeller: a small CNN per frame -> keypoints -> GRU -> one label per frame.

Labels, in the order of the outputs: ``still``, ``left``, ``right``, ``up``, ``down``
(:data:`LABELS`): the motion of the main moving object between the previous frame and
this one. A single frame cannot tell a direction; the state carried from frame to frame
does (many-to-many, causal, one output per frame).

The encoder sees one frame and the one before (streamer's ``pixels`` features: ``[3, 48,
64]`` RGB scaled to [-1, 1], see :data:`INPUT_SIZE`, :data:`MEAN`, :data:`STD`). A
4x4-patch convolution of the frame and of its difference to the frame before (one
convolution of each frame, its second half differenced: no second pass), then two 3x3
ones (batch-normalised, 12x16 cells) make :data:`KEYPOINTS` heat maps; a spatial
soft-argmax turns each into a point (x, y) in [-1, 1] and a strength, so the encoding is
*where* things are, to a fraction of a cell. Point 0 is trained to follow the main object
(the renderer knows its centre); the others are free. Beside the encoding the GRU gets a
fixed motion signal without weights, :func:`flow`: Lucas-Kanade flow between the grey
frame and the one before, per region of a three-level pyramid (sub-pixel drifts to fast
moves), and the main object's own flow (:func:`object_flow`): the camera's shift,
measured on the background, is taken out, then the flow is measured in windows around
point 0, so a slow drift under a shaking camera still shows. The state carries the GRU's
hidden vector, the previous frame's encoding, its patch features and its grey image, so
the GRU sees each frame's encoding, its change since the frame before (the points'
motion) and the flows; after a dropped frame (``on_gap = "keep"``) those changes span
the frames in between, which points the same way.

``motion.pt`` beside this module holds the trained weights (a state dict of
:class:`MotionLabeller`), made by ``python pipelines/train_motion.py``; :func:`trained`
loads them from there, so the ready pipeline works from an installed package too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.motion_scenes import LABELS as LABELS
from pipelines.weights import load_trained

WEIGHTS = Path(__file__).with_name("motion.pt")
TRAIN_COMMAND = "python pipelines/train_motion.py"
INPUT_SIZE = (64, 48)  # (width, height): streamer's pixels feature_options.size
MEAN = (0.5, 0.5, 0.5)  # pixels feature_options.mean/std: RGB in [-1, 1]
STD = (0.5, 0.5, 0.5)
KEYPOINTS = 16
HIDDEN = 96  # the GRU's hidden size
TEMPERATURE = 10.0  # heat maps' scale: peaked soft-argmax from the start
DIFF_SCALE = 30.0  # a point moves ~0.01-0.07 a frame: scaled to about 1
PIXEL_DIFF = 4.0  # the first layer's difference term: pixel changes are small
FLOW_LEVELS = 3  # the flow's pyramid: 64x48, 32x24, 16x12
FLOW_REGIONS = (3, 4)  # (rows, columns) of regions, per level
REGION_FLOW_SIZE = FLOW_LEVELS * FLOW_REGIONS[0] * FLOW_REGIONS[1] * 3
CAMERA_STEPS = (2, 1, 0)  # the camera shift's Lucas-Kanade steps: pyramid levels
OBJECT_LEVELS = (0, 1)  # pyramid levels of the object's flow
OBJECT_SIGMAS = (3.0, 6.0)  # the object's flow windows (Gaussian sigma, pixels of 64x48)
OBJECT_FLOW_SIZE = 2 + len(OBJECT_LEVELS) * (3 * len(OBJECT_SIGMAS) + 2)
FLOW_SIZE = REGION_FLOW_SIZE + OBJECT_FLOW_SIZE

State = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def flow(grey: Tensor, before: Tensor, centre: Tensor | None = None) -> Tensor:
    """Lucas-Kanade flow between grey frames ``before`` and ``grey [N, 1, H, W]`` ->
    ``[N, REGION_FLOW_SIZE]``: per pyramid level (halved each time) and region
    (:data:`FLOW_REGIONS`), the flow ``(u, v)`` (pixels of that level a frame, least
    squares over the region, clamped to 4) and the log energy of the change. No weights:
    a fixed, exact motion signal for the GRU (sub-pixel drifts included), beside the
    learnt keypoints.

    With ``centre [N, 2]`` (the main object's (x, y) in [-1, 1], point 0 of the
    encoding) -> ``[N, FLOW_SIZE]``: the above, then :func:`object_flow`."""
    regions = []
    g, b = grey, before
    for level in range(FLOW_LEVELS):
        if level:
            g, b = F.avg_pool2d(g, 2), F.avg_pool2d(b, 2)
        sums = F.adaptive_avg_pool2d(_products(g, b), FLOW_REGIONS).flatten(2)  # [N, 5, R]
        regions += _solve(sums)
    if centre is None:
        return torch.cat(regions, 1)
    return torch.cat([*regions, object_flow(grey, before, centre)], 1)


def object_flow(grey: Tensor, before: Tensor, centre: Tensor) -> Tensor:
    """The main object's own motion between grey frames ``before`` and ``grey [N, 1, H,
    W]``, the object at ``centre [N, 2]`` ((x, y) in [-1, 1]) -> ``[N,
    OBJECT_FLOW_SIZE]``: the camera's shift (the background's, outside a window around
    the object: Lucas-Kanade, coarse to fine (:data:`CAMERA_STEPS`), ``before`` moved by
    the estimate between steps; 2, pixels of 64x48), then, ``before`` moved by that
    shift (the camera's jitter cancelled), per level of :data:`OBJECT_LEVELS`: the flow
    ``(u, v)`` in Gaussian windows around the object (:data:`OBJECT_SIGMAS`) and of the
    background left, and the log energy of the change in the windows. Both frames are
    standardised first (lighting changes cancelled)."""
    n, _, h, w = grey.shape
    stacked = torch.cat([grey, before], 1)  # [N, 2, H, W]
    mean = stacked.mean((2, 3), keepdim=True)
    stacked = (stacked - mean) / (stacked.std((2, 3), keepdim=True) + 1e-3)
    pyramid = [torch.cat([stacked, _windows(centre, h, w)], 1)]  # [N, 2 + S + 1, H, W]
    for _ in range(1, max(*CAMERA_STEPS, *OBJECT_LEVELS) + 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    shift = grey.new_zeros(n, 2)
    for level in CAMERA_STEPS:
        p = pyramid[level]
        moved = _shift(p[:, 1:2], shift * 2.0**-level)
        u, v, _ = _solve2(_window_sums(p[:, :1], moved, p[:, -1:]))
        shift = (shift + torch.cat([u, v], 1) * 2.0**level).clamp(-6, 6)
    out = [shift.clamp(-4, 4)]
    for level in OBJECT_LEVELS:
        p = pyramid[level]
        moved = _shift(p[:, 1:2], shift * 2.0**-level)
        u, v, energy = _solve2(_window_sums(p[:, :1], moved, p[:, 2:]))
        out += [u, v, energy[:, :-1]]
    return torch.cat(out, 1)


def _products(grey: Tensor, before: Tensor, cross: bool = False) -> Tensor:
    """Lucas-Kanade products ``[N, 5, H, W]`` (``ix it, iy it, ix ix, iy iy, it it``) of
    grey frames ``before`` and ``grey [N, 1, H, W]``; with ``cross``, ``[N, 6, H, W]``:
    then ``ix iy``."""
    mean = (grey + before) * 0.5
    it = grey - before
    ix = F.pad(mean[..., :, 2:] - mean[..., :, :-2], (1, 1)) * 0.5
    iy = F.pad(mean[..., 2:, :] - mean[..., :-2, :], (0, 0, 1, 1)) * 0.5
    products = [ix * it, iy * it, ix * ix, iy * iy, it * it]
    return torch.cat([*products, ix * iy] if cross else products, 1)


def _window_sums(grey: Tensor, before: Tensor, weights: Tensor) -> Tensor:
    """The Lucas-Kanade products' weighted means ``[N, 6, S]`` in windows ``weights [N,
    S, H, W]`` (:func:`_products` with ``cross``)."""
    products = _products(grey, before, cross=True).flatten(2)  # [N, 6, HW]
    w = weights.flatten(2)  # [N, S, HW]
    return torch.bmm(products, w.transpose(1, 2)) / (w.sum(-1)[:, None] + 1e-6)


def _shift(image: Tensor, by: Tensor) -> Tensor:
    """``image [N, 1, H, W]`` moved by ``by [N, 2]`` pixels (x, y; bilinear, the edges
    repeated)."""
    n, _, h, w = image.shape
    xs = (torch.arange(w, device=image.device) + 0.5) * (2.0 / w) - 1.0  # [W]
    ys = (torch.arange(h, device=image.device) + 0.5) * (2.0 / h) - 1.0  # [H]
    gx = (xs - by[:, :1] * (2.0 / w))[:, None, :].expand(n, h, w)
    gy = (ys - by[:, 1:] * (2.0 / h))[:, :, None].expand(n, h, w)
    grid = torch.stack([gx, gy], -1)  # [N, H, W, 2]
    return F.grid_sample(image, grid, "bilinear", "border", align_corners=False)


def _solve2(sums: Tensor) -> list[Tensor]:
    """Lucas-Kanade sums ``[N, 6, R]`` (:func:`_products` with ``cross``) -> the flow ``u,
    v`` (the 2x2 least squares, regularised: along an edge or stripes, only the motion
    across them; clamped to 4) and the log energy of the change, each ``[N, R]``."""
    p, q, a, d, e, b = sums.unbind(1)
    a, d = a + 1e-3, d + 1e-3
    det = a * d - b * b
    u = -(d * p - b * q) / det
    v = -(a * q - b * p) / det
    energy = torch.log(e + 1e-5) * 0.2 + 1.0
    return [u.clamp(-4, 4), v.clamp(-4, 4), energy]


def _solve(sums: Tensor) -> list[Tensor]:
    """Lucas-Kanade sums ``[N, 5, R]`` (``ix it, iy it, ix ix, iy iy, it it``) -> the flow
    ``u, v`` (clamped to 4) and the log energy of the change, each ``[N, R]``."""
    u = -sums[:, 0] / (sums[:, 2] + 1e-3)
    v = -sums[:, 1] / (sums[:, 3] + 1e-3)
    energy = torch.log(sums[:, 4] + 1e-5) * 0.2 + 1.0
    return [u.clamp(-4, 4), v.clamp(-4, 4), energy]


def _windows(centre: Tensor, height: int, width: int) -> Tensor:
    """Weights ``[N, S + 1, H, W]``: Gaussian windows (peak 1) around ``centre [N, 2]``
    ((x, y) in [-1, 1]), one per sigma of :data:`OBJECT_SIGMAS` (pixels), then the
    background's, one minus the widest window."""
    xs = (torch.arange(width, device=centre.device) + 0.5) - (centre[:, 0, None] + 1) * width / 2
    ys = (torch.arange(height, device=centre.device) + 0.5) - (centre[:, 1, None] + 1) * height / 2
    sigma = torch.tensor(OBJECT_SIGMAS, device=centre.device)[None, :, None]  # [1, S, 1]
    gx = torch.exp(-0.5 * (xs[:, None] / sigma) ** 2)  # [N, S, W]
    gy = torch.exp(-0.5 * (ys[:, None] / sigma) ** 2)  # [N, S, H]
    w = gy[..., :, None] * gx[..., None, :]  # [N, S, H, W]
    return torch.cat([w, 1 - w[:, -1:]], 1)


def change_since(x: Tensor, last: Tensor, seen: Tensor) -> Tensor:
    """Steps ``x [B, T, ...]`` -> each step minus the one before ``[B, T, ...]``: ``last
    [B, ...]`` comes before the first step where ``seen [B, 1]`` is 1; where it is 0 (a
    fresh stream) the first step has no change (zeros)."""
    before = torch.cat([last[:, None], x[:, :-1]], dim=1)
    known = torch.cat([seen, seen.new_ones(x.shape[0], x.shape[1] - 1)], dim=1)  # [B, T]
    return (x - before) * known.reshape(*known.shape, *(1,) * (x.ndim - 2))


class MotionLabeller(nn.Module):
    """``forward(x [B, T, 3, H, W], state) -> (logits [B, T, 5], state)``.

    ``state = (h [1, B, hidden], previous encoding [B, E], seen [B, 1], previous patch
    features [B, C, h, w], previous grey frame [B, 1, H, W])``; ``None`` or
    :meth:`initial_state` is a fresh stream (``seen = 0``: no change at the first frame).
    """

    state_batch_axes = (1, 0, 0, 0, 0)
    causal = True

    def __init__(
        self, hidden: int = HIDDEN, keypoints: int = KEYPOINTS, labels: int = len(LABELS)
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.keypoints = keypoints
        self.channels = 24
        # [3, 48, 64] -> [2 x 24, 12, 16]: 4x4 patches, half of them taken as a difference
        self.patch = nn.Conv2d(3, 2 * self.channels, 4, stride=4)
        self.conv = nn.Sequential(  # [24, 12, 16] -> [32, 12, 16]
            nn.BatchNorm2d(self.channels),
            nn.ReLU(),
            nn.Conv2d(self.channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.heat = nn.Conv2d(32, keypoints, 3, padding=1)
        self.encoding = 3 * keypoints + 32  # points (x, y), strengths, pooled appearance
        self.proj = nn.Linear(2 * self.encoding + FLOW_SIZE, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, labels)

    def initial_state(self, batch: int) -> State:
        """A fresh state (zeros, ``seen = 0``)."""
        device = self.head.weight.device
        h, w = INPUT_SIZE[1] // 4, INPUT_SIZE[0] // 4
        return (
            torch.zeros(1, batch, self.hidden, device=device),
            torch.zeros(batch, self.encoding, device=device),
            torch.zeros(batch, 1, device=device),
            torch.zeros(batch, self.channels, h, w, device=device),
            torch.zeros(batch, 1, INPUT_SIZE[1], INPUT_SIZE[0], device=device),
        )

    def patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, 3, H, W]`` -> the patch features ``(a, b)``, each ``[N, C, H/4, W/4]``:
        ``a`` is taken as it is, ``b`` as its change since the frame before."""
        p = self.patch(x)
        return p[:, : self.channels], p[:, self.channels :]

    def encode(self, a: Tensor, change: Tensor) -> Tensor:
        """Patch features ``a [N, C, h, w]`` and ``change [N, C, h, w]`` (``b`` minus the
        frame before's ``b``; zeros where unknown) -> ``[N, E]``. The first layer, ``a +
        change``, is a linear map of the frame and of its pixel difference to the frame
        before, so the layers above see both where things are and which way their edges
        move. Then per heat map its soft-argmax point (x, y) in [-1, 1] (the image's
        edges), the maps' log-sum-exp strengths, and the mean of the conv features. Point
        0 is trained to follow the main object (its centre is known in rendered clips: see
        ``train_motion.py``); the others are free."""
        first = a + change * PIXEL_DIFF
        features = self.conv(first)  # [N, 32, h, w]
        heat = self.heat(features) * TEMPERATURE  # [N, K, h, w]
        n, k, h, w = heat.shape
        flat = heat.reshape(n, k, h * w)
        weights = torch.softmax(flat, dim=-1).reshape(n, k, h, w)
        xs = (torch.arange(w, device=a.device) + 0.5) * (2.0 / w) - 1.0  # cell centres
        ys = (torch.arange(h, device=a.device) + 0.5) * (2.0 / h) - 1.0
        px = (weights.sum(2) * xs).sum(-1)  # [N, K]
        py = (weights.sum(3) * ys).sum(-1)
        strength = torch.logsumexp(flat, dim=-1) / 10.0
        pooled = features.mean((2, 3))
        return torch.cat([px, py, strength, pooled], dim=1)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        y, _, _, state = self.track(x, state)
        return y, state

    def point(self, z: Tensor) -> Tensor:
        """Encodings ``[..., E]`` -> point 0, the main object's centre (x, y) in [-1, 1]
        ``[..., 2]``."""
        return z[..., [0, self.keypoints]]

    def track(self, x: Tensor, state: State | None = None) -> tuple[Tensor, Tensor, Tensor, State]:
        """:meth:`forward`, with where the main object is in each frame and how it moved:
        ``(logits [B, T, 5], point 0 [B, T, 2], flow [B, T, FLOW_SIZE], state)`` (the
        captioner crops its look at the point and reads the object's flow)."""
        batch, steps = x.shape[:2]
        if state is None:
            state = self.initial_state(batch)
        h, previous, seen, last, last_grey = state
        a, b = (p.reshape(batch, steps, *p.shape[1:]) for p in self.patches(x.flatten(0, 1)))
        change = change_since(b, last, seen)  # [B, T, C, h, w]
        z = self.encode(a.flatten(0, 1), change.flatten(0, 1)).reshape(batch, steps, -1)
        grey = x.mean(2, keepdim=True)  # [B, T, 1, H, W]
        grey_before = grey - change_since(grey, last_grey, seen)
        point = self.point(z)
        centre = point.flatten(0, 1).detach()  # fixed, as in training
        moved = flow(grey.flatten(0, 1), grey_before.flatten(0, 1), centre)
        moved = moved.reshape(batch, steps, -1)
        y, (h, z_last, seen) = self.step_encoded(z, moved, (h, previous, seen))
        return y, point, moved, (h, z_last, seen, b[:, -1], grey[:, -1])

    def step_encoded(
        self, z: Tensor, moved: Tensor, state: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The GRU over encodings ``z [B, T, E]`` (see :meth:`encode`) and flows ``moved
        [B, T, FLOW_SIZE]`` (see :func:`flow`); ``state = (h, previous encoding, seen)``
        (``None``: fresh)."""
        batch = z.shape[0]
        if state is None:
            state = self.initial_state(batch)[:3]
        h, previous, seen = state
        change = change_since(z, previous, seen) * DIFF_SCALE  # [B, T, E]
        y, h = self.rnn(torch.relu(self.proj(torch.cat([z, change, moved], dim=-1))), h)
        return self.head(y), (h, z[:, -1], torch.ones_like(seen))


def build(hidden: int = HIDDEN, seed: int = 0) -> MotionLabeller:
    """An untrained :class:`MotionLabeller` (seeded)."""
    torch.manual_seed(seed)
    return MotionLabeller(hidden)


def trained(weights: str | None = None, hidden: int = HIDDEN) -> MotionLabeller:
    """The labeller with trained weights: ``weights`` (a state dict file), else :data:`WEIGHTS`.

    A missing file is refused in one line that names the command that makes it.
    """
    return load_trained(build(hidden=hidden), weights, WEIGHTS, "motion", TRAIN_COMMAND)


def resize_rgb(frames: np.ndarray, size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """``frames [T, H, W, 3]`` uint8 BGR -> ``[T, height, width, 3]`` uint8 RGB (``size``
    is (width, height), 64x48 by default), resized as streamer's ``pixels`` features
    resize (``cv2.INTER_AREA``)."""
    out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
    for t, frame in enumerate(frames):
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        out[t] = frame[:, :, ::-1]
    return out


def normalise(rgb: Tensor) -> Tensor:
    """``[..., H, W, 3]`` uint8 RGB -> ``[..., 3, H, W]`` float32, as ``pixels`` with
    :data:`MEAN` and :data:`STD` computes it (bit for bit)."""
    x = rgb.to(torch.float32).movedim(-1, -3) / 255.0
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    return (x - mean) / std


def preprocess(frames: np.ndarray) -> Tensor:
    """``frames [T, H, W, 3]`` uint8 BGR -> the model's input ``[T, 3, 48, 64]``: what
    ``features = "pixels"`` with this pipeline's ``feature_options`` gives."""
    return normalise(torch.from_numpy(resize_rgb(frames)))
