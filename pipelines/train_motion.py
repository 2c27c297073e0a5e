"""Train the webcam motion labeller (``pipelines/motion.py``) on rendered clips.

    python pipelines/train_motion.py [--clips 800] [--total 580] [--threads 2]

Renders labelled clips (``pipelines/motion_scenes.py``; ``--jobs`` processes), resizes
them to the model's input as streamer's ``pixels`` features do, trains with cross-entropy
per frame (clips flipped left-right and up-down at random, their labels swapped to
match; the first frames of each motion, where its direction cannot be told yet, weigh
``--early``) plus a localiser loss (the encoder's first keypoint on the object's centre,
which the renderer knows), for the time the ``--total`` seconds leave after rendering,
saves ``pipelines/motion.pt``, and prints as JSON the per-frame accuracy on a validation
set and on a held-out rendered set (seeds of their own), counting frames from the 6th
frame of each motion on. Nothing is chosen by looking at the held-out set.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines import motion, motion_scenes  # noqa: E402

TRAIN_SEED, VALIDATION_SEED, HELD_OUT_SEED = 1, 2, 3
EVALUATE_S = 40.0  # seconds kept for the evaluation and saving after training
#: Label permutations of the flips: left <-> right, up <-> down.
FLIP_X = torch.tensor([0, 2, 1, 3, 4])
FLIP_Y = torch.tensor([0, 1, 2, 4, 3])


Rendered = tuple[np.ndarray, np.ndarray, np.ndarray]


def _render_part(job: tuple[int, int, int, int]) -> Rendered:
    seed, first, count, frames = job
    clips = motion_scenes.render_set(seed, count, frames, first=first)
    x = np.stack([motion.resize_rgb(c.frames) for c in clips])
    sizes = np.array([c.description.size for c in clips], np.float32)[:, None, :]  # [N, 1, 2]
    centres = (np.stack([c.centres for c in clips]) + 0.5) / sizes * 2 - 1
    return x, np.stack([c.labels for c in clips]), centres.astype(np.float32)


def render(
    seed: int, count: int, frames: int, jobs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips of set ``seed`` as model-sized RGB ``[N, T, 48, 64, 3]`` uint8, labels
    ``[N, T]`` and the object's centre ``[N, T, 2]`` (x, y in [-1, 1] across the image),
    rendered by ``jobs`` processes (the same clips whatever ``jobs``)."""
    part = -(-count // max(1, jobs * 4))
    work = [(seed, a, min(part, count - a), frames) for a in range(0, count, part)]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_render_part, work)
    else:
        parts = [_render_part(w) for w in work]
    x, y, c = (torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(3))
    return x, y, c


def predict(model: motion.MotionLabeller, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Labels ``[N, T]`` for ``x [N, T, 48, 64, 3]`` uint8 RGB, each clip from a fresh state."""
    out = []
    with torch.inference_mode():
        for part in torch.split(x, batch):
            out.append(model(motion.normalise(part))[0].argmax(-1))
    return torch.cat(out)


def as_input(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` uint8 RGB -> float32 in [-1, 1]: :func:`motion.normalise` for
    channel-first frames, in place (a training step's input; equal to 1e-7)."""
    return rgb.to(torch.float32).mul_(2 / 255).sub_(1)


def encode(model: motion.MotionLabeller, x: torch.Tensor) -> torch.Tensor:
    """Clips ``x [B, T, 3, H, W]`` uint8 RGB -> encodings ``[B, T, E]``, each clip from a
    fresh state."""
    batch, steps = x.shape[:2]
    frames = as_input(x)
    a, b = (p.reshape(batch, steps, *p.shape[1:]) for p in model.patches(frames.flatten(0, 1)))
    change = torch.cat([torch.zeros_like(b[:, :1]), b[:, 1:] - b[:, :-1]], dim=1)
    return model.encode(a.flatten(0, 1), change.flatten(0, 1)).reshape(batch, steps, -1)


def clip_flows(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Clips ``x [B, T, 3, H, W]`` uint8 RGB, the object at ``centres [B, T, 2]`` -> the
    flows :func:`motion.flow` gives the GRU ``[B, T, F]``, each clip from a fresh state."""
    with torch.no_grad():
        grey = as_input(x).mean(2, keepdim=True)  # [B, T, 1, H, W]
        before = torch.cat([grey[:, :1], grey[:, :-1]], dim=1)
        moved = motion.flow(grey.flatten(0, 1), before.flatten(0, 1), centres.flatten(0, 1))
    return moved.reshape(*x.shape[:2], -1)


def encodings(model: motion.MotionLabeller, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``x [B, T, 3, H, W]`` uint8 RGB -> encodings ``[B, T, E]`` and flows ``[B, T,
    F]`` around the encodings' own point 0, each clip from a fresh state (what
    :meth:`motion.MotionLabeller.forward` feeds its GRU)."""
    z = encode(model, x)
    return z, clip_flows(x, model.point(z).detach())


def guided_flows(
    x: torch.Tensor, centres: torch.Tensor, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """The flows of every clip ``x [N, T, 3, H, W]`` around the renderer's object centres
    ``[N, T, 2]`` moved by noise like the localiser's errors (normal, ``noise`` pixels of
    64x48; one frame in ten four times that) -> ``[N, T, F]``: computed once, so that
    most training steps need not measure them (they cost more than the rest of a step)."""
    width, height = motion.INPUT_SIZE
    scale = torch.tensor([2.0 / width, 2.0 / height]) * noise
    jitter = torch.randn(centres.shape, generator=generator) * scale
    wide = torch.rand(centres.shape[:-1], generator=generator) < 0.1
    jitter[wide] *= 4
    guided = (centres + jitter).clamp(-1, 1)
    parts = zip(torch.split(x, 16), torch.split(guided, 16), strict=True)
    return torch.cat([clip_flows(xb, cb) for xb, cb in parts])


def flip_flows(moved: torch.Tensor, axis: int) -> torch.Tensor:
    """Flows ``[..., F]`` (:func:`motion.flow` with a centre) of clips -> those of the
    clips flipped left-right (``axis`` 0) or up-down (1): regions mirrored, the motion
    along the axis negated (equal to computing them on flipped clips, to 1e-4)."""
    rows, columns = motion.FLOW_REGIONS
    size = motion.REGION_FLOW_SIZE
    regions = moved[..., :size].reshape(*moved.shape[:-1], motion.FLOW_LEVELS, 3, rows, columns)
    regions = regions.flip(-1 if axis == 0 else -2).clone()
    regions[..., axis, :, :] *= -1
    return torch.cat([regions.flatten(-4), flip_object_flow(moved[..., size:], axis)], -1)


def flip_object_flow(obj: torch.Tensor, axis: int) -> torch.Tensor:
    """The object's flows ``[..., OBJECT_FLOW_SIZE]`` (:func:`motion.object_flow`) ->
    those of the clips flipped left-right (``axis`` 0) or up-down (1): the motion along
    the axis negated."""
    sigmas = len(motion.OBJECT_SIGMAS)
    obj = obj.clone()
    obj[..., axis] *= -1  # the camera's shift
    for level in range(len(motion.OBJECT_LEVELS)):
        first = 2 + level * (3 * sigmas + 2) + axis * (sigmas + 1)
        obj[..., first : first + sigmas + 1] *= -1
    return obj


def locate_loss(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The localiser's loss: encodings' point 0 ``z[..., (0, K)]`` against the object's
    centres ``[..., 2]`` (smooth L1, in tenths of the image)."""
    point = z[..., [0, motion.KEYPOINTS]]
    return nn.functional.smooth_l1_loss(point * 10, centres * 10)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Accuracy over the counted frames (from each motion's 6th frame on), and per label."""
    mask = torch.from_numpy(motion_scenes.counted(labels.numpy()))
    right = (predicted == labels) & mask
    per = {
        name: float(right[labels == k].sum() / max(1, int((mask & (labels == k)).sum())))
        for k, name in enumerate(motion_scenes.LABELS)
    }
    return float(right.sum() / mask.sum()), per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=800, help="training clips")
    parser.add_argument("--frames", type=int, default=40, help="frames per clip")
    parser.add_argument("--validation", type=int, default=100, help="validation clips")
    parser.add_argument("--held-out", type=int, default=300, help="held-out clips")
    parser.add_argument(
        "--total",
        type=float,
        default=580.0,
        help="seconds for the whole run: rendering, "
        "training, evaluation (training gets what rendering leaves)",
    )
    parser.add_argument("--budget", type=float, default=None, help="training seconds at most")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train for this many joint steps (and the localiser for its share) instead of "
        "a time budget: for comparing settings on a loaded machine",
    )
    parser.add_argument("--hidden", type=int, default=motion.HIDDEN)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--locate", type=float, default=1.0, help="localiser loss weight")
    parser.add_argument(
        "--early", type=float, default=1.0, help="loss weight of a motion's first 5 frames"
    )
    parser.add_argument(
        "--locate-first", type=float, default=0.15, help="budget share of the localiser alone"
    )
    parser.add_argument(
        "--guided",
        type=float,
        default=0.8,
        help="share of the joint phase whose flows are measured once, around the renderer's "
        "object centres (with --centre-noise); the rest measures them around the model's "
        "own point 0, as it runs",
    )
    parser.add_argument(
        "--centre-noise", type=float, default=1.0, help="guided centres' noise, pixels of 64x48"
    )
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads"
    )
    parser.add_argument("--jobs", type=int, default=2, help="rendering processes")
    parser.add_argument("--out", default=str(motion.WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.monotonic()

    x, y, c = render(TRAIN_SEED, args.clips, args.frames, args.jobs)
    x = x.movedim(-1, -3).contiguous()  # [N, T, 3, H, W]: channels first, as the model reads
    weight = torch.where(torch.from_numpy(motion_scenes.counted(y.numpy())), 1.0, args.early)
    xv, yv, _ = render(VALIDATION_SEED, args.validation, args.frames, args.jobs)
    xh, yh, _ = render(HELD_OUT_SEED, args.held_out, args.frames, args.jobs)
    rendered = time.monotonic() - began
    print(f"rendered {len(x)}+{len(xv)}+{len(xh)} clips in {rendered:.0f} s", file=sys.stderr)
    budget = args.total - rendered - EVALUATE_S
    if args.budget is not None:
        budget = min(budget, args.budget)

    guided_at = time.monotonic()
    flows = guided_flows(x, c, args.centre_noise, torch.Generator().manual_seed(1))
    guided_s = time.monotonic() - guided_at
    budget -= guided_s

    model = motion.build(hidden=args.hidden)
    params = list(model.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    generator = torch.Generator().manual_seed(0)
    trained_at = time.monotonic()

    def spent() -> float:
        return time.monotonic() - trained_at

    joint_steps: int | None = args.steps
    locate_steps = None
    if joint_steps is not None:
        locate_steps = round(joint_steps * args.locate_first / (1 - args.locate_first))

    # 1. the localiser alone, on frames drawn from every clip (many scenes a step)
    located = 0
    while (
        located < locate_steps if locate_steps is not None else spent() < budget * args.locate_first
    ):
        clips = torch.randint(0, x.shape[0], (args.batch * 32,), generator=generator)
        frames = torch.randint(1, x.shape[1], (args.batch * 32,), generator=generator)
        with torch.no_grad():
            before = model.patches(as_input(x[clips, frames - 1]))[1]
        a, b = model.patches(as_input(x[clips, frames]))
        z = model.encode(a, b - before)
        loss = locate_loss(z, c[clips, frames])
        optimiser.zero_grad()
        torch.autograd.backward(loss)
        optimiser.step()
        located += 1
        if located % 50 == 0:
            line = f"localiser {located}: {float(loss.detach()):.4f} ({spent():.0f} s)"
            print(line, file=sys.stderr)
    # 2. everything, on whole clips, until the budget is spent; the learning rate follows
    # a cosine over the time left (a time budget, not a number of epochs)
    joint_at, joint_s = spent(), float(budget * (1 - args.locate_first))
    epochs = steps = live_steps = 0

    def progress() -> float:
        """The share of the joint phase done: of its steps, else of its time."""
        if joint_steps is not None:
            return steps / joint_steps
        return (spent() - joint_at) / joint_s

    while progress() < 1:
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for batch in torch.split(order, args.batch):
            done = min(1.0, progress())
            for group in optimiser.param_groups:
                group["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))
            xb, yb, cb, wb, fb = x[batch], y[batch], c[batch], weight[batch], flows[batch]
            if torch.rand(1, generator=generator) < 0.5:
                xb, yb, cb = xb.flip(-1), FLIP_X[yb], cb * torch.tensor([-1.0, 1.0])
                fb = flip_flows(fb, 0)
            if torch.rand(1, generator=generator) < 0.5:
                xb, yb, cb = xb.flip(-2), FLIP_Y[yb], cb * torch.tensor([1.0, -1.0])
                fb = flip_flows(fb, 1)
            if done < args.guided:
                z, moved = encode(model, xb), fb
            else:
                z, moved = encodings(model, xb)
                live_steps += 1
            logits = model.step_encoded(z, moved)[0]
            each = loss_fn(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
            loss = (each * wb.reshape(-1)).sum() / wb.sum() + args.locate * locate_loss(z, cb)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            steps += 1
            total += float(loss.detach()) * len(batch)
            if progress() >= 1:
                break
        epochs += 1
        print(f"epoch {epochs}: loss {total / len(x):.4f} ({spent():.0f} s)", file=sys.stderr)
    train_s = time.monotonic() - trained_at

    model.eval()
    torch.save(model.state_dict(), args.out)
    validation, _ = accuracy(predict(model, xv), yv)
    held, per_label = accuracy(predict(model, xh), yh)
    report = {
        "render_seconds": round(rendered, 1),
        "train_seconds": round(train_s, 1),
        "train_budget_seconds": round(budget, 1),
        "total_seconds": round(time.monotonic() - began, 1),
        "threads": args.threads,
        "render_jobs": args.jobs,
        "clips": len(x),
        "frames_per_clip": args.frames,
        "guided_flow_seconds": round(guided_s, 1),
        "localiser_steps": located,
        "steps": steps,
        "steps_with_own_centres": live_steps,
        "epochs": epochs,
        "validation_clips": len(xv),
        "validation_accuracy": round(validation, 4),
        "held_out_clips": len(xh),
        "held_out_accuracy": round(held, 4),
        "held_out_accuracy_per_label": {k: round(v, 4) for k, v in per_label.items()},
        "counted": "frames from the 6th frame of each motion on",
        "weights": args.out,
        "weights_bytes": Path(args.out).stat().st_size,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
