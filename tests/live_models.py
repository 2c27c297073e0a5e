"""A small stateful model for live tests: it takes features of any size per step, so
cameras and microphones can share one model stage (each shape batches with its own kind).

``x [B, T, F]`` -> per step the mean, standard deviation and maximum over ``F`` -> a GRU
cell (state ``h [B, 8]``) -> ``y [B, T, 2]`` scores for ``quiet`` and ``busy``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AnySizeTagger(nn.Module):
    """``forward(x [B, T, F], h [B, 8] | None) -> (y [B, T, 2], h)``."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell = nn.GRUCell(3, hidden)
        self.head = nn.Linear(hidden, 2)
        self.state_batch_axes = (0,)
        self.hidden = hidden

    def forward(self, x: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        stats = torch.stack([x.mean(-1), x.std(-1, unbiased=False), x.amax(-1)], dim=-1)
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden)
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(stats[:, t], h)
            ys.append(self.head(h))
        return torch.stack(ys, dim=1), h


def build(hidden: int = 8) -> AnySizeTagger:
    return AnySizeTagger(hidden)
