"""Arrays that arrive through Ray (torch-free, so a source actor need not import torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def writable(data: Any) -> Any:
    """``data``, copied if it is a read-only array: Ray hands over read-only views of its
    object store, which torch and the stages must not write into."""
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        return data.copy()
    return data
