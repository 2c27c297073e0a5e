"""Per-sink delivery: ``block`` or ``drop-oldest`` edges with their own capacity, and a sink
that raises either failing the run or being dropped from it (``on_error``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from streamer.clock import VirtualClock
from streamer.config import parse_config
from streamer.errors import InputError, StageError
from streamer.frames import Output
from streamer.pipeline import Pipeline
from streamer.sinks.base import Delivery
from streamer.stages import ThresholdStage
from streamer.testing import CaptureSink, ScriptedSource, audio_script

FRAMES = 200


class SlowSink:
    """Takes ``cost`` seconds of clock time per output."""

    def __init__(self, clock: VirtualClock, cost: float, name: str = "slow") -> None:
        self.name = f"sink:{name}"
        self.clock = clock
        self.cost = cost
        self.outputs: list[Output] = []

    async def send(self, output: Output) -> None:
        await self.clock.sleep(self.cost)
        self.outputs.append(output)

    async def aclose(self) -> None:
        return None


class FailingSink(CaptureSink):
    """Raises at its ``after + 1``-th output."""

    def __init__(self, after: int) -> None:
        super().__init__("fails")
        self.after = after

    async def send(self, output: Output) -> None:
        if len(self.outputs) >= self.after:
            raise OSError(28, "No space left on device")
        await super().send(output)


async def _run(
    slow_delivery: Delivery, cost: float = 0.05, frames: int = FRAMES
) -> tuple[dict[str, object], SlowSink, CaptureSink]:
    clock = VirtualClock()
    slow, fast = SlowSink(clock, cost), CaptureSink("fast")
    pipeline = Pipeline(
        [ScriptedSource(audio_script(frames=frames), clock, pace="realtime")],
        [ThresholdStage()],
        [slow, fast],
        mode="online",
        clock=clock,
        deliveries=[slow_delivery, Delivery()],
    )
    return await pipeline.run(), slow, fast


async def test_a_slow_sink_under_drop_oldest_holds_up_nothing_and_counts_its_drops() -> None:
    summary, slow, fast = await _run(Delivery("drop-oldest", capacity=4))
    assert len(fast.outputs) == FRAMES  # the other sink gets everything, in order
    assert [o.start for o in fast.outputs] == list(range(FRAMES))
    sinks = summary["sinks"]
    assert isinstance(sinks, dict)
    dropped = sinks["sink:slow"]["dropped"]
    assert dropped > 0 and len(slow.outputs) + dropped == FRAMES
    assert sinks["sink:fast"]["dropped"] == 0
    # what the slow sink got is in order, the newest kept: its last output is the last
    indices = [o.start for o in slow.outputs]
    assert indices == sorted(indices) and indices[-1] == FRAMES - 1
    # the fan-out never waited: every output left the model stage as its frame came
    latency = summary["latency_ms"]
    assert isinstance(latency, dict) and latency["max"] < 1.0
    # output drops are the sinks', not the frames': nothing was lost before the sinks
    assert summary["dropped"] == 0 and summary["outputs"] == FRAMES


async def test_a_slow_sink_under_block_loses_nothing_and_holds_up_the_run() -> None:
    summary, slow, fast = await _run(Delivery("block", capacity=4))
    assert [o.start for o in slow.outputs] == list(range(FRAMES))
    assert len(fast.outputs) == FRAMES
    sinks = summary["sinks"]
    assert isinstance(sinks, dict) and sinks["sink:slow"]["dropped"] == 0
    latency = summary["latency_ms"]
    # 50 ms an output against 10 ms frames: the backlog reaches the fan-out
    assert isinstance(latency, dict) and latency["max"] > 1000.0


async def test_a_failing_sink_fails_the_run_by_default_naming_it() -> None:
    clock = VirtualClock()
    good = CaptureSink("good")
    pipeline = Pipeline(
        [ScriptedSource(audio_script(frames=50), clock)],
        [ThresholdStage()],
        [FailingSink(after=10), good],
        clock=clock,
    )
    with pytest.raises(StageError, match="sink:fails"):
        await pipeline.run()


async def test_a_failing_sink_under_on_error_drop_is_dropped_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    failing, good = FailingSink(after=10), CaptureSink("good")
    pipeline = Pipeline(
        [ScriptedSource(audio_script(frames=50), clock)],
        [ThresholdStage()],
        [failing, good],
        clock=clock,
        deliveries=[Delivery(on_error="drop"), Delivery()],
    )
    with caplog.at_level(logging.WARNING):
        summary = await pipeline.run()
    assert len(failing.outputs) == 10
    assert [o.start for o in good.outputs] == list(range(50))
    assert summary["outputs"] == 50
    sinks = summary["sinks"]
    assert isinstance(sinks, dict)
    assert "No space left on device" in sinks["sink:fails"]["failed"]
    assert sinks["sink:good"]["failed"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sink:fails" in warnings[0] and "dropped" in warnings[0]


def test_the_pipeline_file_sets_each_sinks_delivery() -> None:
    config = parse_config(
        {
            "source": {"uri": "synthetic:tone"},
            "sinks": [
                {"type": "jsonl", "path": "a.jsonl", "policy": "drop-oldest", "capacity": 8},
                {"type": "console", "on_error": "drop"},
            ],
        }
    )
    jsonl, console = config.sinks
    assert (jsonl.policy, jsonl.capacity, jsonl.on_error) == ("drop-oldest", 8, "fail")
    assert (console.policy, console.capacity, console.on_error) == (None, None, "drop")
    for bad, key in (
        ({"policy": "latest"}, "policy"),
        ({"capacity": 0}, "capacity"),
        ({"on_error": "ignore"}, "on_error"),
    ):
        with pytest.raises(InputError, match=rf"sinks.*{key}") as info:
            parse_config(
                {"source": {"uri": "synthetic:tone"}, "sinks": [{"type": "console", **bad}]}
            )
        assert "\n" not in str(info.value)


def test_a_jsonl_sink_on_a_full_disk_is_dropped_by_the_file_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli import main

    good = tmp_path / "good.jsonl"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'source = { uri = "synthetic:tone?duration=1" }\n'
        "[[sinks]]\n"
        'type = "jsonl"\n'
        'path = "/dev/full"\n'
        'on_error = "drop"\n'
        "[[sinks]]\n"
        'type = "jsonl"\n'
        f'path = "{good}"\n'
    )
    summary = tmp_path / "summary.json"
    code = main(["run", str(pipeline), "--quiet", "--metrics", str(summary)])
    assert code == 0
    lines = good.read_text().splitlines()
    assert lines and all(json.loads(line)["stream"] for line in lines)
    report = json.loads(summary.read_text())
    failed = [s for s in report["sinks"].values() if s["failed"]]
    assert len(failed) == 1 and "No space left" in failed[0]["failed"]
    assert report["outputs"] == len(lines)


async def test_two_sinks_of_one_name_keep_their_own_counts(tmp_path: Path) -> None:
    """Two JSONL files of one name in two folders: each sink its own edge and its own
    line in the summary (the second named ``#2``), each file every output."""
    from streamer.sinks import JsonlSink

    clock = VirtualClock()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = JsonlSink(tmp_path / "a" / "out.jsonl"), JsonlSink(tmp_path / "b" / "out.jsonl")
    slow = SlowSink(clock, 0.05, name="jsonl:out.jsonl")  # a third of that name, slow
    pipeline = Pipeline(
        [ScriptedSource(audio_script(frames=FRAMES), clock, pace="realtime")],
        [ThresholdStage()],
        [first, second, slow],
        mode="online",
        clock=clock,
        deliveries=[Delivery(), Delivery(), Delivery("drop-oldest", capacity=4)],
    )
    summary = await pipeline.run()
    sinks = summary["sinks"]
    assert isinstance(sinks, dict)
    names = ["sink:jsonl:out.jsonl", "sink:jsonl:out.jsonl#2", "sink:jsonl:out.jsonl#3"]
    assert [first.name, second.name, slow.name] == names
    assert set(names) <= set(sinks)
    assert sinks[names[0]]["dropped"] == sinks[names[1]]["dropped"] == 0
    assert (
        sinks[names[2]]["dropped"] > 0 and len(slow.outputs) + sinks[names[2]]["dropped"] == FRAMES
    )
    for folder in ("a", "b"):
        lines = (tmp_path / folder / "out.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == FRAMES
