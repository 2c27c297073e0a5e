"""The stateful-model protocol and its typed state.

A model is stepped chunk by chunk: ``step(x [B, T, F...], state) -> (y [B, T, K], state)``,
with ``B`` streams side by side. ``forward(x)`` is the offline, whole-sequence path. For a
causal model, stepping over any chunking of a sequence gives the same outputs as
``forward`` over the whole of it (float32, atol 1e-5): the tests check this property.

State goes in and comes back out (nothing is kept inside the model), as a small
:class:`State`: a tuple of tensors, each with its batch axis, that can be stacked across
streams and split back into one state per stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from streamer.errors import InputError

# One tensor's shape without its batch axis, its batch axis, dtype and device.
TensorSignature = tuple[tuple[int, ...], int, torch.dtype, torch.device]


class StreamingRefused(InputError):
    """``step`` on a model that cannot be streamed (a bidirectional, non-causal one)."""


class ModelContractError(InputError):
    """The model breaks the adapter's contract: what ``forward`` returns (``(y, state)``,
    ``y [B, T, K]``), the state's structure or batch axes, a state it cannot start from."""


@dataclass(frozen=True, slots=True, eq=False)
class State:
    """The hidden state of ``batch`` streams.

    ``tensors[i]`` holds the streams along axis ``batch_axes[i]`` (e.g. a GRU's h is
    ``[L*D, B, H]``, batch axis 1). A state without tensors is *fresh*: the model starts
    from its own default (a custom module is then called with ``state=None``).
    """

    tensors: tuple[Tensor, ...]
    batch_axes: tuple[int, ...]
    batch: int

    def __post_init__(self) -> None:
        if len(self.tensors) != len(self.batch_axes):
            raise ValueError(
                f"State has {len(self.tensors)} tensors but {len(self.batch_axes)} batch axes"
            )
        if self.batch < 1:
            raise ValueError(f"State batch must be >= 1, not {self.batch}")
        axes = []
        for i, (tensor, axis) in enumerate(zip(self.tensors, self.batch_axes, strict=True)):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"State tensor {i} is a {type(tensor).__name__}, not a Tensor")
            if not -tensor.ndim <= axis < tensor.ndim:
                raise ValueError(
                    f"State tensor {i} of shape {list(tensor.shape)} has no batch axis {axis}"
                )
            axis = axis % tensor.ndim
            if tensor.shape[axis] != self.batch:
                raise ValueError(
                    f"State tensor {i} of shape {list(tensor.shape)} has {tensor.shape[axis]}"
                    f" rows on batch axis {axis}, expected {self.batch}"
                )
            axes.append(axis)
        object.__setattr__(self, "batch_axes", tuple(axes))

    @classmethod
    def of(cls, tensors: Sequence[Tensor], batch_axes: Sequence[int]) -> State:
        """A state whose batch size is read from the first tensor."""
        if not tensors:
            raise ValueError("State.of needs at least one tensor; use State.fresh(batch)")
        batch = tensors[0].shape[batch_axes[0]]
        return cls(tuple(tensors), tuple(batch_axes), batch)

    @classmethod
    def fresh(cls, batch: int) -> State:
        """``batch`` streams that start from the model's default state."""
        return cls((), (), batch)

    @property
    def is_fresh(self) -> bool:
        """True for a state without tensors (the model's default start)."""
        return not self.tensors

    @property
    def signature(self) -> tuple[TensorSignature, ...]:
        """What must match for states to be stacked: shapes without the batch axis, etc."""
        return tuple(
            (tuple(t.shape[:a]) + tuple(t.shape[a + 1 :]), a, t.dtype, t.device)
            for t, a in zip(self.tensors, self.batch_axes, strict=True)
        )

    @classmethod
    def _trusted(
        cls, tensors: tuple[Tensor, ...], batch_axes: tuple[int, ...], batch: int
    ) -> State:
        """A state built from parts already known to be consistent (skips the checks; the
        batching hot path makes thousands a second)."""
        state = object.__new__(cls)
        object.__setattr__(state, "tensors", tensors)
        object.__setattr__(state, "batch_axes", batch_axes)
        object.__setattr__(state, "batch", batch)
        return state

    @staticmethod
    def stack(states: Sequence[State], *, check: bool = True) -> State:
        """Concatenate the states of several streams along each tensor's batch axis.

        All states must have the same signature (a fresh state stacks only with fresh ones);
        ``check=False`` skips comparing them, for callers that grouped states by signature.
        """
        if not states:
            raise ValueError("State.stack needs at least one state")
        first = states[0]
        if check:
            signature = first.signature
            for other in states[1:]:
                if other.signature != signature:
                    raise ValueError(
                        "cannot stack states of different shapes: "
                        f"{_describe(first)} and {_describe(other)}"
                    )
        batch = sum(s.batch for s in states)
        with torch.inference_mode():
            tensors = tuple(
                torch.cat([s.tensors[i] for s in states], dim=axis)
                for i, axis in enumerate(first.batch_axes)
            )
        return State._trusted(tensors, first.batch_axes, batch)

    def split(self) -> list[State]:
        """One state per stream (batch 1 each).

        The tensors are cut from one copy: no stream's state shares memory with another's
        or with this state.
        """
        if self.is_fresh:
            return [State._trusted((), (), 1) for _ in range(self.batch)]
        with torch.inference_mode():
            columns = [
                torch.split(t.clone(), 1, dim=axis)
                for t, axis in zip(self.tensors, self.batch_axes, strict=True)
            ]
        return [
            State._trusted(tuple(column[row] for column in columns), self.batch_axes, 1)
            for row in range(self.batch)
        ]

    def select(self, rows: Sequence[int] | Tensor) -> State:
        """The streams at ``rows``, in that order, as a new state of copied tensors."""
        index = torch.as_tensor(rows, dtype=torch.long)
        if index.ndim != 1 or index.numel() == 0:
            raise ValueError("State.select needs a non-empty 1-d sequence of rows")
        if int(index.min()) < -self.batch or int(index.max()) >= self.batch:
            raise IndexError(
                f"State.select: rows {index.tolist()} out of range for batch {self.batch}"
            )
        index = index % self.batch
        with torch.inference_mode():
            tensors = tuple(
                t.index_select(axis, index.to(t.device))
                for t, axis in zip(self.tensors, self.batch_axes, strict=True)
            )
        return State(tensors, self.batch_axes, int(index.numel()))

    def index(self, row: int) -> State:
        """The stream at ``row`` as a batch-1 state."""
        return self.select([row])

    def clone(self) -> State:
        """A deep copy (new tensors)."""
        with torch.inference_mode():
            return State(tuple(t.clone() for t in self.tensors), self.batch_axes, self.batch)

    def to(self, device: torch.device | str) -> State:
        """The same state on ``device``."""
        with torch.inference_mode():
            tensors = tuple(t.to(device) for t in self.tensors)
        return State(tensors, self.batch_axes, self.batch)


def _describe(state: State) -> str:
    if state.is_fresh:
        return "fresh"
    return (
        "("
        + ", ".join(
            f"{list(t.shape)}@{a}" for t, a in zip(state.tensors, state.batch_axes, strict=True)
        )
        + ")"
    )


@runtime_checkable
class StatefulModel(Protocol):
    """A sequence model stepped chunk by chunk with explicit state.

    ``causal`` is False for models that look at the future (bidirectional): they refuse
    ``step`` and run only offline through ``forward``. ``input_shape`` is the per-step
    feature shape ``(F,)`` (or ``None`` when the model does not declare it).
    """

    @property
    def causal(self) -> bool: ...

    @property
    def input_shape(self) -> tuple[int, ...] | None: ...

    def initial_state(self, batch: int) -> State:
        """The state of ``batch`` streams that have not started."""
        ...

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Advance: ``x [B, T, F...]`` float32 -> ``y [B, T, K]`` and the new state."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """The offline path: ``x [B, T, F...]`` from a fresh start -> ``y [B, T, K]``."""
        ...


def check_chunk(x: Tensor, state: State, input_shape: tuple[int, ...] | None, name: str) -> None:
    """Raise unless ``x`` is a ``[B, T, F...]`` chunk that fits ``state`` and the model."""
    if not isinstance(x, Tensor) or x.ndim < 3:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"model '{name}': x must be a [B, T, F...] tensor, got {shape}")
    if x.shape[0] != state.batch:
        raise ValueError(
            f"model '{name}': x has {x.shape[0]} streams but the state has {state.batch}"
        )
    if x.shape[1] < 1:
        raise ValueError(f"model '{name}': empty chunk (T = 0)")
    check_features(x, input_shape, name)


def check_features(x: Tensor, input_shape: tuple[int, ...] | None, name: str) -> None:
    """Raise :class:`InputError` when ``x [B, T, F...]`` has other features than declared."""
    if input_shape is not None and tuple(x.shape[2:]) != tuple(input_shape):
        raise InputError(
            f"model '{name}' takes features of shape {list(input_shape)} per step,"
            f" got {list(x.shape[2:])} (x is [B, T, F...] = {list(x.shape)})"
        )
