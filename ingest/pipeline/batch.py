"""The batching rule: close a batch on message count, encoded bytes or linger.

One publisher fills at a time (``fill_lock``), so under light load a single
batch lingers instead of N partial ones; under load batches fill instantly
and the other publishers are already sending theirs.

A partial request (one that fills neither bound) costs the daemon ~150-250
µs of grpc.aio CPU whatever it carries, and with ordering keys every key
with traffic would make one a linger. With --batch-max-latency-ms above the
linger, partial requests are bounded by a budget across lanes
(RequestBudget): past its linger a partial batch also waits for the
budget, and goes at the latest once its oldest event has waited the maximum
latency. Full requests, a closed queue (draining) and a queue half full
never wait for it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Generic, TypeVar

from ingest.pipeline.queue import Bounded, EventQueue
from ingest.publish.publisher import Batch

Q = TypeVar("Q", bound=Bounded)

# Upper bound of the protobuf framing one message adds to a PublishRequest:
# tag(1) + len(<=3) for the PubsubMessage, tag(1) + len(<=3) for its data.
# Lengths stay below 2 MiB because datagrams are capped at 1 MiB (config).
MESSAGE_OVERHEAD_BYTES = 8
# Partial requests a second across all lanes that RequestBudget lets go
# before their maximum latency (measured in docs/design.md, "Coalescing and
# the request budget"): a Publish costs the daemon ~1 ms of CPU at these
# rates whatever it carries, so at 2,000 events/s a plain daemon sends ~4
# requests a second of ~500 events, at a p99 of ~0.25 s (10 a second cost
# ~0.01 cores more for a p99 of ~0.1 s).
PARTIAL_REQUESTS_PER_S = 4.0


class RequestBudget:
    """When a partial batch past its linger may go: a token bucket of
    ``per_s`` requests a second (holding at most one, so an idle spell buys
    no burst), and at the latest once its oldest event has waited
    ``max_latency_s``. Such a late batch takes a token if there is one, so
    requests a second stay near max(``per_s``, lanes / ``max_latency_s``)."""

    __slots__ = ("at", "max_latency_s", "per_s", "tokens")

    def __init__(self, max_latency_s: float, per_s: float = PARTIAL_REQUESTS_PER_S) -> None:
        self.max_latency_s = max_latency_s
        self.per_s = per_s
        self.tokens = 1.0
        self.at = -math.inf  # loop time of the last refill

    def wait_s(self, since: float, now: float) -> float:
        """0: a batch whose oldest event came at ``since`` goes now (its
        token is spent); else how long until it may."""
        tokens = min(1.0, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        late_s = since + self.max_latency_s - now
        if tokens >= 1.0 or late_s <= 0:
            self.tokens = max(0.0, tokens - 1.0)
            return 0.0
        self.tokens = tokens
        return min((1.0 - tokens) / self.per_s, late_s)


class BatchRule(Generic[Q]):
    """The bounds a batch closes on; Batcher (one FIFO) and lanes.LaneBatcher
    (one FIFO per lane) fill from their queue."""

    def __init__(
        self,
        queue: Q,
        max_messages: int,
        max_request_bytes: int,
        reserved_bytes: int,
        linger_s: float,
        *,
        max_latency_s: float = 0.0,
    ) -> None:
        self._queue = queue
        self._reserved_bytes = reserved_bytes
        self.budget: RequestBudget | None = None
        self.set_bounds(max_messages, max_request_bytes, linger_s, max_latency_s=max_latency_s)
        self._fill_lock = asyncio.Lock()

    def set_bounds(
        self,
        max_messages: int,
        max_request_bytes: int,
        linger_s: float,
        *,
        max_latency_s: float = 0.0,
    ) -> None:
        """The bounds of batches started from now on (a reload may change
        them). ``max_latency_s`` at or below ``linger_s``: no budget, every
        partial batch goes after its linger."""
        self._max_messages = max_messages
        # Bytes left for messages once the request's own fields are encoded.
        self._max_bytes = max_request_bytes - self._reserved_bytes
        self._linger_s = linger_s
        if max_latency_s <= linger_s:
            self.budget = None
        elif self.budget is None:
            self.budget = RequestBudget(max_latency_s)
        else:  # the tokens carry over
            self.budget.max_latency_s = max_latency_s

    def room(self, batch: Batch) -> tuple[int, int]:
        """(messages, bytes) ``batch`` may still take; a message's framing
        (MESSAGE_OVERHEAD_BYTES) counts against the bytes."""
        used = batch.nbytes + MESSAGE_OVERHEAD_BYTES * len(batch)
        return self._max_messages - len(batch), self._max_bytes - used

    def done(self, batch: Batch) -> None:
        """Its publisher is done with ``batch`` (lanes.LaneBatcher releases
        its lane; nothing here)."""


class Batcher(BatchRule[EventQueue]):
    """Fills batches from the queue under the count, byte and linger bounds.

    Its one topic may be *parked* (publisher.PublisherPool: its publishes
    fail for the whole topic): then one batch at a time is filled, its probe,
    once its retry is due; the other publishers wait here, holding nothing."""

    def __init__(
        self,
        queue: EventQueue,
        max_messages: int,
        max_request_bytes: int,
        reserved_bytes: int,
        linger_s: float,
        *,
        max_latency_s: float = 0.0,
    ) -> None:
        super().__init__(
            queue,
            max_messages,
            max_request_bytes,
            reserved_bytes,
            linger_s,
            max_latency_s=max_latency_s,
        )
        # Parked: when the next probe may go (loop time; inf while one is
        # out). None: not parked. Set on each change of it.
        self._retry_at: float | None = None
        self._park_changed = asyncio.Event()

    def park(self, batch: Batch, retry_at: float) -> None:
        """The topic fails as a whole: ``batch``'s unresolved events go back
        to the front of the queue (resolved here: queued again), and the next
        probe is at ``retry_at`` (unless a probe taken since is out: a batch
        taken before the park leaves the schedule as it is)."""
        events = batch.messages[batch.resolved :]
        self._queue.give_back(events, sum(map(len, events)), batch.oldest_received_at)
        batch.resolved = len(batch)
        if self._retry_at is None or batch.probe:
            self._retry_at = retry_at
            self._park_changed.set()

    def unpark(self, topic: int) -> None:
        """The topic publishes again (``topic``: always 0, the one topic)."""
        self._retry_at = None
        self._park_changed.set()

    def done(self, batch: Batch) -> None:
        """A probe without a verdict (its publisher was cancelled or
        crashed): the next may go at once."""
        if batch.probe and self._retry_at == math.inf:
            self._retry_at = -math.inf
            self._park_changed.set()

    async def _until_probe_due(self, batch: Batch) -> None:
        """While parked: wait until the next probe may go, and make
        ``batch`` it."""
        loop = asyncio.get_running_loop()
        while self._retry_at is not None:
            wait_s = self._retry_at - loop.time()
            if wait_s <= 0:
                self._retry_at = math.inf
                batch.probe = True
                return
            self._park_changed.clear()
            try:
                async with asyncio.timeout(None if wait_s == math.inf else wait_s):
                    await self._park_changed.wait()
            except TimeoutError:
                pass  # due: look again

    async def fill(self, batch: Batch) -> bool:
        """Fill ``batch`` in place; False when the queue is closed and empty.

        Filling in place means events are never in neither place: the moment
        they leave the queue they are in the caller's batch, which the caller
        counts as in flight and, if cancelled, spools or counts as dropped.

        While it lingers it sleeps until the linger (or the budget) ends, or
        the queue holds what fills the batch, or it closes: a put of a few
        events does not wake it (EventQueue.wait_filled).
        """
        queue = self._queue
        async with self._fill_lock:
            # Parked: probes only, even through the drain (the topic may
            # come back before the deadline).
            await self._until_probe_due(batch)
            while not queue.events:
                if queue.closed:
                    return False
                await queue.wait_nonempty()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._linger_s
            lingered = False
            while True:
                chunk = queue.take(*self.room(batch), MESSAGE_OVERHEAD_BYTES)
                if chunk is not None:
                    batch.extend(chunk.events, chunk.nbytes, chunk.received_at, chunk.received_at)
                    if queue.events:
                        continue  # more queued: keep taking until a bound stops us
                if len(batch) >= self._max_messages or queue.events:
                    return True  # full by count, or the next event does not fit
                if queue.closed or lingered:
                    return True
                now = loop.time()
                remaining = deadline - now
                if remaining <= 0 and self.budget is not None:
                    remaining = self.budget.wait_s(batch.oldest_received_at, now)
                if remaining <= 0:
                    lingered = True  # what came meanwhile joins it, then it goes
                    continue
                room_count, room_bytes = self.room(batch)
                try:
                    async with asyncio.timeout(remaining):
                        await queue.wait_filled(room_count, room_bytes, MESSAGE_OVERHEAD_BYTES)
                except TimeoutError:
                    pass  # lingered: take what came, and look at the budget
