"""The publisher pool: N coroutines turning queued events into PublishRequests.

Each worker fills a batch (pipeline/batch.py), encodes it once, and publishes it until
Pub/Sub accepts it. Failures are classified once, by gRPC code (RETRY_POLICY):

- transient codes are retried with capped exponential backoff and jitter;
- NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED (and any code we do not know)
  mean the *sink* is unavailable, not that the events are bad: keep them and
  retry slowly, logging the server's reason once per interval;
- INVALID_ARGUMENT fails a whole request for one bad message: bisect, so the
  good messages go through and only the offending ones are dropped.

A topic that fails as a whole is *parked* (``_should_park``): the batch goes
back to the queue, and the filler hands out one batch of the topic at a time,
its probe, on the retry interval (5 s for a sink-unavailable code), to
whichever publisher is free then. The first publish to it that succeeds
unparks it. So a dead topic ties up no publisher between its retries, and
at most one during one, whatever the number of publishers or dead topics.

Events leave this module as published, dropped with a named reason, handed to
the spool, or -- cancelled at the drain deadline while their request awaited
Pub/Sub's answer, with no spool -- as ``unconfirmed``: maybe published.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import grpc.aio

from ingest.config import topic_id_of
from ingest.publish.health import PubSubHealth
from ingest.publish.pubsub import PubSubClient, RequestEncoder
from ingest.ratelimit import LogLimiter
from ingest.stats import Stats
from ingest.vocabulary import Drop

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    """Events taken from the queue: in flight until published, dropped, or
    (cancelled at the drain deadline) spooled."""

    messages: list[bytes] = field(default_factory=list)
    nbytes: int = 0  # sum of len(message)
    oldest_received_at: float = 0.0
    newest_received_at: float = 0.0
    resolved: int = 0  # messages already published or dropped
    # Messages (from ``resolved`` on) of the Publish request awaiting Pub/Sub's
    # answer right now; 0 between attempts (building, backing off).
    on_the_wire: int = 0
    # Where its messages go (pipeline/lanes.py): (topic number, ordering key); None on
    # the plain path, which has one topic and no keys.
    lane: tuple[int, bytes] | None = None
    # Filled as the probe of its parked topic (publisher.PublisherPool).
    probe: bool = False

    def __len__(self) -> int:
        return len(self.messages)

    def extend(self, events: list[bytes], nbytes: int, oldest_at: float, newest_at: float) -> None:
        """Take ``events`` (``nbytes`` of them), received from ``oldest_at``
        to ``newest_at``, after those it holds."""
        if not self.messages:
            self.oldest_received_at = oldest_at
        self.messages += events
        self.nbytes += nbytes
        self.newest_received_at = newest_at


class Encoder(Protocol):
    def encode(self, messages: list[bytes]) -> bytes: ...


class Filler(Protocol):
    """batch.Batcher (the plain path) or lanes.LaneBatcher."""

    async def fill(self, batch: Batch) -> bool: ...

    def done(self, batch: Batch) -> None: ...

    # ``batch``'s unresolved messages queued again; its topic's next probe at
    # ``retry_at`` (loop time), and until then none of its batches filled.
    def park(self, batch: Batch, retry_at: float) -> None: ...

    def unpark(self, topic: int) -> None: ...


# Where a cancelled batch's unresolved messages go, with the batch's lane.
Spill = Callable[[list[bytes], "tuple[int, bytes] | None"], None]


BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0  # keeps recovery after an outage within seconds
SINK_UNAVAILABLE_RETRY_S = 5.0
# A request failing with transient codes this long parks its topic if other
# topics published meanwhile (``_should_park``).
PARK_TRANSIENT_AFTER_S = 5.0
# Drop reasons this module owns.


class Retry(enum.Enum):
    TRANSIENT = "transient"
    SINK_UNAVAILABLE = "sink_unavailable"
    SPLIT = "split"


# The codes Google's own clients retry are TRANSIENT; INVALID_ARGUMENT is the
# only code that can drop an event, after bisecting down to it. Anything else
# is treated as the sink being unavailable: events are kept.
RETRY_POLICY: dict[grpc.StatusCode, Retry] = {
    grpc.StatusCode.UNAVAILABLE: Retry.TRANSIENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: Retry.TRANSIENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Retry.TRANSIENT,
    grpc.StatusCode.ABORTED: Retry.TRANSIENT,
    grpc.StatusCode.INTERNAL: Retry.TRANSIENT,
    grpc.StatusCode.UNKNOWN: Retry.TRANSIENT,
    grpc.StatusCode.CANCELLED: Retry.TRANSIENT,
    grpc.StatusCode.INVALID_ARGUMENT: Retry.SPLIT,
    grpc.StatusCode.NOT_FOUND: Retry.SINK_UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED: Retry.SINK_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: Retry.SINK_UNAVAILABLE,
}


def classify(code: grpc.StatusCode) -> Retry:
    return RETRY_POLICY.get(code, Retry.SINK_UNAVAILABLE)


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: attempt 0 -> 50-100 ms ... cap 5 s."""
    # The exponent is capped as well: 0.1 * 2**1024 overflows a float, which
    # would crash a publisher after ~1 hour of UNAVAILABLE (1024 attempts).
    ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(attempt, 32)))
    return rng.uniform(ceiling / 2, ceiling)


class PublisherPool:
    """Owns the publisher coroutines' batches; ``in_flight`` is what they hold."""

    def __init__(
        self,
        client: PubSubClient,
        batcher: Filler,
        stats: Stats,
        timeout_s: float,
        *,
        rng: random.Random | None = None,
        health: PubSubHealth | None = None,
        spill: Spill | None = None,
        encoders: Sequence[Encoder] = (),
        topics: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._batcher = batcher
        self._stats = stats
        self._timeout_s = timeout_s
        # By topic number (a batch's lane[0]; 0 on the plain path).
        # ``topics``: their IDs, the ``topic`` label of published events.
        self._encoders = tuple(encoders) or (RequestEncoder(client.topic_path),)
        self._topics = tuple(topics) or (topic_id_of(client.topic_path),)
        self._rng = rng or random.Random()
        self._limiter = LogLimiter()
        self._active: dict[int, Batch] = {}
        self.health = health or PubSubHealth()
        # Where a cancelled batch's unresolved events go (the flow's spill, flows.Flow);
        # without one they are dropped as ``shutdown``.
        self._spill = spill
        # Parked topics, by number.
        self._parked: set[int] = set()
        # By topic number: when a publish to it last succeeded (loop time).
        self._last_ok_at = [float("-inf")] * len(self._topics)

    @property
    def parked_topics(self) -> tuple[str, ...]:
        """The IDs of the topics parked now, in topic order."""
        return tuple(self._topics[topic] for topic in sorted(self._parked))

    @property
    def in_flight(self) -> int:
        return sum(len(batch) - batch.resolved for batch in self._active.values())

    async def run_worker(self, index: int) -> None:
        """One publisher: fill, publish, repeat until the queue is closed and empty.

        Cancellation (the drain deadline) hands whatever it still held to the
        spool, or counts it as dropped with reason ``shutdown``, before it
        propagates. ``publish`` resolves a batch front to back (bisection
        included), so what is left is always ``messages[resolved:]``.
        """
        while True:
            batch = Batch()
            self._active[index] = batch
            try:
                if not await self._batcher.fill(batch):
                    return
                await self.publish(batch)
            except BaseException as exc:
                # Cancelled at the drain deadline, or a bug: either way what
                # this worker held is spooled or counted, never just gone.
                self._spill_or_count_held(batch, cancelled=isinstance(exc, asyncio.CancelledError))
                raise
            finally:
                del self._active[index]
                self._batcher.done(batch)

    def _spill_or_count_held(self, batch: Batch, *, cancelled: bool) -> None:
        """What a worker held when it was cancelled or failed. Spooled, it is
        published by a later run: if the request then on the wire did reach
        Pub/Sub, that is a duplicate (a lost acknowledgement). Without a
        spool, that request's events are ``unconfirmed`` (maybe published),
        the rest is dropped as ``shutdown`` (or ``publisher_crashed``)."""
        unresolved = len(batch) - batch.resolved
        if self._spill is not None:
            self._spill(batch.messages[batch.resolved :], batch.lane)
        elif cancelled:
            self._stats.unconfirmed += batch.on_the_wire
            self._stats.dropped[Drop.SHUTDOWN] += unresolved - batch.on_the_wire
        else:
            self._stats.dropped[Drop.PUBLISHER_CRASHED] += unresolved
        batch.resolved = len(batch)
        batch.on_the_wire = 0

    async def publish(self, batch: Batch) -> None:
        """Publish ``batch`` until each message is published or dropped as
        ``invalid_message``, however long Pub/Sub takes. Only a cancellation (or a
        bug) ends it sooner: ``run_worker`` then spools or counts the rest.

        Bisects on INVALID_ARGUMENT; ``batch.resolved`` counts what is done so
        the in-flight gauge and a cancellation see only what is not.
        """
        pending = [batch.messages]
        published = 0
        topic = batch.lane[0] if batch.lane is not None else 0
        encoder = self._encoders[topic]
        topic_id = self._topics[topic]
        while pending:
            part = pending.pop()
            code = await self._publish_until_resolved(encoder.encode(part), part, batch, topic)
            if code is None:
                # Its topic is parked: the rest (``part`` and what is
                # pending, in order) waits queued for the next probe.
                break
            if code is grpc.StatusCode.OK:
                # Both at once: a scrape between the parts of a bisected
                # batch sees the total agree with the topics' sum.
                self._stats.published += len(part)
                self._stats.published_by_topic[topic_id] += len(part)
                published += len(part)
            elif len(part) == 1:
                self._stats.dropped[Drop.INVALID_MESSAGE] += 1
                self._limiter.log(
                    log,
                    Drop.INVALID_MESSAGE,
                    logging.WARNING,
                    "Pub/Sub rejected a message as invalid (%d bytes); dropped",
                    len(part[0]),
                )
            else:
                mid = len(part) // 2
                pending.append(part[mid:])
                pending.append(part[:mid])
                continue
            batch.resolved += len(part)
        if published:
            # End-to-end latency, observed per batch: its oldest and newest event.
            now = asyncio.get_running_loop().time()
            self._stats.event_latency.observe(now - batch.oldest_received_at)
            self._stats.event_latency.observe(now - batch.newest_received_at)

    async def _publish_until_resolved(
        self, request: bytes, messages: list[bytes], batch: Batch, topic: int
    ) -> grpc.StatusCode | None:
        """Send one request (of ``messages``, to topic number ``topic``),
        retrying until OK or INVALID_ARGUMENT; None when the topic fails as
        a whole: the batch's unresolved messages are then back in the queue
        and the topic is parked (``_should_park``)."""
        loop = asyncio.get_running_loop()
        topic_id = self._topics[topic]
        attempt = 0  # transient failures so far: the backoff's exponent
        failing_since: float | None = None
        while True:
            batch.on_the_wire = len(messages)
            code, details = await self._attempt(request, topic_id)
            batch.on_the_wire = 0
            policy = classify(code)
            now = loop.time()
            if code is grpc.StatusCode.OK or policy is Retry.SPLIT:
                self._answered(topic, now)
                return code
            if failing_since is None:
                failing_since = now
            self._stats.publish_retries[code.name] += 1
            parks = topic in self._parked or self._should_park(topic, policy, failing_since, now)
            if policy is Retry.SINK_UNAVAILABLE:
                delay = SINK_UNAVAILABLE_RETRY_S
            else:  # a parked topic's probes go at the backoff's cap
                delay = backoff_s(32 if parks else attempt, self._rng)
                attempt += 1
            self._limiter.log(
                log,
                code.name,
                logging.WARNING,
                "publish failed with %s (%s); %d events for %s kept, retrying in %.1fs",
                code.name,
                details,
                len(messages),
                topic_id,
                delay,
            )
            if parks:
                self._park(topic, batch, now + delay, code.name, details)
                return None
            await asyncio.sleep(delay)

    def _should_park(self, topic: int, policy: Retry, failing_since: float, now: float) -> bool:
        """Whether a request to ``topic`` failing since ``failing_since``
        shows the topic failing as a whole.

        A sink-unavailable code does at once: NOT_FOUND, PERMISSION_DENIED,
        UNAUTHENTICATED or a code we do not know are answers about the topic
        (or the credentials), which every request to it would get; a
        publisher waiting to retry one is a publisher the other topics lose.

        A transient code does only once the request has failed for
        PARK_TRANSIENT_AFTER_S while another topic published and this one did
        not: then it is this topic's outage, not a blip (a flaky network
        failing one request in ten must not serialise a topic behind one
        probe) nor Pub/Sub's (when every topic fails, probes would only
        leave publishers idle and recovery to one request per topic and
        interval: there, every publisher retries with backoff, as on the
        plain path, which has one topic and so never parks on a transient
        code)."""
        if policy is Retry.SINK_UNAVAILABLE:
            return True
        if now - failing_since < PARK_TRANSIENT_AFTER_S:
            return False
        last_ok = self._last_ok_at
        return last_ok[topic] < failing_since and any(
            at > failing_since for other, at in enumerate(last_ok) if other != topic
        )

    def _park(self, topic: int, batch: Batch, retry_at: float, code: str, details: str) -> None:
        self._batcher.park(batch, retry_at)
        if topic not in self._parked:
            self._parked.add(topic)
            log.warning(
                "topic %s is failing (%s: %s): its events wait, one request probing it "
                "at a time; other topics are not held up",
                self._topics[topic],
                code,
                details,
            )

    def _answered(self, topic: int, now: float) -> None:
        """Pub/Sub answered a publish to ``topic`` (OK, or about a message):
        the topic works, and is unparked if it was."""
        self._last_ok_at[topic] = now
        if topic in self._parked:
            self._parked.discard(topic)
            self._batcher.unpark(topic)
            log.info("topic %s is publishing again", self._topics[topic])

    async def _attempt(self, request: bytes, topic_id: str) -> tuple[grpc.StatusCode, str]:
        """One Publish call to ``topic_id``, with its bookkeeping: per-code
        counts (in all, and per topic), latency, health."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        token = self.health.started(started)
        try:
            await self._client.publish(request, self._timeout_s)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except asyncio.CancelledError:
            self.health.abandon(token)
            raise
        now = loop.time()
        self.health.finished(token, now, code.name, topic_id)
        self._stats.publish_requests[code.name] += 1
        self._stats.publish_requests_by_topic[topic_id, code.name] += 1
        self._stats.publish_latency.observe(now - started)
        return code, details
