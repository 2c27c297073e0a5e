"""Model stage through the real pipeline: batched vs unbatched streams, offline vs bare call.

64 scripted streams of 64-feature frames (``features = "raw"``: a frame of 64 mono samples is
one step of 64 features) go through a ``ModelStage`` around GRU(64->128, 2 layers) + Linear,
in realtime mode (each frame stepped as soon as it is taken from the inbox). ``max_batch=1``
is the unbatched baseline; ``max_batch=64`` stacks the ready streams into one forward.
Offline: one 10-minute stream (100 frames/s) through the offline model stage vs a bare
``head(rnn(x)[0])`` call on the same tensor. Prints one JSON object; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from streamer.clock import VirtualClock
from streamer.frames import Frame, Item, StreamEnd, StreamStart
from streamer.models import RNNModel
from streamer.pipeline import Mode
from streamer.stages.model import ModelSettings, ModelStage
from streamer.testing import run_scripted

FEATURES, HIDDEN, LAYERS = 64, 128, 2
RATE = 100.0 * FEATURES  # 100 frames a second of FEATURES samples


def make_model() -> tuple[RNNModel, nn.GRU, nn.Linear]:
    torch.manual_seed(0)
    rnn = nn.GRU(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
    head = nn.Linear(HIDDEN, 2)
    return RNNModel(rnn, head), rnn, head


def script(stream: str, frames: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((frames, FEATURES, 1)).astype(np.float32) * 0.1
    items: list[Item] = [StreamStart(stream, "audio", RATE, {"chunk": FEATURES, "channels": 1})]
    items += [Frame(stream, i, i / 100.0, 0.0, data[i], RATE) for i in range(frames)]
    items.append(StreamEnd(stream, frames))
    return items


async def run(
    model: RNNModel, scripts: list[list[Item]], mode: Mode, max_batch: int, wait_ms: float = 0.0
) -> tuple[float, int, dict[str, Any]]:
    settings = ModelSettings(labels=("a", "b"), max_batch=max_batch, max_wait_ms=wait_ms)
    clock = VirtualClock()
    stage = ModelStage(model, settings, mode=mode, clock=clock)
    started = time.perf_counter()
    # Live-like delivery on a virtual clock: every stream's frame i arrives at i / 100 s,
    # so the stage finds the 64 streams' frames ready together; compute costs no virtual time.
    pace = "fast" if mode == "offline" else "realtime"
    result = await run_scripted(scripts, [stage], mode=mode, clock=clock, pace=pace)
    return time.perf_counter() - started, len(result.outputs), stage.report()


def best(
    model: RNNModel, scripts: list[list[Item]], mode: Mode, batch: int, n: int, wait: float = 0.0
) -> Any:
    runs = [asyncio.run(run(model, scripts, mode, batch, wait)) for _ in range(n)]
    return min(runs, key=lambda r: r[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, rnn, head = make_model()
    frames = 50 if args.quick else 200
    scripts = [script(f"s{i:02d}", frames, i) for i in range(64)]
    repeats = 3

    unbatched_s, n_unbatched, unbatched_report = best(model, scripts, "realtime", 1, repeats)
    batched_s, n_batched, batched_report = best(model, scripts, "realtime", 64, repeats)
    # max_wait_ms = 1: the stage waits up to 1 ms (virtual) for the other streams' frames
    waited_s, n_waited, waited_report = best(model, scripts, "realtime", 64, repeats, 1.0)
    total = 64 * frames

    steps = 6_000 if args.quick else 60_000
    long = script("long", steps, 99)
    offline_s, n_offline, _ = best(model, [long], "offline", 1, repeats)
    x = torch.from_numpy(np.stack([f.data[:, 0] for f in long if isinstance(f, Frame)]))[None]
    bare = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            head(rnn(x)[0])
        bare.append(time.perf_counter() - started)
    report = {
        "benchmark": "pipeline",
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "streams": 64,
        "frames_per_stream": frames,
        "unbatched": {
            "fps": round(total / unbatched_s),
            "outputs": n_unbatched,
            "mean_batch": unbatched_report["mean_batch"],
        },
        "batched": {
            "fps": round(total / batched_s),
            "outputs": n_batched,
            "mean_batch": batched_report["mean_batch"],
        },
        "batched_max_wait_1ms": {
            "fps": round(total / waited_s),
            "outputs": n_waited,
            "mean_batch": waited_report["mean_batch"],
        },
        "batched_over_unbatched": round(unbatched_s / batched_s, 2),
        "batched_max_wait_over_unbatched": round(unbatched_s / waited_s, 2),
        "offline": {
            "steps": steps,
            "pipeline_s": round(offline_s, 4),
            "bare_s": round(min(bare), 4),
            "bare_over_pipeline": round(min(bare) / offline_s, 3),
            "outputs": n_offline,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
