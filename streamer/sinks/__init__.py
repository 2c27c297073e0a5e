"""Sinks receive outputs: ``await sink.send(output)`` per output, ``await sink.aclose()`` once.

A :class:`FrameSink` (the annotated video) also reads the input frames of its streams from
the pipeline's frame tap. Each kind is registered here by its ``[[sinks]] type``: its
options model and its ``build`` (a new sink is its own module and one line below).
"""

from streamer.sinks.base import SINKS, FrameSink, Sink, SinkKind
from streamer.sinks.callback import CallbackSink
from streamer.sinks.console import ConsoleSink, ConsoleSinkConfig, build_console
from streamer.sinks.jsonl import JsonlSink, JsonlSinkConfig, build_jsonl
from streamer.sinks.mqtt import MqttSinkConfig, build_mqtt
from streamer.sinks.video import VideoSinkConfig, build_video
from streamer.sinks.web import WebSinkConfig, build_web

SINKS.register("console", SinkKind(ConsoleSinkConfig, build_console))
SINKS.register("jsonl", SinkKind(JsonlSinkConfig, build_jsonl))
SINKS.register("video", SinkKind(VideoSinkConfig, build_video))
SINKS.register("mqtt", SinkKind(MqttSinkConfig, build_mqtt))
SINKS.register("web", SinkKind(WebSinkConfig, build_web))

__all__ = ["SINKS", "CallbackSink", "ConsoleSink", "FrameSink", "JsonlSink", "Sink", "SinkKind"]
