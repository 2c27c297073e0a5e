"""Which input of an ONNX model is the data, which are states (and their outputs), which
are constants: named in ``[model] options`` or inferred only where that is unambiguous.

See :mod:`streamer.models.onnx` for the rules; every refusal names the ``[model] options``
key that settles it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from streamer.errors import InputError

DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

#: Names that mark an input as the data (compared in lower case, whole names only).
DATA_INPUTS = frozenset(
    {
        "x",
        "input",
        "inputs",
        "data",
        "audio",
        "waveform",
        "signal",
        "speech",
        "samples",
        "features",
        "feats",
        "frames",
        "image",
        "images",
        "pixel_values",
        "input_values",
        "input_features",
    }
)
#: Names that mark an output as the data.
DATA_OUTPUTS = frozenset(
    {"y", "output", "outputs", "out", "logits", "scores", "probs", "prob", "probabilities"}
)
OPTION = "[model] options"


@dataclass(frozen=True)
class Layout:
    """The resolved names: data input and output, state input -> output, constants."""

    input_name: str
    output_name: str
    state_map: dict[str, str]
    constants: dict[str, np.ndarray[Any, Any]]


def resolve_layout(
    name: str,
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    state_map: Mapping[str, str] | None = None,
    constants: Mapping[str, ArrayLike] | None = None,
) -> Layout:
    """The layout of a model named ``name`` with onnxruntime's ``inputs`` and ``outputs``
    (``NodeArg``: name, shape, type), from what is given and what is unambiguous."""
    return _Resolver(name, inputs, outputs).resolve(input_name, output_name, state_map, constants)


class _Resolver:
    def __init__(self, name: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        self.name = name
        self._inputs: dict[str, Any] = {i.name: i for i in inputs}
        self._outputs: dict[str, Any] = {o.name: o for o in outputs}

    def resolve(
        self,
        input_name: str | None,
        output_name: str | None,
        state_map: Mapping[str, str] | None,
        constants: Mapping[str, ArrayLike] | None,
    ) -> Layout:
        inputs, outputs = self._inputs, list(self._outputs)
        values: dict[str, np.ndarray[Any, Any]] = {}
        for key, value in (constants or {}).items():
            self._need(key, inputs, "constants", "input")
            try:
                values[key] = np.asarray(value, dtype=dtype_of(inputs[key].type, key))
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"model '{self.name}': {OPTION}.constants.{key}: {value!r} is not a"
                    f" {inputs[key].type} ({exc})"
                ) from None

        free = [n for n in inputs if n not in values]
        if state_map is not None:
            for key, value in state_map.items():
                self._need(key, inputs, "state_map", "input")
                self._need(value, outputs, "state_map", "output")
            free = [n for n in free if n not in state_map]
        if input_name is None:
            input_name = self._data_input(free, state_map)
        else:
            self._need(input_name, inputs, "input_name", "input")
        if output_name is not None:
            self._need(output_name, outputs, "output_name", "output")
        if state_map is None:
            state_ins = [n for n in free if n != input_name]
            if output_name is None:
                output_name = self._data_output(outputs, state_ins)
            state_map = self._pair_states(state_ins, [o for o in outputs if o != output_name])
        else:
            missing = [n for n in free if n != input_name]
            if missing:
                raise InputError(
                    f"model '{self.name}': input '{missing[0]}' has no value; give it in"
                    f" {OPTION}.constants = {{{missing[0]} = VALUE}} (a constant input) or"
                    f" {OPTION}.state_map (a state input)"
                )
            if output_name is None:
                taken = set(state_map.values())
                output_name = self._data_output([o for o in outputs if o not in taken], [])
        return Layout(input_name, output_name, dict(state_map), values)

    def _need(
        self, name: str, names: Sequence[str] | Mapping[str, Any], key: str, kind: str
    ) -> None:
        if name not in names:
            raise InputError(
                f"model '{self.name}': {OPTION}.{key} names {kind} '{name}', which the model"
                f" does not have ({kind}s: {', '.join(names)})"
            )

    def _data_input(self, free: list[str], state_map: Mapping[str, str] | None) -> str:
        """The data input among ``free`` (inputs that are not constants or named states),
        only when that is unambiguous."""
        if not free:
            raise InputError(
                f"model '{self.name}': no input is left for the data: {OPTION}.constants and"
                " options.state_map name every input"
            )
        if len(free) == 1:
            return free[0]
        named = [n for n in free if n.lower() in DATA_INPUTS]
        if len(named) == 1:
            return named[0]
        taken = set(state_map.values()) if state_map is not None else set()
        outputs = [meta for name, meta in self._outputs.items() if name not in taken]
        lonely = [n for n in free if not any(_mirrors(self._inputs[n], o) for o in outputs)]
        if len(lonely) == 1:
            return lonely[0]
        timed = [n for n in free if _dynamic_axes(self._inputs[n]) >= 2]
        if len(timed) == 1:
            return timed[0]
        raise InputError(
            f"model '{self.name}': cannot tell which of the inputs {free} is the data; give"
            f' {OPTION}.input_name = "NAME" (and options.state_map = {{INPUT = "OUTPUT"}}'
            " for the state inputs, options.constants for constant ones)"
        )

    def _data_output(self, outputs: list[str], state_ins: list[str]) -> str:
        """The data output among ``outputs``: the one no state input mirrors, only when
        that is unambiguous."""
        if len(outputs) == 1:
            return outputs[0]
        if outputs:
            alone = [
                o
                for o in outputs
                if not any(_mirrors(self._inputs[s], self._outputs[o]) for s in state_ins)
            ]
            if len(alone) == 1:
                return alone[0]
            named = [o for o in outputs if o.lower() in DATA_OUTPUTS]
            if len(named) == 1:
                return named[0]
        raise InputError(
            f"model '{self.name}': cannot tell which of the outputs {outputs} is the data;"
            f' give {OPTION}.output_name = "NAME" (and options.state_map = {{INPUT ='
            ' "OUTPUT"}} for the states)'
        )

    def _pair_states(self, state_ins: list[str], outputs: list[str]) -> dict[str, str]:
        """Each state input with an output of its shape: the one its name begins first,
        else the next in order."""
        left = list(outputs)
        pairs: dict[str, str] = {}
        for by_name in (True, False):
            for key in state_ins:
                if key in pairs:
                    continue
                fits = [
                    o
                    for o in left
                    if _mirrors(self._inputs[key], self._outputs[o])
                    and (not by_name or _related(key, o))
                ]
                if fits:
                    pairs[key] = fits[0]
                    left.remove(fits[0])
        unpaired = [key for key in state_ins if key not in pairs]
        if unpaired:
            key = unpaired[0]
            raise InputError(
                f"model '{self.name}': input '{key}' ({self._inputs[key].shape}) has no output"
                f" of its shape to be its next state (outputs left: {left}); give"
                f" {OPTION}.constants = {{{key} = VALUE}} if it is a constant input, or"
                f' options.state_map = {{{key} = "OUTPUT"}}'
            )
        if left:
            raise InputError(
                f"model '{self.name}': cannot pair state inputs {state_ins} with outputs"
                f' {outputs}; give {OPTION}.state_map = {{INPUT = "OUTPUT"}}'
                f" and options.output_name"
            )
        return {key: pairs[key] for key in state_ins}


def _mirrors(a: Any, b: Any) -> bool:
    """Whether ONNX values ``a`` and ``b`` may have one shape (same type and rank, equal
    fixed sizes): how a state input and the output of its next value look."""
    if a.type != b.type or len(a.shape) != len(b.shape):
        return False
    return all(
        not (isinstance(p, int) and isinstance(q, int)) or p == q
        for p, q in zip(a.shape, b.shape, strict=True)
    )


def _dynamic_axes(value: Any) -> int:
    return sum(not isinstance(d, int) for d in value.shape)


def _stem(name: str) -> str:
    """``h0`` -> ``h``, ``h_in`` -> ``h``, ``State`` -> ``state``: for pairing names."""
    stem = re.sub(r"[^a-z0-9]", "", name.lower())
    stem = re.sub(r"(in|0)$", "", stem) or stem
    return stem


def _related(state_in: str, output: str) -> bool:
    """Whether ``output``'s name continues ``state_in``'s (``h`` -> ``h_out``, ``hn``)."""
    return re.sub(r"[^a-z0-9]", "", output.lower()).startswith(_stem(state_in))


def dtype_of(onnx_type: str, name: str) -> Any:
    try:
        return DTYPES[onnx_type]
    except KeyError:
        raise InputError(f"ONNX input '{name}' has an unsupported type {onnx_type}") from None
