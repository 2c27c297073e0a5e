"""A sink that calls a Python function (sync or async) for each output."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence

from streamer.frames import Output


class CallbackSink:
    """``CallbackSink(fn)``: ``fn(output)`` per output; awaited if it returns an awaitable.

    The function runs on the event loop: keep it quick, or make it async.
    """

    def __init__(
        self, fn: Callable[[Output], Awaitable[None] | None], name: str = "callback"
    ) -> None:
        self.fn = fn
        self.name = f"sink:{name}"

    async def send(self, output: Output) -> None:
        result = self.fn(output)
        if inspect.isawaitable(result):
            await result

    async def send_many(self, outputs: Sequence[Output]) -> None:
        """``fn`` for each output in turn (one hand-off from the pipeline, not one each)."""
        for output in outputs:
            result = self.fn(output)
            if inspect.isawaitable(result):
                await result

    async def aclose(self) -> None:
        return None
