"""The webcam motion labeller: a small CNN per frame -> keypoints -> GRU -> one label per frame.

Labels, in the order of the outputs: ``still``, ``left``, ``right``, ``up``, ``down``
(:data:`LABELS`): the motion of the main moving object between the previous frame and
this one. A single frame cannot tell a direction; the state carried from frame to frame
does (many-to-many, causal, one output per frame).

The encoder sees one frame at a time (streamer's ``pixels`` features: ``[3, 48, 64]`` RGB
scaled to [-1, 1], see :data:`INPUT_SIZE`, :data:`MEAN`, :data:`STD`). A 4x4-patch
convolution and two 3x3 ones (batch-normalised, 12x16 cells) make :data:`KEYPOINTS` heat
maps; a spatial soft-argmax turns each into a point (x, y) in [-1, 1] and a strength, so
the encoding is *where* things are, to a fraction of a cell. Point 0 is trained to follow
the main object (the renderer knows its centre); the others are free.
The state carries the GRU's hidden vector and the previous frame's encoding, so the GRU
sees each frame's encoding and its change since the frame before (the points' motion);
after a dropped frame (``on_gap = "keep"``) that change spans the frames in between,
which points the same way.

``motion.pt`` beside this module holds the trained weights (a state dict of
:class:`MotionLabeller`), made by ``python pipelines/train_motion.py``; :func:`trained`
loads them from there, so the ready pipeline works from an installed package too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from pipelines.motion_scenes import LABELS as LABELS
from pipelines.weights import load_trained

WEIGHTS = Path(__file__).with_name("motion.pt")
TRAIN_COMMAND = "python pipelines/train_motion.py"
INPUT_SIZE = (64, 48)  # (width, height): streamer's pixels feature_options.size
MEAN = (0.5, 0.5, 0.5)  # pixels feature_options.mean/std: RGB in [-1, 1]
STD = (0.5, 0.5, 0.5)
KEYPOINTS = 16
TEMPERATURE = 10.0  # heat maps' scale: peaked soft-argmax from the start
DIFF_SCALE = 30.0  # a point moves ~0.01-0.07 a frame: scaled to about 1

State = tuple[Tensor, Tensor, Tensor]


class MotionLabeller(nn.Module):
    """``forward(x [B, T, 3, H, W], state) -> (logits [B, T, 5], state)``.

    ``state = (h [1, B, hidden], previous encoding [B, E], seen [B, 1])``; ``None`` or
    :meth:`initial_state` is a fresh stream (``seen = 0``: no change at the first frame).
    """

    state_batch_axes = (1, 0, 0)
    causal = True

    def __init__(
        self, hidden: int = 64, keypoints: int = KEYPOINTS, labels: int = len(LABELS)
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Sequential(  # [3, 48, 64] -> [32, 12, 16]
            nn.Conv2d(3, 24, 4, stride=4),  # 4x4 patches
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.heat = nn.Conv2d(32, keypoints, 3, padding=1)
        self.encoding = 3 * keypoints + 32  # points (x, y), strengths, pooled appearance
        self.proj = nn.Linear(2 * self.encoding, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, labels)

    def initial_state(self, batch: int) -> State:
        """A fresh state (zeros, ``seen = 0``)."""
        device = self.head.weight.device
        return (
            torch.zeros(1, batch, self.hidden, device=device),
            torch.zeros(batch, self.encoding, device=device),
            torch.zeros(batch, 1, device=device),
        )

    def encode(self, x: Tensor) -> Tensor:
        """``x [N, 3, H, W]`` -> ``[N, E]``: per heat map its soft-argmax point (x, y) in
        [-1, 1] (the image's edges), then the maps' log-sum-exp strengths, then the mean of
        the conv features. Point 0 is trained to follow the main object (its centre is
        known in rendered clips: see ``train_motion.py``); the others are free."""
        features = self.conv(x)  # [N, 32, h, w]
        heat = self.heat(features) * TEMPERATURE  # [N, K, h, w]
        n, k, h, w = heat.shape
        flat = heat.reshape(n, k, h * w)
        weights = torch.softmax(flat, dim=-1).reshape(n, k, h, w)
        xs = (torch.arange(w, device=x.device) + 0.5) * (2.0 / w) - 1.0  # cell centres
        ys = (torch.arange(h, device=x.device) + 0.5) * (2.0 / h) - 1.0
        px = (weights.sum(2) * xs).sum(-1)  # [N, K]
        py = (weights.sum(3) * ys).sum(-1)
        strength = torch.logsumexp(flat, dim=-1) / 10.0
        pooled = features.mean((2, 3))
        return torch.cat([px, py, strength, pooled], dim=1)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        batch, steps = x.shape[:2]
        z = self.encode(x.reshape(batch * steps, *x.shape[2:])).reshape(batch, steps, -1)
        return self.step_encoded(z, state)

    def step_encoded(self, z: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The GRU over encodings ``z [B, T, E]`` (see :meth:`encode`)."""
        batch, steps = z.shape[:2]
        if state is None:
            state = self.initial_state(batch)
        h, previous, seen = state
        before = torch.cat([previous[:, None], z[:, :-1]], dim=1)  # [B, T, E]
        known = torch.cat([seen[:, None], seen.new_ones(batch, steps - 1, 1)], dim=1)
        change = (z - before) * known * DIFF_SCALE
        y, h = self.rnn(torch.relu(self.proj(torch.cat([z, change], dim=-1))), h)
        return self.head(y), (h, z[:, -1], torch.ones_like(seen))


def build(hidden: int = 64, seed: int = 0) -> MotionLabeller:
    """An untrained :class:`MotionLabeller` (seeded)."""
    torch.manual_seed(seed)
    return MotionLabeller(hidden)


def trained(weights: str | None = None, hidden: int = 64) -> MotionLabeller:
    """The labeller with trained weights: ``weights`` (a state dict file), else :data:`WEIGHTS`.

    A missing file is refused in one line that names the command that makes it.
    """
    return load_trained(build(hidden=hidden), weights, WEIGHTS, "motion", TRAIN_COMMAND)


def resize_rgb(frames: np.ndarray) -> np.ndarray:
    """``frames [T, H, W, 3]`` uint8 BGR -> ``[T, 48, 64, 3]`` uint8 RGB, resized as
    streamer's ``pixels`` features resize (``cv2.INTER_AREA``)."""
    out = np.empty((len(frames), INPUT_SIZE[1], INPUT_SIZE[0], 3), np.uint8)
    for t, frame in enumerate(frames):
        if (frame.shape[1], frame.shape[0]) != INPUT_SIZE:
            frame = cv2.resize(frame, INPUT_SIZE, interpolation=cv2.INTER_AREA)
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
