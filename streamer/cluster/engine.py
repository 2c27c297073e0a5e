"""The Ray engine: the model stage's steps made by a pool of Ray actors.

The driver keeps everything but the model and the hidden states: sources, front-ends,
heads, smoothing and sinks. Each call of the stage (one tick: the chunks of every ready
stream) is split by owner, each stream owned by one :class:`~streamer.cluster.worker.
ModelWorker` actor chosen by consistent hashing on its id (:class:`~streamer.cluster.ring.
HashRing`), and each actor steps all its chunks in one batched model call; the calls of one
tick run concurrently and their outputs come back in the stream's order.

**Exact failover.** A stream's state is snapshotted (handed back with a call's outputs)
once ``snapshot_every`` of its chunks were sent since its last snapshot; the driver keeps
those chunks, so each stream's replay buffer holds at most ``snapshot_every`` chunks. When
an actor dies (Ray says so, or its call misses ``deadline_s``: a frozen node), it is killed,
its streams go to the surviving actors by the ring, each restored from its snapshot with
its buffered chunks stepped again; the outputs of chunks already delivered are discarded,
those of the call that failed are delivered. A stream's outputs are therefore those of a
run without the failure (up to float rounding of a different batch: about 1e-7).
:meth:`RayEngine.request_scale` adds or removes actors between ticks: moved streams carry
their states over (exported from the old owner, loaded by the new one).

Ray is imported here only, when a run asks for the engine (``[run] engine = "ray"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from streamer.cluster.ring import HashRing
from streamer.cluster.worker import Chunk, ModelWorker, from_wire, to_wire
from streamer.errors import InputError
from streamer.models import ModelSpec, State, StatefulModel, StateStore

log = logging.getLogger(__name__)


class RemoteStates(StateStore):
    """The driver's :class:`StateStore` when the states live on the actors: it keeps the
    activity times (the idle TTL) and notes which streams start fresh and which ended, for
    the engine to tell their owners with their next chunk."""

    def __init__(self, model: StatefulModel, ttl: float | None = None) -> None:
        super().__init__(model, ttl)
        self.fresh: set[str] = set()
        self.ended: list[str] = []

    def start(self, stream: str, now: float) -> None:
        super().start(stream, now)
        self.fresh.add(stream)

    def reset(self, stream: str) -> None:
        super().reset(stream)
        self.fresh.add(stream)

    def end(self, stream: str) -> None:
        super().end(stream)
        self.fresh.discard(stream)
        self.ended.append(stream)

    def get(self, stream: str) -> State:
        raise InputError(f"stream '{stream}': with the Ray engine its state lives on a model actor")


@dataclass(eq=False)
class _Entry:
    """A chunk sent since the stream's last snapshot."""

    fresh: bool
    x: np.ndarray[Any, Any]  # [T, F...], as it travels
    delivered: bool = False


@dataclass(eq=False)
class _Log:
    """What restores a stream elsewhere: its last snapshot (None: fresh) and the chunks
    sent since."""

    snapshot: State | None = None
    entries: list[_Entry] = field(default_factory=list)


@dataclass(eq=False)
class _Slot:
    """One model actor."""

    name: str
    handle: Any
    host: str = "?"
    node: str | None = None
    drops: list[str] = field(default_factory=list)
    served: set[str] = field(default_factory=set)  # every stream it held, for the report
    calls: int = 0

    def placed(self, info: dict[str, Any]) -> None:
        """Where the actor runs (its :meth:`ModelWorker.ready` answer)."""
        self.host, self.node = str(info.get("host")), info.get("node")


class WorkerLost(Exception):
    """A model actor died or missed its deadline."""


@dataclass(frozen=True)
class EngineOptions:
    """``[run]`` / ``[run.ray]``: how many actors, their resources, snapshots, deadline."""

    address: str | None = None
    workers: int = 2
    cpus: float = 1.0
    gpus: float = 0.0
    snapshot_every: int = 8
    deadline_s: float = 10.0
    namespace: str | None = None
    #: streams per model call on an actor, at most (``[model] max_batch``)
    max_batch: int | None = None


class RayEngine:
    """A pool of model actors stepping the streams they own (see the module doc)."""

    def __init__(
        self,
        spec: ModelSpec,
        model: StatefulModel,
        options: EngineOptions,
        ttl: float | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.store = RemoteStates(model, ttl)
        self._ray: Any = None
        self._remote: Any = None
        self._slots: dict[str, _Slot] = {}
        self._ring = HashRing()
        self._logs: dict[str, _Log] = {}
        self._held: dict[str, str] = {}  # stream -> the actor holding its state
        self._next = 0
        self._wanted: int | None = None
        self._lock = threading.Lock()
        # the report
        self.failovers: list[dict[str, Any]] = []
        self.replayed = 0
        self.replayed_steps = 0  # model steps (frames' features) stepped again
        self.moved = 0
        self.calls = 0
        self.outage_s: dict[str, float] = {}

    # -- lifetime ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to Ray (start a local one without an address) and start the actors;
        a cluster that cannot be reached or a model an actor cannot load is an
        InputError naming it. Blocking: call it before the run."""
        # a local Ray started here stops with the process (Ray's own exit handler): stopping
        # it in close() would block the event loop for a second or two
        ray, _ = connect_ray(self.options.address, self.options.namespace)
        self._ray = ray
        self._remote = ray.remote(ModelWorker)
        for _ in range(self.options.workers):
            self._add_slot()
        try:
            infos = ray.get(
                [slot.handle.ready.remote() for slot in self._slots.values()],
                timeout=max(60.0, self.options.deadline_s),
            )
        except Exception as exc:
            self.close()
            raise InputError(
                f"[run] engine = 'ray': the model actors did not start: {_cause(exc)}"
            ) from None
        for slot, info in zip(self._slots.values(), infos, strict=True):
            slot.placed(info)

    def _add_slot(self) -> _Slot:
        name = f"model-{self._next}"
        self._next += 1
        handle = self._remote.options(
            num_cpus=self.options.cpus,
            num_gpus=self.options.gpus,
            max_restarts=0,
            scheduling_strategy="SPREAD",
        ).remote(self.spec, name, self.options.max_batch)
        slot = self._slots[name] = _Slot(name, handle)
        self._ring.add(name)
        return slot

    def close(self) -> None:
        """Stop the actors; idempotent."""
        ray, self._ray = self._ray, None
        if ray is None:
            return
        for slot in self._slots.values():
            with contextlib.suppress(Exception):  # an actor already gone
                ray.kill(slot.handle, no_restart=True)

    # -- scaling -------------------------------------------------------------------------
    def request_scale(self, workers: int) -> None:
        """Have ``workers`` actors from the next tick on (thread-safe; any thread)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        with self._lock:
            self._wanted = workers

    def scale_by(self, delta: int) -> None:
        """One more (``+1``) or one fewer (``-1``) actor than asked for last, at least one
        (``streamer run``: SIGUSR1 and SIGUSR2)."""
        with self._lock:
            now = self._wanted if self._wanted is not None else len(self._slots)
            self._wanted = max(1, now + delta)
            log.warning("engine ray: scaling to %d model actors", self._wanted)

    @property
    def workers(self) -> list[str]:
        return self._ring.workers

    def owner(self, stream: str) -> str:
        return self._ring.owner(stream)

    def actor(self, name: str) -> Any:
        """The Ray handle of the model actor ``name``."""
        return self._slots[name].handle

    def nodes(self) -> dict[str, str | None]:
        """Each model actor's Ray node id."""
        return {name: slot.node for name, slot in self._slots.items()}

    def held(self) -> dict[str, str]:
        """Which actor holds each stream's state now."""
        return dict(self._held)

    async def _rescale(self) -> None:
        with self._lock:
            wanted, self._wanted = self._wanted, None
        if wanted is None or wanted == len(self._slots):
            return
        leaving: list[_Slot] = []
        if wanted > len(self._slots):
            fresh = [self._add_slot() for _ in range(wanted - len(self._slots))]
            infos = await asyncio.gather(*(self._await(s, s.handle.ready.remote()) for s in fresh))
            for slot, info in zip(fresh, infos, strict=True):
                slot.placed(info)
        else:
            leaving = sorted(self._slots.values(), key=lambda s: s.name)[
                wanted - len(self._slots) :
            ]
            for slot in leaving:
                self._ring.remove(slot.name)
        await self._rebalance()
        for slot in leaving:
            del self._slots[slot.name]
            self._ray.kill(slot.handle, no_restart=True)
        log.info("engine ray: %d model actors (%s)", len(self._slots), ", ".join(self.workers))

    async def _rebalance(self) -> None:
        """Move every stream whose owner on the ring is not the actor holding it."""
        moves: dict[str, dict[str, list[str]]] = {}  # from -> to -> streams
        for stream, holder in self._held.items():
            owner = self._ring.owner(stream)
            if owner != holder:
                moves.setdefault(holder, {}).setdefault(owner, []).append(stream)
        for source, targets in moves.items():
            slot = self._slots[source]
            streams = [s for group in targets.values() for s in group]
            states = await self._await(slot, slot.handle.export.remote(streams))
            for target, group in targets.items():
                dest = self._slots[target]
                await self._await(dest, dest.handle.load.remote({s: states[s] for s in group}))
                self._held.update((s, target) for s in group)
                dest.served.update(group)
                self.moved += len(group)
            for stream in streams:  # the state moved is the newest: a fresh snapshot
                log_ = self._logs.get(stream)
                if log_ is not None:
                    log_.snapshot, log_.entries = states[stream], []

    # -- stepping ------------------------------------------------------------------------
    async def step(self, chunks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Step every stream's chunk ``x [T, F...]`` on its owner; each ``y [T, K]``, in
        the order of ``chunks``."""
        await self._rescale()
        self.calls += 1
        self._forget_ended()
        plan: dict[str, dict[str, Chunk]] = {}
        sent: dict[str, _Entry] = {}
        for stream, tensor in chunks.items():
            fresh = stream in self.store.fresh
            self.store.fresh.discard(stream)
            x = to_wire(tensor)
            entry = _Entry(fresh, x)
            log_ = self._logs.setdefault(stream, _Log())
            if fresh:  # nothing before a fresh start is needed to restore it
                log_.snapshot, log_.entries = None, []
            log_.entries.append(entry)
            sent[stream] = entry
            owner = self._holder(stream)
            plan.setdefault(owner, {})[stream] = (fresh, x)
        started = time.monotonic()
        names = list(plan)
        results = await asyncio.gather(
            *(self._call(name, plan[name]) for name in names), return_exceptions=True
        )
        ys: dict[str, Tensor] = {}
        lost: list[str] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, WorkerLost):
                lost.append(name)
            elif isinstance(result, BaseException):
                raise result
            else:
                outputs, states = result
                ys.update((stream, from_wire(y)) for stream, y in outputs.items())
                for stream, state in states.items():
                    self._logs[stream].snapshot, self._logs[stream].entries = state, []
        for name in lost:
            if name in self._slots:  # (not already handed on by another's failover)
                ys.update(await self._failover(name, started))
        for entry in sent.values():
            entry.delivered = True
        return {stream: ys[stream] for stream in chunks}

    def _holder(self, stream: str) -> str:
        """The actor that holds ``stream`` (its owner on the ring, for a new one)."""
        holder = self._held.get(stream)
        if holder is None:
            holder = self._held[stream] = self._ring.owner(stream)
            self._slots[holder].served.add(stream)
        return holder

    def _forget_ended(self) -> None:
        ended, self.store.ended = self.store.ended, []
        for stream in ended:
            self._logs.pop(stream, None)
            holder = self._held.pop(stream, None)
            if holder is not None:
                self._slots[holder].drops.append(stream)

    async def _call(
        self, name: str, chunks: dict[str, Chunk]
    ) -> tuple[dict[str, Tensor], dict[str, State]]:
        slot = self._slots[name]
        snapshot = [s for s in chunks if len(self._logs[s].entries) >= self.options.snapshot_every]
        drops, slot.drops = slot.drops, []
        slot.calls += 1
        result: tuple[dict[str, Tensor], dict[str, State]] = await self._await(
            slot, slot.handle.step.remote(chunks, drops, snapshot)
        )
        return result

    async def _await(self, slot: _Slot, ref: Any) -> Any:
        """``ref``'s value; :class:`WorkerLost` when its actor died or missed the
        deadline; an error raised by the model itself is raised as it is."""
        ray = self._ray
        try:
            deadline = self.options.deadline_s
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), deadline)
        except TimeoutError:
            raise WorkerLost(f"{slot.name} missed its {deadline:g} s deadline") from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            raise cause from None
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise WorkerLost(f"{slot.name} died: {type(exc).__name__}") from None

    async def _failover(self, name: str, started: float) -> dict[str, Tensor]:
        """The actor ``name`` is lost: its streams restored on the others; the outputs of
        their chunks not yet delivered."""
        slot = self._slots.pop(name)
        self._ring.remove(name)
        with contextlib.suppress(Exception):  # a frozen one must not come back
            self._ray.kill(slot.handle, no_restart=True)
        if not self._slots:
            raise RuntimeError(f"engine ray: every model actor is lost ({name} was the last)")
        streams = sorted(s for s, holder in self._held.items() if holder == name)
        targets: dict[str, list[str]] = {}
        for stream in streams:
            targets.setdefault(self._ring.owner(stream), []).append(stream)
        ys: dict[str, Tensor] = {}
        replayed = steps = 0
        for target, group in targets.items():
            dest = self._slots[target]
            payload = {
                s: (self._logs[s].snapshot, [(e.fresh, e.x) for e in self._logs[s].entries])
                for s in group
                if s in self._logs
            }
            try:
                outputs = await self._await(dest, dest.handle.restore.remote(payload))
            except WorkerLost:
                # the target is lost too: hand all of it (its own streams too) on
                self._held.update((s, target) for s in group)
                ys.update(await self._failover(target, started))
                continue
            self._held.update((s, target) for s in group)
            dest.served.update(group)
            for stream, ys_ in outputs.items():
                entries = self._logs[stream].entries
                replayed += sum(e.delivered for e in entries)
                steps += sum(int(e.x.shape[0]) for e in entries if e.delivered)
                fresh = [from_wire(y) for e, y in zip(entries, ys_, strict=True) if not e.delivered]
                if fresh:
                    ys[stream] = fresh[-1] if len(fresh) == 1 else _cat(fresh)
        outage = time.monotonic() - started
        for stream in streams:
            self.outage_s[stream] = max(self.outage_s.get(stream, 0.0), outage)
        self.replayed += replayed
        self.replayed_steps += steps
        self.failovers.append(
            {
                "worker": name,
                "host": slot.host,
                "streams": len(streams),
                "replayed_chunks": replayed,
                "replayed_steps": steps,
                "outage_s": round(outage, 3),
            }
        )
        log.warning(
            "engine ray: model actor %s on %s lost; its %d streams moved to %s (%d chunks"
            " replayed, %.2f s)",
            name,
            slot.host,
            len(streams),
            ", ".join(sorted(targets)),
            replayed,
            outage,
        )
        return ys

    def report(self) -> dict[str, Any]:
        """The summary's ``engine`` section."""
        return {
            "engine": "ray",
            "workers": [
                {
                    "name": s.name,
                    "host": s.host,
                    "node": s.node,
                    "streams_served": len(s.served),
                    "calls": s.calls,
                }
                for s in self._slots.values()
            ],
            "calls": self.calls,
            "failovers": self.failovers,
            "replayed_chunks": self.replayed,
            "replayed_steps": self.replayed_steps,
            "moved_streams": self.moved,
            "outage_s_max": round(max(self.outage_s.values(), default=0.0), 3),
            "outage_s": {s: round(v, 3) for s, v in sorted(self.outage_s.items())},
        }


def connect_ray(address: str | None, namespace: str | None = None) -> tuple[Any, bool]:
    """The ``ray`` module, connected: to the cluster at ``address``, or a local Ray
    started now (without one); True when this call started or joined it. An
    InputError (one line) when Ray is missing or the cluster does not answer."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "[run] engine = 'ray': Ray is not installed (pip install 'streamer[ray]')"
        ) from None
    if ray.is_initialized():
        return ray, False
    if address is not None:
        check_reachable(address)
    local: dict[str, Any] = {} if address else {"include_dashboard": False}
    try:
        ray.init(
            # without an address Ray would join a cluster it finds running on this machine
            # (RAY_ADDRESS, /tmp/ray): "local" starts one of our own, as documented
            address=address or "local",
            namespace=namespace,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=False,
            **local,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise InputError(f"[run] engine = 'ray': cannot start or reach {where}: {exc}") from None
    return ray, True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse (one line) a cluster address whose port does not answer: Ray itself retries
    an unreachable address for minutes. ``auto`` and ``local`` are Ray's to resolve."""
    if address in ("auto", "local"):
        return
    where = address.removeprefix("ray://").split("/", 1)[0]
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(
            f"[run] ray_address: {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(
            f"[run] ray_address: no Ray cluster answers at {address} ({exc})"
        ) from None


def _cat(ys: list[Tensor]) -> Tensor:
    import torch

    return torch.cat(ys, dim=0)


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc).strip().splitlines()[-1]
