"""Audio files through libsndfile: WAV, FLAC, OGG/Vorbis, MP3, AIFF, AU and the rest it reads."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Item, StreamEnd, StreamInfo, StreamStart
from streamer.sources import check_readable_file, one_line
from streamer.sources.base import GeneratorSource, Pacer, SourceOptions
from streamer.sources.chunker import Chunker, resampled_length
from streamer.worker import Worker

log = logging.getLogger(__name__)

EXPECTED = "an audio file (WAV, FLAC, OGG, MP3, AIFF, AU or another format libsndfile reads)"
#: Native seconds read per worker call: few calls, small latency on the first frame.
BLOCK_SECONDS = 0.5
#: Samples decoded when a file is opened, to refuse one whose data does not decode at all.
PROBE_SAMPLES = 4096
_WAV_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioFileSource(GeneratorSource):
    """Frames of ``options.chunk`` samples from an audio file, read on a worker thread.

    Frame ``i``: ``data`` ``[chunk, C]`` float32 in [-1, 1], ``rate`` the delivered sample
    rate, ``pts = i * chunk / rate``. The last frame is zero-padded to a full chunk;
    ``samples`` (also in ``StreamStart.meta``) says how many samples are real, so the last
    frame holds ``samples - (total_frames - 1) * chunk`` of them.

    ``options.rate``: resample with a streaming ``soxr.ResampleStream`` (HQ), whose output
    over the whole file equals ``soxr.resample`` of it in one shot; resampled samples are
    clipped to [-1, 1]. ``options.mono``: average the channels (before resampling). Both,
    and the cutting into chunks, are a :class:`~streamer.sources.chunker.Chunker`'s.
    ``options.loop``: the file repeats seamlessly (a chunk may straddle the seam, the
    resampler runs on across it), indices and pts keep increasing, no ``StreamEnd``;
    ``StreamStart.meta["loop"]`` is True (``samples`` then counts one pass, not the end).

    Bad input raises :class:`InputError` naming the file: in ``__init__`` for a missing,
    unreadable, empty or undecodable file or one with no samples; while reading for data
    that stops decoding (a FLAC or OGG cut short or corrupted). A WAV whose header promises
    more samples than the file holds (a recording cut short): the samples present are
    delivered (so their outputs are written), then the source raises :class:`InputError`;
    ``StreamStart.meta["truncated"]`` is True.
    """

    name: str
    total_frames: int | None

    @property
    def streams(self) -> list[StreamInfo]:
        """The one stream this source delivers."""
        return [self.info]

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions, clock: Clock) -> None:
        self.path = Path(path)
        check_readable_file(self.path, EXPECTED)
        info = _probe(self.path)
        if info.frames <= 0:
            raise InputError(f"{self.path}: contains no audio samples; expected {EXPECTED}")
        if options.chunk < 1:
            raise InputError(f"{self.path}: chunk must be at least 1 sample, got {options.chunk}")
        if options.rate is not None and not options.rate > 0:
            raise InputError(f"{self.path}: rate must be > 0 Hz, got {options.rate}")
        self.options = options
        self.stream = options.stream or self.path.stem
        self.name = f"source:{self.stream}"
        self.native_rate = int(info.samplerate)
        self.native_channels = int(info.channels)
        self.native_samples = int(info.frames)
        self.rate = float(options.rate or self.native_rate)
        self.resampling = self.rate != self.native_rate
        self.channels = 1 if options.mono else self.native_channels
        self.chunk = options.chunk
        #: Real samples at the delivered rate in one pass over the file (soxr's output length:
        #: rounded with halves up, in exact arithmetic).
        self.samples = resampled_length(self.native_samples, self.native_rate, self.rate)
        self.total_frames = None if options.loop else math.ceil(self.samples / self.chunk)
        self.truncated = _wav_truncated(info)
        self._meta: dict[str, Any] = {
            "path": str(self.path),
            "format": info.format,
            "subtype": info.subtype,
            "native_rate": self.native_rate,
            "native_channels": self.native_channels,
            "channels": self.channels,
            "chunk": self.chunk,
            "samples": self.samples,
            "truncated": self.truncated,
        }
        if options.loop:
            self._meta["loop"] = True  # no end: every sample is real, "samples" is one pass
        #: The stream, declared before the run (carried by its StreamStart and frames).
        self.info = StreamInfo.audio(
            self.stream, self.rate, self.chunk, self.channels, total_frames=self.total_frames
        )
        self._pacer = Pacer(clock, options.pace, options.speed)
        self._worker = Worker(self.name, clock)
        self._block = max(1024, int(self.native_rate * BLOCK_SECONDS))
        self._file: sf.SoundFile | None = None
        self._chunker: Chunker | None = None
        self._read_in_pass = 0

    async def _items(self) -> AsyncGenerator[Item, None]:
        try:
            if self._closed:
                return
            await self._worker.call(self._open)
            yield StreamStart(self.stream, "audio", self.rate, dict(self._meta), self.info)
            index = 0
            while not self._closed:
                result = await self._worker.call(self._read_block)
                if result is None:
                    return
                chunks, end = result
                for data in chunks:
                    yield await self._frame(index, data)
                    index += 1
                if end:
                    if self.truncated:
                        raise InputError(
                            f"{self.path}: the WAV is truncated: its header promises more "
                            f"data than the file holds; the {self.native_samples} samples "
                            "present were delivered"
                        )
                    yield StreamEnd(self.stream, frames=index, reason="eof")
                    return
        finally:
            await self._shutdown()

    async def _frame(self, index: int, data: np.ndarray) -> Frame:
        pts = index * self.chunk / self.rate
        captured = await self._pacer.wait(pts)
        return Frame(self.stream, index, pts, captured, data, self.rate, self.info)

    # The methods below run on the worker thread.

    def _open(self) -> None:
        try:
            self._file = sf.SoundFile(str(self.path))
        except (RuntimeError, OSError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot open ({one_line(str(exc))})") from exc
        self._chunker = Chunker(
            self.chunk,
            self.native_channels,
            mono=self.options.mono,
            rate=self.native_rate,
            out_rate=self.rate,
        )

    def _read_block(self) -> tuple[list[np.ndarray], bool] | None:
        """The frames ``[chunk, C]`` the next block completes (the last one zero-padded at
        the end), and whether the file ended; None if closed."""
        file, chunker = self._file, self._chunker
        if file is None or chunker is None:
            return None
        position = file.tell()
        try:
            block = file.read(self._block, dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise InputError(
                f"{self.path}: audio data stops decoding after sample {position} "
                f"({one_line(str(exc))}); the file is truncated or corrupt"
            ) from exc
        self._read_in_pass += len(block)
        end = len(block) < self._block
        if end and self.options.loop and self._read_in_pass > 0:
            file.seek(0)
            self._read_in_pass = 0
            end = False
        chunks = chunker.push(block)
        if end:
            chunks += chunker.finish()
        return chunks, end

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunker = None


def _probe(path: Path) -> Any:
    """``soundfile.info``, its failures turned into :class:`InputError`; also decodes the
    first samples, so a file whose data does not decode at all is refused before a run."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable audio file ({one_line(str(exc))}); expected {EXPECTED}"
        ) from exc
    if info.frames > 0:
        try:
            with sf.SoundFile(str(path)) as file:
                file.read(min(int(info.frames), PROBE_SAMPLES), dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise InputError(
                f"{path}: audio data does not decode ({one_line(str(exc))}); "
                "the file is truncated or corrupt"
            ) from exc
    return info


def _wav_truncated(info: Any) -> bool:
    """Whether libsndfile found a WAV data chunk shorter than its header says."""
    match = _WAV_DATA.search(getattr(info, "extra_info", "") or "")
    return match is not None and int(match.group(2)) < int(match.group(1))
