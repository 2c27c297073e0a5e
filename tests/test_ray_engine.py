"""The Ray engine (``[run] engine = "ray"``) on a real two-node Ray cluster on this
machine: 64 streams on 2 model actors give each stream exactly the in-process engine's
outputs, and so does a run in which an actor is killed, a node is removed, an actor
freezes past the deadline, or the pool grows from 2 to 3 actors mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require

from streamer.build import build_pipeline
from streamer.config import parse_config
from streamer.pipeline import Pipeline

STREAMS = 64
SECONDS = 1.5

# factories resolve from the repository root, as on the command line
pytestmark = pytest.mark.usefixtures("in_repo")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        require(False, "Ray (pip install 'streamer[ray]')")
    from raycluster import two_node_cluster

    with two_node_cluster() as started:
        yield started


def pipeline_config(
    out: Path, engine: str = "local", streams: int = STREAMS, **run: Any
) -> dict[str, Any]:
    """``streams`` noise streams through the log-mel GRU tagger, online, chunks of 4."""
    return {
        "sources": [
            {
                "uri": f"synthetic:noise?seed={i}&duration={SECONDS}",
                "stream": f"s{i:02d}",
                "chunk": 512,
                "pace": "fast",
            }
            for i in range(streams)
        ],
        "model": {
            "factory": "pipelines.audio_tagging:build",
            "features": "logmel",
            "labels": ["silence", "speech"],
            "head": "frame",
            "chunk": 4,
        },
        "run": {"mode": "online", "engine": engine, **run},
        "sinks": [{"type": "jsonl", "path": str(out)}],
    }


def per_stream(path: Path) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        streams.setdefault(record["stream"], []).append(record)
    return streams


def assert_same_outputs(
    got: dict[str, list[dict[str, Any]]], want: dict[str, list[dict[str, Any]]]
) -> None:
    """Per stream: the same outputs in the same order (scores to float rounding: a chunk
    stepped in a batch of another size may differ in the last bits, about 1e-7)."""
    assert sorted(got) == sorted(want)
    for stream, records in want.items():
        mine = got[stream]
        assert [(r["start"], r["end"], r["label"]) for r in mine] == [
            (r["start"], r["end"], r["label"]) for r in records
        ], stream
        for a, b in zip(mine, records, strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-5), (stream, a["start"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The in-process engine's outputs."""
    out = tmp_path_factory.mktemp("reference") / "local.jsonl"
    summary = asyncio.run(build_pipeline(parse_config(pipeline_config(out), "-")).run())
    assert summary["outputs"] > STREAMS * 40
    return per_stream(out)


def engine_of(pipeline: Pipeline) -> Any:
    return next(e for s in pipeline.stages if (e := getattr(s, "engine", None)) is not None)


def run_ray(
    out: Path, meddling: list[tuple[int, Callable[[Any], None]]] | None = None, **run: Any
) -> tuple[dict[str, Any], Any]:
    """A Ray-engine run; each ``(ticks, fn)`` of ``meddling`` calls ``fn(engine)`` once
    that many ticks went."""
    config = parse_config(pipeline_config(out, "ray", **run), "-")
    pipeline = build_pipeline(config)
    engine = engine_of(pipeline)

    async def main() -> dict[str, Any]:
        async def meddle() -> None:
            for ticks, fn in meddling or []:
                while engine.calls < ticks:  # noqa: ASYNC110 - the engine's own counter
                    await asyncio.sleep(0.002)
                fn(engine)

        task = asyncio.create_task(meddle())
        summary = await pipeline.run()
        assert task.done(), "the run ended before the meddling"
        task.result()
        return summary

    return asyncio.run(main()), engine


def test_64_streams_on_2_actors_give_the_in_process_outputs(
    cluster: Any, reference: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    summary, engine = run_ray(tmp_path / "ray.jsonl", workers=2)
    assert_same_outputs(per_stream(tmp_path / "ray.jsonl"), reference)
    report = summary["engine"]
    assert report["engine"] == "ray" and report["failovers"] == []
    assert len(report["workers"]) == 2
    # the two actors are on the two nodes, and both served streams (consistent hashing)
    assert len({w["node"] for w in report["workers"]}) == 2
    served = {engine.owner(f"s{i:02d}") for i in range(STREAMS)}
    assert served == {"model-0", "model-1"}
    # one call per actor per tick: far fewer calls than chunks
    assert summary["mean_batch"] > 8


def test_a_killed_actor_and_a_frozen_one_change_no_output(
    cluster: Any, reference: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Three actors: one killed (``ray.kill``: Ray reports it dead) at the 8th tick,
    another frozen (SIGSTOP: Ray still sees it alive, the deadline does not) at the 16th.
    Every stream goes on, with exactly the outputs of the run without either."""
    import ray

    lost: list[str] = []
    frozen: list[int] = []

    def kill(engine: Any) -> None:
        name = sorted(set(engine.held().values()))[0]
        lost.append(name)
        ray.kill(engine.actor(name), no_restart=True)

    def freeze(engine: Any) -> None:
        name = sorted(set(engine.held().values()))[-1]
        pid = ray.get(engine.actor(name).ready.remote())["pid"]
        lost.append(name)
        frozen.append(pid)
        os.kill(pid, signal.SIGSTOP)

    try:
        summary, _ = run_ray(
            tmp_path / "ray.jsonl",
            [(8, kill), (16, freeze)],
            workers=3,
            snapshot_every=4,
            deadline_s=1.0,
        )
    finally:
        for pid in frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
    assert_same_outputs(per_stream(tmp_path / "ray.jsonl"), reference)
    report = summary["engine"]
    assert [f["worker"] for f in report["failovers"]] == lost
    killed, stalled = report["failovers"]
    assert killed["streams"] > 0 and report["replayed_chunks"] > 0
    assert report["replayed_steps"] >= report["replayed_chunks"]
    assert stalled["outage_s"] >= 1.0  # given up at the deadline, not before
    # each moved stream's outage is reported (a stream may have moved twice)
    moved = len(report["outage_s"])
    assert max(killed["streams"], stalled["streams"]) <= moved
    assert moved <= killed["streams"] + stalled["streams"]
    survivors = [n for n in ("model-0", "model-1", "model-2") if n not in lost]
    assert [w["name"] for w in report["workers"]] == survivors


def test_a_removed_node_changes_no_output(
    cluster: Any, reference: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    worker_node = cluster.worker_nodes and next(iter(cluster.worker_nodes))
    assert worker_node, "the cluster has a worker node"
    removed: list[str] = []

    def remove(engine: Any) -> None:
        on_node = [n for n, node in engine.nodes().items() if node == worker_node.node_id]
        assert on_node, "an actor is on the worker node"
        removed.extend(on_node)
        cluster.remove_node(worker_node)

    try:
        summary, _ = run_ray(tmp_path / "ray.jsonl", [(12, remove)], workers=2)
    finally:
        if removed:  # the next tests want two nodes again
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
    assert_same_outputs(per_stream(tmp_path / "ray.jsonl"), reference)
    report = summary["engine"]
    assert sorted(f["worker"] for f in report["failovers"]) == sorted(removed)


def test_ray_refuses_offline_mode_and_the_generate_head(tmp_path: Path) -> None:
    from streamer.errors import InputError

    config = pipeline_config(tmp_path / "x.jsonl", "ray", streams=1)
    config["run"]["mode"] = "offline"
    with pytest.raises(InputError, match="engine = 'ray' runs the realtime and online modes"):
        build_pipeline(parse_config(config, "-"))


def test_the_command_line_scales_out_on_sigusr1_and_in_on_sigusr2(
    cluster: Any,
    reference: dict[str, list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``streamer run FILE --ray``: the pipeline file's 64 streams on the cluster's actors.
    A SIGUSR1 to the process at the 8th tick adds an actor (2 -> 3: the streams the ring
    now gives it move there, with their state); a SIGUSR2 at the 16th removes it again
    (its streams move back). Every stream's outputs are those of the run without either."""
    from streamer.cli import main
    from streamer.cluster.engine import RayEngine
    from streamer.cluster.ring import HashRing

    step = RayEngine.step
    signals = {8: signal.SIGUSR1, 16: signal.SIGUSR2}

    async def signalling_step(self: RayEngine, chunks: Any) -> Any:
        if self.calls in signals:
            os.kill(os.getpid(), signals[self.calls])
        return await step(self, chunks)

    monkeypatch.setattr(RayEngine, "step", signalling_step)
    sources = "".join(
        f'[[sources]]\nuri = "synthetic:noise?seed={i}&duration={SECONDS}"\n'
        f'stream = "s{i:02d}"\nchunk = 512\npace = "fast"\n\n'
        for i in range(STREAMS)
    )
    pipeline = tmp_path / "many.toml"
    pipeline.write_text(
        sources + '[model]\nfactory = "pipelines.audio_tagging:build"\nfeatures = "logmel"\n'
        'labels = ["silence", "speech"]\nchunk = 4\n\n[run]\nmode = "online"\nworkers = 2\n',
        encoding="utf-8",
    )
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    args = ["run", str(pipeline), "--ray", "--out", str(out), "--metrics", str(metrics), "-q"]
    assert main(args) == 0
    assert_same_outputs(per_stream(out), reference)
    report = json.loads(metrics.read_text(encoding="utf-8"))["engine"]
    assert [w["name"] for w in report["workers"]] == ["model-0", "model-1"]
    assert report["failovers"] == []
    # out and back: the streams of the third actor, twice; every other stream stayed put
    ring = HashRing(["model-0", "model-1", "model-2"])
    third = sum(ring.owner(f"s{i:02d}") == "model-2" for i in range(STREAMS))
    assert report["moved_streams"] == 2 * third > 0


def test_sources_on_another_node_are_read_there_and_give_the_same_outputs(
    cluster: Any, tmp_path: Path
) -> None:
    """``[[sources]] node = ID``: the source is read by an actor on that node; the run's
    outputs equal those of the same sources read in the driver, and latency stays the
    capture-to-output time (same machine: same wall clock)."""
    from streamer.cluster.source import RemoteSource

    worker_node = next(iter(cluster.worker_nodes)).node_id
    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    want = pipeline_config(local_out, streams=4)
    asyncio.run(build_pipeline(parse_config(want, "-")).run())

    config = pipeline_config(remote_out, "ray", streams=4)
    for table in config["sources"][:2]:
        table["node"] = worker_node
    pipeline = build_pipeline(parse_config(config, "-"))
    remote = [s for s in pipeline.sources if isinstance(s, RemoteSource)]
    assert len(remote) == 2 and all(s.where["node"] == worker_node for s in remote)
    summary = asyncio.run(pipeline.run())
    assert_same_outputs(per_stream(remote_out), per_stream(local_out))
    assert 0 <= summary["latency_ms"]["p50"] < 5000

    config["sources"][0]["node"] = "10.255.255.1"
    from streamer.errors import InputError

    with pytest.raises(InputError, match=r"node '10.255.255.1': no live Ray node .*; nodes: "):
        build_pipeline(parse_config(config, "-"))


def test_gaps_restarts_and_lookahead_on_the_engine_equal_the_in_process_stage(
    cluster: Any,
) -> None:
    """Scripted streams with resetting gaps, a stream id that starts again, lookahead 2
    and chunks of 3: the model stage on the engine (its states on 2 actors, a snapshot
    every 2 chunks) gives the in-process stage's outputs."""
    import numpy as np
    from test_model_stage import stream_script

    from streamer.build import _ray_engine  # the engine as a run makes it
    from streamer.models import ModelSpec
    from streamer.stages.model import ModelSettings, ModelStage
    from streamer.testing import run_scripted

    def frames(n: int, seed: int) -> Any:  # [n, 40]: one 40-sample frame per step
        return np.random.default_rng(seed).uniform(-1, 1, (n, 40)).astype(np.float32)

    def scripts() -> list[list[Any]]:
        a = stream_script("a", frames(40, 1), gaps={7: 2, 20: 1})
        b = stream_script("b", frames(30, 2))
        b_again = stream_script("b", frames(12, 3))  # the id starts again
        c = stream_script("c", frames(25, 4), gaps={3: 5})
        return [a, b + b_again, c]

    def settings_for(**options: Any) -> ModelSettings:
        return ModelSettings(labels=("silence", "speech"), **options)

    spec = ModelSpec(factory="pipelines.audio_tagging:build", path=None)
    model = spec.load()
    options = {"features": "raw", "lookahead": 2, "chunk": 3, "on_gap": "reset"}
    local = asyncio.run(
        run_scripted(scripts(), [ModelStage(model, settings_for(**options), mode="online")])
    )
    config = parse_config(
        {
            "source": {"uri": "synthetic:noise?duration=1"},
            "model": {
                "factory": "pipelines.audio_tagging:build",
                "labels": ["silence", "speech"],
                **options,
            },
            "run": {"engine": "ray", "workers": 2, "snapshot_every": 2},
        },
        "-",
    )
    settings = settings_for(**options)
    engine = _ray_engine(config, spec, model, settings)
    stage = ModelStage(model, settings, mode="online", engine=engine)
    remote = asyncio.run(run_scripted(scripts(), [stage]))
    assert len(remote.outputs) == len(local.outputs) > 90
    for got, want in zip(remote.outputs, local.outputs, strict=True):
        assert (got.stream, got.start, got.end, got.label) == (
            want.stream,
            want.start,
            want.end,
            want.label,
        )
        assert got.scores == pytest.approx(want.scores, abs=1e-5)
    assert engine.calls > 10 and set(engine.report()["outage_s"]) == set()
