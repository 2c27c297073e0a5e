"""Sources: where frames come from, and :func:`open_source`, which turns a URI into one.

Accepted URIs: a file path (audio or video, by extension), ``file:PATH``, ``recording:PATH``
(or a directory holding ``meta.json``), ``synthetic:KIND?key=value&...``, ``camera:N`` or
``camera:URL`` (OpenCV), ``mic:``, ``mic:INDEX`` or ``mic:NAME`` (PortAudio),
``mqtt://HOST[:PORT]/TOPIC`` or ``mqtts://...`` (frames from an MQTT broker,
:mod:`streamer.mqtt.source`).

Each URI scheme is a registered :class:`~streamer.sources.base.SourceKind` (the lines
after the imports): the function that opens it, named as ``"module:function"`` and imported
when a URI needs it, so importing this package stays cheap (no OpenCV until a video is
opened). A new kind of source is its own module and one registration line.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.sources.base import SOURCES, Pacer, Source, SourceKind, SourceOptions

__all__ = [
    "AUDIO_EXTENSIONS",
    "SOURCES",
    "VIDEO_EXTENSIONS",
    "Pacer",
    "Source",
    "SourceKind",
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
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")

SOURCES.register("synthetic", SourceKind("streamer.sources.synthetic:SyntheticSource"))
SOURCES.register("camera", SourceKind("streamer.sources.camera:open_camera"))
SOURCES.register("mic", SourceKind("streamer.sources.microphone:open_microphone"))
SOURCES.register("recording", SourceKind("streamer.sources:open_recording", local=True))
SOURCES.register("file", SourceKind("streamer.sources:open_file", local=True))
SOURCES.register("mqtt", SourceKind("streamer.mqtt.source:open_mqtt"))
SOURCES.register("mqtts", SourceKind("streamer.mqtt.source:open_mqtt"))


def _kind(uri: str) -> tuple[str, SourceKind] | None:
    """The registered scheme of ``uri`` and its kind, or None (a plain file path)."""
    scheme = _SCHEME.match(uri)
    if scheme is None or scheme.group(1) not in SOURCES:
        return None
    return scheme.group(1), SOURCES.get(scheme.group(1))


def uri_path(uri: str) -> Path | None:
    """The local file or folder a URI reads (``PATH``, ``file:PATH``, ``file://PATH``,
    ``recording:PATH``), or None for generated media, devices and network sources."""
    kind = _kind(uri)
    if kind is not None and not kind[1].local:
        return None
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri.removeprefix(f"{kind[0]}:") if kind is not None else uri)


def open_source(uri: str, options: SourceOptions, clock: Clock) -> Source:
    """The source that ``uri`` names; raises :class:`InputError` for anything unusable.

    Cheap checks (the file exists, is readable, decodes) happen here, so bad input is
    refused before a pipeline starts.
    """
    kind = _kind(uri)
    if kind is not None:
        return kind[1].open(uri, options, clock)
    path = uri_path(uri)
    assert path is not None
    scheme = _SCHEME.match(uri)
    if scheme and not path.exists():
        raise InputError(
            f"{uri}: unknown source scheme '{scheme.group(1)}:'; expected {ACCEPTED_FORMS}"
        )
    return _file(path, options, clock)


def open_recording(uri: str, options: SourceOptions, clock: Clock) -> Source:
    """``recording:PATH``: a recording folder."""
    path = uri_path(uri)
    assert path is not None
    return _recording(path, options, clock)


def open_file(uri: str, options: SourceOptions, clock: Clock) -> Source:
    """``file:PATH`` or ``file://PATH``: an audio or video file (or a recording folder)."""
    path = uri_path(uri)
    assert path is not None
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
