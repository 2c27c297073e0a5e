"""Trained weights shipped beside their model's module, for the ready pipelines' factories."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from torch import nn

from streamer.models.loading import load_weights

M = TypeVar("M", bound=nn.Module)


def load_trained(model: M, weights: str | None, shipped: Path, what: str, command: str) -> M:
    """``model`` (in eval mode) with the state dict ``weights``, else the ``shipped`` file.

    A missing or unusable file is refused in one line naming ``what`` (e.g. "motion") and
    the file; a missing one's also names ``command``, the training command that makes it
    (with ``--out`` when the file is the caller's own).
    """
    file = Path(weights) if weights is not None else shipped
    make = command + (f" --out {file}" if weights is not None else "")
    load_weights(model, file, what=f"{what} weights", make=make)
    return model.eval()
