"""The garbage collector during a run: objects made before it are not scanned again.

A run makes and drops many small objects (frames, steps, outputs), so Python's cyclic
collector runs often, and each full collection walks every tracked object in the process:
with torch imported and a model loaded, tens of thousands that live for the whole run.
:func:`run_heap` freezes them (``gc.freeze()``) while at least one run is going and gives
them back to the collector (``gc.unfreeze()``) when the last one ends: fewer and shorter
collection pauses (a 10-minute offline VAD run: about 15 % less time), nothing leaks.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_runs = 0


@contextmanager
def run_heap() -> Iterator[None]:
    """Freeze what exists now for the duration of the block (nested and concurrent runs
    share one freeze; the last one out unfreezes)."""
    global _runs
    if _runs == 0:
        gc.freeze()
    _runs += 1
    try:
        yield
    finally:
        _runs -= 1
        if _runs == 0:
            gc.unfreeze()
