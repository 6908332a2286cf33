"""Parking a topic that fails as a whole: LaneQueue and the plain Batcher
hand out one batch of it at a time, its probe, when its retry is due;
PublisherPool gives a failing batch back instead of waiting with it, so a
dead topic ties up no publisher between probes; the first success unparks it.

NOT_FOUND comes from the real emulator (a topic that does not exist). The
other codes come from TopicFake below, because the emulator cannot be made
to deny permission, refuse credentials, answer an unknown code, or fail one
topic transiently while another works.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import grpc.aio
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest.config import PUBSUB_MAX_REQUEST_BYTES
from ingest.observe.health import Verdict
from ingest.observe.metrics import build_registry
from ingest.pipeline.batch import Batcher
from ingest.pipeline.lanes import LANE_BYTES, LaneBatcher, LaneQueue, SpooledLanes
from ingest.pipeline.message import Lane
from ingest.pipeline.queue import EventQueue
from ingest.publish import publisher
from ingest.publish.publisher import Batch, PublisherPool
from ingest.publish.pubsub import PubSubClient, RequestEncoder
from ingest.stats import Stats
from ingest.vocabulary import Drop
from tests.helpers import PublishResponse, PubSubNames, publish_server, serving
from tests.unit.test_lanes import DEADLINE_S, ERRORS, LONG_LINGER_S, PLAIN, batcher, fill, items
from tools.testing.emulator import Emulator
from tools.testing.views import View

PUBLISHERS = 4  # the default
RETRY_S = 0.05  # the sink-unavailable retry interval, shortened
_names = itertools.count()


async def settle() -> None:
    """Let every task that can run do so (a filler reaches its wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


# ------------------------------------------------------------- LaneQueue
NEVER = math.inf  # a retry that never comes: the lanes stay parked


def test_a_parked_topics_lanes_are_passed_over_until_unparked() -> None:
    """Its unkeyed lane and each of a hundred keyed ones: none is handed out
    while it is parked, so a dead topic's keys cannot take the publishers;
    unparked, they are served, oldest first."""

    async def main() -> None:
        queue = LaneQueue(10_000, 1 << 30, Stats(), topics=2)
        lanes = batcher(queue, max_messages=2)
        keys = [(1, b"k%d" % n) for n in range(100)]
        queue.put([*items(ERRORS, 3), *(item for k in keys for item in items(k, 1))], 1.0)
        queue.put(items(PLAIN, 4), 2.0)
        queue.park(1, NEVER)
        assert queue.is_parked(1)
        taken = [await fill(lanes) for _ in range(2)]  # not released: held or not
        assert [(b.lane, b.messages) for b in taken] == [
            (PLAIN, [b"00", b"01"]),
            (PLAIN, [b"02", b"03"]),
        ]
        waiting = asyncio.create_task(fill(lanes))
        await settle()
        assert not waiting.done()  # only parked lanes are queued
        queue.unpark(1)
        batch = await waiting
        assert (batch.lane, batch.messages, batch.probe) == (ERRORS, [b"10", b"11"], False)
        served = {(await fill(lanes)).lane for _ in range(101)}
        assert served == {ERRORS, *keys}

    asyncio.run(main())


def test_one_probe_at_a_time_when_its_retry_is_due() -> None:
    """The parked topic's oldest lane goes out once its retry is due, as its
    probe, before other lanes; no other lane of it until the probe's
    verdict: a failure sets the next retry, a success unparks it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = LaneQueue(10_000, 1 << 30, Stats(), topics=2)
        lanes = batcher(queue, max_messages=2)
        keys = [(1, b"k%d" % n) for n in range(5)]
        queue.put([item for k in keys for item in items(k, 2)], 1.0)
        queue.park(1, loop.time() + 0.05)
        probe = await fill(lanes)  # waits until the retry is due
        assert (probe.lane, probe.probe) == (keys[0], True)
        queue.put(items(PLAIN, 2), 2.0)
        other = await fill(lanes)
        assert other.lane == PLAIN
        waiting = asyncio.create_task(fill(lanes))
        await settle()
        assert not waiting.done()  # the probe is out: nothing else of topic 1
        lanes.park(probe, loop.time() + 0.05)  # it failed
        lanes.done(probe)
        again = await waiting  # the next probe: the same messages, first
        assert (again.lane, again.messages, again.probe) == (keys[0], [b"k00", b"k01"], True)
        queue.unpark(1)  # it succeeded
        lanes.done(again)
        rest = [await fill(lanes) for _ in range(4)]
        assert {b.lane for b in rest} == set(keys[1:])  # full lanes: in no set order
        assert not any(b.probe for b in rest)

    asyncio.run(main())


def test_a_batch_taken_before_the_park_does_not_move_the_probes_retry() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = LaneQueue(10_000, 1 << 30, Stats(), topics=2)
        lanes = batcher(queue, max_messages=1)
        queue.put(items(ERRORS, 3), 1.0)
        early = [await fill(lanes) for _ in range(2)]  # two requests out at once
        lanes.park(early[0], loop.time() + 0.05)  # the first failure parks
        probe = await fill(lanes)
        assert probe.probe
        lanes.park(early[1], loop.time())  # fails too: no second probe for it
        waiting = asyncio.create_task(fill(lanes))
        await settle()
        assert not waiting.done()
        queue.unpark(1)
        assert (await waiting).messages == [b"11"]  # given back to the front
        assert queue.events == 1

    asyncio.run(main())


def test_a_probe_ended_without_a_verdict_lets_the_next_go() -> None:
    """Its publisher was cancelled (or crashed): the topic must not wait for
    a verdict that never comes."""

    async def main() -> None:
        queue = LaneQueue(10_000, 1 << 30, Stats(), topics=2)
        lanes = batcher(queue, max_messages=1)
        queue.put(items(ERRORS, 2), 1.0)
        queue.park(1, -math.inf)
        probe = await fill(lanes)
        assert probe.probe
        lanes.done(probe)  # no park, no unpark
        assert (await fill(lanes)).probe

    asyncio.run(main())


def test_a_given_back_batch_is_the_front_of_its_lane() -> None:
    """A failing batch goes back: its messages are the lane's oldest again,
    in order, before those queued since, and counted (with the lane's own
    cost) exactly as before they were taken."""

    async def main() -> None:
        stats = Stats()
        queue = LaneQueue(1000, 1 << 20, stats, topics=2)
        lanes = batcher(queue)
        key: Lane = (1, b"a")
        queue.put(items(key, 3), 1.0)
        batch = await fill(lanes)
        assert queue.events == queue.bytes == 0
        queue.put(items(key, 2, "late"), 2.0)
        lanes.park(batch, NEVER)
        lanes.done(batch)
        assert batch.resolved == len(batch) == 3
        assert queue.events == 5
        assert queue.bytes == 2 * 3 + 2 * 5 + LANE_BYTES
        queue.unpark(1)
        again = await fill(lanes)
        assert again.messages == [b"a0", b"a1", b"a2", b"late0", b"late1"]
        assert (again.oldest_received_at, again.newest_received_at) == (1.0, 2.0)
        assert queue.events == queue.bytes == 0

    asyncio.run(main())


def test_a_lane_given_back_after_its_topic_came_back_is_ready_at_once() -> None:
    async def main() -> None:
        queue = LaneQueue(1000, 1 << 20, Stats(), topics=2)
        lanes = batcher(queue)
        queue.put(items(ERRORS, 2), 1.0)
        batch = await fill(lanes)
        queue.put(items(PLAIN, 1), 2.0)
        queue.give_back(ERRORS, batch.messages, 4, 1.0, 1.0)
        assert (await fill(lanes)).messages == [b"10", b"11"]  # the oldest lane
        assert queue.bytes == 2 + LANE_BYTES

    asyncio.run(main())


def test_parked_topics_keep_at_most_half_the_queue_while_others_publish() -> None:
    """A dead topic's events fill at most half of each bound, so the others'
    always have room; the rest of them is spilled with its lane, or dropped
    as ``queue_full``, as any overflow."""
    stats = Stats()
    queue = LaneQueue(100, 1 << 20, stats, topics=2)
    queue.park(1, NEVER)
    queue.put(items(ERRORS, 80), 1.0)
    assert queue.events == 50
    assert stats.dropped[Drop.QUEUE_FULL] == 30
    queue.put(items(PLAIN, 50), 1.0)
    assert queue.events == 100
    assert stats.dropped[Drop.QUEUE_FULL] == 30  # none of --topic's

    spilled: list[tuple[list[bytes], Lane | None]] = []
    queue = LaneQueue(1_000, 10 * LANE_BYTES, Stats(), topics=2)
    queue.spill = lambda events, lane: spilled.append((events, lane))
    queue.park(1, NEVER)
    big = [(ERRORS, b"x" * LANE_BYTES) for _ in range(10)]
    queue.put(big, 1.0)
    assert queue.bytes <= 5 * LANE_BYTES  # the byte bound's half, the lane's cost counted
    assert [len(events) for events, _ in spilled] == [10 - queue.events]
    assert spilled[0][1] == ERRORS


def test_when_every_topic_is_parked_they_keep_the_whole_queue() -> None:
    """Nobody to keep room for: as without parking (an outage of all)."""
    stats = Stats()
    queue = LaneQueue(100, 1 << 20, stats, topics=2)
    queue.park(0, NEVER)
    queue.park(1, NEVER)
    queue.put([*items(ERRORS, 60), *items(PLAIN, 60)], 1.0)
    assert queue.events == 100
    assert stats.dropped[Drop.QUEUE_FULL] == 20


def test_a_parked_topics_messages_do_not_make_the_others_urgent() -> None:
    """Half full counts what can be sent: a dead topic's backlog must not
    end the linger for everyone else (a request per put, for ever)."""

    async def main() -> None:
        queue = LaneQueue(100, 1 << 20, Stats(), topics=2)
        queue.put(items(ERRORS, 50), 0.0)
        queue.park(1, NEVER)
        queue.put(items(PLAIN, 10), 1.0)
        lane, wait_s = queue.ready_lane(1.0, LONG_LINGER_S, 1000, 1 << 20, 0)
        assert lane is None  # lingers: 10 sendable of the 50 left beside the parked
        assert wait_s == pytest.approx(LONG_LINGER_S)
        queue.put(items(PLAIN, 15, "more"), 1.0)  # 25 of the 50: half
        assert queue.ready_lane(1.0, LONG_LINGER_S, 1000, 1 << 20, 0) == (PLAIN, None)

    asyncio.run(main())


# ---------------------------------------------------------- plain Batcher
def test_the_plain_batcher_fills_only_probes_while_parked() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        queue = EventQueue(1000, 1 << 20, stats)
        plain = Batcher(queue, 1000, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0)
        queue.put([b"a", b"b"], 1.0)
        batch = Batch()
        assert await plain.fill(batch)
        queue.put([b"c"], 2.0)
        plain.park(batch, loop.time() + 0.05)  # it failed
        assert batch.resolved == 2
        assert (queue.events, queue.bytes) == (3, 3)
        probe = Batch()
        async with asyncio.timeout(DEADLINE_S):
            assert await plain.fill(probe)  # once due
        assert (probe.messages, probe.probe) == ([b"a", b"b", b"c"], True)  # given back first
        assert probe.oldest_received_at == 1.0
        queue.put([b"d"], 3.0)
        waiting = asyncio.create_task(plain.fill(Batch()))
        await settle()
        assert not waiting.done()  # the probe is out
        plain.unpark(0)
        async with asyncio.timeout(DEADLINE_S):
            assert await waiting
        cancelled = Batch(probe=True)
        plain.park(cancelled, -math.inf)
        plain.done(cancelled)
        async with asyncio.timeout(DEADLINE_S):
            queue.put([b"e"], 4.0)
            assert await plain.fill(next_probe := Batch())
        assert next_probe.probe

    asyncio.run(main())


# ---------------------------------------------------------------- the pool
class Rig:
    """A pool over lanes (or the plain path, with one topic), its workers,
    and what was put for each topic."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        topics: list[str],
        *,
        plain: bool,
        project: str,
        publishers: int = PUBLISHERS,
    ) -> None:
        self.topics = topics
        self.stats = Stats()
        paths = [f"projects/{project}/topics/{topic}" for topic in topics]
        self.queue: LaneQueue | EventQueue
        filler: LaneBatcher | Batcher
        if plain:
            self.queue = EventQueue(1_000_000, 1 << 30, self.stats)
            filler = Batcher(self.queue, 100, PUBSUB_MAX_REQUEST_BYTES, 100, 0.001)
        else:
            self.queue = LaneQueue(1_000_000, 1 << 30, self.stats, topics=len(topics))
            filler = LaneBatcher(self.queue, 100, PUBSUB_MAX_REQUEST_BYTES, 100, 0.001)
        self.pool = PublisherPool(
            PubSubClient(channel, paths[0]),
            filler,
            self.stats,
            5.0,
            rng=random.Random(3),
            encoders=[RequestEncoder(path) for path in paths],
            topics=topics,
        )
        self.workers = [asyncio.create_task(self.pool.run_worker(i)) for i in range(publishers)]
        self.sent: Counter[str] = Counter()
        self._n = 0

    def put(self, topic: int, count: int, *, keys: int = 0) -> None:
        """``count`` events for topic number ``topic`` (over ``keys``
        ordering keys, or none)."""
        batch = []
        for _ in range(count):
            self._n += 1
            key = b"k%d" % (self._n % keys) if keys else b""
            batch.append(((topic, key), b'{"n":%d}' % self._n))
        if isinstance(self.queue, LaneQueue):
            self.queue.put(batch, 0.0)
        else:
            self.queue.put([body for _, body in batch], 0.0)
        self.sent[self.topics[topic]] += count

    def requests(self, topic: int, code: str) -> int:
        return self.stats.publish_requests_by_topic[self.topics[topic], code]

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Poll ``predicate`` (the pool's counters move without an event to
        wait for); AssertionError after DEADLINE_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}: published {dict(self.stats.published_by_topic)}"
                    f" of {dict(self.sent)}, requests {dict(self.stats.publish_requests_by_topic)}"
                )
            await asyncio.sleep(0.005)

    async def published(self, topic: int) -> None:
        name = self.topics[topic]
        await self.until(lambda: self.stats.published_by_topic[name] == self.sent[name], name)

    async def flow(self, rounds: int, dead: int, *, keys: int = 0) -> None:
        """Rounds of events for topic 0 and the ``dead`` one: each round's
        topic-0 events must be published before the next is put."""
        for _ in range(rounds):
            self.put(dead, 10, keys=keys)
            self.put(0, 10)
            await self.published(0)

    async def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


@asynccontextmanager
async def rig(
    channel: grpc.aio.Channel,
    topics: list[str],
    *,
    plain: bool = False,
    project: str = "fake",
    publishers: int = PUBLISHERS,
) -> AsyncIterator[Rig]:
    held = Rig(channel, topics, plain=plain, project=project, publishers=publishers)
    try:
        yield held
    finally:
        await held.stop()


@pytest.mark.parametrize(("keys", "publishers"), [(0, PUBLISHERS), (100, PUBLISHERS), (100, 1)])
def test_a_missing_topic_ties_up_no_publisher_and_the_others_publish(
    emulator: Emulator,
    pubsub: PubSubNames,
    monkeypatch: pytest.MonkeyPatch,
    keys: int,
    publishers: int,
) -> None:
    """The emulator answers NOT_FOUND for the topic that does not exist. Its
    events flow in rounds (each round a new batch of it, or a hundred keys'):
    it is probed one request at a time, and the other topic's events are all
    published, with one publisher too; what it has waits, queued, and once
    it exists, it is published."""
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", RETRY_S)
    missing = f"missing-{next(_names)}"

    async def main() -> None:
        async with (
            grpc.aio.insecure_channel(emulator.host) as channel,
            rig(
                channel, [pubsub.topic_id, missing], project=pubsub.project, publishers=publishers
            ) as r,
        ):
            await r.flow(20, 1, keys=keys)
            assert r.pool.parked_topics == (missing,)
            # At most one batch out (a probe's); the rest queued, none lost.
            assert r.pool.in_flight <= 100
            assert r.pool.in_flight + r.queue.events == r.sent[missing]
            assert r.stats.dropped_total() == 0
            before = r.requests(1, "NOT_FOUND")
            await r.until(lambda: r.requests(1, "NOT_FOUND") >= before + 3, "probe retries")
            assert r.requests(0, "NOT_FOUND") == 0
            emulator.create_topic(f"projects/{pubsub.project}/topics/{missing}")
            await r.published(1)
            assert r.pool.parked_topics == ()
            await r.flow(3, 1, keys=keys)  # and on as before
            await r.published(1)

    asyncio.run(main())
    got = emulator.pull_until(pubsub.subscription, 230)
    assert len(set(got)) == len(got) == 230


def test_the_plain_path_probes_a_missing_topic_with_one_publisher(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One topic: nothing else to keep publishing, but consistently one
    publisher retries it while the others wait, and nothing is lost."""
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", RETRY_S)
    missing = f"missing-{next(_names)}"

    async def main() -> None:
        async with (
            grpc.aio.insecure_channel(emulator.host) as channel,
            rig(channel, [missing], plain=True, project="parking") as r,
        ):
            for _ in range(10):
                r.put(0, 100)
                await settle()
            await r.until(lambda: r.pool.in_flight <= 100, "one batch out")
            assert r.pool.parked_topics == (missing,)
            assert r.pool.in_flight + r.queue.events == 1000
            before = r.requests(0, "NOT_FOUND")
            await r.until(lambda: r.requests(0, "NOT_FOUND") >= before + 3, "probe retries")
            # Only the probe retries: one request a retry interval.
            assert r.pool.in_flight + r.queue.events == 1000
            emulator.create_topic(f"projects/parking/topics/{missing}")
            await r.published(0)
            assert r.pool.parked_topics == ()

    asyncio.run(main())


def test_cancelled_while_parked_the_parked_topics_events_are_still_queued(
    emulator: Emulator, pubsub: PubSubNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain deadline cancels the publishers: between probes none holds
    the parked topic's events, which are all still queued (the daemon spools
    them, or counts them as ``shutdown``); a probe on the wire just then is
    what a cancelled worker held; the other topic's events were published."""
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", RETRY_S)
    missing = f"missing-{next(_names)}"
    topic_id = pubsub.topic_id

    async def main() -> None:
        async with grpc.aio.insecure_channel(emulator.host) as channel:
            r = Rig(channel, [topic_id, missing], plain=False, project=pubsub.project)
            await r.flow(5, 1)
            in_flight = r.pool.in_flight
            await r.stop()
            assert r.stats.dropped[Drop.SHUTDOWN] + r.stats.unconfirmed == in_flight
            assert r.queue.events == r.sent[missing] - in_flight
            assert r.stats.published_by_topic[topic_id] == r.sent[topic_id]
            assert r.pool.in_flight == 0

    asyncio.run(main())


# ---------------------------------------------------------------- the fake


class TopicFake:
    """A fake Publish endpoint answering each topic (by ID) the code in
    ``codes`` (OK when absent); a fake because the emulator cannot be made
    to answer PERMISSION_DENIED, UNAUTHENTICATED, an unknown code, or a
    transient code for one topic while another works."""

    def __init__(self) -> None:
        self.codes: dict[str, grpc.StatusCode] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.times: dict[str, list[float]] = {}  # of each topic's calls (loop time)
        self.server, self.port = publish_server(self._publish)

    async def _publish(self, request: object, context: grpc.aio.ServicerContext) -> object:
        topic = request.topic.rpartition("/")[2]  # type: ignore[attr-defined]
        code = self.codes.get(topic, grpc.StatusCode.OK)
        self.calls[topic, code.name] += 1
        self.times.setdefault(topic, []).append(asyncio.get_running_loop().time())
        if code is not grpc.StatusCode.OK:
            await context.abort(code, f"fake says {code.name}")
        count = len(request.messages)  # type: ignore[attr-defined]
        return PublishResponse(message_ids=[str(i) for i in range(count)])


@asynccontextmanager
async def topic_fake() -> AsyncIterator[tuple[TopicFake, grpc.aio.Channel]]:
    fake = TopicFake()
    async with serving(fake) as channel:
        yield fake, channel


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,  # a code the policy does not know
    ],
)
def test_every_sink_unavailable_code_parks_its_topic(
    monkeypatch: pytest.MonkeyPatch, code: grpc.StatusCode
) -> None:
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", RETRY_S)

    async def main() -> None:
        async with topic_fake() as (fake, channel), rig(channel, ["main", "denied"]) as r:
            fake.codes["denied"] = code
            await r.flow(20, 1, keys=100)
            assert r.pool.parked_topics == ("denied",)
            assert r.pool.in_flight + r.queue.events == r.sent["denied"]
            assert r.pool.in_flight <= 100
            before = fake.calls["denied", code.name]
            await r.until(lambda: fake.calls["denied", code.name] >= before + 3, "retries")
            del fake.codes["denied"]
            await r.published(1)
            assert r.pool.parked_topics == ()

    asyncio.run(main())


def test_as_many_dead_topics_as_publishers_leave_the_other_topic_its_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two publishers, two dead topics: neither waits out a retry, so the
    live topic keeps both; each dead topic's requests, once parked, are
    one a retry interval."""
    monkeypatch.setattr(publisher, "SINK_UNAVAILABLE_RETRY_S", RETRY_S)

    async def main() -> None:
        async with (
            topic_fake() as (fake, channel),
            rig(channel, ["main", "d1", "d2"], publishers=2) as r,
        ):
            fake.codes.update(d1=grpc.StatusCode.PERMISSION_DENIED, d2=grpc.StatusCode.NOT_FOUND)
            for _ in range(30):
                r.put(1, 5, keys=50)
                r.put(2, 5)
                r.put(0, 10)
                await r.published(0)
            assert r.pool.parked_topics == ("d1", "d2")
            for topic in ("d1", "d2"):
                # Past the requests out when it was parked (one a publisher
                # at most): probes, one a retry interval.
                probes = fake.times[topic][2:]
                assert len(probes) >= 2, topic
                assert min(b - a for a, b in itertools.pairwise(probes)) >= RETRY_S, topic
            fake.codes.clear()
            await r.published(1)
            await r.published(2)

    asyncio.run(main())


def test_a_topic_failing_transiently_alone_is_parked_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """UNAVAILABLE for one topic while the other publishes: once a request
    has failed for PARK_TRANSIENT_AFTER_S it is that topic's outage."""
    monkeypatch.setattr(publisher, "BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(publisher, "BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(publisher, "PARK_TRANSIENT_AFTER_S", 0.2)

    async def main() -> None:
        async with topic_fake() as (fake, channel), rig(channel, ["main", "flaky"]) as r:
            fake.codes["flaky"] = grpc.StatusCode.UNAVAILABLE
            await r.flow(20, 1)  # stalls while every publisher retries it, until parked
            await r.until(lambda: r.pool.parked_topics == ("flaky",), "parked")
            await r.flow(20, 1)  # the other topic goes on
            assert r.pool.in_flight + r.queue.events == r.sent["flaky"]
            del fake.codes["flaky"]
            await r.published(1)
            assert r.pool.parked_topics == ()

    asyncio.run(main())


def test_when_every_topic_fails_transiently_nothing_is_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pub/Sub down, not a topic: every publisher keeps retrying with
    backoff, as before there was parking (and recovery is every
    publisher's next try, not one probe's)."""
    monkeypatch.setattr(publisher, "BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(publisher, "BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(publisher, "PARK_TRANSIENT_AFTER_S", 0.05)

    async def main() -> None:
        async with topic_fake() as (fake, channel), rig(channel, ["a", "b"]) as r:
            fake.codes.update(a=grpc.StatusCode.UNAVAILABLE, b=grpc.StatusCode.UNAVAILABLE)
            for _ in range(8):
                r.put(0, 10)
                r.put(1, 10)
                await settle()
            await r.until(lambda: fake.calls["a", "UNAVAILABLE"] >= 40, "retries")
            assert r.pool.parked_topics == ()
            assert r.pool.in_flight > 10  # more than one publisher holds a batch
            fake.codes.clear()
            await r.published(0)
            await r.published(1)

    asyncio.run(main())


def test_a_transient_blip_does_not_park(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher, "BACKOFF_INITIAL_S", 0.001)

    async def main() -> None:
        async with topic_fake() as (fake, channel), rig(channel, ["main", "blip"]) as r:
            fake.codes["blip"] = grpc.StatusCode.UNAVAILABLE
            r.put(1, 10)
            await r.until(lambda: fake.calls["blip", "UNAVAILABLE"] >= 1, "a failure")
            del fake.codes["blip"]
            await r.flow(5, 1)
            await r.published(1)
            assert r.requests(1, "UNAVAILABLE") >= 1
            assert r.pool.parked_topics == ()

    asyncio.run(main())


# ---------------------------------------------------------------- /metrics
def test_metrics_show_each_topics_publish_results_and_failing_state() -> None:
    """Every configured topic from the start (OK at 0, not failing); the
    failing one as the health verdict names it."""

    def with_topics(verdict: Verdict) -> View:
        return View(
            in_flight=3,
            topic_paths=("projects/p/topics/main", "projects/p/topics/gone"),
            health=verdict,
        )

    def families(view: View) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(build_registry(view)).decode()  # type: ignore[arg-type]
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("ingest_topic_")
        }

    fresh = families(with_topics(Verdict(True, ())))
    assert {k: v for k, v in fresh.items() if k[0] != "ingest_topic_info"} == {
        ("ingest_topic_publish_requests_total", (("code", "OK"), ("topic", "main"))): 0,
        ("ingest_topic_publish_requests_total", (("code", "OK"), ("topic", "gone"))): 0,
        ("ingest_topic_failing", (("topic", "main"),)): 0,
        ("ingest_topic_failing", (("topic", "gone"),)): 0,
    }
    view = with_topics(Verdict(False, ("publishing to gone is failing (NOT_FOUND)",), ("gone",)))
    view.stats.publish_requests_by_topic["main", "OK"] += 7
    view.stats.publish_requests_by_topic["gone", "NOT_FOUND"] += 2
    samples = families(view)
    assert samples["ingest_topic_publish_requests_total", (("code", "OK"), ("topic", "main"))] == 7
    assert (
        samples["ingest_topic_publish_requests_total", (("code", "NOT_FOUND"), ("topic", "gone"))]
        == 2
    )
    assert samples["ingest_topic_failing", (("topic", "gone"),)] == 1
    assert samples["ingest_topic_failing", (("topic", "main"),)] == 0


def test_replayed_messages_of_a_parked_topic_wait_with_it_whole() -> None:
    """Spool replay goes on while only a dead topic fails (its parking says
    the others publish): what it brings of that topic waits parked, never
    handed to a publisher but as its probe, and is never spilled again
    (that would put it behind its key's later messages on disk)."""

    async def main() -> None:
        spilled: list[list[bytes]] = []
        queue = LaneQueue(100, 1 << 20, Stats(), topics=2)
        queue.spill = lambda events, lane: spilled.append(events)
        lanes = batcher(queue, max_messages=10)
        assert not queue.publishes_beside([1])
        queue.park(1, NEVER)
        assert queue.publishes_beside([1])
        assert not queue.publishes_beside([0, 1])
        keyed = (1, b"k")
        queue.put_replayed([*items(keyed, 80), *items(PLAIN, 3)], 1.0)
        assert queue.events == 83  # past the parked share: replayed, kept whole
        assert spilled == []
        batch = await fill(lanes)
        assert batch.lane == PLAIN
        waiting = asyncio.create_task(fill(lanes))
        await settle()
        assert not waiting.done()
        queue.unpark(1)
        assert (await asyncio.wait_for(waiting, DEADLINE_S)).lane == keyed
        queue.park(0, NEVER)
        queue.park(1, NEVER)
        assert not queue.publishes_beside([0, 1])  # all of Pub/Sub failing: replay pauses

    asyncio.run(main())


def test_a_parked_keyed_lane_with_messages_on_disk_sends_its_new_ones_there() -> None:
    """Order before parking: a key whose messages are on disk has its live
    ones follow them there, parked topic or not."""
    diverted: list[tuple[list[bytes], Lane]] = []
    spooled = SpooledLanes(("main", "errors"))
    keyed = (1, b"k")
    spooled.added(keyed, 5)

    def divert(bodies: list[bytes], lane: Lane) -> bool:
        diverted.append((bodies, lane))
        return True

    queue = LaneQueue(100, 1 << 20, Stats(), topics=2, spooled=spooled, divert=divert)
    queue.park(1, NEVER)
    queue.put([*items(keyed, 3), *items((1, b"other"), 2)], 1.0)
    assert diverted == [([b"k0", b"k1", b"k2"], keyed)]
    assert queue.events == 2  # the other key, parked in memory
