"""JSON Lines sink: one complete JSON object per output, flushed line by line.

A line is written with a single ``write`` of the whole line and flushed, so a run that
fails or is interrupted leaves a file whose every line parses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from streamer.errors import InputError
from streamer.frames import Output
from streamer.worker import Worker


class JsonlSink:
    """Writes ``output.to_json()`` per line to ``path`` (created or truncated at start)."""

    def __init__(self, path: str | Path, worker: Worker | None = None) -> None:
        self.path = Path(path)
        self.name = f"sink:jsonl:{self.path.name}"
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"{self.path}: cannot write output: folder '{parent}' does not exist")
        if self.path.is_dir():
            raise InputError(f"{self.path}: cannot write output: it is a folder")
        try:
            self._file: TextIO | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write output: {exc.strerror}") from exc
        self._worker = worker or Worker(self.name)

    async def send(self, output: Output) -> None:
        line = json.dumps(output.to_json(), ensure_ascii=False, allow_nan=False) + "\n"
        await self._worker.call(self._write, line)

    def _write(self, line: str) -> None:
        if self._file is None:
            raise RuntimeError(f"{self.name}: send after close")
        self._file.write(line)
        self._file.flush()

    async def aclose(self) -> None:
        # Synchronous on purpose: it must complete even while the run is being cancelled.
        if self._file is not None:
            self._file.close()
            self._file = None
        self._worker.close()
