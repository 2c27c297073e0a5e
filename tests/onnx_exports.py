"""Small ONNX models for the tests, exported with ``torch.onnx`` (real onnxruntime runs them).

Each lays out its inputs in a way that trips a "the data is the first input" guess: the
state input listed first and a constant ``sr`` input between it and the data, names that
say nothing, or two inputs that nothing tells apart.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
        )


class StateFirst(nn.Module):
    """``forward(h, sr, x) -> (h_out, y)``: the state comes first (input and output), the
    sample rate ``sr`` is a constant input, the data ``x [B, T, F]`` is last;
    ``y = head(gru(x * sr / 16000, h))``."""

    def __init__(self, features: int, hidden: int = 8, outputs: int = 2) -> None:
        super().__init__()
        self.hidden = hidden
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, h: Tensor, sr: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        out, h = self.gru(x * (sr.to(x.dtype) / 16000.0), h)
        return h, self.head(out)

    def reference(self, x: Tensor, sr: int) -> Tensor:
        """``y [B, T, K]`` of the whole sequence from zero state."""
        with torch.inference_mode():
            h = torch.zeros(1, x.shape[0], self.hidden)
            return self(h, torch.tensor(sr), x)[1]


def export_state_first(path: Path, features: int, seed: int = 0) -> StateFirst:
    """Inputs ``h, sr, x``; outputs ``h_out, y``."""
    torch.manual_seed(seed)
    module = StateFirst(features).eval()
    args = (torch.zeros(1, 2, module.hidden), torch.tensor(16000), torch.zeros(2, 5, features))
    _export(
        module,
        args,
        path,
        ["h", "sr", "x"],
        ["h_out", "y"],
        {
            "h": {1: "batch"},
            "x": {0: "batch", 1: "time"},
            "h_out": {1: "batch"},
            "y": {0: "batch", 1: "time"},
        },
    )
    return module


class Unnamed(nn.Module):
    """``forward(a, b) -> (c, d)``: state ``a [1, B, H]`` first, data ``b [B, T, F]``;
    ``c`` is the next state, ``d = head(gru(b, a))`` the data output."""

    def __init__(self, features: int, hidden: int = 6, outputs: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        out, a = self.gru(b, a)
        return a, self.head(out)

    def reference(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self(torch.zeros(1, x.shape[0], self.hidden), x)[1]


def export_unnamed(path: Path, features: int, seed: int = 0) -> Unnamed:
    """Inputs ``a`` (state), ``b`` (data); outputs ``c`` (state), ``d`` (data)."""
    torch.manual_seed(seed)
    module = Unnamed(features).eval()
    _export(
        module,
        (torch.zeros(1, 2, module.hidden), torch.zeros(2, 5, features)),
        path,
        ["a", "b"],
        ["c", "d"],
        {
            "a": {1: "batch"},
            "b": {0: "batch", 1: "time"},
            "c": {1: "batch"},
            "d": {0: "batch", 1: "time"},
        },
    )
    return module


class Twin(nn.Module):
    """Per step: ``forward(p, q) -> (r, s)``, all ``[B, H]``: ``s = tanh(W p + q)`` is the
    next state and ``r = 2 s`` the output; nothing in names or shapes says which is which."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.inp = nn.Linear(size, size)

    def forward(self, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.tanh(self.inp(p) + q)
        return 2.0 * s, s

    def reference(self, x: Tensor) -> Tensor:
        """``x [B, T, H]`` step by step from zero state -> ``[B, T, H]``."""
        q = torch.zeros(x.shape[0], x.shape[2])
        ys = []
        with torch.inference_mode():
            for t in range(x.shape[1]):
                y, q = self(x[:, t], q)
                ys.append(y)
        return torch.stack(ys, dim=1)


def export_twin(path: Path, size: int, seed: int = 0) -> Twin:
    """Inputs ``p`` (data), ``q`` (state); outputs ``r`` (data), ``s`` (state)."""
    torch.manual_seed(seed)
    module = Twin(size).eval()
    _export(
        module,
        (torch.zeros(2, size), torch.zeros(2, size)),
        path,
        ["p", "q"],
        ["r", "s"],
        {"p": {0: "batch"}, "q": {0: "batch"}, "r": {0: "batch"}, "s": {0: "batch"}},
    )
    return module
