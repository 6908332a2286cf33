"""The request budget (batch.RequestBudget): partial requests bounded across
lanes, each batch at the latest at its maximum latency; and the fillers'
use of it (batch.Batcher, lanes.LaneBatcher): order per key, draining and
full requests unchanged."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import PUBSUB_MAX_REQUEST_BYTES
from ingest.pipeline.batch import PARTIAL_REQUESTS_PER_S, Batcher, RequestBudget
from ingest.pipeline.lanes import LaneBatcher, LaneQueue
from ingest.pipeline.message import Lane
from ingest.pipeline.queue import EventQueue
from ingest.publish.publisher import Batch
from ingest.stats import Stats

DEADLINE_S = 5.0
LONG_LATENCY_S = 30.0  # a test that wrongly waits it hits DEADLINE_S instead


def test_a_token_a_request_at_the_budgets_rate() -> None:
    budget = RequestBudget(10.0, per_s=20.0)
    assert budget.wait_s(0.0, 0.0) == 0.0  # one token to start with
    assert budget.wait_s(0.0, 0.0) == pytest.approx(0.05)  # the next in 1/20 s
    assert budget.wait_s(0.0, 0.025) == pytest.approx(0.025)
    assert budget.wait_s(0.0, 0.05) == 0.0


def test_an_idle_spell_buys_no_burst() -> None:
    budget = RequestBudget(10.0, per_s=20.0)
    assert budget.wait_s(0.0, 100.0) == 0.0
    assert budget.wait_s(100.0, 100.0) > 0.0


def test_a_batch_at_its_maximum_latency_goes_without_a_token() -> None:
    budget = RequestBudget(0.5, per_s=1.0)
    assert budget.wait_s(0.0, 0.0) == 0.0
    assert budget.wait_s(0.1, 0.2) == pytest.approx(
        0.4
    )  # its maximum latency comes before the token
    assert budget.wait_s(0.1, 0.6) == 0.0


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.floats(0, 1.0), st.floats(0, 2.0)), min_size=1, max_size=50))
def test_never_past_the_maximum_latency_and_at_most_the_rate(
    steps: list[tuple[float, float]],
) -> None:
    """Whatever the calls: a wait never ends after the batch's maximum
    latency, and the batches that go before it are at most 1 + rate x time."""
    budget = RequestBudget(1.0, per_s=5.0)
    now = 0.0
    early = 0
    for gap, age in steps:
        now += gap
        since = now - age
        wait_s = budget.wait_s(since, now)
        assert 0.0 <= wait_s <= max(0.0, since + 1.0 - now) + 1e-9
        if wait_s == 0.0 and since + 1.0 > now:
            early += 1
    assert early <= 1 + 5.0 * now + 1e-9


def test_the_default_rate_is_the_documented_one() -> None:
    assert RequestBudget(1.0).per_s == PARTIAL_REQUESTS_PER_S


def keyed(n_keys: int, per_key: int) -> list[tuple[Lane, bytes]]:
    return [
        ((0, b"k%d" % key), b"k%d-%d" % (key, seq))
        for seq in range(per_key)
        for key in range(n_keys)
    ]


def test_many_keys_wait_for_the_budget_in_their_order_a_lone_key_within_its_latency() -> None:
    """100 keys with a message each and a budget of one request a second: the
    first goes at its linger, the others wait (no request per key per
    linger), and each is ready at the latest at its maximum latency."""
    queue = LaneQueue(100_000, 1 << 30, Stats())
    budget = RequestBudget(0.5, per_s=1.0)
    queue.put(keyed(100, 1), 10.0)
    lane, _ = queue.ready_lane(10.0, 0.0, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, budget=budget)
    assert lane == (0, b"k0")
    assert queue.take(lane, 1000, PUBSUB_MAX_REQUEST_BYTES, 0) is not None
    lane, wait_s = queue.ready_lane(10.1, 0.0, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, budget=budget)
    assert lane is None and wait_s == pytest.approx(0.4)  # its latency
    served = []
    while queue.events:
        lane, wait_s = queue.ready_lane(10.5, 0.0, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, budget=budget)
        assert lane is not None
        served.append(lane[1])
        queue.take(lane, 1000, PUBSUB_MAX_REQUEST_BYTES, 0)
    assert served == [b"k%d" % key for key in range(1, 100)]  # oldest first


def test_a_lane_that_fills_a_request_does_not_wait_for_the_budget() -> None:
    queue = LaneQueue(100_000, 1 << 30, Stats())
    budget = RequestBudget(LONG_LATENCY_S, per_s=1.0)
    queue.put(keyed(1, 1), 0.0)
    assert queue.ready_lane(0.0, 0.0, 10, PUBSUB_MAX_REQUEST_BYTES, 0, budget=budget)[0] is not None
    queue.take((0, b"k0"), 10, PUBSUB_MAX_REQUEST_BYTES, 0)
    queue.put(keyed(2, 10), 0.0)  # k1 and k0: ten each, a full request each
    assert queue.ready_lane(0.0, 0.0, 10, PUBSUB_MAX_REQUEST_BYTES, 0, budget=budget)[0] is not None


def test_order_per_key_holds_under_the_budget() -> None:
    """Publishers filling from a keyed queue under a tight budget: every
    key's messages are published in order, each exactly once."""

    async def main() -> None:
        queue = LaneQueue(100_000, 1 << 30, Stats())
        lanes = LaneBatcher(queue, 7, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0, max_latency_s=0.05)
        assert lanes.budget is not None
        published: dict[bytes, list[bytes]] = {}

        async def publisher() -> None:
            while True:
                batch = Batch()
                if not await lanes.fill(batch):
                    return
                assert batch.lane is not None
                await asyncio.sleep(0)  # in flight: another publisher may fill
                published.setdefault(batch.lane[1], []).extend(batch.messages)
                lanes.done(batch)

        loop = asyncio.get_running_loop()
        workers = [asyncio.create_task(publisher()) for _ in range(4)]
        sent = keyed(20, 30)
        for start in range(0, len(sent), 37):
            queue.put(sent[start : start + 37], loop.time())
            await asyncio.sleep(0.001)
        queue.close()
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.gather(*workers)
        assert published == {
            b"k%d" % key: [b"k%d-%d" % (key, s) for s in range(30)] for key in range(20)
        }

    asyncio.run(main())


def test_draining_does_not_wait_for_the_budget() -> None:
    """A closed queue (the drain at shutdown): partial batches go at once,
    for lanes and for the plain path, whatever the maximum latency."""

    async def main() -> None:
        queue = LaneQueue(100_000, 1 << 30, Stats())
        lanes = LaneBatcher(
            queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0, max_latency_s=LONG_LATENCY_S
        )
        plain = EventQueue(100_000, 1 << 30, Stats())
        batcher = Batcher(
            plain, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0, max_latency_s=LONG_LATENCY_S
        )
        now = asyncio.get_running_loop().time()
        queue.put(keyed(3, 2), now)
        plain.put([b"a", b"b"], now)
        async with asyncio.timeout(DEADLINE_S):
            assert await lanes.fill(Batch())  # the budget's one token
            assert await batcher.fill(Batch())
            plain.put([b"c"], now)
            second = asyncio.create_task(lanes.fill(Batch()))
            third = asyncio.create_task(batcher.fill(Batch()))
            await asyncio.sleep(0.01)
            assert not second.done() and not third.done()  # waiting for the budget
            queue.close()
            plain.close()
            assert await second and await third

    asyncio.run(main())


def test_a_plain_batch_waits_for_the_budget_then_goes_within_its_latency() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = EventQueue(100_000, 1 << 30, Stats())
        max_latency_s = 0.2
        batcher = Batcher(
            queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0, max_latency_s=max_latency_s
        )
        assert batcher.budget is not None
        batcher.budget.per_s = 0.001  # a token a quarter hour: only the latency ends the wait
        queue.put([b"first"], loop.time())
        async with asyncio.timeout(DEADLINE_S):
            assert await batcher.fill(Batch())  # the one token
            started = loop.time()
            queue.put([b"lone"], started)
            batch = Batch()
            assert await batcher.fill(batch)
        assert batch.messages == [b"lone"]
        assert max_latency_s * 0.9 <= loop.time() - started < DEADLINE_S

    asyncio.run(main())
