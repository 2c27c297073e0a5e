"""Sources: where frames come from, and :func:`open_source`, which turns a URI into one.

Accepted URIs: a file path (audio or video, by extension), ``file:PATH``, ``recording:PATH``
(or a directory holding ``meta.json``), ``synthetic:KIND?key=value&...``, ``camera:N`` or
``camera:URL`` (OpenCV), ``mic:``, ``mic:INDEX`` or ``mic:NAME`` (PortAudio). ``mqtt://`` is
reserved for a source this version does not have yet.

The concrete sources are imported when a URI needs them, so importing this package stays
cheap (no OpenCV until a video is opened).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.sources.base import Pacer, Source, SourceOptions

__all__ = [
    "AUDIO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Pacer",
    "Source",
    "SourceOptions",
    "check_readable_file",
    "open_source",
    "uri_path",
]

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mpg"})

ACCEPTED_FORMS = (
    "a file path (audio: .wav .flac .ogg .mp3 .aiff .au; video: .mp4 .avi .mkv .mov .webm), "
    "file:PATH, recording:PATH (or a recording directory with meta.json), "
    "synthetic:KIND?key=value (tone, noise, silence, shapes), camera:N, mic:, mqtt://host/topic"
)
_NOT_YET = {"mqtt://": "MQTT", "mqtts://": "MQTT"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def uri_path(uri: str) -> Path | None:
    """The local file or folder a URI reads (``PATH``, ``file:PATH``, ``file://PATH``,
    ``recording:PATH``), or None for generated media, devices and network sources."""
    if uri.startswith(("synthetic:", "camera:", "mic:", *_NOT_YET)):
        return None
    if uri.startswith("recording:"):
        return Path(uri.removeprefix("recording:"))
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri.removeprefix("file:"))


def open_source(uri: str, options: SourceOptions, clock: Clock) -> Source:
    """The source that ``uri`` names; raises :class:`InputError` for anything unusable.

    Cheap checks (the file exists, is readable, decodes) happen here, so bad input is
    refused before a pipeline starts.
    """
    if uri.startswith("synthetic:"):
        from streamer.sources.synthetic import SyntheticSource

        return SyntheticSource(uri, options, clock)
    if uri.startswith("camera:"):
        from streamer.sources.camera import CameraSource

        return CameraSource(
            uri, options, clock, timeout=options.timeout, policy=options.overflow
        )
    if uri.startswith("mic:"):
        from streamer.sources.microphone import MicrophoneSource

        return MicrophoneSource(
            uri, options, clock, policy=options.overflow, latency=options.latency
        )
    for prefix, what in _NOT_YET.items():
        if uri.startswith(prefix):
            raise InputError(f"{uri}: {what} sources are not available in this version of streamer")
    path = uri_path(uri)
    assert path is not None  # every URI without a local path was handled above
    if uri.startswith("recording:"):
        return _recording(path, options, clock)
    scheme = _SCHEME.match(uri)
    if scheme and not uri.startswith("file:") and not path.exists():
        raise InputError(
            f"{uri}: unknown source scheme '{scheme.group(1)}:'; expected {ACCEPTED_FORMS}"
        )
    return _file(path, options, clock)


def _recording(path: Path, options: SourceOptions, clock: Clock) -> Source:
    from streamer.sources.recording import RecordingSource

    source: Source = RecordingSource(path, options, clock)
    return source


def _file(path: Path, options: SourceOptions, clock: Clock) -> Source:
    """An audio or video file source, chosen by extension (or by probing when unknown)."""
    if not path.exists():
        from streamer.recording import partial_note

        note = partial_note(path)  # an unfinished recording of that name beside it
        if note:
            raise InputError(f"{path}: no such file or recording{note}")
    if path.is_dir():
        if (path / "meta.json").is_file():
            return _recording(path, options, clock)
        raise InputError(
            f"{path}: is a directory without meta.json; expected an audio or video file "
            "or a recording directory"
        )
    from streamer.sources.audio_file import AudioFileSource
    from streamer.sources.video_file import VideoFileSource

    suffix = path.suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return AudioFileSource(path, options, clock)
    if suffix in VIDEO_EXTENSIONS:
        return VideoFileSource(path, options, clock)
    check_readable_file(path, "an audio or video file")
    try:
        return AudioFileSource(path, options, clock)
    except InputError:
        pass
    try:
        return VideoFileSource(path, options, clock)
    except InputError:
        pass
    raise InputError(
        f"{path}: neither libsndfile nor OpenCV can read it; expected an audio or video file"
    )


def check_readable_file(path: Path, expected: str) -> None:
    """Raise :class:`InputError` unless ``path`` is a non-empty regular file we may read.

    ``expected`` says what the file should have been ("an audio file"), for the message.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; expected {expected}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot access ({_reason(exc)}); expected {expected}") from None
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected {expected}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; expected {expected}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({_reason(exc)}); expected {expected}") from None
    if st.st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); expected {expected}")


def one_line(text: str) -> str:
    """Collapse a library's message to one line, for :class:`InputError` messages."""
    return " ".join(str(text).split())


def _reason(exc: OSError) -> str:
    return exc.strerror or one_line(str(exc)) or type(exc).__name__
