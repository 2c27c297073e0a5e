"""The Ray engine against the in-process engine on many Silero streams, and its failover time.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--streams N] [--seconds S] [--kill-after K]``
(under 2 minutes with the defaults on 2 cores; ``make bench`` runs ``--streams 64``).

``N`` synthetic 16 kHz noise streams (``synthetic:noise?seed=I&duration=S``, ``chunk =
512``, ``pace = "fast"``: as fast as read, so the rates are capacity) through the model of
``pipelines/audio_tagging.toml`` (its ``[model]`` table as the file gives it: Silero VAD,
raw features, per-stream LSTM state and context, its smoothing), ``online``, into a JSONL
file (``--queue Q``: ``[run] queue``, the edges' capacity, which bounds the chunks of one
tick), three ways, one after the other in this process:

1. the in-process engine (``[run] engine = "local"``);
2. the Ray engine with 1 model actor (``engine = "ray"``, ``workers = 1``);
3. the Ray engine with 2 model actors (``workers = 2``).

Ray is a local one, started here (``ray.init(address="local", num_cpus=4, ...)``, so that a
Ray cluster another program started on this machine is never joined) before the runs are
built, so the engine reuses it; it is shut down at the end. Each actor asks for 1 CPU; Ray
gives an actor 1 torch thread, and this process uses ``--threads`` (default 1) too.

Per run: ``elapsed_s`` and ``outputs_per_s`` (the summary's ``elapsed_s`` and ``fps_out``),
stream-chunks per second (``frames_in / elapsed_s``), the stage's ``model_calls`` and
``mean_batch`` (chunks per tick), the actors' own calls (one per actor per tick), and the
CPU seconds during the run of this process (the driver), of the model actors (their
processes, polled) and of the whole machine (``/proc/stat``; the rest: Ray's daemons and
anything else running). For Ray: the overhead per batched call, ``(elapsed_ray -
elapsed_local) / engine.calls`` (``calls``: the engine's ticks; also per actor call and per
stream-chunk); and, measured directly, the round trip of a no-op call to an actor
(``ModelWorker.ready``), 200 calls awaited one at a time, as the engine awaits (an asyncio
future of the ``ObjectRef``) and with ``ray.get``. What a call carries is measured apart:
one chunk's pickled size, and the time to pickle and unpickle a tick's chunks as torch
tensors (what the engine sends) and as numpy arrays. The model's own cost per chunk:
``ModelWorker.step`` of ``mean_batch`` streams in this process, no pipeline; the driver's
cost per chunk is estimated as the in-process run's CPU per chunk less it.

Failover: a 4th run, 2 actors, a capture sink added to the JSONL sink; after ``K`` engine
ticks the actor holding the first streams (``engine.held()``) is killed
(``ray.kill(handle, no_restart=True)``). Its streams are the moved ones. The figure is the
wall time from the kill to the first output, at a sink, of a moved stream that was stepped
after the kill (an output already computed and queued before the kill does not count), and
each moved stream's such time (p50, max); with the engine's own ``failovers[0]`` (its
``outage_s`` runs from the start of the failed tick) and ``replayed_chunks``. The run's
outputs are compared with the in-process run's, per stream.

No target is set for throughput (the issue gives none); every figure is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import pickle
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import ROOT, dist, emit, loadavg, log

from streamer.blocks import OutputBlock
from streamer.build import build_pipeline
from streamer.config import parse_config
from streamer.frames import Output
from streamer.pipeline import Pipeline
from streamer.sinks.base import Delivery

PIPELINE = ROOT / "pipelines" / "audio_tagging.toml"
RATE = 16000
CHUNK = 512
CHUNKS_PER_S = RATE / CHUNK  # 31.25: what one real-time 16 kHz stream needs
TARGETS: dict[str, float] = {}  # the issue sets none: figures only


def pipeline_config(
    streams: int,
    seconds: float,
    out: Path,
    engine: str = "local",
    workers: int = 1,
    queue: int | None = None,
) -> dict[str, Any]:
    """``streams`` noise streams through ``audio_tagging.toml``'s model into ``out``."""
    model = tomllib.loads(PIPELINE.read_text(encoding="utf-8"))["model"]
    run: dict[str, Any] = {"mode": "online", "engine": engine}
    if engine == "ray":
        run["workers"] = workers
    if queue is not None:
        run["queue"] = queue
    return {
        "sources": [
            {
                "uri": f"synthetic:noise?seed={i}&duration={seconds:g}",
                "stream": f"s{i:04d}",
                "chunk": CHUNK,
                "pace": "fast",
            }
            for i in range(streams)
        ],
        "model": model,
        "run": run,
        "sinks": [{"type": "jsonl", "path": str(out)}],
    }


def build(
    streams: int,
    seconds: float,
    out: Path,
    engine: str,
    workers: int = 1,
    queue: int | None = None,
) -> Pipeline:
    data = pipeline_config(streams, seconds, out, engine, workers, queue)
    return build_pipeline(parse_config(data, str(PIPELINE)))


def engine_of(pipeline: Pipeline) -> Any:
    return next(e for s in pipeline.stages if (e := getattr(s, "engine", None)) is not None)


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ActorCpu:
    """The CPU seconds the model actors (local processes) spent from ``start``: polled
    every 0.1 s, since the engine kills them as the run ends."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.first = {pid: process_cpu_s(pid) or 0.0 for pid in pids}
        self.last = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        for pid in self.last:
            now = process_cpu_s(pid)
            if now is not None:
                self.last[pid] = now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self.last[pid] - self.first[pid] for pid in self.first)


def run(
    pipeline: Pipeline, during: Callable[[Any], Any] | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``pipeline`` (``during(engine)``: a coroutine run alongside); the summary and
    the run's wall, driver CPU, model actors' CPU (Ray) and machine CPU seconds."""
    actors = None
    engine = next((e for s in pipeline.stages if (e := getattr(s, "engine", None))), None)
    if engine is not None:
        import ray

        infos = ray.get([engine.actor(name).ready.remote() for name in engine.workers])
        actors = ActorCpu([int(info["pid"]) for info in infos])

    async def main() -> dict[str, Any]:
        task = asyncio.create_task(during(engine_of(pipeline))) if during else None
        summary = await pipeline.run()
        if task is not None:
            if not task.done():
                task.cancel()
                raise RuntimeError("the run ended before the actor was killed")
            task.result()
        return summary

    cpu, busy, wall = time.process_time(), machine_busy_s(), time.perf_counter()
    summary = asyncio.run(main())
    costs = {
        "wall_s": time.perf_counter() - wall,
        "driver_cpu_s": time.process_time() - cpu,
        "machine_cpu_s": machine_busy_s() - busy,
    }
    if actors is not None:
        costs["actors_cpu_s"] = actors.stop()
    return summary, costs


def figures_of(summary: dict[str, Any], costs: dict[str, float], build_s: float) -> dict[str, Any]:
    elapsed = summary["elapsed_s"]
    chunks = summary["frames_in"]
    figures: dict[str, Any] = {
        "build_s": round(build_s, 2),
        "elapsed_s": round(elapsed, 3),
        "outputs": summary["outputs"],
        "outputs_per_s": round(summary["fps_out"], 1),
        "stream_chunks_per_s": round(chunks / elapsed, 1),
        "realtime_streams": int(chunks / elapsed // CHUNKS_PER_S),
        "model_calls": summary["model_calls"],
        "mean_batch": round(summary["mean_batch"], 2),
        "dropped": summary["dropped"],
        "latency_ms_p50": round(summary["latency_ms"]["p50"], 1),
        "driver_cpu_s": round(costs["driver_cpu_s"], 2),
        "driver_cpu_ms_per_chunk": round(costs["driver_cpu_s"] / chunks * 1000, 4),
        "machine_cpu_s": round(costs["machine_cpu_s"], 2),
        "machine_cpu_ms_per_chunk": round(costs["machine_cpu_s"] / chunks * 1000, 4),
    }
    engine = summary.get("engine")
    if engine:
        actor_calls = sum(w["calls"] for w in engine["workers"])
        actors = costs["actors_cpu_s"]
        figures["actors_cpu_s"] = round(actors, 2)
        figures["actors_cpu_ms_per_chunk"] = round(actors / chunks * 1000, 4)
        rest = costs["machine_cpu_s"] - costs["driver_cpu_s"] - actors
        figures["rest_cpu_ms_per_chunk"] = round(rest / chunks * 1000, 4)
        figures["engine_calls"] = engine["calls"]
        figures["actor_calls"] = actor_calls
        figures["mean_batch_per_actor_call"] = round(chunks / max(actor_calls, 1), 2)
        figures["streams_per_actor"] = {w["name"]: w["streams_served"] for w in engine["workers"]}
    return figures


def ray_overhead(local: dict[str, Any], ray: dict[str, Any]) -> dict[str, Any]:
    extra = ray["elapsed_s"] - local["elapsed_s"]
    return {
        "overhead_ms_per_engine_call": round(extra / ray["engine_calls"] * 1000, 2),
        "overhead_ms_per_actor_call": round(extra / ray["actor_calls"] * 1000, 2),
        "overhead_ms_per_stream_chunk": round(extra / ray["outputs"] * 1000, 4),
    }


def round_trips(handle: Any, calls: int) -> dict[str, float]:
    """Mean ms of a no-op call (``ready``), awaited one at a time: as the engine awaits
    (an asyncio future of the ref) and with ``ray.get``."""
    import ray

    async def awaited() -> float:
        await asyncio.wrap_future(handle.ready.remote().future())  # warm
        started = time.perf_counter()
        for _ in range(calls):
            await asyncio.wrap_future(handle.ready.remote().future())
        return (time.perf_counter() - started) / calls

    engine_path = asyncio.run(awaited())
    started = time.perf_counter()
    for _ in range(calls):
        ray.get(handle.ready.remote())
    blocking = (time.perf_counter() - started) / calls
    return {
        "calls": calls,
        "awaited_ms": round(engine_path * 1000, 3),
        "ray_get_ms": round(blocking * 1000, 3),
    }


def payload_costs(batch: int) -> dict[str, Any]:
    """One chunk's and one output's pickled size, and pickle + unpickle of a tick's
    ``batch`` chunks as the engine sends them (``{stream: (fresh, x [1, 512])}``, torch
    tensors) and as numpy arrays."""
    rng = np.random.default_rng(0)
    arrays = {f"s{i:04d}": rng.standard_normal((1, CHUNK), dtype=np.float32) for i in range(batch)}
    tensors = {s: (False, torch.from_numpy(a)) for s, a in arrays.items()}
    plain = {s: (False, a) for s, a in arrays.items()}

    def round_trip_s(payload: Any, repeats: int = 20) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            pickle.loads(pickle.dumps(payload, protocol=5))
            best = min(best, time.perf_counter() - started)
        return best

    torch_s, numpy_s = round_trip_s(tensors), round_trip_s(plain)
    return {
        "batch": batch,
        "chunk_bytes_raw": CHUNK * 4,
        "chunk_bytes_pickled_torch": len(pickle.dumps(torch.from_numpy(arrays["s0000"]))),
        "chunk_bytes_pickled_numpy": len(pickle.dumps(arrays["s0000"], protocol=5)),
        # what comes back per chunk: y [1, K], K = 1 (Silero's speech probability)
        "output_bytes_pickled_torch": len(pickle.dumps(torch.zeros(1, 1))),
        "output_bytes_pickled_numpy": len(pickle.dumps(np.zeros((1, 1), np.float32), protocol=5)),
        "tick_pickle_round_trip_ms_torch": round(torch_s * 1000, 3),
        "tick_pickle_round_trip_ms_numpy": round(numpy_s * 1000, 3),
        "per_chunk_us_torch": round(torch_s / batch * 1e6, 1),
        "per_chunk_us_numpy": round(numpy_s / batch * 1e6, 1),
    }


def model_costs(batch: int, seconds: float = 1.0) -> dict[str, Any]:
    """The model alone: ``batch`` streams stepped together (``ModelWorker.step``, what an
    actor runs) on this process's torch threads; and one stream's state size (raw, and
    pickled as a snapshot is sent)."""
    from streamer.cluster.worker import ModelWorker
    from streamer.models import ModelSpec

    worker = ModelWorker(ModelSpec(factory="pipelines.silero:build", path=None))
    rng = np.random.default_rng(1)
    chunks = {
        f"s{i:04d}": (True, torch.from_numpy(rng.standard_normal((1, CHUNK), dtype=np.float32)))
        for i in range(batch)
    }
    worker.step(chunks)
    chunks = {s: (False, x) for s, (_, x) in chunks.items()}
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        worker.step(chunks)
        calls += 1
    per_call = (time.perf_counter() - started) / calls
    _, snapshots = worker.step(chunks, (), ["s0000"])  # a snapshot as an actor sends it
    state = snapshots["s0000"]
    return {
        "batch": batch,
        "torch_threads": torch.get_num_threads(),
        "ms_per_call": round(per_call * 1000, 3),
        "ms_per_chunk": round(per_call / batch * 1000, 4),
        "state_bytes_raw": sum(t.numel() * t.element_size() for t in state.tensors),
        "state_bytes_pickled": len(pickle.dumps(state)),
        # the store's own state is a view into its batch's tensors: pickled, it carries
        # the whole batch (what a snapshot was before the worker copied it)
        "state_view_bytes_pickled": len(pickle.dumps(worker.store.get("s0000"))),
    }


class FirstOutputs:
    """A sink noting, once armed, when each watched stream's first output stepped after
    the arming arrives (``time.monotonic()``); it takes blocks as the JSONL sink does."""

    name = "sink:first-outputs"
    takes_blocks = True

    def __init__(self) -> None:
        self.after: dict[str, int] = {}  # stream -> first output index stepped after
        self.seen: dict[str, float] = {}

    def arm(self, after: dict[str, int]) -> None:
        self.after = after

    def _note(self, streams: Sequence[str], starts: Sequence[int]) -> None:
        if not self.after:
            return
        now = time.monotonic()
        for stream, start in zip(streams, starts, strict=True):
            after = self.after.get(stream)
            if after is not None and start >= after and stream not in self.seen:
                self.seen[stream] = now

    async def send(self, output: Output) -> None:
        self._note([output.stream], [output.start])

    async def send_many(self, outputs: Sequence[Output | OutputBlock]) -> None:
        for item in outputs:
            if isinstance(item, OutputBlock):
                self._note(item.streams, item.starts)
            else:
                self._note([item.stream], [item.start])

    async def aclose(self) -> None:
        return None


def failover(
    streams: int, seconds: float, out: Path, kill_after: int, queue: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The 2-actor run with one actor killed after ``kill_after`` ticks."""
    import ray

    started = time.perf_counter()
    pipeline = build(streams, seconds, out, "ray", workers=2, queue=queue)
    build_s = time.perf_counter() - started
    capture = FirstOutputs()
    assert pipeline.deliveries is not None
    pipeline = dataclasses.replace(
        pipeline,
        sinks=[*pipeline.sinks, capture],
        deliveries=[*pipeline.deliveries, Delivery()],
    )
    engine = engine_of(pipeline)
    stepped: dict[str, int] = {}  # steps whose outputs the engine returned, per stream
    step = engine.step

    async def counted(chunks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ys: dict[str, torch.Tensor] = await step(chunks)
        for stream, x in chunks.items():
            stepped[stream] = stepped.get(stream, 0) + int(x.shape[0])
        return ys

    engine.step = counted
    kill: dict[str, Any] = {}

    async def meddle(engine: Any) -> None:
        while engine.calls < kill_after:  # noqa: ASYNC110 - the engine's own counter
            await asyncio.sleep(0.001)
        held = engine.held()
        name = sorted(set(held.values()))[0]
        moved = sorted(s for s, holder in held.items() if holder == name)
        capture.arm({s: stepped.get(s, 0) for s in moved})
        kill.update(name=name, moved=moved, at=time.monotonic(), tick=engine.calls)
        ray.kill(engine.actor(name), no_restart=True)

    summary, costs = run(pipeline, meddle)
    report = summary["engine"]
    moved = kill["moved"]
    delays = [capture.seen[s] - kill["at"] for s in moved if s in capture.seen]
    first = report["failovers"][0] if report["failovers"] else {}
    figures = {
        "kill_after_engine_calls": kill["tick"],
        "killed": kill["name"],
        "moved_streams": len(moved),
        "moved_streams_with_output_after_kill": len(delays),
        "kill_to_first_output_s": round(min(delays), 3) if delays else None,
        "kill_to_first_output_per_moved_stream_s": dist(delays),
        "engine_outage_s": first.get("outage_s"),
        "engine_replayed_chunks": report["replayed_chunks"],
        "engine_failovers": len(report["failovers"]),
        "snapshot_every": engine.options.snapshot_every,
        "deadline_s": engine.options.deadline_s,
        "run": figures_of(summary, costs, build_s),
    }
    return figures, summary


def per_stream(path: Path) -> dict[str, list[tuple[int, str, float]]]:
    streams: dict[str, list[tuple[int, str, float]]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            r = json.loads(line)
            streams.setdefault(r["stream"], []).append(
                (r["start"], r["label"], r["scores"]["speech"])
            )
    return streams


def compare(got: Path, want: Path) -> dict[str, Any]:
    """Whether ``got`` has, per stream, the outputs of ``want`` (scores to 1e-5)."""
    a, b = per_stream(got), per_stream(want)
    same = sorted(a) == sorted(b) and all(
        [(i, label) for i, label, _ in a[s]] == [(i, label) for i, label, _ in b[s]] for s in b
    )
    diff = max(
        (abs(x[2] - y[2]) for s in b if s in a for x, y in zip(a[s], b[s], strict=False)),
        default=0.0,
    )
    return {"equal": bool(same and diff <= 1e-5), "max_abs_score_diff": float(f"{diff:.3g}")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams")
    parser.add_argument("--seconds", type=float, default=1.5, help="audio per stream")
    parser.add_argument("--kill-after", type=int, default=20, help="failover: ticks before")
    parser.add_argument("--round-trips", type=int, default=200, help="no-op calls timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the driver")
    parser.add_argument("--queue", type=int, help="[run] queue: the edges' capacity")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # as an actor's (Ray gives each 1)
    os.chdir(ROOT)  # the actors import the model's factory from the driver's folder
    load_before = loadavg()
    began = time.perf_counter()
    import ray

    log(f"ray: starting a local Ray ({ray.__version__})")
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    figures: dict[str, Any] = {
        "streams": args.streams,
        "seconds_per_stream": args.seconds,
        "chunks": args.streams * -(-round(args.seconds * RATE) // CHUNK),
        "ray": ray.__version__,
        "queue": args.queue,  # [run] queue (None: the pipeline's default)
    }
    try:
        with tempfile.TemporaryDirectory(prefix="bench_ray_") as name:
            tmp = Path(name)
            runs: dict[str, dict[str, Any]] = {}
            for label, engine, workers in (
                ("in_process", "local", 1),
                ("ray_1_actor", "ray", 1),
                ("ray_2_actors", "ray", 2),
            ):
                log(f"ray: {label}, {args.streams} streams x {args.seconds:g} s")
                started = time.perf_counter()
                out = tmp / f"{label}.jsonl"
                pipeline = build(args.streams, args.seconds, out, engine, workers, args.queue)
                build_s = time.perf_counter() - started
                if engine == "ray" and workers == 1:
                    handle = engine_of(pipeline).actor("model-0")
                    figures["actor_round_trip"] = round_trips(handle, args.round_trips)
                summary, costs = run(pipeline)
                runs[label] = figures_of(summary, costs, build_s)
                log(
                    f"ray: {label}: {runs[label]['elapsed_s']:.1f} s,"
                    f" {runs[label]['stream_chunks_per_s']:.0f} chunks/s"
                )
            local = runs["in_process"]
            for label in ("ray_1_actor", "ray_2_actors"):
                runs[label].update(ray_overhead(local, runs[label]))
            figures.update(runs)
            rate = local["stream_chunks_per_s"]
            figures["throughput_ratio_1_actor"] = round(
                runs["ray_1_actor"]["stream_chunks_per_s"] / rate, 3
            )
            figures["throughput_ratio_2_actors"] = round(
                runs["ray_2_actors"]["stream_chunks_per_s"] / rate, 3
            )
            figures["outputs_equal_in_process"] = {
                label: compare(tmp / f"{label}.jsonl", tmp / "in_process.jsonl")
                for label in ("ray_1_actor", "ray_2_actors")
            }
            log(f"ray: failover, 2 actors, one killed after {args.kill_after} ticks")
            out = tmp / "failover.jsonl"
            failed, _ = failover(args.streams, args.seconds, out, args.kill_after, args.queue)
            failed["outputs_equal_in_process"] = compare(
                tmp / "failover.jsonl", tmp / "in_process.jsonl"
            )
            figures["failover"] = failed
            figures["failover_s"] = failed["kill_to_first_output_s"]
    finally:
        ray.shutdown()
    # what one Ray call carries; what one model call steps
    figures["payload"] = payload_costs(
        max(1, round(runs["ray_1_actor"]["mean_batch_per_actor_call"]))
    )
    model = model_costs(max(1, round(local["mean_batch"])))
    figures["model_alone"] = model
    driver = local["driver_cpu_ms_per_chunk"] - model["ms_per_chunk"]
    figures["driver_ms_per_chunk_est"] = round(driver, 4)
    figures["driver_chunks_per_cpu_s_est"] = round(1000 / driver) if driver > 0 else None
    figures["wall_s"] = round(time.perf_counter() - began, 1)
    emit(
        "ray",
        figures,
        TARGETS,
        {},
        load_before,
        measured={},
        notes=(
            "one machine: the driver, the Ray daemons and the actors share its cores (Ray"
            " told 4 CPUs; each actor 1 CPU and 1 torch thread; the in-process engine"
            " --threads, default 1). Sources unpaced, so chunks/s is capacity."
            " overhead per call = (elapsed_ray - elapsed_in_process) / calls; the engine"
            " sends each chunk as its own torch tensor, whose pickling dominates (payload)."
            " driver_ms_per_chunk_est = the in-process run's CPU per chunk less the model"
            " alone's (model_alone); failover_s = kill to the first output, at a sink, of a"
            " moved stream stepped after the kill"
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
