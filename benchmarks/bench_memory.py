"""Memory: a one-hour recording replayed as fast as possible through the Silero pipeline.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--minutes M]`` (about 1.5 minutes for
the hour on a quiet 2-core machine).

A recording of ``--minutes`` (default 60) of real speech is written once into a temporary
folder in streamer's recording format (``RecordingWriter``: ``tests/data/speech_en_16k.wav``,
60 s, tiled; 16 kHz mono float32, 512-sample frames, ``captured == pts``; 230 MB for the
hour), then ``pipelines/audio_tagging.toml`` (Silero VAD, its own ``online`` mode and its
JSONL sink, writing to the temporary folder; ``--pace fast``, ``--quiet``) runs over it
in-process through ``build_pipeline``. Resident memory is sampled with the media time
every 30 s of media (a metrics listener reading ``/proc/self/status``: ``VmRSS``, and its
parts ``RssAnon`` (heap) and ``RssFile`` (file pages, the recording's memory map among
them)). Target: ``VmRSS`` at the end minus ``VmRSS`` at minute 5 < 50 MB. The slope after
minute 5 (least squares, MB per hour of media) is given too, so a shorter run can be
extrapolated to an hour (and is said to be one).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from benchlib import ROOT, emit, loadavg, log

from streamer.build import Overrides, apply_overrides, build_pipeline
from streamer.config import load_config
from streamer.frames import Frame, StreamEnd, StreamStart
from streamer.metrics import Metrics
from streamer.recording import RecordingWriter

PIPELINE = ROOT / "pipelines" / "audio_tagging.toml"
SPEECH = ROOT / "tests" / "data" / "speech_en_16k.wav"
RATE, CHUNK = 16000, 512
SAMPLE_EVERY_S = 30.0
FROM_MINUTE = 5.0
TARGETS = {"rss_growth_from_minute_5_mb_max": 50.0}


def status_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process (MB)."""
    wanted = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    found: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in wanted:
            found[wanted[key]] = int(line.split()[1]) / 1024
    return found


def make_recording(path: Path, minutes: float) -> int:
    """``minutes`` of the speech clip, tiled, as a recording; returns its frame count."""
    speech, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == RATE and speech.ndim == 1
    total = round(minutes * 60 * RATE)
    frames = -(-total // CHUNK)
    # whole frames of the clip, repeated: a frame never straddles the clip's end
    per_clip = len(speech) // CHUNK
    clip = speech[: per_clip * CHUNK].reshape(per_clip, CHUNK, 1)
    with RecordingWriter(path, source=f"{SPEECH.name} tiled to {minutes:g} min") as writer:
        meta = {"channels": 1, "chunk": CHUNK, "samples": frames * CHUNK}
        writer.add(StreamStart("speech", "audio", float(RATE), meta))
        for i in range(frames):
            pts = i * CHUNK / RATE
            writer.add(Frame("speech", i, pts, pts, clip[i % per_clip], float(RATE)))
        writer.add(StreamEnd("speech", frames))
    return frames


def run(recording: Path, out: Path) -> tuple[list[tuple[float, dict[str, float]]], dict[str, Any]]:
    """The pipeline over ``recording``; (media seconds, memory) samples and the summary."""
    overrides = Overrides(sources=(str(recording),), out=str(out), pace="fast", quiet=True)
    config = apply_overrides(load_config(PIPELINE), overrides)
    pipeline = build_pipeline(config)
    samples: list[tuple[float, dict[str, float]]] = [(0.0, status_mb())]
    every = round(SAMPLE_EVERY_S * RATE / CHUNK)

    def sample(metrics: Metrics) -> None:
        if metrics.frames_in % every == 0:
            samples.append((metrics.frames_in * CHUNK / RATE, status_mb()))

    assert pipeline.metrics is not None
    pipeline.metrics.listeners.append(sample)
    summary = asyncio.run(pipeline.run())
    frames_in = summary["frames_in"]
    samples.append((frames_in * CHUNK / RATE, status_mb()))
    return samples, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as name:
        tmp = Path(name)
        log(f"memory: writing a {args.minutes:g}-minute recording")
        frames = make_recording(tmp / "hour", args.minutes)
        written = time.perf_counter()
        log("memory: running pipelines/audio_tagging.toml over it")
        samples, summary = run(tmp / "hour", tmp / "out.jsonl")
        ran = time.perf_counter() - written
        with (tmp / "out.jsonl").open("rb") as file:
            lines = sum(1 for _ in file)
    media = np.array([t for t, _ in samples])
    rss = np.array([m["rss"] for _, m in samples])
    after = media >= FROM_MINUTE * 60 - 1e-6
    growth = slope = peak_growth = None
    at5: dict[str, float] = {}
    if after.any() and after.sum() >= 2:
        first = int(np.flatnonzero(after)[0])
        at5 = samples[first][1]
        growth = float(rss[-1] - rss[first])
        peak_growth = float(rss[after].max() - rss[first])
        slope = float(np.polyfit(media[after] / 3600.0, rss[after], 1)[0])
    end = samples[-1][1]
    figures = {
        "recording_minutes": args.minutes,
        "frames": frames,
        "jsonl_lines": lines,
        "dropped": summary["dropped"],
        "run_s": round(ran, 1),
        "x_realtime": round(args.minutes * 60 / ran, 1),
        "rss_mb": {
            "start": round(samples[0][1]["rss"], 1),
            "minute_5": round(at5["rss"], 1) if at5 else None,
            "end": round(end["rss"], 1),
        },
        "anon_mb": {
            "minute_5": round(at5["anon"], 1) if at5 else None,
            "end": round(end["anon"], 1),
        },
        "file_mb": {
            "minute_5": round(at5["file"], 1) if at5 else None,
            "end": round(end["file"], 1),
        },
        "rss_growth_from_minute_5_mb": None if growth is None else round(growth, 1),
        "rss_peak_growth_from_minute_5_mb": None if peak_growth is None else round(peak_growth, 1),
        "rss_slope_after_minute_5_mb_per_hour": None if slope is None else round(slope, 1),
        "extrapolated_to_one_hour": args.minutes < 60,
        "samples": [
            [round(t, 1), round(m["rss"], 1), round(m["anon"], 1), round(m["file"], 1)]
            for t, m in samples
        ],
        "samples_columns": ["media_s", "rss_mb", "anon_mb", "file_mb"],
        "wall_s": round(time.perf_counter() - began, 1),
    }
    measured = growth
    if growth is not None and slope is not None and args.minutes < 60:
        measured = max(growth, slope * (60 - FROM_MINUTE) / 60)  # the hour, extrapolated
        figures["rss_growth_extrapolated_mb"] = round(measured, 1)
    bound = TARGETS["rss_growth_from_minute_5_mb_max"]
    emit(
        "memory",
        figures,
        TARGETS,
        {"rss_growth_from_minute_5_mb_max": None if measured is None else measured < bound},
        load_before,
        measured={
            "rss_growth_from_minute_5_mb_max": None if measured is None else round(measured, 1)
        },
        notes="in-process build_pipeline of audio_tagging.toml (online, its JSONL sink),"
        " pace fast; VmRSS sampled every 30 s of media by a metrics listener",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
