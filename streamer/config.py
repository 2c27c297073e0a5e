"""Pipeline files: TOML validated by pydantic; unknown keys are errors naming key and file.

Types are strict (``chunk = true`` or ``chunk = "512"`` is refused, not converted), every
number must be finite and within bounds a real device or file could need, and options that
depend on each other (labels named by thresholds and smoothing, head options) are checked
together, so a bad file is refused before the first frame. Command-line overrides go
through the same models (:func:`with_overrides`), so their errors read the same way.

Relative paths in a pipeline file (source URI, sink paths, model paths) are taken relative
to the current directory, as on the command line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from streamer.errors import InputError
from streamer.options import (
    MAX_CHUNK,
    MAX_RATE,
    MAX_SECONDS,
    MAX_SIDE,
    MAX_THREADS,
    Bool,
    Float,
    Int,
    Mode,
    Section,
    Str,
)
from streamer.registry import Registry

if TYPE_CHECKING:
    from streamer.stages.model.features import FeatureKind
    from streamer.stages.model.heads import HeadKind
from streamer.sinks import SINKS
from streamer.sinks.base import SinkOptions
from streamer.sinks.console import ConsoleSinkConfig as ConsoleSinkConfig
from streamer.sinks.jsonl import JsonlSinkConfig as JsonlSinkConfig
from streamer.sinks.video import VideoSinkConfig as VideoSinkConfig

_Section = Section  # the base of every table


class SourceConfig(_Section):
    """``[source]``: where frames come from."""

    uri: Str
    rate: Annotated[Float, Field(gt=0, le=MAX_RATE)] | None = None
    chunk: Annotated[Int, Field(ge=1, le=MAX_CHUNK)] = 512
    size: (
        tuple[Annotated[Int, Field(ge=1, le=MAX_SIDE)], Annotated[Int, Field(ge=1, le=MAX_SIDE)]]
        | None
    ) = None
    mono: Bool = False
    pace: Literal["realtime", "fast"] | None = None
    speed: Annotated[Float, Field(ge=0.01, le=1000)] = 1.0
    loop: Bool = False
    stream: Annotated[Str, Field(min_length=1, max_length=200)] | None = None
    timeout: Annotated[Float, Field(gt=0, le=600)] = 5.0
    latency: Literal["low", "high"] | Annotated[Float, Field(gt=0, le=10)] = "low"
    #: read the source on another machine: a Ray source actor on this node (its Ray node
    #: id or IP address), for a device attached there (needs Ray: [run] ray_address)
    node: Annotated[Str, Field(min_length=1, max_length=200)] | None = None


class SmoothingConfig(_Section):
    """``[model] smoothing``: hysteresis on a target label's score, minimum durations (s),
    segment padding (``pad``, s: Silero VAD's ``speech_pad_ms``); with ``per_label``, each
    label's own segments (multi-label taggers, see :mod:`streamer.stages.model.labelwise`)."""

    on: Annotated[Float, Field(ge=0)] | None = None
    off: Annotated[Float, Field(ge=0)] | None = None
    target: Str | None = None
    default: Str | None = None
    min_on: Annotated[Float, Field(ge=0, le=3600)] = 0.0
    min_off: Annotated[Float, Field(ge=0, le=3600)] = 0.0
    segment_labels: list[Str] | None = None
    emit_frames: Bool = True
    emit_segments: Bool = True
    pad: Annotated[Float, Field(ge=0, le=3600)] = 0.0
    per_label: Bool = False
    hysteresis: Annotated[Float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SmoothingConfig:
        if self.per_label and (self.off is not None or self.target is not None):
            raise ValueError(
                "per_label: each label turns on at its threshold and off 'hysteresis' below"
                " it; 'off' and 'target' are for one label's hysteresis"
            )
        if self.hysteresis is not None and not self.per_label:
            raise ValueError("'hysteresis' is for per_label = true; one label uses 'on'/'off'")
        if self.off is not None and self.on is None:
            raise ValueError("'off' needs 'on' (hysteresis turns on at 'on', off below 'off')")
        if self.on is not None and self.off is not None and self.off > self.on:
            raise ValueError(f"off ({self.off}) must be <= on ({self.on})")
        return self


def _front_ends() -> Registry[FeatureKind]:
    """The feature front-end registry, imported when a ``[model]`` table is checked."""
    from streamer.stages.model.features import FEATURES

    return FEATURES


#: Per head, the ``[model]`` keys that only it takes.
def _heads() -> Registry[HeadKind]:
    """The head registry, imported when a ``[model]`` table is checked (it brings torch,
    which reading a ``[source]`` alone, as ``streamer record`` does, must not)."""
    from streamer.stages.model.heads import HEADS

    return HEADS


def head_keys() -> dict[str, tuple[str, ...]]:
    """Each registered head's own keys (its options model's, ``activation`` aside)."""
    heads = _heads()
    return {
        name: tuple(k for k in heads.get(name).options.model_fields if k != "activation")
        for name in heads
    }


class ModelConfig(_Section):
    """``[model]``: what labels the frames.

    ``factory`` (``module:function``) and/or ``path`` (TorchScript ``.pt``, ``.onnx``, or a
    state dict for the factory's module) name a stateful model; without either, the
    built-in thresholder (``builtin``, ``threshold``) labels frames.
    """

    factory: Str | None = None
    path: Str | None = None
    options: dict[Str, Any] = Field(default_factory=dict)
    builtin: Literal["energy", "brightness", "auto"] = "auto"
    threshold: Float | None = None
    labels: list[Annotated[Str, Field(min_length=1)]] | None = None
    features: Str = "raw"  # a registered front-end: raw | logmel | pixels
    feature_options: dict[Str, Any] = Field(default_factory=dict)
    # a head's name (its options as flat keys, for the built-in heads), or the
    # [model.head] table: type = NAME and the head's options
    head: Str | dict[Str, Any] = "frame"
    window: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    hop: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    reduce: Literal["mean", "max", "last"] | None = None
    segment_on_gap: Bool = False
    partial: Bool = False
    activation: Literal["auto", "softmax", "sigmoid", "none"] = "auto"
    thresholds: dict[Str, Float] | None = None
    smoothing: SmoothingConfig | None = None
    lookahead: Annotated[Int, Field(ge=0, le=100_000)] = 0
    chunk: Annotated[Int, Field(ge=1, le=1_000_000)] = 1
    offline_chunk: Annotated[Int, Field(ge=0, le=1_000_000_000)] = 0
    on_gap: Literal["reset", "keep"] = "reset"
    on_invalid: Literal["drop", "error"] = "drop"
    max_batch: Annotated[Int, Field(ge=1, le=65_536)] = 64
    max_wait_ms: Annotated[Float, Field(ge=0, le=60_000)] = 0.0
    ttl: Annotated[Float, Field(gt=0, le=MAX_SECONDS)] | None = None
    threads: Annotated[Int, Field(ge=1, le=MAX_THREADS)] | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    max_len: Annotated[Int, Field(ge=1, le=100_000)] = 16
    end_token: Str | None = None
    # generate: decode after every step, or once at the end of the stream (or of a segment
    # ended by a resetting gap), from the state after its last step: a clip's caption
    decode: Literal["step", "end"] = "step"
    min_steps: Annotated[Int, Field(ge=1, le=1_000_000)] = 1

    @property
    def is_builtin(self) -> bool:
        return self.factory is None and self.path is None

    @property
    def head_type(self) -> str:
        """The head's registered name (``head``, or ``[model.head] type``)."""
        if isinstance(self.head, dict):
            return str(self.head.get("type", ""))
        return self.head

    @property
    def head_options(self) -> dict[str, Any]:
        """The head's options, validated by its own options model, from ``[model.head]``
        or from the flat keys (a built-in head's)."""
        kind = _heads().get(self.head_type)
        if isinstance(self.head, dict):
            table = {k: v for k, v in self.head.items() if k != "type"}
        else:
            keys = (*head_keys()[self.head_type], "activation")
            table = {k: getattr(self, k) for k in keys if getattr(self, k, None) is not None}
        options: dict[str, Any] = kind.options.model_validate(table).model_dump()
        return options

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        given = self.model_fields_set
        if self.is_builtin:
            extra = [key for key in MODEL_ONLY if key in given]
            if extra:
                raise ValueError(
                    f"{extra[0]}: a model key, but no model is configured (give factory or"
                    " path; the built-in thresholder takes builtin, threshold, labels)"
                )
            if self.labels is not None and len(self.labels) != 2:
                raise ValueError("labels: the built-in thresholder takes two labels")
            return self
        if "builtin" in given or "threshold" in given:
            key = "builtin" if "builtin" in given else "threshold"
            raise ValueError(f"{key}: a key of the built-in thresholder, not of a model")
        if not self.labels:
            raise ValueError("labels: a model needs its output labels (labels = [...])")
        labels = self.labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels: each label once, got {labels}")
        head, heads, keys = self.head_type, _heads(), head_keys()
        every_key = {key for each in keys.values() for key in each}
        if head not in heads:
            raise ValueError(f"head: unknown head {head!r}; expected one of {list(heads)}")
        if isinstance(self.head, dict):
            flat = sorted((every_key | {"activation"}) & given)
            if flat:
                raise ValueError(
                    f"{flat[0]}: with a [model.head] table, give the head's options in it"
                )
            _check_head_table(head, self.head)
        for key in sorted((every_key - set(keys[head])) & given):
            takers = [h for h, each in keys.items() if key in each]
            raise ValueError(
                f"{key}: an option of the {' or '.join(takers)} head, but head = '{head}'"
            )
        front_ends = _front_ends()
        if self.features not in front_ends:
            raise ValueError(
                f"features: unknown front-end {self.features!r}; expected one of {list(front_ends)}"
            )
        kind = front_ends.get(self.features).options
        try:
            checked = kind.model_validate(self.feature_options)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                takes = ", ".join(kind.model_fields) or "no options"
                raise ValueError(
                    f"feature_options: '{self.features}' takes no option '{key}' (it takes {takes})"
                ) from None
            raise ValueError(
                f"feature_options.{key}: {_message(error)} (got {error.get('input')!r})"
            ) from None
        object.__setattr__(self, "feature_options", checked.model_dump(exclude_unset=True))
        if isinstance(self.head, dict):
            return self._check_generate_and_labels()
        if head == "window" and self.window is None:
            raise ValueError("window: head = 'window' needs window = W (steps)")
        if head == "sequence" and self.reduce == "max":
            raise ValueError("reduce: the sequence head reduces by 'last' or 'mean'")
        return self._check_generate_and_labels()

    def _check_generate_and_labels(self) -> ModelConfig:
        """The checks of the head's options against the rest of ``[model]``."""
        labels = self.labels or []
        given = self.model_fields_set | set(self.head if isinstance(self.head, dict) else ())
        options = self.head_options
        if self.head_type == "generate":
            end_token = options["end_token"]
            if end_token is not None and end_token not in labels:
                raise ValueError(
                    f"end_token: {end_token!r} is not in the vocabulary (labels {labels})"
                )
            if "activation" in given or self.thresholds or self.smoothing:
                key = next(k for k in ("activation", "thresholds", "smoothing") if k in given)
                raise ValueError(f"{key}: the generate head picks tokens; it takes no {key}")
            if self.lookahead:
                raise ValueError("lookahead: the generate head takes no lookahead")
            if "min_steps" in given and options["decode"] != "end":
                raise ValueError("min_steps: the shortest clip to decode, for decode = 'end'")
        if options["activation"] == "softmax" and len(labels) == 1:
            raise ValueError("activation: softmax over one label is always 1; use sigmoid")
        for label in self.thresholds or {}:
            _known(label, labels, "thresholds")
        if self.smoothing is not None:
            _check_smoothing(self.smoothing, labels)
        return self


#: ``[model]`` keys of the built-in thresholder; every other key needs a model.
BUILTIN_KEYS = ("builtin", "threshold", "labels")
MODEL_ONLY = [key for key in ModelConfig.model_fields if key not in BUILTIN_KEYS]


def _check_head_table(head: str, table: dict[str, Any]) -> None:
    """``[model.head]``: its options, checked by the head's own options model."""
    options = {k: v for k, v in table.items() if k != "type"}
    kind = _heads().get(head).options
    try:
        kind.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            raise ValueError(
                f"head.{key}: the {head} head takes no option '{key}' (it takes"
                f" {', '.join(kind.model_fields)})"
            ) from None
        if error["type"] == "missing":
            raise ValueError(f"head.{key}: the {head} head needs {key}") from None
        raise ValueError(f"head.{key}: {_message(error)} (got {error.get('input')!r})") from None


def _known(label: str, labels: list[str], key: str) -> None:
    if label not in labels:
        raise ValueError(f"{key}: {label!r} is not one of the labels {labels}")


def _check_smoothing(smoothing: SmoothingConfig, labels: list[str]) -> None:
    default = smoothing.default if smoothing.default is not None else labels[0]
    _known(default, labels, "smoothing.default")
    if smoothing.target is not None:
        _known(smoothing.target, labels, "smoothing.target")
        if smoothing.target == default:
            raise ValueError(
                f"smoothing.target: {smoothing.target!r} is the default label; name another"
            )
    for label in smoothing.segment_labels or []:
        _known(label, labels, "smoothing.segment_labels")
    if smoothing.on is not None and smoothing.target is None and len(labels) != 2:
        raise ValueError(
            "smoothing.target: hysteresis ('on') over more than two labels needs a target label"
        )


class RunConfig(_Section):
    """``[run]``: mode and limits."""

    mode: Mode = "online"
    fail_fast: Bool = False
    duration: Annotated[Float, Field(gt=0, le=MAX_SECONDS)] | None = None
    max_frames: Annotated[Int, Field(ge=1, le=10**12)] | None = None
    queue: Annotated[Int, Field(ge=1, le=65_536)] | None = None
    #: outputs later than this (capture to emission) are marked late and counted; in
    #: realtime mode the model stage skips frames already older than it
    latency_budget_ms: Annotated[Float, Field(gt=0, le=MAX_SECONDS * 1000)] | None = None
    #: where the model stage runs: in this process, or on a pool of Ray actors
    engine: Literal["local", "ray"] = "local"
    #: the Ray engine: model actors, the cluster's address (none: a local Ray), each
    #: actor's CPUs and GPUs, chunks between a stream's state snapshots, and how long a
    #: model call may take before its actor is given up as lost (a frozen node)
    workers: Annotated[Int, Field(ge=1, le=4096)] = 2
    ray_address: Annotated[Str, Field(min_length=1, max_length=500)] | None = None
    worker_cpus: Annotated[Float, Field(ge=0, le=1024)] = 1.0
    worker_gpus: Annotated[Float, Field(ge=0, le=64)] = 0.0
    snapshot_every: Annotated[Int, Field(ge=1, le=100_000)] = 8
    deadline_s: Annotated[Float, Field(gt=0, le=3600)] = 10.0


# The sink tables: one options model per registered kind, told apart by ``type``.
if TYPE_CHECKING:
    SinkConfig = SinkOptions
else:
    SinkConfig = Annotated[
        Union[tuple(kind.options for kind in SINKS.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


class PipelineConfig(_Section):
    """A whole pipeline file: one ``[source]`` or several ``[[sources]]``."""

    source: SourceConfig | None = None
    sources: list[SourceConfig] = Field(default_factory=list, max_length=1024)
    model: ModelConfig = ModelConfig()
    run: RunConfig = RunConfig()
    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.source is not None and self.sources:
            raise ValueError("give either [source] or [[sources]], not both")
        if self.source is None and not self.sources:
            raise ValueError("missing key 'source': give [source] uri = ... (or [[sources]])")
        if sum(isinstance(s, ConsoleSinkConfig) for s in self.sinks) > 1:
            raise ValueError("at most one console sink")
        return self

    @property
    def all_sources(self) -> list[SourceConfig]:
        """The sources, whichever way the file gave them."""
        return [self.source] if self.source is not None else list(self.sources)

    def source_name(self, number: int) -> str:
        """How errors name source ``number`` (0-based): ``[source]`` or ``[[sources]] #2``."""
        return "[source]" if self.source is not None else f"[[sources]] #{number + 1}"


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


def with_overrides(
    config: PipelineConfig,
    changes: dict[tuple[str, str], Any],
    origin: str,
    flags: dict[tuple[str, ...], str] | None = None,
) -> PipelineConfig:
    """``config`` with ``changes`` (``(section, key) -> value``; key ``""`` replaces the
    whole section) applied and validated.

    ``flags`` names the command-line flag behind a key (``("run", "duration")``, or
    ``("sources", "*", "uri")`` for every table of a list); a bad value from a flag raises
    an InputError naming the flag, any other one names the key and ``origin``.
    """
    data: dict[str, Any] = config.model_dump(exclude_unset=True, round_trip=True)
    for (section, key), value in changes.items():
        if key:
            data.setdefault(section, {})[key] = value
        else:  # a whole section (the sinks list)
            data[section] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        candidates = [loc[:2]]
        if len(loc) >= 3 and isinstance(loc[1], int):
            candidates.append((loc[0], "*", loc[2]))
        for candidate in candidates:
            flag = (flags or {}).get(tuple(str(p) for p in candidate))
            if flag is not None:
                raise _flag_error(flag, error) from None
        raise InputError(f"{origin}: {describe_error(exc)}") from None


def source_from_flags(values: dict[str, Any], flags: dict[str, str]) -> SourceConfig:
    """A ``[source]`` section from command-line values (``key -> value``), validated like
    a pipeline file; an error names the flag (``flags``: key -> flag) that gave the value."""
    try:
        return SourceConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        raise _flag_error(flags.get(key, key), error) from None


def _flag_error(flag: str, error: Any) -> InputError:
    return InputError(f"{flag}: {_message(error)} (got {error.get('input')!r})")


def describe_error(exc: ValidationError) -> str:
    """The first validation problem as one line: where (section and key) and what."""
    error = exc.errors()[0]
    loc = [part for part in error["loc"] if part not in SINKS]  # the union's branch names
    # pydantic names the branch of an optional field ("constrained-float"...): drop it
    loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("constr")))]
    where = _where(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}' in {_where(loc[:-1]) or 'the top level'}"
    if kind == "missing":
        return f"missing key '{loc[-1]}' in {_where(loc[:-1]) or 'the top level'}"
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    message = _message(error)
    if where and _KEYED.match(message):  # a cross-check that names its key: "[model] window: ..."
        return f"{where} {message}"
    return f"{where or 'pipeline'}: {message}{shown}"


_KEYED = re.compile(r"^[a-z_][\w.]*: ")


_EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "finite_number": "expected a finite number",
    "dict_type": "expected a table",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}


def _message(error: Any) -> str:
    expected = _EXPECTED.get(error["type"])
    if expected is not None:
        return expected
    bound = _BOUNDS.get(error["type"])
    if bound is not None:
        limit = next(iter((error.get("ctx") or {}).values()), "?")
        return f"expected a value {bound} {limit}"
    return str(error["msg"]).removeprefix("Value error, ")


def _where(loc: list[Any]) -> str:
    """``[source] rate`` / ``[[sinks]] #2 path`` from a pydantic location."""
    if not loc:
        return ""
    section, rest = loc[0], loc[1:]
    if section in ("sinks", "sources"):
        if rest and isinstance(rest[0], int):
            keys = ".".join(str(p) for p in rest[1:])
            return f"[[{section}]] #{rest[0] + 1}" + (f" {keys}" if keys else "")
        return f"[[{section}]]"
    keys = ".".join(str(p) for p in rest)
    return f"[{section}]" + (f" {keys}" if keys else "")
