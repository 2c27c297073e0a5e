"""The push hand-over from a device thread: bounded, never blocking the device, and honest:
delivered frames plus gap counts cover every frame the device produced, once, in order."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.frames import Frame, Gap, StreamEnd, StreamStart
from streamer.sources.push import PushBuffer, PushPolicy, PushSource

PERIOD = 0.01


class ThreadDevice(PushSource):
    """A device thread that offers frames after scripted pauses; ``-k`` in the script is a
    loss of ``k`` frames the device reports itself (a gap marker)."""

    def __init__(self, script: list[float | int], policy: PushPolicy, capacity: int) -> None:
        super().__init__(PushBuffer("test", capacity, policy))
        self.name = "source:thread"
        self.stream, self.media, self.rate, self.period = "s", "video", 100.0, PERIOD
        self.meta = {}
        self.script = script
        self.produced = 0
        self.offered_all = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_device(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        data = np.zeros((2, 2, 3), np.uint8)
        for step in self.script:
            if isinstance(step, int) and step < 0:
                self.buffer.offer(Gap("s", index, -step, index * PERIOD, "device"))
                index += -step
                continue
            time.sleep(float(step))
            self.buffer.offer(Frame("s", index, index * PERIOD, time.monotonic(), data, 100.0))
            index += 1
        self.produced = index
        self.offered_all.set()
        self.buffer.close()

    def _stop_device(self) -> None:
        if self._thread is not None:
            self._thread.join()


STEPS = st.one_of(
    st.just(0.0),
    st.sampled_from([0.0, 0.0005, 0.002]),
    st.integers(min_value=-3, max_value=-1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(STEPS, min_size=1, max_size=60),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.003]), max_size=60),
    policy=st.sampled_from(["latest", "drop-oldest"]),
    capacity=st.integers(min_value=1, max_value=8),
)
def test_frames_and_gaps_cover_every_offered_frame_once_in_order(
    script: list[float | int], pauses: list[float], policy: PushPolicy, capacity: int
) -> None:
    device = ThreadDevice(script, policy, capacity)

    async def consume() -> list[object]:
        items: list[object] = []
        async for item in device:
            items.append(item)
            if pauses:
                await asyncio.sleep(pauses[len(items) % len(pauses)])
        return items

    items = asyncio.run(consume())
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], StreamEnd)
    covered: list[int] = []
    overflow = 0
    for item in items[1:-1]:
        if isinstance(item, Frame):
            covered.append(item.index)
        else:
            assert isinstance(item, Gap)
            covered += range(item.index, item.index + item.count)
            overflow += item.count if item.reason == "source-overflow" else 0
    assert covered == list(range(device.produced))
    assert items[-1].frames == device.produced
    assert overflow == device.buffer.dropped


def test_a_stalled_consumer_never_blocks_the_device_and_keeps_the_newest() -> None:
    """The loop is stalled while the device offers 500 frames: the device finishes anyway
    (no offer waits for the loop), and the newest ``capacity`` frames are what remain."""
    device = ThreadDevice([0.0] * 500, "drop-oldest", 4)

    async def consume() -> list[object]:
        iterator = aiter(device)
        items = [await anext(iterator)]  # StreamStart: the device thread is running
        # the loop is stalled here: an offer that waited for it would never return
        assert device.offered_all.wait(timeout=30)
        items += [item async for item in iterator]
        return items

    items = asyncio.run(consume())
    frames = [i.index for i in items if isinstance(i, Frame)]
    assert frames == [496, 497, 498, 499]
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [(g.index, g.count, g.reason) for g in gaps] == [(0, 496, "source-overflow")]


def test_offer_after_close_is_ignored_and_get_needs_a_loop() -> None:
    buffer = PushBuffer("x", 2, "drop-oldest")
    with pytest.raises(RuntimeError, match="bind"):
        asyncio.run(buffer.get())
    buffer.close()
    buffer.offer(Frame("s", 0, 0.0, 0.0, np.zeros(1), 1.0))

    async def drained() -> object:
        buffer.bind(asyncio.get_running_loop())
        return await buffer.get()

    assert asyncio.run(drained()) is None
