"""Batcher.fill: close a batch on count, the 1000 cap, bytes, or linger."""

from __future__ import annotations

import asyncio

from ingest.config import PUBSUB_MAX_REQUEST_BYTES, PUBSUB_MAX_REQUEST_MESSAGES
from ingest.pipeline.batch import MESSAGE_OVERHEAD_BYTES, Batcher
from ingest.pipeline.queue import EventQueue
from ingest.publish.publisher import Batch
from ingest.publish.pubsub import RequestEncoder
from ingest.stats import Stats

LONG_LINGER_S = 30.0  # a test that wrongly lingers hits its 5 s deadline instead
DEADLINE_S = 5.0


def make_queue() -> EventQueue:
    return EventQueue(1_000_000, 1 << 30, Stats())


def events(n: int, size: int = 10, tag: str = "e") -> list[bytes]:
    return [f"{tag}{i}".encode().ljust(size, b".") for i in range(n)]


async def fill(batcher: Batcher) -> tuple[bool, Batch]:
    batch = Batch()
    async with asyncio.timeout(DEADLINE_S):
        more = await batcher.fill(batch)
    return more, batch


async def until_taken(queue: EventQueue) -> None:
    """Yield until a filler has taken everything queued (bounded).

    A poll, because the queue has no "emptied" event; it only yields the loop.
    """
    async with asyncio.timeout(DEADLINE_S):
        while queue.events:  # noqa: ASYNC110
            await asyncio.sleep(0)


def test_closes_on_count_without_lingering() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 10, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        sent = events(25)
        queue.put(sent, 1.0)
        got: list[bytes] = []
        for expected in (10, 10):
            more, batch = await fill(batcher)
            assert more and len(batch) == expected
            got += batch.messages
        queue.close()
        more, batch = await fill(batcher)  # the rest, at once: closed
        assert more and len(batch) == 5
        got += batch.messages
        assert got == sent
        assert await fill(batcher) == (False, Batch())

    asyncio.run(main())


def test_the_1000_message_cap() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(
            queue, PUBSUB_MAX_REQUEST_MESSAGES, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S
        )
        for start in range(0, 2500, 250):  # many chunks, one batch spans several
            queue.put(events(250, tag=f"c{start}-"), float(start))
        sizes = []
        for _ in range(2):
            more, batch = await fill(batcher)
            assert more
            sizes.append(len(batch))
        queue.close()
        more, batch = await fill(batcher)
        sizes.append(len(batch))
        assert sizes == [1000, 1000, 500]

    asyncio.run(main())


def test_closes_on_bytes_with_per_message_overhead() -> None:
    async def main() -> None:
        queue = make_queue()
        max_request, reserved = 1000, 100
        batcher = Batcher(queue, 1000, max_request, reserved, LONG_LINGER_S)
        queue.put(events(30, size=92), 0.0)  # each costs 92 + 8 = 100 of the 900
        more, batch = await fill(batcher)
        assert more and len(batch) == 9
        assert batch.nbytes == 9 * 92
        assert batch.nbytes + MESSAGE_OVERHEAD_BYTES * len(batch) <= max_request - reserved
        assert queue.events == 21

    asyncio.run(main())


def test_byte_bound_holds_for_the_encoded_request() -> None:
    """With the topic reserved as the daemon reserves it, the encoded request
    never exceeds the byte bound, across mixed sizes and chunk boundaries."""

    async def main() -> None:
        topic = "projects/p/topics/" + "t" * 200
        encoder = RequestEncoder(topic)
        max_request = 50_000
        reserved = len(topic.encode()) + 8
        queue = make_queue()
        batcher = Batcher(queue, 1000, max_request, reserved, 0.0)
        sizes = [1, 100, 127, 128, 5000, 16383, 16384, 3, 9000, 20_000, 70, 12_000]
        sent = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes * 5)]
        for i in range(0, len(sent), 7):
            queue.put(sent[i : i + 7], 0.0)
        queue.close()
        got: list[bytes] = []
        while True:
            more, batch = await fill(batcher)
            if not more:
                break
            request = encoder.encode(batch.messages)
            assert len(request) <= max_request
            # It closed only because the next message would break the rule.
            if len(got) + len(batch) < len(sent):
                nxt = sent[len(got) + len(batch)]
                cost = batch.nbytes + len(nxt) + MESSAGE_OVERHEAD_BYTES * (len(batch) + 1)
                assert cost > max_request - reserved
            got += batch.messages
        assert got == sent

    asyncio.run(main())


def test_closes_on_linger_with_a_partial_batch() -> None:
    async def main() -> None:
        queue = make_queue()
        linger_s = 0.2
        batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, linger_s)
        loop = asyncio.get_running_loop()
        queue.put(events(3), loop.time())
        started = loop.time()
        task = asyncio.create_task(fill(batcher))
        await until_taken(queue)  # it took them; events arriving now join the batch
        queue.put(events(2, tag="late"), loop.time())
        more, batch = await task
        elapsed = loop.time() - started
        assert more and batch.messages == events(3) + events(2, tag="late")
        assert elapsed >= linger_s * 0.9  # it did wait for more (no upper bound asserted)
        assert queue.events == 0 and not queue.closed

    asyncio.run(main())


def test_zero_linger_returns_what_is_queued() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0)
        queue.put(events(3), 0.0)
        queue.put(events(4, tag="x"), 0.0)
        more, batch = await fill(batcher)
        assert more and batch.messages == events(3) + events(4, tag="x")

    asyncio.run(main())


def test_splits_a_chunk_across_batches_keeping_its_timestamp() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 10, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        queue.put(events(4, tag="a"), 1.0)
        queue.put(events(15, tag="b"), 2.0)
        queue.close()
        more, first = await fill(batcher)
        assert more and first.messages == events(4, tag="a") + events(15, tag="b")[:6]
        assert (first.oldest_received_at, first.newest_received_at) == (1.0, 2.0)
        more, second = await fill(batcher)
        assert more and second.messages == events(15, tag="b")[6:]
        assert (second.oldest_received_at, second.newest_received_at) == (2.0, 2.0)

    asyncio.run(main())


def test_returns_false_when_closed_and_empty() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 10, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        waiting = asyncio.create_task(fill(batcher))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not waiting.done()  # an empty open queue: it waits
        queue.close()
        assert await waiting == (False, Batch())
        assert await fill(batcher) == (False, Batch())

    asyncio.run(main())


def test_returns_at_once_when_closed_with_a_partial_batch() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        queue.put(events(3), 0.0)
        task = asyncio.create_task(fill(batcher))
        await until_taken(queue)  # it took them and now lingers
        queue.close()  # the drain: no waiting out a 30 s linger
        more, batch = await task
        assert more and len(batch) == 3

    asyncio.run(main())


def test_one_filler_at_a_time() -> None:
    """Two publishers under light load: one lingers on a partial batch, the other
    waits its turn instead of starting a second partial batch."""

    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        a, b = Batch(), Batch()
        task_a = asyncio.create_task(batcher.fill(a))
        queue.put(events(2, tag="x"), 0.0)
        await until_taken(queue)  # A holds a partial batch and lingers
        # B's first step is scheduled before A's wake-up: without the fill
        # lock B would take these events into a second partial batch.
        task_b = asyncio.create_task(batcher.fill(b))
        queue.put(events(2, tag="y"), 0.0)
        for _ in range(10):
            await asyncio.sleep(0)
        # A lingers on (a put that does not fill its batch leaves it
        # asleep), and B has not taken them into a batch of its own.
        assert a.messages == events(2, tag="x") and queue.events == 2
        assert b.messages == []
        queue.close()
        async with asyncio.timeout(DEADLINE_S):
            assert await asyncio.gather(task_a, task_b) == [True, False]
        assert a.messages == events(2, tag="x") + events(2, tag="y")
        assert b.messages == []

    asyncio.run(main())


def test_after_a_full_batch_the_next_filler_takes_the_rest() -> None:
    async def main() -> None:
        queue = make_queue()
        batcher = Batcher(queue, 5, PUBSUB_MAX_REQUEST_BYTES, 0, LONG_LINGER_S)
        queue.put(events(12), 0.0)
        async with asyncio.timeout(DEADLINE_S):
            a, b = Batch(), Batch()
            assert await asyncio.gather(batcher.fill(a), batcher.fill(b)) == [True, True]
        assert (len(a), len(b)) == (5, 5)
        assert a.messages + b.messages == events(12)[:10]

    asyncio.run(main())
