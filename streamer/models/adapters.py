"""Choosing and composing adapters: :func:`as_model` and :class:`ContextModel`.

The adapters themselves live in :mod:`~streamer.models.rnn`, :mod:`~streamer.models.module`
and :mod:`~streamer.models.onnx`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from streamer.models.module import ModuleModel, takes_state
from streamer.models.protocol import State, StatefulModel, check_chunk
from streamer.models.rnn import RNNModel

ACCEPTED = (
    "a StatefulModel, an nn.GRU/LSTM/RNN, an (rnn, head) pair or nn.Sequential(rnn, head...),"
    " or an nn.Module with forward(x, state) -> (y, state)"
)


def as_model(obj: object, *, name: str = "model") -> StatefulModel:
    """Wrap ``obj`` in the adapter that fits it (``TypeError`` if none does).

    - ``nn.GRU``/``nn.LSTM``/``nn.RNN`` -> :class:`RNNModel`;
    - an object that already is a :class:`StatefulModel` -> itself;
    - ``(rnn, head)`` or ``nn.Sequential(rnn, head, ...)`` -> ``RNNModel(rnn, head)``;
    - any other ``nn.Module`` whose forward takes ``(x, state)`` -> :class:`ModuleModel`.
    """
    if isinstance(obj, nn.RNNBase):
        return RNNModel(obj, name=name)
    if isinstance(obj, StatefulModel):
        return obj
    if isinstance(obj, tuple | list) and len(obj) == 2 and isinstance(obj[0], nn.RNNBase):
        head = obj[1]
        if head is None or isinstance(head, nn.Module):
            return RNNModel(obj[0], head, name=name)
    if isinstance(obj, nn.Sequential) and len(obj) >= 2 and isinstance(obj[0], nn.RNNBase):
        rest = list(obj)[1:]
        return RNNModel(obj[0], rest[0] if len(rest) == 1 else nn.Sequential(*rest), name=name)
    if isinstance(obj, nn.Module):
        if not takes_state(obj):
            raise TypeError(
                f"got {type(obj).__name__}, whose forward takes only x; expected {ACCEPTED}"
            )
        return ModuleModel(obj, name=name)
    raise TypeError(f"got {describe(obj)}, which is not a model; expected {ACCEPTED}")


def module_of(obj: object) -> nn.Module | None:
    """The ``nn.Module`` whose state dict describes ``obj`` (as returned by a factory).

    An ``(rnn, head)`` pair is keyed like ``nn.Sequential(rnn, head)`` (``0.*``, ``1.*``);
    a model with a ``module`` attribute (:class:`RNNModel`, :class:`ModuleModel`) uses it.
    """
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, tuple | list) and obj and all(isinstance(m, nn.Module) for m in obj):
        return nn.Sequential(*obj)
    module = getattr(obj, "module", None)
    return module if isinstance(module, nn.Module) else None


def describe(obj: object) -> str:
    """A short name for what ``obj`` is, for error messages."""
    if isinstance(obj, tuple | list):
        inner = ", ".join(type(o).__name__ for o in obj[:4])
        return f"{type(obj).__name__} ({inner}{', ...' if len(obj) > 4 else ''})"
    return type(obj).__name__


class ContextModel:
    """Prepend the last ``context`` features of the previous step to every step.

    ``x [B, T, F]`` becomes ``[B, T, context + F]`` for the inner model, where step t is
    ``[x[t-1, -context:], x[t]]`` and the values before a stream's first step are zeros.
    The carried context is part of the state (one ``[B, context]`` tensor, batch axis 0,
    after the inner model's tensors), so it resets, batches and evicts with it. Silero VAD
    needs this: 64 samples of context before each 512-sample chunk at 16 kHz.
    """

    def __init__(self, model: StatefulModel, context: int) -> None:
        if context < 1:
            raise ValueError(f"ContextModel: context must be >= 1, not {context}")
        self.model = model
        self.context = context
        self.name = getattr(model, "name", "model")

    @property
    def causal(self) -> bool:
        return self.model.causal

    @property
    def input_rate(self) -> float | None:
        """The inner model's audio rate in Hz, when it declares one."""
        rate = getattr(self.model, "input_rate", None)
        return None if rate is None else float(rate)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        inner = self.model.input_shape
        if inner is None or len(inner) != 1:
            return None
        return (inner[0] - self.context,)

    def initial_state(self, batch: int) -> State:
        """The inner model's initial state plus zero context ``[B, context]``."""
        inner = self.model.initial_state(batch)
        device = inner.tensors[0].device if inner.tensors else torch.device("cpu")
        with torch.inference_mode():
            ctx = torch.zeros(batch, self.context, device=device)
        return State((*inner.tensors, ctx), (*inner.batch_axes, 0), batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``x [B, T, F]`` (F >= context) -> ``y [B, T, K]`` and the new state."""
        check_chunk(x, state, self.input_shape, self.name)
        if state.is_fresh:
            state = self.initial_state(state.batch)
        inner = State(state.tensors[:-1], state.batch_axes[:-1], state.batch)
        with torch.inference_mode():
            xin = self._with_context(x, state.tensors[-1])
            y, inner = self.model.step(xin, inner)
            ctx = x[:, -1, -self.context :].to(state.tensors[-1]).clone()
        return y, State((*inner.tensors, ctx), (*inner.batch_axes, 0), state.batch)

    def forward(self, x: Tensor) -> Tensor:
        """The whole sequence ``x [B, T, F]`` with zero context at the start."""
        with torch.inference_mode():
            ctx = torch.zeros(x.shape[0], self.context, dtype=x.dtype, device=x.device)
            return self.model.forward(self._with_context(x, ctx))

    def _with_context(self, x: Tensor, ctx: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[2] < self.context:
            raise ValueError(
                f"model '{self.name}': ContextModel needs x [B, T, F] with F >="
                f" {self.context}, got {list(x.shape)}"
            )
        ctx = ctx.to(device=x.device, dtype=x.dtype)
        previous = torch.cat([ctx[:, None, :], x[:, :-1, -self.context :]], dim=1)
        return torch.cat([previous, x], dim=2)
