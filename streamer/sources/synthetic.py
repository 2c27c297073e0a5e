"""Synthetic sources for tests and demos: ``synthetic:KIND?key=value&...``.

Audio kinds (``[chunk, C]`` float32 frames, last one zero-padded: a
:class:`~streamer.sources.chunker.Chunker` cuts them):

- ``tone``: a sine; keys ``freq`` (Hz, 440), ``amplitude`` (0.5), ``rate``, ``channels``,
  ``duration``, ``seed`` (accepted, unused).
- ``noise``: uniform white noise in [-amplitude, amplitude]; keys ``amplitude`` (0.5),
  ``rate``, ``channels``, ``duration``, ``seed`` (0).
- ``silence``: zeros; keys ``rate``, ``channels``, ``duration``, ``seed`` (unused).

``rate`` defaults to 16000 Hz; ``options.rate``, when set, wins (the signal is synthesised
at the delivered rate rather than resampled). ``options.mono`` forces one channel.

Video kind ``shapes`` (``[H, W, 3]`` uint8 BGR): a filled circle bouncing over a uniform
background that is dark (30) for ``period`` seconds, then bright (200), and so on: dark
while ``floor(t / period)`` is even. Keys ``size`` (``WxH``, 64x48), ``fps`` (15),
``period`` (1.0), ``duration``, ``seed`` (0: the circle's start, speed and colour).
``options.size`` renders at that size; ``options.rate`` below ``fps`` renders at that rate.

Without ``duration`` a source is endless (``total_frames`` None). The output is a pure
function of the parameters and the seed: the same URI gives the same frames, whatever the
chunk size (noise draws its samples in order from one generator). Generating a frame takes
microseconds, so it happens on the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import cv2
import numpy as np

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Item, Media, StreamEnd, StreamInfo, StreamStart
from streamer.sources.base import GeneratorSource, Pacer, SourceOptions
from streamer.sources.chunker import Chunker

AUDIO_KINDS = ("tone", "noise", "silence")
VIDEO_KINDS = ("shapes",)
_COMMON_AUDIO = {"rate": 16000.0, "channels": 1, "duration": None, "seed": 0}
#: Accepted keys per kind and their defaults (None: no default, e.g. endless).
DEFAULTS: dict[str, dict[str, Any]] = {
    "tone": {"freq": 440.0, "amplitude": 0.5, **_COMMON_AUDIO},
    "noise": {"amplitude": 0.5, **_COMMON_AUDIO},
    "silence": dict(_COMMON_AUDIO),
    "shapes": {"size": (64, 48), "fps": 15.0, "period": 1.0, "duration": None, "seed": 0},
}
DARK = 30
BRIGHT = 200


@dataclass(frozen=True)
class Spec:
    """A parsed ``synthetic:`` URI: its kind and every parameter (defaults filled in)."""

    kind: str
    params: dict[str, Any]

    @property
    def media(self) -> Media:
        return "video" if self.kind in VIDEO_KINDS else "audio"


def parse_spec(spec: str | Mapping[str, Any]) -> Spec:
    """Parse ``synthetic:KIND?k=v&...`` (or ``KIND?...``, or a mapping with a ``kind`` key).

    Raises :class:`InputError` naming the URI for an unknown kind or key, a repeated key,
    or a value of the wrong type or range.
    """
    if isinstance(spec, str):
        uri = spec
        kind, _, query = spec.removeprefix("synthetic:").partition("?")
        pairs: list[tuple[str, Any]] = []
        for part in filter(None, query.split("&")):
            if "=" not in part:
                raise InputError(f"{uri}: parameter '{part}' has no value; expected key=value")
            pairs.extend(parse_qsl(part, keep_blank_values=True))
    else:
        uri = f"synthetic:{dict(spec)}"
        kind = str(spec.get("kind", ""))
        pairs = [(k, v) for k, v in spec.items() if k != "kind"]
    if kind not in DEFAULTS:
        raise InputError(
            f"{uri}: unknown synthetic kind '{kind}'; expected one of {', '.join(DEFAULTS)}"
        )
    defaults = DEFAULTS[kind]
    params = dict(defaults)
    seen: set[str] = set()
    for key, raw in pairs:
        if key not in defaults:
            raise InputError(
                f"{uri}: unknown key '{key}' for synthetic:{kind}; "
                f"expected {', '.join(sorted(defaults))}"
            )
        if key in seen:
            raise InputError(f"{uri}: key '{key}' given twice")
        seen.add(key)
        params[key] = _convert(uri, key, raw)
    return Spec(kind, params)


def _convert(uri: str, key: str, raw: Any) -> Any:
    """One parameter's value, checked: sizes ``WxH``, integer counts, positive numbers."""
    text = str(raw).strip()
    if key == "size":
        if isinstance(raw, tuple | list) and len(raw) == 2:
            text = f"{raw[0]}x{raw[1]}"
        width, sep, height = text.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise InputError(
                f"{uri}: size must be WIDTHxHEIGHT in pixels (e.g. 64x48), got '{text}'"
            )
        return (int(width), int(height))
    if key in ("channels", "seed"):
        try:
            number = int(text)
        except ValueError:
            raise InputError(f"{uri}: {key} must be an integer, got '{text}'") from None
        if number < (1 if key == "channels" else 0):
            raise InputError(f"{uri}: {key} out of range, got {number}")
        return number
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{uri}: {key} must be a number, got '{text}'") from None
    if not math.isfinite(value):
        raise InputError(f"{uri}: {key} must be finite, got '{text}'")
    if key == "amplitude" and not 0.0 <= value <= 1.0:
        raise InputError(f"{uri}: amplitude must be in [0, 1], got {value}")
    if key == "freq" and value < 0:
        raise InputError(f"{uri}: freq must be >= 0 Hz, got {value}")
    if key in ("rate", "fps", "duration", "period") and value <= 0:
        raise InputError(f"{uri}: {key} must be > 0, got {value}")
    return value


class SyntheticSource(GeneratorSource):
    """Generated audio or video (see the module docstring for kinds and keys).

    ``spec``: ``synthetic:KIND?k=v&...``, ``KIND?k=v&...`` or a mapping with ``kind``.
    Stream id: ``options.stream`` or the kind. Audio frame ``i`` has ``pts = i * chunk /
    rate``; video frame ``k`` has ``pts = k / fps``. ``options.loop`` with a ``duration``
    repeats the content with indices and pts continuing.
    """

    name: str
    total_frames: int | None

    def __init__(self, spec: str | Mapping[str, Any], options: SourceOptions, clock: Clock) -> None:
        parsed = parse_spec(spec)
        self.spec = parsed
        self.kind = parsed.kind
        self.media: Media = parsed.media
        self.params = parsed.params
        self.options = options
        self.stream = options.stream or self.kind
        self.name = f"source:{self.stream}"
        if options.chunk < 1:
            raise InputError(f"{self.name}: chunk must be at least 1 sample, got {options.chunk}")
        if options.rate is not None and not options.rate > 0:
            raise InputError(f"{self.name}: rate must be > 0, got {options.rate}")
        p = self.params
        duration: float | None = p["duration"]
        if self.media == "audio":
            self.rate = float(options.rate or p["rate"])
            self.channels = 1 if options.mono else int(p["channels"])
            self.chunk = options.chunk
            #: Real samples in one pass (None: endless); the last frame is zero-padded.
            self.samples = None if duration is None else max(1, round(duration * self.rate))
            per_pass = None if self.samples is None else math.ceil(self.samples / self.chunk)
        else:
            fps = float(p["fps"])
            self.rate = float(options.rate) if options.rate and options.rate < fps else fps
            if options.size is not None:
                p["size"] = _convert(str(spec), "size", tuple(options.size))
            self.samples = None
            self.frames_per_pass = None if duration is None else max(1, round(duration * self.rate))
            per_pass = self.frames_per_pass
        self.total_frames = None if options.loop else per_pass
        #: The stream, declared before the run (carried by its StreamStart and frames).
        total = self.total_frames
        self.info = (
            StreamInfo.audio(self.stream, self.rate, self.chunk, self.channels, total_frames=total)
            if self.media == "audio"
            else StreamInfo.video(self.stream, self.rate, p["size"], total_frames=total)
        )
        self._pacer = Pacer(clock, options.pace, options.speed)

    @property
    def streams(self) -> list[StreamInfo]:
        """The one stream this source delivers."""
        return [self.info]

    def _items(self) -> AsyncGenerator[Item, None]:
        return self._audio() if self.media == "audio" else self._video()

    def _start(self) -> StreamStart:
        meta = {"kind": self.kind, "params": dict(self.params), "synthetic": True}
        if self.samples is not None:
            meta["samples"] = self.samples
        if self.options.loop:
            meta["loop"] = True  # no end: every sample is real, "samples" is one pass
        return StreamStart(self.stream, self.media, self.rate, meta, self.info)

    async def _emit(self, index: int, pts: float, data: np.ndarray) -> Frame:
        captured = await self._pacer.wait(pts)
        if self._pacer.pace == "fast":
            await asyncio.sleep(0)  # fast pacing never waits: let other tasks run
        return Frame(self.stream, index, pts, captured, data, self.rate, self.info)

    async def _audio(self) -> AsyncGenerator[Item, None]:
        if self._closed:
            return
        yield self._start()
        render = self._audio_renderer()
        chunker = Chunker(self.chunk, self.channels)  # synthesised at the delivered rate
        total = self.samples
        loop = self.options.loop
        index = 0
        pos = 0  # position within the current pass
        while not self._closed:
            count = self.chunk - chunker.pending
            if total is not None:
                if pos >= total:
                    if not loop:
                        break
                    pos = 0
                    render = self._audio_renderer()
                count = min(count, total - pos)
            chunks = chunker.push(render(pos, count))
            pos += count
            for data in chunks:
                yield await self._emit(index, index * self.chunk / self.rate, data)
                index += 1
        if self._closed:
            return
        for data in chunker.finish():  # the last chunk, zero-padded
            yield await self._emit(index, index * self.chunk / self.rate, data)
            index += 1
        if not self._closed:
            yield StreamEnd(self.stream, frames=index, reason="eof")

    def _audio_renderer(self) -> Callable[[int, int], np.ndarray]:
        """``render(pos, count)``: samples ``[count, C]`` at positions ``pos...`` of a pass."""
        p = self.params
        channels, rate = self.channels, self.rate
        if self.kind == "tone":
            freq, amplitude = float(p["freq"]), float(p["amplitude"])

            def tone(pos: int, count: int) -> np.ndarray:
                n = np.arange(pos, pos + count, dtype=np.float64)
                wave = amplitude * np.sin(2.0 * np.pi * freq * n / rate)
                return np.repeat(wave.astype(np.float32)[:, None], channels, axis=1)

            return tone
        if self.kind == "noise":
            amplitude = float(p["amplitude"])
            rng = np.random.default_rng(int(p["seed"]))

            def noise(pos: int, count: int) -> np.ndarray:
                draws = rng.random((count, channels))  # [count, C] in [0, 1)
                return (amplitude * (2.0 * draws - 1.0)).astype(np.float32)

            return noise

        def silence(pos: int, count: int) -> np.ndarray:
            return np.zeros((count, channels), np.float32)

        return silence

    async def _video(self) -> AsyncGenerator[Item, None]:
        if self._closed:
            return
        yield self._start()
        per_pass = self.frames_per_pass
        index = 0
        while not self._closed:
            if per_pass is not None and index >= per_pass and not self.options.loop:
                break
            within = index if per_pass is None else index % per_pass
            image = render_shapes(self.params, within / self.rate)
            yield await self._emit(index, index / self.rate, image)
            index += 1
        if not self._closed:
            yield StreamEnd(self.stream, frames=index, reason="eof")


def render_shapes(params: Mapping[str, Any], t: float) -> np.ndarray:
    """The ``shapes`` image ``[H, W, 3]`` uint8 BGR at content time ``t`` seconds."""
    width, height = params["size"]
    period = float(params["period"])
    bright = math.floor(t / period) % 2 == 1
    image = np.full((height, width, 3), BRIGHT if bright else DARK, np.uint8)
    rng = np.random.default_rng(int(params["seed"]))
    radius = max(1, min(width, height) // 6)
    start = rng.uniform(0.0, 1.0, 2)
    speed = rng.uniform(0.3, 0.6, 2) * rng.choice([-1.0, 1.0], 2)  # spans per second
    color = tuple(int(c) for c in rng.integers(80, 170, 3))
    center = (
        _bounce(start[0] + speed[0] * t, radius, width - 1 - radius),
        _bounce(start[1] + speed[1] * t, radius, height - 1 - radius),
    )
    cv2.circle(image, center, radius, color, thickness=-1, lineType=cv2.LINE_8)
    return image


def _bounce(u: float, low: int, high: int) -> int:
    """Position ``u`` (spans, unbounded) reflected into ``[low, high]`` pixels."""
    if high <= low:
        return (low + high) // 2
    phase = u % 2.0
    fraction = phase if phase <= 1.0 else 2.0 - phase
    return round(low + fraction * (high - low))
