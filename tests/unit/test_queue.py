"""EventQueue: bounded in events and bytes, items are lists, overflow is counted."""

from __future__ import annotations

import asyncio

from ingest.pipeline.queue import EventQueue
from ingest.stats import Stats
from ingest.vocabulary import Drop


def make(max_events: int = 100, max_bytes: int = 10_000) -> tuple[EventQueue, Stats]:
    stats = Stats()
    return EventQueue(max_events, max_bytes, stats), stats


def queued(queue: EventQueue) -> list[bytes]:
    return [event for chunk in queue.take_all() for event in chunk.events]


def test_put_accounts_events_and_bytes_not_items() -> None:
    queue, stats = make()
    queue.put([b"a", b"bb", b"ccc"], 1.0)
    queue.put([b"dddd"], 2.0)
    assert (queue.events, queue.bytes) == (4, 10)
    assert stats.dropped == {}


def test_bound_in_events_accepts_the_prefix_that_fits() -> None:
    queue, stats = make(max_events=5)
    queue.put([b"1", b"2", b"3"], 0.0)
    queue.put([b"4", b"5", b"6", b"7"], 0.0)
    assert queue.events == 5
    assert stats.dropped == {Drop.QUEUE_FULL: 2}
    queue.put([b"8"], 0.0)  # full: all of it dropped, nothing appended
    assert stats.dropped == {Drop.QUEUE_FULL: 3}
    assert queued(queue) == [b"1", b"2", b"3", b"4", b"5"]


def test_bound_in_bytes_accepts_the_prefix_that_fits() -> None:
    queue, stats = make(max_bytes=10)
    queue.put([b"aaaa", b"bbbb", b"cccc"], 0.0)  # 12 bytes: the third does not fit
    assert (queue.events, queue.bytes) == (2, 8)
    assert stats.dropped == {Drop.QUEUE_FULL: 1}
    queue.put([b"dd"], 0.0)  # exactly fills it
    assert (queue.events, queue.bytes) == (3, 10)
    queue.put([b"e"], 0.0)
    assert stats.dropped == {Drop.QUEUE_FULL: 2}
    assert queued(queue) == [b"aaaa", b"bbbb", b"dd"]


def test_overflow_keeps_order_and_never_skips_ahead() -> None:
    """A prefix, not a best fit: a small event after one that does not fit is
    dropped too, so a sender's events are never reordered."""
    queue, stats = make(max_bytes=10)
    queue.put([b"12345678"], 0.0)
    queue.put([b"abc", b"d"], 0.0)  # "abc" does not fit; "d" would, but follows it
    assert stats.dropped == {Drop.QUEUE_FULL: 2}
    assert queued(queue) == [b"12345678"]


def test_overflow_counts_both_bounds_together() -> None:
    queue, stats = make(max_events=4, max_bytes=6)
    queue.put([b"aa", b"bb", b"c", b"d", b"e"], 0.0)  # 4 events, 6 bytes: both bounds
    assert (queue.events, queue.bytes) == (4, 6)
    assert stats.dropped == {Drop.QUEUE_FULL: 1}


def test_take_whole_chunk() -> None:
    queue, _ = make()
    queue.put([b"a", b"bb"], 1.5)
    queue.put([b"ccc"], 2.5)
    chunk = queue.take(10, 1000, 8)
    assert chunk is not None
    assert (chunk.events, chunk.nbytes, chunk.received_at) == ([b"a", b"bb"], 3, 1.5)
    assert (queue.events, queue.bytes) == (1, 3)
    chunk = queue.take(10, 1000, 8)
    assert chunk is not None and chunk.events == [b"ccc"] and chunk.received_at == 2.5
    assert (queue.events, queue.bytes) == (0, 0)
    assert queue.take(10, 1000, 8) is None


def test_take_splits_a_chunk_by_count() -> None:
    queue, _ = make()
    queue.put([b"a", b"b", b"c", b"d", b"e"], 7.0)
    first = queue.take(2, 1000, 8)
    assert first is not None
    assert (first.events, first.nbytes, first.received_at) == ([b"a", b"b"], 2, 7.0)
    assert (queue.events, queue.bytes) == (3, 3)
    rest = queue.take(10, 1000, 8)
    assert rest is not None
    assert (rest.events, rest.nbytes, rest.received_at) == ([b"c", b"d", b"e"], 3, 7.0)


def test_take_splits_a_chunk_by_bytes_with_overhead() -> None:
    queue, _ = make()
    queue.put([b"x" * 10] * 5, 0.0)
    # 3 events cost 3 * (10 + 8) = 54 <= 60; a 4th would make 72.
    chunk = queue.take(100, 60, 8)
    assert chunk is not None and len(chunk.events) == 3 and chunk.nbytes == 30
    assert (queue.events, queue.bytes) == (2, 20)
    # Exactly at the bound is allowed: 2 * 18 = 36.
    chunk = queue.take(100, 36, 8)
    assert chunk is not None and len(chunk.events) == 2
    assert queue.events == 0


def test_take_whole_chunk_exactly_at_the_byte_bound() -> None:
    queue, _ = make()
    queue.put([b"abcd", b"ef"], 0.0)  # 6 bytes + 2 * 3 overhead = 12
    chunk = queue.take(2, 12, 3)
    assert chunk is not None and chunk.events == [b"abcd", b"ef"]
    queue.put([b"abcd", b"ef"], 0.0)
    chunk = queue.take(2, 11, 3)  # one byte short: only the first fits (4 + 3)
    assert chunk is not None and chunk.events == [b"abcd"]
    assert queued(queue) == [b"ef"]


def test_take_returns_none_when_not_even_the_first_event_fits() -> None:
    queue, _ = make()
    queue.put([b"x" * 100, b"y"], 0.0)
    assert queue.take(10, 107, 8) is None
    assert queue.take(0, 10_000, 8) is None
    assert (queue.events, queue.bytes) == (2, 101)  # untouched
    assert queued(queue) == [b"x" * 100, b"y"]


def test_take_frees_room_for_later_puts() -> None:
    queue, stats = make(max_events=3)
    queue.put([b"a", b"b", b"c"], 0.0)
    assert queue.take(2, 1000, 0) is not None
    queue.put([b"d", b"e", b"f"], 0.0)
    assert stats.dropped == {Drop.QUEUE_FULL: 1}
    assert queued(queue) == [b"c", b"d", b"e"]


async def _not_done_after_yields(task: asyncio.Task[None], yields: int = 20) -> bool:
    for _ in range(yields):
        await asyncio.sleep(0)
    return not task.done()


def test_wait_nonempty_follows_puts_and_takes() -> None:
    async def main() -> None:
        queue, _ = make()
        waiter = asyncio.create_task(queue.wait_nonempty())
        assert await _not_done_after_yields(waiter)
        queue.put([b"a"], 0.0)
        async with asyncio.timeout(5):
            await waiter
        assert queue.take(10, 1000, 0) is not None  # empty again: waiters block
        waiter = asyncio.create_task(queue.wait_nonempty())
        assert await _not_done_after_yields(waiter)
        queue.put([b"b"], 0.0)
        async with asyncio.timeout(5):
            await waiter

    asyncio.run(main())


def test_a_put_that_drops_everything_wakes_nobody() -> None:
    async def main() -> None:
        queue, stats = make(max_bytes=5)
        waiter = asyncio.create_task(queue.wait_nonempty())
        queue.put([b"123456"], 0.0)  # larger than the whole queue
        assert stats.dropped == {Drop.QUEUE_FULL: 1}
        assert await _not_done_after_yields(waiter)
        waiter.cancel()

    asyncio.run(main())


def test_close_wakes_waiters_and_stays_set() -> None:
    async def main() -> None:
        queue, _ = make()
        waiters = [asyncio.create_task(queue.wait_nonempty()) for _ in range(3)]
        assert await _not_done_after_yields(waiters[0])
        queue.close()
        async with asyncio.timeout(5):
            await asyncio.gather(*waiters)
        assert queue.closed
        # Taking the last chunk or draining a closed queue keeps waiters awake,
        # so publishers can see the end instead of sleeping forever.
        queue.put([b"late"], 0.0)
        assert queue.take(10, 1000, 0) is not None
        async with asyncio.timeout(5):
            await queue.wait_nonempty()
        queue.take_all()
        async with asyncio.timeout(5):
            await queue.wait_nonempty()

    asyncio.run(main())


def test_take_all_returns_everything_in_order_and_resets() -> None:
    async def main() -> None:
        queue, _ = make()
        queue.put([b"a", b"b"], 1.0)
        queue.put([b"c"], 2.0)
        assert queue.take(1, 1000, 0) is not None  # leaves a partial head chunk
        chunks = queue.take_all()
        assert [(c.events, c.nbytes, c.received_at) for c in chunks] == [
            ([b"b"], 1, 1.0),
            ([b"c"], 1, 2.0),
        ]
        assert (queue.events, queue.bytes) == (0, 0)
        assert queue.take_all() == []
        assert queue.take(10, 1000, 0) is None
        waiter = asyncio.create_task(queue.wait_nonempty())
        assert await _not_done_after_yields(waiter)
        waiter.cancel()

    asyncio.run(main())


def test_wait_filled_wakes_only_for_what_fills_the_batch_or_the_end() -> None:
    """A lingering filler's wait: puts that leave its batch short do not
    wake it (each wake-up would cost it a new timer); the put that fills it
    by count or by bytes (with the framing overhead), or close, does."""

    async def main() -> None:
        for why in ("count", "bytes", "close"):
            queue = EventQueue(1000, 1 << 20, Stats())
            waiter = asyncio.create_task(queue.wait_filled(5, 100, 8))
            queue.put([b"x"] * 2, 0.0)  # 2 events, 2 + 16 bytes
            for _ in range(10):
                await asyncio.sleep(0)
            assert not waiter.done()
            if why == "count":
                queue.put([b"x"] * 3, 0.0)
            elif why == "bytes":
                queue.put([b"y" * 80], 0.0)  # 82 bytes + 3 x 8
            else:
                queue.close()
            async with asyncio.timeout(5.0):
                await waiter

    asyncio.run(main())
