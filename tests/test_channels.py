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


def kinds(items: list[object]) -> list[tuple[str, str, int]]:
    """(type, stream, index or frames) of each item, for compact assertions."""
    return [
        (type(i).__name__, i.stream, i.frames if isinstance(i, StreamEnd) else i.index)  # type: ignore[attr-defined]
        for i in items
        if not isinstance(i, StreamStart)
    ]


async def test_latest_hands_out_a_gap_before_its_streams_end_never_after() -> None:
    # a gap recorded after the stream's end was queued: it comes out before the end
    channel: Channel[object] = Channel("edge", 2, "latest")
    await channel.send(frame("a", 5))
    await channel.send(StreamEnd("a", 6))
    await channel.send(frame("b", 0))  # full: displaces a:5, which sits before a's end
    channel.close()
    assert kinds(await drain(channel)) == [
        ("Gap", "a", 5),
        ("StreamEnd", "a", 6),
        ("Frame", "b", 0),
    ]
    # a stream id that starts again after its end: the new run's gap stays in the new run
    channel = Channel("edge", 3, "latest")
    await channel.send(StreamEnd("a", 0))
    await channel.send(StreamStart("a", "audio", 400.0))
    await channel.send(frame("a", 0))
    await channel.send(frame("a", 1))  # replaces a:0 while the earlier end still waits
    channel.close()
    assert kinds(await drain(channel)) == [
        ("StreamEnd", "a", 0),
        ("Gap", "a", 0),
        ("Frame", "a", 1),
    ]
    # gaps still pending at the close, with other streams' items buffered: a stream with
    # no later item gets its gap at the close, after everything else
    channel = Channel("edge", 2, "latest")
    await channel.send(frame("a", 0))
    await channel.send(frame("b", 0))
    await channel.send(frame("c", 0))  # displaces a:0
    await channel.send(frame("d", 0))  # displaces b:0
    taken = channel.take_ready()
    await channel.send(StreamEnd("c", 1))
    await channel.send(frame("e", 0))
    channel.close()
    items = [*taken, *await drain(channel)]
    assert kinds(items) == [
        ("Frame", "c", 0),
        ("Frame", "d", 0),
        ("StreamEnd", "c", 1),
        ("Frame", "e", 0),
        ("Gap", "a", 0),
        ("Gap", "b", 0),
    ]


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


Op = tuple[str, str]  # (action, stream)
ACTIONS = ["frame", "frame", "receive", "gap", "restart"]  # frames twice as likely


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 4),
    script=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.sampled_from("ab")),
        min_size=1,
        max_size=60,
    ),
    ends=st.booleans(),
)
def test_latest_accounts_for_every_frame(capacity: int, script: list[Op], ends: bool) -> None:
    """Whatever the interleaving, per stream and per run of the stream (StreamStart ..
    StreamEnd; a stream id may start again after its end): frames and source gaps arrive
    in order, frames plus gaps cover every index sent exactly once, and no overflow gap of
    a run is handed out after that run's StreamEnd (nor before it, into the next run)."""

    async def scenario() -> None:
        channel: Channel[object] = Channel("edge", capacity, "latest")
        sent: dict[str, list[int]] = {"a": [0], "b": [0]}  # frames per run, per stream
        seen: dict[str, list[list[tuple[int, int]]]] = {"a": [[]], "b": [[]]}
        ended: dict[str, list[int]] = {"a": [], "b": []}  # StreamEnd.frames, per run

        def note(item: object) -> None:
            if isinstance(item, StreamEnd):
                ended[item.stream].append(item.frames)
                seen[item.stream].append([])
            elif isinstance(item, Frame):
                seen[item.stream][-1].append((item.index, 1))
            elif isinstance(item, Gap):
                seen[item.stream][-1].append((item.index, item.count))

        async def send(item: object) -> None:
            # a marker waits for room, and so does a frame when only markers are queued
            sending = asyncio.ensure_future(channel.send(item))
            await asyncio.sleep(0)
            while not sending.done():
                note(await channel.receive())
                await asyncio.sleep(0)
            await sending

        for stream in "ab":
            await send(StreamStart(stream, "audio", 400.0))
        for action, stream in script:
            index = sent[stream][-1]
            if action == "frame":
                await send(frame(stream, index))
                sent[stream][-1] += 1
            elif action == "gap":
                await send(Gap(stream, index, 2, index * 0.01, "source"))
                sent[stream][-1] += 2
            elif action == "restart":
                await send(StreamEnd(stream, index))
                await send(StreamStart(stream, "audio", 400.0))
                sent[stream].append(0)
            else:
                for item in channel.take_ready(1):
                    note(item)
        rest = asyncio.ensure_future(drain(channel))
        if ends:
            for stream in "ab":
                await channel.send(StreamEnd(stream, sent[stream][-1]))
        channel.close()
        for item in await asyncio.wait_for(rest, 5):
            note(item)
        for stream in "ab":
            runs = seen[stream] if not ends else seen[stream][:-1]
            assert not ends or seen[stream][-1] == [], (stream, "after the last end", seen[stream])
            assert ended[stream] == (sent[stream] if ends else sent[stream][:-1]), stream
            for n, (run, count) in enumerate(zip(runs, sent[stream], strict=True)):
                covered = [i for start, length in run for i in range(start, start + length)]
                assert covered == list(range(count)), (stream, n, seen[stream])

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 6),
    batches=st.lists(st.integers(0, 9), max_size=8),
    policy=st.sampled_from(["block", "latest"]),
)
def test_send_many_delivers_what_sends_one_by_one_deliver(
    capacity: int, batches: list[int], policy: str
) -> None:
    """Batches through ``send_many`` into a small channel with a slow receiver arrive as
    the same items, in the same order, with the same counts, as item-by-item sends; the
    sender waits for room (block) instead of overfilling."""

    async def run(batched: bool) -> tuple[list[object], int, int]:
        channel: Channel[object] = Channel("edge", capacity, policy)  # type: ignore[arg-type]
        got: list[object] = []

        async def receive() -> None:
            async for item in channel:
                assert channel.stats.depth <= capacity
                got.append(item)
                await asyncio.sleep(0)

        async def send() -> None:
            n = 0
            for size in batches:
                items = [StreamEnd(f"s{n + i}", frames=0) for i in range(size)]
                n += size
                if batched:
                    await channel.send_many(items)
                else:
                    for item in items:
                        await channel.send(item)
            channel.close()

        async with asyncio.TaskGroup() as group:
            group.create_task(receive())
            group.create_task(send())
        return got, channel.stats.sent, channel.stats.max_depth

    one, many = asyncio.run(run(False)), asyncio.run(run(True))
    assert [i.stream for i in many[0]] == [i.stream for i in one[0]]  # type: ignore[attr-defined]
    assert many[1] == one[1] == sum(batches)
    assert many[2] <= capacity
