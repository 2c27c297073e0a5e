"""Train the sound-event tagger (``pipelines/sound_events.py``) on rendered scenes.

    python pipelines/train_sound_events.py [--clips 1600] [--epochs 80] [--budget 540]

Renders labelled scenes (``pipelines/sound_scenes.py``: training speech, and ``espeak-ng``
voices when installed), computes streamer's own ``logmel`` features (so training features
equal streaming features), trains the tagger with one sigmoid per label (the features'
normalisation kept in it), saves ``pipelines/sound_events.pt``, picks per-label
thresholds on a validation set, and prints per-label F1 per step on a held-out set (held-out
speech, other seeds) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines import sound_events, sound_scenes  # noqa: E402
from streamer.stages.model.features import logmel_offline  # noqa: E402

TRAIN_SEED, VAL_SEED, HELD_OUT_SEED = 1, 2, 3


def features(scenes: list[sound_scenes.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked log-mel ``x [B, T, 40]`` and labels ``y [B, T, 5]`` of equal-length scenes."""
    xs, ys = [], []
    for scene in scenes:
        x = logmel_offline(scene.audio, rate=sound_scenes.RATE)
        if x.shape[0] != scene.labels.shape[0]:
            steps, rows = x.shape[0], scene.labels.shape[0]
            raise RuntimeError(f"{steps} feature steps but {rows} label rows")
        xs.append(x)
        ys.append(torch.from_numpy(scene.labels.astype(np.float32)))
    return torch.stack(xs), torch.stack(ys)


def predict(model: sound_events.SoundEventTagger, x: torch.Tensor) -> torch.Tensor:
    """Probabilities ``[B, T, 5]`` for ``x [B, T, 40]``, each clip from a fresh state."""
    with torch.no_grad():
        return torch.sigmoid(model(x)[0])


def f1_scores(p: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per-label F1 ``[5]`` of ``p >= thresholds`` against ``y``, both ``[N, 5]``."""
    on = p >= thresholds[None, :]
    truth = y > 0.5
    tp = (on & truth).sum(0)
    fp = (on & ~truth).sum(0)
    fn = (~on & truth).sum(0)
    return np.asarray(2 * tp / np.maximum(2 * tp + fp + fn, 1))


MAX_LR = 7e-3
EVALUATION_S = 30.0  # kept from the budget for thresholds, held-out scores and saving


def learning_rate(progress: float, peak: float = MAX_LR) -> float:
    """Warm up to ``peak`` over the first 10% of training, then a cosine decay to ~0
    (``progress`` 0..1)."""
    if progress < 0.1:
        return peak * (0.1 + 0.9 * progress / 0.1)
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - 0.1) / 0.9))


def flat(t: torch.Tensor) -> np.ndarray:
    """``t [B, T, L]`` as ``[B*T, L]`` numpy."""
    return np.asarray(t.reshape(-1, t.shape[-1]).numpy())


def pick_thresholds(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per label, the threshold in 0.05..0.95 (steps of 0.01) with the best F1 on ``(p, y)``."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = np.stack([f1_scores(p, y, np.full(p.shape[1], t)) for t in grid])
    return np.asarray(grid[scores.argmax(0)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1600, help="training scenes (4 s each)")
    parser.add_argument("--epochs", type=int, default=80, help="at most (see --budget)")
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds for the whole run, rendering included: training gets what rendering"
        " left (less EVALUATION_S), and its learning-rate schedule shortens to fit, so a busy"
        " machine trains fewer steps, not worse-scheduled ones",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest)")
    parser.add_argument("--crop", type=int, default=150, help="training sequence length (steps)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=MAX_LR, help="peak learning rate")
    parser.add_argument("--out", default=str(sound_events.WEIGHTS))
    parser.add_argument("--no-espeak", action="store_true", help="recorded speech only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # no slow denormal floats in the GRU's small values
    began = time.monotonic()

    espeak = not args.no_espeak
    train = sound_scenes.render_set(TRAIN_SEED, args.clips, part="train", espeak=espeak)
    val = sound_scenes.render_set(VAL_SEED, 120, part="train", espeak=espeak)
    held = sound_scenes.render_set(HELD_OUT_SEED, 200, part="test")
    x, y = features(train)
    xv, yv = features(val)
    xh, yh = features(held)
    rendered = time.monotonic() - began
    counts = f"{len(train)}+{len(val)}+{len(held)}"
    print(f"rendered {counts} scenes in {rendered:.0f} s", file=sys.stderr)

    mean = x.reshape(-1, x.shape[-1]).mean(0)
    std = x.reshape(-1, x.shape[-1]).std(0).clamp_min(1e-3)
    model = sound_events.build(hidden=args.hidden, layers=args.layers)
    model.mean.copy_(mean)
    model.std.copy_(std)
    params = list(model.parameters())
    optimiser = torch.optim.Adam(params, lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    trained_at = time.monotonic()
    budget = max(60.0, args.budget - (trained_at - began) - EVALUATION_S)
    total_steps = args.epochs * -(-len(x) // args.batch)
    step, epoch, progress = 0, 0, 0.0
    while progress < 1.0:
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for batch in torch.split(order, args.batch):
            # the schedule follows whichever runs out first: the steps or the time budget
            spent = time.monotonic() - trained_at
            progress = max(step / total_steps, spent / budget)
            if progress >= 1.0:
                break
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(progress, args.lr)
            # a random window of each scene, from a fresh state (as a stream starts)
            at = int(torch.randint(0, x.shape[1] - args.crop + 1, (1,), generator=generator))
            window = slice(at, at + args.crop)
            logits = model(x[batch, window])[0]
            loss = loss_fn(logits, y[batch, window])
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            total += float(loss.detach()) * len(batch)
        epoch += 1
        spent = time.monotonic() - trained_at
        print(f"epoch {epoch}: loss {total / len(x):.4f} ({spent:.0f} s)", file=sys.stderr)
    train_s = time.monotonic() - trained_at

    model.eval()
    torch.save(model.state_dict(), args.out)

    pv = flat(predict(model, xv))
    thresholds = pick_thresholds(pv, flat(yv))
    val_f1 = f1_scores(pv, flat(yv), thresholds)
    f1 = f1_scores(flat(predict(model, xh)), flat(yh), thresholds)
    report = {
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - began, 1),
        "clips": len(train),
        "espeak": len(sound_scenes.speech_pool("train", espeak)) > 1,  # (cached) voices added
        "thresholds": {
            k: round(float(v), 2) for k, v in zip(sound_events.LABELS, thresholds, strict=True)
        },
        "held_out_f1": {
            k: round(float(v), 4) for k, v in zip(sound_events.LABELS, f1, strict=True)
        },
        "held_out_macro_f1": round(float(f1.mean()), 4),
        "validation_macro_f1": round(float(val_f1.mean()), 4),
        "weights": args.out,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
