"""A test harness over the real plumbing: a scripted source, a capture sink, one runner.

``ScriptedSource`` plays a list of frames and markers (paced by the pipeline's clock when
asked), ``CaptureSink`` keeps what comes out, and :func:`run_scripted` wires a real
:class:`~streamer.pipeline.Pipeline` between them, on a :class:`VirtualClock` by default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.clock import Clock, VirtualClock
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamStart
from streamer.pipeline import Mode, Pipeline
from streamer.sources.base import Pace, Pacer
from streamer.stages.base import Stage


class ScriptedSource:
    """Yields ``items`` in order; frames are stamped (and paced) by ``clock``.

    Frames in ``items`` may carry any ``captured``; the source re-stamps them with the time
    it delivers them, as a live device would.
    """

    def __init__(
        self,
        items: Sequence[Item],
        clock: Clock,
        pace: Pace = "realtime",
        speed: float = 1.0,
        name: str = "scripted",
    ) -> None:
        self.name = f"source:{name}"
        self.items = list(items)
        self.total_frames: int | None = sum(isinstance(i, Frame) for i in self.items)
        self._pacer = Pacer(clock, pace, speed)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._play()

    async def _play(self) -> AsyncIterator[Item]:
        for item in self.items:
            if isinstance(item, Frame):
                captured = await self._pacer.wait(item.pts)
                item = Frame(item.stream, item.index, item.pts, captured, item.data, item.rate)
            yield item

    async def aclose(self) -> None:
        self.closed = True


class CaptureSink:
    """Keeps every output it is sent, in order."""

    def __init__(self, name: str = "capture") -> None:
        self.name = f"sink:{name}"
        self.outputs: list[Output] = []
        self.closed = False

    async def send(self, output: Output) -> None:
        self.outputs.append(output)

    async def aclose(self) -> None:
        self.closed = True


def audio_script(
    stream: str = "s",
    frames: int = 10,
    chunk: int = 160,
    rate: float = 16000.0,
    gaps: dict[int, int] | None = None,
    amplitude: Sequence[float] | None = None,
    end: bool = True,
) -> list[Item]:
    """StreamStart, ``frames`` audio frames (constant ``amplitude[i]`` each), StreamEnd.

    ``gaps`` maps a frame index to a number of frames lost before it: those indices are
    skipped and a ``Gap(reason="source")`` marker stands in their place.
    """
    gaps = gaps or {}
    items: list[Item] = [StreamStart(stream, "audio", rate)]
    index = 0
    for i in range(frames):
        lost = gaps.get(i, 0)
        if lost:
            items.append(Gap(stream, index, lost, index * chunk / rate, "source"))
            index += lost
        level = amplitude[i] if amplitude is not None else 0.1
        data = np.full((chunk, 1), level, dtype=np.float32)
        items.append(Frame(stream, index, index * chunk / rate, 0.0, data, rate))
        index += 1
    if end:
        items.append(StreamEnd(stream, index))
    return items


def video_script(
    stream: str = "v", frames: int = 10, fps: float = 30.0, size: tuple[int, int] = (8, 6)
) -> list[Item]:
    """StreamStart, ``frames`` video frames of rising brightness, StreamEnd."""
    width, height = size
    items: list[Item] = [StreamStart(stream, "video", fps)]
    for i in range(frames):
        level = int(255 * i / max(1, frames - 1))
        data = np.full((height, width, 3), level, dtype=np.uint8)
        items.append(Frame(stream, i, i / fps, 0.0, data, fps))
    items.append(StreamEnd(stream, frames))
    return items


@dataclass
class ScriptedRun:
    """What a scripted run produced."""

    outputs: list[Output]
    summary: dict[str, Any]
    pipeline: Pipeline


async def run_scripted(
    scripts: Sequence[Sequence[Item]],
    stages: Sequence[Stage],
    mode: Mode = "online",
    clock: Clock | None = None,
    pace: Pace = "fast",
    **pipeline_options: Any,
) -> ScriptedRun:
    """Run one ScriptedSource per script through ``stages`` into a CaptureSink."""
    clock = clock or VirtualClock()
    sources = [
        ScriptedSource(items, clock, pace=pace, name=f"scripted{i}")
        for i, items in enumerate(scripts)
    ]
    sink = CaptureSink()
    pipeline = Pipeline(sources, stages, [sink], mode=mode, clock=clock, **pipeline_options)
    summary = await pipeline.run()
    return ScriptedRun(sink.outputs, summary, pipeline)
