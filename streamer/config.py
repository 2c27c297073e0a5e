"""Pipeline files: TOML validated by pydantic; unknown keys are errors naming key and file.

Relative paths in a pipeline file (source URI, sink paths, model paths) are taken relative
to the current directory, as on the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamer.errors import InputError

Mode = Literal["realtime", "online", "offline"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """``[source]``: where frames come from."""

    uri: str
    rate: Annotated[float, Field(gt=0)] | None = None
    chunk: Annotated[int, Field(ge=1)] = 512
    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    mono: bool = False
    pace: Literal["realtime", "fast"] | None = None
    speed: Annotated[float, Field(gt=0)] = 1.0
    loop: bool = False
    stream: str | None = None


class ModelConfig(_Section):
    """``[model]``: what labels the frames.

    ``factory`` (``module:function``) and/or ``path`` (TorchScript ``.pt``, ``.onnx``, or a
    state dict for the factory's module) name a stateful model; without either, the
    built-in thresholder (``builtin``, ``threshold``) labels frames.
    """

    factory: str | None = None
    path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    builtin: Literal["energy", "brightness", "auto"] = "auto"
    threshold: float | None = None
    labels: list[str] | None = None
    features: Literal["raw", "logmel", "pixels"] = "raw"
    feature_options: dict[str, Any] = Field(default_factory=dict)
    head: Literal["frame", "window", "sequence", "generate"] = "frame"
    window: Annotated[int, Field(ge=1)] | None = None
    hop: Annotated[int, Field(ge=1)] | None = None
    reduce: Literal["mean", "max", "last"] | None = None
    segment_on_gap: bool = False
    partial: bool = False
    activation: Literal["auto", "softmax", "sigmoid", "none"] = "auto"
    thresholds: dict[str, float] | None = None
    smoothing: dict[str, Any] | None = None
    lookahead: Annotated[int, Field(ge=0)] = 0
    chunk: Annotated[int, Field(ge=1)] = 1
    offline_chunk: Annotated[int, Field(ge=0)] = 0
    on_gap: Literal["reset", "keep"] = "reset"
    on_invalid: Literal["drop", "error"] = "drop"
    max_batch: Annotated[int, Field(ge=1)] = 64
    max_wait_ms: Annotated[float, Field(ge=0)] = 0.0
    ttl: Annotated[float, Field(gt=0)] | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    max_len: Annotated[int, Field(ge=1)] = 16
    end_token: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.factory is None and self.path is None

    @model_validator(mode="after")
    def _labels(self) -> ModelConfig:
        if self.is_builtin:
            if self.labels is not None and len(self.labels) != 2:
                raise ValueError("labels: the built-in thresholder takes two labels")
        elif not self.labels:
            raise ValueError("labels: a model needs its output labels (labels = [...])")
        if self.head == "sequence" and self.reduce == "max":
            raise ValueError("reduce: the sequence head reduces by 'last' or 'mean'")
        if self.head == "window" and self.window is None:
            raise ValueError("window: head = 'window' needs window = W (frames)")
        return self


class RunConfig(_Section):
    """``[run]``: mode and limits."""

    mode: Mode = "online"
    duration: Annotated[float, Field(gt=0)] | None = None
    max_frames: Annotated[int, Field(ge=1)] | None = None
    queue: Annotated[int, Field(ge=1)] | None = None


class ConsoleSinkConfig(_Section):
    type: Literal["console"]
    every: Annotated[int, Field(ge=1)] = 1


class JsonlSinkConfig(_Section):
    type: Literal["jsonl"]
    path: str


SinkConfig = Annotated[ConsoleSinkConfig | JsonlSinkConfig, Field(discriminator="type")]


class PipelineConfig(_Section):
    """A whole pipeline file."""

    source: SourceConfig
    model: ModelConfig = ModelConfig()
    run: RunConfig = RunConfig()
    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_console(self) -> PipelineConfig:
        if sum(isinstance(s, ConsoleSinkConfig) for s in self.sinks) > 1:
            raise ValueError("at most one console sink")
        return self


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; every problem is an InputError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: pipeline file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a pipeline TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read pipeline file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], origin: str = "<pipeline>") -> PipelineConfig:
    """Validate a pipeline given as a dict (as TOML would give it)."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{origin}: {describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """The first validation problem as one line: where (section and key) and what."""
    error = exc.errors()[0]
    loc = [part for part in error["loc"] if part not in ("console", "jsonl")]
    where = _where(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}' in {_where(loc[:-1]) or 'the top level'}"
    if kind == "missing":
        return f"missing key '{loc[-1]}' in {_where(loc[:-1]) or 'the top level'}"
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where or 'pipeline'}: {message}{shown}"


def _where(loc: list[Any]) -> str:
    """``[source] rate`` / ``[[sinks]] #2 path`` from a pydantic location."""
    if not loc:
        return ""
    section, rest = loc[0], loc[1:]
    if section == "sinks":
        if rest and isinstance(rest[0], int):
            keys = ".".join(str(p) for p in rest[1:])
            return f"[[sinks]] #{rest[0] + 1}" + (f" {keys}" if keys else "")
        return "[[sinks]]"
    keys = ".".join(str(p) for p in rest)
    return f"[{section}]" + (f" {keys}" if keys else "")
