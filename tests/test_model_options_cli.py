"""``[model] options`` for model files, and models refused before the run, from a pipeline
file through the real command (in process: ``streamer.cli.main``).

ONNX files exported here lay out their inputs so that "the data is the first input" would
be wrong (the state first, a constant ``sr`` input between); the pipeline file's
``[model] options`` (``constants``, ``input_name``, ``state_map``...) reach the adapter, and
the scores are those of the torch module the file was exported from. Bad models and
options end with exit code 2 and one ``streamer: error:`` line that names the key to fix.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from media import read_jsonl, write_audio
from onnx_exports import StateFirst, export_state_first, export_twin
from torch import Tensor, nn

from streamer.cli import main

CHUNK = 16  # raw features: 16 values per step
FRAMES = 120
LABELS = '["a", "b"]'
MODULE = "streamer_issue6_models"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

USER_MODELS = """
import torch
from torch import nn


class Leaky(nn.Module):
    def __init__(self, outputs=2):
        super().__init__()
        torch.manual_seed(0)
        self.out = nn.Linear(16, outputs)

    def forward(self, x, state):
        h = torch.zeros(x.shape[0], self.out.out_features) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            h = 0.5 * h + self.out(x[:, t])
            ys.append(h)
        return torch.stack(ys, dim=1), h


class LastStep(Leaky):
    def forward(self, x, state):
        y, h = super().forward(x, state)
        return y[:, -1:], h


class Strict(Leaky):
    def forward(self, x, state):
        if state is None:
            raise ValueError("Strict needs its state")
        return super().forward(x, state)

    def initial_state(self, batch):
        return torch.full((batch, self.out.out_features), 0.3)


def leaky(outputs=2):
    return Leaky(outputs)


def last_step():
    return LastStep()


def strict():
    return Strict()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with a WAV of noise, the user's factory module and ONNX files."""
    tmp = tmp_path_factory.mktemp("model-options")
    samples = np.random.default_rng(6).uniform(-0.5, 0.5, FRAMES * CHUNK).astype(np.float32)
    write_audio(tmp / "noise.wav", samples, subtype="FLOAT")
    (tmp / f"{MODULE}.py").write_text(USER_MODELS, encoding="utf-8")
    sys.path.insert(0, str(tmp))
    yield tmp
    sys.path.remove(str(tmp))
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def state_first(folder: Path) -> tuple[Path, StateFirst]:
    path = folder / "state_first.onnx"
    return path, export_state_first(path, CHUNK, seed=5)


class BatchFirst(nn.Module):
    """A GRUCell loop whose state ``h [B, H, 1]`` is batch-first: 3-d, so the default
    batch axis (1) is wrong and the TorchScript file needs ``state_batch_axes = [0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(CHUNK, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        h = torch.zeros(x.shape[0], self.cell.hidden_size) if state is None else state[:, :, 0]
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            ys.append(self.out(h))
        return torch.stack(ys, dim=1), h[:, :, None]


@pytest.fixture(scope="module")
def files(folder: Path) -> dict[str, Path]:
    """More model files: an ambiguous ONNX layout, a traced and a scripted module."""
    export_twin(folder / "twin.onnx", CHUNK)
    torch.manual_seed(9)
    module = BatchFirst().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(folder / "batch_first.pt"))  # type: ignore[no-untyped-call]
        traced = torch.jit.trace(module, (torch.zeros(1, 2, CHUNK), torch.zeros(1, 4, 1)))
        traced.save(str(folder / "traced.pt"))  # type: ignore[no-untyped-call]
    return {
        "twin": folder / "twin.onnx",
        "scripted": folder / "batch_first.pt",
        "traced": folder / "traced.pt",
    }


def pipeline(folder: Path, name: str, model: str) -> Path:
    """A pipeline file: the noise WAV in chunks of 16 samples, then ``model`` (TOML lines)."""
    path = folder / f"{name}.toml"
    text = f"""
        [source]
        uri = "{folder / "noise.wav"}"
        chunk = {CHUNK}

        [model]
        features = "raw"
        labels = {LABELS}
    """
    path.write_text(textwrap.dedent(text) + textwrap.dedent(model), encoding="utf-8")
    return path


def run(path: Path, mode: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    """``streamer run PATH --mode MODE --out ... --metrics ... -q``: exit code, stderr."""
    out = path.with_suffix(f".{mode}.jsonl")
    metrics = path.with_suffix(f".{mode}.json")
    code = main(
        ["run", str(path), "--mode", mode, "--out", str(out), "--metrics", str(metrics), "-q"]
    )
    return code, capsys.readouterr().err, out


def error_line(path: Path, capsys: pytest.CaptureFixture[str], mode: str = "online") -> str:
    code, err, out = run(path, mode, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("streamer: error: "), err
    assert not out.exists() or out.read_text(encoding="utf-8") == ""
    return lines[0]


def scores(out: Path) -> np.ndarray:
    records = read_jsonl(out)
    assert [r["start"] for r in records] == list(range(FRAMES))
    return np.array([[r["scores"]["a"], r["scores"]["b"]] for r in records])


def expected(folder: Path, module: StateFirst, sr: int) -> np.ndarray:
    samples, _ = sf.read(str(folder / "noise.wav"), dtype="float32")
    x = torch.from_numpy(samples.reshape(1, FRAMES, CHUNK))
    return torch.softmax(module.reference(x, sr)[0].double(), dim=1).numpy()


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_onnx_options_from_the_pipeline_file(
    folder: Path,
    state_first: tuple[Path, StateFirst],
    mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Inputs ``h, sr, x``: given only the constant, the data input is found by its name;
    given every name, a sample rate of 8000 changes the scores as the module says."""
    path, module = state_first
    inferred = pipeline(
        folder, "inferred", f'path = "{path}"\noptions = {{constants = {{sr = 16000}}}}\n'
    )
    code, err, out = run(inferred, mode, capsys)
    assert code == 0, err
    np.testing.assert_allclose(scores(out), expected(folder, module, 16000), atol=1e-5, rtol=0)
    summary = json.loads(inferred.with_suffix(f".{mode}.json").read_text(encoding="utf-8"))
    assert summary["model_calls"] >= 1, summary  # offline counts its forward too
    named = pipeline(
        folder,
        "named",
        f'path = "{path}"\n'
        'options = {input_name = "x", output_name = "y", state_map = {h = "h_out"},'
        " constants = {sr = 8000}}\n",
    )
    code, err, out = run(named, mode, capsys)
    assert code == 0, err
    np.testing.assert_allclose(scores(out), expected(folder, module, 8000), atol=1e-5, rtol=0)


def test_torchscript_options_from_the_pipeline_file(
    folder: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``state_batch_axes`` the batch-first state is refused naming the key; with
    ``options = {state_batch_axes = [0], input_shape = [16]}`` online equals offline."""
    path = files["scripted"]
    bare = pipeline(folder, "ts_bare", f'path = "{path}"\n')
    line = error_line(bare, capsys)
    assert "[model] options.state_batch_axes" in line, line
    axes = pipeline(
        folder,
        "ts_axes",
        f'path = "{path}"\noptions = {{state_batch_axes = [0], input_shape = [16]}}\n',
    )
    results = {}
    for mode in ("online", "offline"):
        code, err, out = run(axes, mode, capsys)
        assert code == 0, err
        results[mode] = scores(out)
    np.testing.assert_allclose(results["online"], results["offline"], atol=1e-5, rtol=0)


def test_offline_summary_counts_one_forward(
    folder: Path, state_first: tuple[Path, StateFirst], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = state_first
    file = pipeline(folder, "calls", f'path = "{path}"\noptions = {{constants = {{sr = 16000}}}}\n')
    code, err, _ = run(file, "offline", capsys)
    assert code == 0, err
    summary: dict[str, Any] = json.loads(file.with_suffix(".offline.json").read_text("utf-8"))
    assert summary["model_calls"] == 1 and summary["mean_batch"] == 1, summary


def test_factory_model_with_initial_state_runs_offline(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module whose forward rejects state=None: offline starts from its initial_state,
    and gives the online run's scores."""
    file = pipeline(folder, "strict", f'factory = "{MODULE}:strict"\n')
    results = {}
    for mode in ("online", "offline"):
        code, err, out = run(file, mode, capsys)
        assert code == 0, err
        results[mode] = scores(out)
    np.testing.assert_allclose(results["online"], results["offline"], atol=1e-5, rtol=0)


BAD: dict[str, tuple[str, tuple[str, ...]]] = {
    "traced_without_initial_state": (
        'path = "{traced}"\n',
        ("traced.pt", "cannot be None", "script it", "initial_state"),
    ),
    "unknown_torchscript_option": (
        'path = "{scripted}"\noptions = {{constants = {{sr = 16000}}}}\n',
        ("unknown key [model] options.constants for a TorchScript file", "accepted: causal"),
    ),
    "unknown_option": (
        'path = "{onnx}"\noptions = {{sample_rate = 16000}}\n',
        (
            "unknown key [model] options.sample_rate for an ONNX file",
            "accepted: causal, constants, context, input_name",
        ),
    ),
    "missing_constant": (
        'path = "{onnx}"\n',
        ("input 'sr'", "give [model] options.constants = {sr = VALUE}"),
    ),
    "bad_option_type": (
        'path = "{onnx}"\noptions = {{state_map = "h"}}\n',
        ("[model] options.state_map must be a table",),
    ),
    "ambiguous_inputs": (
        'path = "{twin}"\n',
        ("cannot tell which of the inputs ['p', 'q'] is the data", "[model] options.input_name"),
    ),
    "last_step_only": (
        'factory = "{module}:last_step"\n',
        ("stage 'model'", "one output per step", "[1, 1, 2]"),
    ),
    "softmax_one_output": (
        'factory = "{module}:leaky"\noptions = {{outputs = 1}}\nactivation = "softmax"\n',
        ("stage 'model'", "[model] activation = 'softmax'", "K = 1"),
    ),
    "end_token_outside": (
        'factory = "{module}:leaky"\nhead = "generate"\nend_token = "z"\n',
        ("end_token", "'z' is not in the vocabulary"),
    ),
    "tokens_cannot_go_back": (
        'factory = "{module}:leaky"\nhead = "generate"\n',
        ("stage 'model'", "embed_token(id)", "input size equal to the vocabulary"),
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_refused_before_the_run_with_one_line(
    folder: Path,
    state_first: tuple[Path, StateFirst],
    files: dict[str, Path],
    name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, needles = BAD[name]
    file = pipeline(folder, name, model.format(onnx=state_first[0], module=MODULE, **files))
    line = error_line(file, capsys)
    for needle in needles:
        assert needle in line, line
