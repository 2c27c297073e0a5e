"""Adapter for ONNX models run by onnxruntime, with state as named inputs and outputs.

Naming: the model has one data input (``input_name``), one data output
(``output_name``), state inputs each paired with the output that returns its next value
(``state_map``, e.g. Silero VAD's ``{"state": "stateN"}``), and constant inputs given once
(``constants``, e.g. ``{"sr": 16000}``). In a pipeline file these are the keys of
``[model] options`` (see :mod:`streamer.models.options`).

Left out, names are inferred, and only where that is unambiguous (never "the first
input"): the data input is the only input left, else the only one with a data-like name
(``x``, ``input``, ``audio``, ...), else the only one that no output mirrors (a state
input comes back as an output of its shape), else the only one with two dynamic axes
(batch and time). The data output is the only output left, else the only one that mirrors
no state input, else the only one with a data-like name (``y``, ``output``, ``logits``,
...). Each state input pairs with an output of its shape, one whose name it begins
(``h`` -> ``h_out``, ``state`` -> ``stateN``) first, else the next in order. Anything
else is an :class:`~streamer.errors.InputError` that names the ``[model] options`` key
to give.

Two input layouts:

- *sequence* models take ``[B, T, F...]`` and return ``[B, T, K...]``: one run per chunk;
- *per-step* models take ``[B, F...]`` and return ``[B, K...]`` (Silero VAD): one run per
  time step. ``per_step=None`` infers it: a rank-2 data input is per-step, otherwise the
  model takes sequences.

State shapes come from the inputs' metadata. The batch axis of a state is, first that
applies: ``state_batch_axes[name]``, the axis whose symbolic name is the data input's batch
dimension name, or the one dynamic axis. Zeros are the initial state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from streamer.errors import InputError
from streamer.models.onnx_layout import OPTION, dtype_of, resolve_layout
from streamer.models.protocol import (
    ModelContractError,
    State,
    StreamingRefused,
    check_chunk,
    check_features,
)


class OnnxModel:
    """An ONNX model through onnxruntime (CPU provider by default); see the module doc."""

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        state_map: Mapping[str, str] | None = None,
        constants: Mapping[str, ArrayLike] | None = None,
        state_batch_axes: Mapping[str, int] | None = None,
        per_step: bool | None = None,
        causal: bool = True,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        name: str | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InputError(
                f"model '{path}': onnxruntime is not installed (pip install 'streamer[onnx]')"
            ) from exc
        self.name = name or str(path)
        self._causal = causal
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers)
        )
        layout = resolve_layout(
            self.name,
            self.session.get_inputs(),
            self.session.get_outputs(),
            input_name=input_name,
            output_name=output_name,
            state_map=state_map,
            constants=constants,
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._constants = layout.constants
        self.input_name = input_name = layout.input_name
        self.output_name = layout.output_name
        self.state_map = layout.state_map
        self._run_outputs = [layout.output_name, *self.state_map.values()]

        data = inputs[input_name]
        self._x_dtype = dtype_of(data.type, input_name)
        rank = len(data.shape)
        self.per_step = per_step if per_step is not None else rank == 2
        feature_dims = data.shape[1:] if self.per_step else data.shape[2:]
        self._input_shape = (
            tuple(int(d) for d in feature_dims)
            if all(isinstance(d, int) for d in feature_dims)
            else None
        )
        batch_symbol = data.shape[0] if data.shape and isinstance(data.shape[0], str) else None
        self._states: list[tuple[str, tuple[int | None, ...], int, Any]] = []
        for key in self.state_map:
            meta = inputs[key]
            axis = self._batch_axis(key, list(meta.shape), batch_symbol, state_batch_axes)
            dims: list[int | None] = []
            for i, d in enumerate(meta.shape):
                if i == axis:
                    dims.append(None)
                elif isinstance(d, int):
                    dims.append(d)
                else:
                    raise InputError(
                        f"model '{self.name}': state '{key}' has shape {meta.shape} with a"
                        f" dynamic axis {i} besides the batch axis {axis}; zeros cannot be"
                        " made for it"
                    )
            self._states.append((key, tuple(dims), axis, dtype_of(meta.type, key)))

    def _batch_axis(
        self,
        key: str,
        shape: list[Any],
        batch_symbol: str | None,
        declared: Mapping[str, int] | None,
    ) -> int:
        if declared is not None and key in declared:
            return declared[key] % max(len(shape), 1)
        if batch_symbol is not None and batch_symbol in shape:
            return shape.index(batch_symbol)
        dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(dynamic) == 1:
            return dynamic[0]
        raise InputError(
            f"model '{self.name}': cannot tell the batch axis of state '{key}' (shape"
            f" {shape}); give {OPTION}.state_batch_axes = {{{key} = AXIS}}"
        )

    @property
    def causal(self) -> bool:
        return self._causal

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    def initial_state(self, batch: int) -> State:
        """Zeros of each state input's shape, ``batch`` rows on its batch axis."""
        tensors = []
        axes = []
        for _key, dims, axis, dtype in self._states:
            shape = tuple(batch if d is None else d for d in dims)
            tensors.append(torch.from_numpy(np.zeros(shape, dtype=dtype)))
            axes.append(axis)
        return State(tuple(tensors), tuple(axes), batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``x [B, T, F...]`` -> ``y [B, T, K]`` and the new state."""
        if not self.causal:
            raise StreamingRefused(
                f"model '{self.name}' is not causal (causal = False): it cannot be streamed"
                " chunk by chunk; run it offline"
            )
        check_chunk(x, state, self.input_shape, self.name)
        if state.is_fresh:
            state = self.initial_state(state.batch)
        return self._run(x, state)

    def forward(self, x: Tensor) -> Tensor:
        """The whole sequence ``x [B, T, F...]`` from zero state -> ``y [B, T, K]``."""
        if not isinstance(x, Tensor) or x.ndim < 3:
            raise ValueError(f"model '{self.name}': x must be a [B, T, F...] tensor")
        check_features(x, self.input_shape, self.name)
        return self._run(x, self.initial_state(x.shape[0]))[0]

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        batch, steps = x.shape[0], x.shape[1]
        data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self._x_dtype)
        feeds: dict[str, np.ndarray[Any, Any]] = dict(self._constants)
        values = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in state.tensors]
        names = list(self.state_map)
        if self.per_step:
            ys = []
            for t in range(steps):
                feeds[self.input_name] = data[:, t]
                feeds.update(zip(names, values, strict=True))
                y_t, *values = self.session.run(self._run_outputs, feeds)
                ys.append(np.asarray(y_t).reshape(batch, -1))
            y = np.stack(ys, axis=1)
        else:
            feeds[self.input_name] = data
            feeds.update(zip(names, values, strict=True))
            y, *values = self.session.run(self._run_outputs, feeds)
            y = np.asarray(y)
            if y.ndim == 2:
                y = y[:, :, None]
        if y.shape[:2] != (batch, steps):
            raise ModelContractError(
                f"model '{self.name}': output '{self.output_name}' has shape {list(y.shape)},"
                f" expected [{batch}, {steps}, K]"
            )
        tensors = tuple(torch.from_numpy(np.asarray(v)) for v in values)
        return torch.from_numpy(y), State(tensors, state.batch_axes, batch)
