"""The publisher pool: retry classification, bisecting, retries and shutdown.

The empty-message case runs against the real emulator. The other faults run
against FakePublisher below, because the emulator cannot produce them.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import grpc.aio
import pytest

from ingest.config import PUBSUB_MAX_REQUEST_BYTES
from ingest.pipeline.batch import Batcher
from ingest.pipeline.queue import EventQueue
from ingest.publish import publisher
from ingest.publish.publisher import (
    Batch,
    PublisherPool,
    Retry,
    Spill,
    backoff_s,
    classify,
)
from ingest.publish.pubsub import PubSubClient
from ingest.stats import Stats
from ingest.vocabulary import Drop
from tests.helpers import PublishResponse, PubSubNames, publish_server, serving
from tools.testing.emulator import Emulator

TOPIC = "projects/fake/topics/events"
DEADLINE_S = 20.0  # bounds every wait; generous for a loaded CI box
TRANSIENT = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
]
SINK_UNAVAILABLE = [
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
]


# ------------------------------------------------------------ classification
@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_codes(code: grpc.StatusCode) -> None:
    assert classify(code) is Retry.TRANSIENT


def test_invalid_argument_splits() -> None:
    assert classify(grpc.StatusCode.INVALID_ARGUMENT) is Retry.SPLIT


@pytest.mark.parametrize(
    "code",
    [
        *SINK_UNAVAILABLE,
        # Codes outside the table keep the events too: never drop on a surprise.
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.ALREADY_EXISTS,
    ],
)
def test_sink_unavailable_codes(code: grpc.StatusCode) -> None:
    assert classify(code) is Retry.SINK_UNAVAILABLE


def test_only_invalid_argument_can_drop() -> None:
    splitting = [code for code in grpc.StatusCode if classify(code) is Retry.SPLIT]
    assert splitting == [grpc.StatusCode.INVALID_ARGUMENT]


def test_backoff_grows_is_jittered_and_capped_at_5s() -> None:
    rng = random.Random(1)
    for attempt in range(0, 2000):  # a long outage must not overflow the float
        ceiling = min(5.0, 0.1 * 2 ** min(attempt, 64))
        delay = backoff_s(attempt, rng)
        assert ceiling / 2 <= delay <= ceiling <= 5.0
    first = [backoff_s(0, rng) for _ in range(200)]
    assert min(first) >= 0.05 and max(first) <= 0.1
    capped = [backoff_s(50, rng) for _ in range(200)]
    assert max(capped) <= 5.0
    assert len(set(capped)) > 100  # jittered, not a constant
    assert max(capped) - min(capped) > 1.0  # spread over [2.5, 5]


# ------------------------------------------------------------------ helpers
def make_pool(
    channel: grpc.aio.Channel,
    topic: str,
    *,
    client: PubSubClient | None = None,
    spill: Spill | None = None,
) -> tuple[PublisherPool, Stats, EventQueue]:
    stats = Stats()
    queue = EventQueue(1_000_000, 1 << 30, stats)
    batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, len(topic) + 8, 0.0)
    client = client or PubSubClient(channel, topic)
    pool = PublisherPool(client, batcher, stats, 5.0, rng=random.Random(7), spill=spill)
    return pool, stats, queue


def batch_of(messages: list[bytes]) -> Batch:
    return Batch(messages=list(messages), nbytes=sum(map(len, messages)))


# ----------------------------------------------------------- real emulator
def test_empty_message_is_bisected_out_against_the_emulator(
    emulator: Emulator, pubsub: PubSubNames
) -> None:
    """The emulator rejects the whole request for one empty message; the
    publisher bisects and delivers every other message."""
    good = [f'{{"n":{i}}}'.encode() for i in range(8)]
    messages = [*good[:3], b"", *good[3:]]  # 9 messages, the empty one 4th

    async def main() -> tuple[Stats, Batch]:
        async with grpc.aio.insecure_channel(emulator.host) as channel:
            pool, stats, _ = make_pool(channel, pubsub.topic)
            batch = batch_of(messages)
            async with asyncio.timeout(DEADLINE_S):
                await pool.publish(batch)
            return stats, batch

    stats, batch = asyncio.run(main())
    assert stats.published == 8
    assert dict(stats.dropped) == {Drop.INVALID_MESSAGE: 1}
    assert batch.resolved == len(messages)
    # Bisected, not retried one by one: [9] [4] [2] [1] fail, [5] [2] [1] pass.
    assert dict(stats.publish_requests) == {"INVALID_ARGUMENT": 4, "OK": 3}
    assert sum(stats.publish_retries.values()) == 0
    delivered = emulator.pull_until(pubsub.subscription, len(good))
    assert Counter(delivered) == Counter(good)
    assert emulator.pull_quiet(pubsub.subscription, quiet_s=0.5) == []


# ---------------------------------------------------------------- the fake
Rule = Callable[[int, list[bytes]], grpc.StatusCode]


class FakePublisher:
    """A fake Pub/Sub Publish endpoint: a grpc.aio server on 127.0.0.1.

    A fake, not the emulator, because the emulator gives no answer at all to
    requests over ~10 MB (the client sees DEADLINE_EXCEEDED) and cannot be made
    to reject particular messages, fail transiently or deny permission on cue.
    ``rule(call_index, messages)`` picks each call's status code; every call is
    recorded, and the messages of OK calls are what was "delivered".
    """

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.calls: list[tuple[grpc.StatusCode, list[bytes]]] = []
        self.delivered: list[bytes] = []
        self.called = asyncio.Event()
        self.on_call: Callable[[], None] = lambda: None
        self.server, self.port = publish_server(self._publish)

    async def _publish(self, request: object, context: grpc.aio.ServicerContext) -> object:
        assert request.topic == TOPIC  # type: ignore[attr-defined]
        messages = [m.data for m in request.messages]  # type: ignore[attr-defined]
        code = self.rule(len(self.calls), messages)
        self.calls.append((code, messages))
        self.on_call()
        self.called.set()
        if code is not grpc.StatusCode.OK:
            await context.abort(code, f"fake says {code.name}")
        self.delivered += messages
        return PublishResponse(message_ids=[str(i) for i in range(len(messages))])

    def codes(self) -> Counter[str]:
        return Counter(code.name for code, _ in self.calls)


@asynccontextmanager
async def fake_publisher(rule: Rule) -> AsyncIterator[tuple[FakePublisher, grpc.aio.Channel]]:
    fake = FakePublisher(rule)
    async with serving(fake) as channel:
        yield fake, channel


async def run_until_drained(pool: PublisherPool, queue: EventQueue) -> None:
    queue.close()
    async with asyncio.timeout(DEADLINE_S):
        await pool.run_worker(0)


def assert_identity(stats: Stats, pool: PublisherPool, queue: EventQueue, received: int) -> None:
    assert received == (
        stats.published + stats.unconfirmed + stats.dropped_total() + queue.events + pool.in_flight
    )


def bad_rule(call: int, messages: list[bytes]) -> grpc.StatusCode:
    return grpc.StatusCode.INVALID_ARGUMENT if b"bad" in messages else grpc.StatusCode.OK


def test_bisect_drops_exactly_the_bad_messages() -> None:
    rng = random.Random(42)

    async def main() -> None:
        async with fake_publisher(bad_rule) as (fake, channel):
            for size, bad in [(1, 1), (2, 1), (17, 3), (100, 5), (1000, 7), (64, 64)]:
                fake.delivered.clear()
                good = [f"m{size}-{i}".encode() for i in range(size - bad)]
                messages = good[:]
                for _ in range(bad):
                    messages.insert(rng.randrange(len(messages) + 1), b"bad")
                pool, stats, _ = make_pool(channel, TOPIC)
                batch = batch_of(messages)
                async with asyncio.timeout(DEADLINE_S):
                    await pool.publish(batch)
                assert fake.delivered == good  # each once, in order
                assert stats.published == len(good)
                assert dict(stats.dropped) == {Drop.INVALID_MESSAGE: bad}
                assert batch.resolved == size
                assert sum(stats.publish_retries.values()) == 0

    asyncio.run(main())


def test_transient_failures_are_retried_without_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher, "BACKOFF_INITIAL_S", 0.001)
    k = 3
    sent = [f"e{i}".encode() for i in range(50)]

    def rule(call: int, messages: list[bytes]) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE if call < k else grpc.StatusCode.OK

    async def main() -> None:
        async with fake_publisher(rule) as (fake, channel):
            pool, stats, queue = make_pool(channel, TOPIC)
            queue.put(sent, 0.0)
            await run_until_drained(pool, queue)
            assert fake.delivered == sent
            assert [messages for _, messages in fake.calls] == [sent] * (k + 1)  # same request
            assert fake.codes() == {"UNAVAILABLE": k, "OK": 1}
            assert dict(stats.publish_requests) == {"UNAVAILABLE": k, "OK": 1}
            assert sum(stats.publish_retries.values()) == k
            assert stats.published == len(sent)
            assert stats.dropped_total() == 0
            assert pool.in_flight == 0
            assert_identity(stats, pool, queue, len(sent))

    asyncio.run(main())


@pytest.mark.parametrize("code", SINK_UNAVAILABLE)
def test_sink_unavailable_keeps_the_events(
    monkeypatch: pytest.MonkeyPatch, code: grpc.StatusCode
) -> None:
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", 0.01)
    failures = 3
    sent = [f"e{i}".encode() for i in range(20)]

    def rule(call: int, messages: list[bytes]) -> grpc.StatusCode:
        return code if call < failures else grpc.StatusCode.OK

    async def main() -> None:
        async with fake_publisher(rule) as (fake, channel):
            pool, stats, queue = make_pool(channel, TOPIC)
            in_flight_seen: list[int] = []
            fake.on_call = lambda: in_flight_seen.append(pool.in_flight)
            queue.put(sent, 0.0)
            await run_until_drained(pool, queue)
            # While the sink was unavailable the events stayed in flight.
            assert in_flight_seen == [len(sent)] * (failures + 1)
            assert fake.delivered == sent
            assert dict(stats.publish_requests) == {code.name: failures, "OK": 1}
            assert sum(stats.publish_retries.values()) == failures
            assert stats.dropped_total() == 0
            assert stats.published == len(sent)
            assert pool.in_flight == 0

    asyncio.run(main())


def test_cancel_while_retrying_counts_the_unresolved_as_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drain deadline cancels a worker mid-retry: what its batch still held
    is dropped as ``shutdown``; what it had already published or dropped is not."""
    monkeypatch.setattr(publisher, "BACKOFF_INITIAL_S", 0.001)
    sent = [b"a", b"b", b"bad", b"stuck"]

    def rule(call: int, messages: list[bytes]) -> grpc.StatusCode:
        if b"bad" in messages:
            return grpc.StatusCode.INVALID_ARGUMENT
        if b"stuck" in messages:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.OK

    async def main() -> None:
        async with fake_publisher(rule) as (fake, channel):
            pool, stats, queue = make_pool(channel, TOPIC)
            queue.put(sent, 0.0)
            worker = asyncio.create_task(pool.run_worker(0))
            async with asyncio.timeout(DEADLINE_S):
                while fake.codes()["UNAVAILABLE"] < 3:  # it is retrying "stuck"
                    fake.called.clear()
                    await fake.called.wait()
            assert pool.in_flight == 1
            assert_identity(stats, pool, queue, len(sent))
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(DEADLINE_S):
                    await worker
            assert fake.delivered == [b"a", b"b"]
            assert stats.published == 2
            # "stuck" was cut off between attempts (dropped) or awaiting an
            # answer (unconfirmed): which one depends on where the cancel fell.
            assert stats.dropped[Drop.INVALID_MESSAGE] == 1
            assert stats.dropped[Drop.SHUTDOWN] + stats.unconfirmed == 1
            assert pool.in_flight == 0
            assert_identity(stats, pool, queue, len(sent))

    asyncio.run(main())


def test_cancel_while_waiting_for_events_drops_nothing() -> None:
    async def main() -> None:
        async with fake_publisher(bad_rule) as (_, channel):
            pool, stats, _ = make_pool(channel, TOPIC)
            worker = asyncio.create_task(pool.run_worker(0))
            for _ in range(10):
                await asyncio.sleep(0)
            assert not worker.done()
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(DEADLINE_S):
                    await worker
            assert stats.dropped_total() == 0
            assert pool.in_flight == 0

    asyncio.run(main())


def test_a_failing_worker_counts_what_it_held() -> None:
    """A bug inside publish (here: the client raises something that is not an
    RPC error) ends the worker, which the daemon treats as a crash; the events
    it held are counted as ``publisher_crashed``, not silently gone."""

    class BrokenClient(PubSubClient):
        async def publish(self, request: bytes, timeout_s: float) -> None:
            raise RuntimeError("a bug")

    async def main() -> None:
        async with fake_publisher(bad_rule) as (_, channel):
            stats = Stats()
            queue = EventQueue(1_000, 1 << 20, stats)
            batcher = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, len(TOPIC) + 8, 0.0)
            pool = PublisherPool(BrokenClient(channel, TOPIC), batcher, stats, 5.0)
            queue.put([b"x", b"y", b"z"], 0.0)
            with pytest.raises(RuntimeError, match="a bug"):
                async with asyncio.timeout(DEADLINE_S):
                    await pool.run_worker(0)
            assert dict(stats.dropped) == {Drop.PUBLISHER_CRASHED: 3}
            assert pool.in_flight == 0
            assert_identity(stats, pool, queue, 3)

    asyncio.run(main())


class HangingClient(PubSubClient):
    """Stands in for a Pub/Sub that took the request and never answers (a
    fake: the drain deadline must fall inside one attempt, on cue)."""

    def __init__(self, channel: grpc.aio.Channel, topic: str) -> None:
        super().__init__(channel, topic)
        self.sent = asyncio.Event()

    async def publish(self, request: bytes, timeout_s: float) -> None:
        self.sent.set()
        await asyncio.Event().wait()


async def cancel_on_the_wire(
    events: list[bytes],
    spill: Spill | None = None,
    hanging: type[HangingClient] = HangingClient,
) -> tuple[PublisherPool, Stats, EventQueue]:
    """Publish ``events`` to a server that stops answering (``hanging``)
    and cancel the worker, as the drain deadline does, while a request is
    on the wire."""
    async with fake_publisher(bad_rule) as (_, channel):
        client = hanging(channel, TOPIC)
        pool, stats, queue = make_pool(channel, TOPIC, client=client, spill=spill)
        queue.put(events, 0.0)
        worker = asyncio.create_task(pool.run_worker(0))
        async with asyncio.timeout(DEADLINE_S):
            await client.sent.wait()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(DEADLINE_S):
                await worker
        return pool, stats, queue


def test_cancel_while_awaiting_the_answer_counts_unconfirmed_not_dropped() -> None:
    """The drain deadline cancels a request on the wire: Pub/Sub may have
    published it, so its events are ``unconfirmed`` -- not ``shutdown`` drops,
    which would claim a loss that may not have happened."""
    pool, stats, queue = asyncio.run(cancel_on_the_wire([b"x", b"y", b"z"]))
    assert stats.unconfirmed == 3
    assert stats.dropped_total() == 0
    assert pool.in_flight == 0
    assert_identity(stats, pool, queue, 3)


def test_cancel_with_a_spool_spools_the_request_on_the_wire() -> None:
    """With a spool nothing is unconfirmed: the events are kept and published
    by a later run (a duplicate if the cut-off request had reached Pub/Sub)."""
    spooled: list[bytes] = []
    _, stats, _ = asyncio.run(
        cancel_on_the_wire([b"x", b"y"], spill=lambda events, lane: spooled.extend(events))
    )
    assert spooled == [b"x", b"y"]
    assert stats.unconfirmed == 0
    assert stats.dropped_total() == 0


class HangsAfterFirstAnswer(HangingClient):
    """Answers the whole batch (INVALID_ARGUMENT) and its first half as the
    real server would, then never again (a fake: the cut must fall between
    the parts of a bisected batch)."""

    def __init__(self, channel: grpc.aio.Channel, topic: str) -> None:
        super().__init__(channel, topic)
        self.answered = 0

    async def publish(self, request: bytes, timeout_s: float) -> None:
        if self.answered < 2:
            self.answered += 1
            await PubSubClient.publish(self, request, timeout_s)
            return
        await super().publish(request, timeout_s)


def test_published_by_topic_agrees_with_the_total_between_bisected_parts() -> None:
    """/metrics sums the per-topic series for the total: a part published
    before a cancellation must be in both, or the books never balance."""
    _, stats, _ = asyncio.run(
        cancel_on_the_wire([b"a", b"b", b"c", b"bad"], hanging=HangsAfterFirstAnswer)
    )
    assert stats.published == 2  # "a" and "b", the first half
    assert dict(stats.published_by_topic) == {TOPIC.rpartition("/")[2]: 2}
