"""Ready pipelines (``streamer/ready.py``): named by their TOML file's stem, listed by
``streamer pipelines``, shipped in the wheel and run from any folder once installed.

In-process: name resolution (a name, an existing file that wins over a name, an unknown
name's error listing the ready names) and the listing. Installed: the wheel built from
the sources, installed with pip into a fresh virtualenv (its dependencies, torch included,
borrowed from this venv's site-packages by a ``.pth`` line), runs ``streamer pipelines``
and ``streamer run audio_tagging --source SPEECH.wav`` from a folder outside the
repository, importing ``streamer`` and ``pipelines`` from the installed wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import soundfile
from conftest import REPO, require

from streamer.cli import main
from streamer.errors import InputError
from streamer.ready import description, ready_pipelines, resolve_pipeline

SPEECH = REPO / "tests" / "data" / "speech_en_16k.wav"
SHIPPED = sorted(path.stem for path in (REPO / "pipelines").glob("*.toml"))


def _first_comment(path: Path) -> str:
    line = next(ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#"))
    return line.lstrip("#").strip()


def _write_speech(path: Path, seconds: float) -> None:
    samples, rate = soundfile.read(SPEECH, frames=int(seconds * 16000), dtype="float32")
    soundfile.write(path, samples, rate)


# -- in-process: resolution and listing --------------------------------------------------
def test_every_shipped_toml_is_a_ready_pipeline_with_its_first_comment_line() -> None:
    ready = ready_pipelines()
    assert [p.name for p in ready] == SHIPPED
    assert {"audio_tagging", "gru_tagging", "speech_energy"} <= set(SHIPPED)
    for pipeline in ready:
        assert pipeline.path.is_file()
        assert pipeline.description == _first_comment(pipeline.path)
        assert pipeline.description  # every shipped pipeline says what it is


def test_a_name_resolves_to_the_shipped_file_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = Path(resolve_pipeline("audio_tagging"))
    assert resolved.name == "audio_tagging.toml"
    assert resolved.read_bytes() == (REPO / "pipelines" / "audio_tagging.toml").read_bytes()


def test_an_existing_file_is_a_path_even_when_it_has_a_ready_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "speech_energy").write_text('[source]\nuri = "synthetic:sine"\n')
    assert resolve_pipeline("speech_energy") == "speech_energy"
    assert resolve_pipeline(str(REPO / "pipelines" / "gru_tagging.toml")) == str(
        REPO / "pipelines" / "gru_tagging.toml"
    )


def test_an_unknown_name_is_not_found_and_the_error_lists_the_ready_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no_such_pipeline: pipeline file not found"):
        resolve_pipeline("no_such_pipeline")
    assert main(["run", "no_such_pipeline", "--source", str(SPEECH)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("streamer: error: no_such_pipeline: pipeline file not found")
    assert all(name in err[0] for name in SHIPPED)


def test_a_folder_named_like_nothing_ready_keeps_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    assert main(["run", "configs"]) == 2
    assert "configs: is a folder" in capsys.readouterr().err


def test_streamer_pipelines_lists_one_line_each_and_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pipelines"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    for line, name in zip(lines, SHIPPED, strict=True):
        assert line.endswith(_first_comment(REPO / "pipelines" / f"{name}.toml"))
    assert main(["pipelines", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in listed] == SHIPPED
    for entry in listed:
        assert tomllib.loads(Path(entry["path"]).read_text(encoding="utf-8"))  # a real file
        assert entry["description"] == _first_comment(Path(entry["path"]))


def test_description_is_the_first_comment_line_wherever_it_is() -> None:
    assert description("# One line.\n# Two.\n[source]\n") == "One line."
    assert description('[source]\nuri = "a.wav"\n  ## indented  \n') == "indented"
    assert description('[source]\nuri = "a.wav"  # a trailing comment is no line\n') == ""


def test_a_ready_pipeline_runs_by_name_with_relative_paths_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # Its own [source] uri is relative to the current folder, not to the package.
    assert main(["run", "speech_energy", "-q"]) == 2
    assert "recordings/speech_en: no such file" in capsys.readouterr().err
    _write_speech(tmp_path / "talk.wav", 2.0)
    args = ["run", "speech_energy", "--source", "talk.wav", "--out", "labels.jsonl", "-q"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert records and {r["label"] for r in records} <= {"silence", "sound"}
    assert {r["stream"] for r in records} == {"talk"}


# -- installed from the wheel into a fresh virtualenv ------------------------------------
def _installed_venv(work: Path) -> Path:
    """Build the wheel from a copy of the sources (the repository stays untouched), make a
    venv without pip, borrow this venv's site-packages for the dependencies, and install
    the wheel into it with this venv's pip; returns the venv's ``bin`` folder."""
    require(importlib.util.find_spec("setuptools") is not None, "setuptools in the venv")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("streamer", "pipelines"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = work / "wheels"
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("streamer-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A directory line in a .pth is appended to sys.path; the .pth files in that directory
    # (this venv's editable-install finder) are not run.
    (Path(purelib) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
    )
    return venv / "bin"


def test_the_installed_wheel_runs_ready_pipelines_from_another_folder(tmp_path: Path) -> None:
    require(importlib.util.find_spec("silero_vad") is not None, "the silero-vad package")
    bin_dir = _installed_venv(tmp_path / "build")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
        )

    where = run(
        str(bin_dir / "python"),
        "-c",
        "import streamer, pipelines.silero; print(streamer.__file__); "
        "print(pipelines.silero.__file__)",
    )
    assert where.returncode == 0, where.stderr
    for module_file in where.stdout.split():
        assert Path(module_file).is_relative_to(bin_dir.parent), module_file
        assert not Path(module_file).is_relative_to(REPO), module_file

    listed = run(str(bin_dir / "streamer"), "pipelines")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.strip().splitlines()] == SHIPPED
    as_json = json.loads(run(str(bin_dir / "streamer"), "pipelines", "--json").stdout)
    assert all(Path(entry["path"]).is_relative_to(bin_dir.parent) for entry in as_json)

    _write_speech(elsewhere / "SPEECH.wav", 3.0)
    # A `pipelines` package of the current folder's own does not shadow the installed one.
    (elsewhere / "pipelines").mkdir()
    (elsewhere / "pipelines" / "__init__.py").write_text("raise ImportError('the decoy')\n")
    done = run(
        str(bin_dir / "streamer"),
        "run",
        "audio_tagging",
        "--source",
        "SPEECH.wav",
        "--out",
        "out.jsonl",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (elsewhere / "out.jsonl").read_text().splitlines()]
    speech = [r for r in records if r["kind"] == "segment" and r["label"] == "speech"]
    assert speech, records
    assert all(0.0 <= r["t0"] < r["t1"] <= 3.0 + 1e-6 for r in speech)
    assert not (elsewhere / "out" / "audio_tagging.jsonl").exists()  # --out replaced the sink

    # The trained sound-event tagger finds its weights inside the installed package.
    tagged = run(
        str(bin_dir / "streamer"),
        "run",
        "sound_events",
        "--source",
        "SPEECH.wav",
        "--out",
        "events.jsonl",
        "-q",
    )
    assert tagged.returncode == 0, tagged.stderr
    events = [json.loads(line) for line in (elsewhere / "events.jsonl").read_text().splitlines()]
    assert {r["label"] for r in events if r["kind"] == "segment"} >= {"speech"}, events[-5:]
