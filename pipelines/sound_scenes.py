"""Labelled sound scenes for the sound-event tagger: numpy only, 16 kHz, fixed seeds.

A scene mixes a few sources at random gains and SNRs, with one random room reverberation
(an exponential-decay noise impulse response), over a faint floor (silence is none of
the labels). Sources, one label each (multi-label: they overlap):

- ``speech``: cut from ``tests/data/speech_en_16k.wav`` (0-45 s for training, 45-60 s
  held out; ``recordings/speech_en`` is its first 10 s, so it adds nothing new), plus
  ``espeak-ng`` voices when that program is installed and ``espeak=True``;
- ``music``: harmonic chords that change, in a rhythm, on plucked (Karplus-Strong) and
  sustained (additive, vibrato) instruments;
- ``alarm``: beeps (tone bursts) and sirens (wail and yelp sweeps);
- ``knock``: short groups of impulses through a few resonators;
- ``noise``: fans (hum + low-passed noise), rain (dense clicks), traffic (brown noise
  with slow swells), coloured noise.

Frame labels follow :class:`streamer.stages.model.logmel.LogMel`'s defaults (25 ms window, 10 ms
hop): step ``t`` covers samples ``[t*160, t*160 + 400)``, and a label is on in it when
its source, dry and at its mixed gain, is active there: its energy in the step within
``GATE_DB`` of its own loud steps and above an absolute floor, and, for the events (not
``noise``), no more than ``AUDIBLE_DB`` below the other sources together (a source buried
under the others is not heard), with pauses shorter than ``GAP_STEPS[label]`` steps filled
(0.3-0.45 s: between words, beeps, knocks of a group).
"""

from __future__ import annotations

import functools
import itertools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

RATE = 16000
HOP = 160
WINDOW = 400
LABELS = ("noise", "speech", "music", "alarm", "knock")
GATE_DB = 30.0  # a source is on within this many dB of its loud (95th percentile) steps
FLOOR_DB = -60.0  # ... and above this absolute level (dBFS, step RMS)
AUDIBLE_DB = 8.0  # an event is on only if no more than this many dB below the other sources
# An event's pauses shorter than this many steps stay on: an event is its whole extent
# (a sentence with its pauses between words, a group of knocks, a beeping alarm), as
# event annotations mark it, not each burst of energy inside it.
GAP_STEPS = {"speech": 30, "music": 30, "alarm": 45, "knock": 35}
ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "tests" / "data" / "speech_en_16k.wav"
SPLIT_S = 45.0  # training speech before, held-out speech after

Rng = np.random.Generator


@dataclass(frozen=True)
class Scene:
    """``audio [N]`` float32 at 16 kHz and ``labels [T, 5]`` bool (one row per log-mel step)."""

    audio: np.ndarray
    labels: np.ndarray


def steps_of(samples: int) -> int:
    """The number of log-mel steps (whole windows) ``samples`` samples make."""
    return (samples - WINDOW) // HOP + 1 if samples >= WINDOW else 0


def step_rms(x: np.ndarray, steps: int) -> np.ndarray:
    """RMS of ``x [N]`` in each log-mel step ``[steps]`` (zero-padded past the end)."""
    need = (steps - 1) * HOP + WINDOW
    padded = np.zeros(max(need, len(x)))
    padded[: len(x)] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP][:steps]
    return np.asarray(np.sqrt(np.mean(frames**2, axis=1) + 1e-20))


def active(x: np.ndarray, steps: int) -> np.ndarray:
    """Where source ``x`` is on, per step ``[steps]`` bool (see the module doc)."""
    rms = step_rms(x, steps)
    if not np.any(rms > 1e-9):
        return np.zeros(steps, dtype=bool)
    ref = np.percentile(rms[rms > 1e-9], 95)
    return np.asarray((rms > ref * 10 ** (-GATE_DB / 20)) & (rms > 10 ** (FLOOR_DB / 20)))


def close_gaps(on: np.ndarray, shorter_than: int) -> np.ndarray:
    """``on [T]`` with its runs of off between two ons shorter than ``shorter_than`` filled."""
    out = on.copy()
    where = np.flatnonzero(on)
    for a, b in itertools.pairwise(where):
        if 1 < b - a <= shorter_than:
            out[a:b] = True
    return out


# --- spectral helpers -----------------------------------------------------------------------


def shaped_noise(
    rng: Rng,
    n: int,
    shape: np.ndarray | None = None,
    *,
    tilt: float = 0.0,
    lo: float = 0.0,
    hi: float = RATE / 2,
) -> np.ndarray:
    """White noise ``[n]`` shaped in frequency: ``f^-tilt/2`` amplitude, band ``[lo, hi]``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    gain = np.where((f >= lo) & (f <= hi), 1.0, 0.0) * np.maximum(f, 20.0) ** (-tilt / 2)
    if shape is not None:
        gain = gain * shape
    return normalise(np.fft.irfft(spec * gain, n))


def lowpass(x: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    """A zero-phase Butterworth-like low-pass of ``x`` in the frequency domain."""
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return np.fft.irfft(np.fft.rfft(x) / np.sqrt(1 + (f / cutoff) ** (2 * order)), len(x))


def normalise(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to RMS 1 (zeros stay zeros)."""
    rms = np.sqrt(np.mean(x**2))
    return x / rms if rms > 1e-12 else x


def fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Short linear fades at both ends (no clicks at a source's edges)."""
    k = min(len(x) // 2, int(seconds * RATE))
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k)
        x = x.copy()
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


# --- speech ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def speech_pool(part: str, espeak: bool = False) -> tuple[np.ndarray, ...]:
    """Speech recordings for ``part`` ("train" or "test"), float64 at 16 kHz."""
    audio, rate = soundfile.read(SPEECH_WAV, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    assert rate == RATE
    split = int(SPLIT_S * RATE)
    pool = [audio[:split] if part == "train" else audio[split:]]
    if espeak and part == "train":
        pool.extend(espeak_voices())
    return tuple(normalise(p) * 0.1 for p in pool)


SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to close the window before you leave the office tonight.",
    "We will meet at the station at half past seven, unless the train is late.",
    "Could you tell me the way to the nearest library, please?",
    "Numbers one, two, three, four, five, and then six seven eight nine ten.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
)
VOICES = ("en", "en-us", "en+f3", "en+m4", "en-gb-x-rp+f2", "en+m7", "de", "fr+f4")


def espeak_voices() -> list[np.ndarray]:
    """Sentences spoken by ``espeak-ng`` in several voices and speeds ([] without it)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return []
    out: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, voice in enumerate(VOICES):
            wav = Path(tmp) / f"{i}.wav"
            text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3))
            speed = str(130 + 15 * i)
            pitch = str(30 + 7 * i)
            done = subprocess.run(
                [exe, "-v", voice, "-s", speed, "-p", pitch, "-w", str(wav), text],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0 or not wav.exists():
                continue
            audio, rate = soundfile.read(wav, dtype="float64", always_2d=True)
            out.append(soxr.resample(audio.mean(axis=1), rate, RATE))
    return out


def speech(rng: Rng, n: int, pool: tuple[np.ndarray, ...]) -> np.ndarray:
    """``n`` samples cut from a random place of a random recording in ``pool``."""
    src = pool[rng.integers(len(pool))]
    if len(src) <= n:
        src = np.tile(src, n // len(src) + 1)
    start = rng.integers(0, len(src) - n)
    x = src[start : start + n].copy()
    if rng.random() < 0.3:  # a different talker, roughly: shift the pitch and speed
        factor = rng.uniform(0.85, 1.18)
        x = soxr.resample(src[start : start + int(n * factor) + 1], RATE * factor, RATE)[:n]
        x = np.pad(x, (0, n - len(x)))
    return x


# --- music ----------------------------------------------------------------------------------

CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 11), (0, 3, 7, 10), (0, 4, 7, 10), (0, 5, 7))
PROGRESSIONS = ((0, 5, 7, 0), (0, 9, 5, 7), (0, 7, 9, 5), (2, 7, 0, 0), (0, 4, 5, 7))


def midi_hz(note: float | np.integer) -> float:
    return float(440.0 * 2 ** ((float(note) - 69) / 12))


def pluck(rng: Rng, f0: float, n: int) -> np.ndarray:
    """A Karplus-Strong string at ``f0`` Hz, ``n`` samples, computed a period at a time."""
    period = max(2, round(RATE / f0))
    decay = rng.uniform(0.985, 0.998)
    out = np.zeros(n + period + 1)
    out[:period] = rng.uniform(-1, 1, period)
    for start in range(period, n + 1, period):
        prev = out[start - period : start + 1]
        stop = min(start + period, len(out))
        k = stop - start
        out[start:stop] = decay * 0.5 * (prev[:k] + np.roll(prev, -1)[:k])
    return out[:n]


def sustained(rng: Rng, f0: float, n: int) -> np.ndarray:
    """An organ/string-like tone: harmonics, vibrato, attack and release."""
    t = np.arange(n) / RATE
    vib = 1 + rng.uniform(0, 0.006) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vib) / RATE
    harmonics = rng.integers(3, 9)
    rolloff = rng.uniform(0.6, 1.6)
    x = sum(np.sin(h * phase + rng.uniform(0, 6.3)) / h**rolloff for h in range(1, harmonics + 1))
    env = np.minimum(1.0, t / rng.uniform(0.01, 0.12))
    release = min(n, int(rng.uniform(0.02, 0.1) * RATE))
    env[n - release :] *= np.linspace(1, 0, release)
    return np.asarray(x) * env


def music(rng: Rng, n: int) -> np.ndarray:
    """Chords that change in a rhythm, on one or two instruments."""
    root = rng.integers(45, 64)
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    beat = rng.uniform(0.15, 0.5)
    per_chord = rng.integers(2, 5)
    instruments = [["pluck"], ["sustained"], ["pluck", "sustained"]][rng.integers(3)]
    arpeggio = rng.random() < 0.5
    out = np.zeros(n)
    pos, index = 0, 0
    while pos < n:
        degree = progression[index % len(progression)]
        chord = CHORDS[rng.integers(len(CHORDS))]
        length = min(n - pos, int(beat * per_chord * RATE))
        for instrument in instruments:
            octave = 12 if instrument == "pluck" and rng.random() < 0.5 else 0
            notes = [root + degree + c + octave for c in chord]
            if instrument == "sustained":
                for note in notes:
                    out[pos : pos + length] += 0.5 * sustained(rng, midi_hz(note), length)
                continue
            hits = max(1, int(length / (beat * RATE)))
            for hit in range(hits):
                at = pos + int(hit * beat * RATE)
                span = min(n - at, int(rng.uniform(0.3, 1.0) * RATE))
                chosen = [notes[hit % len(notes)]] if arpeggio else notes
                for note in chosen:
                    out[at : at + span] += pluck(rng, midi_hz(note), span) * rng.uniform(0.6, 1)
        pos += length
        index += 1
    return fade(out)


# --- alarms ---------------------------------------------------------------------------------


def tone(rng: Rng, freq: np.ndarray) -> np.ndarray:
    """A tone following ``freq [n]`` Hz: a sine, square-ish or with a few harmonics."""
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    kind = rng.integers(3)
    if kind == 0:
        return np.sin(phase)
    if kind == 1:
        return np.tanh(rng.uniform(2, 6) * np.sin(phase))
    return sum(np.sin(h * phase) * rng.uniform(0.2, 1) / h for h in (1, 2, 3, 4))  # type: ignore[return-value]


def beeps(rng: Rng, n: int) -> np.ndarray:
    """Beeps: tone bursts of one or two alternating pitches, on and off."""
    freqs = rng.uniform(500, 3200, size=2 if rng.random() < 0.3 else 1)
    on, off = rng.uniform(0.06, 0.5), rng.uniform(0.05, 0.4)
    freq = np.empty(n)
    gate = np.zeros(n)
    pos, k = 0, 0
    while pos < n:
        a, b = pos, min(n, pos + int(on * RATE))
        freq[a : min(n, pos + int((on + off) * RATE))] = freqs[k % len(freqs)]
        gate[a:b] = 1.0
        ramp = min(80, (b - a) // 2)
        if ramp:
            gate[a : a + ramp] = np.linspace(0, 1, ramp)
            gate[b - ramp : b] = np.linspace(1, 0, ramp)
        pos += int((on + off) * RATE)
        k += 1
    return tone(rng, freq) * gate


def siren(rng: Rng, n: int) -> np.ndarray:
    """A siren: a wail (slow) or yelp (fast) sweep between two pitches."""
    lo = rng.uniform(400, 900)
    hi = lo * rng.uniform(1.4, 2.5)
    period = rng.uniform(2.0, 5.0) if rng.random() < 0.5 else rng.uniform(0.15, 0.5)
    t = np.arange(n) / RATE + rng.uniform(0, period)
    shape = rng.integers(3)
    cycle = (t / period) % 1.0
    if shape == 0:
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * cycle)
    elif shape == 1:
        sweep = 1 - np.abs(2 * cycle - 1)
    else:
        sweep = cycle
    return fade(tone(rng, lo + (hi - lo) * sweep))


def alarm(rng: Rng, n: int) -> np.ndarray:
    return beeps(rng, n) if rng.random() < 0.5 else siren(rng, n)


# --- knocks ---------------------------------------------------------------------------------


def knock(rng: Rng, n: int) -> np.ndarray:
    """Groups of 2-5 knocks, each an impulse through 2-4 damped resonators."""
    out = np.zeros(n)
    modes = [(rng.uniform(80, 1500), rng.uniform(0.008, 0.06)) for _ in range(rng.integers(2, 5))]
    length = int(0.25 * RATE)
    t = np.arange(length) / RATE
    body = sum(
        rng.uniform(0.3, 1) * np.exp(-t / tau) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        for f, tau in modes
    )
    click = np.zeros(length)
    click[: int(0.002 * RATE)] = rng.standard_normal(int(0.002 * RATE)) * rng.uniform(0.2, 1)
    sound = np.asarray(body) + click
    pos = int(rng.uniform(0, 0.2) * RATE)
    while pos < n:
        for _ in range(rng.integers(2, 6)):
            if pos >= n:
                break
            k = min(length, n - pos)
            out[pos : pos + k] += sound[:k] * rng.uniform(0.5, 1.0)
            pos += int(rng.uniform(0.08, 0.3) * RATE)
        pos += int(rng.uniform(0.4, 1.5) * RATE)
    return out


# --- noise ----------------------------------------------------------------------------------


def fan(rng: Rng, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    f0 = rng.uniform(40, 200)
    hum = sum(np.sin(2 * np.pi * h * f0 * t) * rng.uniform(0, 1) / h for h in range(1, 6))
    air = lowpass(rng.standard_normal(n), rng.uniform(300, 2500), order=int(rng.integers(1, 4)))
    return np.asarray(normalise(np.asarray(hum)) * rng.uniform(0.1, 0.7) + normalise(air))


def rain(rng: Rng, n: int) -> np.ndarray:
    clicks = np.zeros(n)
    count = int(rng.uniform(300, 3000) * n / RATE)
    clicks[rng.integers(0, n, count)] = rng.standard_normal(count) * rng.uniform(0.2, 1, count)
    f = np.fft.rfftfreq(n, 1 / RATE)
    x = normalise(np.fft.irfft(np.fft.rfft(clicks) * (f > rng.uniform(300, 2000)), n))
    return x + rng.uniform(0.05, 0.5) * shaped_noise(rng, n, tilt=1.0, lo=200)


def traffic(rng: Rng, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    depth, rate = rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.4)
    swell = 1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3))
    return shaped_noise(rng, n, tilt=2.0, lo=rng.uniform(20, 60)) * swell


def coloured(rng: Rng, n: int) -> np.ndarray:
    return shaped_noise(
        rng, n, tilt=rng.uniform(0, 2), lo=rng.uniform(0, 200), hi=rng.uniform(3000, RATE / 2)
    )


def noise(rng: Rng, n: int) -> np.ndarray:
    kinds = (fan, rain, traffic, coloured)
    return normalise(kinds[rng.integers(len(kinds))](rng, n))


# --- scenes ---------------------------------------------------------------------------------


def room(rng: Rng) -> np.ndarray:
    """An impulse response: a direct path and an exponentially decaying noise tail."""
    rt60 = rng.uniform(0.1, 0.8)
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail = lowpass(tail, rng.uniform(2000, 7000))
    ir = tail * rng.uniform(0.02, 0.4) / max(1e-9, np.sqrt(np.sum(tail**2)))
    ir[0] += 1.0
    return np.asarray(ir)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    size = len(x) + len(ir) - 1
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]


EVENTS = {"speech": None, "music": music, "alarm": alarm, "knock": knock}


def place(rng: Rng, label: str, n: int, pool: tuple[np.ndarray, ...]) -> np.ndarray:
    """Source ``label`` at a random place and length in an ``n``-sample clip (RMS ~1 where on)."""
    length = min(n, int(rng.uniform(0.4 * RATE, n)))
    start = int(rng.integers(0, n - length + 1))
    make = EVENTS[label]
    body = speech(rng, length, pool) if make is None else make(rng, length)
    x = np.zeros(n)
    on = active(body, steps_of(length))
    loud = step_rms(body, steps_of(length))[on]
    level = np.sqrt(np.mean(loud**2)) if loud.size else 1.0
    x[start : start + length] = fade(body) / max(level, 1e-9)
    return x


def render(rng: Rng, seconds: float = 4.0, part: str = "train", espeak: bool = False) -> Scene:
    """One random scene of ``seconds`` (see the module doc)."""
    n = int(seconds * RATE)
    steps = steps_of(n)
    pool = speech_pool(part, espeak)
    sources: dict[str, np.ndarray] = {}
    noise_db = None
    if rng.random() < 0.5:
        x = noise(rng, n)
        if rng.random() < 0.35:  # noise for part of the clip only
            a = int(rng.uniform(0, 0.5) * n)
            b = int(rng.uniform(a / n + 0.3, 1.0) * n)
            mask = np.zeros(n)
            mask[a:b] = 1
            x = x * _smooth_mask(mask)
        noise_db = rng.uniform(-50, -18)
        sources["noise"] = x * 10 ** (noise_db / 20)
    count = rng.choice([0, 1, 1, 2, 2, 2, 3])
    for label in rng.choice(list(EVENTS), size=count, replace=False):
        event_db = (
            rng.uniform(-40, -10) if noise_db is None else min(-8.0, noise_db + rng.uniform(0, 25))
        )
        sources[str(label)] = place(rng, str(label), n, pool) * 10 ** (event_db / 20)
    mix = np.zeros(n)
    for x in sources.values():
        mix += x
    ir = room(rng)
    mix = convolve(mix, ir) if rng.random() < 0.8 else mix
    mix += rng.standard_normal(n) * 10 ** (rng.uniform(-95, -72) / 20)  # the floor: silence
    labels = np.zeros((steps, len(LABELS)), dtype=bool)
    energy = {label: step_rms(x, steps) ** 2 for label, x in sources.items()}
    for label, x in sources.items():
        on = active(x, steps)
        if label != "noise":  # an event buried under the rest is not heard: off
            rest = sum((e for other, e in energy.items() if other != label), np.zeros(steps))
            on &= energy[label] >= rest * 10 ** (-AUDIBLE_DB / 10)
            on = close_gaps(on, GAP_STEPS[label])
        labels[:, LABELS.index(label)] = on
    return Scene(np.clip(mix, -1, 1).astype(np.float32), labels)


def _smooth_mask(mask: np.ndarray) -> np.ndarray:
    k = int(0.05 * RATE)
    return np.convolve(mask, np.ones(k) / k, mode="same")


def render_set(
    seed: int, count: int, seconds: float = 4.0, part: str = "train", espeak: bool = False
) -> list[Scene]:
    """``count`` scenes from one seed (the same seed gives the same scenes)."""
    rng = np.random.default_rng(seed)
    return [render(rng, seconds, part, espeak) for _ in range(count)]
