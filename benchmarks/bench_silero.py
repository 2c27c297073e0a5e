"""Silero VAD through streamer against Silero's own model stepped chunk by chunk, as JSON.

Run: ``.venv/bin/python benchmarks/bench_silero.py [--minutes M] [--streams N] [--threads T]``
(about a minute with the defaults, on a quiet machine).

1. Offline: ``--minutes`` of 16 kHz speech (``tests/data/speech_en_16k.wav`` tiled) through
   ``pipelines/audio_tagging.toml`` (``build_pipeline`` in-process, ``[run] mode =
   "offline"``, a ``CallbackSink`` keeping the outputs; again with the file's JSONL sink
   writing to a temporary file), against the bare loop Silero's own
   utilities run: its TorchScript model (``load_jit()``), ``reset_states()``, then
   ``model(chunk [1, 512], 16000)`` for each 512-sample chunk. Target: streamer at least
   5x the bare loop's speed.
2. Concurrent streams: ``--streams`` different cuts of the speech, one source each, in one
   ``online`` run as fast as the sources read (one model, the per-stream LSTM state and
   context kept by streamer, the streams' chunks batched), against as many separate
   TorchScript model objects, each stepped with its own stream's chunk in turn (what a
   per-connection VAD object does, e.g. pipecat's). Aggregate throughput (chunks/s) and the
   resident memory each adds (``VmRSS`` from ``/proc/self/status``, sampled during the run,
   the peak over the figure before). A 16 kHz stream needs 31.25 chunks/s, so throughput /
   31.25 is the number of streams held in real time on this machine's cores.

Both sides run on the same torch threads (``--threads``). Ratios are against the baselines
run in the same process; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import emit, loadavg, log  # noqa: E402

from pipelines.silero import CHUNK, SAMPLE_RATE, load_jit  # noqa: E402
from streamer.build import Overrides, apply_overrides, build_pipeline  # noqa: E402
from streamer.config import load_config  # noqa: E402
from streamer.frames import Output  # noqa: E402
from streamer.sinks import CallbackSink  # noqa: E402

PIPELINE = ROOT / "pipelines" / "audio_tagging.toml"
SPEECH = ROOT / "tests" / "data" / "speech_en_16k.wav"
CHUNKS_PER_S = SAMPLE_RATE / CHUNK  # 31.25: what one real-time 16 kHz stream needs
TARGETS = {"offline_speedup_vs_bare_loop_min": 5.0}


def rss_mb() -> float:
    """This process's resident memory (MB), from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """Samples ``rss_mb()`` every 20 ms on a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def run_streamer(
    uris: list[str], mode: str, jsonl: Path | None = None
) -> tuple[float, float, dict[str, Any], list[Output]]:
    """``pipelines/audio_tagging.toml`` on ``uris``, into a JSONL file at ``jsonl`` or (when
    None) a ``CallbackSink`` that keeps the outputs: (build s, run s, summary, outputs)."""
    out = str(jsonl or Path(tempfile.gettempdir()) / "unused.jsonl")
    overrides = Overrides(sources=tuple(uris), mode=mode, out=out, quiet=True)
    config = apply_overrides(load_config(PIPELINE), overrides)
    outputs: list[Output] = []
    started = time.perf_counter()
    pipeline = build_pipeline(config)  # opens the sources, loads the model, dry step
    if jsonl is None:  # the same pipeline, its one (JSONL) sink swapped before the run
        sink = CallbackSink(outputs.append)  # its default delivery, not the JSONL sink's
        pipeline = dataclasses.replace(pipeline, sinks=[sink], deliveries=None)
    built = time.perf_counter()
    summary = asyncio.run(pipeline.run())
    return built - started, time.perf_counter() - built, summary, outputs


def chunks_of(audio: np.ndarray) -> torch.Tensor:
    """``[N, 512]`` chunks, the last zero-padded (as streamer's source pads it)."""
    count = -(-len(audio) // CHUNK)
    padded = np.zeros(count * CHUNK, dtype=np.float32)
    padded[: len(audio)] = audio
    return torch.from_numpy(padded.reshape(count, CHUNK))


def bench_offline(speech: np.ndarray, minutes: float, tmp: Path) -> dict[str, Any]:
    audio = np.tile(speech, int(np.ceil(minutes * 60 * SAMPLE_RATE / len(speech))))
    audio = audio[: round(minutes * 60 * SAMPLE_RATE)]
    path = tmp / "speech_tiled.wav"
    soundfile.write(path, audio, SAMPLE_RATE)
    chunks = chunks_of(audio)

    model = load_jit()
    model.reset_states()
    started = time.perf_counter()
    with torch.inference_mode():
        bare = [float(model(chunk.unsqueeze(0), SAMPLE_RATE)) for chunk in chunks]
    bare_s = time.perf_counter() - started

    build_s, run_s, summary, outputs = run_streamer([str(path)], "offline")
    ours = [o.scores["speech"] for o in outputs if o.kind == "frame"]
    segments = sum(o.kind == "segment" and o.label == "speech" for o in outputs)
    _, jsonl_s, _, _ = run_streamer([str(path)], "offline", tmp / "offline.jsonl")
    audio_s = len(audio) / SAMPLE_RATE
    return {
        "audio_s": audio_s,
        "chunks": len(chunks),
        "bare_loop_s": round(bare_s, 3),
        "streamer_run_s": round(run_s, 3),
        "streamer_build_s": round(build_s, 3),
        "speedup_vs_bare_loop": round(bare_s / run_s, 2),
        "speedup_incl_build": round(bare_s / (run_s + build_s), 2),
        "streamer_run_s_jsonl_sink": round(jsonl_s, 3),
        "speedup_jsonl_sink": round(bare_s / jsonl_s, 2),
        "streamer_x_realtime": round(audio_s / run_s, 1),
        "bare_loop_x_realtime": round(audio_s / bare_s, 1),
        "speech_segments": int(segments),
        # the same probabilities, so the two loops did the same work
        "max_abs_diff_vs_bare_loop": float(np.abs(np.array(ours) - np.array(bare)).max()),
        "dropped": summary["dropped"],
    }


def streamer_streams(paths: list[str], threads: int) -> dict[str, Any]:
    """Child process: all ``paths`` in one online run; time and peak RSS over the start."""
    torch.set_num_threads(threads)
    before = rss_mb()
    with PeakRss() as peak:
        build_s, run_s, summary, _ = run_streamer(paths, "online")
    return {
        "run_s": run_s,
        "build_s": build_s,
        "rss_added_mb": peak.peak - before,
        "mean_batch": summary.get("mean_batch"),
        "model_calls": summary.get("model_calls"),
        "dropped": summary["dropped"],
    }


def separate_models(paths: list[str], threads: int) -> dict[str, Any]:
    """Child process: one TorchScript model object per stream, each stepped in turn with
    its own stream's next chunk; time and peak RSS over the start (models included)."""
    torch.set_num_threads(threads)
    data = [chunks_of(soundfile.read(path, dtype="float32")[0]) for path in paths]
    before = rss_mb()
    with PeakRss() as peak:
        started = time.perf_counter()
        models = [load_jit() for _ in paths]
        for model in models:
            model.reset_states()
        loaded = time.perf_counter()
        with torch.inference_mode():
            for t in range(len(data[0])):
                for model, chunks in zip(models, data, strict=True):
                    model(chunks[t].unsqueeze(0), SAMPLE_RATE)
        done = time.perf_counter()
    return {"run_s": done - loaded, "load_s": loaded - started, "rss_added_mb": peak.peak - before}


def in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a fresh process, so that its memory is measured from a clean start."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return cast(dict[str, Any], pool.apply(fn, args))


def bench_streams(
    speech: np.ndarray, streams: int, seconds: float, threads: int, tmp: Path
) -> dict[str, Any]:
    length = round(seconds * SAMPLE_RATE)
    starts = [round(k * (len(speech) - length) / max(1, streams - 1)) for k in range(streams)]
    paths = []
    for k, start in enumerate(starts):
        paths.append(str(tmp / f"stream{k:03d}.wav"))
        soundfile.write(paths[-1], speech[start : start + length], SAMPLE_RATE)
    total = streams * -(-length // CHUNK)
    ours = in_child(streamer_streams, paths, threads)
    theirs = in_child(separate_models, paths, threads)
    rate_ours, rate_theirs = total / ours["run_s"], total / theirs["run_s"]
    return {
        "streams": streams,
        "seconds_per_stream": seconds,
        "chunks": total,
        "streamer": {
            "run_s": round(ours["run_s"], 3),
            "build_s": round(ours["build_s"], 3),
            "chunks_per_s": round(rate_ours),
            "realtime_streams": int(rate_ours // CHUNKS_PER_S),
            "mean_batch": ours["mean_batch"],
            "model_calls": ours["model_calls"],
            "dropped": ours["dropped"],
            "rss_added_mb": round(ours["rss_added_mb"], 1),
        },
        "separate_models": {
            "run_s": round(theirs["run_s"], 3),
            "load_s": round(theirs["load_s"], 3),
            "chunks_per_s": round(rate_theirs),
            "realtime_streams": int(rate_theirs // CHUNKS_PER_S),
            "rss_added_mb": round(theirs["rss_added_mb"], 1),
        },
        "throughput_ratio": round(rate_ours / rate_theirs, 2),
        "rss_ratio": round(theirs["rss_added_mb"] / max(ours["rss_added_mb"], 0.1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="offline part: audio length")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per stream")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    speech, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == SAMPLE_RATE and speech.ndim == 1
    load_before = loadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_silero_") as name:
        tmp = Path(name)
        log(f"silero: offline, {args.minutes:g} min")
        offline = bench_offline(speech, args.minutes, tmp)
        log(f"silero: {args.streams} concurrent streams")
        concurrent = bench_streams(speech, args.streams, args.seconds, args.threads, tmp)
    measured = {"offline_speedup_vs_bare_loop_min": offline["speedup_vs_bare_loop"]}
    figures = {
        "offline": offline,
        "concurrent_streams": concurrent,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(
        "silero",
        figures,
        TARGETS,
        {k: v >= TARGETS[k] for k, v in measured.items()},
        load_before,
        measured=dict(measured),
        notes=(
            "sinks: a CallbackSink keeping the outputs, and (offline, apart) the JSONL sink."
            " offline: streamer's run time excludes build (source open, model load, dry"
            " step), given apart; the bare loop is Silero's TorchScript model, one"
            " model(chunk, 16000) call per 512-sample chunk. concurrent: streamer online,"
            " sources as fast as read (not paced), so chunks/s is capacity; realtime_streams"
            " = chunks_per_s / 31.25 (one torch thread plus the event loop's: about 2 cores)."
            " Each concurrent side runs in a fresh process; RSS added = peak VmRSS during"
            " build/load and run minus before (streamer's: its model, sources, queues and"
            " the outputs kept; the baseline's: its model objects)"
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
