"""The publisher pool: N coroutines turning queued events into PublishRequests.

Each worker fills a batch (batch.py), encodes it once, and publishes it until
Pub/Sub accepts it. Failures are classified once, by gRPC code (RETRY_POLICY):

- transient codes are retried with capped exponential backoff and jitter;
- NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED (and any code we do not know)
  mean the *sink* is unavailable, not that the events are bad: keep them and
  retry slowly, logging the server's reason once per interval;
- INVALID_ARGUMENT fails a whole request for one bad message: bisect, so the
  good messages go through and only the offending ones are dropped.

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
from typing import Protocol

import grpc
import grpc.aio

from ingest.batch import Batch
from ingest.observe.health import PubSubHealth
from ingest.pubsub import PubSubClient, RequestEncoder
from ingest.ratelimit import LogLimiter
from ingest.stats import Stats
from ingest.vocabulary import Drop

log = logging.getLogger(__name__)


class Encoder(Protocol):
    def encode(self, messages: list[bytes]) -> bytes: ...


class Filler(Protocol):
    """batch.Batcher (the plain path) or lanes.LaneBatcher."""

    async def fill(self, batch: Batch) -> bool: ...

    def done(self, batch: Batch) -> None: ...


# Where a cancelled batch's unresolved messages go, with the batch's lane.
Spill = Callable[[list[bytes], "tuple[int, bytes] | None"], None]


BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0  # keeps recovery after an outage within seconds
SINK_UNAVAILABLE_RETRY_S = 5.0
# Drop reasons this module owns.
INVALID_MESSAGE = Drop.INVALID_MESSAGE
SHUTDOWN = Drop.SHUTDOWN
CRASHED = Drop.PUBLISHER_CRASHED


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
        self._topics = tuple(topics) or (client.topic_path.rpartition("/")[2],)
        self._rng = rng or random.Random()
        self._limiter = LogLimiter()
        self._active: dict[int, Batch] = {}
        self.health = health or PubSubHealth()
        # Where a cancelled batch's unresolved events go (spool.Spool.append);
        # without one they are dropped as ``shutdown``.
        self._spill = spill

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
                self._settle_abandoned(batch, cancelled=isinstance(exc, asyncio.CancelledError))
                raise
            finally:
                del self._active[index]
                self._batcher.done(batch)

    def _settle_abandoned(self, batch: Batch, *, cancelled: bool) -> None:
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
            self._stats.dropped[SHUTDOWN] += unresolved - batch.on_the_wire
        else:
            self._stats.dropped[CRASHED] += unresolved
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
            code = await self._publish_until_resolved(encoder.encode(part), part, batch)
            if code is grpc.StatusCode.OK:
                # Both at once: a scrape between the parts of a bisected
                # batch sees the total agree with the topics' sum.
                self._stats.published += len(part)
                self._stats.published_by_topic[topic_id] += len(part)
                published += len(part)
            elif len(part) == 1:
                self._stats.dropped[INVALID_MESSAGE] += 1
                self._limiter.log(
                    log,
                    INVALID_MESSAGE,
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
        self, request: bytes, messages: list[bytes], batch: Batch
    ) -> grpc.StatusCode:
        """Send one request (of ``messages``), retrying until OK or INVALID_ARGUMENT."""
        attempt = 0
        while True:
            batch.on_the_wire = len(messages)
            code, details = await self._attempt(request)
            batch.on_the_wire = 0
            if code is grpc.StatusCode.OK:
                return code
            policy = classify(code)
            if policy is Retry.SPLIT:
                return code
            self._stats.publish_retries[code.name] += 1
            if policy is Retry.TRANSIENT:
                delay = backoff_s(attempt, self._rng)
                attempt += 1
            else:
                delay = SINK_UNAVAILABLE_RETRY_S
            self._limiter.log(
                log,
                code.name,
                logging.WARNING,
                "publish failed with %s (%s); %d events kept, retrying in %.1fs",
                code.name,
                details,
                len(messages),
                delay,
            )
            await asyncio.sleep(delay)

    async def _attempt(self, request: bytes) -> tuple[grpc.StatusCode, str]:
        """One Publish call, with its bookkeeping: per-code count, latency, health."""
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
        self.health.finished(token, now, code.name)
        self._stats.publish_requests[code.name] += 1
        self._stats.publish_latency.observe(now - started)
        return code, details
