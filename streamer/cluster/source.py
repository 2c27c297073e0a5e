"""Sources on other machines: ``[[sources]] node = "..."`` opens the source inside a Ray
actor placed on that node (its Ray node id, or its IP address), for a camera or a
microphone attached to that machine.

The actor (:class:`SourceWorker`, a Ray async actor) opens the source there (bad input is
refused before the run, as for a local source), reads it into a bounded queue (its
``block`` policy holds the reader back: a live device's own push buffer applies the
mode's policy, as it does locally) and hands over batches of items. The driver's
:class:`RemoteSource` yields them in order. Each frame's ``captured`` (the remote node's
clock) is mapped onto the driver's clock through both machines' wall clocks, so latency
stays the capture-to-output time (machines are assumed NTP-synchronised: an offset
between their wall clocks shows as latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from streamer.clock import Clock, RealClock
from streamer.cluster.wire import writable
from streamer.errors import InputError
from streamer.frames import Frame, Item, StreamInfo
from streamer.sources.base import SourceOptions

#: Items a source actor holds before its reader waits.
QUEUE = 256
#: Items handed over per call, at most.
BATCH = 64


class SourceWorker:
    """The body of a source actor: the source opened on its node, read into a queue."""

    def __init__(self, uri: str, options: SourceOptions) -> None:
        from streamer.sources import open_source

        self.clock = RealClock()
        self.source = open_source(uri, options, self.clock)
        self._queue: asyncio.Queue[Item | None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        """The source's name and streams, and where it runs."""
        import socket

        node = None
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # outside Ray: no node id
            node = None
        return {
            "name": self.source.name,
            "streams": list(self.source.streams),
            "host": socket.gethostname(),
            "node": node,
        }

    async def _read(self) -> None:
        assert self._queue is not None
        try:
            async for item in self.source:
                await self._queue.put(item)
        finally:
            await self._queue.put(None)

    async def take(self, wait_s: float = 0.05) -> tuple[list[Item], bool, float, float]:
        """Up to :data:`BATCH` items (waiting up to ``wait_s`` for the first); whether the
        source ended; this node's clock and wall clock now."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        items: list[Item] = []
        ended = False
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            first = None
            if self._reader is not None and self._reader.done() and self._queue.empty():
                ended = True
        else:
            if first is None:
                ended = True
            else:
                items.append(first)
                while len(items) < BATCH and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        ended = True
                        break
                    items.append(item)
        if ended and self._reader is not None and self._reader.done():
            error = self._reader.exception()
            if error is not None:
                raise error
        return items, ended, self.clock.now(), time.time()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.source.aclose()


class RemoteSource:
    """A source read by a :class:`SourceWorker` actor on ``node``."""

    def __init__(self, uri: str, options: SourceOptions, clock: Clock, node: str, ray: Any) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.clock = clock
        self.node = node
        self._ray = ray
        node_id = _node_id(ray, node)
        remote = ray.remote(SourceWorker).options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            max_restarts=0,
        )
        self._actor = remote.remote(uri, options)
        try:
            described = ray.get(self._actor.describe.remote(), timeout=120)
        except Exception as exc:  # the source's own error, or the actor's
            cause = getattr(exc, "cause", None)
            error = cause if isinstance(cause, BaseException) else exc
            ray.kill(self._actor, no_restart=True)
            if isinstance(error, InputError):
                raise InputError(f"{error} (on node {node})") from None
            raise InputError(f"{uri}: the source actor on node {node} failed: {error}") from None
        self.name = f"{described['name']}@{described['host']}"
        self.where = {"host": described["host"], "node": described["node"]}
        self._streams: list[StreamInfo] = described["streams"]

    @property
    def streams(self) -> list[StreamInfo]:
        return self._streams

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        while True:
            ref = self._actor.take.remote()
            items, ended, remote_now, remote_wall = await asyncio.wrap_future(ref.future())
            # the remote clock's reading t is the driver's clock now - (wall now - wall at t)
            shift = self.clock.now() - time.time() + remote_wall - remote_now
            for item in items:
                if isinstance(item, Frame):
                    item = dataclasses.replace(
                        item, captured=item.captured + shift, data=writable(item.data)
                    )
                yield item
            if ended:
                return

    def discard(self) -> None:
        """Stop the actor of a source that will never be read (the build failed)."""
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor, no_restart=True)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # an actor already gone, or stuck
            await asyncio.wait_for(asyncio.wrap_future(self._actor.close.remote().future()), 5)
        self._ray.kill(self._actor, no_restart=True)


def _node_id(ray: Any, node: str) -> str:
    """The Ray node id that ``node`` names (a node id, or a live node's IP address)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    for entry in alive:
        if node in (entry.get("NodeID"), entry.get("NodeManagerAddress")):
            return str(entry["NodeID"])
    listing = ", ".join(
        f"{n.get('NodeManagerAddress')} ({str(n.get('NodeID'))[:12]}...)" for n in alive
    )
    raise InputError(f"node {node!r}: no live Ray node has that id or address; nodes: {listing}")
