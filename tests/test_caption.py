"""The clip captioner (``pipelines/caption.py``, ``pipelines/clip_caption.toml``).

The committed weights caption a small held-out set of rendered clips (a seed of its own)
about as well as the training script reports; the model's crop is the window around the
point it is given; the shipped pipeline, run by ``streamer run`` in-process on a rendered
clip written as a video file, streams the caption's tokens as
``token`` outputs, then the caption as a ``sequence`` output; a clip too short for a
caption and a missing weights file are refused in one line.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from media import assert_missing_weights_refused, lossless

from pipelines import caption, motion_scenes, train_caption
from streamer.cli import main
from streamer.models.loading import load_model

PIPELINE = REPO / "pipelines" / "clip_caption.toml"
CONFIG = tomllib.loads(PIPELINE.read_text())

pytestmark = pytest.mark.usefixtures("one_torch_thread", "in_repo")


def run(tmp: Path, argv: list[str]) -> list[dict[str, Any]]:
    """``streamer run clip_caption.toml ARGV``: the output records, in order."""
    out = tmp / "out.jsonl"
    assert main(["run", str(PIPELINE), *argv, "--out", str(out), "-q"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_vocabulary_and_config_agree() -> None:
    model = CONFIG["model"]
    assert model["labels"] == list(caption.VOCAB)
    assert model["head"] == "generate" and model["decode"] == "end"
    assert model["end_token"] == caption.END and model["max_len"] == caption.MAX_TOKENS
    assert model["min_steps"] == caption.MIN_FRAMES
    options = model["feature_options"]
    assert tuple(options["size"]) == caption.INPUT_SIZE
    assert tuple(options["mean"]) == caption.MEAN and tuple(options["std"]) == caption.STD
    assert Path(CONFIG["source"]["uri"]).stat().st_size < 200_000


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10**6))
def test_training_clips_have_short_captions_of_known_words(seed: int, index: int) -> None:
    """Each clip is cut after its third motion, with its last motion seen for at least
    ``MIN_SEEN`` frames; its caption is made of vocabulary words and names the object."""
    clip, frames, text = caption.rendered_clip(seed, index)
    motions = [m for m in clip.description.motions if m.start < len(frames)]
    assert 1 <= len(motions) <= caption.MAX_MOTIONS
    assert len(frames) >= caption.MIN_FRAMES
    assert len(motions) == 1 or len(frames) - motions[-1].start >= caption.MIN_SEEN
    words = text.split()
    assert words[:2] == [clip.description.colour, clip.description.shape]
    assert text.count(" then ") == len(motions) - 1
    ids = caption.tokens_of(text)
    assert len(ids) <= caption.MAX_TOKENS and ids[-1] == caption.VOCAB.index(caption.END)
    assert [caption.VOCAB[i] for i in ids[:-1]] == words


@pytest.fixture(scope="module")
def held_out() -> tuple[caption.CaptionModel, train_caption.Clips, list[str]]:
    """60 held-out clips (the training script's held-out seed) and the committed
    captioner's captions of them."""
    torch.set_num_threads(1)
    model = caption.trained()
    clips = train_caption.render(model, train_caption.HELD_OUT_SEED, 60, keep=True)
    return model, clips, train_caption.predict(model, clips)


def test_held_out_figures(
    held_out: tuple[caption.CaptionModel, train_caption.Clips, list[str]],
) -> None:
    """The figures of the committed weights on 60 held-out clips: exact match 85 % and
    token accuracy 96.4 % here (85.5 % and 95.3 % on the script's 400 clips; the
    issue's targets are 80 % and 95 %)."""
    _, clips, predicted = held_out
    exact, token = train_caption.scores(predicted, clips.captions)
    assert exact >= 0.8 and token >= 0.94, (exact, token)


def test_the_caption_names_the_object_as_the_look_does(
    held_out: tuple[caption.CaptionModel, train_caption.Clips, list[str]],
) -> None:
    """The decoder copies the look's naming of the object and reads the motions from the
    summary alone: each clip decoded with the next clip's look (its sum over that clip's
    frames) names the object as the look names it (its heads' most likely colour and
    shape) and keeps its own motions, for nearly every clip (56 and 58 of 60 here)."""
    model, clips, predicted = held_out
    assert clips.x is not None
    hs: dict[int, torch.Tensor] = {}
    totals: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for n, same in train_caption.same_lengths(clips):
            _, (_, h, total, _) = model(caption.normalise(clips.x[same, :n]))
            for k, i in enumerate(same.tolist()):
                hs[i], totals[i] = h[:, k], total[k]
        b = len(clips)
        h = torch.stack([hs[i] for i in range(b)], 1)
        total = torch.stack([totals[i] for i in range(b)]).roll(1, 0)
        encoders = (model.motion.initial_state(b), h, total, h.new_zeros(1, b, model.decoder_size))
        logits, state = model.restart(encoders)
        ids = model.greedy_from(logits, state)
        traded = [" ".join(caption.VOCAB[t] for t in caption_ids) for caption_ids in ids]
        names = model.look.name(caption.mean_look(total))
    shapes = len(motion_scenes.SHAPES)
    shape, colour = names[:, :shapes].argmax(-1).tolist(), names[:, shapes:].argmax(-1).tolist()
    named = [
        [list(motion_scenes.COLOURS)[c], motion_scenes.SHAPES[s]]
        for s, c in zip(shape, colour, strict=True)
    ]
    objects = sum(t.split()[:2] == n for t, n in zip(traded, named, strict=True))
    motions = sum(t.split()[2:] == p.split()[2:] for t, p in zip(traded, predicted, strict=True))
    assert objects >= 0.9 * b and motions >= 0.9 * b, (objects, motions)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_traded_namings_still_name_the_caption_words(seed: int) -> None:
    """The decoder's training namings, traded between clips: each one's most likely
    colour and shape are the caption's two first words (traded with it); the motions'
    words are the clip's own."""
    generator = torch.Generator().manual_seed(seed)
    b, shapes, colours = 256, len(motion_scenes.SHAPES), len(motion_scenes.COLOURS)
    shape = torch.randint(0, shapes, (b,), generator=generator)
    colour = torch.randint(0, colours, (b,), generator=generator)
    logits = torch.randn(b, shapes + colours, generator=generator)
    logits[torch.arange(b), shape] += 20.0
    logits[torch.arange(b), shapes + colour] += 20.0
    names = torch.cat([logits[:, :shapes].log_softmax(-1), logits[:, shapes:].log_softmax(-1)], -1)
    words = [caption.VOCAB.index(w) for w in ("moves", "left", "then", "stops", caption.END)]
    colour_ids = torch.tensor([caption.VOCAB.index(c) for c in motion_scenes.COLOURS])
    shape_ids = torch.tensor([caption.VOCAB.index(s) for s in motion_scenes.SHAPES])
    rest = torch.tensor(words)[torch.randint(0, len(words), (b, 6), generator=generator)]
    tokens = torch.cat([colour_ids[colour, None], shape_ids[shape, None], rest], dim=1)
    named, varied = train_caption.trade_names(names, tokens, generator)
    assert not torch.equal(named, names)  # some were traded
    assert torch.equal(varied[:, 0], colour_ids[named[:, shapes:].argmax(-1)])
    assert torch.equal(varied[:, 1], shape_ids[named[:, :shapes].argmax(-1)])
    assert torch.equal(varied[:, 2:], tokens[:, 2:])


@settings(max_examples=25, deadline=None)
@given(dx=st.integers(-40, 40), dy=st.integers(-25, 25))
def test_crop_is_the_window_around_the_point(dx: int, dy: int) -> None:
    """A point whole pixels from the centre crops exactly the CROP-pixel window there;
    what lies outside the frame is zeros."""
    width, height = caption.INPUT_SIZE
    x = torch.rand(2, 3, height, width)
    point = torch.tensor([[2 * dx / width, 2 * dy / height]] * 2)
    window = caption.crop(x, point)
    top, left = (height - caption.CROP) // 2 + dy, (width - caption.CROP) // 2 + dx
    padded = torch.nn.functional.pad(x, (caption.CROP,) * 4)
    c = caption.CROP
    expected = padded[..., top + c : top + 2 * c, left + c : left + 2 * c]
    torch.testing.assert_close(window, expected, atol=1e-5, rtol=0)


def test_the_pipeline_streams_tokens_then_the_caption(tmp_path: Path) -> None:
    """A rendered clip as a video file: one ``token`` output per word as it is decoded
    (positions 0, 1, ...; covering the whole clip), then one ``sequence`` output whose
    text is the tokens joined, and the caption is the clip's (a held-out clip the
    committed weights caption right)."""
    _, frames, text = caption.rendered_clip(train_caption.HELD_OUT_SEED, 30)
    video = lossless(tmp_path / "clip.mkv", frames)
    records = run(tmp_path, ["--source", str(video)])
    kinds = [r["kind"] for r in records]
    words = len(text.split())
    assert kinds == ["token"] * words + ["sequence"], kinds
    tokens = records[:-1]
    assert [r["position"] for r in tokens] == list(range(words))
    assert all((r["start"], r["end"]) == (0, len(frames) - 1) for r in records)
    sequence = records[-1]
    assert sequence["label"] == " ".join(r["label"] for r in tokens)
    assert sequence["tokens"] == [r["label"] for r in tokens]
    assert sequence["label"] == text
    assert 0 < sequence["scores"][text] <= 1


def test_the_pipeline_decodes_as_the_batch_model_does(tmp_path: Path) -> None:
    """Frame by frame through ``streamer run`` and all at once through the model give the
    same caption; the model stepped one frame at a time gives the whole clip's first-token
    logits at the last frame."""
    _, frames, _ = caption.rendered_clip(train_caption.HELD_OUT_SEED, 2)
    records = run(tmp_path, ["--source", str(lossless(tmp_path / "clip.mkv", frames))])
    model = caption.trained()
    x = caption.normalise(torch.from_numpy(caption.resize_rgb(frames)))[None]
    with torch.inference_mode():
        ids = model.greedy(x)[0]
        whole, _ = model(x)
    assert records[-1]["label"] == " ".join(caption.VOCAB[i] for i in ids)
    wrapped = load_model(CONFIG["model"]["factory"])
    state = wrapped.initial_state(1)
    with torch.inference_mode():
        for t in range(x.shape[1]):
            y, state = wrapped.step(x[:, t : t + 1], state)
    torch.testing.assert_close(y[0, -1], whole[0, -1], atol=1e-5, rtol=1e-5)


def test_a_clip_too_short_for_a_caption_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, frames, _ = caption.rendered_clip(train_caption.HELD_OUT_SEED, 3)
    short = frames[: caption.MIN_FRAMES - 1]
    video = lossless(tmp_path / "short.mkv", short)
    code = main(
        ["run", str(PIPELINE), "--source", str(video), "-q", "--out", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "too short for a caption" in err and f"{caption.MIN_FRAMES - 1} steps" in err, err
    assert f"at least {caption.MIN_FRAMES}" in err and "min_steps" in err, err


def test_missing_weights_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_missing_weights_refused(
        PIPELINE, caption.TRAIN_COMMAND, tmp_path, lambda: capsys.readouterr().err
    )
