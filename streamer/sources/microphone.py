"""Microphones through PortAudio (sounddevice): ``mic:``, ``mic:INDEX`` or ``mic:NAME``.

A ``sounddevice.InputStream`` calls back on PortAudio's thread, asked for ``chunk``
samples at a time (``blocksize = chunk``); the callback hands the block to a
:class:`~streamer.sources.chunker.Chunker`, so frames hold exactly ``chunk`` samples even
when a host API delivers other block sizes, and each completed frame goes to a
:class:`~streamer.sources.push.PushBuffer`, never blocking the driver. Each frame's
``captured`` is the ADC time of its first sample mapped onto the pipeline clock, and its
``pts`` the media time since the stream began. When PortAudio reports ``input_overflow``
(samples the driver discarded), the ADC time jump says how many chunks were lost (with a
partly filled frame, which is dropped) and a ``Gap`` (reason ``input-overflow``) takes
their place; the overflow is counted. Samples of a frame not completed when the capture
stops are not delivered.

Options: ``rate`` (Hz; default the device's), ``chunk`` (samples per frame), ``mono``
(one channel; otherwise up to two), ``latency`` (PortAudio's ``low``/``high`` or seconds).
Bad input (no PortAudio, an unknown device, a rate the device refuses) is an
:class:`~streamer.errors.InputError` that lists what is available. A device that refuses
to open for a moment (PortAudio's "device unavailable" or "illegal combination of I/O
devices", which ALSA gives when its PCM cannot be opened: a sound server restarting, a
device another program is just releasing) is tried again for up to
:data:`BUSY_RETRY_S` before it is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import numpy as np

from streamer.clock import Clock
from streamer.errors import InputError
from streamer.frames import Frame, Gap, StreamInfo
from streamer.sources.base import SourceOptions
from streamer.sources.chunker import Chunker
from streamer.sources.push import PushBuffer, PushPolicy, PushSource

log = logging.getLogger(__name__)

COMMON_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000)
#: Seconds a device that refuses to open for a moment is tried again (every 0.1-0.4 s).
BUSY_RETRY_S = 2.0
#: PortAudio's codes for a device that may open a moment later: paDeviceUnavailable,
#: paBadIODeviceCombination (ALSA: the PCM did not open), paUnanticipatedHostError.
BUSY_CODES = frozenset({-9985, -9993, -9999})

T = TypeVar("T")


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` is PortAudio saying the device cannot be opened just now."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return len(args) >= 2 and args[1] in BUSY_CODES


def retrying_busy(fn: Callable[[], T], what: str, budget_s: float = BUSY_RETRY_S) -> T:
    """``fn()``, called again while PortAudio says the device is busy, for up to
    ``budget_s`` seconds (then its last error is raised). Blocks: call it off the loop."""
    deadline = time.monotonic() + budget_s
    pause = 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
            log.info("%s: the device refused to open (%s); trying again", what, exc)
            time.sleep(pause)
            pause = min(0.4, pause * 2)


def import_sounddevice() -> Any:
    """The sounddevice module, or an InputError naming the Debian package PortAudio is in."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice imports fine but cannot find libportaudio
        raise InputError(
            "microphone: the PortAudio library is missing (Debian/Ubuntu: apt-get install"
            f" libportaudio2; macOS: brew install portaudio): {exc}"
        ) from None
    except ImportError:
        raise InputError(
            "microphone: sounddevice is not installed (pip install sounddevice)"
        ) from None
    return sounddevice


def input_devices(sd: Any) -> list[dict[str, Any]]:
    """PortAudio's input devices: index, name, default rate, channels, default or not."""
    try:
        default = sd.default.device[0]
        devices = sd.query_devices()
    except Exception:  # PortAudio without any host API
        return []
    if default is None or default < 0:
        try:
            default = sd.query_devices(kind="input")["index"]
        except Exception:
            default = None
    return [
        {
            "index": int(d["index"]),
            "name": str(d["name"]),
            "default_rate": float(d["default_samplerate"]),
            "channels": int(d["max_input_channels"]),
            "default": int(d["index"]) == default,
        }
        for d in devices
        if int(d["max_input_channels"]) > 0
    ]


def resolve_device(sd: Any, uri: str) -> dict[str, Any]:
    """The input device ``mic:``, ``mic:INDEX`` or ``mic:NAME`` names (a unique match of a
    case-insensitive substring); an InputError lists the inputs there are."""
    target = uri.removeprefix("mic:").strip()
    devices = input_devices(sd)
    listing = "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if not devices:
        raise InputError(f"{uri}: no microphone (PortAudio lists no input device)")
    if not target:
        chosen = [d for d in devices if d["default"]] or devices[:1]
        return chosen[0]
    if target.isdigit():
        found = [d for d in devices if d["index"] == int(target)]
        if not found:
            raise InputError(f"{uri}: no input device {target}; inputs: {listing}")
        return found[0]
    if not target.isprintable() or len(target) > 200:
        raise InputError(f"{uri}: expected mic:, mic:INDEX or mic:NAME")
    exact = [d for d in devices if d["name"].lower() == target.lower()]
    found = exact or [d for d in devices if target.lower() in d["name"].lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"{uri}: no input device named like {target!r}; inputs: {listing}")
    names = ", ".join(repr(d["name"]) for d in found)
    raise InputError(f"{uri}: {target!r} matches several inputs ({names}); use mic:INDEX")


class MicrophoneSource(PushSource):
    """One microphone as a live audio stream (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        options: SourceOptions,
        clock: Clock,
        *,
        policy: PushPolicy = "latest",
        capacity: int = 64,
        latency: str | float = "low",
    ) -> None:
        super().__init__(PushBuffer(uri, capacity, policy))
        sd = import_sounddevice()
        self.sd = sd
        self.uri = uri
        self.clock = clock
        self.device = resolve_device(sd, uri)
        self.rate = float(options.rate or self.device["default_rate"])
        self.channels = 1 if options.mono else max(1, min(2, self.device["channels"]))
        self.chunk = options.chunk
        self.latency = latency
        self.stream = options.stream or "mic"
        self.name = f"source:{self.stream}"
        self.media = "audio"
        self.period = self.chunk / self.rate
        self.total_frames = None
        self.overflows = 0
        self._check_settings()
        self.meta: dict[str, object] = {
            "uri": uri,
            "device": self.device["name"],
            "channels": self.channels,
            "chunk": self.chunk,
            "live": True,
        }
        #: The stream, declared before the run (carried by its StreamStart and frames).
        self.info = StreamInfo.audio(self.stream, self.rate, self.chunk, self.channels, live=True)
        self._chunker = Chunker(self.chunk, self.channels)
        self._stream: Any = None
        self._index = 0
        self._offset = 0.0
        self._first_adc: float | None = None
        self._next_adc: float | None = None

    def _check_settings(self) -> None:
        sd, device = self.sd, self.device["index"]
        try:
            retrying_busy(
                lambda: sd.check_input_settings(
                    device=device, samplerate=self.rate, channels=self.channels, dtype="float32"
                ),
                self.uri,
            )
        except Exception as exc:
            supported = []
            # a device busy for a moment refuses every rate: each is asked again while it
            # says busy, within one shared budget
            deadline = time.monotonic() + BUSY_RETRY_S
            for rate in COMMON_RATES:
                try:
                    check = partial(
                        sd.check_input_settings,
                        device=device,
                        samplerate=rate,
                        channels=self.channels,
                    )
                    retrying_busy(check, self.uri, max(0.0, deadline - time.monotonic()))
                    supported.append(rate)
                except Exception:
                    continue
            raise InputError(
                f"{self.uri}: device {self.device['name']!r} refuses {self.rate:g} Hz with"
                f" {self.channels} channel(s) ({exc}); it supports"
                f" {', '.join(map(str, supported)) or 'none of the common rates'}"
            ) from None

    # -- device lifecycle -------------------------------------------------------------------
    def _start_device(self) -> None:
        try:
            stream = retrying_busy(
                lambda: self.sd.InputStream(
                    device=self.device["index"],
                    samplerate=self.rate,
                    channels=self.channels,
                    dtype="float32",
                    blocksize=self.chunk,
                    latency=self.latency,
                    callback=self._callback,
                ),
                self.uri,
            )
            # PortAudio's clock -> the pipeline's: one offset, taken when the stream opens
            self._offset = self.clock.now() - float(stream.time)
            stream.start()
        except Exception as exc:
            raise InputError(f"{self.uri}: cannot start capture: {exc}") from None
        self._stream = stream

    def _stop_device(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()

    # -- PortAudio's thread -----------------------------------------------------------------
    def _callback(self, indata: np.ndarray[Any, Any], frames: int, times: Any, status: Any) -> None:
        adc = float(getattr(times, "inputBufferAdcTime", 0.0) or 0.0)
        if adc <= 0.0:  # some host APIs give no ADC time: the callback's own time then
            adc = float(getattr(times, "currentTime", 0.0) or 0.0)
        if self._first_adc is None:
            self._first_adc = adc
        if status.input_overflow and self._next_adc is not None:
            self.overflows += 1
            # the samples lost, plus those of a frame begun before them (dropped too)
            missing = (adc - self._next_adc) * self.rate + self._chunker.reset()
            lost = max(1, round(missing / self.chunk))
            pts = self._index * self.period
            self.buffer.offer(Gap(self.stream, self._index, lost, pts, "input-overflow"))
            self._index += lost
        # block sample j is at adc + j / rate; a frame's first sample may be an earlier
        # block's: ``pending`` samples before this one
        first = -self._chunker.pending
        for data in self._chunker.push(indata[:frames]):
            pts = self._index * self.period
            captured = adc + first / self.rate + self._offset
            frame = Frame(self.stream, self._index, pts, captured, data, self.rate, self.info)
            self.buffer.offer(frame)
            self._index += 1
            first += self.chunk
        self._next_adc = adc + frames / self.rate


def open_microphone(uri: str, options: SourceOptions, clock: Clock) -> MicrophoneSource:
    """``mic:``, ``mic:INDEX`` or ``mic:NAME`` (the registered opener of the ``mic`` scheme)."""
    return MicrophoneSource(uri, options, clock, policy=options.overflow, latency=options.latency)
