"""The collector during runs: objects from before a run are frozen while any run goes,
and given back to the collector when the last one ends (even when it fails)."""

from __future__ import annotations

import gc

import pytest

from streamer.collector import run_heap


def test_runs_share_one_freeze_and_the_last_one_out_unfreezes() -> None:
    assert gc.get_freeze_count() == 0
    with run_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with run_heap():  # a second, concurrent run
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen  # the first run still goes
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), run_heap():
        raise RuntimeError("a failing run")
    assert gc.get_freeze_count() == 0
