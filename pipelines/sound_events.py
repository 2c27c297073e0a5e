"""The sound-event tagger: log-mel features -> per-step spectral conv -> GRU -> one sigmoid
per label.

Labels, in the order of the outputs: ``noise``, ``speech``, ``music``, ``alarm``,
``knock`` (:data:`LABELS`; silence is none of them, and several can be on at once).
``noise`` comes first because streamer labels a step in which no label is on with the
first label (see ``pipelines/sound_events.toml``).

``sound_events.pt`` beside this module holds the trained weights (a state dict of
:class:`SoundEventTagger`), made by ``python pipelines/train_sound_events.py``;
:func:`trained` loads them from there, so the ready pipeline works from an installed
package as well as from the repository. The features' normalisation is part of the
module (buffers), so it takes streamer's ``logmel`` features (40 mels, 25 ms windows,
10 ms hop) as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pipelines.sound_scenes import LABELS as LABELS
from pipelines.weights import load_trained

WEIGHTS = Path(__file__).with_name("sound_events.pt")
TRAIN_COMMAND = "python pipelines/train_sound_events.py"


class SoundEventTagger(nn.Module):
    """``forward(x [B, T, n_mels], state [layers, B, hidden] | None) -> (logits [B, T, labels],
    state)``.

    Each step's log-mel vector is normalised, then a small convolution across the mel
    bins (shift-tolerant in pitch: the same pattern at another frequency looks alike) and
    a projection make the GRU's input; the GRU carries time. Nothing looks across steps
    but the GRU, so the model is causal and its state is just the GRU's.
    """

    state_batch_axes = (1,)
    causal = True
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        n_mels: int = 40,
        hidden: int = 64,
        layers: int = 2,
        labels: int = len(LABELS),
        channels: int = 16,
    ) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.conv = nn.Conv1d(1, channels, 5, padding=2)
        self.proj = nn.Linear(channels * (n_mels // 2), hidden)
        self.rnn = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, labels)

    def initial_state(self, batch: int) -> Tensor:
        """A fresh state ``[layers, batch, hidden]`` (zeros, as a stream starts)."""
        return torch.zeros(self.layers, batch, self.hidden, device=self.mean.device)

    def encode(self, x: Tensor) -> Tensor:
        """``x [B, T, n_mels]`` -> the GRU's input ``[B, T, hidden]`` (per step, no state)."""
        batch, steps, mels = x.shape
        z = ((x - self.mean) / self.std).reshape(batch * steps, 1, mels)
        z = self.conv(z).unflatten(-1, (-1, 2)).max(-1).values  # pooled: [B*T, C, n_mels // 2]
        z = torch.relu(z).flatten(1)
        return torch.relu(self.proj(z)).reshape(batch, steps, -1)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.initial_state(x.shape[0])
        y, state = self.rnn(self.encode(x), state)
        return self.head(y), state


def build(
    n_mels: int = 40, hidden: int = 64, layers: int = 2, labels: int = len(LABELS), seed: int = 0
) -> SoundEventTagger:
    """An untrained :class:`SoundEventTagger` (seeded)."""
    if not 1 <= layers <= 3:
        raise ValueError(f"sound_events.build: layers must be 1 to 3, not {layers}")
    torch.manual_seed(seed)
    return SoundEventTagger(n_mels, hidden, layers, labels)


def trained(weights: str | None = None, hidden: int = 64, layers: int = 2) -> SoundEventTagger:
    """The tagger with trained weights: ``weights`` (a state dict file), else :data:`WEIGHTS`.

    A missing file is refused in one line that names the command that makes it.
    """
    return load_trained(
        build(hidden=hidden, layers=layers), weights, WEIGHTS, "sound-event", TRAIN_COMMAND
    )
