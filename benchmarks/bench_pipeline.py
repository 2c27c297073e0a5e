"""The whole pipeline to a JSONL file: 64 streams batched vs unbatched, and offline vs bare.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick] [--threads N]`` (about 40 s;
``--quick`` about 15 s).

Model: ``RNNModel(GRU(64 -> 128, 2 layers) + Linear(128, 2))``, ``features = "raw"`` (a
frame of 64 mono samples is one step of 64 features), labels ``a``/``b``.

1. Batching (target 2): 64 scripted sources, one stream each, 100 frames/s, through
   ``source -> channel -> ModelStage -> fan-out -> JsonlSink`` (a real file in a temporary
   folder), ``realtime`` mode on a ``VirtualClock``: every stream's frame ``i`` is
   delivered at ``i / 100`` s, and time stands still while the model or the JSONL writer
   works, so the stage finds the 64 streams' frames ready together, one frame per stream
   per tick, and nothing is dropped for being slow. Wall time of the run, ``max_batch = 1``
   (unbatched: one model call per frame) against ``max_batch = 64``; ``max_wait_ms = 1``
   is given too. The bare-torch limit (64 separate ``rnn(x [1, 1, 64], h)`` calls per tick
   against one ``[64, 1, 64]`` call) is measured in the same process.
2. Offline (target 3): one stream of 60,000 steps through the same pipeline in
   ``offline`` mode to a JSONL file, against the bare ``head(rnn(x)[0])`` on the same
   ``[1, 60000, 64]`` tensor plus writing the same JSON lines (softmax scores, argmax
   label, same keys) to a file in a plain loop. The figure is bare time / pipeline time,
   for two settings of the stage: ``offline_chunk = 0`` (the stream collected to its end,
   then one forward) and ``offline_chunk = 1024`` (pieces stepped on the model's thread
   while the source goes on, as ``pipelines/audio_tagging.toml`` does for its causal
   model); the target is checked on the second, both are reported.

Torch runs on one thread (``--threads``), on both sides: the event loop and the JSONL
writer need the other core (two torch threads on two busy cores make every op wait for a
time slice).

Each timing is the best of ``--repeats`` runs, the configurations interleaved so drift in
the machine's load hits all alike. Prints one JSON object; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import emit, loadavg, log
from torch import nn

from streamer.clock import Clock, VirtualClock
from streamer.frames import Frame, Item, StreamEnd, StreamStart
from streamer.models import RNNModel
from streamer.pipeline import Mode, Pipeline
from streamer.sinks import JsonlSink
from streamer.sources.base import Pace
from streamer.stages.model import ModelSettings, ModelStage
from streamer.testing import ScriptedSource
from streamer.worker import Worker

FEATURES, HIDDEN, LAYERS, STREAMS = 64, 128, 2, 64
FRAMES_PER_S = 100.0
RATE = FRAMES_PER_S * FEATURES  # samples per second: FEATURES samples per frame
LABELS = ("a", "b")
TARGETS = {"batched_over_unbatched_min": 7.0, "offline_bare_over_pipeline_min": 0.9}
#: offline runs: the whole stream in one forward at its end (0), and in pieces of 1024
#: steps stepped while the rest is read (``offline_chunk``, as pipelines/audio_tagging.toml)
OFFLINE_CHUNKS = (0, 1024)
TARGET_CHUNK = 1024  # the configuration target 3 is checked on


def make_model() -> tuple[RNNModel, nn.GRU, nn.Linear]:
    torch.manual_seed(0)
    rnn = nn.GRU(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
    head = nn.Linear(HIDDEN, len(LABELS))
    return RNNModel(rnn, head), rnn, head


def script(stream: str, frames: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((frames, FEATURES, 1)).astype(np.float32) * 0.1
    items: list[Item] = [StreamStart(stream, "audio", RATE, {"chunk": FEATURES, "channels": 1})]
    items += [Frame(stream, i, i / FRAMES_PER_S, 0.0, data[i], RATE) for i in range(frames)]
    items.append(StreamEnd(stream, frames))
    return items


async def run_pipeline(
    model: RNNModel,
    scripts: list[list[Item]],
    mode: Mode,
    max_batch: int,
    wait_ms: float,
    out: Path,
    offline_chunk: int = 0,
) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one ``Pipeline.run`` (everything built beforehand), and its summary."""
    settings = ModelSettings(
        labels=LABELS, max_batch=max_batch, max_wait_ms=wait_ms, offline_chunk=offline_chunk
    )
    clock: Clock = VirtualClock()
    stage = ModelStage(model, settings, mode=mode, clock=clock)
    pace: Pace = "fast" if mode == "offline" else "realtime"
    sources = [
        ScriptedSource(items, clock, pace=pace, name=f"s{i}") for i, items in enumerate(scripts)
    ]
    # the writer's thread marks the virtual clock busy too: arrivals do not depend on it
    sink = JsonlSink(out, worker=Worker("jsonl", clock))
    pipeline = Pipeline(sources, [stage], [sink], mode=mode, clock=clock)
    pipeline.metrics.reporters.append(stage.report)  # type: ignore[union-attr]
    started = time.perf_counter()
    summary = await pipeline.run()
    return time.perf_counter() - started, summary


def count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def bare_gru_limit(rnn: nn.GRU, head: nn.Linear, ticks: int, repeats: int) -> dict[str, Any]:
    """64 separate bare calls per tick (own hidden state each) vs one stacked call."""
    torch.manual_seed(1)
    x = torch.randn(STREAMS, ticks, FEATURES)

    def separate() -> None:
        with torch.inference_mode():
            hs: list[torch.Tensor | None] = [None] * STREAMS
            for t in range(ticks):
                for s in range(STREAMS):
                    y, hs[s] = rnn(x[s : s + 1, t : t + 1], hs[s])
                    head(y)

    def stacked() -> None:
        with torch.inference_mode():
            h: torch.Tensor | None = None
            for t in range(ticks):
                y, h = rnn(x[:, t : t + 1], h)
                head(y)

    best = {"separate": float("inf"), "stacked": float("inf")}
    for _ in range(repeats):
        for name, fn in (("separate", separate), ("stacked", stacked)):
            began = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - began)
    n = STREAMS * ticks
    return {
        "ticks": ticks,
        "bare_unbatched_fps": round(n / best["separate"]),
        "bare_batched_fps": round(n / best["stacked"]),
        "bare_batched_over_bare_unbatched": round(best["separate"] / best["stacked"], 2),
    }


def bench_batching(model: RNNModel, frames: int, repeats: int, tmp: Path) -> dict[str, Any]:
    scripts = [script(f"s{i:02d}", frames, i) for i in range(STREAMS)]
    total = STREAMS * frames
    configs = {"unbatched": (1, 0.0), "batched": (64, 0.0), "batched_max_wait_1ms": (64, 1.0)}
    best: dict[str, tuple[float, dict[str, Any], int]] = {}
    warm = [s[:12] + s[-1:] for s in scripts]
    asyncio.run(run_pipeline(model, warm, "realtime", 64, 0.0, tmp / "warm.jsonl"))
    for r in range(repeats):
        for name, (batch, wait) in configs.items():
            log(f"pipeline: batching {name} run {r + 1}/{repeats}")
            out = tmp / f"{name}.jsonl"
            seconds, summary = asyncio.run(
                run_pipeline(model, scripts, "realtime", batch, wait, out)
            )
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, summary, count_lines(out))
    result: dict[str, Any] = {"streams": STREAMS, "frames_per_stream": frames, "frames": total}
    for name, (seconds, summary, lines) in best.items():
        result[name] = {
            "run_s": round(seconds, 3),
            "fps": round(total / seconds),
            "jsonl_lines": lines,
            "dropped": summary["dropped"],
            "model_calls": summary["model_calls"],
            "mean_batch": round(summary["mean_batch"], 2),
        }
    unbatched = best["unbatched"][0]
    result["batched_over_unbatched"] = round(unbatched / best["batched"][0], 2)
    result["batched_max_wait_over_unbatched"] = round(
        unbatched / best["batched_max_wait_1ms"][0], 2
    )
    return result


def bare_offline(rnn: nn.GRU, head: nn.Linear, x: torch.Tensor, out: Path) -> None:
    """``head(rnn(x)[0])``, then the same JSON lines as the JSONL sink's, in a plain loop."""
    with torch.inference_mode():
        y = head(rnn(x)[0])[0]  # [T, 2]
        scores = torch.softmax(y, dim=-1).tolist()
    with out.open("w", encoding="utf-8") as file:
        for i, (a, b) in enumerate(scores):
            record = {
                "kind": "frame",
                "stream": "long",
                "start": i,
                "end": i,
                "pts": i / FRAMES_PER_S,
                "label": "a" if a >= b else "b",
                "scores": {"a": a, "b": b},
                "latency_ms": None,
            }
            file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def bench_offline(
    model: RNNModel,
    rnn: nn.GRU,
    head: nn.Linear,
    steps: int,
    repeats: int,
    tmp: Path,
    chunks: tuple[int, ...] = OFFLINE_CHUNKS,
) -> dict[str, Any]:
    long = script("long", steps, 99)
    frames = [f for f in long if isinstance(f, Frame)]
    x = torch.from_numpy(np.stack([f.data[:, 0] for f in frames]))[None]  # [1, T, 64]
    bare = tmp / "bare.jsonl"
    outs = {piece: tmp / f"offline-{piece}.jsonl" for piece in chunks}
    short = [long[:101] + long[-1:]]
    for piece, out in outs.items():  # warm
        asyncio.run(run_pipeline(model, short, "offline", 64, 0.0, out, piece))
    bare_offline(rnn, head, x[:, :100], bare)
    best: dict[int | str, float] = dict.fromkeys([*chunks, "bare"], float("inf"))
    summaries: dict[int, dict[str, Any]] = {}
    for r in range(repeats):
        log(f"pipeline: offline run {r + 1}/{repeats}")
        for piece, out in outs.items():
            seconds, summaries[piece] = asyncio.run(
                run_pipeline(model, [long], "offline", 64, 0.0, out, piece)
            )
            best[piece] = min(best[piece], seconds)
        began = time.perf_counter()
        bare_offline(rnn, head, x, bare)
        best["bare"] = min(best["bare"], time.perf_counter() - began)
    result: dict[str, Any] = {"steps": steps, "bare_s": round(best["bare"], 3)}
    for piece, out in outs.items():
        # the same work: the same labels and scores, line for line
        with out.open() as a, bare.open() as b:
            pairs = [(json.loads(p), json.loads(q)) for p, q in zip(a, b, strict=True)]
        result[f"offline_chunk_{piece}"] = {
            "pipeline_s": round(best[piece], 3),
            "bare_over_pipeline": round(best["bare"] / best[piece], 3),
            "jsonl_lines": len(pairs),
            "same_labels_as_bare": all(p["label"] == q["label"] for p, q in pairs),
            "max_abs_score_diff": max(abs(p["scores"]["a"] - q["scores"]["a"]) for p, q in pairs),
            "dropped": summaries[piece]["dropped"],
        }
    result["bare_over_pipeline"] = result[f"offline_chunk_{TARGET_CHUNK}"]["bare_over_pipeline"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="60 frames per stream, 2 repeats, offline only with offline_chunk = 1024",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per stream (200)")
    parser.add_argument("--steps", type=int, default=60_000, help="offline steps")
    parser.add_argument("--repeats", type=int, default=None, help="best of (3; quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = args.frames or (60 if args.quick else 200)
    repeats = args.repeats or (2 if args.quick else 3)
    load_before = loadavg()
    began = time.perf_counter()
    model, rnn, head = make_model()
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as name:
        tmp = Path(name)
        batching = bench_batching(model, frames, repeats, tmp)
        batching["bare_torch_limit"] = bare_gru_limit(rnn, head, min(frames, 100), repeats)
        chunks = (TARGET_CHUNK,) if args.quick else OFFLINE_CHUNKS
        offline = bench_offline(model, rnn, head, args.steps, repeats, tmp, chunks)
    figures = {"batching": batching, "offline": offline, "wall_s": 0.0}
    figures["wall_s"] = round(time.perf_counter() - began, 1)
    met = {
        "batched_over_unbatched_min": batching["batched_over_unbatched"]
        >= TARGETS["batched_over_unbatched_min"],
        "offline_bare_over_pipeline_min": offline["bare_over_pipeline"]
        >= TARGETS["offline_bare_over_pipeline_min"],
    }
    emit(
        "pipeline",
        figures,
        TARGETS,
        met,
        load_before,
        measured={
            "batched_over_unbatched_min": batching["batched_over_unbatched"],
            "offline_bare_over_pipeline_min": offline["bare_over_pipeline"],
        },
        quick=args.quick,
        notes="sink: the real JsonlSink writing a file in a temporary folder; times are"
        " Pipeline.run wall time (sources, stage and sink built beforehand)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
