"""What the model stage does around the model: the ``[model]`` keys besides the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from streamer.options import Section


@dataclass(frozen=True)
class ModelSettings:
    """What the stage does around the model (the ``[model]`` keys besides the model)."""

    labels: tuple[str, ...]
    features: str = "raw"
    feature_options: dict[str, Any] = field(default_factory=dict)
    head: str = "frame"
    head_options: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] | None = None
    smoothing: dict[str, Any] | None = None
    lookahead: int = 0
    chunk: int = 1
    offline_chunk: int = 0
    on_gap: Literal["reset", "keep"] = "reset"
    on_invalid: Literal["drop", "error"] = "drop"
    max_batch: int = 64
    max_wait_ms: float = 0.0
    ttl: float | None = None
    max_len: int = 16
    end_token: str | None = None
    decode: Literal["step", "end"] = "step"
    min_steps: int = 1
    #: realtime: a frame already older than this when its turn comes is skipped
    latency_budget_ms: float | None = None


Activation = Literal["auto", "softmax", "sigmoid", "none"]


class HeadOptions(Section):
    """The options every head takes (``activation``); a head's own options model adds its
    keys (:data:`~streamer.stages.model.heads.HEADS` names each head's). Given as
    ``[model.head]`` (``type`` and the options), or, for the built-in heads, as flat
    ``[model]`` keys."""

    activation: Activation = "auto"
