"""The clip captioner: a CNN per frame -> a GRU over the frames -> a GRU decoder that
generates the caption token by token, e.g. ``red circle moves left then stops``.

Vocabulary (:data:`VOCAB`, the pipeline's ``labels``): the end token ``<end>``, the
colours and shapes of ``pipelines/motion_scenes.py``, and ``moves``, the four directions,
``is``, ``still``, ``stops``, ``then``. A caption names the main object's colour and
shape, then its motions in order (:func:`caption_of`).

One stateful model does both parts, so streamer's ``generate`` head can drive it
(``[model] decode = "end"``: once per clip, from the state after its last frame):

- a frame step, ``x [B, T, 3, H, W]`` (streamer's ``pixels`` features at
  :data:`INPUT_SIZE`, RGB scaled to [-1, 1]): the encoder (convolutions over the frame
  and its change since the frame before, soft-argmax keypoints, an attention-pooled look
  at the object, a GRU over each frame's encoding and its change) advances, and the
  output is the first token's logits ``[B, T, V]`` for the clip so far;
- a token step, ``x [B, T, E]`` (the token's :meth:`CaptionModel.embed_token`): the
  decoder GRU advances from the previous token, conditioned on the clip's encoding, and
  the output is the next token's logits.

``caption.pt`` beside this module holds the trained weights (a state dict of
:class:`CaptionModel`), made by ``python pipelines/train_caption.py``; :func:`trained`
loads them from there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pipelines import motion_scenes

# the frames reach both models the same way (pixels at 64x48, RGB in [-1, 1])
from pipelines.motion import INPUT_SIZE as INPUT_SIZE
from pipelines.motion import MEAN as MEAN
from pipelines.motion import STD as STD
from pipelines.motion import normalise as normalise
from pipelines.motion import resize_rgb as resize_rgb
from pipelines.motion_scenes import COLOURS, SHAPES, Clip
from pipelines.weights import load_trained

WEIGHTS = Path(__file__).with_name("caption.pt")
TRAIN_COMMAND = "python pipelines/train_caption.py"
END = "<end>"
DIRECTIONS = ("left", "right", "up", "down")
VOCAB = (END, *COLOURS, *SHAPES, "moves", *DIRECTIONS, "is", "still", "stops", "then")
MIN_FRAMES = 8  # the shortest clip captioned ([model] min_steps)
MAX_TOKENS = 12  # the longest caption: 2 + 3 motions of 2 words + 2 "then", and <end>
MAX_MOTIONS = 3  # motions in a training clip
MIN_SEEN = 6  # frames of a clip's last motion for it to be in the caption (else cut)
KEYPOINTS = 8
TEMPERATURE = 10.0  # heat maps' scale: peaked soft-argmax from the start
DIFF_SCALE = 10.0  # a point's per-frame change is ~0.02-0.15: scaled to about 1

State = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


# --- clips and captions ---------------------------------------------------------------


def caption_of(clip: Clip, frames: int | None = None) -> str:
    """The caption of ``clip``'s first ``frames`` frames (all by default): its motions
    that start before then, as :meth:`~pipelines.motion_scenes.ClipDescription.caption`
    words them."""
    end = clip.frames.shape[0] if frames is None else frames
    motions = tuple(m for m in clip.description.motions if m.start < end)
    return dataclasses.replace(clip.description, motions=motions).caption()


def rendered_clip(seed: int, index: int) -> tuple[Clip, np.ndarray, str]:
    """Clip ``index`` of set ``seed``: the rendered clip, the frames captioned ``[T, H, W,
    3]`` uint8 BGR (its first ``T``), and their caption.

    12 to 30 frames are rendered (mostly at the model's input size, some larger); the
    clip is cut after its third motion, and a last motion seen for fewer than
    :data:`MIN_SEEN` frames is cut off, so every motion of the caption can be told."""
    rng = np.random.default_rng([seed, index])
    total = int(rng.integers(12, 31))
    size = INPUT_SIZE if rng.random() < 0.85 else ((96, 72), (128, 96))[rng.integers(2)]
    clip = motion_scenes.render_clip(rng, total, size=size)
    motions = clip.description.motions[:MAX_MOTIONS]
    end = motions[-1].end
    if len(motions) > 1 and end - motions[-1].start < MIN_SEEN:
        end = motions[-1].start
    return clip, clip.frames[:end], caption_of(clip, end)


def tokens_of(caption: str) -> list[int]:
    """The token ids of ``caption``, then the end token's."""
    return [VOCAB.index(word) for word in caption.split()] + [VOCAB.index(END)]


# --- the model ------------------------------------------------------------------------


class CaptionModel(nn.Module):
    """``forward(x, state) -> (logits [B, T, V], state)``: frames ``x [B, T, 3, H, W]``
    advance the encoder, token embeddings ``x [B, T, E]`` the decoder (see the module doc).

    ``state = (h [1, B, H], previous encoding [B, Z], seen [B, 1], decoder d [1, B, D],
    previous frame [B, 3, H, W])``; ``None`` or :meth:`initial_state` is a fresh stream.
    """

    state_batch_axes = (1, 0, 0, 1, 0)
    causal = True

    def __init__(self, hidden: int = 96, decoder: int = 96, embedding: int = 32) -> None:
        super().__init__()
        self.hidden, self.decoder_size = hidden, decoder
        self.conv = nn.Sequential(
            nn.Conv2d(6, 16, 3, stride=2, padding=1),  # the frame and its change
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.heat = nn.Conv2d(32, KEYPOINTS, 3, padding=1)
        self.look = nn.Sequential(  # a wider view, for the object's shape
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.encoding = 3 * KEYPOINTS + 96  # points, strengths, the object's look, mean, max
        self.proj = nn.Linear(2 * self.encoding, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.embed = nn.Embedding(len(VOCAB), embedding)
        self.start = nn.Parameter(torch.zeros(embedding))
        self.init = nn.Linear(hidden, decoder)
        self.context = nn.Linear(hidden, hidden)
        self.dec = nn.GRU(embedding + hidden, decoder, batch_first=True)
        self.out = nn.Linear(decoder, len(VOCAB))

    def initial_state(self, batch: int) -> State:
        """A fresh state (zeros, ``seen = 0``)."""
        w = self.out.weight
        return (
            w.new_zeros(1, batch, self.hidden),
            w.new_zeros(batch, self.encoding),
            w.new_zeros(batch, 1),
            w.new_zeros(1, batch, self.decoder_size),
            w.new_zeros(batch, 3, INPUT_SIZE[1], INPUT_SIZE[0]),
        )

    def embed_token(self, token: int) -> Tensor:
        """One token step's features ``[E]`` (streamer feeds each chosen token back)."""
        with torch.no_grad():
            return self.embed.weight[token].detach().clone()

    def encode(self, x: Tensor) -> Tensor:
        """``x [N, 3, H, W]`` -> ``[N, Z]``: per heat map its soft-argmax point (x, y) in
        [-1, 1], the maps' strengths, wider-view features pooled under heat map 0 (trained
        to follow the object), the features' mean over the image and the wider-view
        features' maximum."""
        features = self.conv(x)  # [N, 32, h, w]
        heat = self.heat(features) * TEMPERATURE  # [N, K, h, w]
        n, k, h, w = heat.shape
        flat = heat.reshape(n, k, h * w)
        weights = torch.softmax(flat, dim=-1).reshape(n, k, h, w)
        xs = (torch.arange(w, device=x.device) + 0.5) * (2.0 / w) - 1.0
        ys = (torch.arange(h, device=x.device) + 0.5) * (2.0 / h) - 1.0
        px = (weights.sum(2) * xs).sum(-1)  # [N, K]
        py = (weights.sum(3) * ys).sum(-1)
        strength = torch.logsumexp(flat, dim=-1) / 10.0
        wide = self.look(features)  # [N, 32, h/2, w/2]
        near = nn.functional.adaptive_avg_pool2d(weights[:, :1], wide.shape[2:])
        look = (wide * near).sum((2, 3)) * 4  # [N, 32]: under heat map 0
        most = wide.amax((2, 3))  # [N, 32]: the strongest response anywhere (a shape's)
        return torch.cat([px, py, strength, look, features.mean((2, 3)), most], dim=1)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0])
        if x.ndim == 3:
            return self.decode(x, state)
        z = self.encode_clip(x, state[4], state[2])
        y, (h, previous, seen) = self.step_encoded(z, state)
        logits, d = self.first_token(y)
        return logits, (h, previous, seen, d[:, -1][None], x[:, -1])

    def encode_clip(self, x: Tensor, frame: Tensor, seen: Tensor) -> Tensor:
        """Frames ``x [B, T, 3, H, W]`` -> encodings ``[B, T, Z]``, each of the frame and its
        change since the frame before (``frame [B, 3, H, W]`` before the first, when
        ``seen [B, 1]`` is 1; no change at a stream's first frame)."""
        batch, steps = x.shape[:2]
        before = torch.cat([frame[:, None], x[:, :-1]], dim=1)
        known = torch.cat([seen[:, None], seen.new_ones(batch, steps - 1, 1)], dim=1)
        both = torch.cat([x, (x - before) * known[..., None, None]], dim=2)
        flat = both.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return self.encode(flat).reshape(batch, steps, -1)

    def step_encoded(self, z: Tensor, state: State) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The encoder GRU over encodings ``z [B, T, Z]`` -> its outputs ``[B, T, H]`` and
        the encoder's part of the state."""
        batch, steps = z.shape[:2]
        h, previous, seen = state[:3]
        before = torch.cat([previous[:, None], z[:, :-1]], dim=1)
        known = torch.cat([seen[:, None], seen.new_ones(batch, steps - 1, 1)], dim=1)
        change = (z - before) * known * DIFF_SCALE
        y, h = self.rnn(torch.relu(self.proj(torch.cat([z, change], dim=-1))), h)
        return y, (h, z[:, -1], torch.ones_like(seen))

    def first_token(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder outputs ``[B, T, H]`` -> the first token's logits ``[B, T, V]`` and the
        decoder's state after the start token ``[B, T, D]``, as if the clip ended at each
        step."""
        b, t, _ = y.shape
        flat = y.reshape(b * t, 1, -1)
        d0 = torch.tanh(self.init(flat[:, 0]))[None]
        start = self.start.expand(b * t, 1, -1)
        out, d = self.dec(torch.cat([start, torch.tanh(self.context(flat))], -1), d0)
        return self.out(out).reshape(b, t, -1), d[0].reshape(b, t, -1)

    def decode(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """Token embeddings ``[B, T, E]`` -> the next tokens' logits ``[B, T, V]``; the
        encoder's state is kept, the decoder's advances."""
        h, previous, seen, d, frame = state
        context = torch.tanh(self.context(h[-1]))[:, None].expand(-1, tokens.shape[1], -1)
        out, d = self.dec(torch.cat([tokens, context], -1), d)
        return self.out(out), (h, previous, seen, d, frame)

    def teacher_forced(self, y_last: Tensor, tokens: Tensor) -> Tensor:
        """Training: the clip's last encoder output ``[B, H]`` and the caption's tokens
        ``[B, L]`` (end token included) -> logits ``[B, L, V]`` for each token, the
        start token first, then each token given the ones before."""
        b = y_last.shape[0]
        inputs = torch.cat([self.start.expand(b, 1, -1), self.embed(tokens[:, :-1])], 1)
        context = torch.tanh(self.context(y_last))[:, None].expand(-1, inputs.shape[1], -1)
        d0 = torch.tanh(self.init(y_last))[None]
        out, _ = self.dec(torch.cat([inputs, context], -1), d0)
        logits: Tensor = self.out(out)
        return logits

    def greedy(self, y_last: Tensor, max_len: int = MAX_TOKENS) -> list[list[int]]:
        """The captions' token ids (end token excluded) greedily decoded from the clips'
        last encoder outputs ``[B, H]``, the way streamer's generate head decodes."""
        logits, d = self.first_token(y_last[:, None])
        h = y_last[None]
        state = (
            h,
            h.new_zeros(h.shape[1], self.encoding),
            h.new_ones(h.shape[1], 1),
            d[:, -1][None],
            h.new_zeros(h.shape[1], 1),  # not used by decoding
        )
        end = VOCAB.index(END)
        out: list[list[int]] = [[] for _ in range(y_last.shape[0])]
        done = torch.zeros(y_last.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            token = logits[:, -1].argmax(-1)
            done |= token == end
            if bool(done.all()):
                break
            for i in torch.nonzero(~done).flatten().tolist():
                out[i].append(int(token[i]))
            logits, state = self.decode(self.embed(token)[:, None], state)
        return out


def build(hidden: int = 96, seed: int = 0) -> CaptionModel:
    """An untrained :class:`CaptionModel` (seeded)."""
    torch.manual_seed(seed)
    return CaptionModel(hidden)


def trained(weights: str | None = None, hidden: int = 96) -> CaptionModel:
    """The captioner with trained weights: ``weights`` (a state dict file), else
    :data:`WEIGHTS`. A missing file is refused in one line that names the command that
    makes it."""
    return load_trained(build(hidden=hidden), weights, WEIGHTS, "caption", TRAIN_COMMAND)
