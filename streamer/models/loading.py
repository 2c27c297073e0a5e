"""``load_model``: a model from a ``module:function`` factory, a model file, or both.

``options`` is the pipeline file's ``[model] options`` table: the factory's keyword
arguments when there is a factory, else the file adapter's options (checked by
:mod:`streamer.models.options`; unknown keys are refused).

- ``factory="pkg.mod:build"`` imports ``pkg.mod`` and calls ``build(**options)``. It
  may return a :class:`StatefulModel`, an ``nn.GRU``/``LSTM``/``RNN``, an ``(rnn, head)``
  pair or ``nn.Sequential(rnn, head, ...)``, or an ``nn.Module`` with
  ``forward(x, state) -> (y, state)``; see :func:`~streamer.models.adapters.as_model`.
- ``path="model.pt"`` / ``.pth``: a TorchScript archive is loaded with ``torch.jit.load``
  (no factory; ``options``: ``state_batch_axes``, ``input_shape``, ``causal``,
  ``context``); anything else must be a state dict, read with
  ``torch.load(weights_only=True)`` (never arbitrary pickles) into the module the factory
  builds: the returned ``nn.Module``, the pair keyed like ``nn.Sequential(rnn, head)``,
  or the model's ``module`` attribute. ``{"state_dict": {...}}`` checkpoints work too.
- ``path="model.onnx"``: :class:`~streamer.models.onnx.OnnxModel` (``options``:
  ``input_name``, ``output_name``, ``state_map``, ``constants``, ``state_batch_axes``,
  ``per_step``, ``causal``, ``context``; ``threads`` is onnxruntime's thread count).

Every failure is an :class:`~streamer.errors.InputError` whose one-line message names the
factory or the file.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from streamer.errors import InputError
from streamer.models.adapters import ContextModel, as_model, describe, module_of
from streamer.models.module import TorchScriptModel
from streamer.models.onnx import OnnxModel
from streamer.models.options import FileOptions, onnx_options, torchscript_options
from streamer.models.protocol import StatefulModel

TORCH_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    """How to build the run's model (``[model]``'s loading keys): what the run loads in
    its own process, and what each Ray model actor loads again on its node."""

    factory: str | None
    path: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"
    #: the folder a factory's module is imported from (the run's working folder), when
    #: it exists here
    cwd: str | None = None

    def load(self) -> StatefulModel:
        """The model: torch's threads set, loaded (:func:`load_model`), on the device."""
        if self.cwd and os.path.isdir(self.cwd) and self.cwd not in sys.path:
            sys.path.insert(0, self.cwd)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        model = load_model(self.factory, self.path, options=self.options, threads=self.threads)
        if self.device == "cuda":
            module = getattr(model, "module", None)
            if not isinstance(module, nn.Module):
                raise InputError("[model] device: 'cuda' works for torch models, not this one")
            module.to("cuda")  # inputs follow the parameters' device; outputs come back to CPU
        return model


def load_model(
    factory: str | None = None,
    path: str | PathLike[str] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
) -> StatefulModel:
    """Build the model named by ``factory`` and/or ``path`` (see the module doc).

    ``options``: ``[model] options``; ``factory_kwargs`` is its older name (give one).
    ``threads``: onnxruntime's intra-op threads for an ONNX file (``[model] threads``).
    """
    if options is not None and factory_kwargs is not None:
        raise ValueError("load_model: give options or factory_kwargs, not both")
    if options is None:
        options = factory_kwargs
    if factory is None and path is None:
        raise InputError(
            "[model]: give factory = 'module:function' or path = 'MODEL' (.pt, .pth, .onnx)"
        )
    if path is None:
        assert factory is not None
        return _wrap(call_factory(factory, options), factory)

    file = Path(path)
    if not file.exists():
        raise InputError(f"model file '{path}' does not exist")
    if not file.is_file():
        raise InputError(f"model file '{path}' is not a file")
    suffix = file.suffix.lower()
    if suffix == ".onnx":
        if factory is not None:
            raise InputError(
                f"model: factory '{factory}' cannot be combined with ONNX file '{path}'"
            )
        checked = onnx_options(options, path)
        try:
            model: StatefulModel = OnnxModel(
                file, name=str(path), threads=threads, **checked.adapter
            )
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"model file '{path}': not a usable ONNX model: {_line(exc)}") from exc
        return _with_context(model, checked)
    if suffix not in TORCH_SUFFIXES:
        raise InputError(
            f"model file '{path}': unknown type '{suffix}'; expected .pt or .pth (TorchScript"
            " or state dict) or .onnx"
        )
    if _is_torchscript(file):
        if factory is not None:
            raise InputError(
                f"model: factory '{factory}' cannot be combined with TorchScript file '{path}'"
            )
        checked = torchscript_options(options, path)
        try:
            model = TorchScriptModel(file, name=str(path), **checked.adapter)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"model file '{path}': TorchScript load failed: {_line(exc)}") from exc
        return _with_context(model, checked)

    weights = _load_state_dict(file, path)
    if factory is None:
        raise InputError(
            f"model file '{path}' is a state dict: give [model] factory = 'module:function'"
            " that builds the module for it"
        )
    built = call_factory(factory, options)
    module = module_of(built)
    if module is None:
        raise InputError(
            f"factory '{factory}' returned a {describe(built)}, which has no nn.Module to load"
            f" state dict '{path}' into"
        )
    _fit(module, weights, f"state dict '{path}' does not fit factory '{factory}'")
    return _wrap(built, factory)


def load_weights(
    module: nn.Module, path: str | PathLike[str], *, what: str, make: str | None = None
) -> None:
    """Load the state dict file ``path`` into ``module`` (every key, nothing unpickled).

    Any failure is one :class:`InputError` line naming ``what`` (e.g. "motion weights")
    and the file; a missing file's also names ``make``, the command that makes it.
    """
    file = Path(path)
    if not file.is_file():
        hint = f"; make them with: {make}" if make else ""
        raise InputError(f"{what} '{path}' do not exist{hint}")
    _fit(module, _load_state_dict(file, path), f"{what} '{path}' do not fit the model")


def _fit(module: nn.Module, weights: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(weights)``, every key matched, or one line: ``what: why``."""
    try:
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise InputError(f"{what}: {_line(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"{what}: missing keys {_keys(result.missing_keys)},"
            f" unexpected keys {_keys(result.unexpected_keys)}"
        )


def call_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> object:
    """Import ``module:function`` (the function may be dotted: ``Class.build``) and call it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"factory '{spec}': expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise InputError(f"factory '{spec}': module '{module_name}' not found") from exc
        raise InputError(
            f"factory '{spec}': importing '{module_name}' failed: {_line(exc)}"
        ) from exc
    except Exception as exc:
        raise InputError(
            f"factory '{spec}': importing '{module_name}' failed:"
            f" {type(exc).__name__}: {_line(exc)}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InputError(
                f"factory '{spec}': module '{module_name}' has no attribute '{attr}'"
            ) from None
    if not callable(target):
        raise InputError(f"factory '{spec}' is a {type(target).__name__}, not callable")
    try:
        return target(**dict(kwargs or {}))
    except InputError:  # the factory's own one-line refusal (a missing weights file, say)
        raise
    except Exception as exc:
        raise InputError(f"factory '{spec}' raised {type(exc).__name__}: {_line(exc)}") from exc


def _with_context(model: StatefulModel, options: FileOptions) -> StatefulModel:
    return ContextModel(model, options.context) if options.context else model


def _wrap(obj: object, factory: str) -> StatefulModel:
    try:
        return as_model(obj, name=factory)
    except TypeError as exc:
        raise InputError(f"factory '{factory}': {exc}") from exc


def _is_torchscript(file: Path) -> bool:
    """TorchScript archives are zips with ``constants.pkl``; ``torch.save`` zips are not."""
    if not zipfile.is_zipfile(file):
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_state_dict(file: Path, path: str | PathLike[str]) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():
            # A plain pickle makes torch warn about its protocol before refusing it; our
            # refusal below is the one line the user needs.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" such as {found.group(1)}" if found else ""
        raise InputError(
            f"model file '{path}': not a TorchScript or state-dict file: it holds Python"
            f" objects{what}, which are never unpickled"
        ) from exc
    except Exception as exc:
        raise InputError(
            f"model file '{path}': not a TorchScript or state-dict file"
            f" ({type(exc).__name__}: {_line(exc)})"
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())
    ):
        raise InputError(
            f"model file '{path}': holds a {describe(loaded)}, not a state dict of tensors"
        )
    return dict(loaded)


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
    return f"[{shown}]"


def _line(exc: BaseException) -> str:
    """The exception's text on one line (at most 300 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
