"""JSON Lines sink: one complete JSON object per output, flushed line by line.

A line is written with a single ``write`` of the whole line and flushed, so a run that
fails or is interrupted leaves a file whose every line parses. The file is checked when
the sink is made but opened (created or truncated) only when the run delivers its first
output or closes: a run refused before it starts leaves the file as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, TextIO

from pydantic import Field

from streamer.blocks import OutputBlock
from streamer.errors import InputError
from streamer.frames import Output
from streamer.options import Str
from streamer.safety import check_writable
from streamer.sinks.base import SinkContext, SinkOptions
from streamer.worker import Worker


class JsonlSink:
    """Writes ``output.to_json()`` per line to ``path`` (created or truncated on first use)."""

    takes_blocks = True  # a block is written in one pass (OutputBlock.jsonl)

    def __init__(self, path: str | Path, worker: Worker | None = None) -> None:
        self.path = Path(path)
        self.name = f"sink:jsonl:{self.path.name}"
        check_writable(self.path)
        self._file: TextIO | None = None
        self._opened = False
        self._worker = worker or Worker(self.name)

    def _ensure_open(self) -> TextIO:
        if self._file is None:
            if self._opened:
                raise RuntimeError(f"{self.name}: send after close")
            self._opened = True
            try:
                self._file = self.path.open("w", encoding="utf-8")
            except OSError as exc:
                raise InputError(f"{self.path}: cannot write output: {exc.strerror}") from exc
        return self._file

    async def send(self, output: Output) -> None:
        line = _line(output)
        # Through: an abort lets a line being written land, so the run's output count
        # matches the file. A write whose reader has gone raises BrokenPipeError (the
        # pipeline then stops the run, `streamer run --out /dev/stdout | head`).
        await self._worker.call_through(self._write, line)

    async def send_many(self, outputs: Sequence[Output | OutputBlock]) -> None:
        """Several outputs (and blocks of them) in one write and one flush (each output
        still a whole line), encoded on the sink's thread: the event loop hands them over
        and goes on."""
        await self._worker.call_through(self._write_many, list(outputs))

    def _write_many(self, outputs: list[Output | OutputBlock]) -> None:
        self._write("".join(o.jsonl() if isinstance(o, OutputBlock) else _line(o) for o in outputs))

    def _write(self, line: str) -> None:
        file = self._ensure_open()
        file.write(line)
        file.flush()

    async def aclose(self) -> None:
        # Synchronous on purpose: it must complete even while the run is being cancelled.
        if not self._opened:
            self._ensure_open()  # a run without outputs still leaves an (empty) file
        if self._file is not None:
            file, self._file = self._file, None
            # The reader of a pipe may have gone: the lines it did not take are lost.
            with contextlib.suppress(BrokenPipeError):
                file.close()
        self._worker.close()


def _line(output: Output) -> str:
    """One output as a JSON line (NaN refused: every line parses as strict JSON)."""
    return output.json_line() + "\n"


class JsonlSinkConfig(SinkOptions):
    """``type = "jsonl"``: every output as a JSON line in ``path``."""

    type: Literal["jsonl"]
    path: Annotated[Str, Field(min_length=1)]


def build_jsonl(options: JsonlSinkConfig, context: SinkContext) -> JsonlSink:
    return JsonlSink(Path(options.path))
