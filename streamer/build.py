"""Assemble a :class:`~streamer.pipeline.Pipeline` from a validated pipeline file.

Everything that can be checked before the run is checked here (source opens, output
folders exist), so bad input is refused before the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.clock import Clock, RealClock
from streamer.config import (
    ConsoleSinkConfig,
    JsonlSinkConfig,
    PipelineConfig,
    with_overrides,
)
from streamer.errors import InputError
from streamer.frames import Frame
from streamer.metrics import Metrics
from streamer.models import load_model
from streamer.pipeline import Pipeline
from streamer.safety import add_cwd_to_path, factory_input, source_inputs
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
    origin: str = "command line"


def apply_overrides(config: PipelineConfig, overrides: Overrides) -> PipelineConfig:
    """A copy of ``config`` with the command line's settings applied, validated like the
    file (a bad value is an InputError naming the flag)."""
    changes: dict[tuple[str, str], Any] = {}
    for (section, key), value in (
        (("source", "uri"), overrides.source),
        (("run", "mode"), overrides.mode),
        (("run", "duration"), overrides.duration),
        (("run", "max_frames"), overrides.max_frames),
        (("source", "pace"), overrides.pace),
        (("source", "speed"), overrides.speed),
    ):
        if value is not None:
            changes[(section, key)] = value
    sinks = [
        s.model_dump(exclude_unset=True)
        for s in config.sinks
        if not (overrides.quiet and isinstance(s, ConsoleSinkConfig))
    ]
    if overrides.out is not None:
        jsonl = [s for s in sinks if s["type"] == "jsonl"]
        if jsonl:
            jsonl[0]["path"] = overrides.out
        else:
            sinks.append({"type": "jsonl", "path": overrides.out})
    if not overrides.quiet and not any(s["type"] == "console" for s in sinks):
        sinks.insert(0, {"type": "console"})
    changes[("sinks", "")] = sinks
    return with_overrides(config, changes, overrides.origin)


def output_paths(config: PipelineConfig, overrides: Overrides) -> list[tuple[str, Path]]:
    """Every file the run will write, named as the user gave it (flag or sink key)."""
    named: list[tuple[str, Path]] = []
    out_named = False
    for number, sink in enumerate(config.sinks, start=1):
        if isinstance(sink, JsonlSinkConfig):
            use_flag = overrides.out is not None and not out_named and sink.path == overrides.out
            out_named = out_named or use_flag
            named.append(("--out" if use_flag else f"[[sinks]] #{number} path", Path(sink.path)))
    return named


def input_paths(config: PipelineConfig, pipeline_file: str | None) -> list[tuple[str, Path]]:
    """Every file the run reads: source, model, weights, factory module, pipeline file."""
    named = source_inputs(config.source.uri)
    if config.model.path is not None:
        named.append(("the model file", Path(config.model.path)))
    named += factory_input(config.model.factory)
    if pipeline_file is not None:
        named.append(("the pipeline file", Path(pipeline_file)))
    return named


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
    _check_bounded(config, source)
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
        _check_builtin_media(kind, source)
        labels = (model.labels[0], model.labels[1]) if model.labels else None
        return ThresholdStage(
            name=kind or "threshold", kind=kind, threshold=model.threshold, labels=labels
        )
    if model.device == "cuda" and not torch.cuda.is_available():
        raise InputError("[model] device: 'cuda' asked for, but no CUDA device is available")
    if model.threads is not None:
        torch.set_num_threads(model.threads)
    if model.factory is not None:
        add_cwd_to_path()
    loaded = load_model(model.factory, model.path, options=model.options, threads=model.threads)
    if model.device == "cuda":
        module = getattr(loaded, "module", None)
        if not isinstance(module, torch.nn.Module):
            raise InputError("[model] device: 'cuda' works for torch models, not this one")
        module.to("cuda")  # inputs follow the parameters' device; outputs come back to CPU
    head_options: dict[str, Any] = {"activation": model.activation}
    if model.head == "window":
        head_options.update(
            window=model.window, hop=model.hop, reduce=model.reduce or "mean", partial=model.partial
        )
    elif model.head == "sequence":
        head_options["segment_on_gap"] = model.segment_on_gap
        if model.reduce is not None:
            head_options["reduce"] = model.reduce
    smoothing = None if model.smoothing is None else model.smoothing.model_dump(exclude_none=True)
    settings = ModelSettings(
        labels=tuple(model.labels or ()),
        features=model.features,
        feature_options=dict(model.feature_options),
        head=model.head,
        head_options=head_options,
        thresholds=model.thresholds,
        smoothing=smoothing,
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


def _check_bounded(config: PipelineConfig, source: Source) -> None:
    """An endless source (no known length, or looping) must be bounded in offline mode,
    which reads every stream to its end before the model runs."""
    if config.run.mode != "offline" or config.run.duration or config.run.max_frames:
        return
    total = getattr(source, "total_frames", None)
    if total is None:
        raise InputError(
            f"[run] mode: offline reads each stream to its end, but {config.source.uri} is"
            " endless (live, looping or without a duration); give [run] duration or"
            " max_frames (--duration, --max-frames), or use online mode"
        )


def _check_builtin_media(kind: str | None, source: Source) -> None:
    """``energy`` measures audio and ``brightness`` video; refuse the other media."""
    if kind is None:
        return
    frame = sample_frame(source)
    media = None if frame is None else frame.media
    kinds = {"audio": "energy", "video": "brightness"}
    if media is not None and kinds[media] != kind:
        raise InputError(
            f"[model] builtin: '{kind}' does not measure {media}, which is what the source"
            f" {getattr(source, 'name', '')} delivers; use builtin = '{kinds[media]}' or 'auto'"
        )


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
