"""Model-layer benchmark: multi-stream batching and the offline path, as one JSON object.

Run: ``.venv/bin/python benchmarks/bench_models.py [--quick] [--threads N]``.

1. Streaming: 64 live streams, one frame ``[1, 64]`` each per tick, through an
   ``RNNModel(GRU(64, 128, 2 layers) + Linear(128, 2))`` with per-stream state in a
   :class:`StateStore`. Unbatched (one ``step_batch`` call per stream per tick) against
   batched (one call per tick for all streams). The same with bare torch (stacked hidden
   state, no adapter) gives the compute limit: the best batching can do on this machine.
   A breakdown times the parts of one batched tick (store reads, ``State.stack``,
   ``model.step``, ``State.split``, ...), so overhead can be told from compute.
2. Offline: a 10-minute sequence (100 frames/s) through ``model.forward`` against the bare
   ``head(gru(x)[0])`` on the same tensor.

All ratios are against baselines run in the same process; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from benchlib import emit, loadavg, log
from torch import Tensor, nn

from streamer.models import RNNModel, State, StateStore, step_batch

FEATURES = 64
HIDDEN = 128
LAYERS = 2
OUTPUTS = 2
STREAMS = 64
FRAME_RATE = 100  # frames per second of the offline sequence
#: the model layer's share of the pipeline's targets 2 and 3 (bench_pipeline.py)
TARGETS = {"batched_over_unbatched_min": 7.0, "offline_bare_over_adapter_min": 0.9}


def make_model() -> RNNModel:
    torch.manual_seed(0)
    rnn = nn.GRU(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
    return RNNModel(rnn, head=nn.Linear(HIDDEN, OUTPUTS))


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- streaming ------------------------------------------------------------------------------


def stream_ids() -> list[str]:
    return [f"s{i:02d}" for i in range(STREAMS)]


def run_unbatched(model: RNNModel, frames: Tensor) -> list[dict[str, Tensor]]:
    """One ``step_batch`` call per stream per tick; ``frames [S, N, F]``."""
    ids = stream_ids()
    store = StateStore(model)
    out: list[dict[str, Tensor]] = []
    for tick in range(frames.shape[1]):
        now = tick / FRAME_RATE
        results: dict[str, Tensor] = {}
        for row, stream in enumerate(ids):
            results.update(step_batch(model, store, {stream: frames[row, tick : tick + 1]}, now))
        out.append(results)
    return out


def run_batched(model: RNNModel, frames: Tensor) -> list[dict[str, Tensor]]:
    """One ``step_batch`` call per tick for all streams."""
    ids = stream_ids()
    store = StateStore(model)
    out: list[dict[str, Tensor]] = []
    for tick in range(frames.shape[1]):
        chunks = {stream: frames[row, tick : tick + 1] for row, stream in enumerate(ids)}
        out.append(step_batch(model, store, chunks, tick / FRAME_RATE))
    return out


def run_bare_unbatched(model: RNNModel, frames: Tensor) -> None:
    """64 separate bare calls ``[1, 1, F]`` per tick, one hidden state each."""
    rnn, head = model.rnn, model.head
    assert head is not None
    with torch.inference_mode():
        hs: list[Tensor | None] = [None] * frames.shape[0]
        for tick in range(frames.shape[1]):
            for row in range(frames.shape[0]):
                y, hs[row] = rnn(frames[row, tick : tick + 1][None], hs[row])
                head(y)


def run_bare_batched(model: RNNModel, frames: Tensor) -> None:
    """One bare call ``[S, 1, F]`` per tick with the hidden states stacked ``[L, S, H]``."""
    rnn, head = model.rnn, model.head
    assert head is not None
    with torch.inference_mode():
        h: Tensor | None = None
        for tick in range(frames.shape[1]):
            y, h = rnn(frames[:, tick : tick + 1], h)
            head(y)


def outputs_equal(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> tuple[bool, float]:
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        if ra.keys() != rb.keys():
            return False, float("inf")
        for stream, ya in ra.items():
            yb = rb[stream]
            if ya.shape != yb.shape:
                return False, float("inf")
            worst = max(worst, float((ya - yb).abs().max()))
    return worst <= 1e-5, worst


def breakdown(model: RNNModel, repeats: int) -> dict[str, float]:
    """Microseconds per batched tick spent in each part of ``step_batch``'s work.

    Mirrors what ``step_batch`` does for 64 one-frame chunks with stored states; each
    part is timed on its own (best of ``repeats`` loops of 50), so the parts need not sum
    exactly to the measured tick.
    """
    ids = stream_ids()
    store = StateStore(model)
    frames = torch.randn(STREAMS, 1, FEATURES)
    chunks = {stream: frames[row] for row, stream in enumerate(ids)}
    step_batch(model, store, chunks, 0.0)  # every stream now holds a real state
    states = [store.get(s) for s in ids]
    stacked = State.stack(states)
    x = torch.stack([frames[row] for row in range(STREAMS)])
    y, new = model.step(x, stacked)
    h = stacked.tensors[0]
    loops = 50

    def per_tick(fn: Callable[[], object]) -> float:
        def many() -> None:
            for _ in range(loops):
                fn()

        return best_of(many, repeats) / loops * 1e6

    def rnn_bare() -> None:
        with torch.inference_mode():
            out, _ = model.rnn(x, h)
            assert model.head is not None
            model.head(out)

    def put_all() -> None:
        for stream in ids:
            store.put(stream, states[0], 1.0)

    parts = {
        "step_batch_total": per_tick(lambda: step_batch(model, store, chunks, 1.0)),
        "store_get_x64": per_tick(lambda: [store.get(s) for s in ids]),
        "signature_x64": per_tick(lambda: [s.signature for s in states]),
        "state_stack": per_tick(lambda: State.stack(states)),
        "x_stack": per_tick(lambda: torch.stack([chunks[s][:1] for s in ids])),
        "model_step": per_tick(lambda: model.step(x, stacked)),
        "bare_gru_head": per_tick(rnn_bare),
        "state_split": per_tick(new.split),
        "y_rows_cat_x64": per_tick(lambda: [torch.cat([y[r]], dim=0) for r in range(STREAMS)]),
        "store_put_x64": per_tick(put_all),
        "state_select_one": per_tick(lambda: new.select([0])),
    }
    return {k: round(v, 1) for k, v in parts.items()}


def bench_streaming(model: RNNModel, ticks: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(1)
    frames = torch.randn(STREAMS, ticks, FEATURES)
    n_frames = STREAMS * ticks

    # correctness once: batched == unbatched
    equal, max_diff = outputs_equal(run_unbatched(model, frames), run_batched(model, frames))

    warm = frames[:, : min(ticks, 10)]
    run_bare_unbatched(model, warm)
    run_bare_batched(model, warm)
    runs: dict[str, Callable[[], object]] = {
        "unbatched": lambda: run_unbatched(model, frames),
        "batched": lambda: run_batched(model, frames),
        "bare_unbatched": lambda: run_bare_unbatched(model, frames),
        "bare_batched": lambda: run_bare_batched(model, frames),
    }
    # interleaved, best of ``repeats`` each, so drift in the machine's load hits all alike
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            best[name] = min(best[name], best_of(fn, 1, warmup=0))
    t_unbatched, t_batched = best["unbatched"], best["batched"]
    t_bare_unbatched, t_bare_batched = best["bare_unbatched"], best["bare_batched"]
    fps = {name: n_frames / t for name, t in best.items()}
    return {
        "streams": STREAMS,
        "ticks": ticks,
        "frames": n_frames,
        "repeats": repeats,
        "equal": equal,
        "max_abs_diff": max_diff,
        "unbatched_fps": round(fps["unbatched"]),
        "batched_fps": round(fps["batched"]),
        "batched_over_unbatched": round(fps["batched"] / fps["unbatched"], 2),
        "compute_limit": {
            "bare_unbatched_fps": round(fps["bare_unbatched"]),
            "bare_batched_fps": round(fps["bare_batched"]),
            "bare_batched_over_bare_unbatched": round(
                fps["bare_batched"] / fps["bare_unbatched"], 2
            ),
        },
        # how close the adapter path comes to bare torch, each way
        "unbatched_over_bare_unbatched": round(fps["unbatched"] / fps["bare_unbatched"], 3),
        "batched_over_bare_batched": round(fps["batched"] / fps["bare_batched"], 3),
        "per_tick_us": {
            "unbatched": round(t_unbatched / ticks * 1e6, 1),
            "batched": round(t_batched / ticks * 1e6, 1),
            "bare_unbatched": round(t_bare_unbatched / ticks * 1e6, 1),
            "bare_batched": round(t_bare_batched / ticks * 1e6, 1),
        },
        "batched_tick_breakdown_us": breakdown(model, repeats),
    }


# -- offline --------------------------------------------------------------------------------


def bench_offline(model: RNNModel, seconds: float, repeats: int) -> dict[str, Any]:
    steps = int(seconds * FRAME_RATE)
    torch.manual_seed(2)
    x = torch.randn(steps, FEATURES)
    # ``model.module`` (nn.Sequential(rnn, head)) cannot be called as is: the GRU returns
    # (out, h) and Sequential hands that tuple to the Linear. So: head(rnn(x)[0]).
    rnn, head = model.rnn, model.head
    assert head is not None

    def adapter() -> Tensor:
        return model.forward(x[None])

    def bare() -> Tensor:
        with torch.inference_mode():
            out: Tensor = head(rnn(x[None])[0])
            return out

    y_adapter, y_bare = adapter(), bare()  # also the warm-up
    max_diff = float((y_adapter - y_bare).abs().max())
    # interleave the runs so drift in the machine's speed hits both alike
    t_adapter = t_bare = float("inf")
    for _ in range(repeats):
        t_adapter = min(t_adapter, best_of(adapter, 1, warmup=0))
        t_bare = min(t_bare, best_of(bare, 1, warmup=0))
    return {
        "steps": steps,
        "seconds_of_audio": seconds,
        "repeats": repeats,
        "equal": y_adapter.shape == y_bare.shape and max_diff <= 1e-5,
        "max_abs_diff": max_diff,
        "adapter_s": round(t_adapter, 4),
        "bare_s": round(t_bare, 4),
        "bare_over_adapter": round(t_bare / t_adapter, 3),
        "steps_per_s_adapter": round(steps / t_adapter),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (about 20 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--ticks", type=int, default=None, help="streaming ticks (200; quick 30)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    ticks = args.ticks or (30 if args.quick else 200)
    repeats = 3
    seconds = 60.0 if args.quick else 600.0
    model = make_model()

    load_before = loadavg()
    started = time.perf_counter()
    log("models: streaming")
    streaming = bench_streaming(model, ticks, repeats)
    log("models: offline")
    offline = bench_offline(model, seconds, repeats if args.quick else 5)
    figures = {
        "model": f"RNNModel(GRU({FEATURES}, {HIDDEN}, num_layers={LAYERS}), "
        f"Linear({HIDDEN}, {OUTPUTS}))",
        "streaming": streaming,
        "offline": offline,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    met = {
        "batched_over_unbatched_min": streaming["batched_over_unbatched"]
        >= TARGETS["batched_over_unbatched_min"],
        "offline_bare_over_adapter_min": offline["bare_over_adapter"]
        >= TARGETS["offline_bare_over_adapter_min"],
    }
    emit(
        "models",
        figures,
        TARGETS,
        met,
        load_before,
        measured={
            "batched_over_unbatched_min": streaming["batched_over_unbatched"],
            "offline_bare_over_adapter_min": offline["bare_over_adapter"],
        },
        quick=args.quick,
        notes="the model layer alone (no pipeline, no sink): the bounds under the pipeline's"
        " targets 2 and 3 (bench_pipeline.py)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
