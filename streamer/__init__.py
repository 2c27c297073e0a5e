"""streamer: run stateful sequence models on live and recorded streams."""

__version__ = "0.1.0"
