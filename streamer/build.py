"""Assemble a :class:`~streamer.pipeline.Pipeline` from a validated pipeline file.

Everything that can be checked before the run is checked here (source opens, output
folders exist), so bad input is refused before the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.clock import Clock, RealClock
from streamer.config import ConsoleSinkConfig, JsonlSinkConfig, PipelineConfig
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from streamer.sinks import ConsoleSink, JsonlSink, Sink
from streamer.sources import SourceOptions, open_source
from streamer.stages import Stage, ThresholdStage


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that replace the pipeline file's."""

    source: str | None = None
    mode: str | None = None
    out: str | None = None
    duration: float | None = None
    max_frames: int | None = None
    pace: str | None = None
    speed: float | None = None
    quiet: bool = False


def apply_overrides(config: PipelineConfig, overrides: Overrides) -> PipelineConfig:
    """A copy of ``config`` with the command line's settings applied (and validated)."""
    data: dict[str, Any] = config.model_dump()
    if overrides.source is not None:
        data["source"]["uri"] = overrides.source
    if overrides.mode is not None:
        data["run"]["mode"] = overrides.mode
    if overrides.duration is not None:
        data["run"]["duration"] = overrides.duration
    if overrides.max_frames is not None:
        data["run"]["max_frames"] = overrides.max_frames
    if overrides.pace is not None:
        data["source"]["pace"] = overrides.pace
    if overrides.speed is not None:
        data["source"]["speed"] = overrides.speed
    sinks = [s for s in data["sinks"] if not (overrides.quiet and s["type"] == "console")]
    if overrides.out is not None:
        jsonl = [s for s in sinks if s["type"] == "jsonl"]
        if jsonl:
            jsonl[0]["path"] = overrides.out
        else:
            sinks.append({"type": "jsonl", "path": overrides.out})
    if not overrides.quiet and not any(s["type"] == "console" for s in sinks):
        sinks.insert(0, {"type": "console"})
    data["sinks"] = sinks
    return PipelineConfig.model_validate(data)


def build_pipeline(config: PipelineConfig, clock: Clock | None = None) -> Pipeline:
    """Open the source, make the stages and sinks; raises InputError on bad input."""
    clock = clock or RealClock()
    mode = config.run.mode
    src = config.source
    options = SourceOptions(
        rate=src.rate,
        chunk=src.chunk,
        size=src.size,
        mono=src.mono,
        pace=src.pace or ("realtime" if mode == "realtime" else "fast"),
        speed=src.speed,
        loop=src.loop,
        stream=src.stream,
    )
    source = open_source(src.uri, options, clock)
    stages: list[Stage] = [_model_stage(config)]
    metrics = Metrics(clock, mode=mode)
    sinks: list[Sink] = []
    for sink_config in config.sinks:
        if isinstance(sink_config, ConsoleSinkConfig):
            console = ConsoleSink(every=sink_config.every)
            if mode == "offline":
                console.track(metrics, getattr(source, "total_frames", None))
            sinks.append(console)
        elif isinstance(sink_config, JsonlSinkConfig):
            sinks.append(JsonlSink(Path(sink_config.path)))
    return Pipeline(
        [source],
        stages,
        sinks,
        mode=mode,
        clock=clock,
        max_frames=config.run.max_frames,
        duration=config.run.duration,
        source_capacity=config.run.queue,
        metrics=metrics,
    )


def _model_stage(config: PipelineConfig) -> Stage:
    model = config.model
    kind = None if model.builtin == "auto" else model.builtin
    return ThresholdStage(
        name=kind or "threshold", kind=kind, threshold=model.threshold, labels=model.labels
    )
