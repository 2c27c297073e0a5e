"""The sound-event tagger: log-mel features -> GRU -> one sigmoid per label.

Labels, in the order of the outputs: ``noise``, ``speech``, ``music``, ``alarm``,
``knock`` (:data:`LABELS`; silence is none of them, and several can be on at once).
``noise`` comes first because streamer labels a step in which no label is on with the
first label (see ``pipelines/sound_events.toml``).
``pipelines/sound_events.pt`` holds the trained weights (a state dict keyed like
``nn.Sequential(rnn, head)``), made by ``python pipelines/train_sound_events.py``. The
features' normalisation is folded into the GRU's input weights, so the model takes
streamer's ``logmel`` features (40 mels, 25 ms windows, 10 ms hop) as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.sound_scenes import LABELS

WEIGHTS = "pipelines/sound_events.pt"
TRAIN_COMMAND = "python pipelines/train_sound_events.py"


def build(
    n_mels: int = 40, hidden: int = 64, layers: int = 2, labels: int = len(LABELS), seed: int = 0
) -> tuple[nn.GRU, nn.Linear]:
    """``(rnn, head)``: GRU(n_mels -> hidden, layers, batch_first) and Linear(hidden -> labels).

    The head gives one logit per label per step: ``[B, T, hidden] -> [B, T, labels]``.
    """
    if not 1 <= layers <= 2:
        raise ValueError(f"sound_events.build: layers must be 1 or 2, not {layers}")
    torch.manual_seed(seed)
    rnn = nn.GRU(n_mels, hidden, num_layers=layers, batch_first=True)
    head = nn.Linear(hidden, labels)
    return rnn, head


def fold_normalisation(rnn: nn.GRU, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``rnn`` take raw features: ``W (x - mean) / std + b == W' x + b'`` in layer 0.

    ``mean``, ``std``: ``[n_mels]``, the features' statistics the GRU was trained after.
    """
    with torch.no_grad():
        weight = rnn.weight_ih_l0 / std[None, :]
        rnn.bias_ih_l0 -= weight @ mean
        rnn.weight_ih_l0.copy_(weight)
