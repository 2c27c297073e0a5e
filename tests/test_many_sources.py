"""Several sources in one run (``[[sources]]``, a repeated ``--source``, ``--sources FILE``):
streams start and end on their own, a failing source does not stop the others unless
``[run] fail_fast``, a camera that cannot connect is retried while the others run, and
duplicate stream ids are refused before the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from media import read_jsonl, tone_then_silence, write_audio, write_cut
from test_camera import free_port

from streamer.cli import main

PREFIX = "streamer: error: "


# factories and pipeline paths resolve from the repository root, as on the command line
pytestmark = pytest.mark.usefixtures("in_repo")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def per_stream(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {}
    for record in records:
        streams.setdefault(record["stream"], []).append(record["start"])
    return streams


def test_sources_file_and_repeated_source_run_every_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_audio(tmp_path / "a.wav", tone_then_silence(1.0, 0.5))
    b = write_audio(tmp_path / "b.wav", tone_then_silence(0.5, 1.5))
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# two files\n{a}\n\n{b}\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, "run", "--sources", str(listing), "--out", str(out), "-q")
    assert code == 0, err
    streams = per_stream(read_jsonl(out))
    assert streams == {"a": list(range(47)), "b": list(range(63))}  # 1.5 s and 2.0 s / 32 ms

    out2 = tmp_path / "out2.jsonl"
    args = ["run", "--source", str(a), "--source", str(b), "--out", str(out2), "-q"]
    code, err = run(capsys, *args)
    assert code == 0, err
    assert per_stream(read_jsonl(out2)) == streams


def test_duplicate_stream_ids_are_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_audio(tmp_path / "a.wav", tone_then_silence(0.5, 0.5))
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, "run", "--source", str(a), "--source", str(a), "--out", str(out))
    assert code == 2 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith(PREFIX)]
    assert "[[sources]] #2" in line and "'a'" in line and "stream" in line
    assert not out.exists()


def test_a_failing_source_does_not_stop_the_others_unless_fail_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_audio(tmp_path / "good.wav", tone_then_silence(2.0, 1.0))
    full = write_audio(tmp_path / "full.flac", tone_then_silence(6.0, 3.0))
    bad = write_cut(full, tmp_path / "bad.flac", 0.1)  # stops decoding early
    pipeline = tmp_path / "two.toml"
    body = (
        f'[[sources]]\nuri = "{good}"\npace = "realtime"\nspeed = 20\n[[sources]]\nuri = "{bad}"\n'
    )
    pipeline.write_text(body, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, "run", str(pipeline), "--out", str(out), "-q")
    assert code == 2 and "bad.flac" in err and "Traceback" not in err
    streams = per_stream(read_jsonl(out))
    assert streams["good"] == list(range(94))  # every frame of the good file, to its end

    pipeline.write_text(body + "[run]\nfail_fast = true\n", encoding="utf-8")
    code, err = run(capsys, "run", str(pipeline), "--out", str(out), "-q")
    assert code == 2 and "bad.flac" in err and "Traceback" not in err
    streams = per_stream(read_jsonl(out))
    assert len(streams.get("good", [])) < 94  # the run ended when the bad source failed


def test_an_unreachable_camera_is_retried_while_the_others_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/none.mjpg"
    pipeline = tmp_path / "cams.toml"
    pipeline.write_text(
        f'[[sources]]\nuri = "camera:{url}"\nstream = "door"\ntimeout = 0.5\n'
        '[[sources]]\nuri = "synthetic:tone?duration=3"\npace = "realtime"\n'
        "[run]\nduration = 1.0\n",
        encoding="utf-8",
    )
    out, metrics = tmp_path / "out.jsonl", tmp_path / "m.json"
    code, err = run(capsys, "run", str(pipeline), "--out", str(out), "--metrics", str(metrics))
    assert code == 0, err
    streams = per_stream(read_jsonl(out))
    assert set(streams) == {"tone"} and streams["tone"] == list(range(32))  # 1 s of 32 ms
    assert any("retrying" in r.getMessage() and url in r.getMessage() for r in caplog.records)
    assert json.loads(metrics.read_text(encoding="utf-8"))["stopped"] == "duration"


def test_a_single_unreachable_camera_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/none.mjpg"
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, "run", "--source", f"camera:{url}", "--out", str(out), "-q")
    assert code == 2 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith(PREFIX)]
    assert url in line and "time-out" in line
    assert not out.exists() or read_jsonl(out) == []
