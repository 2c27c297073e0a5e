"""Hidden state per stream: fresh on start, reset or kept on a gap, evicted when idle.

The store is the one owner of the idle TTL: it keeps when each stream was last active and
says which streams are idle; the model stage stamps activity (:meth:`StateStore.touch`)
and ends the streams :meth:`StateStore.idle` names the usual way, outputs first.

Keying state by stream id is also what will let streams move between workers later (a
stream's :class:`~streamer.models.protocol.State` is a snapshot of it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from streamer.models.protocol import State, StatefulModel

GapPolicy = Literal["reset", "keep"]


class StateStore:
    """The states of ``model``'s streams (batch 1 each), keyed by stream id.

    A stream the store does not hold (new, reset or ended) gets the model's initial state.
    Times are the caller's clock (``now``); a stream idle for longer than ``ttl`` seconds
    is :meth:`idle` (and dropped by :meth:`evict_idle`; ``ttl=None``: never). A stream's
    activity time only moves forward, under a lock: a step landing on the worker thread
    never makes a stream stamped later on the loop look idle. States themselves are not
    locked: the model's worker thread and the loop that awaits it take turns.
    """

    def __init__(self, model: StatefulModel, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"StateStore ttl must be > 0 seconds or None, not {ttl}")
        self.model = model
        self.ttl = ttl
        self._states: dict[str, State] = {}  # streams without one start fresh
        # streams whose state is a row of a batch kept whole (put_batch): stream -> row
        self._rows: dict[str, tuple[_Batch, int]] = {}
        self._seen: dict[str, float] = {}  # every known stream: when it was last active
        self._lock = threading.Lock()

    def get(self, stream: str) -> State:
        """The stream's state, or a fresh initial state (batch 1) if none is held."""
        state = self._states.get(stream)
        if state is not None:
            return state
        row = self._rows.pop(stream, None)
        if row is not None:  # its row of the batch, copied: now the stream's own state
            state = self._states[stream] = row[0].state.index(row[1])
            return state
        return self.model.initial_state(1)

    def put(self, stream: str, state: State, now: float) -> None:
        """Keep ``state`` (batch 1) as the stream's state; the stream was active at ``now``."""
        if state.batch != 1:
            raise ValueError(f"stream '{stream}': a stored state has batch 1, not {state.batch}")
        self._states[stream] = state
        self._rows.pop(stream, None)
        self._stamp((stream,), now)

    def put_batch(self, streams: list[str], state: State, now: float) -> None:
        """Keep ``state`` (batch ``len(streams)``, row ``i`` stream ``i``'s) whole: the
        next :meth:`get_batch` of the same streams in the same order is ``state`` itself,
        with no stacking; :meth:`get` of one of them copies its row."""
        if state.batch != len(streams):
            raise ValueError(f"a batch of {len(streams)} streams has a state of {state.batch}")
        batch = _Batch(state, tuple(streams))
        for row, stream in enumerate(streams):
            self._states.pop(stream, None)
            self._rows[stream] = (batch, row)
        self._stamp(streams, now)

    def get_batch(self, streams: list[str]) -> State | None:
        """The state :meth:`put_batch` kept for exactly ``streams`` (in that order), when
        none of them has changed since; else None. Not to be changed in place."""
        row = self._rows.get(streams[0]) if streams else None
        if row is None or row[0].streams != tuple(streams):
            return None
        batch = row[0]
        rows = self._rows
        if all(rows.get(stream, (None, 0))[0] is batch for stream in streams):
            return batch.state
        return None

    def _stamp(self, streams: Iterable[str], now: float) -> None:
        with self._lock:
            for stream in streams:
                seen = self._seen.get(stream)
                if seen is None or now > seen:
                    self._seen[stream] = now

    def start(self, stream: str, now: float) -> None:
        """A stream (re)starts: fresh state, active at ``now``."""
        self._states.pop(stream, None)
        self._rows.pop(stream, None)
        with self._lock:
            self._seen[stream] = now

    def touch(self, streams: Iterable[str], now: float) -> None:
        """The known ones of ``streams`` were active at ``now``."""
        with self._lock:
            for stream in streams:
                seen = self._seen.get(stream)
                if seen is not None and now > seen:
                    self._seen[stream] = now

    def reset(self, stream: str) -> None:
        """Forget the stream's state: its next step starts fresh."""
        self._states.pop(stream, None)
        self._rows.pop(stream, None)

    def on_gap(self, stream: str, policy: GapPolicy) -> None:
        """Frames were lost: ``reset`` starts the stream fresh, ``keep`` carries on."""
        if policy == "reset":
            self.reset(stream)
        elif policy != "keep":
            raise ValueError(f"on_gap policy must be 'reset' or 'keep', not {policy!r}")

    def end(self, stream: str) -> None:
        """The stream is over: drop everything about it."""
        self._states.pop(stream, None)
        self._rows.pop(stream, None)
        with self._lock:
            self._seen.pop(stream, None)

    def idle(self, now: float) -> list[str]:
        """The streams idle for longer than ``ttl`` at ``now``, in order of arrival (none
        when ``ttl`` is None); they stay until :meth:`end`."""
        if self.ttl is None:
            return []
        ttl = self.ttl
        with self._lock:
            return [s for s, seen in self._seen.items() if now - seen > ttl]

    def evict_idle(self, now: float) -> list[str]:
        """Drop the streams idle for longer than ``ttl`` at ``now``; return their ids."""
        idle = sorted(self.idle(now))
        for stream in idle:
            self.end(stream)
        return idle

    def last_seen(self, stream: str) -> float | None:
        """When the stream was last active, or None if the store does not know it."""
        return self._seen.get(stream)

    def streams(self) -> list[str]:
        """The streams the store knows, in order of arrival."""
        return list(self._seen)

    def __contains__(self, stream: object) -> bool:
        return stream in self._seen

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True, eq=False)
class _Batch:
    """A state kept whole for the streams of its rows (:meth:`StateStore.put_batch`)."""

    state: State
    streams: tuple[str, ...]
