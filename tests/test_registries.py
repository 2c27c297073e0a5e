"""Kinds registered by name: a head's options in ``[model.head]`` (the flat keys still
work), a head and a source scheme added with one registration each and used from a
pipeline file, and the pipeline file's sink types read from the sink registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from torch import Tensor

from streamer.clock import Clock
from streamer.config import parse_config
from streamer.errors import InputError
from streamer.frames import Output
from streamer.sinks import SINKS
from streamer.sources import SOURCES, SourceKind, SourceOptions, open_source
from streamer.sources.base import Source
from streamer.sources.synthetic import SyntheticSource
from streamer.stages.model.frontend import Step
from streamer.stages.model.heads import HEADS, HeadKind
from streamer.stages.model.settings import HeadOptions
from streamer.testing import replay

TAGGER = """
[source]
uri = "recordings/speech_en"

[model]
factory = "pipelines.audio_tagging:build"
features = "logmel"
labels = ["silence", "speech"]
{head}

[run]
max_frames = 120
"""


class EveryOptions(HeadOptions):
    every: int = 5


class EveryHead:
    """A head made for this test: one ``window`` output every ``every`` steps, labelled by
    its last row's larger value."""

    kind: Literal["window"] = "window"
    reads_state = False
    step_by_step = False

    def __init__(self, stream: str, labels: Sequence[str], *, every: int, **_: Any) -> None:
        self.stream, self.labels, self.every, self.seen = stream, list(labels), every, 0

    def push(self, y: Tensor, steps: Sequence[Step]) -> list[Output]:
        out = []
        for row, step in zip(y.tolist(), steps, strict=True):
            self.seen += 1
            if self.seen % self.every == 0:
                label = self.labels[max(range(len(row)), key=row.__getitem__)]
                scores = dict(zip(self.labels, row, strict=True))
                out.append(
                    Output(
                        self.stream,
                        "window",
                        step.index - self.every + 1,
                        step.index,
                        step.pts,
                        label,
                        scores,
                        step.captured,
                    )
                )
        return out

    def gap(self) -> list[Output]:
        return []

    def end(self) -> list[Output]:
        return []


HEADS.register("test-every", HeadKind(EveryOptions, EveryHead))


def open_beep(uri: str, options: SourceOptions, clock: Clock) -> Source:
    """``beep:SECONDS``: a tone of that length (the source kind this test registers)."""
    seconds = float(uri.removeprefix("beep:"))
    return SyntheticSource(f"synthetic:tone?duration={seconds}", options, clock)


SOURCES.register("beep", SourceKind("test_registries:open_beep"))


def _run(tmp_path: Path, head: str, name: str) -> list[Output]:
    path = tmp_path / f"{name}.toml"
    path.write_text(TAGGER.format(head=head))
    return replay(path).outputs


def test_a_head_table_gives_the_outputs_of_the_flat_keys(tmp_path: Path) -> None:
    flat = _run(tmp_path, 'head = "window"\nwindow = 8\nhop = 4\nreduce = "max"', "flat")
    table = _run(
        tmp_path, '[model.head]\ntype = "window"\nwindow = 8\nhop = 4\nreduce = "max"', "table"
    )
    assert [o.to_json() for o in table] == [o.to_json() for o in flat]
    windows = [o for o in flat if o.kind == "window"]
    assert windows and all(o.end - o.start == 7 for o in windows)


def test_a_registered_head_is_used_from_the_pipeline_file(tmp_path: Path) -> None:
    outputs = _run(tmp_path, '[model.head]\ntype = "test-every"\nevery = 10', "every")
    # logmel steps every 10 ms: 120 frames of 32 ms give about 380 steps, one output a 10
    assert len(outputs) >= 30
    assert [o.end for o in outputs] == list(range(9, 10 * len(outputs), 10))
    assert all(o.label in ("silence", "speech") for o in outputs)
    with pytest.raises(InputError, match=r"head\.evry: the test-every head takes no option"):
        parse_config(
            {
                "source": {"uri": "x"},
                "model": {
                    "factory": "m:f",
                    "labels": ["a", "b"],
                    "head": {"type": "test-every", "evry": 3},
                },
            }
        )


def test_a_registered_source_scheme_opens_through_open_source() -> None:
    from streamer.clock import VirtualClock

    source = open_source("beep:0.5", SourceOptions(), VirtualClock())
    assert isinstance(source, SyntheticSource)
    assert source.streams[0].total_frames == len(list(range(0, 8000, 512)))


def test_the_sink_types_of_the_pipeline_file_are_the_registered_ones() -> None:
    for name in SINKS:
        table: dict[str, Any] = {"type": name}
        if name == "jsonl":
            table["path"] = "out.jsonl"
        if name == "video":
            table["path"] = "out.mp4"
        if name == "mqtt":
            table["url"] = "mqtt://localhost/streamer/{stream}"
        config = parse_config({"source": {"uri": "x"}, "sinks": [table]})
        assert isinstance(config.sinks[0], SINKS.get(name).options)
    with pytest.raises(InputError, match="'console', 'jsonl', 'video'"):
        parse_config({"source": {"uri": "x"}, "sinks": [{"type": "nope"}]})
