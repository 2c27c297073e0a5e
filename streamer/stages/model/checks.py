"""What a model stage checks before the run, so a model or setting that cannot work is
refused with one line that names the stage and the real problem, not mid-run.

- :func:`check_head_settings` (at construction): options a head cannot use (an
  ``activation``, ``thresholds`` or ``smoothing`` for the generate head, an ``end_token``
  for another head or outside the vocabulary, unknown head options), and a generate head
  whose tokens the model cannot take back (no ``embed_token(id)``, another input size than
  the vocabulary).
- :func:`check_input` (the dry run, on the source's first features): a chunk of two steps
  ``[1, 2, F...]`` through the model the way the mode runs it (``step`` from the initial
  state, or ``forward``), so that a model returning only its last step is caught; then
  ``y [B, T, K]`` against ``[model] labels`` and ``activation``, and for a generate head
  one decoding step from a token.
- :func:`_first_invalid` (mid-run, per batch of frames): frames holding NaN or Inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamer.errors import InputError
from streamer.frames import Frame
from streamer.models import ModelContractError, State, StatefulModel
from streamer.options import Mode
from streamer.stages.model.heads import make_head
from streamer.stages.model.postprocess import Labeler
from streamer.stages.model.settings import ModelSettings

#: ``decode_step(token, state) -> (logits, state)``: one step of decoding from a token.
DecodeStep = Callable[[int, State], tuple[Tensor, State]]


def find_embedder(model: StatefulModel) -> Callable[[int], Any] | None:
    """The model's (or its module's) ``embed_token(id)`` method, or None."""
    for owner in (model, getattr(model, "module", None)):
        try:
            embed = getattr(owner, "embed_token", None)
        except RuntimeError:  # a script module without the attribute
            embed = None
        if callable(embed):
            return embed  # type: ignore[no-any-return]
    return None


def check_head_settings(model: StatefulModel, settings: ModelSettings, name: str) -> None:
    """Refuse head settings that cannot work (heads are made per stream, at its start:
    mid-run, too late to say so)."""
    s = settings
    where = f"stage '{name}'"
    if s.head != "generate":
        if s.end_token is not None:
            raise InputError(f"{where}: [model] end_token is for head = 'generate', not '{s.head}'")
        options = dict(s.head_options)
        if s.thresholds:
            try:
                options["labeler"] = Labeler(s.labels, s.thresholds)
            except ValueError as exc:
                raise InputError(f"{where}: [model] thresholds: {exc}") from None
        make_head(s.head, stream="\0probe", labels=s.labels, **options)
        return
    unused = {k: v for k, v in s.head_options.items() if (k, v) != ("activation", "auto")}
    if s.thresholds:
        unused["thresholds"] = s.thresholds
    if s.smoothing:
        unused["smoothing"] = s.smoothing
    for key, value in unused.items():
        raise InputError(
            f"{where}: [model] {key} = {value!r} does not apply to head = 'generate'"
            " (its outputs are tokens, scored by the softmax of the model's logits)"
        )
    if s.end_token is not None and s.end_token not in s.labels:
        raise InputError(
            f"{where}: [model] end_token {s.end_token!r} is not in the vocabulary,"
            f" [model] labels = {list(s.labels)}"
        )
    shape = model.input_shape
    if find_embedder(model) is None and shape is not None and math.prod(shape) != len(s.labels):
        raise InputError(_token_input_problem(name, list(shape), len(s.labels)))


def check_input(
    model: StatefulModel,
    settings: ModelSettings,
    mode: Mode,
    name: str,
    x: Tensor | None,
    decode_step: DecodeStep,
) -> None:
    """A dry run on a chunk of two steps ``[1, 2, F...]`` (the first step of the source's
    features ``x [T, F...]``, twice), the model's way for ``mode``.

    Refused with the stage's name and the real problem: features of another shape than
    the model declares (both shapes named), a model that fails on them (a module that
    cannot start from ``state=None`` is told so), a broken ``(y, state)`` contract, ``y``
    that is not ``[B, T, K]`` (a model returning only its last step), ``K`` that does not
    fit ``[model] labels`` or ``activation``, a generate head that cannot decode.
    """
    if x is None or x.shape[0] == 0:
        return
    first = x[:1]
    sample = first.expand(2, *first.shape[1:]).unsqueeze(0)  # [1, 2, F...]: two steps
    where = f"stage '{name}'"
    features = list(sample.shape[2:])
    expected = model.input_shape
    if expected is not None and tuple(features) != tuple(expected):
        raise InputError(
            f"{where}: the source's '{settings.features}' features are {features} per step,"
            f" but the model takes {list(expected)} per step"
            f" (x [B, T, F...] = {list(sample.shape)})"
        )
    by_step = model.causal and (
        mode != "offline" or settings.head == "generate" or settings.offline_chunk > 0
    )
    try:
        initial = model.initial_state(1)
    except Exception as exc:
        raise InputError(f"{where}: the model's initial_state(1) failed: {_line(exc)}") from None
    state: State | None = None
    try:
        if by_step:
            y, state = model.step(sample.contiguous(), initial)
        else:
            y = model.forward(sample.contiguous())
    except ModelContractError as exc:
        raise InputError(f"{where}: {_line(exc)}") from None
    except Exception as exc:
        raise InputError(_failure(model, settings, name, sample, initial.is_fresh, exc)) from None
    _check_output(settings, name, y, sample)
    if state is not None and settings.head == "generate":
        _check_decoding(model, settings, name, state, features, decode_step)


def _failure(
    model: StatefulModel,
    settings: ModelSettings,
    name: str,
    sample: Tensor,
    fresh: bool,
    exc: BaseException,
) -> str:
    """What to say when the model raised on the dry run's chunk ``sample``."""
    shape, features = list(sample.shape), list(sample.shape[2:])
    if model.input_shape is None:
        what = (
            f"the model failed on the source's '{settings.features}' features,"
            f" {features} per step (x [B, T, F...] = {shape}; does it take them?)"
        )
    else:
        what = f"the model failed on a chunk x [B, T, F...] = {shape}"
    hint = ""
    if fresh:
        hint = (
            "; a stream starts from state=None: the module's forward must accept it,"
            " or the module needs initial_state(batch)"
        )
    return f"stage '{name}': {what}: {_line(exc)}{hint}"


def _check_output(settings: ModelSettings, name: str, y: Any, sample: Tensor) -> None:
    where = f"stage '{name}'"
    if not isinstance(y, Tensor) or y.ndim != 3 or tuple(y.shape[:2]) != (1, 2):
        got = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(
            f"{where}: the model must give y [B, T, K], one output per step: for x"
            f" {list(sample.shape)} (two steps) it gave {got}"
        )
    k, labels = int(y.shape[-1]), len(settings.labels)
    if settings.head == "generate":
        if k != labels:
            raise InputError(
                f"{where}: the generate head needs one logit per token: the model gives"
                f" {k} per step but the vocabulary ([model] labels) has {labels}"
            )
        return
    if k != labels and not (k == 1 and labels == 2):
        raise InputError(
            f"{where}: the model gives {k} scores per step but [model] labels "
            f"has {labels} ({list(settings.labels)})"
        )
    if k == 1 and settings.head_options.get("activation") == "softmax":
        raise InputError(
            f"{where}: [model] activation = 'softmax' over the model's one output per"
            " step (K = 1) always gives 1; use 'sigmoid' (a logit) or 'none' (a"
            " probability)"
        )


def _check_decoding(
    model: StatefulModel,
    settings: ModelSettings,
    name: str,
    state: State,
    features: list[int],
    decode_step: DecodeStep,
) -> None:
    """The generate head feeds each chosen token back in: try token 0 after a step."""
    n = len(settings.labels)
    if find_embedder(model) is None and math.prod(features) != n:
        raise InputError(_token_input_problem(name, features, n))
    try:
        logits, _ = decode_step(0, state)
    except Exception as exc:
        raise InputError(
            f"stage '{name}': the generate head feeds each token back into the model, and"
            f" token 0 ({settings.labels[0]!r}) failed: {_line(exc)}; the model needs"
            f" embed_token(id) giving one step's features, or an input size equal to the"
            f" vocabulary ({n})"
        ) from None
    if logits.numel() != n:
        raise InputError(
            f"stage '{name}': the generate head needs one logit per token: after token 0"
            f" the model gave {list(logits.shape)} for a vocabulary of {n}"
        )


def _token_input_problem(name: str, features: list[int], vocabulary: int) -> str:
    return (
        f"stage '{name}': the generate head feeds each token back into the model as a"
        f" one-hot vector of the vocabulary's size ({vocabulary}, [model] labels), but the"
        f" model takes {features} per step; the model needs an embed_token(id) method"
        " returning one step's features for a token, or an input size equal to the"
        " vocabulary"
    )


def _line(exc: BaseException) -> str:
    """The exception's text on one line (at most 300 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _first_invalid(frames: list[Frame], start: int) -> int:
    """The index of the first frame from ``start`` whose data holds NaN or Inf
    (``len(frames)`` when none does). Float arrays are checked in one pass when they can
    be joined; otherwise, or when that pass finds something, frame by frame."""
    datas = [f.data for f in frames[start:]]
    if datas and all(isinstance(d, np.ndarray) and d.dtype.kind == "f" for d in datas):
        try:
            if bool(np.isfinite(np.concatenate([d.reshape(-1) for d in datas])).all()):
                return len(frames)
        except ValueError:
            pass
    for offset, data in enumerate(datas):
        if not _finite(data):
            return start + offset
    return len(frames)


def _finite(data: Any) -> bool:
    if isinstance(data, Tensor):
        return bool(torch.isfinite(data).all())
    try:
        array = np.asarray(data)
        if array.dtype.kind != "f":
            return True
        return bool(np.isfinite(array).all())
    except (TypeError, ValueError):
        return True
