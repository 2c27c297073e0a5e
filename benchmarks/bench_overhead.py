"""Framework overhead: identity stages over 100k small frames, against a bare Python loop.

Run: ``.venv/bin/python benchmarks/bench_overhead.py [--frames N] [--repeats R]`` (about
10 s with the defaults).

A source that yields 100,000 pre-built frames (``[1, 1]`` float32 each: the data costs
nothing) as fast as it is iterated goes through a real :class:`~streamer.pipeline.Pipeline`
(``online`` mode: lossless ``block`` edges of 64, a ``RealClock``, ``Metrics`` on) with 1
and with 3 identity stages, each the plain ``async for item in inbox: await
outbox.send(item)`` loop (the built-in threshold stage's shape); what leaves the last stage
reaches the fan-out (frames are not outputs: the fan-out counts them and the sink gets
nothing). The baseline is a bare Python loop over the same frames that calls an identity
function and appends the result to a list.

Figures: per frame, the pipeline's time minus the bare loop's; ``per_frame_per_stage_us``
divides that by the number of stages, and ``marginal_stage_us`` is the cost of each stage
past the first ((3 stages - 1 stage) / 2). The target (10 us per frame per stage) is
checked on the 1-stage run, where the whole framework (source pump, first edge, the stage,
its out edge, the fan-out, metrics) is charged to the one stage. A stage that moves what is
queued in one go (``take_ready`` + ``send_many``, as the model stage does) is given too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from benchlib import best_of, emit, loadavg, log

from streamer.channels import Channel
from streamer.clock import RealClock
from streamer.frames import Frame, Item, StreamEnd, StreamInfo, StreamStart
from streamer.pipeline import Pipeline
from streamer.testing import CaptureSink

TARGETS = {"overhead_per_frame_per_stage_us_max": 10.0}


class PrebuiltSource:
    """Yields pre-built items as fast as they are taken (no pacing, no copies)."""

    def __init__(self, items: list[Item], info: StreamInfo) -> None:
        self.name = "source:prebuilt"
        self.items = items
        self._streams = [info]

    @property
    def streams(self) -> list[StreamInfo]:
        return self._streams

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._play()

    async def _play(self) -> AsyncIterator[Item]:
        for item in self.items:
            yield item

    async def aclose(self) -> None:
        return None


class IdentityStage:
    """Passes every item on unchanged, one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            await outbox.send(item)


class BatchIdentityStage:
    """Passes on everything queued at once (``take_ready`` + ``send_many``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for first in inbox:
            await outbox.send_many([first, *inbox.take_ready()])


def make_items(frames: int) -> tuple[list[Item], StreamInfo]:
    info = StreamInfo.audio("s", 16000.0, 1, 1, total_frames=frames)
    data = np.zeros((1, 1), dtype=np.float32)
    items: list[Item] = [StreamStart("s", "audio", 16000.0, {}, info)]
    items += [Frame("s", i, i / 16000.0, 0.0, data, 16000.0, info) for i in range(frames)]
    items.append(StreamEnd("s", frames))
    return items, info


def run_pipeline(items: list[Item], info: StreamInfo, stages: int, batched: bool) -> float:
    """Seconds of one run (Pipeline.run only: built beforehand)."""
    kind = BatchIdentityStage if batched else IdentityStage
    sink = CaptureSink()
    pipeline = Pipeline(
        [PrebuiltSource(items, info)],
        [kind(f"id{k}") for k in range(stages)],
        [sink],
        mode="online",
        clock=RealClock(),
    )
    started = time.perf_counter()
    summary = asyncio.run(pipeline.run())
    seconds = time.perf_counter() - started
    assert summary["frames_in"] == len(items) - 2, summary["frames_in"]
    return seconds


def bare_loop(items: list[Item]) -> float:
    def identity(item: Item) -> Item:
        return item

    def loop() -> None:
        out: list[Item] = []
        for item in items:
            out.append(identity(item))

    return best_of(loop, 5, warmup=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    load_before = loadavg()
    began = time.perf_counter()
    items, info = make_items(args.frames)
    warm, warm_info = make_items(min(args.frames, 1000))
    n = int(args.frames)

    bare_s = bare_loop(items)
    runs: dict[str, float] = {}
    configs = {"1_stage": (1, False), "3_stages": (3, False), "1_stage_batched": (1, True)}
    for name, (stages, batched) in configs.items():
        log(f"overhead: {name}")
        run_pipeline(warm, warm_info, stages, batched)
        runs[name] = min(run_pipeline(items, info, stages, batched) for _ in range(args.repeats))

    def per_frame_us(seconds: float) -> float:
        return (seconds - bare_s) / n * 1e6

    one, three = per_frame_us(runs["1_stage"]), per_frame_us(runs["3_stages"])
    figures = {
        "frames": n,
        "repeats": args.repeats,
        "bare_loop_us_per_frame": round(bare_s / n * 1e6, 3),
        "pipeline_us_per_frame": {k: round(v / n * 1e6, 3) for k, v in runs.items()},
        "overhead_per_frame_per_stage_us": {
            "1_stage": round(one, 3),
            "3_stages": round(three / 3, 3),
            "1_stage_batched": round(per_frame_us(runs["1_stage_batched"]), 3),
        },
        "marginal_stage_us": round((three - one) / 2, 3),
        "frames_per_s_1_stage": round(n / runs["1_stage"]),
        "wall_s": round(time.perf_counter() - began, 1),
    }
    measured = one
    emit(
        "overhead",
        figures,
        TARGETS,
        {
            "overhead_per_frame_per_stage_us_max": measured
            <= TARGETS["overhead_per_frame_per_stage_us_max"]
        },
        load_before,
        measured={"overhead_per_frame_per_stage_us_max": round(measured, 3)},
        notes="identity stages (async for / send); online mode, RealClock, metrics on;"
        " target checked on the 1-stage run (the whole framework charged to one stage)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
