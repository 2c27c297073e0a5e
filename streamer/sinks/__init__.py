"""Sinks receive outputs: ``await sink.send(output)`` per output, ``await sink.aclose()`` once."""

from streamer.sinks.base import Sink
from streamer.sinks.callback import CallbackSink
from streamer.sinks.console import ConsoleSink
from streamer.sinks.jsonl import JsonlSink

__all__ = ["CallbackSink", "ConsoleSink", "JsonlSink", "Sink"]
