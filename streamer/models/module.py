"""Adapters for ``nn.Module``s with ``forward(x, state) -> (y, state)`` and TorchScript files.

The convention (like torch's own RNNs): ``x [B, T, F...]``, ``y [B, T, K]``, and
``state=None`` means a fresh start. The state the module returns may be a Tensor or any
nesting of tuples, lists and dicts of tensors (e.g. ``(h, c)``); it must keep the same
structure from call to call.

Batch axis of each state tensor, first that applies:

1. the ``state_batch_axes`` argument (one axis per tensor, in flattening order),
2. the module attribute ``state_batch_axes``,
3. the default: axis 1 for 3-d tensors (torch-RNN-shaped ``[L, B, H]``), axis 0 otherwise.

Each returned state tensor is checked to have ``B`` rows on its batch axis, so a wrong
axis fails loudly as soon as more than one stream is batched.

``causal``, ``input_shape`` and ``state_batch_axes`` may be module attributes; in a module
to be scripted, set them in ``__init__`` (``self.state_batch_axes = (1, 0)``) so that
TorchScript keeps them.

Fresh state: if the module has a method ``initial_state(batch)`` it is used (a scripted
module must ``@torch.jit.export`` it), by ``step`` and ``forward`` alike, so the offline
path starts where a stream does. Otherwise ``initial_state`` returns a *fresh*
:class:`State` (no tensors) and the module is called with ``state=None``; fresh and
continuing streams are then stepped in separate calls (``step_batch`` groups them),
so nothing assumes that zeros mean "fresh". A TorchScript module whose ``forward`` types
its state as anything but ``Optional`` (every traced module does) cannot take ``None``:
without ``initial_state`` it is refused when wrapped.

Broken contracts (what ``forward`` returns, the state's batch axes) raise
:class:`~streamer.models.protocol.ModelContractError`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from streamer.models.protocol import (
    ModelContractError,
    State,
    StreamingRefused,
    check_chunk,
    check_features,
)


class ModuleModel:
    """Any ``nn.Module`` whose forward is ``(x, state) -> (y, state)``; see the module doc.

    ``causal`` and ``input_shape`` default to the module's attributes of those names
    (``causal`` to True when absent). The module is put in eval mode.
    """

    def __init__(
        self,
        module: nn.Module,
        state_batch_axes: Sequence[int] | None = None,
        *,
        causal: bool | None = None,
        input_shape: Sequence[int] | None = None,
        name: str = "module",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"ModuleModel needs an nn.Module, not {type(module).__name__}")
        self.name = name
        self.module = module.eval()
        axes = state_batch_axes
        if axes is None:
            axes = _attribute(module, "state_batch_axes")
        self._axes: tuple[int, ...] | None = None if axes is None else tuple(int(a) for a in axes)
        declared_causal = _attribute(module, "causal")
        self._causal = bool(causal if causal is not None else (declared_causal is not False))
        shape = input_shape if input_shape is not None else _attribute(module, "input_shape")
        self._input_shape = None if shape is None else tuple(int(d) for d in shape)
        rate = _attribute(module, "input_rate")
        #: Hz of the audio the model was trained on (module attribute), when it says.
        self.input_rate: float | None = None if rate is None else float(rate)
        self._spec: pytree.TreeSpec | None = None
        hook = _attribute(module, "initial_state")
        self._initial = hook if callable(hook) else None
        if self._initial is None:
            _check_takes_none(module, name)

    @property
    def causal(self) -> bool:
        return self._causal

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    def initial_state(self, batch: int) -> State:
        """The module's ``initial_state(batch)`` if it has one, else a fresh state."""
        if self._initial is None:
            return State.fresh(batch)
        with torch.inference_mode():
            raw = self._initial(batch)
        return self._to_state(raw, batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``x [B, T, F...]`` -> ``y [B, T, K]`` and the new state."""
        if not self.causal:
            raise StreamingRefused(
                f"model '{self.name}' is not causal (causal = False): it cannot be streamed"
                " chunk by chunk; run it offline"
            )
        check_chunk(x, state, self.input_shape, self.name)
        raw = self._raw(state)
        with torch.inference_mode():
            y, new = self._call(x, raw)
        return y, self._to_state(new, state.batch)

    def forward(self, x: Tensor) -> Tensor:
        """The whole sequence ``x [B, T, F...]`` from the initial state (the module's
        ``initial_state(B)``, else ``state=None``) -> ``y [B, T, K]``."""
        if not isinstance(x, Tensor) or x.ndim < 3:
            raise ValueError(f"model '{self.name}': x must be a [B, T, F...] tensor")
        check_features(x, self.input_shape, self.name)
        raw = self._raw(self.initial_state(x.shape[0]))
        with torch.inference_mode():
            return self._call(x, raw)[0]

    def _raw(self, state: State) -> Any:
        """``state`` in the module's own structure (``None`` for a fresh one)."""
        if state.is_fresh:
            return None
        if self._spec is None:
            raise ValueError(f"model '{self.name}': this state was not made by this model")
        return pytree.tree_unflatten(list(state.tensors), self._spec)

    def _call(self, x: Tensor, raw: Any) -> tuple[Tensor, Any]:
        param = next(self.module.parameters(), None)
        if param is not None:
            x = x.to(param.device)
        out = self.module(x, raw)
        if not isinstance(out, tuple | list) or len(out) != 2:
            what = f"a {type(out).__name__}"
            if isinstance(out, Tensor):
                what += f" of shape {list(out.shape)}"
            elif isinstance(out, tuple | list):
                what += f" of {len(out)}"
            raise ModelContractError(
                f"model '{self.name}': forward(x, state) must return (y, state), got {what}"
            )
        y, new = out
        if not isinstance(y, Tensor) or y.ndim < 2 or tuple(y.shape[:2]) != tuple(x.shape[:2]):
            got = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ModelContractError(
                f"model '{self.name}': y must be [B, T, K] = [{x.shape[0]}, {x.shape[1]}, K],"
                f" one output per step, got {got} for x {list(x.shape)}"
            )
        return y, new

    def _to_state(self, raw: Any, batch: int) -> State:
        """Flatten what the module returned into a :class:`State`, checking batch axes."""
        if raw is None:
            return State.fresh(batch)
        leaves, spec = pytree.tree_flatten(raw)
        for leaf in leaves:
            if not isinstance(leaf, Tensor):
                raise ModelContractError(
                    f"model '{self.name}': the state must be a Tensor or tuples/lists/dicts of"
                    f" tensors, found a {type(leaf).__name__} in it"
                )
        if self._spec is None:
            self._spec = spec
        elif spec != self._spec:
            raise ModelContractError(
                f"model '{self.name}': the module returned a state of another structure"
                f" than before ({spec} vs {self._spec})"
            )
        tensors: list[Tensor] = leaves
        if self._axes is not None:
            if len(self._axes) != len(tensors):
                raise ModelContractError(
                    f"model '{self.name}': state_batch_axes {list(self._axes)} names"
                    f" {len(self._axes)} axes but the state has {len(tensors)} tensors"
                )
            axes = self._axes
        else:
            axes = tuple(1 if t.ndim == 3 else 0 for t in tensors)
        for i, (t, a) in enumerate(zip(tensors, axes, strict=True)):
            if not -t.ndim <= a < t.ndim or t.shape[a] != batch:
                raise ModelContractError(
                    f"model '{self.name}': state tensor {i} of shape {list(t.shape)} does not"
                    f" have the batch ({batch}) on axis {a}; declare the axes in the module"
                    " attribute state_batch_axes (for a TorchScript file: [model]"
                    " options.state_batch_axes = [AXIS, ...], one per state tensor)"
                )
        return State(tuple(tensors), axes, batch)


class TorchScriptModel(ModuleModel):
    """A TorchScript file whose module follows ``forward(x, state) -> (y, state)``.

    Script (not trace) the module so that ``state=None`` is accepted, e.g.
    ``def forward(self, x: Tensor, state: Optional[Tensor]) -> Tuple[Tensor, Tensor]``;
    export ``initial_state`` with ``@torch.jit.export`` to give an explicit fresh state.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        state_batch_axes: Sequence[int] | None = None,
        *,
        map_location: str | torch.device = "cpu",
        causal: bool | None = None,
        input_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        with warnings.catch_warnings():
            # recent torch deprecates TorchScript; the file is what the user has: load it
            warnings.filterwarnings("ignore", r".*torch\.jit\.load.*", DeprecationWarning)
            module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=map_location
            )
        super().__init__(
            module,
            state_batch_axes,
            causal=causal,
            input_shape=input_shape,
            name=name or str(path),
        )


def takes_state(module: nn.Module) -> bool:
    """Whether ``module.forward`` can be called as ``forward(x, state)``.

    Scripted modules are trusted (their Python signature is not inspectable).
    """
    if isinstance(module, torch.jit.ScriptModule):
        return True
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return True
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    return positional >= 2


def _check_takes_none(module: nn.Module, name: str) -> None:
    """Refuse a TorchScript module that cannot start a stream: no ``initial_state`` and a
    ``forward`` whose state is not ``Optional`` (``None`` is how a stream starts)."""
    if not isinstance(module, torch.jit.ScriptModule):
        return
    try:
        arguments = module.forward.schema.arguments  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return
    if len(arguments) < 3:
        raise ModelContractError(
            f"model '{name}': its TorchScript forward takes"
            f" ({', '.join(a.name for a in arguments[1:])}), not (x, state)"
        )
    state = arguments[2]
    kind = str(state.type)
    if not kind.startswith("Optional") and kind not in ("NoneType", "Any"):
        raise ModelContractError(
            f"model '{name}': forward takes {state.name}: {kind}, which cannot be None, and"
            " there is no initial_state(batch) to start a stream from (a traced module?);"
            " script it with an Optional state, or export initial_state with"
            " @torch.jit.export"
        )


def _attribute(module: nn.Module, name: str) -> Any:
    """``getattr`` that also works on script modules (which raise on missing names)."""
    try:
        return getattr(module, name)
    except (AttributeError, RuntimeError):
        return None
