"""Sinks receive outputs: ``await sink.send(output)`` per output, ``await sink.aclose()`` once.

A :class:`FrameSink` (the annotated video) also reads the input frames of its streams from
the pipeline's frame tap.
"""

from streamer.sinks.base import FrameSink, Sink
from streamer.sinks.callback import CallbackSink
from streamer.sinks.console import ConsoleSink
from streamer.sinks.jsonl import JsonlSink

__all__ = ["CallbackSink", "ConsoleSink", "FrameSink", "JsonlSink", "Sink"]
