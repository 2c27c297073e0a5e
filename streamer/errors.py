"""Exceptions, one per kind of failure, each mapped to an exit code by the CLI."""

from __future__ import annotations


class StreamerError(Exception):
    """Base class of streamer's own errors."""

    exit_code = 1


class InputError(StreamerError):
    """Bad input: a file, key, URI or device that cannot be used as given (exit code 2).

    The message is one line that names the file, key, device or stage and says what was
    expected.
    """

    exit_code = 2


class StageError(StreamerError):
    """A stage failed while the pipeline ran; ``stage`` names it (exit code of the cause)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        self.cause = cause
        detail = str(cause) or type(cause).__name__
        if not isinstance(cause, StreamerError):
            detail = f"{type(cause).__name__}: {detail}"
        super().__init__(f"stage '{stage}': {detail}")
        self.exit_code = cause.exit_code if isinstance(cause, StreamerError) else 1


class ChannelClosed(StreamerError):
    """A send on a channel whose receiver has gone away."""
