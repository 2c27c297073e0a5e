"""Hostile input, in process: every bad pipeline file or flag is refused before the first
frame with exit code 2 and one ``streamer: error:`` line naming the key, flag or file; never
exit 1 with a raw exception name, never a traceback; and no input file is ever written.

``streamer.cli.main`` runs in this process (the subprocess cases live in test_bad_input.py),
so a hypothesis test can try many generated pipeline files.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from media import REPO_ROOT, SPEECH_RECORDING, read_jsonl, write_audio

from pipelines.audio_tagging import build
from streamer.cli import main

PREFIX = "streamer: error: "
#: An error line that is only a Python exception (``ValueError: ...``), not a message.
RAW_EXCEPTION = re.compile(r"^streamer: error: \w*(Error|Exception)\b")
FACTORY = "pipelines.audio_tagging:build"


# factories and pipeline paths resolve from the repository root, as on the command line
pytestmark = pytest.mark.usefixtures("in_repo")


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(pipeline: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, table in pipeline.items():
        if section == "sinks":
            for sink in table:
                lines.append("[[sinks]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in sink.items()]
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *names: str) -> str:
    """Exit 2, exactly one error line (no traceback), naming every one of ``names``."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1, err
    line = errors[0]
    for name in names:
        assert name in line, f"{name!r} not named in {line!r}"
    return line


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.5 s of a tone, 16 kHz mono."""
    t = np.arange(8000) / 16000
    samples = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return write_audio(tmp_path_factory.mktemp("media") / "tone.wav", samples)


def model_pipeline(wav: Path, **model: Any) -> dict[str, Any]:
    return {
        "source": {"uri": str(wav)},
        "model": {
            "factory": FACTORY,
            "features": "logmel",
            "labels": ["silence", "speech"],
            **model,
        },
    }


# -- the examples the issue names, one each ------------------------------------------------

CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], tuple[str, ...]]] = {
    "chunk-bool": (lambda w: {"source": {"uri": str(w), "chunk": True}}, ("[source] chunk",)),
    "rate-bool": (lambda w: {"source": {"uri": str(w), "rate": True}}, ("[source] rate",)),
    "chunk-str": (lambda w: {"source": {"uri": str(w), "chunk": "512"}}, ("[source] chunk",)),
    "mono-str": (lambda w: {"source": {"uri": str(w), "mono": "yes"}}, ("[source] mono",)),
    "chunk-huge": (
        lambda w: {"source": {"uri": str(w), "chunk": 1_000_000_000}},
        ("[source] chunk",),
    ),
    "rate-inf": (lambda w: {"source": {"uri": str(w), "rate": math.inf}}, ("[source] rate",)),
    "rate-1e9": (lambda w: {"source": {"uri": str(w), "rate": 1e9}}, ("[source] rate",)),
    "threads-huge": (lambda w: model_pipeline(w, threads=100_000), ("[model] threads",)),
    "threshold-unknown-label": (
        lambda w: model_pipeline(w, thresholds={"music": 0.5}),
        ("thresholds", "music"),
    ),
    "threshold-not-number": (
        lambda w: model_pipeline(w, thresholds={"speech": "high"}),
        ("thresholds",),
    ),
    "threshold-nan": (
        lambda w: model_pipeline(w, thresholds={"speech": math.nan}),
        ("thresholds",),
    ),
    "smoothing-unknown-target": (
        lambda w: model_pipeline(w, smoothing={"on": 0.6, "target": "music"}),
        ("smoothing.target", "music"),
    ),
    "smoothing-unknown-key": (
        lambda w: model_pipeline(w, smoothing={"onn": 0.6}),
        ("onn",),
    ),
    "smoothing-pad-negative": (
        lambda w: model_pipeline(w, smoothing={"pad": -0.03}),
        ("smoothing.pad",),
    ),
    "smoothing-pad-not-number": (
        lambda w: model_pipeline(w, smoothing={"pad": "30ms"}),
        ("smoothing.pad",),
    ),
    "feature-option-of-the-source": (
        lambda w: model_pipeline(w, feature_options={"rate": 8000}),
        ("feature_options", "rate"),
    ),
    "feature-option-wrong-type": (
        lambda w: model_pipeline(w, feature_options={"n_mels": "many"}),
        ("feature_options.n_mels",),
    ),
    "feature-option-huge": (
        lambda w: model_pipeline(w, feature_options={"n_fft": 10**9}),
        ("feature_options.n_fft",),
    ),
    "window-options-on-frame-head": (lambda w: model_pipeline(w, window=5), ("window",)),
    "softmax-over-one-label": (
        lambda w: model_pipeline(w, labels=["speech"], activation="softmax"),
        ("activation", "softmax"),
    ),
    "end-token-outside-vocabulary": (
        lambda w: model_pipeline(w, head="generate", end_token="<eos>"),
        ("end_token", "<eos>"),
    ),
    "model-key-without-model": (
        lambda w: {"source": {"uri": str(w)}, "model": {"head": "window", "window": 4}},
        ("head",),
    ),
    "brightness-on-audio": (
        lambda w: {"source": {"uri": str(w)}, "model": {"builtin": "brightness"}},
        ("builtin", "brightness", "audio"),
    ),
    "energy-on-video": (
        lambda w: {
            "source": {"uri": "synthetic:shapes?duration=1"},
            "model": {"builtin": "energy"},
        },
        ("builtin", "energy", "video"),
    ),
    "endless-source-offline": (
        lambda w: {"source": {"uri": "synthetic:noise"}, "run": {"mode": "offline"}},
        ("[run] mode", "synthetic:noise"),
    ),
    "looping-file-offline": (
        lambda w: {"source": {"uri": str(w), "loop": True}, "run": {"mode": "offline"}},
        ("[run] mode",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_pipeline_is_refused_before_the_run(
    case: str, short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, names = CASES[case]
    pipeline = tmp_path / "bad.toml"
    pipeline.write_text(toml_text(make(short_wav)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, ["run", str(pipeline), "--out", str(out), "-q"])
    assert_refused(code, err, str(pipeline), *names)
    assert not out.exists(), "a refused run must not create or truncate its outputs"


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--duration", "-1"),
        ("--speed", "1e-300"),
        ("--speed", "nan"),
        ("--max-frames", "0"),
    ],
)
def test_bad_flag_is_refused_like_the_file(
    flag: str, value: str, short_wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, ["run", "--source", str(short_wav), flag, value, "-q"])
    assert_refused(code, err, flag)


def test_endless_source_offline_is_fine_when_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["run", "--source", "synthetic:noise", "--mode", "offline", "--duration", "0.5"]
    code, err = run(capsys, [*args, "--out", str(out), "-q"])
    assert code == 0, err
    records = read_jsonl(out)
    assert len(records) == math.ceil(0.5 * 16000 / 512)


def test_bounded_numbers_within_range_run(
    short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bounds refuse nonsense, not what a real file needs: 96 kHz, big chunks."""
    pipeline = tmp_path / "ok.toml"
    text = toml_text({"source": {"uri": str(short_wav), "rate": 96000, "chunk": 48000}})
    pipeline.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, ["run", str(pipeline), "--out", str(out), "-q"])
    assert code == 0, err
    assert len(read_jsonl(out)) == 1  # 0.5 s at 96 kHz in one chunk of 48000


# -- generated hostile files ---------------------------------------------------------------

KEYS: list[tuple[str, str]] = [
    ("source", "rate"),
    ("source", "chunk"),
    ("source", "size"),
    ("source", "mono"),
    ("source", "speed"),
    ("source", "pace"),
    ("source", "loop"),
    ("source", "stream"),
    ("run", "duration"),
    ("run", "max_frames"),
    ("run", "queue"),
    ("run", "mode"),
    ("model", "labels"),
    ("model", "thresholds"),
    ("model", "smoothing"),
    ("model", "head"),
    ("model", "window"),
    ("model", "hop"),
    ("model", "reduce"),
    ("model", "lookahead"),
    ("model", "chunk"),
    ("model", "activation"),
    ("model", "threads"),
    ("model", "max_batch"),
    ("model", "max_wait_ms"),
    ("model", "ttl"),
    ("model", "end_token"),
    ("model", "on_gap"),
    ("model", "feature_options"),
    ("model", "options"),
]

LABEL_NAMES = st.sampled_from(["silence", "speech", "music", "", "SPEECH"])
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 2, 10**9, 10**15]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "512", "yes", "true", "nan", "realtime", "window", "music"]),
)
#: Values a real file might hold, so that many generated runs get past validation.
PLAUSIBLE = st.sampled_from(
    [
        1,
        2,
        3,
        4,
        8,
        0,
        0.5,
        0.05,
        1.5,
        16000,
        8000,
        "mean",
        "max",
        "last",
        "frame",
        "window",
        "sequence",
        "generate",
        "online",
        "offline",
        "realtime",
        "fast",
        "keep",
        "reset",
        "sigmoid",
        "softmax",
        "none",
        "speech",
        True,
        False,
        ["silence", "speech"],
        ["speech"],
        {"speech": 0.5},
        {"on": 0.6, "off": 0.4, "min_on": 0.1},
        {"min_off": 0.2},
        [32, 24],
    ]
)
VALUES = st.one_of(
    PLAUSIBLE,
    PLAUSIBLE,
    SCALARS,
    st.lists(st.one_of(SCALARS, LABEL_NAMES), max_size=3),
    st.dictionaries(LABEL_NAMES, SCALARS, max_size=2),
    st.fixed_dictionaries(
        {},
        optional={
            "on": SCALARS,
            "off": SCALARS,
            "target": LABEL_NAMES,
            "min_on": SCALARS,
            "default": LABEL_NAMES,
        },
    ),
)


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3),
    with_model=st.booleans(),
)
def test_generated_bad_files_exit_0_or_2_with_one_line(
    changes: list[tuple[tuple[str, str], Any]],
    with_model: bool,
    short_wav: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline: dict[str, Any] = (
        model_pipeline(short_wav) if with_model else {"source": {"uri": str(short_wav)}}
    )
    pipeline.setdefault("run", {})["max_frames"] = 8
    for (section, key), value in changes:
        pipeline.setdefault(section, {})[key] = value
    path = tmp_path / "generated.toml"
    path.write_text(toml_text(pipeline), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = run(capsys, ["run", str(path), "--out", str(out), "-q"])
    event(f"exit {code}")
    assert "Traceback" not in err, err
    assert code in (0, 2), f"exit {code}: {err}"
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith(PREFIX)]
        assert len(errors) == 1, err
        assert not RAW_EXCEPTION.match(errors[0]), errors[0]


# -- file safety ---------------------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path: Path, short_wav: Path) -> dict[str, Path]:
    """One of each kind of input, in a fresh folder: source file, recording, model file,
    pipeline file (which names them all)."""
    wav = Path(shutil.copy(short_wav, tmp_path / "talk.wav"))
    recording = tmp_path / "rec"
    shutil.copytree(SPEECH_RECORDING, recording)
    weights = tmp_path / "weights.pt"
    rnn, head = build()
    torch.save(torch.nn.Sequential(rnn, head).state_dict(), weights)
    return {
        "source": wav,
        "recording": recording / "s0.data",
        "recording-meta": recording / "meta.json",
        "model": weights,
        "factory": REPO_ROOT / "pipelines" / "audio_tagging.py",
    }


def pipeline_for(tmp_path: Path, inputs: dict[str, Path], kind: str) -> Path:
    """A pipeline file reading the input of ``kind`` (and the model file)."""
    uri = (
        f"recording:{inputs['recording'].parent}"
        if kind.startswith("recording")
        else str(inputs["source"])
    )
    text = toml_text(
        {
            "source": {"uri": uri},
            "model": {
                "factory": FACTORY,
                "path": str(inputs["model"]),
                "features": "logmel",
                "labels": ["silence", "speech"],
            },
            "run": {"max_frames": 4},
        }
    )
    path = tmp_path / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


INPUT_KINDS = ["source", "recording", "recording-meta", "model", "factory", "pipeline"]
OUTPUT_KINDS = ["--out", "--metrics", "[[sinks]] path", "symlink --out", "hardlink --out"]


# (a hard link needs the same file system: the repository's factory module is not linked)
PAIRS = [
    (k, o) for k in INPUT_KINDS for o in OUTPUT_KINDS if (k, o) != ("factory", "hardlink --out")
]


@pytest.mark.parametrize(("kind", "output"), PAIRS)
def test_an_input_is_never_an_output(
    kind: str,
    output: str,
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = pipeline_for(tmp_path, inputs, kind)
    victim = pipeline if kind == "pipeline" else inputs[kind]
    before = {p: digest(p) for p in [*inputs.values(), pipeline]}
    args = ["run", str(pipeline), "-q"]
    if output == "--out":
        args += ["--out", str(victim)]
    elif output == "--metrics":
        args += ["--out", str(tmp_path / "fine.jsonl"), "--metrics", str(victim)]
    elif output == "symlink --out":
        link = tmp_path / "innocent.jsonl"
        link.symlink_to(victim)
        args += ["--out", str(link)]
    elif output == "hardlink --out":
        link = tmp_path / "innocent.jsonl"
        os.link(victim, link)
        args += ["--out", str(link)]
    else:  # a sink in the pipeline file itself
        text = pipeline.read_text(encoding="utf-8")
        pipeline.write_text(text + f'[[sinks]]\ntype = "jsonl"\npath = "{victim}"\n')
        before[pipeline] = digest(pipeline)
    code, err = run(capsys, args)
    assert_refused(code, err, "input of this run")
    assert {p: digest(p) for p in before} == before


def test_two_outputs_on_one_file_are_refused(
    short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n", encoding="utf-8")
    pipeline = tmp_path / "two.toml"
    pipeline.write_text(
        toml_text(
            {"source": {"uri": str(short_wav)}, "sinks": [{"type": "jsonl", "path": str(out)}]}
        )
    )
    code, err = run(capsys, ["run", str(pipeline), "--metrics", str(out), "-q"])
    assert_refused(code, err, "--metrics", "two outputs")
    assert out.read_text(encoding="utf-8") == "earlier results\n"


def test_a_refused_run_leaves_every_output_as_it_was(
    short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first sink's file survives a bad second sink (and a bad model) untouched."""
    first = tmp_path / "first.jsonl"
    first.write_text('{"earlier": 1}\n', encoding="utf-8")
    for bad in (
        {"type": "jsonl", "path": str(tmp_path / "missing" / "second.jsonl")},
        {"type": "jsonl", "path": str(tmp_path)},
    ):
        pipeline = tmp_path / "p.toml"
        sinks = [{"type": "jsonl", "path": str(first)}, bad]
        pipeline.write_text(toml_text({"source": {"uri": str(short_wav)}, "sinks": sinks}))
        code, err = run(capsys, ["run", str(pipeline), "-q"])
        assert_refused(code, err, str(bad["path"]))
        assert first.read_text(encoding="utf-8") == '{"earlier": 1}\n'
    # a model that does not fit is found by the dry step, after the sinks were made
    pipeline = tmp_path / "p.toml"
    data = model_pipeline(short_wav, options={"n_mels": 13})
    data["sinks"] = [{"type": "jsonl", "path": str(first)}]
    pipeline.write_text(toml_text(data))
    code, err = run(capsys, ["run", str(pipeline), "-q"])
    assert_refused(code, err, "model")
    assert first.read_text(encoding="utf-8") == '{"earlier": 1}\n'


def test_metrics_folder_is_refused_before_the_run(
    short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    code, err = run(
        capsys,
        ["run", "--source", str(short_wav), "--out", str(out), "--metrics", str(tmp_path), "-q"],
    )
    assert_refused(code, err, "--metrics", "folder")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rate", "inf"),
        ("--rate", "nan"),
        ("--rate", "1e9"),
        ("--chunk", "0"),
        ("--chunk", "10000000000"),
    ],
)
def test_bad_record_flags_are_refused_before_anything_is_written(
    flag: str, value: str, short_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rec"
    code, err = run(capsys, ["record", str(short_wav), str(out), flag, value])
    assert_refused(code, err, flag)
    assert list(tmp_path.iterdir()) == []  # no recording, no partial folder
