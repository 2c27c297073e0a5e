"""Train the clip captioner (``pipelines/caption.py``) on rendered clips.

    python pipelines/train_caption.py [--clips 3000] [--budget 560] [--threads 1]

Renders captioned clips (:func:`pipelines.caption.rendered_clip`: 12-30 frames, at most
three motions; ``--jobs`` processes), resizes them to the model's input as streamer's
``pixels`` features do, and trains with cross-entropy on the caption's tokens (teacher
forcing from the clip's last frame) plus auxiliary losses that make the encoder learn
fast: each frame's motion label, the object's shape and colour from each frame's
encoder output, and the encoder's first keypoint on the object's centre (the renderer
knows it). Clips are flipped left-right at random (``left``/``right`` swapped to match).

``--budget`` bounds the whole run, rendering and evaluation included: the training takes
what the rendering left (less a reserve for the evaluation), and the learning rate
follows a one-cycle schedule over that time, so a slower (shared) machine trains for
fewer steps, not longer. Saves ``pipelines/caption.pt`` (half precision) and prints as
JSON the exact-match and token accuracy of greedy captions (by the saved weights) on a
held-out rendered set (a seed of its own). Nothing is chosen by looking at the held-out
set.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines import caption, motion_scenes  # noqa: E402

TRAIN_SEED, HELD_OUT_SEED = 11, 13
MAX_FRAMES = 30
#: Token permutation of a left-right flip: left <-> right.
FLIP_TOKENS = torch.arange(len(caption.VOCAB))
_left, _right = caption.VOCAB.index("left"), caption.VOCAB.index("right")
FLIP_TOKENS[_left], FLIP_TOKENS[_right] = _right, _left
FLIP_LABELS = torch.tensor([0, 2, 1, 3, 4])  # motion labels: left <-> right


class Clips:
    """Rendered clips, padded to :data:`MAX_FRAMES`: ``x [N, T, 48, 64, 3]`` uint8 RGB,
    ``lengths [N]``, ``tokens [N, L]`` (padded with the end token), per frame ``labels
    [N, T]`` and ``centres [N, T, 2]`` (x, y in [-1, 1]), per clip ``shape`` and
    ``colour`` indices ``[N]``, and the captions."""

    def __init__(self, parts: list[dict[str, object]]) -> None:
        def cat(key: str) -> Tensor:
            return torch.from_numpy(np.concatenate([p[key] for p in parts]))

        self.x, self.lengths, self.tokens = cat("x"), cat("lengths"), cat("tokens")
        self.labels, self.centres = cat("labels"), cat("centres")
        self.shape, self.colour = cat("shape"), cat("colour")
        self.captions: list[str] = [c for p in parts for c in p["captions"]]  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.captions)


def _render_part(job: tuple[int, int, int]) -> dict[str, object]:
    seed, first, count = job
    end_id = caption.VOCAB.index(caption.END)
    x = np.zeros((count, MAX_FRAMES, caption.INPUT_SIZE[1], caption.INPUT_SIZE[0], 3), np.uint8)
    tokens = np.full((count, caption.MAX_TOKENS), end_id, np.int64)
    labels = np.zeros((count, MAX_FRAMES), np.int64)
    centres = np.zeros((count, MAX_FRAMES, 2), np.float32)
    lengths, shapes, colours, captions = [], [], [], []
    for k in range(count):
        clip, frames, text = caption.rendered_clip(seed, first + k)
        n = len(frames)
        x[k, :n] = caption.resize_rgb(frames)
        ids = caption.tokens_of(text)
        tokens[k, : len(ids)] = ids
        labels[k, :n] = clip.labels[:n]
        width, height = clip.description.size
        centres[k, :n] = (clip.centres[:n] + 0.5) / np.array([width, height]) * 2 - 1
        lengths.append(n)
        shapes.append(motion_scenes.SHAPES.index(clip.description.shape))
        colours.append(list(motion_scenes.COLOURS).index(clip.description.colour))
        captions.append(text)
    return {
        "x": x,
        "lengths": np.array(lengths, np.int64),
        "tokens": tokens,
        "labels": labels,
        "centres": centres,
        "shape": np.array(shapes, np.int64),
        "colour": np.array(colours, np.int64),
        "captions": captions,
    }


def render(seed: int, count: int, jobs: int = 1) -> Clips:
    """Clips ``0 .. count - 1`` of set ``seed``, rendered by ``jobs`` processes (the same
    clips whatever ``jobs``)."""
    part = -(-count // max(1, jobs * 4))
    work = [(seed, a, min(part, count - a)) for a in range(0, count, part)]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_render_part, work)
    else:
        parts = [_render_part(w) for w in work]
    return Clips(parts)


def encodings(model: caption.CaptionModel, x: Tensor) -> Tensor:
    """Clips ``[B, T, 48, 64, 3]`` uint8 RGB, each from a fresh stream -> ``[B, T, Z]``."""
    fresh = model.initial_state(x.shape[0])
    return model.encode_clip(caption.normalise(x), fresh[4], fresh[2])


def last_outputs(model: caption.CaptionModel, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Encoder outputs ``[B, T, H]`` for uint8 RGB clips ``x [B, T, 48, 64, 3]`` (only
    their first ``max(lengths)`` frames), and each clip's output at its last frame ``[B, H]``."""
    steps = int(lengths.max())
    x = x[:, :steps]
    b = x.shape[0]
    y, _ = model.step_encoded(encodings(model, x), model.initial_state(b))
    return y, y[torch.arange(b), lengths - 1]


def predict(model: caption.CaptionModel, clips: Clips, batch: int = 64) -> list[str]:
    """Greedy captions of ``clips``."""
    out: list[str] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(clips), batch):
            part = slice(start, start + batch)
            _, y_last = last_outputs(model, clips.x[part], clips.lengths[part])
            for ids in model.greedy(y_last):
                out.append(" ".join(caption.VOCAB[i] for i in ids))
    return out


def scores(predicted: list[str], truth: list[str]) -> tuple[float, float]:
    """Exact match (whole captions) and token accuracy: per position of the true caption
    and its end token, whether the predicted caption (and its end) has the same token."""
    exact = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    right = total = 0
    for p, t in zip(predicted, truth, strict=True):
        pw, tw = [*p.split(), caption.END], [*t.split(), caption.END]
        right += sum(i < len(pw) and pw[i] == w for i, w in enumerate(tw))
        total += len(tw)
    return exact, right / total


class Auxiliary(nn.Module):
    """Training-only heads: the motion label, shape and colour from the encoder GRU's
    outputs, and shape and colour from each frame's encoding alone."""

    def __init__(self, hidden: int, encoding: int) -> None:
        super().__init__()
        self.motion = nn.Linear(hidden, len(motion_scenes.LABELS))
        self.shape = nn.Linear(hidden, len(motion_scenes.SHAPES))
        self.colour = nn.Linear(hidden, len(motion_scenes.COLOURS))
        self.frame_shape = nn.Linear(encoding, len(motion_scenes.SHAPES))
        self.frame_colour = nn.Linear(encoding, len(motion_scenes.COLOURS))


def batches(lengths: Tensor, size: int, generator: torch.Generator) -> list[Tensor]:
    """Index batches of clips of similar length (less padding), in random order."""
    noisy = lengths.float() + torch.rand(len(lengths), generator=generator) * 6
    order = torch.argsort(noisy)
    parts = list(torch.split(order, size))
    return [parts[i] for i in torch.randperm(len(parts), generator=generator).tolist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3000, help="training clips")
    parser.add_argument("--held-out", type=int, default=400, help="held-out clips")
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole run")
    parser.add_argument("--reserve", type=float, default=25.0, help="seconds kept for the end")
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--aux", type=float, default=0.5, help="auxiliary losses' weight")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--jobs", type=int, default=2, help="rendering processes")
    parser.add_argument("--out", default=str(caption.WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.monotonic()

    train = render(TRAIN_SEED, args.clips, args.jobs)
    held = render(HELD_OUT_SEED, args.held_out, args.jobs)
    rendered = time.monotonic() - began
    print(f"rendered {len(train)}+{len(held)} clips in {rendered:.0f} s", file=sys.stderr)

    model = caption.build(hidden=args.hidden)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    aux = Auxiliary(args.hidden, model.encoding)
    params = [*model.parameters(), *aux.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ce = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    budget = args.budget - args.reserve - (time.monotonic() - began)
    trained_at = time.monotonic()
    steps = epochs = 0
    while True:
        total = count = 0.0
        for batch in batches(train.lengths, args.batch, generator):
            progress = (time.monotonic() - trained_at) / budget
            if progress >= 1.0:
                break
            # one cycle over the time left: warm up for 10 %, then cosine down to 2 %
            cosine = 0.5 * (1 + math.cos(math.pi * max(0.0, progress - 0.1) / 0.9))
            rate = max(0.05, progress / 0.1) if progress < 0.1 else 0.02 + 0.98 * cosine
            for group in optimiser.param_groups:
                group["lr"] = args.lr * rate
            loss = step_loss(model, aux, train, batch, generator, args.aux, ce)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            steps += 1
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        else:
            epochs += 1
            spent = time.monotonic() - trained_at
            print(f"epoch {epochs}: loss {total / count:.4f} ({spent:.0f} s)", file=sys.stderr)
            continue
        break
    train_s = time.monotonic() - trained_at

    # the weights in half precision (half the file); the figures are those of this file
    model.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    weights = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(weights, args.out)
    shipped = caption.trained(args.out, hidden=args.hidden)
    exact, token = scores(predict(shipped, held), held.captions)
    report = {
        "render_seconds": round(rendered, 1),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - began, 1),
        "budget_seconds": args.budget,
        "threads": args.threads,
        "render_jobs": args.jobs,
        "clips": len(train),
        "steps": steps,
        "epochs": round(steps * args.batch / len(train), 2),
        "held_out_clips": len(held),
        "held_out_exact_match": round(exact, 4),
        "held_out_token_accuracy": round(token, 4),
        "weights": args.out,
        "weights_bytes": Path(args.out).stat().st_size,
    }
    print(json.dumps(report, indent=2))
    return 0


def step_loss(
    model: caption.CaptionModel,
    aux: Auxiliary,
    clips: Clips,
    batch: Tensor,
    generator: torch.Generator,
    weight: float,
    ce: nn.CrossEntropyLoss,
) -> Tensor:
    """The loss of one batch: caption tokens, plus the auxiliary losses times ``weight``."""
    model.train()
    x, lengths, tokens = clips.x[batch], clips.lengths[batch], clips.tokens[batch]
    labels, centres = clips.labels[batch], clips.centres[batch]
    if torch.rand(1, generator=generator) < 0.5:  # flip left-right
        x, tokens, labels = x.flip(-2), FLIP_TOKENS[tokens], FLIP_LABELS[labels]
        centres = centres * torch.tensor([-1.0, 1.0])
    steps = int(lengths.max())
    b = len(batch)
    z = encodings(model, x[:, :steps])
    y, _ = model.step_encoded(z, model.initial_state(b))
    y_last = y[torch.arange(b), lengths - 1]
    logits = model.teacher_forced(y_last, tokens)
    loss = ce(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    mask = torch.arange(steps)[None] < lengths[:, None]  # [B, T]: the clip's real frames
    labels, centres = labels[:, :steps], centres[:, :steps]
    ym = y[mask]
    shape = clips.shape[batch][:, None].expand(-1, steps)[mask]
    colour = clips.colour[batch][:, None].expand(-1, steps)[mask]
    point = z[..., [0, caption.KEYPOINTS]][mask]
    zm = z[mask]
    extra = (
        ce(aux.motion(ym), labels[mask])
        + ce(aux.shape(ym), shape)
        + ce(aux.colour(ym), colour)
        + ce(aux.frame_shape(zm), shape)
        + ce(aux.frame_colour(zm), colour)
        + nn.functional.smooth_l1_loss(point * 10, centres[mask] * 10)
    )
    combined: Tensor = loss + weight * extra
    return combined


if __name__ == "__main__":
    raise SystemExit(main())
