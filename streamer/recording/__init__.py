"""The recording format: a folder of raw, append-only stream files plus ``meta.json``.

A recording keeps every frame exactly as it arrived (data bytes, ``index``, ``pts`` and
``captured``) so that a replay reproduces both the content and the arrival pattern::

    NAME/
      meta.json    written last: its presence marks a complete recording
      s0.data      stream 0: the frames' data, concatenated in C order (little-endian)
      s0.times     stream 0: one TIMES_DTYPE record per frame
      s1.data ...

``meta.json`` holds ``{"format": "streamer-recording", "version": 1, "created", "source",
"streams": [...]}``; each stream entry has ``id`` (any string; file names are ``s<N>`` so
ids need not be file-safe), ``media``, ``rate``, ``dtype``, ``frame_shape`` (the first
frame's shape), ``frames``, ``data``, ``times``, ``gaps`` (``index``, ``count``, ``pts``,
``reason`` and ``at``: the number of recorded frames of the stream before the gap), ``end``
(``{"frames", "reason"}`` of the recorded ``StreamEnd``, or null) and ``meta`` (the
``StreamStart`` meta).

Frames of a stream share dtype and trailing shape; video frames (``[H, W, 3]``) also share
their height, while audio frames (``[samples, channels]``) may differ in length (the last
chunk of a file is usually short): each times record stores the frame's ``length`` along
axis 0, and the data file holds ``sum(length)`` rows.

:class:`RecordingWriter` writes into a hidden sibling folder and renames it into place on
:meth:`RecordingWriter.close`, so a crash never leaves a folder at the target that reads as
a valid recording; :func:`partial_folders` finds what a killed writer left (``streamer
record`` names them and refuses, or deletes them with ``--clean``). Reading and writing are
blocking file I/O: run them on a :class:`~streamer.worker.Worker` thread.

Modules: :mod:`.format` (the constants, partial folders, the reader), :mod:`.writer`
(:class:`RecordingWriter`), :mod:`.recorder` (:func:`record`, ``streamer record``).
"""

from streamer.recording.format import (
    FORMAT,
    META_FILE,
    TIMES_DTYPE,
    VERSION,
    PartialFolder,
    RecordedStream,
    Recording,
    partial_folders,
    partial_note,
    read_recording,
    remove_partial_folders,
)
from streamer.recording.recorder import RecordingSummary, record
from streamer.recording.writer import RecordingWriter

__all__ = [
    "FORMAT",
    "META_FILE",
    "TIMES_DTYPE",
    "VERSION",
    "PartialFolder",
    "RecordedStream",
    "Recording",
    "RecordingSummary",
    "RecordingWriter",
    "partial_folders",
    "partial_note",
    "read_recording",
    "record",
    "remove_partial_folders",
]
