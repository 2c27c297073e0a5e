"""The ``[model] options`` table for a model file: checked, typed adapter arguments.

For a factory, ``[model] options`` are the factory's keyword arguments. For an ONNX or a
TorchScript file (no factory), they configure the adapter, and only these keys exist:

- ONNX (:class:`~streamer.models.onnx.OnnxModel`): ``input_name``, ``output_name``
  (strings), ``state_map`` (table input -> output), ``constants`` (table input -> number,
  boolean or array), ``state_batch_axes`` (table input -> axis), ``per_step``, ``causal``
  (booleans), ``context`` (samples of the previous step prepended to each step, as
  :class:`~streamer.models.ContextModel`: Silero VAD takes 64 at 16 kHz);
- TorchScript (:class:`~streamer.models.module.TorchScriptModel`): ``state_batch_axes``
  (one axis per state tensor), ``input_shape`` (features per step), ``causal``,
  ``context``.

Any other key, or a value of the wrong type, is an :class:`~streamer.errors.InputError`
whose one line names the file and the key (``[model] options.KEY``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamer.errors import InputError

KEY = "[model] options"


@dataclass(frozen=True)
class FileOptions:
    """The adapter's keyword arguments, and the context to wrap it in (0: none)."""

    adapter: dict[str, Any] = field(default_factory=dict)
    context: int = 0


def onnx_options(options: Mapping[str, Any] | None, path: object) -> FileOptions:
    """``[model] options`` for the ONNX file ``path``, checked."""
    return _parse(options, path, "an ONNX file", ONNX)


def torchscript_options(options: Mapping[str, Any] | None, path: object) -> FileOptions:
    """``[model] options`` for the TorchScript file ``path``, checked."""
    return _parse(options, path, "a TorchScript file", TORCHSCRIPT)


Check = Callable[[Any, str], Any]


def _parse(
    options: Mapping[str, Any] | None, path: object, what: str, checks: Mapping[str, Check]
) -> FileOptions:
    adapter: dict[str, Any] = {}
    context = 0
    for key, value in (options or {}).items():
        check = checks.get(key)
        where = f"model file '{path}': {KEY}.{key}"
        if check is None:
            raise InputError(
                f"model file '{path}': unknown key {KEY}.{key} for {what};"
                f" accepted: {', '.join(sorted(checks))}"
            )
        checked = check(value, where)
        if key == "context":
            context = checked
        else:
            adapter[key] = checked
    return FileOptions(adapter, context)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where} must be a name (a string), not {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, not {value!r}")
    return value


def _integer(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{where} must be an integer >= {low}, not {value!r}")
    return value


def _context(value: Any, where: str) -> int:
    return _integer(value, where, 1)


def _table(value: Any, where: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise InputError(f"{where} must be a table such as {example}, not {value!r}")
    return value


def _names(value: Any, where: str) -> dict[str, str]:
    table = _table(value, where, '{state = "stateN"}')
    return {str(k): _text(v, f"{where}.{k}") for k, v in table.items()}


def _axes_by_name(value: Any, where: str) -> dict[str, int]:
    table = _table(value, where, "{state = 1}")
    return {str(k): _axis(v, f"{where}.{k}") for k, v in table.items()}


def _axis(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where} must be an axis (an integer), not {value!r}")
    return value


def _constants(value: Any, where: str) -> dict[str, Any]:
    table = _table(value, where, "{sr = 16000}")
    for key, item in table.items():
        if not _numeric(item):
            raise InputError(
                f"{where}.{key} must be a number, a boolean or an array of them, not {item!r}"
            )
    return dict(table)


def _numeric(value: Any) -> bool:
    if isinstance(value, list):
        return all(_numeric(v) for v in value)
    return isinstance(value, bool | int | float)


def _axis_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where} must be a list of axes such as [1, 1], not {value!r}")
    return [_axis(v, where) for v in value]


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where} must be a list of sizes such as [40], not {value!r}")
    return [_integer(v, where, 1) for v in value]


ONNX: dict[str, Check] = {
    "input_name": _text,
    "output_name": _text,
    "state_map": _names,
    "constants": _constants,
    "state_batch_axes": _axes_by_name,
    "per_step": _flag,
    "causal": _flag,
    "context": _context,
}
TORCHSCRIPT: dict[str, Check] = {
    "state_batch_axes": _axis_list,
    "input_shape": _shape,
    "causal": _flag,
    "context": _context,
}
