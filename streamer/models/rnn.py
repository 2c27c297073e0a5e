"""Adapter for ``torch.nn.GRU``, ``LSTM`` and ``RNN`` with an optional head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from streamer.models.protocol import State, StreamingRefused, check_chunk, check_features


class RNNModel:
    """A torch RNN (any number of layers) followed by an optional head.

    ``rnn`` may be batch-first or not (transposed internally); inputs are always
    ``x [B, T, F]``. The state is ``h [L*D, B, H]`` (an LSTM also has ``c``), batch axis 1,
    zeros at the start, exactly what torch uses for ``hx=None``. ``y`` is
    ``head(rnn_out)`` with ``rnn_out [B, T, D*H]``. A bidirectional RNN is not causal:
    ``step`` refuses it, ``forward`` works. Both modules are put in eval mode.
    """

    def __init__(
        self, rnn: nn.RNNBase, head: nn.Module | None = None, *, name: str = "rnn"
    ) -> None:
        if not isinstance(rnn, nn.RNNBase):
            raise TypeError(
                f"RNNModel needs an nn.GRU, nn.LSTM or nn.RNN, not {type(rnn).__name__}"
            )
        self.name = name
        self.rnn = rnn.eval()
        self.head = head.eval() if head is not None else None
        self.module: nn.Module = nn.Sequential(rnn, head) if head is not None else rnn
        directions = 2 if rnn.bidirectional else 1
        self._layers = rnn.num_layers * directions
        proj = getattr(rnn, "proj_size", 0)
        self._h_size = proj if proj > 0 else rnn.hidden_size
        self._lstm = isinstance(rnn, nn.LSTM)

    @property
    def causal(self) -> bool:
        return not self.rnn.bidirectional

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.rnn.input_size,)

    def initial_state(self, batch: int) -> State:
        """Zeros: ``h [L*D, B, H]`` (and ``c`` for an LSTM), batch axis 1."""
        param = next(self.rnn.parameters())
        with torch.inference_mode():
            h = torch.zeros(
                self._layers, batch, self._h_size, dtype=param.dtype, device=param.device
            )
            if not self._lstm:
                return State((h,), (1,), batch)
            c = torch.zeros(
                self._layers, batch, self.rnn.hidden_size, dtype=param.dtype, device=param.device
            )
        return State((h, c), (1, 1), batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``x [B, T, F]`` -> ``y [B, T, K]`` and the new state."""
        if not self.causal:
            raise StreamingRefused(
                f"model '{self.name}' is a bidirectional {type(self.rnn).__name__} (not causal):"
                " it cannot be streamed chunk by chunk; run it offline"
            )
        check_chunk(x, state, self.input_shape, self.name)
        if state.is_fresh:
            state = self.initial_state(state.batch)
        hx: Tensor | tuple[Tensor, Tensor] = (
            (state.tensors[0], state.tensors[1]) if self._lstm else state.tensors[0]
        )
        with torch.inference_mode():
            y, hn = self._run(x, hx)
        tensors = hn if isinstance(hn, tuple) else (hn,)
        return y, State(tuple(tensors), (1,) * len(tensors), state.batch)

    def forward(self, x: Tensor) -> Tensor:
        """The whole sequence ``x [B, T, F]`` from zero state -> ``y [B, T, K]``."""
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise ValueError(f"model '{self.name}': x must be a [B, T, F] tensor")
        check_features(x, self.input_shape, self.name)
        with torch.inference_mode():
            return self._run(x, None)[0]

    def _run(
        self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        param = next(self.rnn.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        out, hn = self.rnn(x, hx)
        if not self.rnn.batch_first:
            out = out.transpose(0, 1)
        y = self.head(out) if self.head is not None else out
        return y, hn
