"""Assemble a :class:`~streamer.pipeline.Pipeline` from a validated pipeline file.

Everything that can be checked before the run is checked here (source opens, output
folders exist), so bad input is refused before the first frame.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.clock import Clock, RealClock
from streamer.config import (
    ConsoleSinkConfig,
    JsonlSinkConfig,
    ModelConfig,
    PipelineConfig,
    SourceConfig,
    VideoSinkConfig,
    with_overrides,
)
from streamer.errors import InputError
from streamer.frames import Frame, StreamInfo
from streamer.metrics import Metrics
from streamer.mqtt.broker import options_from_url
from streamer.pipeline import Pipeline
from streamer.safety import factory_input, source_inputs
from streamer.sinks import SINKS, Sink
from streamer.sinks.base import SINK_CAPACITY, Delivery, SinkContext, default_delivery
from streamer.sinks.mqtt import MqttSinkConfig
from streamer.sources import Source, SourceOptions, open_source
from streamer.stages import Stage, ThresholdStage

if TYPE_CHECKING:  # torch and the model stage are imported only for a pipeline with a model
    from streamer.models import ModelSpec
    from streamer.stages.model import ModelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that replace the pipeline file's."""

    sources: tuple[str, ...] = ()
    mode: str | None = None
    out: str | None = None
    duration: float | None = None
    max_frames: int | None = None
    pace: str | None = None
    speed: float | None = None
    quiet: bool = False
    video_out: str | None = None
    preview: bool = False
    mqtt: tuple[str, ...] = ()  # --mqtt URL: one MQTT sink each
    serve: str | None = None  # --serve [HOST:]PORT: the live view (a web sink)
    ray: str | None = None  # --ray [ADDRESS]: the Ray engine ("": a local Ray)
    origin: str = "command line"


def apply_overrides(config: PipelineConfig, overrides: Overrides) -> PipelineConfig:
    """A copy of ``config`` with the command line's settings applied, validated like the
    file (a bad value is an InputError naming the flag).

    ``--source`` given once replaces the source's URI; given several times (or with
    ``--sources FILE``) it makes one source per URI, each with the options of the file's
    first source (its ``stream`` id aside).
    """
    changes: dict[tuple[str, str], Any] = {}
    flags: dict[tuple[str, ...], str] = {}
    for (section, key), flag, value in (
        (("run", "mode"), "--mode", overrides.mode),
        (("run", "duration"), "--duration", overrides.duration),
        (("run", "max_frames"), "--max-frames", overrides.max_frames),
        (("run", "engine"), "--ray", None if overrides.ray is None else "ray"),
        (("run", "ray_address"), "--ray", overrides.ray or None),
    ):
        if value is not None:
            changes[(section, key)] = value
            flags[(section, key)] = flag
    tables = [src.model_dump(exclude_unset=True) for src in config.all_sources]
    if overrides.sources:
        template = {k: v for k, v in tables[0].items() if k not in ("uri", "stream")}
        keep_stream = len(overrides.sources) == 1 and "stream" in tables[0]
        tables = [
            {**template, "uri": uri, **({"stream": tables[0]["stream"]} if keep_stream else {})}
            for uri in overrides.sources
        ]
        flags[("source", "uri")] = flags[("sources", "*", "uri")] = "--source"
    per_source = (("pace", "--pace", overrides.pace), ("speed", "--speed", overrides.speed))
    for key, flag, value in per_source:
        if value is not None:
            for table in tables:
                table[key] = value
            flags[("source", key)] = flags[("sources", "*", key)] = flag
    if len(tables) == 1 and (config.source is not None or overrides.sources):
        changes[("source", "")], changes[("sources", "")] = tables[0], []
    else:
        changes[("source", "")], changes[("sources", "")] = None, tables
    sinks = [
        s.model_dump(exclude_unset=True)
        for s in config.sinks
        if not (overrides.quiet and isinstance(s, ConsoleSinkConfig))
    ]
    if overrides.out is not None:
        _set_on_first(sinks, "jsonl", "path", overrides.out)
    video = [s for s in sinks if s["type"] == "video"]
    if overrides.video_out is not None or overrides.preview:
        if not video:
            sinks.append({"type": "video"})
            video = sinks[-1:]
        if overrides.video_out is not None:
            video[0]["path"] = overrides.video_out
        if overrides.preview:
            video[0]["preview"] = True
    for url in overrides.mqtt:
        mqtt = options_from_url(url, "--mqtt", MqttSinkConfig, type="mqtt")
        sinks.append(mqtt.model_dump(exclude_unset=True))
    if overrides.serve is not None:
        _set_on_first(sinks, "web", "bind", overrides.serve)
    if not overrides.quiet and not any(s["type"] == "console" for s in sinks):
        sinks.insert(0, {"type": "console"})
    changes[("sinks", "")] = sinks
    return with_overrides(config, changes, overrides.origin, flags)


def _set_on_first(sinks: list[dict[str, Any]], kind: str, key: str, value: Any) -> None:
    """``key = value`` on the first sink table of type ``kind``, or a new one with it."""
    for table in sinks:
        if table["type"] == kind:
            table[key] = value
            return
    sinks.append({"type": kind, key: value})


def sink_names(config: PipelineConfig, overrides: Overrides) -> list[str]:
    """How errors name each sink: the flag that made or changed it (``--out``,
    ``--video-out``, ``--preview``, ``--mqtt``, ``--serve``), else ``[[sinks]] #N``."""
    names: list[str] = []
    out_named = video_named = web_named = False
    for number, sink in enumerate(config.sinks, start=1):
        name = f"[[sinks]] #{number}"
        if isinstance(sink, JsonlSinkConfig) and not out_named and overrides.out is not None:
            if sink.path == overrides.out:
                name, out_named = "--out", True
        elif isinstance(sink, VideoSinkConfig) and not video_named:
            if overrides.video_out is not None and sink.path == overrides.video_out:
                name, video_named = "--video-out", True
            elif overrides.preview and sink.preview and sink.path is None:
                name, video_named = "--preview", True
        elif isinstance(sink, MqttSinkConfig) and sink.url in overrides.mqtt:
            name = "--mqtt"
        elif (
            getattr(sink, "type", None) == "web"
            and not web_named
            and overrides.serve is not None
            and getattr(sink, "bind", None) == overrides.serve
        ):
            name, web_named = "--serve", True
        names.append(name)
    return names


def output_paths(config: PipelineConfig, overrides: Overrides) -> list[tuple[str, Path]]:
    """Every file the run will write, named as the user gave it (flag or sink key)."""
    named: list[tuple[str, Path]] = []
    for name, sink in zip(sink_names(config, overrides), config.sinks, strict=True):
        path = sink.writes()
        if path is not None:
            named.append((name if name.startswith("--") else f"{name} path", path))
    return named


def input_paths(config: PipelineConfig, pipeline_file: str | None) -> list[tuple[str, Path]]:
    """Every file the run reads: source, model, weights, factory module, pipeline file."""
    named = [item for src in config.all_sources for item in source_inputs(src.uri)]
    if config.model.path is not None:
        named.append(("the model file", Path(config.model.path)))
    named += factory_input(config.model.factory)
    if pipeline_file is not None:
        named.append(("the pipeline file", Path(pipeline_file)))
    return named


def source_options(src: SourceConfig, mode: str, retry: bool = False) -> SourceOptions:
    """The options a source gets from its ``[source]`` table (every key but ``uri``, as
    the file gives it) and the run's mode (the pace by default, the push buffer's policy)."""
    table = src.model_dump(exclude={"uri", "node"})
    return SourceOptions(
        **{**table, "pace": src.pace or ("realtime" if mode == "realtime" else "fast")},
        overflow="latest" if mode == "realtime" else "drop-oldest",
        retry=retry,
    )


def open_sources(config: PipelineConfig, clock: Clock) -> list[Source]:
    """Open every source (checking each before the run) and refuse duplicate stream ids.

    With several sources, a live one that cannot connect yet keeps retrying with back-off
    instead of failing the run, unless ``[run] fail_fast``.
    """
    tables = config.all_sources
    several = len(tables) > 1
    sources: list[Source] = []
    try:
        _open_each(config, clock, tables, several, sources)
    except BaseException:
        _discard(list(sources))  # a source actor on another node started before
        raise
    return sources


def _open_each(
    config: PipelineConfig,
    clock: Clock,
    tables: list[SourceConfig],
    several: bool,
    sources: list[Source],
) -> None:
    """Open each of ``tables`` into ``sources`` (see :func:`open_sources`)."""
    owners: dict[str, int] = {}
    for number, src in enumerate(tables):
        options = source_options(src, config.run.mode, several and not config.run.fail_fast)
        try:
            if src.node is not None:
                source = _remote_source(src.uri, options, clock, src.node, config)
            else:
                source = open_source(src.uri, options, clock)
        except InputError as exc:
            if several:
                raise InputError(f"{config.source_name(number)}: {exc}") from exc
            raise
        _check_bounded(config, source, src.uri)
        for stream in stream_ids(source):
            if stream in owners:
                raise InputError(
                    f"{config.source_name(number)}: stream id '{stream}' is also the stream"
                    f" of {config.source_name(owners[stream])}; give each source its own"
                    ' stream = "..."'
                )
            owners[stream] = number
        sources.append(source)


def _remote_source(
    uri: str, options: SourceOptions, clock: Clock, node: str, config: PipelineConfig
) -> Source:
    """A source read by a Ray actor on ``node`` (Ray connected first)."""
    from streamer.cluster.engine import connect_ray
    from streamer.cluster.source import RemoteSource

    ray, _ = connect_ray(config.run.ray_address)
    return RemoteSource(uri, options, clock, node, ray)


def stream_ids(source: Source) -> list[str]:
    """The ids of the streams a source will deliver (declared before the run)."""
    return [info.stream for info in source.streams]


def build_pipeline(
    config: PipelineConfig, clock: Clock | None = None, names: list[str] | None = None
) -> Pipeline:
    """Open the sources, make the stages and sinks; raises InputError on bad input.
    ``names``: how errors name each sink (:func:`sink_names`; default ``[[sinks]] #N``)."""
    clock = clock or RealClock()
    mode = config.run.mode
    sources = open_sources(config, clock)
    sinks: list[Sink] = []
    stages: list[Stage] = []
    try:
        stage = _model_stage(config, sources, clock)
        stages.append(stage)
        metrics = Metrics(clock, mode=mode)
        report = getattr(stage, "report", None)
        if callable(report):  # the model stage's figures for the summary
            metrics.reporters.append(report)
        deliveries: list[Delivery] = []
        names = names or [f"[[sinks]] #{n}" for n in range(1, len(config.sinks) + 1)]
        for name, options in zip(names, config.sinks, strict=True):
            context = SinkContext(name, sources, mode, clock, metrics)
            sink = SINKS.get(options.type).build(options, context)
            sinks.append(sink)
            deliveries.append(
                Delivery(
                    policy=options.policy or default_delivery(sink).policy,
                    capacity=options.capacity or SINK_CAPACITY,
                    on_error=options.on_error,
                )
            )
    except BaseException:
        _discard([*sinks, *stages, *sources])
        raise
    return Pipeline(
        sources,
        stages,
        sinks,
        mode=mode,
        clock=clock,
        max_frames=config.run.max_frames,
        duration=config.run.duration,
        source_capacity=config.run.queue,
        metrics=metrics,
        fail_fast=config.run.fail_fast,
        latency_budget_ms=config.run.latency_budget_ms,
        deliveries=deliveries,
    )


def _discard(parts: list[Any]) -> None:
    """Release what the parts of a pipeline that will never run hold since they were
    made (their ``discard()``: the live view's listening socket, the Ray engine's actors,
    a source actor on another node); the rest hold nothing before a run."""
    for part in reversed(parts):
        discard = getattr(part, "discard", None)
        if callable(discard):
            try:
                discard()
            except Exception as exc:  # the build's own error is the one to report
                log.debug("discarding %r failed: %s", part, exc)


def _ray_engine(
    config: PipelineConfig, spec: ModelSpec, loaded: Any, settings: ModelSettings
) -> Any:
    """The Ray engine's actors, started (each loads the model as this process did, from
    ``spec``)."""
    from streamer.cluster.engine import EngineOptions, RayEngine

    run, model = config.run, config.model
    if run.mode == "offline":
        raise InputError(
            "[run] engine = 'ray' runs the realtime and online modes; run offline in one"
            " process (engine = 'local')"
        )
    if model.head_type == "generate":
        raise InputError(
            "[run] engine = 'ray' does not run the generate head (it decodes from the state,"
            " which lives on the actors); use engine = 'local'"
        )
    spec = dataclasses.replace(
        spec,
        path=None if spec.path is None else str(Path(spec.path).resolve()),
        options=dict(spec.options),
        # an actor given a GPU runs the model there (the driver needs none)
        device="cuda" if run.worker_gpus > 0 else spec.device,
        cwd=str(Path.cwd()),
    )
    options = EngineOptions(
        address=run.ray_address,
        workers=run.workers,
        cpus=run.worker_cpus,
        gpus=run.worker_gpus,
        snapshot_every=run.snapshot_every,
        deadline_s=run.deadline_s,
        max_batch=settings.max_batch,
    )
    engine = RayEngine(spec, loaded, options, ttl=settings.ttl)
    engine.start()
    return engine


def _model_stage(config: PipelineConfig, sources: list[Source], clock: Clock) -> Stage:
    model = config.model
    if model.is_builtin:
        kind = None if model.builtin == "auto" else model.builtin
        for each in sources:
            _check_builtin_media(kind, each)
        labels = (model.labels[0], model.labels[1]) if model.labels else None
        return ThresholdStage(
            name=kind or "threshold", kind=kind, threshold=model.threshold, labels=labels
        )
    return _trained_model_stage(config, sources, clock)


def _trained_model_stage(config: PipelineConfig, sources: list[Source], clock: Clock) -> Stage:
    """The model stage of a ``[model]`` with a model (importing torch, here and only here:
    a pipeline without a model starts without it)."""
    import torch

    from streamer.models import ModelSpec
    from streamer.stages.model import ModelSettings, ModelStage, dry_check

    model = config.model
    source = sources[0]
    if model.device == "cuda" and not torch.cuda.is_available():
        raise InputError("[model] device: 'cuda' asked for, but no CUDA device is available")
    # factories name modules of the project at hand: imported from the current folder
    spec = ModelSpec(
        factory=model.factory,
        path=model.path,
        options=model.options,
        threads=model.threads,
        device=model.device,
        cwd=str(Path.cwd()) if model.factory is not None else None,
    )
    loaded = spec.load()
    # the head's options, checked by its own model; the generate head's go to the stage
    head_options = model.head_options
    decoding: dict[str, Any] = {}
    if model.head_type == "generate":
        decoding = {k: head_options.pop(k) for k in ("max_len", "end_token", "decode", "min_steps")}
    smoothing = None if model.smoothing is None else model.smoothing.model_dump(exclude_none=True)
    # every [model] key the stage takes, as the file gives it; then what is derived
    taken = {f.name for f in dataclasses.fields(ModelSettings)} & set(ModelConfig.model_fields)
    settings = ModelSettings(
        **{
            key: _copied(getattr(model, key))
            for key in taken - {"labels", "smoothing", "head", *decoding}
        },
        **decoding,
        labels=tuple(model.labels or ()),
        head=model.head_type,
        head_options=head_options,
        smoothing=smoothing,
        latency_budget_ms=config.run.latency_budget_ms,
    )
    engine = None
    if config.run.engine == "ray":
        engine = _ray_engine(config, spec, loaded, settings)
    try:
        stage = ModelStage(
            loaded,
            settings,
            mode=config.run.mode,
            clock=clock,
            name="model",
            source_info=source_info(source),
            engine=engine,
        )
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    checked: set[tuple[Any, ...]] = set()
    rate = getattr(loaded, "input_rate", None)
    for each in sources:  # each distinct kind of frame once
        for info in each.streams:
            if rate is not None and info.media == "audio" and abs(info.rate - rate) > 1e-6:
                raise InputError(
                    f"stage 'model': the model takes {rate:g} Hz audio, but stream"
                    f" '{info.stream}' of {each.name} is {info.rate:g} Hz; set [source] rate"
                    f" = {rate:g}"
                )
            frame = sample_frame(info)
            if frame is None:
                if info.total_frames != 0:
                    log.warning(
                        "%s: stream '%s' declares no frame shape before the run; the model"
                        " is checked at its first frame",
                        each.name,
                        info.stream,
                    )
                continue
            key = (info.media, info.shape, info.dtype, info.rate)
            if key not in checked:
                checked.add(key)
                dry_check(stage, frame)
    return stage


def _copied(value: Any) -> Any:
    """A table's own copy for the stage (the config's tables stay the config's)."""
    return dict(value) if isinstance(value, dict) else value


def _check_bounded(config: PipelineConfig, source: Source, uri: str) -> None:
    """An endless source (no known length, or looping) must be bounded in offline mode,
    which reads every stream to its end before the model runs."""
    if config.run.mode != "offline" or config.run.duration or config.run.max_frames:
        return
    if any(info.total_frames is None for info in source.streams):
        raise InputError(
            f"[run] mode: offline reads each stream to its end, but {uri} is"
            " endless (live, looping or without a duration); give [run] duration or"
            " max_frames (--duration, --max-frames), or use online mode"
        )


def _check_builtin_media(kind: str | None, source: Source) -> None:
    """``energy`` measures audio and ``brightness`` video; refuse the other media."""
    if kind is None:
        return
    kinds = {"audio": "energy", "video": "brightness"}
    for info in source.streams:
        if kinds[info.media] != kind:
            raise InputError(
                f"[model] builtin: '{kind}' does not measure {info.media}, which is what the"
                f" source {source.name} delivers; use builtin = '{kinds[info.media]}' or 'auto'"
            )


def source_info(source: Source) -> dict[str, Any]:
    """What a feature front-end may need to know of the source's first stream before its
    first frame (``chunk``/``channels`` or ``size``): the model stage's fallback for a start
    marker that carries no :class:`StreamInfo`."""
    if not source.streams:
        return {}
    first = source.streams[0]
    known = {"chunk": first.chunk, "channels": first.channels, "size": first.size}
    return {key: value for key, value in known.items() if value is not None}


def sample_frame(info: StreamInfo) -> Frame | None:
    """A zero frame shaped like the stream's, for the model's dry step; None when the
    stream does not declare its shape (a live device before it connects)."""
    if info.shape is None:
        return None
    data = np.zeros(info.shape, dtype=info.dtype)
    return Frame(info.stream, 0, 0.0, 0.0, data, info.rate or 1.0, info)
