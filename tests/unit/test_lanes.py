"""Lanes: per-(topic, ordering key) FIFOs under one pair of bounds, and the
batching rule that keeps an ordered lane to one request in flight."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.config import PUBSUB_MAX_REQUEST_BYTES
from ingest.pipeline.lanes import LANE_BYTES, LaneBatcher, LaneQueue
from ingest.pipeline.message import Lane, MessageBuilder
from ingest.publish.publisher import Batch
from ingest.publish.pubsub import BodyEncoder
from ingest.stats import Stats
from ingest.vocabulary import Drop

DEADLINE_S = 5.0
LONG_LINGER_S = 30.0  # a test that wrongly lingers hits DEADLINE_S instead
PLAIN: Lane = (0, b"")
USER_A: Lane = (0, b"a")
USER_B: Lane = (0, b"b")
ERRORS: Lane = (1, b"")


def items(lane: Lane, n: int, tag: str = "") -> list[tuple[Lane, bytes]]:
    name = tag or lane[1].decode() or str(lane[0])
    return [(lane, f"{name}{i}".encode()) for i in range(n)]


def batcher(queue: LaneQueue, max_messages: int = 1000, linger_s: float = 0.0) -> LaneBatcher:
    return LaneBatcher(queue, max_messages, PUBSUB_MAX_REQUEST_BYTES, 0, linger_s)


async def fill(lanes: LaneBatcher) -> Batch:
    batch = Batch()
    async with asyncio.timeout(DEADLINE_S):
        assert await lanes.fill(batch)
    return batch


def test_put_keeps_each_lanes_order_and_the_shared_bounds() -> None:
    stats = Stats()
    queue = LaneQueue(5, 1 << 20, stats)
    mixed = [*items(USER_A, 2), *items(USER_B, 2), *items(USER_A, 3, "late")]
    queue.put(mixed, 1.0)
    # One wake-up's items are grouped by lane, each group in its order, the
    # lanes in the order they first appear; the bound (5 events) keeps what
    # still fits, group by group.
    assert queue.events == 5
    assert stats.dropped[Drop.QUEUE_FULL] == 2
    by_lane = {lane: chunk.events for lane, chunk in queue.take_all()}
    assert by_lane == {USER_A: [b"a0", b"a1", b"late0", b"late1", b"late2"]}


def test_overflow_spills_with_its_lane() -> None:
    queue = LaneQueue(1, 1 << 20, Stats())
    spilled: list[tuple[list[bytes], Lane | None]] = []
    queue.spill = lambda events, lane: spilled.append((events, lane))
    queue.put([*items(ERRORS, 2), *items(USER_A, 1)], 1.0)
    assert spilled == [([b"11"], ERRORS), ([b"a0"], USER_A)]
    assert queue.events == 1


def test_a_batch_holds_one_lane_and_lanes_are_served_oldest_first() -> None:
    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats())
        lanes = batcher(queue)
        queue.put([*items(ERRORS, 2), *items(PLAIN, 2), *items(ERRORS, 1, "x")], 1.0)
        first = await fill(lanes)
        assert (first.lane, first.messages) == (ERRORS, [b"10", b"11", b"x0"])
        second = await fill(lanes)
        assert (second.lane, second.messages) == (PLAIN, [b"00", b"01"])

    asyncio.run(main())


def test_an_ordered_lane_has_one_batch_out_until_done() -> None:
    """The heart of ordering: while a batch of key "a" is out (publishing,
    retrying, backing off), later "a" messages wait; other lanes go on."""

    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats())
        lanes = batcher(queue, max_messages=2)
        queue.put([*items(USER_A, 3), *items(USER_B, 1)], 1.0)
        first = await fill(lanes)
        assert (first.lane, first.messages) == (USER_A, [b"a0", b"a1"])
        second = await fill(lanes)  # "a" is held: the next lane, not a2
        assert (second.lane, second.messages) == (USER_B, [b"b0"])
        third = asyncio.create_task(fill(lanes))
        await asyncio.sleep(0.05)  # a filler with only a held lane queued must wait
        assert not third.done()
        lanes.done(first)
        batch = await third
        assert (batch.lane, batch.messages) == (USER_A, [b"a2"])

    asyncio.run(main())


def test_unordered_lanes_are_never_held() -> None:
    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats())
        lanes = batcher(queue, max_messages=2)
        queue.put(items(PLAIN, 4), 1.0)
        first = await fill(lanes)
        second = await fill(lanes)  # without done(first): no key, no order to keep
        assert first.messages + second.messages == [b"00", b"01", b"02", b"03"]

    asyncio.run(main())


def test_a_partial_batch_lingers_until_its_oldest_message_is_old_enough() -> None:
    """Per lane: messages that come while the lane lingers join its batch;
    another lane waiting does not cut the linger short (it lingers too)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = LaneQueue(1000, 1 << 20, Stats())
        linger_s = 0.3
        lanes = batcher(queue, linger_s=linger_s)
        started = loop.time()
        queue.put(items(USER_A, 1), started)
        filling = asyncio.create_task(fill(lanes))
        await asyncio.sleep(0.02)
        queue.put(items(USER_A, 1, "more"), loop.time())
        queue.put(items(USER_B, 1), loop.time())
        await asyncio.sleep(0.02)
        assert not filling.done()
        batch = await filling
        assert loop.time() - started >= linger_s
        assert (batch.lane, batch.messages) == (USER_A, [b"a0", b"more0"])
        assert (await fill(lanes)).lane == USER_B

    asyncio.run(main())


@pytest.mark.parametrize("why", ["full by count", "full by bytes", "half full queue", "closed"])
def test_a_lane_is_ready_at_once_when_it_fills_a_request_or_the_queue_presses(why: str) -> None:
    async def main() -> None:
        now = asyncio.get_running_loop().time()
        queue = LaneQueue(4 if why == "half full queue" else 1000, 1 << 20, Stats())
        lanes = LaneBatcher(
            queue,
            2 if why == "full by count" else 1000,
            20 if why == "full by bytes" else PUBSUB_MAX_REQUEST_BYTES,
            0,
            LONG_LINGER_S,
        )
        queue.put([(USER_A, b"x" * 6), (USER_A, b"y" * 6)], now)
        if why == "closed":
            queue.close()
        batch = await fill(lanes)  # within DEADLINE_S, not LONG_LINGER_S
        assert batch.lane == USER_A

    asyncio.run(main())


@pytest.mark.parametrize("why", ["fills a request", "half fills the queue"])
def test_a_put_that_makes_a_lane_ready_wakes_a_lingering_filler(why: str) -> None:
    """Puts that change nothing for the lingering oldest lane let its filler
    sleep; one that makes a lane ready at once wakes it."""

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        queue = LaneQueue(8, 1 << 20, Stats())
        lanes = batcher(queue, max_messages=3, linger_s=LONG_LINGER_S)
        queue.put(items(USER_A, 1), now)
        filling = asyncio.create_task(fill(lanes))
        await asyncio.sleep(0.02)
        queue.put(items(USER_B, 1), now)  # neither full nor pressing: still lingering
        await asyncio.sleep(0.02)
        assert not filling.done()
        if why == "fills a request":
            queue.put(items(USER_B, 2, "more"), now)
            assert (await filling).lane == USER_B
        else:
            queue.put(items(ERRORS, 2), now)  # 4 of 8 events
            assert (await filling).lane == USER_A

    asyncio.run(main())


def test_a_shorter_linger_applies_to_a_filler_already_waiting() -> None:
    """A reload that shortens the linger: the filler waiting out the old
    one looks again at once."""

    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats())
        lanes = batcher(queue, linger_s=LONG_LINGER_S)
        queue.put(items(USER_A, 1), asyncio.get_running_loop().time())
        filling = asyncio.create_task(fill(lanes))
        await asyncio.sleep(0.02)
        assert not filling.done()
        lanes.set_bounds(1000, PUBSUB_MAX_REQUEST_BYTES, 0.0)
        assert (await filling).lane == USER_A

    asyncio.run(main())


def test_each_lanes_requests_are_bounded_by_the_linger() -> None:
    """Steady traffic on many keys and publishers that are never busy: each
    lane sends at most about one request a linger. Taking a lane as soon as
    a publisher was free made one request per message here (every idle
    cycle went to ever smaller requests)."""
    keys, linger_s, run_s = 20, 0.05, 0.5

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = LaneQueue(10**6, 1 << 30, Stats())
        lanes = batcher(queue, linger_s=linger_s)
        requests: defaultdict[Lane, int] = defaultdict(int)

        async def publisher() -> None:
            while True:
                batch = Batch()
                if not await lanes.fill(batch):
                    return
                requests[batch.lane] += 1  # type: ignore[index]
                lanes.done(batch)

        publishers = [asyncio.create_task(publisher()) for _ in range(4)]
        end = loop.time() + run_s
        sent = 0
        while loop.time() < end:
            queue.put([((0, b"k%d" % i), b"{}") for i in range(keys)], loop.time())
            sent += keys
            await asyncio.sleep(0.001)
        queue.close()
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.gather(*publishers)
        assert sum(requests.values()) < sent / 10
        assert max(requests.values()) <= run_s / linger_s + 3

    asyncio.run(main())


def test_closed_and_empty_ends_the_fill() -> None:
    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats())
        lanes = batcher(queue, linger_s=LONG_LINGER_S)
        waiting = asyncio.create_task(lanes.fill(Batch()))
        await asyncio.sleep(0.02)
        queue.close()
        async with asyncio.timeout(DEADLINE_S):
            assert await waiting is False

    asyncio.run(main())


def test_a_message_larger_than_a_request_goes_alone() -> None:
    """It cannot share a request; sent alone, Pub/Sub judges it, rather than
    the lane stalling forever on a message no batch can take."""

    async def main() -> None:
        queue = LaneQueue(1000, 1 << 30, Stats())
        lanes = LaneBatcher(queue, 1000, 1000, 0, 0.0)
        queue.put([(USER_A, b"x" * 5000), (USER_A, b"y")], 1.0)
        batch = await fill(lanes)
        assert batch.messages == [b"x" * 5000]
        lanes.done(batch)
        assert (await fill(lanes)).messages == [b"y"]

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_publishers_keep_every_keys_order(seed: int) -> None:
    """Publishers that take random time per batch (as requests and retries
    do) still complete each key's messages in the order they were put."""
    rng = random.Random(seed)
    keys = [(0, f"k{i}".encode()) for i in range(5)] + [PLAIN]

    async def main() -> None:
        queue = LaneQueue(100_000, 1 << 30, Stats())
        lanes = batcher(queue, max_messages=7)
        completed: dict[Lane, list[bytes]] = {lane: [] for lane in keys}
        sent: dict[Lane, list[bytes]] = {lane: [] for lane in keys}
        for step in range(40):
            wake_up = []
            for n in range(rng.randrange(1, 30)):
                lane = rng.choice(keys)
                body = f"{step}-{n}".encode()
                sent[lane].append(body)
                wake_up.append((lane, body))
            queue.put(wake_up, float(step))
        queue.close()

        async def publisher() -> None:
            while True:
                batch = Batch()
                if not await lanes.fill(batch):
                    return
                await asyncio.sleep(rng.uniform(0, 0.003))
                assert batch.lane is not None
                completed[batch.lane] += batch.messages
                lanes.done(batch)

        async with asyncio.timeout(DEADLINE_S * 4):
            await asyncio.gather(*(publisher() for _ in range(4)))
        for lane in keys:
            if lane[1]:
                assert completed[lane] == sent[lane], lane
            else:
                assert sorted(completed[lane]) == sorted(sent[lane])

    asyncio.run(main())


@settings(max_examples=50, deadline=None)
@example([200] * 300, 0, "")  # equal bodies: the framing alone decides the last one
@example([60] * 500, 3, "user-1")
@given(
    st.lists(st.integers(0, 3_000), min_size=1, max_size=300),
    st.integers(0, 20),
    st.text(min_size=0, max_size=20),
)
def test_a_full_batch_encodes_within_the_request_byte_bound(
    sizes: list[int], attributes: int, key: str
) -> None:
    """The byte bound counts whole bodies (data, attributes, ordering key)
    plus their framing: the encoded request never exceeds it."""
    topic = "projects/p/topics/a-topic-of-some-length"
    max_request = 20_000  # many messages a request: their framing adds up
    build = MessageBuilder(
        [(f"attribute-{i}", "v" * 20) for i in range(attributes)],
        [],
        defaultdict(int),
        ordering_field="k",
    )

    async def main() -> None:
        queue = LaneQueue(1_000_000, 1 << 30, Stats())
        lanes = LaneBatcher(queue, 1000, max_request, len(topic) + 8, 0.0)
        queue.put([build.build(b"x" * size, {"k": key}) for size in sizes], 1.0)
        queue.close()
        encoder = BodyEncoder(topic)
        while True:
            batch = Batch()
            if not await lanes.fill(batch):
                return
            if len(batch) > 1:  # a lone message larger than a request goes alone
                assert len(encoder.encode(batch.messages)) <= max_request
            lanes.done(batch)

    asyncio.run(main())


def test_each_lane_costs_its_overhead_against_the_byte_bound() -> None:
    """Every event a new ordering key: the structure per lane (~1 KiB) is
    charged, so the byte bound bounds memory, and it is given back when the
    lane empties."""
    stats = Stats()
    queue = LaneQueue(1_000_000, 10 * LANE_BYTES, stats)
    queue.put([((0, b"k%d" % i), b"{}") for i in range(50)], 1.0)
    assert len(queue._lanes) <= 10  # not 50: the bound counted the lanes
    assert queue.bytes <= 10 * LANE_BYTES + LANE_BYTES
    assert stats.dropped[Drop.QUEUE_FULL] == 50 - len(queue._lanes)
    for lane in list(queue._lanes):
        assert queue.take(lane, 10, 1 << 20, 0) is not None
    assert (queue.events, queue.bytes) == (0, 0)


def test_lanes_that_leave_from_the_front_are_not_scanned_again() -> None:
    """Every event a new ordering key: each fill takes the oldest lane, which
    then leaves. A plain dict kept each departed lane's slot, so finding the
    oldest lane scanned all that had left before it: quadratic, ~11.5 s for
    these 150,000 lanes on the development machine, against ~1.5 s now. The
    deadline is generous; only the quadratic scan misses it."""
    lanes_n = 150_000

    async def main() -> None:
        queue = LaneQueue(10 * lanes_n, 1 << 40, Stats())
        lanes = batcher(queue)
        queue.put([((0, b"k%d" % i), b"{}") for i in range(lanes_n)], 1.0)
        queue.close()
        taken = 0
        started = time.monotonic()  # a fill with lanes queued never yields: no timeout() here
        while True:
            batch = Batch()
            if not await lanes.fill(batch):
                break
            taken += len(batch)
            lanes.done(batch)
        assert taken == lanes_n
        assert time.monotonic() - started < 6.0

    asyncio.run(main())
