"""The ``[model]`` section end to end: the ``streamer run`` command on real files.

A user points ``[model]`` at a factory, a state dict for it, a TorchScript file or an ONNX
file, and runs it online (with a lookahead) or offline, per frame, window or sequence.
For a causal model ``--mode online`` and ``--mode offline`` give the same scores, and the
scores are those of the model run directly over the file's log-mel features. Bad models
are refused before the run with exit code 2 and one line naming what is wrong.

The runs of a group are made by one fixture, through ``streamer.cli.main`` in this
process (a fresh Python with torch would cost seconds of CPU each), and the tests check
their results. Pipeline files are written in a temporary folder with absolute paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media import (
    CHUNK,
    REPO_ROOT,
    SPEECH_FRAMES,
    describe,
    read_jsonl,
    speech_samples,
    write_audio,
    write_speech_wav,
)
from torch import Tensor, nn

from pipelines.audio_tagging import build
from streamer.cli import main
from streamer.stages.model.features import logmel_offline

LABELS = ["silence", "speech"]
SECONDS = 2.0
ATOL = 1e-5
PREFIX = "streamer: error: "
FACTORY = "pipelines.audio_tagging:build"


def logmel_steps(samples: int) -> int:
    """Log-mel steps of ``samples`` real samples (the zero padding of a file source's last
    chunk makes none)."""
    return (samples - 400) // 160 + 1


STEPS = logmel_steps(round(SECONDS * 16000))


# --- helpers -----------------------------------------------------------------------------


def toml(value: Any) -> str:
    """A TOML value for a str, path, number, bool or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


def write_pipeline(
    path: Path,
    source: Path | str,
    model: dict[str, Any],
    source_keys: dict[str, Any] | None = None,
) -> Path:
    lines = ["[source]", f"uri = {toml(source)}"]
    lines += [f"{key} = {toml(value)}" for key, value in (source_keys or {}).items()]
    lines += ["", "[model]"]
    lines += [f"{key} = {toml(value)}" for key, value in model.items()]
    lines += ["", "[run]", 'mode = "online"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    out: Path
    metrics: Path

    @property
    def records(self) -> list[dict[str, Any]]:
        assert self.result.returncode == 0, describe(self.result)
        return read_jsonl(self.out)

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.metrics.read_text(encoding="utf-8"))
        return data


@dataclass(frozen=True)
class Job:
    pipeline: Path
    mode: str
    extra: tuple[str, ...] = ()


def run_all(jobs: dict[str, Job], folder: Path, cwd: Path = REPO_ROOT) -> dict[str, Run]:
    """``streamer run PIPELINE --mode MODE --out --metrics -q`` for every job, one after
    the other through ``streamer.cli.main`` in this process (cwd: ``cwd``): what is
    tested is the run's result, not a process (the real processes' side of bad input is
    ``test_bad_input.py``'s, whole runs ``test_cli.py``'s)."""
    runs: dict[str, Run] = {}
    for name, job in jobs.items():
        out, metrics = folder / f"{name}.jsonl", folder / f"{name}.metrics.json"
        args = ["run", str(job.pipeline), "--mode", job.mode, "--out", str(out)]
        args += ["--metrics", str(metrics), "-q", *job.extra]
        runs[name] = Run(run_here(args, cwd), out, metrics)
    return runs


def run_here(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``streamer ARGS`` by ``main`` in this process from ``cwd``, its stdout and stderr
    captured; the working folder, ``sys.path`` and the modules a run imported from
    ``cwd`` (a user's factory module) are put back afterwards."""
    before_path, before_modules, here = list(sys.path), set(sys.modules), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(here)
        sys.path[:] = before_path
        for module in set(sys.modules) - before_modules:
            origin = getattr(sys.modules[module], "__file__", None) or ""
            if origin.startswith(str(cwd)) and cwd != REPO_ROOT:
                del sys.modules[module]
    return subprocess.CompletedProcess(["streamer", *args], code, out.getvalue(), err.getvalue())


Key = tuple[str, int, int]


def by_key(records: Sequence[dict[str, Any]]) -> dict[Key, dict[str, float]]:
    keyed = {(r["kind"], r["start"], r["end"]): r["scores"] for r in records}
    assert len(keyed) == len(records), "two outputs cover the same frames"
    return keyed


def max_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> float:
    ka, kb = by_key(a), by_key(b)
    assert list(ka) == list(kb)
    return max((abs(sa[k] - kb[key][k]) for key, sa in ka.items() for k in sa), default=0.0)


def assert_same_scores(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], atol: float = ATOL
) -> None:
    worst = max_difference(a, b)
    assert worst <= atol, f"scores differ by up to {worst}"


def scores_array(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[r["scores"][label] for label in LABELS] for r in records])


def check_frames(records: Sequence[dict[str, Any]], steps: int = STEPS) -> None:
    assert [r["kind"] for r in records] == ["frame"] * steps
    assert [r["start"] for r in records] == list(range(steps))
    for record in records:
        assert list(record["scores"]) == LABELS
        assert record["label"] in LABELS
        assert math.isclose(sum(record["scores"].values()), 1.0, abs_tol=1e-9)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused run (exit code 2, no traceback)."""
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith(PREFIX), describe(result)
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


# --- user models, and what they should give ----------------------------------------------


class ScriptedTagger(nn.Module):
    """``forward(x, state) -> (y, state)`` around a GRU and a head, to be scripted."""

    def __init__(self, rnn: nn.GRU, head: nn.Linear) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        out, h = self.rnn(x, state)
        return self.head(out), h


class OnnxTagger(nn.Module):
    """The same with an explicit state input ``h [L, B, H]``, for ONNX export."""

    def __init__(self, rnn: nn.GRU, head: nn.Linear) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out, h = self.rnn(x, h)
        return self.head(out), h


def save_torchscript(path: Path) -> Path:
    rnn, head = build()  # the factory's own (seeded) weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(ScriptedTagger(rnn, head).eval())
        scripted.save(str(path))  # type: ignore[no-untyped-call]
    return path


def save_onnx(path: Path) -> Path:
    rnn, head = build()
    module = OnnxTagger(rnn, head).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 5, 40), torch.zeros(2, 1, 64)),
            str(path),
            dynamo=False,
            input_names=["x", "h"],
            output_names=["y", "h_out"],
            dynamic_axes={
                "x": {0: "batch", 1: "time"},
                "h": {1: "batch"},
                "y": {0: "batch", 1: "time"},
                "h_out": {1: "batch"},
            },
        )
    return path


def tagger(perturb: float = 0.0) -> nn.Sequential:
    """The factory's architecture and weights, optionally nudged (a user's training)."""
    model = nn.Sequential(*build())
    if perturb:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)
            for param in model.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
    return model.eval()


def save_state_dict(path: Path, perturb: float = 0.0) -> Path:
    """What a user saves after training: ``torch.save(model.state_dict(), path)``."""
    torch.save(tagger(perturb).state_dict(), path)
    return path


def expected_scores(seconds: float, perturb: float = 0.0, lookahead: int = 0) -> np.ndarray:
    """The tagger over the whole file's log-mel features, at once: softmax scores [T, 2]."""
    x = logmel_offline(speech_samples(seconds), rate=16000)
    x = torch.cat([x, torch.zeros(lookahead, x.shape[1])])
    model = tagger(perturb)
    with torch.no_grad():
        out, _ = model[0](x[None])
        y = model[1](out)[0][lookahead:]
    return torch.softmax(y.double(), dim=1).numpy()


# --- the bundled pipeline, user checkpoints, heads, lookahead ----------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every successful run of this file, side by side (cwd: the repository)."""
    tmp = tmp_path_factory.mktemp("model-cli")
    wav = write_speech_wav(tmp / "speech.wav", seconds=SECONDS)
    common: dict[str, Any] = {"features": "logmel", "labels": LABELS}
    models: dict[str, dict[str, Any]] = {
        "state_dict": {"factory": FACTORY, "path": save_state_dict(tmp / "tagger.pt"), **common},
        "perturbed": {
            "factory": FACTORY,
            "path": save_state_dict(tmp / "trained.pth", perturb=0.2),
            **common,
        },
        "torchscript": {"path": save_torchscript(tmp / "tagger_script.pt"), **common},
        "onnx": {"path": save_onnx(tmp / "tagger.onnx"), **common},
        "window": {"factory": FACTORY, **common, "head": "window", "window": 10, "hop": 5},
        "sequence": {"factory": FACTORY, **common, "head": "sequence"},
        "lookahead": {"factory": FACTORY, **common, "lookahead": 3, "chunk": 7},
    }
    modes = {
        "state_dict": ["online"],
        "perturbed": ["online"],
        "torchscript": ["online", "offline"],
        "onnx": ["online", "offline"],
        "window": ["online"],
        "sequence": ["offline"],
        "lookahead": ["online", "offline"],
    }
    jobs: dict[str, Job] = {}
    for name, model in models.items():
        pipeline = write_pipeline(tmp / f"{name}.toml", wav, model)
        for mode in modes[name]:
            jobs[f"{name}-{mode}"] = Job(pipeline, mode)
    bundled = REPO_ROOT / "pipelines" / "gru_tagging.toml"
    for mode in ("online", "offline"):
        jobs[f"gru_tagging-{mode}"] = Job(bundled, mode, ("--duration", "5"))
    return run_all(jobs, tmp)


def test_gru_tagging_pipeline_online_equals_offline(runs: dict[str, Run]) -> None:
    """The bundled pipeline (2-layer GRU over log-mel) gives the same scores per frame in
    both modes: the CLI-level equivalence."""
    online, offline = runs["gru_tagging-online"], runs["gru_tagging-offline"]
    steps = logmel_steps(math.ceil(5 * 16000 / CHUNK) * CHUNK)
    assert steps < logmel_steps(SPEECH_FRAMES * CHUNK)
    check_frames(online.records, steps)
    check_frames(offline.records, steps)
    assert_same_scores(online.records, offline.records)
    assert [r["label"] for r in online.records] == [r["label"] for r in offline.records]
    assert online.summary["lookahead_frames"] == 0
    assert online.summary["dropped"] == 0
    assert offline.summary["mode"] == "offline"


@pytest.mark.parametrize("name", ["state_dict", "torchscript", "onnx"])
def test_user_checkpoint_of_the_factory_weights_gives_its_scores(
    runs: dict[str, Run], name: str
) -> None:
    """A state dict (with the factory), a TorchScript file and an ONNX file, each holding
    the factory's weights, give the scores of that model run over the whole file."""
    records = runs[f"{name}-online"].records
    check_frames(records)
    np.testing.assert_allclose(scores_array(records), expected_scores(SECONDS), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["torchscript", "onnx"])
def test_model_files_run_online_and_offline_alike(runs: dict[str, Run], name: str) -> None:
    online, offline = runs[f"{name}-online"].records, runs[f"{name}-offline"].records
    check_frames(offline)
    assert_same_scores(online, offline)


def test_state_dict_weights_replace_the_factory_weights(runs: dict[str, Run]) -> None:
    trained = scores_array(runs["perturbed-online"].records)
    np.testing.assert_allclose(trained, expected_scores(SECONDS, 0.2), atol=ATOL, rtol=0)
    assert np.abs(trained - expected_scores(SECONDS)).max() > 1e-3


def test_window_head_from_toml(runs: dict[str, Run]) -> None:
    records = runs["window-online"].records
    ends = list(range(9, STEPS, 5))
    assert [(r["kind"], r["start"], r["end"]) for r in records] == [
        ("window", end - 9, end) for end in ends
    ]
    frames = expected_scores(SECONDS)
    want = np.stack([frames[end - 9 : end + 1].mean(0) for end in ends])  # reduce = mean
    np.testing.assert_allclose(scores_array(records), want, atol=ATOL, rtol=0)
    assert [r["label"] for r in records] == [LABELS[int(i)] for i in want.argmax(1)]


def test_sequence_head_from_toml(runs: dict[str, Run]) -> None:
    records = runs["sequence-offline"].records
    assert [(r["kind"], r["start"], r["end"]) for r in records] == [("sequence", 0, STEPS - 1)]
    last = expected_scores(SECONDS)[-1]  # reduce = last
    np.testing.assert_allclose(scores_array(records)[0], last, atol=ATOL, rtol=0)


def test_online_lookahead_is_a_declared_delay(runs: dict[str, Run]) -> None:
    """lookahead = 3 (30 ms of log-mel steps): reported in the run summary, and the online
    scores equal the offline ones and the model's own, delayed by three steps."""
    online, offline = runs["lookahead-online"], runs["lookahead-offline"]
    check_frames(online.records)
    assert_same_scores(online.records, offline.records)
    want = expected_scores(SECONDS, lookahead=3)
    np.testing.assert_allclose(scores_array(online.records), want, atol=ATOL, rtol=0)
    for run in (online, offline):
        assert run.summary.get("lookahead_frames") == 3, run.summary
        assert run.summary.get("lookahead_s") == pytest.approx(3 * 160 / 16000), run.summary


# --- bad models: refused before the run, one line, exit code 2 ---------------------------

USER_MODELS = """
import torch
from torch import nn


def tagger():
    torch.manual_seed(0)
    return nn.GRU(40, 16, batch_first=True), nn.Linear(16, 2)


def bidirectional():
    torch.manual_seed(0)
    return nn.GRU(40, 8, batch_first=True, bidirectional=True), nn.Linear(16, 2)


def raises():
    raise RuntimeError("weights server unreachable")


def a_string():
    return "not a model"
"""


class Evil:
    """A pickle that would create ``marker`` when loaded: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@dataclass(frozen=True)
class Bad:
    model: dict[str, Any]
    names: tuple[str, ...]
    source: str = "speech"
    source_keys: tuple[tuple[str, Any], ...] = ()


BAD: dict[str, Bad] = {
    # 16 samples x 3 channels of raw audio into a GRU taking 40 features per step
    "three_channels": Bad(
        {"factory": "user_models:tagger", "features": "raw", "labels": LABELS},
        ("stage 'model'", "48", "[40]"),
        source="three",
        source_keys=(("chunk", 16),),
    ),
    "missing_module": Bad(
        {"factory": "no_such_module_x1:build", "labels": LABELS},
        ("factory 'no_such_module_x1:build'", "not found"),
    ),
    "factory_raises": Bad(
        {"factory": "user_models:raises", "labels": LABELS},
        ("factory 'user_models:raises'", "RuntimeError", "weights server unreachable"),
    ),
    "factory_returns_a_string": Bad(
        {"factory": "user_models:a_string", "labels": LABELS},
        ("factory 'user_models:a_string'", "str"),
    ),
    # a plain pickle (protocol 5) and torch.save's zip, both of an object that runs code
    "pickle_file": Bad({"path": "{tmp}/evil.pt", "labels": LABELS}, ("evil.pt", "never")),
    "pickle_zip_file": Bad(
        {"factory": "user_models:tagger", "path": "{tmp}/evil_zip.pt", "labels": LABELS},
        ("evil_zip.pt", "never"),
    ),
    "bidirectional_online": Bad(
        {"factory": "user_models:bidirectional", "features": "logmel", "labels": LABELS},
        ("stage 'model'", "bidirectional", "offline"),
    ),
    "labels_count": Bad(
        {"factory": "user_models:tagger", "features": "logmel", "labels": ["a", "b", "c"]},
        ("stage 'model'", "2 scores", "3"),
    ),
    "unknown_key": Bad(
        {"factory": "user_models:tagger", "labels": LABELS, "lookahaed": 2},
        ("unknown_key.toml", "unknown key 'lookahaed'", "[model]"),
    ),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Run], Path]:
    """Every bad case side by side, run from a folder with the user's factory module."""
    tmp = tmp_path_factory.mktemp("refused")
    (tmp / "user_models.py").write_text(USER_MODELS, encoding="utf-8")
    sources = {
        "speech": write_speech_wav(tmp / "speech.wav", seconds=0.5),
        "three": write_audio(
            tmp / "three.wav",
            np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 3)).astype(np.float32),
        ),
    }
    with (tmp / "evil.pt").open("wb") as file:
        pickle.dump(Evil(tmp / "pwned"), file, protocol=pickle.HIGHEST_PROTOCOL)
    torch.save(Evil(tmp / "pwned_zip"), tmp / "evil_zip.pt")
    jobs: dict[str, Job] = {}
    for name, case in BAD.items():
        model = {
            key: value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value
            for key, value in case.model.items()
        }
        pipeline = write_pipeline(
            tmp / f"{name}.toml", sources[case.source], model, dict(case.source_keys)
        )
        jobs[name] = Job(pipeline, "online")
    return run_all(jobs, tmp, cwd=tmp), tmp


@pytest.mark.parametrize("name", list(BAD))
def test_bad_model_is_refused_with_one_line(
    refused: tuple[dict[str, Run], Path], name: str
) -> None:
    runs, _ = refused
    line = error_line(runs[name].result)
    for expected in BAD[name].names:
        assert expected in line, line
    out = runs[name].out
    assert not out.exists() or out.read_text(encoding="utf-8") == ""


def test_pickled_objects_are_never_unpickled(refused: tuple[dict[str, Run], Path]) -> None:
    runs, tmp = refused
    for name in ("pickle_file", "pickle_zip_file"):
        assert runs[name].result.returncode == 2, describe(runs[name].result)
    assert not (tmp / "pwned").exists()
    assert not (tmp / "pwned_zip").exists()
