"""Adapters, state, the state store, batching and model loading."""

from __future__ import annotations

import pathlib
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_exports import export_state_first, export_twin, export_unnamed
from torch import Tensor, nn

from streamer.errors import InputError
from streamer.models import (
    ContextModel,
    ModelContractError,
    ModuleModel,
    OnnxModel,
    RNNModel,
    State,
    StatefulModel,
    StateStore,
    StreamingRefused,
    TorchScriptModel,
    as_model,
    load_model,
    step_batch,
)

F, H = 4, 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gru_model(seed: int = 0, layers: int = 1) -> RNNModel:
    torch.manual_seed(seed)
    return RNNModel(nn.GRU(F, H, layers, batch_first=True), nn.Linear(H, 2))


# --- adapters ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.RNN])
def test_bidirectional_rnn_refuses_step_but_runs_forward(cls: Callable[..., nn.RNNBase]) -> None:
    torch.manual_seed(0)
    rnn = cls(F, H, 2, batch_first=True, bidirectional=True)
    head = nn.Linear(2 * H, 3)
    model = RNNModel(rnn, head, name="bi")
    assert not model.causal
    x = randn(2, 30, F)
    with pytest.raises(StreamingRefused, match=r"model 'bi' is a bidirectional .*offline"):
        model.step(x, model.initial_state(2))
    assert issubclass(StreamingRefused, InputError)
    with torch.inference_mode():
        expected = head(rnn(x)[0])
    torch.testing.assert_close(model.forward(x), expected)
    assert model.forward(x).shape == (2, 30, 3)
    assert model.initial_state(2).tensors[0].shape == (4, 2, H)


def test_rnn_state_is_layers_by_batch_by_hidden_with_batch_axis_1() -> None:
    model = RNNModel(nn.LSTM(F, H, 3, proj_size=2))
    state = model.initial_state(5)
    assert [tuple(t.shape) for t in state.tensors] == [(3, 5, 2), (3, 5, H)]
    assert state.batch_axes == (1, 1)
    assert model.input_shape == (F,)
    assert model.causal


def test_rnn_rejects_wrong_features_empty_chunks_and_batch_mismatch() -> None:
    model = gru_model()
    state = model.initial_state(1)
    with pytest.raises(InputError, match=r"model 'rnn' takes features of shape \[4\]"):
        model.step(randn(1, 3, F + 1), state)
    with pytest.raises(ValueError, match="empty chunk"):
        model.step(randn(1, 0, F), state)
    with pytest.raises(ValueError, match="2 streams but the state has 1"):
        model.step(randn(2, 3, F), state)
    with pytest.raises(ValueError, match=r"\[B, T, F\.\.\.\]"):
        model.step(randn(3, F), state)


class NotCausal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.causal = False
        self.gru = nn.GRU(F, H, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        y, h = self.gru(x, state)
        return y, h


def test_module_declared_not_causal_refuses_step() -> None:
    model = ModuleModel(NotCausal(), name="bi-module")
    assert not model.causal
    with pytest.raises(StreamingRefused, match="bi-module"):
        model.step(randn(1, 5, F), model.initial_state(1))
    assert model.forward(randn(1, 5, F)).shape == (1, 5, 2 * H)


class BatchFirstState(nn.Module):
    """State ``[B, H, 1]``: 3-d but batch-first, which the default axis (1) gets wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(F, H)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        h = torch.zeros(x.shape[0], self.cell.hidden_size) if state is None else state[:, :, 0]
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            ys.append(h)
        return torch.stack(ys, dim=1), h[:, :, None]


def test_module_state_batch_axes_default_argument_and_check() -> None:
    x = randn(2, 5, F)
    default = ModuleModel(BatchFirstState())
    with pytest.raises(ModelContractError, match=r"declare the axes .* state_batch_axes"):
        default.step(x, default.initial_state(2))
    declared = ModuleModel(BatchFirstState(), state_batch_axes=(0,))
    _, state = declared.step(x, declared.initial_state(2))
    assert state.batch_axes == (0,) and state.tensors[0].shape == (2, H, 1)
    wrong_count = ModuleModel(BatchFirstState(), state_batch_axes=(0, 0))
    with pytest.raises(ModelContractError, match="names 2 axes but the state has 1 tensors"):
        wrong_count.step(x, wrong_count.initial_state(2))


class BadOutput(nn.Module):
    def forward(self, x: Tensor, state: Tensor | None) -> Tensor:
        return x


def test_module_must_return_y_and_state() -> None:
    model = ModuleModel(BadOutput(), name="bad")
    with pytest.raises(
        ModelContractError,
        match=r"model 'bad': forward\(x, state\) must return \(y, state\),"
        r" got a Tensor of shape \[1, 2, 4\]",
    ):
        model.step(randn(1, 2, F), model.initial_state(1))


def test_as_model_picks_the_adapter() -> None:
    gru = nn.GRU(F, H, batch_first=True)
    assert isinstance(as_model(gru), RNNModel)
    pair = as_model((gru, nn.Linear(H, 2)))
    assert isinstance(pair, RNNModel) and pair.head is not None
    seq = as_model(nn.Sequential(gru, nn.Linear(H, 3), nn.Tanh()))
    assert isinstance(seq, RNNModel) and seq.forward(randn(1, 4, F)).shape == (1, 4, 3)
    assert isinstance(as_model(BatchFirstState()), ModuleModel)
    model = gru_model()
    assert as_model(model) is model
    assert isinstance(model, StatefulModel)
    with pytest.raises(TypeError, match="forward takes only x"):
        as_model(nn.Linear(F, 2))
    with pytest.raises(TypeError, match="got str, which is not a model"):
        as_model("gru")


# --- State ------------------------------------------------------------------------------


def test_state_stack_split_select_round_trip() -> None:
    a = State.of([randn(2, 1, 3, seed=1), randn(1, 4, seed=2)], [1, 0])
    b = State.of([randn(2, 2, 3, seed=3), randn(2, 4, seed=4)], [1, -2])
    assert b.batch_axes == (1, 0) and b.batch == 2
    both = State.stack([a, b])
    assert both.batch == 3 and both.tensors[0].shape == (2, 3, 3)
    parts = both.split()
    assert [p.batch for p in parts] == [1, 1, 1]
    torch.testing.assert_close(parts[0].tensors[0], a.tensors[0])
    torch.testing.assert_close(parts[2].tensors[1], b.tensors[1][1:])
    picked = both.select([2, 0])
    torch.testing.assert_close(picked.tensors[1], torch.cat([b.tensors[1][1:], a.tensors[1]]))
    torch.testing.assert_close(both.index(1).tensors[0], b.tensors[0][:, :1])
    # split copies: no part shares memory with the stacked state
    assert all(p.tensors[0].data_ptr() != both.tensors[0].data_ptr() for p in parts)


def test_state_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="expected 3"):
        State((torch.zeros(2, 2),), (0,), 3)
    with pytest.raises(ValueError, match="no batch axis 2"):
        State((torch.zeros(2, 2),), (2,), 2)
    with pytest.raises(ValueError, match="cannot stack states of different shapes"):
        State.stack([State.of([torch.zeros(1, 3)], [0]), State.of([torch.zeros(1, 4)], [0])])
    with pytest.raises(ValueError, match="fresh"):
        State.stack([State.fresh(1), State.of([torch.zeros(1, 3)], [0])])
    with pytest.raises(IndexError):
        State.fresh(2).select([2])
    fresh = State.stack([State.fresh(1), State.fresh(2)])
    assert fresh.is_fresh and fresh.batch == 3 and len(fresh.split()) == 3


# --- StateStore -------------------------------------------------------------------------


def test_store_gives_fresh_state_to_new_streams() -> None:
    model = gru_model()
    store = StateStore(model)
    first, second = store.get("a"), store.get("b")
    assert first.batch == 1 and torch.count_nonzero(first.tensors[0]) == 0
    assert first.tensors[0].data_ptr() != second.tensors[0].data_ptr()
    assert "a" not in store and len(store) == 0
    with pytest.raises(ValueError, match="batch 1, not 2"):
        store.put("a", model.initial_state(2), 0.0)


def test_store_reset_or_keep_on_gap() -> None:
    model = gru_model()
    store = StateStore(model)
    x = randn(30, F)
    step_batch(model, store, {"a": x[:10], "b": x[:10]}, now=0.0)
    kept = store.get("a")
    store.on_gap("a", "keep")
    assert store.get("a") is kept
    store.on_gap("b", "reset")
    assert torch.count_nonzero(store.get("b").tensors[0]) == 0
    out = step_batch(model, store, {"a": x[10:], "b": x[10:]}, now=1.0)
    # a carries on from its first chunk; b starts afresh on the chunk after the gap
    torch.testing.assert_close(out["a"], model.forward(x[None])[0][10:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["b"], model.forward(x[None, 10:])[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="'reset' or 'keep'"):
        store.on_gap("a", "drop")  # type: ignore[arg-type]


def test_store_evicts_streams_idle_longer_than_ttl() -> None:
    model = gru_model()
    store = StateStore(model, ttl=10.0)
    store.put("a", model.initial_state(1), now=0.0)
    store.put("b", model.initial_state(1), now=5.0)
    store.start("c", now=6.0)
    assert store.streams() == ["a", "b", "c"] and store.last_seen("c") == 6.0
    assert store.evict_idle(now=10.0) == []
    assert store.evict_idle(now=12.0) == ["a"]
    assert "a" not in store and "b" in store
    assert store.evict_idle(now=100.0) == ["b", "c"]
    assert len(store) == 0
    never = StateStore(model, ttl=None)
    never.put("a", model.initial_state(1), now=0.0)
    assert never.evict_idle(now=1e9) == [] and "a" in never
    never.end("a")
    assert "a" not in never and never.last_seen("a") is None
    with pytest.raises(ValueError, match="ttl"):
        StateStore(model, ttl=0)


def test_one_streams_state_never_touches_anothers() -> None:
    model = gru_model(layers=2)
    store = StateStore(model)
    x = randn(20, F)
    step_batch(model, store, {"a": x[:8], "b": x[:8]}, now=0.0)
    a, b = store.get("a"), store.get("b")
    torch.testing.assert_close(a.tensors[0], b.tensors[0])
    before = b.tensors[0].clone()
    with torch.inference_mode():
        a.tensors[0].add_(100.0)
    torch.testing.assert_close(store.get("b").tensors[0], before)
    out = step_batch(model, store, {"a": x[8:], "b": x[8:]}, now=1.0)
    torch.testing.assert_close(out["b"], model.forward(x[None])[0][8:], atol=1e-5, rtol=0)
    assert not torch.allclose(out["a"], out["b"])


class Exploding(nn.Module):
    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        if x.shape[1] > 3:
            raise RuntimeError("boom")
        return x, x[:, -1]


def test_step_batch_leaves_the_store_untouched_when_the_model_fails() -> None:
    model = ModuleModel(Exploding())
    store = StateStore(model)
    step_batch(model, store, {"a": randn(2, F)}, now=0.0)
    kept = store.get("a")
    with pytest.raises(RuntimeError, match="boom"):
        step_batch(model, store, {"a": randn(2, F), "b": randn(5, F)}, now=1.0)
    assert store.get("a") is kept and "b" not in store and store.last_seen("a") == 0.0


class InPlace(nn.Module):
    """Adds each chunk's sum into its input state in place; raises on a 5-step chunk."""

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = x.new_zeros(x.shape[0], 1)
        state.add_(x.sum(dim=(1, 2))[:, None])
        if x.shape[1] == 5:
            raise RuntimeError("boom")
        return x[..., :1] + state[:, None], state


def test_a_batch_kept_whole_gives_what_stepping_each_stream_alone_gives() -> None:
    """The same streams again in the same order step from their batch as it was kept
    (no stacking); a stream read on its own or stepped alone leaves the batch."""
    model = gru_model(layers=2)
    store = StateStore(model)
    xs = {s: randn(12, F, seed=i) for i, s in enumerate("abc")}
    got: dict[str, list[Tensor]] = {s: [] for s in xs}
    for t in range(4):
        chunks = {s: x[3 * t : 3 * t + 3] for s, x in xs.items()}
        if t == 2:  # "b" alone, then the three again: states move out of and into a batch
            got["b"].append(step_batch(model, store, {"b": chunks.pop("b")}, now=t)["b"])
            assert store.get_batch(["a", "c"]) is None
            for s, y in step_batch(model, store, chunks, now=t).items():
                got[s].append(y)
            continue
        for s, y in step_batch(model, store, chunks, now=t).items():
            got[s].append(y)
        assert store.get_batch(list(chunks)) is not None
        assert store.get_batch(list(reversed(chunks))) is None
    for s, x in xs.items():
        alone = model.forward(x[None])[0]
        torch.testing.assert_close(torch.cat(got[s]), alone, atol=1e-5, rtol=0)
    a = store.get("a")  # now "a"'s own: the batch is no longer whole
    assert store.get("a") is a and store.get_batch(["a", "b", "c"]) is None


def test_a_model_that_changes_its_state_in_place_cannot_touch_a_kept_batch() -> None:
    model = ModuleModel(InPlace())
    store = StateStore(model)
    ones = torch.ones(2, 1)
    step_batch(model, store, {"a": ones, "b": 2 * ones}, now=0.0)
    kept = store.get_batch(["a", "b"])
    assert kept is not None
    before = kept.tensors[0].clone()
    with pytest.raises(RuntimeError, match="boom"):
        step_batch(model, store, {"a": torch.ones(5, 1), "b": torch.ones(5, 1)}, now=1.0)
    torch.testing.assert_close(store.get_batch(["a", "b"]).tensors[0], before)  # type: ignore[union-attr]
    out = step_batch(model, store, {"a": ones, "b": ones}, now=2.0)
    assert out["a"][:, 0].tolist() == [5.0, 5.0] and out["b"][:, 0].tolist() == [7.0, 7.0]


def test_step_batch_checks_its_arguments() -> None:
    model = gru_model()
    store = StateStore(model)
    with pytest.raises(ValueError, match="stream 'a': a chunk must be"):
        step_batch(model, store, {"a": randn(0, F)}, now=0.0)
    with pytest.raises(ValueError, match="max_batch"):
        step_batch(model, store, {"a": randn(2, F)}, now=0.0, max_batch=0)
    assert step_batch(model, store, {}, now=0.0) == {}


# --- ONNX: named state and constant inputs, per-step models (Silero VAD's layout) -------


class PerStepVad(nn.Module):
    """Silero-like: ``input [B, S]``, ``state [2, B, H]``, ``sr`` -> ``output [B, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.GRUCell(F + 2, H)
        self.second = nn.GRUCell(H, H)
        self.head = nn.Linear(H, 1)

    def forward(self, input: Tensor, state: Tensor, sr: Tensor) -> tuple[Tensor, Tensor]:
        scale = sr.to(input.dtype) / 16000.0
        h0 = self.first(input * scale, state[0])
        h1 = self.second(h0, state[1])
        return torch.sigmoid(self.head(h1)), torch.stack([h0, h1])


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PerStepVad]:
    torch.manual_seed(2)
    module = PerStepVad().eval()
    path = tmp_path_factory.mktemp("vad") / "vad.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, F + 2), torch.zeros(2, 2, H), torch.tensor(16000)),
            str(path),
            dynamo=False,
            input_names=["input", "state", "sr"],
            output_names=["output", "stateN"],
            dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"}},
        )
    return path, module


def torch_per_step(module: PerStepVad, x: Tensor, sr: int) -> Tensor:
    """Reference: ``x [B, T, S]`` one step at a time -> ``[B, T, 1]``."""
    state = torch.zeros(2, x.shape[0], H)
    ys = []
    with torch.inference_mode():
        for t in range(x.shape[1]):
            y, state = module(x[:, t], state, torch.tensor(sr))
            ys.append(y)
    return torch.stack(ys, dim=1)


def test_onnx_named_state_and_constant_inputs(vad: tuple[Path, PerStepVad]) -> None:
    path, module = vad
    model = OnnxModel(path, constants={"sr": 16000}, state_map={"state": "stateN"})
    assert model.per_step and model.input_name == "input" and model.output_name == "output"
    assert model.input_shape == (F + 2,)
    state = model.initial_state(3)
    assert state.tensors[0].shape == (2, 3, H) and state.batch_axes == (1,)
    x = randn(3, 40, F + 2)
    ys, start = [], 0
    for size in [1, 7, 3, 29]:
        y, state = model.step(x[:, start : start + size], state)
        ys.append(y)
        start += size
    expected = torch_per_step(module, x, 16000)
    torch.testing.assert_close(torch.cat(ys, dim=1), expected, atol=1e-5, rtol=0)
    at_8k = OnnxModel(path, constants={"sr": 8000}, state_map={"state": "stateN"})
    torch.testing.assert_close(at_8k.forward(x), torch_per_step(module, x, 8000), atol=1e-5, rtol=0)
    assert not torch.allclose(at_8k.forward(x), expected)
    # names inferred once the constant is given: state -> stateN by position
    inferred = OnnxModel(path, constants={"sr": np.array(16000)})
    assert inferred.state_map == {"state": "stateN"}


def test_onnx_naming_errors(vad: tuple[Path, PerStepVad]) -> None:
    path, _ = vad
    with pytest.raises(
        InputError, match=r"input 'sr' has no value; give it in \[model\] options\.constants"
    ):
        OnnxModel(path, state_map={"state": "stateN"})
    with pytest.raises(
        InputError,
        match=r"input 'sr' \(\[\]\) has no output of its shape .* give \[model\]"
        r" options\.constants = \{sr = VALUE\} if it is a constant input",
    ):
        OnnxModel(path)
    with pytest.raises(
        InputError, match=r"\[model\] options\.constants names input 'rate', which the model"
    ):
        OnnxModel(path, constants={"rate": 16000})
    with pytest.raises(InputError, match=r"options\.state_map names output 'hN'"):
        OnnxModel(path, constants={"sr": 16000}, state_map={"state": "hN"})
    with pytest.raises(InputError, match=r"options\.input_name names input 'audio'"):
        OnnxModel(path, constants={"sr": 16000}, input_name="audio")
    with pytest.raises(InputError, match=r"options\.constants\.sr: 'fast' is not a"):
        OnnxModel(path, constants={"sr": "fast"})


def test_context_over_per_step_onnx_like_silero(vad: tuple[Path, PerStepVad]) -> None:
    path, module = vad
    model = ContextModel(OnnxModel(path, constants={"sr": 16000}), context=2)
    assert model.input_shape == (F,)
    x = randn(2, 25, F)
    state = model.initial_state(2)
    assert state.batch_axes == (1, 0) and state.tensors[1].shape == (2, 2)
    ys = []
    for a, b in [(0, 4), (4, 5), (5, 25)]:
        y, state = model.step(x[:, a:b], state)
        ys.append(y)
    previous = torch.cat([torch.zeros(2, 1, 2), x[:, :-1, -2:]], dim=1)
    expected = torch_per_step(module, torch.cat([previous, x], dim=2), 16000)
    torch.testing.assert_close(torch.cat(ys, dim=1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.forward(x), expected, atol=1e-5, rtol=0)


# --- ONNX: which input is the data, found by name or shape, never by position -----------


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-layouts")


def test_onnx_data_input_after_the_state_and_a_constant(onnx_dir: Path) -> None:
    """Inputs ``h, sr, x`` and outputs ``h_out, y``: ``x`` is the data (its name), ``y``
    the data output (no state input has its shape), ``h`` pairs with ``h_out``."""
    path = onnx_dir / "state_first.onnx"
    module = export_state_first(path, F)
    model = OnnxModel(path, constants={"sr": 16000})
    assert (model.input_name, model.output_name) == ("x", "y")
    assert model.state_map == {"h": "h_out"} and model.input_shape == (F,)
    x = randn(2, 25, F)
    expected = module.reference(x, 16000)
    torch.testing.assert_close(model.forward(x), expected, atol=1e-5, rtol=0)
    state, ys = model.initial_state(2), []
    for a, b in [(0, 3), (3, 4), (4, 25)]:
        y, state = model.step(x[:, a:b], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), expected, atol=1e-5, rtol=0)
    slow = OnnxModel(path, constants={"sr": 8000})
    torch.testing.assert_close(slow.forward(x), module.reference(x, 8000), atol=1e-5, rtol=0)
    assert not torch.allclose(slow.forward(x), expected)


def test_onnx_data_input_found_by_shape_when_names_say_nothing(onnx_dir: Path) -> None:
    """Inputs ``a`` (state ``[1, B, H]``), ``b`` (data ``[B, T, F]``): the data is the
    input that no output mirrors."""
    path = onnx_dir / "unnamed.onnx"
    module = export_unnamed(path, F)
    model = OnnxModel(path)
    assert (model.input_name, model.output_name, model.state_map) == ("b", "d", {"a": "c"})
    x = randn(3, 17, F)
    torch.testing.assert_close(model.forward(x), module.reference(x), atol=1e-5, rtol=0)


def test_onnx_ambiguous_layout_is_refused_naming_the_key_to_give(onnx_dir: Path) -> None:
    """Inputs ``p, q`` and outputs ``r, s`` all ``[B, H]``: no guess; the errors name the
    ``[model] options`` keys that settle it, and with them the model runs."""
    path = onnx_dir / "twin.onnx"
    module = export_twin(path, 5)
    with pytest.raises(InputError, match=r"inputs \['p', 'q'\] .*\[model\] options\.input_name"):
        OnnxModel(path)
    with pytest.raises(InputError, match=r"outputs \['r', 's'\] .*\[model\] options\.output_name"):
        OnnxModel(path, input_name="p")
    model = OnnxModel(path, input_name="p", state_map={"q": "s"})
    assert model.output_name == "r" and model.per_step
    x = randn(2, 9, 5)
    torch.testing.assert_close(model.forward(x), module.reference(x), atol=1e-5, rtol=0)
    swapped = OnnxModel(path, input_name="p", output_name="r")
    assert swapped.state_map == {"q": "s"}


# --- load_model -------------------------------------------------------------------------

FACTORIES = """
import torch
from torch import nn
from streamer.models import RNNModel

not_callable = 3

def gru():
    return nn.GRU(4, 6, batch_first=True)

def pair():
    return nn.GRU(4, 6, batch_first=True), nn.Linear(6, 2)

def sequential(seed=0, hidden=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.GRU(4, hidden, batch_first=True), nn.Linear(hidden, 2))

def wrapped():
    return RNNModel(nn.GRU(4, 6, batch_first=True), name="mine")

class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)

    def forward(self, x, state):
        return self.gru(x, state)

def custom():
    return Custom()

def raises():
    raise RuntimeError("no weights here")

def number():
    return 42

def linear():
    return nn.Linear(4, 2)
"""


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("factories")
    (root / "streamer_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    (root / "streamer_test_broken.py").write_text("import streamer_no_such_dependency\n")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in ("streamer_test_factories", "streamer_test_broken"):
        sys.modules.pop(name, None)


FAC = "streamer_test_factories"


def input_error(match: str, **kwargs: object) -> InputError:
    """load_model(**kwargs) raises InputError matching ``match``, on one line."""
    with pytest.raises(InputError, match=match) as caught:
        load_model(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.usefixtures("factories")
def test_load_model_factory_errors_name_the_factory() -> None:
    input_error(r"\[model\]: give factory = 'module:function' or path =")
    input_error(r"factory 'nocolon': expected 'module:function'", factory="nocolon")
    input_error(
        r"factory 'streamer_nope:build': module 'streamer_nope' not found",
        factory="streamer_nope:build",
    )
    input_error(
        rf"factory '{FAC}:missing': module '{FAC}' has no attribute 'missing'",
        factory=f"{FAC}:missing",
    )
    input_error(
        rf"factory '{FAC}:raises' raised RuntimeError: no weights here", factory=f"{FAC}:raises"
    )
    input_error(
        rf"factory '{FAC}:number': got int, which is not a model; expected a StatefulModel",
        factory=f"{FAC}:number",
    )
    input_error(rf"factory '{FAC}:linear': got Linear, whose forward", factory=f"{FAC}:linear")
    input_error(
        rf"factory '{FAC}:not_callable' is a int, not callable", factory=f"{FAC}:not_callable"
    )
    input_error(
        r"factory 'streamer_test_broken:build': importing 'streamer_test_broken' failed:"
        r".*streamer_no_such_dependency",
        factory="streamer_test_broken:build",
    )


@pytest.mark.usefixtures("factories")
def test_load_model_from_factories() -> None:
    assert isinstance(load_model(f"{FAC}:gru"), RNNModel)
    pair = load_model(f"{FAC}:pair")
    assert isinstance(pair, RNNModel) and pair.forward(randn(1, 3, F)).shape == (1, 3, 2)
    assert isinstance(load_model(f"{FAC}:custom"), ModuleModel)
    wrapped = load_model(f"{FAC}:wrapped")
    assert isinstance(wrapped, RNNModel) and wrapped.name == "mine"
    sized = load_model(f"{FAC}:sequential", factory_kwargs={"hidden": 3})
    assert isinstance(sized, RNNModel) and sized.rnn.hidden_size == 3


@pytest.mark.usefixtures("factories")
def test_load_model_state_dict_into_the_factorys_module(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = nn.Sequential(nn.GRU(F, H, batch_first=True), nn.Linear(H, 2))
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    model = load_model(f"{FAC}:sequential", weights)
    x = randn(1, 12, F)
    with torch.inference_mode():
        expected = reference[1](reference[0](x)[0])
    torch.testing.assert_close(model.forward(x), expected)
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, checkpoint)
    torch.testing.assert_close(load_model(f"{FAC}:pair", checkpoint).forward(x), expected)

    input_error(
        rf"model file '{weights}' is a state dict: give \[model\] factory = 'module:function'",
        path=weights,
    )
    input_error(
        rf"state dict '{weights}' does not fit factory '{FAC}:gru': missing keys \[weight_ih_l0",
        factory=f"{FAC}:gru",
        path=weights,
    )
    input_error(
        rf"state dict '{weights}' does not fit factory '{FAC}:sequential': .*size mismatch",
        factory=f"{FAC}:sequential",
        path=weights,
        factory_kwargs={"hidden": 5},
    )


class Marker:
    """Unpickling this would create a file: proof that a load ran foreign code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.usefixtures("factories")
def test_load_model_file_errors_name_the_file(tmp_path: Path) -> None:
    input_error(r"model file '.*nothing.pt' does not exist", path=tmp_path / "nothing.pt")
    input_error(r"model file '.*' is not a file", path=tmp_path)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    input_error(r"model file '.*model.txt': unknown type '.txt'", path=text)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    input_error(r"model file '.*junk.pt': not a TorchScript or state-dict file", path=junk)
    touched = tmp_path / "touched"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": Marker(touched)}, evil)
    input_error(r"model file '.*evil.pt': .*Python objects.*never unpickled", path=evil)
    assert not touched.exists()
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listing)
    input_error(r"model file '.*list.pt': holds a list .*not a state dict", path=listing)
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"nope")
    input_error(r"model file '.*bad.onnx': not a usable ONNX model", path=bad_onnx)
    input_error(
        rf"factory '{FAC}:gru' cannot be combined with ONNX file",
        factory=f"{FAC}:gru",
        path=bad_onnx,
    )


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.state_batch_axes = (1,)
        self.gru = nn.GRU(F, H, batch_first=True)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        y, h = self.gru(x, state)
        return y, h


@pytest.mark.usefixtures("factories")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_load_model_torchscript_and_onnx_files(
    tmp_path: Path, vad: tuple[Path, PerStepVad]
) -> None:
    torch.manual_seed(4)
    module = Scriptable()
    path = tmp_path / "scripted.pt"
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    model = load_model(path=path)
    assert isinstance(model, TorchScriptModel) and model.name == str(path)
    x = randn(2, 9, F)
    with torch.inference_mode():
        expected = module(x, None)[0]
    torch.testing.assert_close(model.forward(x), expected)
    input_error(
        rf"factory '{FAC}:gru' cannot be combined with TorchScript file",
        factory=f"{FAC}:gru",
        path=path,
    )
    onnx = load_model(path=vad[0], options={"constants": {"sr": 16000}})
    assert isinstance(onnx, OnnxModel) and onnx.state_map == {"state": "stateN"}
    input_error(r"model '.*vad.onnx': input 'sr' .*options\.constants", path=vad[0])


@pytest.mark.usefixtures("factories")
def test_load_model_gives_options_to_an_onnx_file(onnx_dir: Path) -> None:
    """``[model] options`` configure the ONNX adapter; unknown keys and wrong types are
    refused naming ``[model] options.KEY``."""
    path = onnx_dir / "state_first_options.onnx"
    module = export_state_first(path, F, seed=3)
    x = randn(2, 12, F)
    inferred = load_model(path=path, options={"constants": {"sr": 8000}}, threads=1)
    torch.testing.assert_close(inferred.forward(x), module.reference(x, 8000), atol=1e-5, rtol=0)
    named = load_model(
        path=path,
        options={
            "input_name": "x",
            "output_name": "y",
            "state_map": {"h": "h_out"},
            "constants": {"sr": 16000},
            "state_batch_axes": {"h": 1},
            "per_step": False,
            "causal": True,
        },
    )
    torch.testing.assert_close(named.forward(x), module.reference(x, 16000), atol=1e-5, rtol=0)
    context = load_model(path=path, options={"constants": {"sr": 16000}, "context": 2})
    assert isinstance(context, ContextModel) and context.input_shape == (F - 2,)
    input_error(
        r"model file '.*': unknown key \[model\] options\.sample_rate for an ONNX file;"
        r" accepted: causal, constants, context, input_name, output_name, per_step,"
        r" state_batch_axes, state_map$",
        path=path,
        options={"sample_rate": 16000},
    )
    input_error(
        r"\[model\] options\.state_map must be a table such as",
        path=path,
        options={"state_map": "h"},
    )
    input_error(
        r"\[model\] options\.constants\.sr must be a number",
        path=path,
        options={"constants": {"sr": "16k"}},
    )
    input_error(
        r"\[model\] options\.context must be an integer >= 1", path=path, options={"context": 0}
    )
    input_error(
        r"\[model\] options\.constants = \{sr = VALUE\} if it is a constant input",
        path=path,
    )
    # a factory still takes the options as its keyword arguments
    sized = load_model(f"{FAC}:sequential", options={"hidden": 3})
    assert isinstance(sized, RNNModel) and sized.rnn.hidden_size == 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_load_model_gives_options_to_a_torchscript_file(tmp_path: Path) -> None:
    """``state_batch_axes``, ``input_shape`` and ``causal`` for a TorchScript file."""
    torch.manual_seed(6)
    module = BatchFirstState()
    path = tmp_path / "batch_first.pt"
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    x = randn(2, 7, F)
    plain = load_model(path=path)
    with pytest.raises(ModelContractError, match=r"\[model\] options\.state_batch_axes"):
        plain.step(x, plain.initial_state(2))
    model = load_model(path=path, options={"state_batch_axes": [0], "input_shape": [F]})
    assert model.input_shape == (F,)
    y, state = model.step(x[:, :3], model.initial_state(2))
    y2, _ = model.step(x[:, 3:], state)
    with torch.inference_mode():
        expected = module(x, None)[0]
    torch.testing.assert_close(torch.cat([y, y2], dim=1), expected, atol=1e-5, rtol=0)
    offline = load_model(path=path, options={"causal": False})
    assert not offline.causal
    with pytest.raises(StreamingRefused):
        offline.step(x, offline.initial_state(2))
    input_error(
        r"unknown key \[model\] options\.state_map for a TorchScript file; accepted: causal,"
        r" context, input_shape, state_batch_axes$",
        path=path,
        options={"state_map": {"h": "h_out"}},
    )
    input_error(
        r"\[model\] options\.state_batch_axes must be a list of axes",
        path=path,
        options={"state_batch_axes": 0},
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_module_without_initial_state_is_refused(tmp_path: Path) -> None:
    """Tracing fixes the state's type to a tensor: no stream could start (state=None)."""
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warnings about RNNs
        traced = torch.jit.trace(Scriptable(), (randn(1, 3, F), torch.zeros(1, 1, H)))
    path = tmp_path / "traced.pt"
    traced.save(str(path))  # type: ignore[no-untyped-call]
    error = input_error(
        r"model '.*traced.pt': forward takes state: Tensor, which cannot be None.*traced"
        r" module.*script it .*export initial_state",
        path=path,
    )
    assert isinstance(error, ModelContractError)
    with pytest.raises(ModelContractError, match="cannot be None"):
        ModuleModel(traced)
