"""The ``generate`` head: a one-to-many decoder behind the common head interface
(:class:`~streamer.stages.model.heads.Head`).

It decodes greedily from a stream's model state, which it reads through the ``state``
callable it is given: with ``decode = "step"``, from each step's output right after that
step (``push``); with ``decode = "end"``, once per clip, from the state after the clip's
last step, when the clip ends (``end``, or ``gap`` with ``clip_on_gap``, a resetting gap).
Its outputs come from model calls, so its methods return them as an iterator that decodes
one token per draw.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Annotated, Generic, Literal, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from streamer.errors import InputError
from streamer.frames import Output, OutputKind
from streamer.options import Int, Str
from streamer.stages.model.frontend import Step, covering
from streamer.stages.model.settings import HeadOptions

log = logging.getLogger(__name__)
S = TypeVar("S")


class GenerateHeadOptions(HeadOptions):
    """``head = "generate"``: tokens decoded greedily, ``max_len`` at most, until
    ``end_token``; after every step (``decode = "step"``) or once per clip (``"end"``,
    clips of ``min_steps`` steps at least)."""

    max_len: Annotated[Int, Field(ge=1, le=100_000)] = 16
    end_token: Str | None = None
    decode: Literal["step", "end"] = "step"
    min_steps: Annotated[Int, Field(ge=1, le=1_000_000)] = 1


class GenerateHead(Generic[S]):
    """One-to-many: greedy decoding, one ``token`` output per generated token.

    ``decode_step(inp, state) -> (logits, state)`` is called first with the conditioning
    input (e.g. a frame's or a window's model output) and then with the previous token's
    id (an ``int``); ``logits`` has ``len(vocab)`` values (any leading axes of size 1).
    Decoding stops after ``max_len`` tokens or when ``end_token`` (id or string) is chosen;
    the end token is not output. Each output covers the conditioning steps (``start``/
    ``end``, ``t0``/``t1``, ``pts``/``captured`` of the newest), its label is the token's
    string, its scores the ``top_k`` most probable tokens (softmax of the logits;
    ``top_k=1``: the chosen token's probability) and ``extra["position"]`` the token's
    position (0, 1, ...).

    With ``sequence=True``, the tokens are followed by one ``sequence`` output covering
    the same steps: its label is the tokens joined by spaces (the caption; ``""`` when
    the end token came first), its score that text's probability (the product of the
    chosen tokens' probabilities, the end token's included when it ended the decoding),
    and ``extra["tokens"]`` the tokens.

    As a head of a stream (``push``/``gap``/``end``), it needs ``state``, the stream's
    model state now. ``decode = "step"``: ``push`` decodes from each row. ``decode =
    "end"``: ``push`` only notes the clip (its first and last steps, the last row);
    ``end``, and ``gap`` when ``clip_on_gap``, decode the clip from its last row, covering
    the clip. A clip under ``min_steps`` steps is skipped with a warning, or refused
    (:class:`InputError`) when it is all the stream had.
    """

    kind: OutputKind = "token"
    reads_state = True

    def __init__(
        self,
        stream: str,
        vocab: Sequence[str],
        decode_step: Callable[[Tensor | int, S], tuple[Tensor, S]],
        *,
        max_len: int,
        end_token: int | str | None = None,
        top_k: int = 1,
        sequence: bool = False,
        state: Callable[[], S] | None = None,
        decode: Literal["step", "end"] = "step",
        min_steps: int = 1,
        clip_on_gap: bool = False,
    ) -> None:
        if not vocab:
            raise ValueError("generate head: the vocabulary is empty")
        if max_len < 1:
            raise ValueError(f"generate head: max_len must be >= 1, not {max_len}")
        if not 1 <= top_k <= len(vocab):
            raise ValueError(f"generate head: top_k must be in 1..{len(vocab)}, not {top_k}")
        if isinstance(end_token, str):
            if end_token not in vocab:
                raise ValueError(f"generate head: end token {end_token!r} is not in the vocabulary")
            end_token = list(vocab).index(end_token)
        elif end_token is not None and not 0 <= end_token < len(vocab):
            raise ValueError(f"generate head: end token id {end_token} is outside the vocabulary")
        self.stream = stream
        self.vocab = list(vocab)
        self.decode_step = decode_step
        self.max_len = max_len
        self.end_token = end_token
        self.top_k = top_k
        self.sequence = sequence
        self.state = state
        self.decode = decode
        self.step_by_step = decode == "step"
        self.min_steps = min_steps
        self.clip_on_gap = clip_on_gap
        # decode = "end": the clip so far (its first and last steps, the last output row)
        self._first: Step | None = None
        self._last: Step | None = None
        self._row: Tensor | None = None
        self._steps = 0
        self._captions = 0

    def generate(
        self, inp: Tensor | int, state: S, steps: Sequence[Step]
    ) -> Generator[Output, None, S]:
        """Decode from ``inp``; yield each token's output as soon as it is chosen.

        ``steps`` are the steps the input covers (at least one). The generator's return
        value (``StopIteration.value``) is the decoder's final state.
        """
        if not steps:
            raise ValueError("generate head: the input must cover at least one step")
        first, last = steps[0], steps[-1]
        current: Tensor | int = inp
        tokens: list[str] = []
        probability = 1.0
        for position in range(self.max_len):
            logits, state = self.decode_step(current, state)
            flat = logits.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
            if flat.shape[0] != len(self.vocab):
                raise ValueError(
                    f"generate head: decode_step gave {list(logits.shape)} logits for a"
                    f" vocabulary of {len(self.vocab)}"
                )
            probs = torch.softmax(flat, dim=0)
            # stable: among equal probabilities the lowest id comes first, as for argmax
            top = torch.argsort(probs, descending=True, stable=True)[: self.top_k].tolist()
            token = top[0]
            probability *= float(probs[token])
            if token == self.end_token:
                break
            tokens.append(self.vocab[token])
            scores = {self.vocab[i]: float(probs[i]) for i in top}
            yield covering(
                self.stream, "token", first, last, scores, self.vocab[token], {"position": position}
            )
            current = token
        if self.sequence:
            text = " ".join(tokens)
            yield covering(
                self.stream, "sequence", first, last, {text: probability}, text, {"tokens": tokens}
            )
        return state

    # -- as a stream's head ------------------------------------------------------------
    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output] | Iterator[Output]:
        """``decode = "step"``: the tokens decoded from each row ``y [T, K]`` and the
        state (drawn lazily); ``"end"``: nothing yet, the clip goes on."""
        if self.decode == "end":
            if steps:
                self._first = self._first or steps[0]
                self._last, self._row = steps[-1], y[-1]
                self._steps += len(steps)
            return []
        if not len(steps):
            return []
        return itertools.chain.from_iterable(
            self.generate(row, self._state(), [step]) for row, step in zip(y, [*steps], strict=True)
        )

    def gap(self) -> list[Output] | Iterator[Output]:
        """With ``clip_on_gap`` (a resetting gap), the clip ends here."""
        return self._clip(end=False) if self.clip_on_gap else []

    def end(self) -> list[Output] | Iterator[Output]:
        """The clip (``decode = "end"``) ends with the stream."""
        return self._clip(end=True)

    def _clip(self, *, end: bool) -> list[Output] | Iterator[Output]:
        """Decode the clip that ends here from its last row and the state now (after its
        last step), or skip it when it is under ``min_steps``."""
        first, last, row, count = self._first, self._last, self._row, self._steps
        self._first = self._last = self._row = None
        self._steps = 0
        if first is None or last is None or row is None:
            return []
        if count < self.min_steps:
            if end and not self._captions:
                raise InputError(
                    f"stream '{self.stream}': too short for a caption: {count} steps (frames),"
                    f" the model needs at least {self.min_steps} ([model] min_steps)"
                )
            log.warning(
                "generate head: stream '%s': %d steps before a gap, too short for a caption",
                self.stream,
                count,
            )
            return []
        self._captions += 1
        return self.generate(row, self._state(), [first, last])

    def _state(self) -> S:
        if self.state is None:
            raise ValueError("generate head: decoding a stream needs its state (state=...)")
        return self.state()
