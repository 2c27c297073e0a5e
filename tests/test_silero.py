"""Silero VAD as a streamer model (``pipelines/silero.py``, ``pipelines/audio_tagging.toml``).

The plain module built from the bundled TorchScript file's weights equals Silero's own
model chunk by chunk; the shipped pipeline file, run by ``streamer run`` in-process on real
speech, gives the segments of Silero's own ``get_speech_timestamps`` (its default 30 ms
speech padding included); streamer's smoothing with ``pad`` equals Silero's rules on any
speech probabilities; online equals offline; and eight streams batched together give each
what it gives alone, with the LSTM state and the 64-sample context kept per stream by
streamer.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from conftest import REPO, require
from hypothesis import given, settings
from hypothesis import strategies as st

require(importlib.util.find_spec("silero_vad") is not None, "the silero-vad package")

from pipelines.silero import (  # noqa: E402
    CHUNK,
    CONTEXT,
    SAMPLE_RATE,
    build,
    import_silero_vad,
    load_jit,
    load_module,
)
from streamer.cli import main  # noqa: E402
from streamer.frames import Output  # noqa: E402
from streamer.models.state import State  # noqa: E402
from streamer.stages.model.postprocess import Smoother  # noqa: E402

PIPELINE = REPO / "pipelines" / "audio_tagging.toml"
SPEECH = REPO / "tests" / "data" / "speech_en_16k.wav"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Segment = tuple[str, str, float, float]  # stream, label, t0, t1


# --- helpers -----------------------------------------------------------------------------


def run(tmp: Path, name: str, sources: list[Path], mode: str) -> tuple[list[dict[str, Any]], Any]:
    """``streamer run pipelines/audio_tagging.toml`` on ``sources``: (records, summary)."""
    out, metrics = tmp / f"{name}.jsonl", tmp / f"{name}.json"
    argv = ["run", str(PIPELINE), "--mode", mode, "--out", str(out), "--metrics", str(metrics)]
    for source in sources:
        argv += ["--source", str(source)]
    assert main([*argv, "-q"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return records, json.loads(metrics.read_text())


def segments(records: list[dict[str, Any]], label: str | None = "speech") -> list[Segment]:
    return [
        (r["stream"], r["label"], r["t0"], r["t1"])
        for r in records
        if r["kind"] == "segment" and (label is None or r["label"] == label)
    ]


def frames(records: list[dict[str, Any]]) -> list[tuple[str, int, str, float]]:
    return [
        (r["stream"], r["start"], r["label"], r["scores"]["speech"])
        for r in records
        if r["kind"] == "frame"
    ]


def speech_time(spans: list[tuple[float, float]]) -> float:
    return sum(t1 - t0 for t0, t1 in spans)


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def offline_online(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("silero")
    return run(tmp, "offline", [SPEECH], "offline")[0], run(tmp, "online", [SPEECH], "online")[0]


# --- the module --------------------------------------------------------------------------


def test_import_keeps_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import silero_vad`` sets torch's threads to 1; ``import_silero_vad`` restores them
    (the package is imported afresh here, whatever imported it before)."""
    for name in [n for n in sys.modules if n == "silero_vad" or n.startswith("silero_vad.")]:
        monkeypatch.delitem(sys.modules, name)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        module = import_silero_vad()
        assert torch.get_num_threads() == 3
        assert "silero_vad.model" in sys.modules and callable(module.get_speech_timestamps)
    finally:
        torch.set_num_threads(threads)


def test_module_equals_torchscript_chunk_by_chunk() -> None:
    """Random chunks of 3 streams, state carried: ``chunk``, ``forward`` over pieces of
    several steps and the streamer model (context kept in its state) all equal Silero's."""
    module, jit = load_module(), load_jit()
    model = build()
    generator = torch.Generator().manual_seed(0)
    batch, steps = 3, 40
    x = torch.rand(batch, steps, CHUNK, generator=generator) * 2 - 1
    x[1] *= 0.01  # quiet and loud streams
    jit.reset_states()
    with torch.inference_mode():
        ref = torch.stack([jit(x[:, t], SAMPLE_RATE) for t in range(steps)], dim=1)
        context = torch.cat([torch.zeros(batch, 1, CONTEXT), x[:, :-1, -CONTEXT:]], dim=1)
        xin = torch.cat([context, x], dim=2)  # [B, T, 576]

        state = module.initial_state(batch)
        by_chunk = []
        for t in range(steps):
            p, state = module.chunk(xin[:, t], state)
            by_chunk.append(p)
        assert state.shape == (2, batch, 128)

        pieces, fstate = [], None
        for t0, t1 in [(0, 1), (1, 8), (8, 9), (9, 40)]:
            y, fstate = module(xin[:, t0:t1], fstate)
            pieces.append(y)

        streamed, mstate = [], model.initial_state(batch)
        for t0, t1 in [(0, 3), (3, 4), (4, 40)]:
            y, mstate = model.step(x[:, t0:t1], mstate)
            streamed.append(y)
    assert ref.shape == (batch, steps, 1)
    assert float((torch.stack(by_chunk, dim=1) - ref).abs().max()) <= 1e-6
    assert float((torch.cat(pieces, dim=1) - ref).abs().max()) <= 1e-6
    assert float((torch.cat(streamed, dim=1) - ref).abs().max()) <= 1e-6
    assert float(ref.max()) > float(ref.min())  # not a constant output
    assert isinstance(mstate, State) and mstate.batch == batch
    assert torch.equal(mstate.tensors[-1], x[:, -1, -CONTEXT:])  # the context is state


# --- the pipeline file on real speech ----------------------------------------------------


def test_offline_matches_get_speech_timestamps(
    speech: np.ndarray, offline_online: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    """Silero's rules (threshold 0.5, neg_threshold 0.35, min speech 250 ms, min silence
    100 ms, its default speech padding of 30 ms). Measured: 19 of 19 segments, every
    boundary the same (to float rounding)."""
    silero_vad = import_silero_vad()
    reference = [
        (r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE)
        for r in silero_vad.get_speech_timestamps(
            torch.from_numpy(speech),
            load_jit(),
            threshold=0.5,
            neg_threshold=0.35,
            min_speech_duration_ms=250,
            min_silence_duration_ms=100,
        )
    ]
    ours = [(t0, t1) for _, _, t0, t1 in segments(offline_online[0])]
    assert len(reference) >= 10
    both = overlap(reference, ours)
    iou = both / (speech_time(reference) + speech_time(ours) - both)
    assert iou >= 0.95
    ours_edges = np.array([t for span in ours for t in span])
    for edge in (t for span in reference for t in span):
        assert float(np.abs(ours_edges - edge).min()) <= 0.1, edge
    assert len(ours) == len(reference)


@settings(max_examples=60, deadline=None)
@given(
    levels=st.lists(st.sampled_from([0.0, 0.2, 0.34, 0.35, 0.4, 0.5, 0.7, 1.0]), max_size=60),
    pad_ms=st.sampled_from([0, 30, 48, 64, 100, 250]),
    cuts=st.lists(st.integers(0, 60), max_size=6),
)
def test_pad_follows_get_speech_timestamps_on_any_probabilities(
    levels: list[float], pad_ms: int, cuts: list[int]
) -> None:
    """Speech probabilities, one per 512-sample chunk, through Silero's own
    ``get_speech_timestamps_from_probs`` and through :class:`Smoother` (hysteresis 0.5 /
    0.35, ``pad``, pushed in pieces): the same padded segments. With no minimum durations
    the two measure runs alike (the pipeline's ``min_on``/``min_off`` can decide a run at
    the limits one chunk differently, see ``pipelines/audio_tagging.toml``), so this checks
    the padding: clamped at the stream's ends, halved between close segments."""
    silero_vad = import_silero_vad()
    reference = [
        (r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE)
        for r in silero_vad.get_speech_timestamps_from_probs(
            levels,
            threshold=0.5,
            neg_threshold=0.35,
            min_speech_duration_ms=0,
            min_silence_duration_ms=0,
            speech_pad_ms=pad_ms,
        )
    ]
    step = CHUNK / SAMPLE_RATE
    outputs = [
        Output(
            stream="s",
            kind="frame",
            start=i,
            end=i,
            pts=i * step,
            label=None,
            scores={"silence": 1 - p, "speech": p},
            captured=0.0,
            t0=i * step,
            t1=(i + 1) * step,
        )
        for i, p in enumerate(levels)
    ]
    smoother = Smoother(
        "silence",
        frame_duration=step,
        on=0.5,
        off=0.35,
        segment_labels=["speech"],
        pad=pad_ms / 1000,
    )
    out: list[Output] = []
    bounds = [0, *sorted(c % (len(outputs) + 1) for c in cuts), len(outputs)]
    for a, b in itertools.pairwise(bounds):
        out += smoother.push(outputs[a:b])
    ours = [(o.t0, o.t1) for o in out + smoother.end() if o.kind == "segment"]
    assert ours == [pytest.approx(span, abs=1e-9) for span in reference]


def test_online_equals_offline(
    speech: np.ndarray, offline_online: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    offline, online = offline_online
    assert segments(online, None) == segments(offline, None)
    on, off = frames(online), frames(offline)
    assert [f[:3] for f in on] == [f[:3] for f in off]
    # the convolutions of a whole file in one call round differently from chunk by chunk
    assert max(abs(a[3] - b[3]) for a, b in zip(on, off, strict=True)) <= 1e-6
    assert len(on) == -(-len(speech) // CHUNK)  # one output per chunk


def test_eight_streams_batched_equal_each_alone(tmp_path: Path, speech: np.ndarray) -> None:
    """Eight files cut from the speech at different offsets and lengths, run together
    (batched) and each alone: every stream gets exactly what it gets alone."""
    files = []
    for k in range(8):
        start = round((k * 6.7 % 50) * SAMPLE_RATE)
        length = round((5 + 0.5 * k) * SAMPLE_RATE)
        files.append(tmp_path / f"part{k}.wav")
        soundfile.write(files[-1], speech[start : start + length], SAMPLE_RATE)
    together, summary = run(tmp_path, "together", files, "online")
    assert summary["mean_batch"] > 1
    streams = sorted({r["stream"] for r in together})
    assert len(streams) == 8
    for k, file in enumerate(files):
        alone, _ = run(tmp_path, f"alone{k}", [file], "online")
        (stream,) = {r["stream"] for r in alone}
        mine = [r for r in together if r["stream"] == stream]
        assert segments(mine, None) == segments(alone, None)
        assert [f[:3] for f in frames(mine)] == [f[:3] for f in frames(alone)]
        # a batch of other size rounds the convolutions differently (float32)
        assert (
            max(abs(a[3] - b[3]) for a, b in zip(frames(mine), frames(alone), strict=True)) <= 1e-6
        )
        assert segments(alone)  # every part holds speech
