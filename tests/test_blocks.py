"""Outputs in blocks: the JSONL bytes are those of the outputs one by one, the metrics and
the sinks see the same outputs, and a dropping sink counts a block's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.blocks import OutputBlock
from streamer.channels import Channel
from streamer.clock import VirtualClock
from streamer.frames import Frame, Output
from streamer.pipeline import Pipeline
from streamer.sinks import JsonlSink
from streamer.sinks.base import Delivery
from streamer.testing import CaptureSink, ScriptedSource, audio_script

NAMES = ("quiet", "loud")


def _line(output: Output) -> str:
    return json.dumps(output.to_json(), ensure_ascii=False, allow_nan=False) + "\n"


class BlockStage:
    """Labels each frame by its mean level, ``per`` frames (of all streams) a block; with
    ``blocks = False`` the same rows as one :class:`Output` each."""

    name = "blocks"

    def __init__(self, per: int, blocks: bool = True) -> None:
        self.per, self.blocks = per, blocks

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        pending: list[Frame] = []
        async for item in inbox:
            if isinstance(item, Frame):
                pending.append(item)
                if len(pending) >= self.per:
                    await self._flush(pending, outbox)
                    pending = []
                continue
            await self._flush(pending, outbox)
            pending = []
            await outbox.send(item)
        await self._flush(pending, outbox)

    async def _flush(self, frames: list[Frame], outbox: Channel[Any]) -> None:
        if not frames:
            return
        level = np.array([float(np.abs(f.data).mean()) for f in frames])
        scores = np.stack([1 - level, level], axis=1)
        block = OutputBlock(
            "frame",
            NAMES,
            [f.stream for f in frames],
            [f.index for f in frames],
            [f.index for f in frames],
            [f.pts for f in frames],
            [NAMES[int(s[1] > s[0])] for s in scores],
            scores,
            [f.captured for f in frames],
        )
        if self.blocks:
            await outbox.send(block)
        else:
            await outbox.send_many(block.outputs())


async def _run(
    tmp: Path, blocks: bool, slow: Any = None
) -> tuple[dict[str, Any], str, list[Output]]:
    clock = VirtualClock()
    scripts = [audio_script(name, frames=37) for name in ("a", "b")]
    sources = [
        ScriptedSource(s, clock, pace="realtime", name=f"src{i}") for i, s in enumerate(scripts)
    ]
    path = tmp / f"out-{blocks}.jsonl"
    capture = CaptureSink()
    sinks: list[Any] = [JsonlSink(path), capture]
    deliveries = [Delivery(), Delivery()]
    if slow is not None:
        sinks.append(slow)
        deliveries.append(Delivery("drop-oldest", capacity=1))
    pipeline = Pipeline(
        sources, [BlockStage(per=5, blocks=blocks)], sinks, clock=clock, deliveries=deliveries
    )
    summary = await pipeline.run()
    return summary, path.read_text(encoding="utf-8"), capture.outputs


async def test_blocks_write_the_same_jsonl_and_count_the_same_as_single_outputs(
    tmp_path: Path,
) -> None:
    summary, text, outputs = await _run(tmp_path, blocks=True)
    single, single_text, single_outputs = await _run(tmp_path, blocks=False)
    assert text == single_text and text.count("\n") == 74
    assert [o.to_json() for o in outputs] == [o.to_json() for o in single_outputs]
    assert "".join(_line(o) for o in outputs) == text
    assert summary["outputs"] == single["outputs"] == 74
    for name in ("a", "b"):
        assert summary["streams"][name]["outputs"] == 37
    assert summary["latency_ms"] == single["latency_ms"]


class SlowSink(CaptureSink):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__("slow")
        self.clock = clock

    async def send(self, output: Output) -> None:
        await self.clock.sleep(0.2)
        await super().send(output)


async def test_a_dropping_sink_counts_the_rows_of_the_blocks_it_drops(tmp_path: Path) -> None:
    clock = VirtualClock()
    slow = SlowSink(clock)
    scripts = [audio_script(name, frames=60) for name in ("a", "b")]
    sources = [
        ScriptedSource(s, clock, pace="realtime", name=f"src{i}") for i, s in enumerate(scripts)
    ]
    path = tmp_path / "out.jsonl"
    pipeline = Pipeline(
        sources,
        [BlockStage(per=4)],
        [JsonlSink(path), slow],
        clock=clock,
        deliveries=[Delivery(), Delivery("drop-oldest", capacity=1)],
    )
    summary = await pipeline.run()
    dropped = summary["sinks"]["sink:slow"]["dropped"]
    assert dropped > 0 and len(slow.outputs) + dropped == 120
    assert summary["outputs"] == 120 == len(path.read_text().splitlines())


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)
text = st.text(min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(text, st.integers(0, 10**9), finite, st.one_of(st.none(), text), finite, finite),
        min_size=1,
        max_size=12,
    ),
    names=st.lists(text, min_size=2, max_size=2, unique=True),
    now=st.floats(0, 1e6),
    budget=st.one_of(st.none(), st.floats(0, 1e3)),
)
def test_block_lines_are_the_bytes_of_each_outputs_line(
    rows: list[tuple[str, int, float, str | None, float, float]],
    names: list[str],
    now: float,
    budget: float | None,
) -> None:
    scores = np.array([[r[4], r[5]] for r in rows], dtype=np.float64)
    captured = [now - (i % 5) * 0.01 for i in range(len(rows))]
    block = OutputBlock(
        "window",
        tuple(names),
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[1] + 3 for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        scores,
        captured,
    )
    block.stamp(now, budget)
    lines = "".join(_line(o) for o in block.outputs())
    assert block.jsonl() == lines
    for line in lines.split("\n")[:-1]:  # (str.splitlines also splits at U+0085)
        json.loads(line)  # strict JSON: no NaN or Infinity
