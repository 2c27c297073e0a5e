"""Streaming equals offline: for causal models, stepping over any chunking of a sequence
gives the outputs of ``forward`` over the whole of it (float32, atol 1e-5), alone or
batched with other streams that start at other times and send chunks of other sizes.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from streamer.models import (
    ContextModel,
    ModuleModel,
    OnnxModel,
    RNNModel,
    StatefulModel,
    StateStore,
    TorchScriptModel,
    step_batch,
)

ATOL = 1e-5
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning"),
]
FEATURES = 4
HIDDEN = 8


class Delta(nn.Module):
    """y_t = head(gru(x_t - x_{t-1})); state ``(h [1, B, H], previous x [B, F])``.

    Its state mixes a 3-d tensor (default batch axis 1) and a 2-d one (default axis 0),
    and ``None`` is a fresh start that differs from "zeros" only in how it is written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden = HIDDEN
        self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            h = torch.zeros(1, x.shape[0], self.hidden)
            previous = torch.zeros(x.shape[0], x.shape[2])
        else:
            h, previous = state
        delta = x - torch.cat([previous[:, None], x[:, :-1]], dim=1)
        out, h = self.gru(delta, h)
        return self.head(out), (h, x[:, -1])


class DeltaWithInitial(Delta):
    """:class:`Delta` with an explicit fresh state (so fresh and continuing streams batch)."""

    @torch.jit.export
    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(1, batch, self.hidden), torch.zeros(batch, self.gru.input_size)


class StrictDelta(Delta):
    """:class:`Delta` that must be given its state: ``forward`` rejects ``state=None`` (in
    TorchScript the type says so) and ``initial_state`` is not zeros, so an offline pass
    that did not start from it would give other outputs."""

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, previous = state
        delta = x - torch.cat([previous[:, None], x[:, :-1]], dim=1)
        out, h = self.gru(delta, h)
        return self.head(out), (h, x[:, -1])

    @torch.jit.export
    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        return (
            torch.full((1, batch, self.hidden), 0.5),
            torch.full((batch, self.gru.input_size), 0.25),
        )


class CountingCell(nn.Module):
    """A GRUCell loop whose state is a dict with batch-first tensors, declared by attribute.

    ``h [B, H, 1]`` is 3-d but batch-first, so ``state_batch_axes`` must say so;
    ``n [B, 1]`` counts the steps taken and feeds the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state_batch_axes = (0, 0)
        self.cell = nn.GRUCell(FEATURES, HIDDEN)
        self.head = nn.Linear(HIDDEN + 1, 2)

    def forward(
        self, x: Tensor, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if state is None:
            h = torch.zeros(x.shape[0], self.cell.hidden_size)
            n = torch.zeros(x.shape[0], 1)
        else:
            h = state["h"][:, :, 0]
            n = state["n"]
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            n = n + 1
            ys.append(self.head(torch.cat([h, torch.tanh(n / 50)], dim=1)))
        return torch.stack(ys, dim=1), {"h": h[:, :, None], "n": n}


class GRUWithState(nn.Module):
    """A 2-layer GRU with a head as ``(x, h) -> (y, h)`` with an explicit h, for ONNX."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out, h = self.gru(x, h)
        return self.head(out), h


# --- strategies -------------------------------------------------------------------------


@st.composite
def chunk_sizes(draw: st.DrawFn, length: int) -> list[int]:
    """A random chunking of ``length`` frames into chunks of 1..64 (a drawn pattern, cycled)."""
    pattern = draw(st.lists(st.integers(1, 64), min_size=1, max_size=30))
    sizes: list[int] = []
    remaining = length
    while remaining > 0:
        size = min(pattern[len(sizes) % len(pattern)], remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def sequence(seed: int, batch: int, length: int, features: int = FEATURES) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, features, generator=generator)


@st.composite
def rnn_models(draw: st.DrawFn) -> RNNModel:
    kind = draw(st.sampled_from(["gru", "lstm", "rnn_tanh", "rnn_relu"]))
    layers = draw(st.integers(1, 3))
    hidden = draw(st.integers(1, 12))
    batch_first = draw(st.booleans())
    head = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    rnn: nn.RNNBase
    if kind == "gru":
        rnn = nn.GRU(FEATURES, hidden, layers, batch_first=batch_first)
    elif kind == "lstm":
        proj = draw(st.integers(0, hidden - 1))
        rnn = nn.LSTM(FEATURES, hidden, layers, batch_first=batch_first, proj_size=proj)
    else:
        nonlinearity = kind.removeprefix("rnn_")
        rnn = nn.RNN(FEATURES, hidden, layers, nonlinearity=nonlinearity, batch_first=batch_first)
    out = rnn.proj_size if isinstance(rnn, nn.LSTM) and rnn.proj_size else hidden
    return RNNModel(rnn, nn.Linear(out, 5) if head else None)


def run_chunked(model: StatefulModel, x: Tensor, sizes: list[int]) -> Tensor:
    """Step ``x [B, T, F]`` chunk by chunk from the initial state; ``y [B, T, K]``."""
    state = model.initial_state(x.shape[0])
    ys = []
    start = 0
    for size in sizes:
        y, state = model.step(x[:, start : start + size], state)
        ys.append(y)
        start += size
    return torch.cat(ys, dim=1)


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# --- one stream, any chunking -----------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(model=rnn_models(), data=st.data())
def test_rnn_step_over_chunks_equals_forward(model: RNNModel, data: st.DataObject) -> None:
    length = data.draw(st.integers(1, 300), label="length")
    batch = data.draw(st.integers(1, 3), label="batch")
    x = sequence(data.draw(st.integers(0, 2**16)), batch, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    assert_close(run_chunked(model, x, sizes), model.forward(x))


MODULES: dict[str, Callable[[], nn.Module]] = {
    "delta": Delta,
    "delta-initial": DeltaWithInitial,
    "strict-initial": StrictDelta,
    "counting-dict": CountingCell,
}


def test_strict_module_rejects_none_so_offline_must_use_initial_state() -> None:
    """The premise of the ``strict-initial`` cases: state=None fails, eager and scripted."""
    module = StrictDelta()
    x = sequence(0, 2, 5)
    with pytest.raises(TypeError):
        module(x, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        torch.jit.script(module)(x, None)


@pytest.mark.parametrize("kind", sorted(MODULES))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_module_step_over_chunks_equals_forward(kind: str, data: st.DataObject) -> None:
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = ModuleModel(MODULES[kind]())
    length = data.draw(st.integers(1, 200), label="length")
    batch = data.draw(st.integers(1, 3), label="batch")
    x = sequence(data.draw(st.integers(0, 2**16)), batch, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    assert_close(run_chunked(model, x, sizes), model.forward(x))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_context_model_step_over_chunks_equals_forward(data: st.DataObject) -> None:
    context = data.draw(st.integers(1, FEATURES), label="context")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = ContextModel(RNNModel(nn.GRU(context + FEATURES, HIDDEN, batch_first=True)), context)
    length = data.draw(st.integers(1, 200), label="length")
    x = sequence(data.draw(st.integers(0, 2**16)), 2, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    assert_close(run_chunked(model, x, sizes), model.forward(x))


# --- files: TorchScript and ONNX --------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Delta]:
    torch.manual_seed(7)
    module = Delta()
    path = tmp_path_factory.mktemp("jit") / "delta.pt"
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    return path, module


@pytest.fixture(scope="module")
def scripted_strict(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StrictDelta]:
    torch.manual_seed(8)
    module = StrictDelta()
    path = tmp_path_factory.mktemp("jit") / "strict.pt"
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    return path, module


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GRUWithState]:
    torch.manual_seed(11)
    module = GRUWithState().eval()
    path = tmp_path_factory.mktemp("onnx") / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 5, FEATURES), torch.zeros(2, 2, HIDDEN)),
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
    return path, module


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_torchscript_step_over_chunks_equals_eager_forward(
    scripted: tuple[Path, Delta], data: st.DataObject
) -> None:
    path, module = scripted
    model = TorchScriptModel(path)
    length = data.draw(st.integers(1, 300), label="length")
    x = sequence(data.draw(st.integers(0, 2**16)), 2, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    with torch.inference_mode():
        expected = module(x, None)[0]
    assert_close(run_chunked(model, x, sizes), expected)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_torchscript_with_initial_state_offline_equals_streaming(
    scripted_strict: tuple[Path, StrictDelta], data: st.DataObject
) -> None:
    """A scripted module that takes no ``state=None``: ``forward`` (offline) starts from
    its exported ``initial_state`` as every stream does."""
    path, module = scripted_strict
    model = TorchScriptModel(path)
    length = data.draw(st.integers(1, 300), label="length")
    batch = data.draw(st.integers(1, 3), label="batch")
    x = sequence(data.draw(st.integers(0, 2**16)), batch, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    with torch.inference_mode():
        expected = module(x, module.initial_state(batch))[0]
    assert_close(model.forward(x), expected)
    assert_close(run_chunked(model, x, sizes), expected)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_onnx_step_over_chunks_equals_torch_forward(
    exported: tuple[Path, GRUWithState], data: st.DataObject
) -> None:
    path, module = exported
    model = OnnxModel(path, state_map={"h": "h_out"}, threads=1)
    length = data.draw(st.integers(1, 300), label="length")
    batch = data.draw(st.integers(1, 3), label="batch")
    x = sequence(data.draw(st.integers(0, 2**16)), batch, length)
    sizes = data.draw(chunk_sizes(length), label="chunks")
    with torch.inference_mode():
        expected = module(x, torch.zeros(2, batch, HIDDEN))[0]
    assert_close(run_chunked(model, x, sizes), expected)
    assert_close(model.forward(x), expected)


# --- many streams through step_batch ----------------------------------------------------


def build(kind: str, files: dict[str, Path]) -> StatefulModel:
    torch.manual_seed(3)
    if kind == "gru-2-layers-head":
        return RNNModel(nn.GRU(FEATURES, HIDDEN, 2, batch_first=True), nn.Linear(HIDDEN, 3))
    if kind == "lstm-proj":
        return RNNModel(nn.LSTM(FEATURES, HIDDEN, 3, proj_size=3))
    if kind == "rnn-relu":
        return RNNModel(nn.RNN(FEATURES, HIDDEN, nonlinearity="relu", batch_first=True))
    if kind == "context-gru":
        return ContextModel(RNNModel(nn.GRU(FEATURES + 2, HIDDEN, batch_first=True)), 2)
    if kind == "torchscript":
        return TorchScriptModel(files["jit"])
    if kind == "torchscript-strict":
        return TorchScriptModel(files["jit-strict"])
    if kind == "onnx":
        return OnnxModel(files["onnx"], state_map={"h": "h_out"}, threads=1)
    return ModuleModel(MODULES[kind]())


STREAM_MODELS = [
    "gru-2-layers-head",
    "lstm-proj",
    "rnn-relu",
    "context-gru",
    "delta",
    "delta-initial",
    "strict-initial",
    "counting-dict",
    "torchscript",
    "torchscript-strict",
    "onnx",
]


@pytest.mark.parametrize("kind", STREAM_MODELS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_streams_batched_equal_each_stream_alone(
    kind: str,
    scripted: tuple[Path, Delta],
    scripted_strict: tuple[Path, StrictDelta],
    exported: tuple[Path, GRUWithState],
    data: st.DataObject,
) -> None:
    files = {"jit": scripted[0], "jit-strict": scripted_strict[0], "onnx": exported[0]}
    model = build(kind, files)
    store = StateStore(model, ttl=None)
    count = data.draw(st.integers(1, 5), label="streams")
    streams = [f"s{i}" for i in range(count)]
    inputs: dict[str, Tensor] = {}
    pieces: dict[str, list[Tensor]] = {}
    for i, stream in enumerate(streams):
        length = data.draw(st.integers(1, 100), label=f"length {stream}")
        inputs[stream] = sequence(1000 + i, 1, length)[0]
        sizes = data.draw(chunk_sizes(length), label=f"chunks {stream}")
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        pieces[stream] = [inputs[stream][a:b] for a, b in itertools.pairwise(bounds)]
    # arrival order: each occurrence of a stream is its next chunk; streams start late or early
    order = data.draw(
        st.permutations([s for s in streams for _ in pieces[s]]), label="arrival order"
    )
    flushes = data.draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    rechunk = data.draw(st.booleans(), label="rechunk")
    max_batch = data.draw(st.sampled_from([None, 1, 2, 3]), label="max_batch")

    outputs: dict[str, list[Tensor]] = {s: [] for s in streams}
    next_piece = dict.fromkeys(streams, 0)
    tick: dict[str, Tensor] = {}
    now = 0.0

    def flush() -> None:
        nonlocal now
        if tick:
            result = step_batch(model, store, tick, now, max_batch=max_batch, rechunk=rechunk)
            assert list(result) == list(tick)
            for stream, y in result.items():
                assert y.shape[0] == tick[stream].shape[0]
                outputs[stream].append(y)
            tick.clear()
        now += 1.0

    for stream, cut in zip(order, flushes, strict=True):
        if stream in tick:
            flush()
        tick[stream] = pieces[stream][next_piece[stream]]
        next_piece[stream] += 1
        if cut:
            flush()
    flush()

    for stream in streams:
        expected = model.forward(inputs[stream][None])[0]
        assert_close(torch.cat(outputs[stream]), expected)


def test_fresh_and_continuing_custom_streams_batch_in_one_tick() -> None:
    """A module without initial_state: a fresh stream and a continuing one in one call."""
    torch.manual_seed(5)
    model = ModuleModel(Delta())
    store = StateStore(model)
    a, b = sequence(1, 1, 30)[0], sequence(2, 1, 20)[0]
    first = step_batch(model, store, {"a": a[:10]}, 0.0)
    second = step_batch(model, store, {"a": a[10:30], "b": b}, 1.0)
    assert_close(torch.cat([first["a"], second["a"]]), model.forward(a[None])[0])
    assert_close(second["b"], model.forward(b[None])[0])
