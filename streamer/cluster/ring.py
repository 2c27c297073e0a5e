"""Consistent hashing of stream ids onto workers.

Each worker holds :data:`REPLICAS` points on a ring of 64-bit hashes; a stream belongs to
the worker of the first point at or after its own hash. Adding a worker moves only the
streams that fall to its points (about ``1 / n`` of them); removing one moves only its
own streams. The hash is BLAKE2b of the UTF-8 id, so every process (and every run)
places a stream the same way.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

#: Points per worker: more points spread streams more evenly (about +-10 % at 64).
REPLICAS = 64


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """Workers (named by strings) on a hash ring; :meth:`owner` places a stream."""

    def __init__(self, workers: Iterable[str] = (), replicas: int = REPLICAS) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, not {replicas}")
        self.replicas = replicas
        self._points: list[int] = []
        self._owners: list[str] = []
        self._workers: set[str] = set()
        for worker in workers:
            self.add(worker)

    @property
    def workers(self) -> list[str]:
        """The workers on the ring, sorted."""
        return sorted(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def __contains__(self, worker: object) -> bool:
        return worker in self._workers

    def add(self, worker: str) -> None:
        if worker in self._workers:
            raise ValueError(f"worker {worker!r} is on the ring already")
        self._workers.add(worker)
        for replica in range(self.replicas):
            point = _hash(f"{worker}#{replica}")
            at = bisect.bisect_left(self._points, point)
            self._points.insert(at, point)
            self._owners.insert(at, worker)

    def remove(self, worker: str) -> None:
        if worker not in self._workers:
            raise ValueError(f"worker {worker!r} is not on the ring")
        self._workers.discard(worker)
        kept = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != worker]
        self._points = [p for p, _ in kept]
        self._owners = [o for _, o in kept]

    def owner(self, stream: str) -> str:
        """The worker that owns ``stream``."""
        if not self._points:
            raise LookupError("no worker on the ring")
        at = bisect.bisect_left(self._points, _hash(stream))
        return self._owners[at % len(self._points)]
