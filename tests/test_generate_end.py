"""The generate head decoding once per clip (``[model] decode = "end"``): at the stream's
end, or at a resetting gap, from the state after the clip's last step; the tokens, then
one ``sequence`` output with the caption; ``min_steps`` for the shortest clip."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from test_model_stage import RATE, VOCAB, Aging, one_hot, run_stage

from streamer.config import ModelConfig
from streamer.errors import InputError, StageError
from streamer.frames import Frame, Gap, Item, Output, StreamEnd, StreamStart
from streamer.models import ModuleModel
from streamer.stages.model import ModelSettings


def clip(frames: int, gap_after: int | None = None) -> list[Item]:
    """A stream of one-hot "a" frames, with a gap of one frame after ``gap_after``."""
    items: list[Item] = [StreamStart("g", "audio", RATE)]
    for i in range(frames):
        if i == gap_after:
            items.append(Gap("g", i, 1, i * 0.01, "test"))
            continue
        items.append(Frame("g", i, i * 0.01, 0.0, one_hot(1)[:, None], RATE))
    items.append(StreamEnd("g", frames))
    return items


def settings(**kwargs: Any) -> ModelSettings:
    return ModelSettings(
        labels=VOCAB, head="generate", end_token="<end>", max_len=10, decode="end", **kwargs
    )


def summary(outputs: list[Output]) -> list[tuple[Any, ...]]:
    return [(o.kind, o.start, o.end, o.label) for o in outputs]


@pytest.mark.parametrize(
    ("mode", "chunk", "pace"),
    [("online", 1, "fast"), ("online", 3, "realtime"), ("offline", 1, "fast")],
)
async def test_one_caption_at_the_end_from_the_state_after_the_last_step(
    mode: str, chunk: int, pace: str
) -> None:
    """Three frames, then the end: the tokens the last frame's decode gives with
    ``decode = "step"`` (b c d a b: the state counts three steps, <end> wins at eight),
    once, covering the clip, then the caption; whatever the mode or chunking."""
    model = ModuleModel(Aging(limit=8))
    run, _, _ = await run_stage(model, [clip(3)], settings(chunk=chunk), mode, pace=pace)
    words = ["b", "c", "d", "a", "b"]
    assert summary(run.outputs) == [("token", 0, 2, w) for w in words] + [
        ("sequence", 0, 2, "b c d a b")
    ]
    assert [o.extra["position"] for o in run.outputs[:-1]] == list(range(5))
    caption = run.outputs[-1]
    assert caption.extra["tokens"] == words
    probability = np.prod([o.scores[o.label] for o in run.outputs[:-1]])
    assert 0 < caption.scores["b c d a b"] < probability  # the end token's share too

    by_step = ModelSettings(labels=VOCAB, head="generate", end_token="<end>", max_len=10)
    each, _, _ = await run_stage(model, [clip(3)], by_step, mode, pace=pace)
    assert [o.label for o in each.outputs if o.start == 2] == words


async def test_a_resetting_gap_ends_a_clip_and_a_kept_one_does_not() -> None:
    model = ModuleModel(Aging(limit=8))
    run, _, _ = await run_stage(model, [clip(7, gap_after=3)], settings(on_gap="reset"))
    sequences = [o for o in run.outputs if o.kind == "sequence"]
    assert [(o.start, o.end, o.label) for o in sequences] == [
        (0, 2, "b c d a b"),
        (4, 6, "b c d a b"),  # a fresh state after the gap
    ]
    run, _, _ = await run_stage(model, [clip(7, gap_after=3)], settings(on_gap="keep"))
    # one clip of six steps: b (6 taken), c (7), then <end> wins
    assert summary(run.outputs)[-1] == ("sequence", 0, 6, "b c")


async def test_a_stream_too_short_for_a_caption_is_refused() -> None:
    model = ModuleModel(Aging(limit=8))
    with pytest.raises(StageError) as info:
        await run_stage(model, [clip(3)], settings(min_steps=4))
    assert isinstance(info.value.cause, InputError)
    message = str(info.value)
    assert "too short for a caption: 3 steps" in message and "at least 4" in message, message


async def test_a_short_clip_before_a_gap_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    model = ModuleModel(Aging(limit=8))
    with caplog.at_level(logging.WARNING):
        run, _, _ = await run_stage(model, [clip(8, gap_after=2)], settings(min_steps=3))
    assert summary(run.outputs)[-1] == ("sequence", 3, 7, "b c d")
    assert sum(o.kind == "sequence" for o in run.outputs) == 1
    assert any("too short for a caption" in r.getMessage() for r in caplog.records)


def test_the_keys_belong_to_the_generate_head() -> None:
    base = {"factory": "m:f", "labels": list(VOCAB)}
    with pytest.raises(ValidationError, match="an option of the generate head"):
        ModelConfig.model_validate({**base, "decode": "end"})
    with pytest.raises(ValidationError, match="min_steps"):
        ModelConfig.model_validate({**base, "head": "generate", "min_steps": 4})
    checked = ModelConfig.model_validate(
        {**base, "head": "generate", "decode": "end", "min_steps": 4}
    )
    assert (checked.decode, checked.min_steps) == ("end", 4)
