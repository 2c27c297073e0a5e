"""Per-frame F1 of what ``pipelines/sound_events.toml`` emits, with its smoothing picked on
validation, next to the raw thresholded scores (prints JSON).

Run after ``pipelines/train_sound_events.py`` (``make train`` does): about a minute.

The training script scores the model's raw per-step decisions (score >= the label's
threshold). The pipeline does not emit those: ``[model.smoothing] per_label = true`` runs
one :class:`~streamer.stages.model.postprocess.Smoother` per label (hysteresis, minimum on and off
durations) and emits each label's ``segment`` outputs, and those segments are the
labelling a user gets per frame. This script renders the same validation (seed 2) and
held-out (seed 3, held-out speech) scenes as the training script, runs streamer's own
:class:`~streamer.stages.model.labelwise.LabelwiseSmoother` over each scene's scores, picks
``hysteresis``, ``min_on`` and ``min_off`` from a small grid by VALIDATION macro F1 only,
and reports the held-out per-frame F1 of the segments with that pick (a frame counts as
``L`` when a segment of ``L`` covers it), and of the raw decisions for comparison. The
picked values belong in ``sound_events.toml``; a test checks that they are there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines import sound_events, sound_scenes  # noqa: E402
from pipelines.train_sound_events import (  # noqa: E402
    HELD_OUT_SEED,
    VAL_SEED,
    f1_scores,
    features,
    predict,
)
from streamer.frames import Output  # noqa: E402
from streamer.stages.model.labelwise import LabelwiseSmoother  # noqa: E402

PIPELINE = Path(__file__).with_name("sound_events.toml")
HOP_S = 0.01  #: logmel's default hop: one step per 10 ms
#: The smoothing values tried. ``min_on`` starts at 100 ms: a shorter segment is a blip
#: to a user (a 70 ms "music" in the middle of speech), whatever it does to frame F1.
GRID = {
    "hysteresis": (0.0, 0.1, 0.15),
    "min_on": (0.1, 0.15, 0.2),
    "min_off": (0.1, 0.2, 0.3),
}


def segment_frames(
    p: np.ndarray, thresholds: dict[str, float], smoothing: dict[str, float]
) -> np.ndarray:
    """``p [T, L]`` scores of one scene -> ``[T, L]`` bool: covered by a segment of the
    label, as streamer's per-label smoother makes them (streamed from a fresh start)."""
    labels = list(sound_events.LABELS)
    smoother = LabelwiseSmoother(
        {label: thresholds[label] for label in labels},
        frame_duration=HOP_S,
        hysteresis=smoothing["hysteresis"],
        min_on=smoothing["min_on"],
        min_off=smoothing["min_off"],
        emit_frames=False,
    )
    outputs = [
        Output("s", "frame", t, t, t * HOP_S, None, dict(zip(labels, row, strict=True)), 0.0)
        for t, row in enumerate(p.tolist())
    ]
    on = np.zeros(p.shape, dtype=bool)
    for segment in smoother.push(outputs) + smoother.end():
        if segment.kind == "segment" and segment.label is not None:
            on[segment.start : segment.end + 1, labels.index(segment.label)] = True
    return on


def segment_f1(
    p: np.ndarray, y: np.ndarray, thresholds: dict[str, float], smoothing: dict[str, float]
) -> np.ndarray:
    """Per-label F1 ``[L]`` of the segments over scenes ``p, y [B, T, L]``."""
    on = np.concatenate([segment_frames(scene, thresholds, smoothing) for scene in p])
    flat = y.reshape(-1, y.shape[-1])
    return f1_scores(on.astype(np.float32), flat, np.full(flat.shape[1], 0.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="default: pipelines/sound_events.pt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = tomllib.loads(PIPELINE.read_text())["model"]
    thresholds = {k: float(v) for k, v in config["thresholds"].items()}
    model = sound_events.trained(args.weights)
    val = sound_scenes.render_set(VAL_SEED, 120, part="train", espeak=True)
    held = sound_scenes.render_set(HELD_OUT_SEED, 200, part="test")
    sets = {}
    for name, scenes in (("validation", val), ("held_out", held)):
        x, y = features(scenes)
        sets[name] = (predict(model, x).numpy(), y.numpy())
    labels = list(sound_events.LABELS)
    limits = np.array([thresholds[label] for label in labels])
    raw = {
        name: f1_scores(p.reshape(-1, len(labels)), y.reshape(-1, len(labels)), limits)
        for name, (p, y) in sets.items()
    }
    tried = []
    for values in itertools.product(*GRID.values()):
        smoothing = dict(zip(GRID, values, strict=True))
        score = float(segment_f1(*sets["validation"], thresholds, smoothing).mean())
        tried.append((score, smoothing))
    val_best, picked = max(tried, key=lambda t: t[0])  # the first of equal ones
    held_f1 = segment_f1(*sets["held_out"], thresholds, picked)
    report = {
        "thresholds": thresholds,
        "smoothing_picked_on_validation": picked,
        "validation_macro_f1": {
            "raw": round(float(raw["validation"].mean()), 4),
            "segments": round(val_best, 4),
        },
        "held_out_f1_raw": {
            k: round(float(v), 4) for k, v in zip(labels, raw["held_out"], strict=True)
        },
        "held_out_f1_segments": {
            k: round(float(v), 4) for k, v in zip(labels, held_f1, strict=True)
        },
        "held_out_macro_f1": {
            "raw": round(float(raw["held_out"].mean()), 4),
            "segments": round(float(held_f1.mean()), 4),
        },
        "in_pipeline_file": all(config["smoothing"].get(k) == v for k, v in picked.items())
        and config["smoothing"].get("segment_labels") == labels,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
