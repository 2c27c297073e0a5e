"""Multi-stream batching: step several streams' chunks in one model call.

Chunks whose states can be stacked (same state signature, e.g. not a fresh and a continuing
custom-module stream), whose features have the same shape, and whose lengths are equal are
stacked along the batch axis, stepped in one ``model.step`` call, and scattered back.
Streams are never padded: padding would run the shorter streams' states over frames they
do not have.

With ``rechunk=True``, chunks of different lengths are batched too: each call steps the
common prefix (the shortest remaining length) of every stream that still has frames,
until all are done. That needs the model to be chunking-invariant, which is the tested
property of causal models (and of per-step ONNX models); leave it off for a custom model
whose outputs depend on where chunks begin.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from streamer.models.protocol import State, StatefulModel
from streamer.models.state import StateStore


@dataclass(slots=True)
class _Pending:
    x: Tensor
    state: State
    outputs: list[Tensor] = field(default_factory=list)


def step_batch(
    model: StatefulModel,
    store: StateStore,
    chunks: Mapping[str, Tensor],
    now: float,
    *,
    max_batch: int | None = None,
    rechunk: bool = False,
) -> dict[str, Tensor]:
    """Step every stream's chunk ``x [T_i, F...]`` and return its ``y [T_i, K]``.

    States come from ``store`` and go back to it at ``now`` (all at the end: if a model
    call raises, the store is left as it was). Each stream's outputs equal stepping it
    alone. ``max_batch`` caps the streams per call. Results keep the order of ``chunks``.
    """
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, not {max_batch}")
    for stream, x in chunks.items():
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"stream '{stream}': a chunk must be [T, F...] with T >= 1, got {shape}"
            )
    whole = _step_whole(model, store, chunks, now, max_batch)
    if whole is not None:
        return whole
    pending = {stream: _Pending(x, store.get(stream)) for stream, x in chunks.items()}

    done: dict[str, _Pending] = {}
    signatures = {stream: item.state.signature for stream, item in pending.items()}
    while pending:
        groups: dict[Hashable, list[str]] = {}
        for stream, item in pending.items():
            length = 0 if rechunk else item.x.shape[0]
            key = (length, tuple(item.x.shape[1:]), item.x.dtype, signatures[stream])
            groups.setdefault(key, []).append(stream)
        for members in groups.values():
            size = max_batch or len(members)
            for start in range(0, len(members), size):
                _step_group(model, [(s, pending[s]) for s in members[start : start + size]])
        for stream in [s for s, item in pending.items() if item.x.shape[0] == 0]:
            done[stream] = pending.pop(stream)
        # after a step every state has the model's own (continuing) signature
        signatures.update((stream, item.state.signature) for stream, item in pending.items())

    results: dict[str, Tensor] = {}
    for stream in chunks:
        item = done[stream]
        store.put(stream, item.state, now)
        outputs = item.outputs
        results[stream] = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    return results


def _step_whole(
    model: StatefulModel,
    store: StateStore,
    chunks: Mapping[str, Tensor],
    now: float,
    max_batch: int | None,
) -> dict[str, Tensor] | None:
    """The common case in one call, or None: chunks of one shape and type, all within
    ``max_batch``, states that stack. The new state is kept whole (``put_batch``), so
    when the same streams come back in the same order their state is not stacked and
    split again every call, only copied (a model that changes its input state in place
    cannot touch the stored one)."""
    streams = list(chunks)
    xs = list(chunks.values())
    if not xs:
        return {}
    shape, dtype = xs[0].shape, xs[0].dtype
    if (max_batch is not None and len(xs) > max_batch) or any(
        x.shape != shape or x.dtype != dtype for x in xs
    ):
        return None
    kept = store.get_batch(streams)
    if kept is not None:
        state = kept.clone()
    else:
        states = [store.get(stream) for stream in streams]
        signature = states[0].signature
        if any(other.signature != signature for other in states[1:]):
            return None
        state = State.stack(states, check=False)  # a copy
    y, new = model.step(torch.stack(xs), state)
    store.put_batch(streams, new, now)
    return dict(zip(streams, y.unbind(0), strict=True))


def _step_group(model: StatefulModel, members: list[tuple[str, _Pending]]) -> None:
    """One ``model.step`` over the common prefix of ``members``' remaining frames."""
    steps = min(item.x.shape[0] for _, item in members)
    whole = all(item.x.shape[0] == steps for _, item in members)
    x = torch.stack([item.x if whole else item.x[:steps] for _, item in members])
    # stack and split copy, so no stream's stored state aliases a chunk or another stream;
    # the group shares one signature, so stacking need not compare them again
    y, new = model.step(x, State.stack([item.state for _, item in members], check=False))
    rows = y.unbind(0)
    for (_, item), row, row_state in zip(members, rows, new.split(), strict=True):
        item.outputs.append(row)
        item.state = row_state
        item.x = item.x[:0] if whole else item.x[steps:]
