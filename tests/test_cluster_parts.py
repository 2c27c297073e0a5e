"""The Ray engine's parts that need no Ray: consistent hashing of streams onto workers,
and the model worker's snapshot / restore / move (what exact failover rests on); and
that nothing imports Ray unless a run asks for the engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from media import imported_by_run

from streamer.cluster.ring import HashRing
from streamer.cluster.worker import ModelWorker
from streamer.models import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
STREAMS = [f"cam-{i}" for i in range(300)]
names = st.lists(
    st.text("abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=8, unique=True
)


@settings(max_examples=40, deadline=None)
@given(workers=names, new=st.text("xyz", min_size=1, max_size=4))
def test_adding_a_worker_moves_only_the_streams_it_now_owns(workers: list[str], new: str) -> None:
    ring = HashRing(workers)
    before = {s: ring.owner(s) for s in STREAMS}
    ring.add(new)
    after = {s: ring.owner(s) for s in STREAMS}
    moved = {s for s in STREAMS if before[s] != after[s]}
    assert all(after[s] == new for s in moved)
    assert set(after.values()) <= {*workers, new}


@settings(max_examples=40, deadline=None)
@given(workers=names.filter(lambda w: len(w) >= 2), data=st.data())
def test_removing_a_worker_moves_only_its_own_streams(
    workers: list[str], data: st.DataObject
) -> None:
    ring = HashRing(workers)
    gone = data.draw(st.sampled_from(workers))
    before = {s: ring.owner(s) for s in STREAMS}
    ring.remove(gone)
    for stream in STREAMS:
        if before[stream] != gone:
            assert ring.owner(stream) == before[stream]
        else:
            assert ring.owner(stream) != gone


def test_streams_spread_evenly_and_the_same_in_every_process() -> None:
    ring = HashRing(["model-0", "model-1", "model-2", "model-3"])
    counts = {w: 0 for w in ring.workers}
    streams = [f"mic-{i}" for i in range(4000)]
    for stream in streams:
        counts[ring.owner(stream)] += 1
    assert all(0.15 < n / len(streams) < 0.35 for n in counts.values()), counts
    # BLAKE2b, not Python's salted hash(): another process places streams the same way
    code = (
        "from streamer.cluster.ring import HashRing\n"
        "r = HashRing(['model-0', 'model-1', 'model-2', 'model-3'])\n"
        "print(','.join(r.owner(f'mic-{i}') for i in range(50)))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert other.stdout.strip() == ",".join(ring.owner(s) for s in streams[:50])


def worker(name: str) -> ModelWorker:
    spec = ModelSpec(factory="pipelines.audio_tagging:build", path=None, cwd=str(ROOT))
    return ModelWorker(spec, name)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=2, max_size=8),
    cut=st.integers(0, 7),
    fresh_at=st.integers(-1, 7),
)
def test_a_stream_restored_elsewhere_from_a_snapshot_and_replay_goes_on_exactly(
    lengths: list[int], cut: int, fresh_at: int
) -> None:
    """Stepping chunks on one worker == snapshot after chunk ``cut``, restore on another
    worker, replay the chunks after it there, and go on (a fresh start included)."""
    cut = min(cut, len(lengths) - 1)
    generator = torch.Generator().manual_seed(sum(lengths) + cut)
    chunks = [
        (i == fresh_at, torch.randn(n, 40, generator=generator)) for i, n in enumerate(lengths)
    ]
    one = worker("a")
    want = [one.step({"s": chunk})[0]["s"] for chunk in chunks]

    first, second = worker("b"), worker("c")
    got = [
        first.step({"s": chunk}, snapshot=["s"] if i == cut else ())[0]["s"]
        for i, chunk in enumerate(chunks[: cut + 1])
    ]
    _, snap = first.step({}, snapshot=["s"])  # the state after chunk ``cut``
    # a failover: the chunks sent since the snapshot (none here) replayed, then on
    replayed = second.restore({"s": (snap["s"], [])})
    assert replayed == {"s": []}
    got += [second.step({"s": chunk})[0]["s"] for chunk in chunks[cut + 1 :]]
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)

    # restore from a snapshot before the chunks instead: the replay's outputs are theirs
    third = worker("d")
    outputs = third.restore({"s": (None, chunks[: cut + 1])})["s"]
    for a, b in zip(outputs, want[: cut + 1], strict=True):
        assert np.array_equal(a, b)


def test_a_moved_stream_carries_its_state() -> None:
    generator = torch.Generator().manual_seed(7)
    xs = [torch.randn(3, 40, generator=generator) for _ in range(4)]
    stay = worker("a")
    want = [stay.step({"s": (False, x), "t": (False, x)})[0]["s"] for x in xs]
    old, new = worker("b"), worker("c")
    got = [old.step({"s": (False, x)})[0]["s"] for x in xs[:2]]
    new.load(old.export(["s"]))
    assert "s" not in old.streams() and "s" in new.streams()
    got += [new.step({"s": (False, x)})[0]["s"] for x in xs[2:]]
    for a, b in zip(got, want, strict=True):
        assert np.allclose(a, b, atol=1e-6)


def test_nothing_imports_ray_unless_the_engine_asks(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = ["run", "gru_tagging", "--source", "synthetic:noise?duration=1", "--out", str(out)]
    assert not imported_by_run([*args, "-q"], "ray", cwd=ROOT)
    assert out.stat().st_size > 0


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "127.0.0.1:9"], "[run] ray_address: no Ray cluster answers at 127.0.0.1:9"),
        (["--ray", "somewhere"], "[run] ray_address: 'somewhere' is not HOST:PORT"),
        (["--ray", "--mode", "offline"], "engine = 'ray' runs the realtime and online modes"),
    ],
)
def test_bad_ray_settings_are_one_line_and_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli import main

    out = tmp_path / "out.jsonl"
    args = ["run", "gru_tagging", "--source", "synthetic:noise?duration=1", "--out", str(out)]
    assert main([*args, "-q", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
