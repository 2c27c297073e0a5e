"""Model factories for tests that need a model slower than its input (real overload).

``build`` returns a GRU tagger whose every call sleeps ``delay`` seconds first, on the
model's worker thread: a realtime run at a high ``--speed`` cannot keep up with it, so its
``latest`` edge must drop frames. Named by pipeline files as ``slow_models:build`` (the
tests folder is on ``sys.path`` in the test process).
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor, nn


class SlowGRU(nn.GRU):
    """An ``nn.GRU`` (batch first) that sleeps ``delay`` seconds before each call."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Any:  # type: ignore[override]
        time.sleep(self.delay)
        return super().forward(x, hx)


def build(
    delay: float = 0.02, features: int = 512, hidden: int = 4, labels: int = 2
) -> tuple[nn.GRU, nn.Linear]:
    """``(rnn, head)`` over raw ``[B, T, features]`` chunks, sleeping ``delay`` per call."""
    rnn = SlowGRU(features, hidden, batch_first=True, delay=delay)
    return rnn, nn.Linear(hidden, labels)
