"""The runner over real plumbing: scripted sources, real channels and stages, capture sinks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from streamer.channels import Channel
from streamer.clock import VirtualClock
from streamer.errors import ChannelClosed, InputError, StageError
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamStart
from streamer.pipeline import Pipeline
from streamer.stages import ThresholdStage
from streamer.testing import CaptureSink, ScriptedSource, audio_script, run_scripted, video_script

FRAME_S = 160 / 16000.0  # 10 ms frames in audio_script's default


class SlowStage:
    """Takes ``cost`` seconds of clock time per frame; records what it saw."""

    def __init__(self, clock: VirtualClock, cost: float, name: str = "slow") -> None:
        self.name = name
        self.clock = clock
        self.cost = cost
        self.seen: list[Item] = []

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            self.seen.append(item)
            if isinstance(item, Frame):
                await self.clock.sleep(self.cost)
            await outbox.send(item)


class FailingStage:
    name = "explodes"

    def __init__(self, after: int) -> None:
        self.after = after

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        count = 0
        async for item in inbox:
            if isinstance(item, Frame):
                count += 1
                if count > self.after:
                    raise RuntimeError("model blew up")
            await outbox.send(item)


class BrokenSource:
    """Yields a few frames, then fails as a truncated file would."""

    name = "source:broken.wav"
    total_frames = None

    def __init__(self, frames: int) -> None:
        self.items = audio_script("broken", frames=frames, end=False)

    def __aiter__(self) -> Any:
        return self._play()

    async def _play(self) -> Any:
        for item in self.items:
            yield item
        raise InputError("broken.wav: data stops decoding after sample 1600")

    async def aclose(self) -> None:
        return None


def indices(outputs: list[Output]) -> list[int]:
    return [o.start for o in outputs]


async def test_block_loses_nothing_and_keeps_order_under_a_slow_stage() -> None:
    clock = VirtualClock()
    slow = SlowStage(clock, cost=3 * FRAME_S)
    run = await run_scripted(
        [audio_script(frames=100)], [slow, ThresholdStage()], "online", clock, pace="realtime"
    )
    assert indices(run.outputs) == list(range(100))
    assert run.summary["dropped"] == 0
    latencies = [o.latency_ms for o in run.outputs]
    assert all(latency is not None for latency in latencies)
    # lossless under overload: the backlog grows, and so does the latency
    assert latencies[-1] > latencies[0] + 100  # type: ignore[operator]


async def test_latest_drops_frames_but_keeps_latency_bounded() -> None:
    clock = VirtualClock()
    cost = 3 * FRAME_S
    slow = SlowStage(clock, cost=cost)
    run = await run_scripted(
        [audio_script(frames=300)], [slow, ThresholdStage()], "realtime", clock, pace="realtime"
    )
    emitted = indices(run.outputs)
    assert emitted == sorted(emitted) and len(set(emitted)) == len(emitted)
    assert 0 < len(emitted) < 300
    gaps = [i for i in slow.seen if isinstance(i, Gap)]
    missing = sum(g.count for g in gaps)
    assert run.summary["dropped"] == missing == 300 - len(emitted)
    assert all(g.reason == "overflow:source>slow" for g in gaps)
    # a frame waits at most for the frame in progress, then its own processing
    bound_ms = (2 * cost + FRAME_S) * 1000
    assert max(o.latency_ms for o in run.outputs) <= bound_ms  # type: ignore[type-var]
    # frames plus gaps account for every index exactly once
    covered = sorted(
        [f.index for f in slow.seen if isinstance(f, Frame)]
        + [g.index + k for g in gaps for k in range(g.count)]
    )
    assert covered == list(range(300))


async def test_virtual_clock_gives_real_time_stamps_for_a_long_replay() -> None:
    clock = VirtualClock(start=100.0)
    chunk, rate = 512, 16000.0
    frames = int(60 * rate / chunk)  # 60 s of audio
    capture = CaptureSink()
    source = ScriptedSource(audio_script(frames=frames, chunk=chunk, rate=rate), clock)
    pipeline = Pipeline([source], [ThresholdStage()], [capture], mode="realtime", clock=clock)
    summary = await asyncio.wait_for(pipeline.run(), timeout=30)  # guards a hang, not speed
    assert len(capture.outputs) == frames
    for output in capture.outputs:
        assert output.captured == 100.0 + output.pts
        assert output.latency_ms == 0.0
    assert summary["elapsed_s"] == pytest.approx((frames - 1) * chunk / rate)


async def test_fan_out_gives_every_sink_the_same_outputs() -> None:
    clock = VirtualClock()
    sinks = [CaptureSink("a"), CaptureSink("b")]
    source = ScriptedSource(video_script(frames=12), clock)
    await Pipeline([source], [ThresholdStage()], sinks, clock=clock).run()
    assert [o.label for o in sinks[0].outputs] == [o.label for o in sinks[1].outputs]
    assert len(sinks[0].outputs) == 12
    assert sinks[0].outputs[0].label == "dark" and sinks[0].outputs[-1].label == "bright"
    assert all(s.closed for s in sinks)


async def test_several_sources_share_the_first_edge_and_keep_per_stream_order() -> None:
    scripts = [audio_script("a", frames=40), audio_script("b", frames=25)]
    run = await run_scripted(scripts, [ThresholdStage()], "online", pace="realtime")
    for stream, count in (("a", 40), ("b", 25)):
        assert indices([o for o in run.outputs if o.stream == stream]) == list(range(count))
    assert run.summary["streams"]["a"]["outputs"] == 40


async def test_a_failing_stage_stops_the_run_and_is_named() -> None:
    capture = CaptureSink()
    clock = VirtualClock()
    source = ScriptedSource(audio_script(frames=50), clock, pace="fast")
    pipeline = Pipeline([source], [FailingStage(after=5)], [capture], clock=clock)
    with pytest.raises(StageError, match="stage 'explodes': RuntimeError: model blew up") as info:
        await pipeline.run()
    assert info.value.stage == "explodes" and info.value.exit_code == 1
    assert capture.closed and source.closed


async def test_a_source_error_drains_what_came_before_then_raises() -> None:
    capture = CaptureSink()
    pipeline = Pipeline([BrokenSource(10)], [ThresholdStage()], [capture], clock=VirtualClock())
    with pytest.raises(StageError, match=r"source:broken.wav.*broken.wav: data stops") as info:
        await pipeline.run()
    assert info.value.exit_code == 2  # bad input
    assert indices(capture.outputs) == list(range(10))
    assert pipeline.metrics is not None and pipeline.metrics.stop_reason == "error"


async def test_stop_drains_queued_work_and_ends_streams() -> None:
    clock = VirtualClock()
    slow = SlowStage(clock, cost=2 * FRAME_S)
    capture = CaptureSink()
    pipeline: Pipeline

    async def stop_after_ten(output: Output) -> None:
        capture.outputs.append(output)
        if len(capture.outputs) == 10:
            pipeline.stop()

    from streamer.sinks import CallbackSink

    source = ScriptedSource(audio_script(frames=1000), clock)
    pipeline = Pipeline(
        [source],
        [slow, ThresholdStage()],
        [CallbackSink(stop_after_ten)],
        mode="online",
        clock=clock,
    )
    summary = await pipeline.run()
    entered = [i.index for i in slow.seen if isinstance(i, Frame)]
    assert 10 <= len(capture.outputs) < 1000
    assert indices(capture.outputs) == entered  # everything that entered came out
    ends = [i for i in slow.seen if isinstance(i, StreamEnd)]
    assert len(ends) == 1 and ends[0].reason == "stopped" and ends[0].frames == len(entered)
    assert summary["stopped"] == "stopped"
    assert summary["frames_in"] == summary["outputs"] == len(entered)


async def test_abort_cancels_and_still_closes_sinks() -> None:
    clock = VirtualClock()
    capture = CaptureSink()
    source = ScriptedSource(audio_script(frames=10_000), clock)
    pipeline = Pipeline(
        [source], [SlowStage(clock, FRAME_S), ThresholdStage()], [capture], clock=clock
    )
    task = asyncio.ensure_future(pipeline.run())
    await clock.sleep_until(1.0)
    assert 0 < len(capture.outputs) < 10_000
    pipeline.abort()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pipeline.aborted and capture.closed


async def test_duration_and_max_frames_limits() -> None:
    run = await run_scripted([audio_script(frames=500)], [ThresholdStage()], duration=1.0)
    assert indices(run.outputs) == list(range(100))  # pts < 1.0 s at 10 ms a frame
    assert run.summary["stopped"] == "duration"
    run = await run_scripted([audio_script(frames=500)], [ThresholdStage()], max_frames=42)
    assert indices(run.outputs) == list(range(42))
    assert run.summary["stopped"] == "max-frames"


async def test_source_gaps_reach_the_end_and_are_counted() -> None:
    script = audio_script(frames=20, gaps={5: 3, 12: 1})
    run = await run_scripted([script], [ThresholdStage()])
    assert len(run.outputs) == 20
    assert run.summary["streams"]["s"]["gaps"] == 2
    assert run.summary["streams"]["s"]["frames_missing"] == 4


async def test_threshold_labels_follow_energy() -> None:
    loud, quiet = 0.5, 0.0001
    script = audio_script(frames=6, amplitude=[quiet, loud, loud, quiet, loud, quiet])
    run = await run_scripted([script], [ThresholdStage(threshold=-30.0)])
    assert [o.label for o in run.outputs] == [
        "silence",
        "sound",
        "sound",
        "silence",
        "sound",
        "silence",
    ]
    for output in run.outputs:
        assert sum(output.scores.values()) == pytest.approx(1.0)
        record = output.to_json()
        assert set(record) >= {
            "kind",
            "stream",
            "start",
            "end",
            "pts",
            "label",
            "scores",
            "latency_ms",
        }


def test_pipeline_refuses_nonsense() -> None:
    clock = VirtualClock()
    source = ScriptedSource([StreamStart("s", "audio", 1.0)], clock)
    with pytest.raises(ValueError, match="mode"):
        Pipeline([source], [ThresholdStage()], [], mode="turbo", clock=clock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage"):
        Pipeline([source], [], [], clock=clock)
    frame = Frame("s", 0, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8), 1.0)
    assert frame.media == "video"


class ForwardsOneThenReturns:
    """A stage that forwards one item and returns, leaving its inbox unread."""

    name = "one-and-done"

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None:
        async for item in inbox:
            await outbox.send(item)
            return


@pytest.mark.parametrize("mode", ["online", "realtime"])
async def test_a_stage_that_returns_early_ends_the_run_naming_it(mode: str) -> None:
    """500 frames into a stage that reads one: the source must not block for ever on the
    full inbox; the run fails, naming the stage."""
    script = audio_script("s", 500)
    with pytest.raises(StageError, match=r"one-and-done.*returned before its input ended"):
        await asyncio.wait_for(run_scripted([script], [ForwardsOneThenReturns()], mode=mode), 30)


async def test_a_sender_waiting_on_a_full_channel_wakes_when_the_receiver_goes() -> None:
    channel: Channel[int] = Channel("edge", 1)
    await channel.send(1)
    waiting = asyncio.ensure_future(channel.send(2))
    await asyncio.sleep(0)
    assert not waiting.done()
    channel.close_receiver()
    with pytest.raises(ChannelClosed, match="receiver has gone"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(ChannelClosed, match="receiver has gone"):
        await channel.send(3)
