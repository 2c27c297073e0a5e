"""``[run] latency_budget_ms``: late outputs marked and counted; in realtime mode the model
stage skips frames too old for their output to come in time (gaps ``reason = "deadline"``),
so the outputs that do come stay within the budget under overload. On a virtual clock: the
model's cost is clock time it spends, nothing is timed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from streamer.clock import VirtualClock
from streamer.config import parse_config
from streamer.errors import InputError
from streamer.frames import Gap
from streamer.models import State, StatefulModel, as_model
from streamer.stages.model import ModelSettings, ModelStage
from streamer.testing import audio_script, run_scripted

FRAMES = 300
COST = 0.025  # a model call: 25 ms


class Costly:
    """A model whose every step takes ``cost`` seconds of the virtual clock, and every
    ``every``-th step ``stall`` seconds (a hiccup: a slow call, a collection)."""

    def __init__(
        self,
        model: StatefulModel,
        clock: VirtualClock,
        cost: float,
        stall: float = 0.0,
        every: int = 20,
    ) -> None:
        self.model, self.clock, self.cost = model, clock, cost
        self.stall, self.every, self.calls = stall, every, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        self.calls += 1
        stalls = self.stall and self.calls % self.every == 0
        self.clock.spend(self.stall if stalls else self.cost)
        return self.model.step(x, state)


def _model(features: int = 160) -> StatefulModel:
    torch.manual_seed(0)
    return as_model((nn.GRU(features, 6, batch_first=True), nn.Linear(6, 3)))


PERIOD_CHUNK = 528  # 33 ms frames at 16 kHz: a 30 fps camera's period
OVERLOAD = 0.05  # a model call: 50 ms, 1.5 frame periods
BUDGET = 66.7  # two frame periods


async def _overloaded(
    budget: float | None, stall: float = 0.0
) -> tuple[dict[str, Any], list[Any], int]:
    """A realtime run at 30 frames/s with a 50 ms model (every 20th call ``stall``
    seconds instead, when given): its summary, outputs and how many calls stalled."""
    clock = VirtualClock()
    model = Costly(_model(PERIOD_CHUNK), clock, OVERLOAD, stall)
    stage = ModelStage(
        model,  # type: ignore[arg-type]
        ModelSettings(labels=("a", "b", "c"), latency_budget_ms=budget),
        mode="realtime",
        clock=clock,
    )
    run = await run_scripted(
        [audio_script(frames=FRAMES, chunk=PERIOD_CHUNK)],
        [stage],
        "realtime",
        clock,
        pace="realtime",
        latency_budget_ms=budget,
    )
    return run.summary, run.outputs, model.calls // model.every if stall else 0


async def test_realtime_skips_frames_past_the_deadline_and_stays_within_the_budget() -> None:
    summary, outputs, _ = await _overloaded(BUDGET)
    frames = [o for o in outputs if o.kind == "frame"]
    assert len(frames) > FRAMES // 4  # the model keeps labelling
    # a frame too old for its output to come in time was skipped: every output is on time
    # but the first ones, which wait out the stage's check of the model (one more call)
    assert max(o.latency_ms for o in frames[2:]) <= BUDGET
    late = [o for o in frames if o.late]
    assert summary["late"] == len(late) <= 2 and all(o.latency_ms > BUDGET for o in late)
    assert summary["deadline"] > 0
    assert summary["streams"]["s"]["deadline"] == summary["deadline"]
    # every frame is accounted for: labelled, displaced by the first edge, or past its deadline
    assert len(frames) + summary["dropped"] == FRAMES
    assert summary["streams"]["s"]["frames_missing"] == summary["dropped"]
    # the same run without a budget labels frames that waited most of a call: late
    unbounded, every, _ = await _overloaded(None)
    assert unbounded["deadline"] == 0 and unbounded["late"] == 0  # no budget, no marks
    assert max(o.latency_ms for o in every if o.kind == "frame") > BUDGET


async def test_a_stalled_call_is_late_and_marked_and_the_stage_catches_up() -> None:
    summary, outputs, stalls = await _overloaded(BUDGET, stall=0.15)
    frames = [o for o in outputs if o.kind == "frame"]
    assert stalls > 0 and len(frames) > FRAMES // 4
    # a stalled call's output cannot be on time (no stage can know beforehand): it is
    # marked late, as is every output over the budget and no other
    assert any(o.latency_ms >= 150.0 for o in frames)
    assert all(o.late == (o.latency_ms > BUDGET) for o in frames)
    assert summary["late"] == sum(o.late for o in frames) == summary["streams"]["s"]["late"]
    # after each stall the stage skips the frames that waited it out, and goes on
    assert summary["deadline"] > 0
    assert len(frames) + summary["dropped"] == FRAMES


async def test_outputs_over_the_budget_are_marked_late_and_counted_in_lossless_modes() -> None:
    clock = VirtualClock()
    stage = ModelStage(
        Costly(_model(), clock, COST),  # type: ignore[arg-type]
        ModelSettings(labels=("a", "b", "c"), latency_budget_ms=30.0),
        mode="online",
        clock=clock,
    )
    run = await run_scripted(
        [audio_script(frames=100)],
        [stage],
        "online",
        clock,
        pace="realtime",
        latency_budget_ms=30.0,
    )
    frames = [o for o in run.outputs if o.kind == "frame"]
    assert len(frames) == 100  # online mode loses nothing: no deadline skipping
    assert run.summary["deadline"] == 0
    late = [o for o in frames if o.latency_ms > 30.0]
    assert late and all(o.late for o in late)
    assert not any(o.late for o in frames if o.latency_ms <= 30.0)
    assert run.summary["late"] == len(late) == run.summary["streams"]["s"]["late"]
    record = late[0].to_json()
    assert record["late"] is True
    assert "late" not in frames[0].to_json() or frames[0].late


def test_late_is_written_to_jsonl_only_when_late_and_the_budget_is_checked(
    tmp_path: Path,
) -> None:
    from streamer.cli import main

    out = tmp_path / "out.jsonl"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'source = { uri = "synthetic:tone?duration=0.5" }\n[run]\nlatency_budget_ms = 0.000001\n'
    )
    assert main(["run", str(pipeline), "--quiet", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r.get("late") is True for r in records if r["latency_ms"] > 1e-6)
    with pytest.raises(InputError, match=r"run.*latency_budget_ms"):
        parse_config({"source": {"uri": "synthetic:tone"}, "run": {"latency_budget_ms": 0}})


def test_gaps_past_the_deadline_merge_per_stream() -> None:
    clock = VirtualClock(start=10.0)
    stage = ModelStage(
        _model(),
        ModelSettings(labels=("a", "b", "c"), latency_budget_ms=100.0),
        mode="realtime",
        clock=clock,
    )
    frames_a = [f for f in audio_script("a", frames=6, end=False) if not isinstance(f, Gap)][1:]
    frames_b = [f for f in audio_script("b", frames=6, end=False) if not isinstance(f, Gap)][1:]
    # a: frames 0-3 are old, 4-5 fresh; b: all old; interleaved a, b, a, b, ...
    old = {("a", i) for i in range(4)} | {("b", i) for i in range(6)}
    items = []
    for fa, fb in zip(frames_a, frames_b, strict=True):
        for frame in (fa, fb):
            captured = 0.0 if (frame.stream, frame.index) in old else 9.99
            items.append(dataclasses.replace(frame, captured=captured))
    kept = stage._skip_late(items)
    gaps = [(g.stream, g.index, g.count, g.reason) for g in kept if isinstance(g, Gap)]
    assert gaps == [("a", 0, 4, "deadline"), ("b", 0, 6, "deadline")]
    assert [(f.stream, f.index) for f in kept if not isinstance(f, Gap)] == [("a", 4), ("a", 5)]
