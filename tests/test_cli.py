"""``streamer run`` and ``streamer record`` as a user runs them: a real process, real files.

Every run starts the installed command in a subprocess from the repository root (the
pipeline file names ``recordings/speech_en`` relative to it) and writes into ``tmp_path``;
the few tests that need a model factory from the tests folder call ``main`` in-process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from media import (
    SPEECH_FRAMES,
    check_outputs,
    describe,
    imported_by_run,
    labels,
    read_jsonl,
    run_cli,
    starts,
    switches,
    tone_then_silence,
    write_audio,
    write_dark_bright_video,
    write_speech_wav,
    write_tone_wav,
)

PIPELINE = "pipelines/speech_energy.toml"
FRAME_S = 512 / 16000


def run_ok(*args: Any, cwd: Path | None = None) -> Any:
    """Run the CLI and require exit code 0 and no error line."""
    result = run_cli(*args) if cwd is None else run_cli(*args, cwd=cwd)
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert "streamer: error" not in result.stderr, describe(result)
    return result


def summary_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("summary:")]


def same_outputs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Same frames, labels and bit-identical scores (JSON floats compared exactly)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x["stream"], x["start"], x["end"], x["pts"]) == (
            y["stream"],
            y["start"],
            y["end"],
            y["pts"],
        )
        assert x["label"] == y["label"]
        assert x["scores"] == y["scores"], (x, y)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the bundled pipeline on the bundled recording, shared by several tests."""
    out_dir = tmp_path_factory.mktemp("baseline")
    out, metrics = out_dir / "out.jsonl", out_dir / "metrics.json"
    result = run_ok("run", PIPELINE, "--out", out, "--metrics", metrics)
    return {
        "result": result,
        "records": read_jsonl(out),
        "metrics": json.loads(metrics.read_text(encoding="utf-8")),
    }


# -- the bundled pipeline ------------------------------------------------------------------


def test_pipeline_on_bundled_recording(baseline: dict[str, Any]) -> None:
    records = baseline["records"]
    check_outputs(records)
    assert len(records) == SPEECH_FRAMES
    assert starts(records) == list(range(SPEECH_FRAMES))
    assert {r["stream"] for r in records} == {"speech_en"}
    for record in records:
        assert math.isclose(record["pts"], record["start"] * FRAME_S, abs_tol=1e-9)
        assert set(record["scores"]) == {"silence", "sound"}
        assert record["latency_ms"] is not None
    assert set(labels(records)) == {"silence", "sound"}
    # The recording has speech at about 0.0-2.0, 2.7-4.7, 5.0-6.9 and 9.3-10.0 s.
    assert labels(records).count("sound") > 100
    assert labels(records).count("silence") > 30

    metrics = baseline["metrics"]
    assert metrics["frames_in"] == metrics["outputs"] == SPEECH_FRAMES
    assert metrics["stopped"] == "eof"
    assert metrics["dropped"] == 0
    latency = metrics["latency_ms"]
    for key in ("p50", "p95", "p99", "max"):
        assert isinstance(latency[key], float) and latency[key] >= 0.0
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]

    # --out replaced the file's own jsonl sink (out/speech_energy.jsonl): one jsonl sink.
    sinks = [name for name in metrics["edges"] if name.startswith("fanout>sink:jsonl")]
    assert sinks == ["fanout>sink:jsonl:out.jsonl"], metrics["edges"]


def test_console_lines_on_stdout_summary_on_stderr(baseline: dict[str, Any]) -> None:
    result = baseline["result"]
    lines = result.stdout.splitlines()
    # The pipeline's console sink prints every 10th output: #0, #10, ... #310.
    assert len(lines) == 32, result.stdout
    assert all(line.startswith("[speech_en]") for line in lines)
    assert "#0 " in lines[0] and "#310" in lines[-1]
    assert all(("silence" in line) != ("sound" in line) for line in lines)
    summary = summary_lines(result.stderr)
    assert summary, result.stderr
    text = "\n".join(summary)
    assert "frames in 313" in text and "outputs 313" in text
    assert "stopped: eof" in text and "latency" in text
    assert "[speech_en]" not in result.stderr


def test_offline_mode_gives_the_same_outputs(baseline: dict[str, Any], tmp_path: Path) -> None:
    out, metrics = tmp_path / "offline.jsonl", tmp_path / "m.json"
    run_ok("run", PIPELINE, "--mode", "offline", "--out", out, "--metrics", metrics, "-q")
    records = read_jsonl(out)
    check_outputs(records)
    same_outputs(records, baseline["records"])
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["mode"] == "offline"
    assert summary["frames_in"] == summary["outputs"] == SPEECH_FRAMES


def test_realtime_mode_reports_drops(tmp_path: Path, repo_root: Path) -> None:
    """A model slower than its input (each call sleeps 20 ms, a frame comes every 1.6 ms at
    --speed 20): the realtime edge drops frames, and every drop is counted and marked.
    In-process (``main``): the factory lives in the tests folder (tests/slow_models.py)."""
    from streamer.cli import main

    pipeline = tmp_path / "slow.toml"
    pipeline.write_text(
        f'[source]\nuri = "{repo_root / "recordings" / "speech_en"}"\n\n'
        '[model]\nfactory = "slow_models:build"\nfeatures = "raw"\n'
        'labels = ["silence", "speech"]\n',
        encoding="utf-8",
    )
    out, metrics = tmp_path / "rt.jsonl", tmp_path / "m.json"
    code = main(
        [
            "run", str(pipeline), "--mode", "realtime", "--pace", "realtime", "--speed", "20",
            "--out", str(out), "--metrics", str(metrics), "-q",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["mode"] == "realtime"
    assert summary["frames_in"] == SPEECH_FRAMES
    assert summary["dropped"] > 0
    assert summary["edges"]["source>model"]["dropped"] == summary["dropped"]
    assert summary["outputs"] + summary["dropped"] == summary["frames_in"]
    # 10 s of media at 20x: about half a second, not as fast as the disk allows.
    assert summary["elapsed_s"] >= 0.4
    # the gap markers that reached the end account for every dropped frame
    stream = summary["streams"]["speech_en"]
    assert stream["dropped"] == stream["frames_missing"] == summary["dropped"]
    assert 0 < stream["gaps"] <= stream["frames_missing"]
    records = read_jsonl(out)
    check_outputs(records)
    assert len(records) == summary["outputs"]
    indices = starts(records)
    assert indices == sorted(set(indices)) and set(indices) <= set(range(SPEECH_FRAMES))
    assert SPEECH_FRAMES - len(indices) == summary["dropped"]


def test_duration_limit(tmp_path: Path) -> None:
    out, metrics = tmp_path / "d.jsonl", tmp_path / "m.json"
    run_ok("run", PIPELINE, "--duration", "2", "--out", out, "--metrics", metrics, "-q")
    records = read_jsonl(out)
    check_outputs(records)
    # 2 s * 16000 / 512 = 62.5: the frames with pts < 2.0 are #0..#62.
    assert starts(records) == list(range(63))
    assert all(r["pts"] < 2.0 for r in records)
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["frames_in"] == summary["outputs"] == 63


def test_max_frames_limit(tmp_path: Path) -> None:
    out, metrics = tmp_path / "n.jsonl", tmp_path / "m.json"
    run_ok("run", PIPELINE, "--max-frames", "10", "--out", out, "--metrics", metrics, "-q")
    records = read_jsonl(out)
    check_outputs(records)
    assert starts(records) == list(range(10))
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["frames_in"] == summary["outputs"] == 10
    assert summary["stopped"] == "max-frames"


# -- a user's own files, no pipeline file ----------------------------------------------------


def test_user_wav_without_pipeline(tmp_path: Path) -> None:
    wav = write_tone_wav(tmp_path / "my tone.wav", tone_s=2.0, silence_s=1.0)
    out = tmp_path / "tone.jsonl"
    result = run_ok("run", "--source", wav, "--out", out)
    records = read_jsonl(out)
    check_outputs(records)
    frames = math.ceil(3 * 16000 / 512)  # 94, the last one zero-padded
    assert starts(records) == list(range(frames))
    assert {r["stream"] for r in records} == {"my tone"}
    # Frame #62 (samples 31744..32255) is half tone: sound. #63 on is silence.
    assert labels(records) == ["sound"] * 63 + ["silence"] * (frames - 63)
    assert switches(records) == [(pytest.approx(63 * FRAME_S), "silence")]
    # Without a pipeline file every output is printed, then the summary on stderr.
    lines = result.stdout.splitlines()
    assert len(lines) == frames
    assert all(line.startswith("[my tone]") for line in lines)
    assert "sound" in lines[0] and "silence" in lines[-1]
    assert summary_lines(result.stderr)


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_user_compressed_audio(tmp_path: Path, suffix: str) -> None:
    path = write_audio(tmp_path / f"clip{suffix}", tone_then_silence(2.0, 1.0))
    out = tmp_path / "clip.jsonl"
    run_ok("run", "--source", path, "--out", out, "-q")
    records = read_jsonl(out)
    check_outputs(records)
    assert starts(records) == list(range(94))
    found = switches(records)
    # Lossy coding may smear the edge by a frame or two; one switch, sound to silence.
    assert len(found) == 1 and found[0][1] == "silence", found
    assert abs(found[0][0] - 2.0) < 0.1
    assert records[0]["label"] == "sound"


@pytest.mark.parametrize("name", ["clip.mp4", "clip.avi"])
def test_user_video_dark_then_bright(tmp_path: Path, name: str) -> None:
    video = write_dark_bright_video(tmp_path / name, dark=15, bright=15, fps=10.0)
    out, metrics = tmp_path / "video.jsonl", tmp_path / "m.json"
    result = run_ok("run", "--source", video, "--out", out, "--metrics", metrics)
    records = read_jsonl(out)
    check_outputs(records)
    assert starts(records) == list(range(30))
    assert {r["stream"] for r in records} == {"clip"}
    assert labels(records) == ["dark"] * 15 + ["bright"] * 15
    for record in records:
        assert math.isclose(record["pts"], record["start"] / 10.0, abs_tol=1e-6)
    assert switches(records) == [(pytest.approx(1.5), "bright")]
    assert len(result.stdout.splitlines()) == 30
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    assert summary["frames_in"] == summary["outputs"] == 30


# -- record, then replay -----------------------------------------------------------------


def test_record_recording_replays_bit_identical(baseline: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "speech_copy"
    result = run_ok("record", "recordings/speech_en", copy)
    assert (copy / "meta.json").is_file()
    assert "313 frames" in result.stdout and "speech_en" in result.stdout
    out = tmp_path / "replay.jsonl"
    run_ok("run", PIPELINE, "--source", copy, "--out", out, "-q")
    same_outputs(read_jsonl(out), baseline["records"])


def test_record_wav_with_duration_replays_bit_identical(tmp_path: Path) -> None:
    wav = write_tone_wav(tmp_path / "user.wav", tone_s=0.6, silence_s=0.9)
    rec = tmp_path / "user_rec"
    result = run_ok("record", wav, rec, "--duration", "1")
    assert (rec / "meta.json").is_file()
    assert "32 frames" in result.stdout  # frames with pts < 1 s: #0..#31
    replay, original = tmp_path / "replay.jsonl", tmp_path / "original.jsonl"
    run_ok("run", "--source", rec, "--out", replay, "-q")
    run_ok("run", "--source", wav, "--duration", "1", "--out", original, "-q")
    replayed, direct = read_jsonl(replay), read_jsonl(original)
    check_outputs(replayed)
    assert starts(replayed) == list(range(32))
    same_outputs(replayed, direct)
    assert set(labels(replayed)) == {"sound", "silence"}


def test_record_synthetic_tone(tmp_path: Path) -> None:
    rec = tmp_path / "tone_rec"
    result = run_ok("record", "synthetic:tone?duration=1", rec)
    meta = json.loads((rec / "meta.json").read_text(encoding="utf-8"))
    assert [s["frames"] for s in meta["streams"]] == [32]
    assert "32 frames" in result.stdout
    out = tmp_path / "tone.jsonl"
    run_ok("run", "--source", rec, "--out", out, "-q")
    records = read_jsonl(out)
    check_outputs(records)
    assert starts(records) == list(range(32))
    assert set(labels(records)) == {"sound"}


def test_pipeline_with_user_file_in_another_folder(tmp_path: Path) -> None:
    """A pipeline file outside the repository, with relative paths, run from its folder."""
    wav = write_tone_wav(tmp_path / "input.wav", tone_s=1.0, silence_s=1.0)
    pipeline = tmp_path / "mine.toml"
    pipeline.write_text(
        '[source]\nuri = "input.wav"\nchunk = 1600\n\n[model]\nbuiltin = "energy"\n'
        'labels = ["quiet", "loud"]\n\n[run]\nmode = "offline"\n\n'
        '[[sinks]]\ntype = "jsonl"\npath = "result.jsonl"\n',
        encoding="utf-8",
    )
    assert wav.is_file()
    result = run_ok("run", pipeline.name, cwd=tmp_path)
    records = read_jsonl(tmp_path / "result.jsonl")
    check_outputs(records)
    assert labels(records) == ["loud"] * 10 + ["quiet"] * 10  # 1600 samples = 0.1 s
    assert len(result.stdout.splitlines()) == 20  # a console sink is added by default


def test_user_speech_wav_matches_the_recording(baseline: dict[str, Any], tmp_path: Path) -> None:
    """The recording's 10 s of speech as a float WAV gives the very same outputs."""
    wav = write_speech_wav(tmp_path / "speech_en.wav", seconds=10.0)
    out = tmp_path / "speech.jsonl"
    run_ok("run", PIPELINE, "--source", wav, "--out", out, "-q")
    same_outputs(read_jsonl(out), baseline["records"])


def test_a_pipeline_without_a_model_starts_without_torch(tmp_path: Path) -> None:
    """The threshold pipeline never imports torch (seconds of start-up here); a pipeline
    with a model imports it when it builds the model stage."""
    out = tmp_path / "out.jsonl"
    assert not imported_by_run(["run", PIPELINE, "--out", str(out), "-q"], "torch")
    assert len(read_jsonl(out)) == SPEECH_FRAMES
