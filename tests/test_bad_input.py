"""Bad input, as a user meets it: exit code 2 and one clear line on stderr, no traceback.

Each case makes its bad input in ``tmp_path`` and runs the real command (cwd: the
repository root). The error line starts with ``streamer: error:`` and names the file, key,
section or URI at fault; ``--debug`` adds the traceback. A failure in the middle of the
input (a file that stops decoding) keeps what was written before it: complete JSONL lines.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from media import (
    REPO_ROOT,
    check_outputs,
    copy_recording,
    describe,
    read_jsonl,
    run_cli,
    run_cli_together,
    starts,
    tone_then_silence,
    write_audio,
    write_corrupted,
    write_cut,
    write_dark_bright_video,
    write_random_bytes,
)

from streamer.cli import main

PREFIX = "streamer: error: "
GOOD_SOURCE = "recordings/speech_en"


@dataclass(frozen=True)
class Case:
    """``make(tmp)`` creates the bad input and returns the command's arguments; the error
    line must contain every string in ``names`` (``{tmp}`` is replaced by ``tmp_path``)."""

    make: Callable[[Path], list[str]]
    names: tuple[str, ...]


def pipeline_file(text: str, name: str = "pipeline.toml") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_text(text, encoding="utf-8")
        return ["run", str(path), "--out", str(tmp / "out.jsonl"), "-q"]

    return make


def source(make_file: Callable[[Path], Path | str]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return ["run", "--source", str(make_file(tmp)), "--out", str(tmp / "out.jsonl"), "-q"]

    return make


def recording_without(file: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = copy_recording(tmp / "damaged_rec")
        (path / file).unlink()
        return path

    return make


def truncated_recording(tmp: Path) -> Path:
    path = copy_recording(tmp / "short_rec")
    data = path / "s0.data"
    data.write_bytes(data.read_bytes()[:100_000])
    return path


def text_file(name: str, text: str = "this is not audio, just a note\n") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    return make


def empty_file(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(b"")
        return path

    return make


def plain_folder(tmp: Path) -> Path:
    path = tmp / "just_a_folder"
    path.mkdir()
    (path / "notes.txt").write_text("hello\n", encoding="utf-8")
    return path


def mp4_cut_in_half(tmp: Path) -> Path:
    full = write_dark_bright_video(tmp / "full.mp4", dark=20, bright=20)
    return write_cut(full, tmp / "half.mp4", 0.5)  # mp4v: the index (moov) is at the end


def header_only_flac(tmp: Path) -> Path:
    full = write_audio(tmp / "full.flac", tone_then_silence(1.0, 1.0))
    return write_cut(full, tmp / "stub.flac", 0.02)


CASES: dict[str, Case] = {
    # -- pipeline files
    "missing pipeline file": Case(
        lambda tmp: ["run", str(tmp / "no_such_pipeline.toml")], ("no_such_pipeline.toml",)
    ),
    "pipeline file is a folder": Case(lambda tmp: ["run", str(tmp)], ("{tmp}",)),
    "invalid TOML": Case(
        pipeline_file('[source\nuri = "recordings/speech_en"\n', "broken.toml"),
        ("broken.toml", "TOML"),
    ),
    "empty pipeline file": Case(pipeline_file("", "empty.toml"), ("empty.toml", "source")),
    "unknown key in [source]": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\ncolour = "red"\n'),
        ("pipeline.toml", "colour", "[source]"),
    ),
    "unknown key in [run]": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\n[run]\nturbo = true\n'),
        ("pipeline.toml", "turbo", "[run]"),
    ),
    "unknown key in [[sinks]]": Case(
        pipeline_file(
            f'[source]\nuri = "{GOOD_SOURCE}"\n[[sinks]]\ntype = "jsonl"\n'
            'path = "x.jsonl"\ncompress = true\n'
        ),
        ("pipeline.toml", "compress", "[[sinks]]"),
    ),
    "unknown key at top level": Case(
        pipeline_file(f'version = 2\n[source]\nuri = "{GOOD_SOURCE}"\n'),
        ("pipeline.toml", "version", "top level"),
    ),
    "unknown section": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\n[modle]\nbuiltin = "energy"\n'),
        ("pipeline.toml", "modle"),
    ),
    "unknown sink type": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\n[[sinks]]\ntype = "fax"\n'),
        ("pipeline.toml", "[[sinks]]", "fax"),
    ),
    "wrong type: chunk = 'big'": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\nchunk = "big"\n'),
        ("pipeline.toml", "[source]", "chunk", "big"),
    ),
    "wrong value: mode = 'fast'": Case(
        pipeline_file(f'[source]\nuri = "{GOOD_SOURCE}"\n[run]\nmode = "fast"\n'),
        ("pipeline.toml", "[run]", "mode", "fast"),
    ),
    "missing [source] uri": Case(
        pipeline_file("[source]\nchunk = 512\n"), ("pipeline.toml", "uri", "[source]")
    ),
    "missing [source]": Case(
        pipeline_file('[run]\nmode = "online"\n'), ("pipeline.toml", "source")
    ),
    "unknown scheme in pipeline file": Case(
        pipeline_file('[source]\nuri = "foo:bar"\n'), ("foo:bar", "scheme")
    ),
    # -- sources
    "unknown source scheme": Case(source(lambda tmp: "foo:bar"), ("foo:bar", "scheme")),
    "missing source file": Case(
        source(lambda tmp: tmp / "missing_input.wav"), ("missing_input.wav",)
    ),
    "empty wav": Case(source(empty_file("empty.wav")), ("empty.wav", "empty")),
    "empty mp4": Case(source(empty_file("empty.mp4")), ("empty.mp4", "empty")),
    "text file named .wav": Case(source(text_file("notes.wav")), ("notes.wav",)),
    "text file, unknown extension": Case(source(text_file("notes.dat")), ("notes.dat",)),
    "mp4 of random bytes": Case(
        source(lambda tmp: write_random_bytes(tmp / "noise.mp4")), ("noise.mp4",)
    ),
    "mp4 cut in half": Case(source(mp4_cut_in_half), ("half.mp4",)),
    "flac cut after its header": Case(source(header_only_flac), ("stub.flac",)),
    "folder that is not a recording": Case(source(plain_folder), ("just_a_folder",)),
    "recording: missing data file": Case(
        source(recording_without("s0.data")), ("damaged_rec", "s0.data")
    ),
    "recording: missing times file": Case(
        source(recording_without("s0.times")), ("damaged_rec", "s0.times")
    ),
    "recording: missing meta.json": Case(
        source(lambda tmp: "recording:" + str(recording_without("meta.json")(tmp))),
        ("damaged_rec", "meta.json"),
    ),
    "recording: truncated data file": Case(source(truncated_recording), ("short_rec", "s0.data")),
    "recording: invalid meta.json": Case(
        source(lambda tmp: _write(copy_recording(tmp / "bad_meta") / "meta.json", "{").parent),
        ("bad_meta", "meta.json"),
    ),
    "unknown synthetic kind": Case(source(lambda tmp: "synthetic:whale"), ("synthetic:whale",)),
    # -- outputs and options
    "--out in a missing folder": Case(
        lambda tmp: ["run", "--source", GOOD_SOURCE, "--out", str(tmp / "nodir" / "o.jsonl")],
        ("nodir", "o.jsonl"),
    ),
    "--out is a folder": Case(
        lambda tmp: ["run", "--source", GOOD_SOURCE, "--out", str(tmp)], ("{tmp}",)
    ),
    "--metrics in a missing folder": Case(
        lambda tmp: [
            "run",
            "--source",
            GOOD_SOURCE,
            "--out",
            str(tmp / "o.jsonl"),
            "--metrics",
            str(tmp / "nodir" / "m.json"),
        ],
        ("nodir", "m.json"),
    ),
    "--max-frames 0": Case(
        lambda tmp: ["run", "--source", GOOD_SOURCE, "--max-frames", "0"], ("--max-frames",)
    ),
    "--duration -1": Case(
        lambda tmp: ["run", "--source", GOOD_SOURCE, "--duration", "-1"], ("--duration",)
    ),
    "jsonl sink path in a missing folder": Case(
        lambda tmp: _pipeline_with_sink(tmp, str(tmp / "gone" / "x.jsonl")), ("gone", "x.jsonl")
    ),
    # -- record
    "record into an existing folder": Case(
        lambda tmp: ["record", GOOD_SOURCE, str(tmp)], ("{tmp}", "exists")
    ),
    "record into a missing folder": Case(
        lambda tmp: ["record", GOOD_SOURCE, str(tmp / "nodir" / "rec")], ("nodir",)
    ),
    "record a missing file": Case(
        lambda tmp: ["record", str(tmp / "absent.wav"), str(tmp / "rec")], ("absent.wav",)
    ),
    "record an unknown scheme": Case(
        lambda tmp: ["record", "foo:bar", str(tmp / "rec")], ("foo:bar",)
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _pipeline_with_sink(tmp: Path, sink_path: str) -> list[str]:
    path = tmp / "sink.toml"
    path.write_text(
        f'[source]\nuri = "{GOOD_SOURCE}"\n[[sinks]]\ntype = "jsonl"\npath = "{sink_path}"\n',
        encoding="utf-8",
    )
    return ["run", str(path), "-q"]


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr (the whole of stderr), which must be the error line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr\n{describe(result)}"
    assert lines[0].startswith(PREFIX), describe(result)
    return lines[0]


#: Cases also run as real processes: there, nothing but the error line may reach stderr,
#: not even what FFmpeg, OpenCV or libsndfile print themselves from native code.
SUBPROCESS_CASES = ("mp4 of random bytes", "missing source file", "unknown key in [run]")


def run_in_process(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """``streamer ARGS`` through ``streamer.cli.main`` in this process (cwd: the repo)."""
    code = main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["streamer", *args], code, captured.out, captured.err)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input(
    case: Case,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    args = case.make(tmp_path)
    names = [name.replace("{tmp}", str(tmp_path)) for name in case.names]
    if any(CASES[name] is case for name in SUBPROCESS_CASES):
        result, debug = run_cli_together(args, [*args, "--debug"])
    else:
        result = run_in_process(args, capsys)
        debug = run_in_process([*args, "--debug"], capsys)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    line = error_line(result)
    for name in names:
        assert name in line, f"error line does not name {name!r}: {line}"
    assert len(line) > len(PREFIX) + 10

    assert debug.returncode == 2, describe(debug)
    assert "Traceback (most recent call last)" in debug.stderr, describe(debug)
    assert debug.stderr.splitlines()[-1] == line, describe(debug)


# -- failures in the middle of the input -----------------------------------------------------


def mid_read_failure(
    args: list[str],
    out: Path,
    file_name: str,
    capsys: pytest.CaptureFixture[str] | None = None,
) -> list[dict[str, object]]:
    """Run ``args`` (in this process when given ``capsys``, else as a real process): exit 2,
    one error line naming ``file_name`` and nothing else on stderr, no traceback; the JSONL
    written before the failure is complete."""

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_in_process(list(argv), capsys) if capsys is not None else run_cli(*argv)

    result = run(*args)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1, describe(result)
    assert lines[-1] == errors[0], describe(result)
    assert file_name in errors[0], errors[0]
    assert lines == errors, describe(result)
    records = read_jsonl(out)  # every line parses, no half line
    check_outputs(records)
    assert starts(records) == list(range(len(records)))

    debug = run(*args, "--debug")
    assert debug.returncode == 2, describe(debug)
    assert "Traceback (most recent call last)" in debug.stderr, describe(debug)
    return records


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_flac_damaged_in_the_middle(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 9 s of tone and silence: the damage at the middle comes after a few blocks decoded.
    full = write_audio(tmp_path / "full.flac", tone_then_silence(6.0, 3.0))
    bad = tmp_path / f"{damage}.flac"
    if damage == "cut":
        write_cut(full, bad, 0.5)
    else:
        write_corrupted(full, bad, start=0.5, length=4000)
    out = tmp_path / "partial.jsonl"
    records = mid_read_failure(
        ["run", "--source", str(bad), "--out", str(out), "-q"], out, bad.name, capsys
    )
    assert records, "the frames decoded before the damage were not written"
    assert records[0]["label"] == "sound"


def test_truncated_wav_writes_what_it_holds_then_fails(tmp_path: Path) -> None:
    full = write_audio(tmp_path / "full.wav", tone_then_silence(6.0, 3.0))
    bad = write_cut(full, tmp_path / "cut.wav", 0.5)
    out = tmp_path / "partial.jsonl"
    records = mid_read_failure(
        ["run", "--source", str(bad), "--out", str(out), "-q"], out, bad.name
    )
    # 4.5 s of the 9 s survive: every frame of them was labelled and written
    assert len(records) == -(-int(4.5 * 16000) // 512)
    assert records[0]["label"] == "sound"


def test_avi_cut_in_the_middle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = write_dark_bright_video(tmp_path / "full.avi", dark=20, bright=20)
    bad = write_cut(full, tmp_path / "cut.avi", 0.5)
    out = tmp_path / "partial.jsonl"
    args = ["run", "--source", str(bad), "--out", str(out)]
    records = mid_read_failure(args, out, bad.name, capsys)
    assert 0 < len(records) < 40
