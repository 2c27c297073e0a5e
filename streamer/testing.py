"""A test harness over the real plumbing: a scripted source, a capture sink, one runner.

``ScriptedSource`` plays a list of frames and markers (paced by the pipeline's clock when
asked), ``CaptureSink`` keeps what comes out, and :func:`run_scripted` wires a real
:class:`~streamer.pipeline.Pipeline` between them, on a :class:`VirtualClock` by default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.blocks import as_outputs as as_outputs
from streamer.clock import Clock, VirtualClock
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamInfo, StreamStart
from streamer.pipeline import Mode, Pipeline
from streamer.sources.base import Pace, Pacer
from streamer.stages.base import Stage


class ScriptedSource:
    """Yields ``items`` in order; frames are stamped (and paced) by ``clock``.

    Frames in ``items`` may carry any ``captured``; the source re-stamps them with the time
    it delivers them, as a live device would.

    ``streams`` declares each stream of the script (in order of first appearance) like a
    real source: media and rate from its ``StreamStart`` (or its first frame), shape and
    dtype of its first frame's data, ``total_frames`` the frames scripted. A ``StreamStart``
    or frame that carries no ``info`` is delivered with the declared one.
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
        self.streams: list[StreamInfo] = declare_streams(self.items)
        self._pacer = Pacer(clock, pace, speed)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._play()

    async def _play(self) -> AsyncIterator[Item]:
        declared = {info.stream: info for info in self.streams}
        for item in self.items:
            if isinstance(item, Frame):
                captured = await self._pacer.wait(item.pts)
                info = item.info or declared[item.stream]
                item = Frame(
                    item.stream, item.index, item.pts, captured, item.data, item.rate, info
                )
            elif isinstance(item, StreamStart) and item.info is None:
                info = declared[item.stream]
                if (info.media, info.rate) == (item.media, item.rate):
                    item = StreamStart(item.stream, item.media, item.rate, item.meta, info)
            yield item

    async def aclose(self) -> None:
        self.closed = True


def declare_streams(items: Sequence[Item]) -> list[StreamInfo]:
    """A :class:`StreamInfo` per stream of a script, in order of first appearance (see
    :class:`ScriptedSource`). A stream's first ``StreamStart`` with ``info`` wins."""
    starts: dict[str, StreamStart] = {}
    firsts: dict[str, Frame] = {}
    counts: dict[str, int] = {}
    order: list[str] = []
    for item in items:
        if item.stream not in counts:
            order.append(item.stream)
            counts[item.stream] = 0
        if isinstance(item, StreamStart):
            starts.setdefault(item.stream, item)
        elif isinstance(item, Frame):
            firsts.setdefault(item.stream, item)
            counts[item.stream] += 1
    infos: list[StreamInfo] = []
    for stream in order:
        start, first = starts.get(stream), firsts.get(stream)
        if start is not None and start.info is not None:
            infos.append(start.info)
            continue
        if first is not None and first.info is not None and start is None:
            infos.append(first.info)
            continue
        data = None if first is None else np.asarray(first.data)
        media = start.media if start is not None else first.media if first is not None else "audio"
        rate = start.rate if start is not None else first.rate if first is not None else 0.0
        infos.append(
            StreamInfo(
                stream,
                media,
                rate,
                None if data is None else data.shape,
                np.dtype(np.float32) if data is None else data.dtype,
                total_frames=counts[stream],
            )
        )
    return infos


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


def replay(
    pipeline: str | Path,
    source: str | Sequence[str] | None = None,
    *,
    mode: Mode | None = None,
    pace: Pace | None = None,
    clock: Clock | None = None,
) -> ScriptedRun:
    """Run a pipeline file on ``source`` (a URI or several; default: the file's own) on a
    :class:`VirtualClock`, capturing its outputs instead of writing its sinks.

    Everything is checked as ``streamer run`` checks it (bad input raises
    :class:`~streamer.errors.InputError`); a real-time replay finishes at once with the
    time stamps real time would give. For tests::

        run = replay("pipelines/audio_tagging.toml", "recordings/speech_en")
        speech = [o for o in run.outputs if o.kind == "segment" and o.label == "speech"]
    """
    import asyncio
    import dataclasses

    from streamer.build import Overrides, apply_overrides, build_pipeline
    from streamer.config import load_config

    sources = (source,) if isinstance(source, str) else tuple(source or ())
    config = apply_overrides(
        load_config(pipeline), Overrides(sources=sources, mode=mode, pace=pace, quiet=True)
    )
    config = config.model_copy(update={"sinks": []})
    built = build_pipeline(config, clock or VirtualClock())
    sink = CaptureSink()
    built = dataclasses.replace(built, sinks=[sink], deliveries=None)
    summary = asyncio.run(built.run())
    return ScriptedRun(sink.outputs, summary, built)
