"""A small recurrent audio tagger: log-mel features -> 2-layer GRU -> per-frame scores.

The weights are random (seeded): the factory shows the shape of a real tagger and gives the
runtime a real recurrent model to stream. Point ``path`` at your own state dict (saved with
``torch.save(model.state_dict(), ...)`` from this architecture) to use trained weights.
"""

from __future__ import annotations

import torch
from torch import nn


def build(
    n_mels: int = 40, hidden: int = 64, layers: int = 2, labels: int = 2, seed: int = 0
) -> tuple[nn.GRU, nn.Linear]:
    """``(rnn, head)``: GRU(n_mels -> hidden, layers) and a Linear(hidden -> labels)."""
    torch.manual_seed(seed)
    rnn = nn.GRU(n_mels, hidden, num_layers=layers, batch_first=True)
    head = nn.Linear(hidden, labels)
    return rnn, head
