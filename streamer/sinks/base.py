"""The sink interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from streamer.frames import Output


@runtime_checkable
class Sink(Protocol):
    """Where outputs go. ``aclose`` flushes and releases; it is called even after a failure
    and may be called twice (the second call does nothing)."""

    name: str

    async def send(self, output: Output) -> None: ...

    async def aclose(self) -> None: ...
