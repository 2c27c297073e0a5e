"""The body of a model actor: a model, its streams' hidden states, batched steps.

:class:`ModelWorker` is plain Python (Ray wraps it with ``ray.remote`` in
:mod:`streamer.cluster.engine`, so the tests can also call it directly). It loads the model
from a :class:`~streamer.models.ModelSpec` (the ``[model]`` file, factory and options:
every worker builds the same model) and keeps one :class:`~streamer.models.StateStore`
for the streams it owns. A call steps the chunks of all its streams at once
(:func:`~streamer.models.step_batch`: equal-length chunks of stackable states in one
``model.step``), and can hand back the states after it: the driver's snapshots, from
which another worker carries a stream on.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamer.cluster.wire import writable
from streamer.models import ModelSpec, State, StateStore, step_batch

#: One chunk as the driver sends it: (start the stream fresh first, ``x [T, F...]``).
#: Chunks and outputs travel as numpy arrays: Ray pickles a tensor about 30 times slower
#: than an array (about 300 us against 10 us for a 2 KiB chunk, measured by bench_ray).
Chunk = tuple[bool, "np.ndarray[Any, Any] | Tensor"]


class ModelWorker:
    """Steps the streams it owns; every method returns quickly but :meth:`step`."""

    def __init__(self, spec: ModelSpec, name: str = "worker", max_batch: int | None = None) -> None:
        self.name = name
        self.spec = spec
        self.max_batch = max_batch
        self.model = spec.load()
        self.store = StateStore(self.model)
        self.calls = 0

    def ready(self) -> dict[str, Any]:
        """Where this worker runs: its node's host name (and Ray node id, as an actor),
        its process."""
        node = None
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return {"name": self.name, "host": socket.gethostname(), "node": node, "pid": os.getpid()}

    def step(
        self,
        chunks: Mapping[str, Chunk],
        drop: Sequence[str] = (),
        snapshot: Sequence[str] = (),
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, State]]:
        """Forget the streams ``drop``; step every stream's chunk (from a fresh state when
        its flag says so), in one batched call; return each stream's ``y [T, K]`` and the
        states after the call of the streams ``snapshot`` (on the CPU)."""
        for stream in drop:
            self.store.end(stream)
        xs: dict[str, Tensor] = {}
        for stream, (fresh, x) in chunks.items():
            if fresh:
                self.store.reset(stream)
            xs[stream] = from_wire(x)
        self.calls += 1
        ys = step_batch(self.model, self.store, xs, 0.0, max_batch=self.max_batch)
        outputs = {stream: to_wire(y) for stream, y in ys.items()}
        return outputs, {stream: _own_state(self.store.get(stream)) for stream in snapshot}

    def restore(
        self, streams: Mapping[str, tuple[State | None, Sequence[Chunk]]]
    ) -> dict[str, list[np.ndarray[Any, Any]]]:
        """Take streams over: each from its snapshot (None: fresh), then its chunks since
        the snapshot stepped again, in order (round by round, the streams' i-th chunks in
        one call); returns each chunk's ``y``."""
        for stream, (state, _) in streams.items():
            self.store.end(stream)
            if state is not None:
                self.store.put(stream, self._here(state), 0.0)
        outputs: dict[str, list[np.ndarray[Any, Any]]] = {stream: [] for stream in streams}
        longest = max((len(chunks) for _, chunks in streams.values()), default=0)
        for i in range(longest):
            round_ = {s: chunks[i] for s, (_, chunks) in streams.items() if len(chunks) > i}
            ys, _ = self.step(round_)
            for stream, y in ys.items():
                outputs[stream].append(y)
        return outputs

    def export(self, streams: Sequence[str]) -> dict[str, State]:
        """The states of ``streams``, which this worker then forgets (they move)."""
        states = {stream: _own_state(self.store.get(stream)) for stream in streams}
        for stream in streams:
            self.store.end(stream)
        return states

    def load(self, states: Mapping[str, State]) -> None:
        """Take streams over from their states (moved from another worker)."""
        for stream, state in states.items():
            self.store.put(stream, self._here(state), 0.0)

    def _here(self, state: State) -> State:
        """``state`` on this worker's device (a snapshot comes from the CPU)."""
        if self.spec.device == "cpu":
            return state
        device = torch.device(self.spec.device)
        return State(tuple(t.to(device) for t in state.tensors), state.batch_axes, state.batch)

    def streams(self) -> list[str]:
        return self.store.streams()


def _own(tensor: Tensor) -> Tensor:
    """``tensor`` on the CPU in a storage of its own: a stream's output and state are
    views into its batch's tensors, and a view is pickled (sent over Ray) with its whole
    storage, every stream of the batch."""
    return tensor.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)


def to_wire(tensor: Tensor) -> np.ndarray[Any, Any]:
    """``tensor`` as a numpy array of its own (what travels between driver and actors)."""
    return _own(tensor).numpy()


def from_wire(data: np.ndarray[Any, Any] | Tensor) -> Tensor:
    """An array from the wire as a tensor (see :func:`writable`)."""
    if isinstance(data, Tensor):
        return data
    return torch.from_numpy(writable(data))


def _own_state(state: State) -> State:
    return State(tuple(_own(t) for t in state.tensors), state.batch_axes, state.batch)
