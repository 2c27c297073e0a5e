"""The sink interface, and the frame tap of sinks that also need the input frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from streamer.frames import Output

if TYPE_CHECKING:
    from streamer.channels import Channel
    from streamer.frames import Frame, Marker


@runtime_checkable
class Sink(Protocol):
    """Where outputs go. ``aclose`` flushes and releases; it is called even after a failure
    and may be called twice (the second call does nothing)."""

    name: str

    async def send(self, output: Output) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that takes several outputs in one call (the JSONL file: one write and one
    flush for all of them). The pipeline hands it what is already queued for it, at most
    :data:`MAX_SEND_BATCH` at a time, in order; ``send_many`` must leave the outputs
    handled exactly as that many ``send`` calls would."""

    async def send_many(self, outputs: Sequence[Output]) -> None: ...


#: The most outputs the pipeline hands a :class:`BatchSink` in one call.
MAX_SEND_BATCH = 256


@runtime_checkable
class FrameSink(Sink, Protocol):
    """A sink that also sees the input frames of ``frame_streams`` (the annotated video).

    The pipeline's source pumps copy those streams' frames and markers into a bounded
    channel (the frame tap) that ``run_frames`` reads to its end, as its own task; the
    sink's outputs still come through ``send``. ``aclose`` is called once ``run_frames``
    has returned (or was cancelled) and every output was sent.
    """

    frame_streams: frozenset[str]

    async def run_frames(self, inbox: Channel[Frame | Marker]) -> None: ...
