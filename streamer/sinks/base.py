"""The sink interface, the frame tap of sinks that also need the input frames, each sink's
delivery, and the registry of sink kinds (``[[sinks]] type = ...``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from streamer.frames import Output
from streamer.options import Int, Section
from streamer.registry import Registry

if TYPE_CHECKING:
    from streamer.blocks import OutputBlock
    from streamer.channels import Channel
    from streamer.clock import Clock
    from streamer.frames import Frame, Marker
    from streamer.metrics import Metrics
    from streamer.sources.base import Source


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
    :data:`MAX_SEND_BATCH` items at a time, in order; ``send_many`` must leave the outputs
    handled exactly as ``send`` of each output, in order, would. One whose class sets
    ``takes_blocks = True`` gets blocks of outputs as they are
    (:class:`~streamer.blocks.OutputBlock`); any other gets their rows as outputs."""

    async def send_many(self, outputs: Sequence[Output | OutputBlock]) -> None: ...


#: The most outputs the pipeline hands a :class:`BatchSink` in one call.
MAX_SEND_BATCH = 256

DeliveryPolicy = Literal["block", "drop-oldest"]
OnError = Literal["fail", "drop"]
#: Outputs a sink's edge holds when neither the sink nor the pipeline file says.
SINK_CAPACITY = 256


@dataclass(frozen=True)
class Delivery:
    """How the pipeline hands one sink its outputs (``[[sinks]] policy``, ``capacity``,
    ``on_error``).

    ``policy``: ``block`` (lossless: a full edge makes the fan-out, and so the model
    stage, wait for the sink) or ``drop-oldest`` (a full edge drops its oldest output:
    a slow sink holds up nothing, and its drops are counted). ``on_error``: a sink that
    raises either fails the run (``fail``, naming it) or is dropped from the run with a
    warning while the others go on (``drop``). A sink class says what suits it in its
    ``default_policy`` attribute (files block; displays and network sinks drop)."""

    policy: DeliveryPolicy = "block"
    capacity: int = SINK_CAPACITY
    on_error: OnError = "fail"


def default_delivery(sink: Sink) -> Delivery:
    """The delivery a sink gets when the pipeline file says nothing: its class's
    ``default_policy`` (``block`` when it has none)."""
    policy: DeliveryPolicy = getattr(sink, "default_policy", "block")
    return Delivery(policy=policy)


class _AllStreams(frozenset[str]):
    """Holds every stream id, also of the streams that start during the run."""

    def __contains__(self, stream: object) -> bool:
        return isinstance(stream, str)

    def __repr__(self) -> str:
        return "ALL_STREAMS"


#: ``frame_streams`` of a frame sink that sees every stream, also those a source learns
#: only during the run (a network source's): the live view.
ALL_STREAMS: frozenset[str] = _AllStreams()


@runtime_checkable
class FrameSink(Sink, Protocol):
    """A sink that also sees the input frames of ``frame_streams`` (the annotated video;
    :data:`ALL_STREAMS` for the live view).

    The pipeline's source pumps copy those streams' frames and markers into a bounded
    channel (the frame tap) that ``run_frames`` reads to its end, as its own task; the
    sink's outputs still come through ``send``. ``aclose`` is called once ``run_frames``
    has returned (or was cancelled) and every output was sent. A sink that needs only some
    frames may have ``wants_frame(frame) -> bool``, asked by the pump before it copies a
    frame into the tap (markers always go): the live view takes only those it would show.
    """

    frame_streams: frozenset[str]

    async def run_frames(self, inbox: Channel[Frame | Marker]) -> None: ...


class SinkOptions(Section):
    """The options of one ``[[sinks]]`` table: its ``type`` (the registered name, a
    ``Literal`` in each kind's subclass) and what every sink may say of its delivery
    (:class:`Delivery`; ``policy`` unset: the sink's own default)."""

    type: str
    policy: DeliveryPolicy | None = None
    capacity: Annotated[Int, Field(ge=1, le=1 << 20)] | None = None
    on_error: OnError = "fail"

    def writes(self) -> Path | None:
        """The file this sink writes, if any (checked against the run's inputs and the
        other outputs before anything is opened)."""
        path = getattr(self, "path", None)
        return Path(path) if isinstance(path, str) else None


@dataclass(frozen=True)
class SinkContext:
    """What a sink kind's ``build`` may need besides its options."""

    name: str  # how errors name the sink: ``[[sinks]] #2`` or the flag that made it
    sources: Sequence[Source]
    mode: str
    clock: Clock
    metrics: Metrics


@dataclass(frozen=True)
class SinkKind:
    """A registered kind of sink: its options model and how to make one (``build``
    refuses bad options with an :class:`~streamer.errors.InputError` naming
    ``context.name``; heavy imports belong inside it, so that the pipeline file's schema
    stays cheap to load)."""

    options: type[SinkOptions]
    build: Callable[[Any, SinkContext], Sink]


#: The sink kinds by ``type``, registered in :mod:`streamer.sinks`.
SINKS: Registry[SinkKind] = Registry("sink type")
