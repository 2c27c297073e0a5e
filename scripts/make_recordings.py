"""Regenerate the bundled recordings in ``recordings/`` (deterministic, byte for byte).

    python scripts/make_recordings.py [--data ../shared/data/speech_en_16k.wav] [--out recordings]

``speech_en``: 0-10 s of real English speech, 16 kHz mono float32, 512-sample frames
(the last one zero-padded after 256 real samples, as the audio file source does; meta
``samples`` says how many are real), captured = pts as if recorded live.
``shapes``: 4 s of 64x48 BGR video at 15 fps, a filled circle moving over a background
that is dark, bright, dark, bright for one second each.
Existing recordings are replaced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.frames import Frame, StreamEnd, StreamStart  # noqa: E402
from streamer.recording import RecordingWriter, read_recording  # noqa: E402

#: Fixed so that regenerating gives identical files.
CREATED = "2025-01-01T00:00:00+00:00"

SPEECH_RATE = 16000
SPEECH_SECONDS = 10.0
SPEECH_CHUNK = 512

SHAPES_SIZE = (64, 48)  # (width, height)
SHAPES_FPS = 15
SHAPES_SECONDS = 4
SHAPES_DARK = 30
SHAPES_BRIGHT = 220


def make_speech(wav: Path, out: Path) -> None:
    """``speech_en``: the first 10 s of the Silero VAD test clip, chunked as a mic would."""
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    if rate != SPEECH_RATE or audio.shape[1] != 1:
        raise SystemExit(f"{wav}: expected 16 kHz mono, got {rate} Hz x {audio.shape[1]}")
    audio = audio[: int(SPEECH_SECONDS * SPEECH_RATE)]
    stream = "speech_en"
    with RecordingWriter(
        out, source=f"file:{wav.name}[0:{SPEECH_SECONDS:g}s]", created=CREATED
    ) as w:
        w.add(
            StreamStart(
                stream,
                "audio",
                SPEECH_RATE,
                {
                    "file": wav.name,
                    "start_s": 0.0,
                    "end_s": SPEECH_SECONDS,
                    "channels": 1,
                    "chunk": SPEECH_CHUNK,
                    "samples": len(audio),
                },
            )
        )
        index = 0
        for start in range(0, len(audio), SPEECH_CHUNK):
            pts = start / SPEECH_RATE
            chunk = np.zeros((SPEECH_CHUNK, 1), np.float32)  # [T, C]
            real = audio[start : start + SPEECH_CHUNK]
            chunk[: len(real)] = real
            w.add(Frame(stream, index, pts, pts, chunk, SPEECH_RATE))
            index += 1
        w.add(StreamEnd(stream, index))


def shapes_frame(i: int) -> npt.NDArray[np.uint8]:
    """Frame ``i`` of ``shapes``: ``[H, W, 3]`` uint8 BGR."""
    width, height = SHAPES_SIZE
    second = i // SHAPES_FPS
    level = SHAPES_DARK if second % 2 == 0 else SHAPES_BRIGHT
    frame = np.full((height, width, 3), level, dtype=np.uint8)
    # The circle crosses the frame left to right every 2 s, bobbing up and down.
    t = i / SHAPES_FPS
    phase = (t % 2.0) / 2.0
    cx = 6.0 + phase * (width - 12.0)
    cy = height / 2.0 + 10.0 * np.sin(2.0 * np.pi * phase)
    ys, xs = np.mgrid[0:height, 0:width]
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= 7.0**2
    frame[inside] = (40, 160, 240)  # orange in BGR
    return frame


def make_shapes(out: Path) -> None:
    """``shapes``: synthetic video for brightness and motion demos."""
    stream = "shapes"
    frames = SHAPES_FPS * SHAPES_SECONDS
    with RecordingWriter(out, source="scripts/make_recordings.py:shapes", created=CREATED) as w:
        w.add(
            StreamStart(
                stream,
                "video",
                SHAPES_FPS,
                {"width": SHAPES_SIZE[0], "height": SHAPES_SIZE[1], "synthetic": True},
            )
        )
        for i in range(frames):
            pts = i / SHAPES_FPS
            w.add(Frame(stream, i, pts, pts, shapes_frame(i), SHAPES_FPS))
        w.add(StreamEnd(stream, frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/speech_en_16k.wav")
    parser.add_argument("--out", type=Path, default=ROOT / "recordings")
    args = parser.parse_args()
    for name, make in (
        ("speech_en", lambda p: make_speech(args.data, p)),
        ("shapes", make_shapes),
    ):
        target: Path = args.out / name
        if target.exists():
            shutil.rmtree(target)
        make(target)
        recording = read_recording(target)
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"{target}: {recording.total_frames} frames, {size} bytes")


if __name__ == "__main__":
    main()
