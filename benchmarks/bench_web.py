"""The live view's cost: a pipeline's throughput with the web sink and 20 connected
browsers' worth of clients, against the same pipeline without it, as JSON.

Run: ``.venv/bin/python benchmarks/bench_web.py [--seconds S] [--clients N] [--repeats R]``
(about 3 min with the defaults, on a quiet machine).

The pipeline: ``pipelines/webcam_labels.toml`` (the motion labeller: pixels front-end, a CNN
and a GRU, torch on one thread) on the moving synthetic video
(``synthetic:shapes?size=320x240&fps=30``, ``S`` seconds of it) in online mode at the fast
pace (lossless, as fast as it goes), writing JSONL; throughput is its ``fps_out`` (outputs
a second between the first and the last). With the web sink (``--serve 127.0.0.1:0``,
defaults: 15 fps per stream, JPEG quality 80), ``N`` clients in ANOTHER process (so
that they do not share the pipeline's event loop; they do share the machine's cores, at
the lowest priority, ``nice 19``: real browsers run on other machines) each read the MJPEG
stream and the WebSocket to the run's end; they connect before the run starts (the
sink's socket listens from the build on).

The cost measured is that of browsers that are connected, in steady state: the defaults
make each run about 15 s long, so the one-off cost of 20 connections arriving at once
(their handshakes and each page's first snapshot, about 0.15 s of the run's loop) weighs
about 1 %; in runs of under 2 s (the earlier defaults) it weighed several per cent.
``R`` pairs of runs, one of each, in turn first; the figure is the median of the pairs'
ratios (a pair's two runs see the same moment of the machine's load); the best of each
and their ratio are reported too. Also reported: the CPU time of the pipeline's process
per output with and without (what the view costs the run's own process), and the share
of a core the stand-in clients took (real browsers run on other machines; these take it
from the cores the pipeline uses).

A second measure, ``connected_windows``: one long run with the view (``--toggle-seconds``
of video, about 45 s), the clients connected for ``--window`` seconds, then none for as
long, ``--pairs`` times (6; 0 leaves it out, as ``make bench`` does to stay within its
5 minutes); each connected window's output rate (its first and last 0.5 s left out:
20 connections arriving or leaving) against the mean of the two windows without clients
either side of it, and the median of those ratios. Slow drifts of the machine cancel out,
so this is the steadier figure for what connected browsers cost; the sink serves in both
kinds of window, so its own bookkeeping of outputs is not in it (the paired runs hold it).

Target: the clients cost < 5% of the throughput (median paired ratio with / without
>= 0.95). Also reported: the frames and WebSocket messages the clients got, and the same
comparison for the built-in brightness thresholder (a model that costs nearly nothing, so
the view's own per-output work shows most; no target; ``--brightness-repeats 0`` leaves
it out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import check, emit, loadavg, log  # noqa: E402

TARGETS = {"with_view_vs_without_min": 0.95}
PIPELINE = ROOT / "pipelines" / "webcam_labels.toml"
SOURCE = "synthetic:shapes?size=320x240&fps=30&duration={seconds}"


# -- the clients' process ------------------------------------------------------------------
async def one_client(port: int, stream: str) -> dict[str, int]:
    """Read the MJPEG stream and the WebSocket of the server on ``port`` to their end."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    counts = {"frames": 0, "ws_messages": 0, "bytes": 0}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def video() -> None:
            async with session.get(f"{base}/video/{stream}.mjpg") as response:
                async for chunk in response.content.iter_any():
                    counts["bytes"] += len(chunk)
                    counts["frames"] += chunk.count(b"Content-Type: image/jpeg")

        async def ws() -> None:
            async with session.ws_connect(f"{base}/ws") as socket:
                async for _message in socket:
                    counts["ws_messages"] += 1

        results = await asyncio.gather(video(), ws(), return_exceptions=True)
        counts["errors"] = sum(isinstance(r, BaseException) for r in results)
    return counts


async def toggled_clients(port: int, count: int, stream: str, window: float, pairs: int) -> None:
    """``pairs`` times: ``count`` clients connected for ``window`` seconds, then none for
    ``window`` seconds; one JSON line of the windows (monotonic times: the same clock as
    the pipeline's process on Linux) on stdout."""
    windows: list[tuple[float, float]] = []
    for _ in range(pairs):
        start = time.monotonic()
        tasks = [asyncio.ensure_future(one_client(port, stream)) for _ in range(count)]
        await asyncio.sleep(window)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        windows.append((start, time.monotonic()))
        await asyncio.sleep(window)
    print(json.dumps({"connected": windows}), flush=True)


async def clients_main(count: int, stream: str) -> None:
    """For each port read on stdin: ``count`` clients until the server ends; one JSON
    line of what they got on stdout."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        if line.startswith("toggle"):
            _, port_text, window, pairs = line.split()
            await toggled_clients(int(port_text), count, stream, float(window), int(pairs))
            continue
        port = int(line)
        cpu = time.process_time()
        got = await asyncio.gather(*(one_client(port, stream) for _ in range(count)))
        print(json.dumps({"clients": got, "cpu_s": time.process_time() - cpu}), flush=True)


# -- the pipeline's process ------------------------------------------------------------------
def build_run(model: str, seconds: float, serve: bool, out: Path) -> Any:
    """The pipeline of one run: ``model`` (``motion``: the webcam labeller, else the
    brightness thresholder) on ``seconds`` of the synthetic video, online, as fast as it
    goes, to ``out``; with the view on a free port when ``serve``."""
    from streamer.build import Overrides, apply_overrides, build_pipeline
    from streamer.config import load_config, parse_config

    source = SOURCE.format(seconds=seconds)
    if model == "motion":
        config = load_config(str(PIPELINE))
    else:
        config = parse_config({"source": {"uri": source}, "model": {"builtin": "brightness"}}, "-")
    overrides = Overrides(
        sources=(source,),
        mode="online",
        pace="fast",
        quiet=True,
        out=str(out),
        serve="127.0.0.1:0" if serve else None,
    )
    return build_pipeline(apply_overrides(config, overrides))


def view_server(pipeline: Any) -> Any:
    """The web sink's server of ``pipeline``."""
    return next(s for s in pipeline.sinks if hasattr(s, "server")).server


def run_once(
    model: str, seconds: float, serve: bool, out: Path, clients: subprocess.Popen[str] | None
) -> dict[str, Any]:
    pipeline = build_run(model, seconds, serve, out)
    got: list[dict[str, int]] = []
    clients_cpu = 0.0
    if serve:
        assert clients is not None and clients.stdin is not None and clients.stdout is not None
        server = view_server(pipeline)
        clients.stdin.write(f"{server.port}\n")
        clients.stdin.flush()
        time.sleep(0.5)  # they connect to the listening socket; served once the run starts
    cpu = time.process_time()
    summary = asyncio.run(pipeline.run())
    cpu = time.process_time() - cpu
    if serve:
        assert clients is not None and clients.stdout is not None
        reply = json.loads(clients.stdout.readline())
        got, clients_cpu = reply["clients"], reply["cpu_s"]
    return {
        "fps_out": summary["fps_out"],
        "outputs": summary["outputs"],
        "elapsed_s": round(summary["elapsed_s"], 3),
        "cpu_ms_per_output": round(1000 * cpu / max(1, summary["outputs"]), 4),
        # the clients' process's CPU per second of the run: what the stand-in browsers
        # take from the cores the pipeline shares with them (real ones run elsewhere)
        "clients_cpu_share": round(clients_cpu / max(1e-9, summary["elapsed_s"]), 3),
        "clients": got,
    }


def compare(
    model: str, seconds: float, repeats: int, out: Path, clients: subprocess.Popen[str]
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for repeat in range(repeats):
        order = ["without", "with"] if repeat % 2 == 0 else ["with", "without"]
        for kind in order:
            result = run_once(model, seconds, kind == "with", out, clients)
            runs[kind].append(result)
            log(f"{model} {kind} view: {result['fps_out']:.1f} outputs/s")
    best = {kind: max(r["fps_out"] for r in results) for kind, results in runs.items()}
    pairs = [
        with_["fps_out"] / without["fps_out"]
        for with_, without in zip(runs["with"], runs["without"], strict=True)
    ]
    seen = runs["with"][-1]["clients"]
    return {
        "fps_without_view": round(best["without"], 1),
        "fps_with_view": round(best["with"], 1),
        "ratio": round(statistics.median(pairs), 4),
        "ratio_pairs": [round(r, 4) for r in pairs],
        "ratio_of_best": round(best["with"] / best["without"], 4),
        "outputs": runs["without"][0]["outputs"],
        "fps_runs": {k: [round(r["fps_out"], 1) for r in v] for k, v in runs.items()},
        "elapsed_s_runs": {k: [r["elapsed_s"] for r in v] for k, v in runs.items()},
        # CPU time of the pipeline's process (all its threads) per output: what the view
        # costs the run's process itself, whatever else the machine runs
        "cpu_ms_per_output": {k: min(r["cpu_ms_per_output"] for r in v) for k, v in runs.items()},
        "client_frames_min_max": [min(c["frames"] for c in seen), max(c["frames"] for c in seen)],
        "client_ws_messages_min_max": [
            min(c["ws_messages"] for c in seen),
            max(c["ws_messages"] for c in seen),
        ],
        "client_errors": sum(c.get("errors", 0) for c in seen),
        "clients_cpu_share": max(r["clients_cpu_share"] for r in runs["with"]),
    }


def connected_cost(
    seconds: float, window: float, pairs: int, out: Path, clients: subprocess.Popen[str]
) -> dict[str, Any]:
    """One long run of the motion labeller with the view; the clients connected and gone
    in turns of ``window`` seconds. Each connected window's output rate against the mean
    of the windows without clients either side of it: what connected browsers cost, with
    the machine's slow drifts cancelled (the sink serves in both)."""
    import threading

    pipeline = build_run("motion", seconds, True, out)
    assert pipeline.metrics is not None and clients.stdin is not None
    assert clients.stdout is not None
    metrics = pipeline.metrics
    server = view_server(pipeline)
    samples: list[tuple[float, int]] = []
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            samples.append((time.monotonic(), metrics.outputs))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients.stdin.write(f"toggle {server.port} {window} {pairs}\n")
    clients.stdin.flush()
    summary = asyncio.run(pipeline.run())
    running.clear()
    sampler.join()
    connected = json.loads(clients.stdout.readline())["connected"]

    def rate(t0: float, t1: float) -> float | None:
        inside = [(t, n) for t, n in samples if t0 <= t <= t1]
        if len(inside) < 4 or inside[-1][0] - inside[0][0] <= 0:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    edge = min(0.5, window / 4)  # connection set-up and tear-down left out
    ratios = []
    for start, end in connected:
        on = rate(start + edge, end - edge)
        before = rate(start - window + edge, start - edge)
        after = rate(end + edge, end + window - edge)
        if on is None or before is None or after is None:
            continue
        ratios.append(on / ((before + after) / 2))
    return {
        "media_seconds": seconds,
        "window_s": window,
        "outputs": summary["outputs"],
        "ratio": round(statistics.median(ratios), 4) if ratios else None,
        "ratios": [round(r, 4) for r in ratios],
        "stalled_clients": server.stalled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="media seconds per run (30 fps)"
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--window", type=float, default=3.0, help="seconds per window of the toggled run"
    )
    parser.add_argument(
        "--toggle-seconds",
        type=float,
        default=1000.0,
        help="media seconds of the toggled run (enough for 6 pairs of windows: ~45 s)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--brightness-repeats",
        type=int,
        default=None,
        help="pairs for the brightness thresholder (default: --repeats; 0: skipped)",
    )
    parser.add_argument(
        "--pairs", type=int, default=6, help="window pairs of the toggled run (0: skipped)"
    )
    parser.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="shapes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        # the lowest priority: real browsers run on other machines and take none of the
        # pipeline's CPU; these take only what it leaves (and so read late, as a slow
        # browser does: the view sends them fewer frames, never older ones)
        os.nice(19)
        asyncio.run(clients_main(args.clients, args.stream))
        return

    import torch

    torch.set_num_threads(1)
    load_before = loadavg()
    clients = subprocess.Popen(
        [sys.executable, __file__, "--client-process", "--clients", str(args.clients)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "out.jsonl"
            motion = compare("motion", args.seconds, args.repeats, out, clients)
            bright = args.repeats if args.brightness_repeats is None else args.brightness_repeats
            cheap = (
                compare("brightness", args.seconds * 2, bright, out, clients) if bright else None
            )
            toggled = (
                connected_cost(args.toggle_seconds, args.window, args.pairs, out, clients)
                if args.pairs
                else None
            )
    finally:
        assert clients.stdin is not None
        clients.stdin.close()
        clients.wait(30)
    figures = {
        "clients": args.clients,
        "media_seconds": args.seconds,
        "motion": motion,
        "brightness": cheap,
        "connected_windows": toggled,
    }
    measured = {"with_view_vs_without_min": motion["ratio"]}
    met = {"with_view_vs_without_min": check(motion["ratio"], 0.95, ceiling=False)}
    emit("web", figures, TARGETS, met, load_before, measured)


if __name__ == "__main__":
    main()
