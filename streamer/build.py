"""Assemble a :class:`~streamer.pipeline.Pipeline` from a validated pipeline file.

Everything that can be checked before the run is checked here (source opens, output
folders exist), so bad input is refused before the first frame.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.clock import Clock, RealClock
from streamer.config import ConsoleSinkConfig, JsonlSinkConfig, PipelineConfig
from streamer.errors import InputError
from streamer.frames import Frame
from streamer.metrics import Metrics
from streamer.models import load_model
from streamer.pipeline import Pipeline
from streamer.sinks import ConsoleSink, JsonlSink, Sink
from streamer.sources import Source, SourceOptions, open_source
from streamer.stages import Stage, ThresholdStage
from streamer.stages.model import ModelSettings, ModelStage, dry_check


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
    stage = _model_stage(config, source, clock)
    stages: list[Stage] = [stage]
    metrics = Metrics(clock, mode=mode)
    if isinstance(stage, ModelStage):
        metrics.reporters.append(stage.report)
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


def _model_stage(config: PipelineConfig, source: Source, clock: Clock) -> Stage:
    model = config.model
    if model.is_builtin:
        kind = None if model.builtin == "auto" else model.builtin
        labels = (model.labels[0], model.labels[1]) if model.labels else None
        return ThresholdStage(
            name=kind or "threshold", kind=kind, threshold=model.threshold, labels=labels
        )
    if model.device == "cuda" and not torch.cuda.is_available():
        raise InputError("[model] device: 'cuda' asked for, but no CUDA device is available")
    if model.threads is not None:
        torch.set_num_threads(model.threads)
    if model.factory is not None and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # factories name modules of the project at hand
    loaded = load_model(model.factory, model.path, factory_kwargs=model.options)
    if model.device == "cuda":
        module = getattr(loaded, "module", None)
        if not isinstance(module, torch.nn.Module):
            raise InputError("[model] device: 'cuda' works for torch models, not this one")
        module.to("cuda")  # inputs follow the parameters' device; outputs come back to CPU
    head_options: dict[str, Any] = (
        {"activation": model.activation} if model.head != "generate" else {}
    )
    if model.head == "window":
        head_options.update(
            window=model.window, hop=model.hop, reduce=model.reduce or "mean", partial=model.partial
        )
    elif model.head == "sequence":
        head_options["segment_on_gap"] = model.segment_on_gap
        if model.reduce is not None:
            head_options["reduce"] = model.reduce
    settings = ModelSettings(
        labels=tuple(model.labels or ()),
        features=model.features,
        feature_options=dict(model.feature_options),
        head=model.head,
        head_options=head_options,
        thresholds=model.thresholds,
        smoothing=model.smoothing,
        lookahead=model.lookahead,
        chunk=model.chunk,
        offline_chunk=model.offline_chunk,
        on_gap=model.on_gap,
        on_invalid=model.on_invalid,
        max_batch=model.max_batch,
        max_wait_ms=model.max_wait_ms,
        ttl=model.ttl,
        max_len=model.max_len,
        end_token=model.end_token,
    )
    stage = ModelStage(
        loaded,
        settings,
        mode=config.run.mode,
        clock=clock,
        name="model",
        source_info=source_info(source),
    )
    frame = sample_frame(source)
    if frame is not None:
        dry_check(stage, frame)
    return stage


def source_info(source: Source) -> dict[str, Any]:
    """What a feature front-end may need to know of the source before its first frame."""
    info: dict[str, Any] = {}
    for key in ("chunk", "channels", "size"):
        value = getattr(source, key, None)
        if value is not None:
            info[key] = value
    return info


def sample_frame(source: Source) -> Frame | None:
    """A zero frame shaped like the source's frames, for the model's dry step."""
    recording = getattr(source, "recording", None)
    if recording is not None and recording.streams:
        first = recording.streams[0]
        shape = first.frame_shape
        return Frame(first.id, 0, 0.0, 0.0, np.zeros(shape, dtype=first.dtype), first.rate)
    media = getattr(source, "media", None)
    rate = float(getattr(source, "rate", 0.0) or 1.0)
    chunk, channels = getattr(source, "chunk", None), getattr(source, "channels", None)
    if chunk and channels and media in (None, "audio") and not hasattr(source, "native_fps"):
        return Frame("probe", 0, 0.0, 0.0, np.zeros((chunk, channels), np.float32), rate)
    size = getattr(source, "size", None) or getattr(source, "native_size", None)
    if size is None:
        params = getattr(source, "params", None) or {}
        size = params.get("size")
    if size is not None:
        width, height = int(size[0]), int(size[1])
        return Frame("probe", 0, 0.0, 0.0, np.zeros((height, width, 3), np.uint8), rate)
    return None
