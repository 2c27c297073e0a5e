"""The building blocks of the pipeline file's schema: the strict section base and scalar
types, and the bounds every section shares (:mod:`streamer.config` assembles the file from
them; each registered kind's own options model is built on them too)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AllowInfNan, BaseModel, ConfigDict, Strict, StrictBool, StrictStr

#: The run modes (``[run] mode``, ``--mode``): one definition for the file, the runner and
#: the stages.
Mode = Literal["realtime", "online", "offline"]
MODES: tuple[Mode, ...] = get_args(Mode)

# Strict scalars: no bool-as-int, no str-as-number; floats finite (ints are accepted).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = StrictBool
Str = StrictStr

#: Bounds: generous for real devices and files, tight enough to refuse what cannot work.
MAX_RATE = 384_000.0  # audio Hz (the highest common ADC rate); video fps are far below
MAX_CHUNK = 1 << 20  # audio samples per frame (over 2 s at 384 kHz)
MAX_SIDE = 16_384  # video pixels per side
MAX_SECONDS = 366 * 24 * 3600.0  # run duration, ttl: a year
MAX_THREADS = 256


class Section(BaseModel):
    """A table of the pipeline file: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
