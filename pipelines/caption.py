"""The clip captioner: the motion labeller's encoder + an object look -> a GRU decoder that
generates the caption token by token, e.g. ``red circle moves left then stops``.

Vocabulary (:data:`VOCAB`, the pipeline's ``labels``): the end token ``<end>``, the
colours and shapes of ``pipelines/motion_scenes.py``, and ``moves``, the four directions,
``is``, ``still``, ``stops``, ``then``. A caption names the main object's colour and
shape, then its motions in order (:func:`caption_of`).

A caption has two parts that need different eyes, so the model has two:

- **what moves how**: the webcam motion labeller (``pipelines/motion.py``, its trained
  weights copied in and kept frozen) runs over the clip at its own 64x48 (the input
  pooled 2x2). Its per-frame motion scores, the point it tracks the object with
  (keypoint 0) and the object's own flow there (Lucas-Kanade, the camera's shake taken
  out: a measure beside the labeller's judgement, for the stretches where its labels
  waver) feed a small summary GRU, which turns the frame-by-frame labels into the
  order of the motions;
- **what it is**: around that point, a :data:`CROP`-pixel window of the full 128x96
  frame goes through a small CNN (:class:`Look`); its features are averaged over the
  clip's frames, so every frame adds evidence of the object's shape and colour, and
  the look's two heads name them (log-probabilities per shape and colour).

The decoder GRU starts from the summary and the look's naming and writes the words (the
object's two are a copy of the naming: heads trained on every frame name the object
better than a decoder trained on 4,000 clips reads raw features). One stateful model
does it all, so streamer's ``generate`` head drives it (``[model] decode = "end"``: once
per clip, from the state after its last frame):

- a frame step, ``x [B, T, 3, H, W]`` (streamer's ``pixels`` features at
  :data:`INPUT_SIZE`, RGB scaled to [-1, 1]): the labeller, the summary and the look's
  running sum advance; the output is the first token's logits ``[B, T, V]`` for the clip
  so far;
- a token step, ``x [B, T, E]`` (the token's :meth:`CaptionModel.embed_token`): the
  decoder advances from the previous token; the output is the next token's logits.

``caption.pt`` beside this module holds the trained weights (a state dict of
:class:`CaptionModel`, the labeller's included), made by ``python
pipelines/train_caption.py``; :func:`trained` loads them from there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines import motion, motion_scenes
from pipelines.motion import MEAN as MEAN
from pipelines.motion import STD as STD
from pipelines.motion import normalise as normalise
from pipelines.motion_scenes import COLOURS, SHAPES, Clip
from pipelines.weights import load_trained

WEIGHTS = Path(__file__).with_name("caption.pt")
TRAIN_COMMAND = "python pipelines/train_caption.py"
END = "<end>"
DIRECTIONS = ("left", "right", "up", "down")
VOCAB = (END, *COLOURS, *SHAPES, "moves", *DIRECTIONS, "is", "still", "stops", "then")
INPUT_SIZE = (128, 96)  # (width, height): pixels feature_options.size; 2x the labeller's
CROP = 40  # the object's window, pixels of the input frame (a radius of up to 21 fits)
MIN_FRAMES = 8  # the shortest clip captioned ([model] min_steps)
MAX_TOKENS = 12  # the longest caption: 2 + 3 motions of 2 words + 2 "then", and <end>
MAX_MOTIONS = 3  # motions in a training clip
MIN_SEEN = 6  # frames of a clip's last motion for it to be in the caption (else cut)
#: Rendering sizes of the captioned clips and their weights (each resized to the input).
RESOLUTIONS = ((128, 96), (160, 120))
RESOLUTION_WEIGHTS = (0.75, 0.25)

#: Per frame, the summary GRU's inputs: the labeller's log-probabilities, its point and
#: the point's change, and the object's own flow (:func:`pipelines.motion.object_flow`).
SUMMARY_INPUTS = len(motion.LABELS) + 4 + motion.OBJECT_FLOW_SIZE

#: The look's naming of the object (:meth:`Look.name`): a log-probability per shape and colour.
NAMES = len(SHAPES) + len(COLOURS)

MotionState = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
#: (the labeller's state, summary h [1, B, S], the look's sum [B, A + 1], decoder d [1, B, D])
State = tuple[MotionState, Tensor, Tensor, Tensor]


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

    12 to 30 frames are rendered at one of :data:`RESOLUTIONS` (a webcam's frames are
    larger still: 64x48, the motion labeller's size, leaves an object 8 pixels across,
    too few to tell a hexagon from a circle); the clip is cut after its third motion, and
    a last motion seen for fewer than :data:`MIN_SEEN` frames is cut off, so every motion
    of the caption can be told."""
    rng = np.random.default_rng([seed, index])
    total = int(rng.integers(12, 31))
    size = RESOLUTIONS[rng.choice(len(RESOLUTIONS), p=RESOLUTION_WEIGHTS)]
    clip = motion_scenes.render_clip(rng, total, size=size)
    motions = clip.description.motions[:MAX_MOTIONS]
    end = motions[-1].end
    if len(motions) > 1 and end - motions[-1].start < MIN_SEEN:
        end = motions[-1].start
    return clip, clip.frames[:end], caption_of(clip, end)


def tokens_of(caption: str) -> list[int]:
    """The token ids of ``caption``, then the end token's."""
    return [VOCAB.index(word) for word in caption.split()] + [VOCAB.index(END)]


def resize_rgb(frames: np.ndarray) -> np.ndarray:
    """``frames [T, H, W, 3]`` uint8 BGR -> ``[T, 96, 128, 3]`` uint8 RGB, resized as
    streamer's ``pixels`` features resize (:func:`pipelines.motion.resize_rgb`)."""
    return motion.resize_rgb(frames, INPUT_SIZE)


# --- the model ------------------------------------------------------------------------


def crop(x: Tensor, point: Tensor, size: int = CROP) -> Tensor:
    """Frames ``x [N, 3, H, W]`` -> their ``size``-pixel windows ``[N, 3, size, size]``
    centred on ``point [N, 2]`` (x, y in [-1, 1]; zeros outside the frame)."""
    n, _, height, width = x.shape
    theta = x.new_zeros(n, 2, 3)
    theta[:, 0, 0] = size / width
    theta[:, 1, 1] = size / height
    theta[:, :, 2] = point
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


class Look(nn.Module):
    """The object's window ``[N, 3, CROP, CROP]`` -> ``[N, A + 1]``: features (its shape
    and colour) times a weight in (0, 1), then the weight. Summed over a clip's frames
    and divided by the weights' sum, they are the weighted mean features: a window that
    missed the object can weigh little. Its two heads name the shape and the colour
    from (mean) features: :meth:`name`."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.net = nn.Sequential(
            *block(3, 16),
            nn.MaxPool2d(2),  # CROP / 2
            *block(16, 32),
            nn.MaxPool2d(2),  # CROP / 4
            *block(32, 48),
            nn.MaxPool2d(2),  # CROP / 8
            *block(48, 48),
            nn.Flatten(),
        )
        self.features = features
        flat = 48 * (CROP // 8) ** 2
        self.describe = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.weigh = nn.Linear(flat, 1)
        self.shape = nn.Linear(features, len(SHAPES))
        self.colour = nn.Linear(features, len(COLOURS))

    def forward(self, window: Tensor) -> Tensor:
        hidden = self.net(window)
        weight = torch.sigmoid(self.weigh(hidden))
        return torch.cat([self.describe(hidden) * weight, weight], dim=-1)

    def name(self, features: Tensor) -> Tensor:
        """Features ``[..., A]`` -> the log-probabilities of the shapes, then of the
        colours ``[..., NAMES]``: what the decoder is told of the object (its words
        for it are then a copy, not a second reading of the features)."""
        shape = self.shape(features).log_softmax(-1)
        return torch.cat([shape, self.colour(features).log_softmax(-1)], dim=-1)


def mean_look(total: Tensor) -> Tensor:
    """The look's sums ``[..., A + 1]`` over frames -> their weighted mean features ``[..., A]``."""
    return total[..., :-1] / total[..., -1:].clamp(min=1e-4)


class CaptionModel(nn.Module):
    """``forward(x, state) -> (logits [B, T, V], state)``: frames ``x [B, T, 3, H, W]``
    advance the encoders, token embeddings ``x [B, T, E]`` the decoder (see the module
    doc). ``state`` (:data:`State`): ``None`` or :meth:`initial_state` is a fresh stream.
    """

    causal = True

    def __init__(
        self, summary: int = 64, decoder: int = 96, embedding: int = 32, look: int = 64
    ) -> None:
        super().__init__()
        self.motion = motion.build()
        self.motion.requires_grad_(False)
        self.look = Look(look)
        self.summary_size, self.decoder_size = summary, decoder
        self.state_batch_axes = (*motion.MotionLabeller.state_batch_axes, 1, 0, 1)
        self.summary = nn.GRU(SUMMARY_INPUTS, summary, batch_first=True)
        self.embed = nn.Embedding(len(VOCAB), embedding)
        self.start = nn.Parameter(torch.zeros(embedding))
        self.init = nn.Linear(summary + NAMES, decoder)
        self.context = nn.Linear(summary + NAMES, decoder)
        self.dec = nn.GRU(embedding + decoder, decoder, batch_first=True)
        self.out = nn.Linear(decoder, len(VOCAB))

    def train(self, mode: bool = True) -> CaptionModel:
        """As :meth:`nn.Module.train`; the frozen labeller stays in eval mode."""
        super().train(mode)
        self.motion.eval()
        return self

    def initial_state(self, batch: int) -> State:
        """A fresh state (zeros)."""
        w = self.out.weight
        return (
            self.motion.initial_state(batch),
            w.new_zeros(1, batch, self.summary_size),
            w.new_zeros(batch, self.look.features + 1),
            w.new_zeros(1, batch, self.decoder_size),
        )

    def embed_token(self, token: int) -> Tensor:
        """One token step's features ``[E]`` (streamer feeds each chosen token back)."""
        with torch.no_grad():
            return self.embed.weight[token].detach().clone()

    def sense(
        self, x: Tensor, state: MotionState, window: int = CROP
    ) -> tuple[Tensor, Tensor, MotionState]:
        """Frames ``x [B, T, 3, 96, 128]`` -> per frame the summary GRU's inputs ``[B, T,
        SUMMARY_INPUTS]`` (the labeller's log-probabilities, its point and the point's
        change, the object's own flow), the object's windows ``[B, T, 3, window,
        window]``, and the labeller's state after them."""
        batch, steps = x.shape[:2]
        small = F.avg_pool2d(x.flatten(0, 1), 2)
        small = small.reshape(batch, steps, *small.shape[1:])
        logits, point, flow, after = self.motion.track(small, state)
        moved = motion.change_since(point, self.motion.point(state[1]), state[2]) * 10.0
        own = flow[..., motion.REGION_FLOW_SIZE :]  # the object's flow, the camera's taken out
        inputs = torch.cat([logits.log_softmax(-1), point, moved, own], dim=-1)
        windows = crop(x.flatten(0, 1), point.flatten(0, 1).detach(), window)
        return inputs, windows.reshape(batch, steps, *windows.shape[1:]), after

    def watch(self, x: Tensor, state: MotionState) -> tuple[Tensor, Tensor, MotionState]:
        """:meth:`sense`, with the windows seen by the look: ``[B, T, A + 1]``."""
        inputs, windows, after = self.sense(x, state)
        looks = self.look(windows.flatten(0, 1)).reshape(*windows.shape[:2], -1)
        return inputs, looks, after

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0])
        if x.ndim == 3:
            return self.decode(x, state)
        moving, h, total, _ = state
        inputs, looks, moving = self.watch(x, moving)
        y, h = self.summary(inputs, h)  # [B, T, S]
        sums = total[:, None] + looks.cumsum(1)  # [B, T, A + 1]
        logits, d = self.first_token(torch.cat([y, self.look.name(mean_look(sums))], dim=-1))
        return logits, (moving, h, sums[:, -1], d[:, -1][None])

    def clip_vector(self, state: State) -> Tensor:
        """The decoder's condition ``[B, S + NAMES]`` from a state: the summary and the
        look's naming of the object."""
        _, h, total, _ = state
        return torch.cat([h[-1], self.look.name(mean_look(total))], dim=-1)

    def first_token(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Clip vectors ``c [B, T, S + NAMES]`` -> the first token's logits ``[B, T, V]`` and
        the decoder's state after the start token ``[B, T, D]``, as if the clip ended at
        each step."""
        b, t, _ = c.shape
        flat = c.reshape(b * t, -1)
        d0 = torch.tanh(self.init(flat))[None]
        start = self.start.expand(b * t, 1, -1)
        out, d = self.dec(torch.cat([start, torch.tanh(self.context(flat))[:, None]], -1), d0)
        return self.out(out).reshape(b, t, -1), d[0].reshape(b, t, -1)

    def decode(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """Token embeddings ``[B, T, E]`` -> the next tokens' logits ``[B, T, V]``; the
        encoders' state is kept, the decoder's advances."""
        context = torch.tanh(self.context(self.clip_vector(state)))
        context = context[:, None].expand(-1, tokens.shape[1], -1)
        out, d = self.dec(torch.cat([tokens, context], -1), state[3])
        return self.out(out), (*state[:3], d)

    def teacher_forced(self, c: Tensor, tokens: Tensor) -> Tensor:
        """Training: clip vectors ``c [B, S + NAMES]`` and the captions' tokens ``[B, L]`` (end
        token included) -> logits ``[B, L, V]`` for each token, the start token first,
        then each token given the ones before."""
        b = c.shape[0]
        inputs = torch.cat([self.start.expand(b, 1, -1), self.embed(tokens[:, :-1])], 1)
        context = torch.tanh(self.context(c))[:, None].expand(-1, inputs.shape[1], -1)
        out, _ = self.dec(torch.cat([inputs, context], -1), torch.tanh(self.init(c))[None])
        logits: Tensor = self.out(out)
        return logits

    def greedy(self, x: Tensor, max_len: int = MAX_TOKENS) -> list[list[int]]:
        """The captions' token ids (end token excluded) of clips ``x [B, T, 3, 96, 128]``
        (all ``T`` frames each, from a fresh state), greedily decoded the way streamer's
        generate head decodes."""
        logits, state = self(x)
        return self.greedy_from(logits[:, -1], state, max_len)

    def restart(self, state: State) -> tuple[Tensor, State]:
        """The first token's logits ``[B, V]`` and the state after the start token, from
        the encoders' part of ``state`` (what :meth:`forward` gives at a clip's last
        frame; the decoder's part is not read)."""
        logits, d = self.first_token(self.clip_vector(state)[:, None])
        return logits[:, -1], (*state[:3], d[:, -1][None])

    def greedy_from(
        self, logits: Tensor, state: State, max_len: int = MAX_TOKENS
    ) -> list[list[int]]:
        """Greedy token ids (end token excluded) from the first token's logits ``[B, V]``
        and the state after the start token."""
        end = VOCAB.index(END)
        out: list[list[int]] = [[] for _ in range(logits.shape[0])]
        done = torch.zeros(logits.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            token = logits.argmax(-1)
            done |= token == end
            if bool(done.all()):
                break
            for i in torch.nonzero(~done).flatten().tolist():
                out[i].append(int(token[i]))
            step, state = self.decode(self.embed(token)[:, None], state)
            logits = step[:, -1]
        return out


def build(seed: int = 0) -> CaptionModel:
    """An untrained :class:`CaptionModel` (seeded; its labeller untrained too)."""
    torch.manual_seed(seed)
    return CaptionModel()


def trained(weights: str | None = None) -> CaptionModel:
    """The captioner with trained weights: ``weights`` (a state dict file), else
    :data:`WEIGHTS`. A missing file is refused in one line that names the command that
    makes it."""
    return load_trained(build(), weights, WEIGHTS, "caption", TRAIN_COMMAND)
