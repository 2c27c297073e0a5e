"""Bounded channels: block keeps everything in order, latest keeps the newest and says what
it dropped."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.channels import Channel
from streamer.errors import ChannelClosed
from streamer.frames import Frame, Gap, StreamEnd, StreamStart


def frame(stream: str, index: int) -> Frame:
    return Frame(stream, index, index * 0.01, 0.0, np.zeros((4, 1), np.float32), 400.0)


async def drain(channel: Channel[object]) -> list[object]:
    return [item async for item in channel]


async def test_block_waits_when_full_and_keeps_order() -> None:
    channel: Channel[object] = Channel("edge", 2, "block")
    await channel.send(frame("a", 0))
    await channel.send(frame("a", 1))
    third = asyncio.ensure_future(channel.send(frame("a", 2)))
    await asyncio.sleep(0)
    assert not third.done(), "a full block channel must make the sender wait"
    assert channel.stats.depth == 2
    first = await channel.receive()
    await asyncio.wait_for(third, 1)
    channel.close()
    rest = await drain(channel)
    assert [f.index for f in [first, *rest]] == [0, 1, 2]  # type: ignore[attr-defined]
    assert channel.stats.dropped == 0
    assert channel.stats.max_depth == 2


async def test_latest_drops_oldest_frame_and_reports_a_gap() -> None:
    channel: Channel[object] = Channel("cam>model", 1, "latest")
    await channel.send(StreamStart("a", "audio", 400.0))
    receiver = await channel.receive()
    assert isinstance(receiver, StreamStart)
    for index in range(5):
        await channel.send(frame("a", index))  # never waits under latest
    channel.close()
    items = await drain(channel)
    assert len(items) == 2
    gap, newest = items
    assert isinstance(gap, Gap) and isinstance(newest, Frame)
    assert (gap.stream, gap.index, gap.count, gap.reason) == ("a", 0, 4, "overflow:cam>model")
    assert newest.index == 4
    assert channel.stats.dropped == 4


async def test_latest_never_drops_markers_and_newest_wins_per_stream() -> None:
    channel: Channel[object] = Channel("edge", 2, "latest")
    await channel.send(frame("a", 0))
    await channel.send(frame("b", 0))
    await channel.send(frame("a", 1))  # displaces a:0, not the older-in-time b:0
    items = [await channel.receive() for _ in range(3)]
    kinds = [(type(i).__name__, i.stream, i.index) for i in items]  # type: ignore[attr-defined]
    assert kinds == [("Frame", "b", 0), ("Gap", "a", 0), ("Frame", "a", 1)]
    # at most one frame per stream waits: a newer one replaces it even with room to spare
    await channel.send(frame("a", 2))
    await channel.send(frame("a", 3))
    assert channel.stats.depth == 1
    # a marker waits for room instead of displacing a frame
    await channel.send(frame("b", 1))
    end = asyncio.ensure_future(channel.send(StreamEnd("a", 4)))
    await asyncio.sleep(0)
    assert not end.done()
    first = await channel.receive()
    assert isinstance(first, Gap) and (first.index, first.count) == (2, 1)
    assert (await channel.receive()).index == 3  # type: ignore[attr-defined]
    await asyncio.wait_for(end, 1)
    channel.close()
    rest = await drain(channel)
    assert [(type(i).__name__, i.stream) for i in rest] == [("Frame", "b"), ("StreamEnd", "a")]


async def test_send_after_close_is_an_error() -> None:
    channel: Channel[object] = Channel("edge", 1)
    channel.close()
    with pytest.raises(ChannelClosed, match="edge"):
        await channel.send(frame("a", 0))


async def test_channel_with_two_producers_ends_after_both_close() -> None:
    channel: Channel[object] = Channel("edge", 4, producers=2)
    await channel.send(frame("a", 0))
    channel.close()
    await channel.send(frame("b", 0))
    channel.close()
    assert len(await drain(channel)) == 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel("edge", 0)
    with pytest.raises(ValueError, match="policy"):
        Channel("edge", 1, "newest")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 4),
    script=st.lists(st.tuples(st.sampled_from("ab"), st.booleans()), min_size=1, max_size=60),
)
def test_latest_accounts_for_every_frame(
    capacity: int, script: list[tuple[str, bool]]
) -> None:
    """Whatever the interleaving, per stream: frames arrive in order, and the frames plus
    the gaps cover every index sent exactly once."""

    async def scenario() -> dict[str, list[tuple[int, int]]]:
        channel: Channel[object] = Channel("edge", capacity, "latest")
        sent = {"a": 0, "b": 0}
        seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

        def note(item: object) -> None:
            if isinstance(item, Frame):
                seen[item.stream].append((item.index, 1))
            elif isinstance(item, Gap):
                seen[item.stream].append((item.index, item.count))

        for stream, receive in script:
            await channel.send(frame(stream, sent[stream]))
            sent[stream] += 1
            if receive:
                note(await channel.receive())
        rest = asyncio.ensure_future(drain(channel))  # a marker waits for room
        for stream in "ab":
            await channel.send(StreamEnd(stream, sent[stream]))
        channel.close()
        for item in await asyncio.wait_for(rest, 5):
            note(item)
        for stream in "ab":
            covered = [i for start, count in seen[stream] for i in range(start, start + count)]
            assert covered == list(range(sent[stream])), (stream, seen[stream])
        return seen

    asyncio.run(scenario())
