"""Lanes: the queue and batching of Pub/Sub-native messages.

A *lane* is where a message goes: (topic number, ordering key). Messages of
one lane share requests and never share one with another lane's: a request
names one topic, and Pub/Sub wants one ordering key per request (Google's
publishers batch per key too). A lane with an ordering key also has at most
one request in flight: its publisher *holds* the lane from the moment it
takes its messages until they are published or dropped, so a key whose
request fails waits -- retries, backoff, an outage -- and its later messages
cannot overtake it. Lanes without a key (b"") are not held: any number of
publishers send them at once, exactly like the plain path.

The queue keeps one FIFO of chunks per lane, under the one pair of bounds
(events and bytes) of queue.Bounded: a held lane's messages wait in memory
and count against the same bounds as everything else, so a stuck key fills
the queue (and spills, or drops as ``queue_full``) rather than memory. Each
lane's own cost (LANE_BYTES) counts against the byte bound too, so senders
that make every ordering key new meet the same memory bound.

Lanes are served oldest first: a lane is kept in insertion order while it
has messages, so the next lane a publisher takes is the one waiting longest
that is not held, once it is ready (its oldest message has lingered, or it
fills a request: LaneQueue.ready_lane).

A topic can be *parked* (LaneQueue.park): its publishes fail for the whole
topic (it was deleted, permission was withdrawn; publisher.PublisherPool
decides), so its lanes wait apart, where the search for a ready lane does not
look, and one request at a time probes it: when its retry is due, the next
filler takes its oldest lane (``Batch.probe``); a failed probe gives its
messages back and sets the next retry, so no publisher waits out the retry
interval and the other topics keep every publisher. Its messages stay queued
within half the queue's bounds while other topics are not parked, so the
others always have room; what does not fit is spilled, or dropped as
``queue_full``, as any overflow.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ingest.config import Settings
from ingest.pipeline.batch import MESSAGE_OVERHEAD_BYTES, BatchRule, RequestBudget
from ingest.pipeline.message import Lane, MessageBuilder, Route, from_data_record
from ingest.pipeline.queue import Bounded, Chunk
from ingest.publish.publisher import Batch
from ingest.publish.pubsub import ordering_key_of
from ingest.ratelimit import LogLimiter
from ingest.spool import Spool
from ingest.spool.records import KIND_DATA, KIND_MESSAGES
from ingest.stats import Stats

log = logging.getLogger(__name__)

# What a lane with queued messages costs in memory besides its messages (its
# FIFO, its first chunk, its key; measured ~930 bytes), charged to the
# queue's byte bound while the lane exists: one event per ordering key, with
# every key new, must not hold ~35x the bytes the bound says.
LANE_BYTES = 1024
_BODY = operator.itemgetter(1)  # of a (lane, body) item
_LANE = operator.itemgetter(0)
# The part of each bound parked topics may fill while other topics are not
# parked: the rest is theirs, so a dead topic cannot crowd them out.
PARKED_SHARE = 0.5
# A lane's queued messages, spilled together (the lane names their topic).
LaneSpill = Callable[[list[bytes], Lane | None], None]
# A keyed lane's new messages sent behind its messages on disk; False when
# the spool cannot take them now.
LaneDivert = Callable[[list[bytes], Lane], bool]
# Keyed lanes with messages on disk counted one by one, at most: beyond,
# SpooledLanes stops telling them apart (~150 bytes each; measured).
SPOOLED_LANES_MAX = 100_000


class LaneFifo:
    """One lane's queued messages: one flat list, not a chunk per wake-up.

    With K ordering keys a wake-up's messages split K ways, so a chunk per
    lane per wake-up held ~2-3 messages at 100 keys and the queue paid its
    bookkeeping per message (~1.6 µs an event of put and take, measured by
    tools/bench/lanes.py). Here a wake-up extends the list and notes when its
    part was received (``stamps``); a batch takes a slice. ``bodies[head:]``
    are queued; the taken prefix is cut off once it is the larger part."""

    __slots__ = ("bodies", "head", "nbytes", "stamps")

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.head = 0
        self.nbytes = 0  # of bodies[head:]
        # (end, received_at): bodies up to index ``end`` were received then.
        self.stamps: deque[tuple[int, float]] = deque()

    def __len__(self) -> int:
        return len(self.bodies) - self.head

    def add(self, bodies: list[bytes], nbytes: int, received_at: float) -> None:
        self.bodies += bodies
        self.nbytes += nbytes
        self.stamps.append((len(self.bodies), received_at))

    def prepend(self, bodies: list[bytes], nbytes: int, oldest: float, newest: float) -> None:
        """Messages taken earlier (received from ``oldest`` to ``newest``) back
        in front of those queued since."""
        shift = len(bodies) - self.head
        front = [(1, oldest), (len(bodies), newest)] if len(bodies) > 1 else [(1, oldest)]
        self.bodies = bodies + self.bodies[self.head :]
        self.head = 0
        self.nbytes += nbytes
        self.stamps = deque([*front, *((end + shift, at) for end, at in self.stamps)])

    def take(self, count: int, nbytes: int) -> Taken:
        """The next ``count`` messages (``nbytes`` of them), with when the
        oldest and the newest of them were received."""
        head = self.head
        end = head + count
        stamps = self.stamps
        oldest = stamps[0][1]
        while stamps[0][0] < end:
            stamps.popleft()
        newest = stamps[0][1]
        if stamps[0][0] == end:
            stamps.popleft()
        if head == 0 and end == len(self.bodies):
            events = self.bodies
            self.bodies = []
            end = 0
        else:
            events = self.bodies[head:end]
            if end > len(self.bodies) // 2:  # compact: drop the taken prefix
                del self.bodies[:end]
                self.stamps = deque((stop - end, at) for stop, at in stamps)
                end = 0
        self.head = end
        self.nbytes -= nbytes
        return Taken(events, nbytes, oldest, newest)


@dataclass(slots=True)
class Taken:
    """Messages taken from one lane, and when the oldest and newest of them
    were received (the batch's latency is observed at both)."""

    events: list[bytes]
    nbytes: int
    oldest: float
    newest: float


def _by_lane(items: list[tuple[Lane, bytes]]) -> dict[Lane, list[bytes]]:
    """One wake-up's messages grouped by lane, each group in its order, the
    lanes in the order they first appear."""
    groups: dict[Lane, list[bytes]] = {}
    for lane, body in items:
        group = groups.get(lane)
        if group is None:
            groups[lane] = [body]
        else:
            group.append(body)
    return groups


def topic_number(topics: tuple[str, ...], topic: str) -> int | None:
    """A spooled record's topic by number (0: --topic, also for ""); None
    when it is no longer configured (its messages then go to --topic)."""
    if not topic or topic == topics[0]:
        return 0
    return topics.index(topic) if topic in topics else None


class SpooledLanes:
    """Which ordering keys have messages on disk not yet replayed: their
    live messages must follow those to the spool, or they would overtake
    them (README, "Ordering keys").

    ``counts`` holds each keyed lane's messages on disk; ``untracked``
    counts messages on disk whose lane is not told apart: plain events an
    earlier run spooled (this run's metadata gives them their key at
    replay), and, past SPOOLED_LANES_MAX lanes, every keyed message (the
    counts are folded into it, which bounds the memory). While ``untracked``
    is not 0 every keyed lane counts as having messages on disk. A keyed
    message on disk is counted in exactly one place: under its lane while
    the lane is in ``counts``, else in ``untracked``; so a lane only enters
    ``counts`` while nothing is untracked, when it has nothing on disk.

    Counts can only be too high, never too low: messages the spool loses
    (damage) are never replayed, so their lane keeps going through the spool
    until the spool is empty, when ``clear`` starts afresh. A count too low
    would let a key's live messages overtake its spooled ones."""

    __slots__ = ("counts", "limit", "topics", "untracked")

    def __init__(
        self, topics: tuple[str, ...], *, untracked: int = 0, limit: int = SPOOLED_LANES_MAX
    ) -> None:
        self.topics = topics
        self.counts: dict[Lane, int] = {}
        self.untracked = untracked
        self.limit = limit

    def holds(self, lane: Lane) -> bool:
        """Whether keyed ``lane`` may have messages on disk not yet replayed."""
        return self.untracked > 0 or lane in self.counts

    def added(self, lane: Lane, count: int) -> None:
        """``count`` messages of ``lane`` were written to the spool."""
        if not lane[1] or count <= 0:
            return  # no key, no order to keep
        counts = self.counts
        if lane in counts:
            counts[lane] += count
        elif self.untracked:
            self.untracked += count
        elif len(counts) < self.limit:
            counts[lane] = count
        else:
            log.info(
                "spooled messages of more than %d ordering keys: every key's messages go "
                "through the spool until it has replayed those",
                self.limit,
            )
            self.untracked = sum(counts.values()) + count
            counts.clear()

    def seen(self, kind: int, topic: str, events: list[bytes]) -> None:
        """A record the spool found at startup (spool.Spool.open's ``seen``).
        A record of messages holds one lane's: they are spilled lane by lane
        (spool/records.py), so its first message names the lane of all."""
        if kind == KIND_DATA:
            self.untracked += len(events)
            return
        number = topic_number(self.topics, topic)
        self.added((0 if number is None else number, ordering_key_of(events[0])), len(events))

    def replayed(self, kind: int, items: list[tuple[Lane, bytes]]) -> None:
        """Messages replay moved from the spool to the memory queue."""
        if kind == KIND_DATA:
            self.untracked = max(0, self.untracked - len(items))
            return
        counts = self.counts
        for lane, count in Counter(map(_LANE, items)).items():
            if not lane[1]:
                continue
            left = counts.get(lane)
            if left is None:
                self.untracked = max(0, self.untracked - count)
            elif left > count:
                counts[lane] = left - count
            else:
                del counts[lane]

    def clear(self) -> None:
        """The spool is empty: nothing of any lane is on disk."""
        self.counts.clear()
        self.untracked = 0


def _fitting(fifo: LaneFifo, max_count: int, max_bytes: int, overhead: int) -> tuple[int, int]:
    """How many of ``fifo``'s oldest messages fit ``max_count`` and
    ``max_bytes`` counting ``overhead`` each, and their bytes (without it)."""
    count = nbytes = 0
    bodies = fifo.bodies
    for index in range(fifo.head, fifo.head + min(max_count, len(fifo))):
        size = len(bodies[index]) + overhead
        if nbytes + size > max_bytes:
            break
        nbytes += size
        count += 1
    return count, nbytes - overhead * count


def _prefix_within(
    bodies: list[bytes], room_events: int, room_bytes: int
) -> tuple[list[bytes], int]:
    """The longest prefix of ``bodies`` within both rooms, and its bytes."""
    count = nbytes = 0
    for body in bodies[: max(0, room_events)]:
        if nbytes + len(body) > room_bytes:
            break
        nbytes += len(body)
        count += 1
    return bodies[:count], nbytes


class LaneQueue(Bounded):
    """Bounded like EventQueue; items are (lane, body) pairs, kept per lane."""

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        stats: Stats,
        *,
        spill: LaneSpill | None = None,
        spooled: SpooledLanes | None = None,
        divert: LaneDivert | None = None,
        topics: int = 1,
    ) -> None:
        super().__init__(max_events, max_bytes, stats)
        # Oldest first. An OrderedDict, not a dict: lanes leave from the front
        # and a dict keeps a deleted entry's slot until it next resizes, so
        # finding the first lane would scan every lane that left before it --
        # quadratic when each event brings a new ordering key (~30 µs a
        # request at 50,000 one-message lanes, tools/bench/lanes.py).
        self._lanes: OrderedDict[Lane, LaneFifo] = OrderedDict()
        self._held: set[Lane] = set()
        # Set by a release, close, a change of bounds, and a put that may
        # make a lane ready sooner than the waiting filler's timeout: that
        # filler looks again. Cleared by the filler before it waits.
        self._changed = asyncio.Event()
        # What the last ready_lane found and asked: whether any lane was
        # waiting to be ready (if not, a put must wake the filler), and the
        # request's bounds (a put that fills a request must wake it). Other
        # puts do not: waking a filler only to find the same oldest lane
        # still lingering costs ~20 µs each, thousands of times a second.
        self._lingering = False
        self._request_bounds = (sys.maxsize, sys.maxsize, 0)
        # Lanes a put found filling a request (some may have been taken since).
        self._full: set[Lane] = set()
        self.spill = spill
        # With a spool: the keyed lanes with messages on disk, whose new
        # messages ``put`` sends there too (``divert``, which counts them in).
        self.spooled = spooled
        self.divert = divert

        # Parked topics (by number, of ``topics``): when each may be probed
        # next (loop time; inf while its probe is out), and their lanes, by
        # topic, out of ``_lanes`` so ready_lane's search never meets them (a
        # dead topic's thousand keys would cost every fill ~90 µs). What
        # they hold (messages, and bytes with each lane's LANE_BYTES) is part
        # of ``events`` and ``bytes``, and counted apart too.
        self._topics = topics
        self._parked: dict[int, float] = {}
        self._parked_lanes: dict[int, OrderedDict[Lane, LaneFifo]] = {}
        self._parked_events = 0
        self._parked_bytes = 0

    def put(self, items: list[tuple[Lane, bytes]], received_at: float) -> None:
        """Enqueue one wake-up's messages per lane, in their order; what does
        not fit is spilled, or counted dropped (``queue_full``). A keyed
        lane with messages on disk has its new ones spilled behind them; a
        parked topic's lanes are queued apart, within their share."""
        groups = _by_lane(items)
        count = len(items)
        total = sum(map(len, map(_BODY, items)))
        spooled = self.spooled
        # Two attribute reads a put while nothing keyed is on disk.
        if spooled is not None and (spooled.counts or spooled.untracked):
            diverted = [lane for lane in groups if lane[1] and spooled.holds(lane)]
            if diverted:
                assert self.divert is not None  # given with ``spooled``
                for lane in diverted:
                    bodies = groups[lane]
                    if self.divert(bodies, lane):  # else queued as any other
                        del groups[lane]
                        count -= len(bodies)
                        total -= sum(map(len, bodies))
                if not groups:
                    return
        if self._parked:
            moved, moved_bytes = self._put_parked(groups, received_at)
            if not groups:
                return
            count -= moved
            total -= moved_bytes
        # Every lane of the put counted as new: exact but for lanes already
        # queued, whose 1 KiB each is then spare. Near the bound, the exact
        # path below.
        if self.fits(count, total + len(groups) * LANE_BYTES):
            filled = self._enqueue(groups, received_at, count, total)
        else:
            for lane, bodies in groups.items():
                self._put_lane(lane, bodies, received_at)
            filled = self._note_full(groups)
        if filled or not self._lingering or self._urgent():
            # A lane may be ready before the waiting filler's timeout.
            self._changed.set()

    def put_replayed(self, items: list[tuple[Lane, bytes]], received_at: float) -> None:
        """Spooled messages back in memory (replay.py), all of them:
        spilling any again would put it behind its lane's later messages on
        disk. Replay takes only what fits the bounds, but for the lanes' own
        cost, which can take the byte bound over by at most LANE_BYTES a
        lane a replay step starts (REPLAY_EVENTS_PER_STEP of them)."""
        groups = _by_lane(items)
        count, total = len(items), sum(map(len, map(_BODY, items)))
        if self._parked:  # a parked topic's wait apart, as live ones do
            moved, moved_bytes = self._put_parked(groups, received_at, share=False)
            count -= moved
            total -= moved_bytes
        filled = self._enqueue(groups, received_at, count, total)
        if filled or not self._lingering or self._urgent():
            self._changed.set()

    def _enqueue(
        self, groups: dict[Lane, list[bytes]], received_at: float, count: int, total: int
    ) -> bool:
        """Each lane's part joins its FIFO (``count`` messages, ``total``
        bytes in all), bounds not checked (the caller did); whether a lane
        now fills a request. Inline rather than
        LaneFifo.add: per lane, per put, with a wake-up's messages spread
        over many keys, a method call or two costs a tenth of a µs an event."""
        lanes = self._lanes
        max_count, max_bytes, overhead = self._request_bounds
        filled = False
        new_lanes = 0
        for lane, bodies in groups.items():
            fifo = lanes.get(lane)
            if fifo is None:
                fifo = lanes[lane] = LaneFifo()
                new_lanes += 1
            queued = fifo.bodies
            queued += bodies
            fifo.nbytes += sum(map(len, bodies))
            fifo.stamps.append((len(queued), received_at))
            queued_count = len(queued) - fifo.head
            if queued_count >= max_count or fifo.nbytes + overhead * queued_count >= max_bytes:
                self._full.add(lane)  # as _note_full
                filled = True
        self.events += count
        self.bytes += total + new_lanes * LANE_BYTES
        return filled

    def _note_full(self, lanes: Iterable[Lane]) -> bool:
        """Note which of ``lanes`` now fill a request (ready at once, found
        by ready_lane wherever they stand); whether any does."""
        filled = False
        for lane in lanes:
            fifo = self._lanes.get(lane)
            if fifo is not None and self._fills_request(fifo):
                self._full.add(lane)
                filled = True
        return filled

    def _fills_request(self, fifo: LaneFifo) -> bool:
        max_count, max_bytes, overhead = self._request_bounds
        count = len(fifo)
        return count >= max_count or fifo.nbytes + overhead * count >= max_bytes

    def _urgent(self) -> bool:
        """No lingering: the queue is closed (draining), or half full by either
        bound. Parked topics' messages wait for their topic, not for a
        publisher: half of what is left beside them is what presses."""
        events = self.events - self._parked_events
        nbytes = self.bytes - self._parked_bytes
        return (
            self.closed
            or 2 * events >= self.max_events - self._parked_events
            or 2 * nbytes >= self.max_bytes - self._parked_bytes
        )

    def _put_lane(self, lane: Lane, bodies: list[bytes], received_at: float) -> None:
        """One lane's part of a put that does not all fit: what fits, lane by
        lane, in their order (a new lane's cost counted first)."""
        fifo = self._lanes.get(lane)
        if fifo is None:
            self.bytes += LANE_BYTES
        kept, nbytes = self.admit(bodies)
        if len(kept) < len(bodies):
            self._overflow(bodies[len(kept) :], lane)
        if not kept:
            if fifo is None:
                self.bytes -= LANE_BYTES
            return
        if fifo is None:
            fifo = self._lanes[lane] = LaneFifo()
        fifo.add(kept, nbytes, received_at)
        self.events += len(kept)
        self.bytes += nbytes

    def _overflow(self, bodies: list[bytes], lane: Lane) -> None:
        """What a lane's part of a put cannot keep: spilled with its lane, or
        dropped as ``queue_full``."""
        if self.spill is not None:
            self.spill(bodies, lane)
        else:
            self.drop_full(len(bodies))

    def ready_lane(
        self,
        now: float,
        linger_s: float,
        max_count: int,
        max_bytes: int,
        overhead: int,
        *,
        budget: RequestBudget | None = None,
    ) -> tuple[Lane | None, float | None]:
        """The lane to send next, oldest first among those no publisher
        holds: once its oldest message has waited ``linger_s`` (and, with a
        ``budget``, once that lets a partial request go), or at once
        when it fills a request (``max_count``, or ``max_bytes`` counting
        ``overhead`` a message), when the queue is half full by either bound
        (no lingering while memory fills), or closed (draining). Else None,
        and how long until the oldest lane it may take is ready (None when
        every queued lane is held).

        Lanes that fill a request were noted by the put that filled them;
        otherwise only the oldest lane not held is looked at: lanes are kept
        in the order they were started, so the ones behind it waited no
        longer, and a fill costs the same with 100,000 lanes. A parked
        topic's oldest lane comes first once its probe is due (the wait
        counts down to that too), and is otherwise never looked at."""
        self._request_bounds = (max_count, max_bytes, overhead)
        self._lingering = False
        probe_wait_s: float | None = None
        if self._parked:
            lane, probe_wait_s = self._probe_lane(now)
            if lane is not None:
                return lane, None
        held = self._held
        for lane in list(self._full):
            fifo = self._lanes.get(lane)
            if fifo is None or not self._fills_request(fifo):
                self._full.discard(lane)
            elif lane not in held:
                return lane, None
        urgent = self._urgent()
        for lane, fifo in self._lanes.items():
            if lane in held:
                continue
            if urgent or self._fills_request(fifo):
                return lane, None
            since = fifo.stamps[0][1]
            wait_s = since + linger_s - now
            if wait_s <= 0:
                if budget is None:
                    return lane, None
                wait_s = budget.wait_s(since, now)
                if wait_s <= 0:
                    return lane, None
            self._lingering = True
            return None, wait_s if probe_wait_s is None else min(wait_s, probe_wait_s)
        return None, probe_wait_s

    def take(self, lane: Lane, max_count: int, max_bytes: int, overhead: int) -> Taken | None:
        """The lane's oldest messages, as many as fit ``max_count`` and
        ``max_bytes`` counting ``overhead`` per message (queue.take_from's
        rule); None when it has none or not even the first fits."""
        fifo = self._lanes.get(lane)
        if fifo is None:
            return self._take_parked(lane, max_count, max_bytes, overhead)
        count = len(fifo)
        nbytes = fifo.nbytes
        if count > max_count or nbytes + overhead * count > max_bytes:
            count, nbytes = _fitting(fifo, max_count, max_bytes, overhead)
            if not count:
                return None
        taken = fifo.take(count, nbytes)
        if not len(fifo):
            del self._lanes[lane]
            self.bytes -= LANE_BYTES
        self.events -= count
        self.bytes -= nbytes
        return taken

    def hold(self, lane: Lane) -> None:
        """Keep other publishers off an ordered lane until ``release``."""
        if lane[1]:
            self._held.add(lane)

    def release(self, lane: Lane) -> None:
        if lane in self._held:
            self._held.discard(lane)
            self._changed.set()

    def park(self, topic: int, retry_at: float, *, probe: bool = False) -> None:
        """``topic``'s publishes fail for the whole topic: no lane of it is
        handed out but its probe, once ``retry_at`` (loop time) has come.
        ``probe``: the failure was the probe's, whose retry this sets; a
        batch taken before the topic was parked leaves the schedule as it is."""
        due = self._parked.get(topic)
        if due is None:
            lanes = self._parked_lanes[topic] = OrderedDict()
            for lane in [lane for lane in self._lanes if lane[0] == topic]:
                fifo = lanes[lane] = self._lanes.pop(lane)
                self._full.discard(lane)
                self._parked_events += len(fifo)
                self._parked_bytes += fifo.nbytes + LANE_BYTES
        elif not probe:
            return
        self._parked[topic] = retry_at
        self._changed.set()  # a filler's wait may end sooner

    def unpark(self, topic: int) -> None:
        """``topic`` publishes again: its lanes are served first (they have
        waited longest), in their order."""
        if self._parked.pop(topic, None) is None:
            return
        lanes = self._parked_lanes.pop(topic)
        for lane, fifo in reversed(lanes.items()):
            self._lanes[lane] = fifo
            self._lanes.move_to_end(lane, last=False)
            self._parked_events -= len(fifo)
            self._parked_bytes -= fifo.nbytes + LANE_BYTES
        self._note_full(lanes)
        self._changed.set()

    def probe_ended(self, topic: int) -> None:
        """A probe of ``topic`` ended without a verdict (its publisher was
        cancelled or crashed): the next may go at once."""
        if self._parked.get(topic) == math.inf:
            self._parked[topic] = -math.inf
            self._changed.set()

    def is_parked(self, topic: int) -> bool:
        return topic in self._parked

    def publishes_beside(self, topics: Iterable[int]) -> bool:
        """Whether ``topics`` are all parked while some other topic is not:
        the rest of Pub/Sub is publishing around them."""
        parked = self._parked
        return len(parked) < self._topics and all(topic in parked for topic in topics)

    def _probe_lane(self, now: float) -> tuple[Lane | None, float | None]:
        """The oldest lane of a parked topic whose probe is due (marked out:
        the next waits for its verdict), or None and how long until the first
        is due (None when none is: every probe out, or nothing queued)."""
        wait_s: float | None = None
        held = self._held
        for topic, due in self._parked.items():
            if due == math.inf:
                continue
            lane = next((lane for lane in self._parked_lanes[topic] if lane not in held), None)
            if lane is None:
                continue
            if due <= now:
                self._parked[topic] = math.inf
                return lane, None
            wait_s = due - now if wait_s is None else min(wait_s, due - now)
        return None, wait_s

    def _take_parked(
        self, lane: Lane, max_count: int, max_bytes: int, overhead: int
    ) -> Taken | None:
        """``take`` from a parked topic's lane: its probe."""
        lanes = self._parked_lanes.get(lane[0])
        fifo = lanes.get(lane) if lanes is not None else None
        if lanes is None or fifo is None:
            return None
        count, nbytes = _fitting(fifo, max_count, max_bytes, overhead)
        if not count:
            return None
        taken = fifo.take(count, nbytes)
        freed = nbytes
        if not len(fifo):
            del lanes[lane]
            freed += LANE_BYTES
        self.events -= count
        self.bytes -= freed
        self._parked_events -= count
        self._parked_bytes -= freed
        return taken

    def _put_parked(
        self, groups: dict[Lane, list[bytes]], received_at: float, *, share: bool = True
    ) -> tuple[int, int]:
        """Take the parked topics' lanes out of ``groups`` (a put's) and queue
        them apart, within their share (PARKED_SHARE of each bound while any
        topic is not parked, else the whole queue), spilling or dropping
        (``queue_full``) the rest of each lane's part; ``share=False``
        (replayed messages, which must not be spilled again) queues them
        whole. Returns how many messages, and bytes, were taken out."""
        parked = self._parked
        mine = [lane for lane in groups if lane[0] in parked]
        if not mine:
            return 0, 0
        part = PARKED_SHARE if len(parked) < self._topics else 1.0
        max_events = int(self.max_events * part) if share else sys.maxsize
        max_bytes = int(self.max_bytes * part) if share else sys.maxsize
        moved = moved_bytes = 0
        for lane in mine:
            bodies = groups.pop(lane)
            moved += len(bodies)
            moved_bytes += sum(map(len, bodies))
            lanes = self._parked_lanes[lane[0]]
            fifo = lanes.get(lane)
            lane_bytes = LANE_BYTES if fifo is None else 0
            if share:
                kept, nbytes = _prefix_within(
                    bodies,
                    min(max_events - self._parked_events, self.max_events - self.events),
                    min(max_bytes - self._parked_bytes, self.max_bytes - self.bytes) - lane_bytes,
                )
            else:
                kept, nbytes = bodies, sum(map(len, bodies))
            if len(kept) < len(bodies):
                self._overflow(bodies[len(kept) :], lane)
            if not kept:
                continue
            if fifo is None:
                if not lanes:  # a probe may be due now that there is something to send
                    self._changed.set()
                fifo = lanes[lane] = LaneFifo()
            fifo.add(kept, nbytes, received_at)
            self.events += len(kept)
            self.bytes += nbytes + lane_bytes
            self._parked_events += len(kept)
            self._parked_bytes += nbytes + lane_bytes
        return moved, moved_bytes

    def give_back(
        self, lane: Lane, events: list[bytes], nbytes: int, oldest: float, newest: float
    ) -> None:
        """A publisher's unpublished messages of ``lane`` (received from
        ``oldest`` to ``newest``), back in front of its FIFO: its topic
        failed as a whole. Counted against the bounds even past them: they
        were accepted, and held in flight until now."""
        parked = lane[0] in self._parked
        lanes = self._parked_lanes[lane[0]] if parked else self._lanes
        fifo = lanes.get(lane)
        lane_bytes = 0
        if fifo is None:
            fifo = lanes[lane] = LaneFifo()
            lane_bytes = LANE_BYTES
        fifo.prepend(events, nbytes, oldest, newest)
        lanes.move_to_end(lane, last=False)  # the oldest lane now
        self.events += len(events)
        self.bytes += nbytes + lane_bytes
        if parked:
            self._parked_events += len(events)
            self._parked_bytes += nbytes + lane_bytes
        else:  # unparked meanwhile: ready at once, by its age
            self._note_full([lane])
            self._changed.set()

    def wake(self) -> None:
        """A filler waiting for a lane looks again (the bounds changed)."""
        self._changed.set()

    async def wait_changed(self) -> None:
        """Until the next put, release or close (the caller saw nothing to take)."""
        self._changed.clear()
        await self._changed.wait()

    def take_all(self) -> list[tuple[Lane, Chunk]]:
        """Remove and return everything queued (shutdown), lane by lane."""
        out = [
            (lane, Chunk(fifo.bodies[fifo.head :], fifo.nbytes, fifo.stamps[0][1]))
            for lanes in (self._lanes, *self._parked_lanes.values())
            for lane, fifo in lanes.items()
        ]
        self._lanes.clear()
        for lanes in self._parked_lanes.values():
            lanes.clear()
        self._full.clear()
        self.events = 0
        self.bytes = 0
        self._parked_events = 0
        self._parked_bytes = 0
        return out

    def close(self) -> None:
        """No more puts are coming: wake waiters so they can see the end."""
        self.closed = True
        self._changed.set()


class LaneBatcher(BatchRule["LaneQueue"]):
    """batch.Batcher's rule (count, encoded bytes, linger), per lane.

    One publisher fills at a time. It takes the oldest lane it may (not
    held) once that lane is ready (LaneQueue.ready_lane: its oldest message
    has lingered, or it fills a request), holds it when it has an ordering
    key, and takes that lane's messages up to the bounds. The linger is per
    lane, so each lane's requests are at most one a linger unless they are
    full: the number of requests a second is bounded by the lanes with
    traffic over ``--batch-linger-ms``, not by how fast publishers can turn
    around (which spent every idle cycle on smaller requests). With a
    budget (batch.RequestBudget) partial requests are bounded across lanes
    too: many keys each wait longer, up to the maximum latency, rather than
    each costing a request a linger.
    """

    def set_bounds(
        self,
        max_messages: int,
        max_request_bytes: int,
        linger_s: float,
        *,
        max_latency_s: float = 0.0,
    ) -> None:
        """As BatchRule's; a filler waiting out the old linger looks again."""
        super().set_bounds(max_messages, max_request_bytes, linger_s, max_latency_s=max_latency_s)
        self._queue.wake()

    async def fill(self, batch: Batch) -> bool:
        """Fill ``batch`` from one lane (``batch.lane``); False when the
        queue is closed and empty. Filled in place, as batch.Batcher does."""
        queue = self._queue
        async with self._fill_lock:
            loop = asyncio.get_running_loop()
            while True:
                lane, wait_s = queue.ready_lane(
                    loop.time(),
                    self._linger_s,
                    self._max_messages,
                    self._max_bytes,
                    MESSAGE_OVERHEAD_BYTES,
                    budget=self.budget,
                )
                if lane is not None:
                    break
                if queue.closed and not queue.events:
                    return False
                try:
                    async with asyncio.timeout(wait_s):
                        await queue.wait_changed()
                except TimeoutError:
                    pass  # the oldest lane has lingered long enough: look again
            queue.hold(lane)
            batch.lane = lane
            batch.probe = queue.is_parked(lane[0])
            # A ready lane has messages; one too large for a request even
            # alone (a maximal datagram with many attributes) is sent alone,
            # and Pub/Sub rejects it (INVALID_ARGUMENT, invalid_message).
            taken = queue.take(lane, *self.room(batch), MESSAGE_OVERHEAD_BYTES)
            if taken is None:
                taken = queue.take(lane, 1, sys.maxsize, 0)
            assert taken is not None
            batch.extend(taken.events, taken.nbytes, taken.oldest, taken.newest)
            return True

    def done(self, batch: Batch) -> None:
        """Its publisher is done with ``batch``: its lane may be taken again
        (and, were it a probe without a verdict, the next probe may go)."""
        if batch.lane is not None:
            self._queue.release(batch.lane)
            if batch.probe:
                self._queue.probe_ended(batch.lane[0])

    def park(self, batch: Batch, retry_at: float) -> None:
        """``batch``'s topic fails as a whole: its unresolved messages go
        back to the front of its lane (resolved here: queued again, no
        longer in flight), and the topic is parked until a probe at
        ``retry_at`` (LaneQueue.park)."""
        assert batch.lane is not None
        events = batch.messages[batch.resolved :]
        self._queue.give_back(
            batch.lane,
            events,
            sum(map(len, events)),
            batch.oldest_received_at,
            batch.newest_received_at,
        )
        batch.resolved = len(batch)
        self._queue.park(batch.lane[0], retry_at, probe=batch.probe)

    def unpark(self, topic: int) -> None:
        self._queue.unpark(topic)


class MessageLanes:
    """The metadata pipeline's parts, from the configuration: the topics (by
    number: 0 is --topic, then the routes' in order), the builder, the lane
    queue, and how lanes go to the spool and come back from it.

    With a spool, per-key order holds through it (README, "Ordering keys"):
    ``spooled`` knows the keyed lanes with messages on disk, the queue sends
    their new messages there too until replay has caught up, and at a stop
    what memory still holds of such a lane is put ahead of its messages on
    disk (``leave``, ``put_back``), since it is older. ``spooled``: what the
    spool held at startup, counted as Spool.open read it (SpooledLanes.seen);
    None with a spool that holds events counts every keyed lane as having
    some on disk until the spool has been emptied once."""

    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        spool: Spool | None = None,
        spooled: SpooledLanes | None = None,
    ) -> None:
        self.topics = settings.topics
        self._stats = stats
        self.builder = self._builder(settings)
        self._spool = spool
        self.spooled: SpooledLanes | None = None
        if spool is not None:
            self.spooled = spooled or SpooledLanes(self.topics, untracked=spool.events)
        self.queue = LaneQueue(
            settings.queue_max_events,
            settings.queue_max_bytes,
            stats,
            spill=self._spill if spool else None,
            spooled=self.spooled,
            divert=self._divert if spool else None,
            topics=len(self.topics),
        )
        self._limiter = LogLimiter()
        self._unknown_topics: set[str] = set()
        # What a stop could not publish of lanes with messages on disk, in
        # the order it was left: put ahead of those at the end (``put_back``).
        self._ahead: list[tuple[list[bytes], Lane]] = []

    def reconfigure(self, settings: Settings) -> None:
        """A reload's attributes, ordering key and routes, for messages built
        from now on. Topics keep their numbers, since queued lanes name them;
        a route may only name a topic this daemon already publishes to."""
        unknown = [r.topic for r in settings.routes if r.topic not in self.topics]
        if unknown:
            raise ValueError(f"routes to topics not published to since startup: {unknown}")
        self.builder = self._builder(settings)

    def _builder(self, settings: Settings) -> MessageBuilder:
        routes = [Route(self.topics.index(r.topic), r.field, r.value) for r in settings.routes]
        return MessageBuilder(
            settings.attributes,
            settings.attribute_fields,
            self._stats.attributes_skipped,
            ordering_field=settings.ordering_key_field,
            routes=routes,
        )

    def _topic_id(self, lane: Lane | None) -> str:
        """A lane's topic as spooled: "" for --topic, so a restart with
        another --topic publishes them there, as it does plain events."""
        topic = lane[0] if lane is not None else 0
        return self.topics[topic] if topic else ""

    def _spill(self, bodies: list[bytes], lane: Lane | None) -> None:
        """The queue's overflow, and a keyed lane's messages that follow
        its messages on disk: spooled, and what the spool kept counted in
        ``spooled``."""
        spool, spooled = self._spool, self.spooled
        assert spool is not None and spooled is not None
        before = spool.events
        spool.append(bodies, kind=KIND_MESSAGES, topic=self._topic_id(lane))
        if lane is not None:
            spooled.added(lane, spool.events - before)  # what the spool kept

    def _divert(self, bodies: list[bytes], lane: Lane) -> bool:
        """A keyed lane's new messages, behind its messages on disk; False
        when the spool cannot take them now (full, or failing to write):
        they are better published ahead of those than dropped."""
        spool = self._spool
        assert spool is not None
        if not spool.takes(bodies, self._topic_id(lane)):
            self._limiter.log(
                log,
                "divert",
                logging.WARNING,
                "the spool cannot take a key's new messages (%s): they go to memory, "
                "ahead of its spooled ones",
                spool.problem or "--spool-max-bytes reached",
            )
            return False
        self._spill(bodies, lane)
        return True

    def leave(self, bodies: list[bytes], lane: Lane | None) -> None:
        """What a stop (or a failed publisher) could not publish, oldest of
        its lane first: a publisher's batch, then what was queued. A keyed
        lane with messages on disk has them put ahead of those at
        ``put_back``; the rest is spooled at once."""
        spool, spooled = self._spool, self.spooled
        assert spool is not None and spooled is not None
        if lane is not None and lane[1] and spooled.holds(lane):
            self._ahead.append((bodies, lane))
        else:
            spool.append(bodies, kind=KIND_MESSAGES, topic=self._topic_id(lane))

    def put_back(self) -> None:
        """At a stop, once replay has ended and everything is left: the
        lanes' messages ``leave`` kept go ahead of every spooled one."""
        if self._spool is not None and self._ahead:
            ahead = [(bodies, KIND_MESSAGES, self._topic_id(lane)) for bodies, lane in self._ahead]
            self._ahead.clear()
            self._spool.prepend(ahead)

    def admit(self, events: list[bytes], kind: int, topic: str, now: float) -> None:
        """Spooled events back into the lanes (replay.py). Plain events an
        earlier run spooled get this configuration's metadata; bodies keep
        theirs, and their topic unless it is no longer configured."""
        if kind == KIND_DATA:
            items = self.builder.adopt_data(from_data_record(events))
        else:
            index = self._topic_number(topic)
            items = [((index, ordering_key_of(body)), body) for body in events]
        self.queue.put_replayed(items, now)
        if self.spooled is not None:
            self.spooled.replayed(kind, items)
            if self._spool is not None and not self._spool.events:
                self.spooled.clear()  # nothing on disk: counts too high (damage) start afresh

    def _topic_number(self, topic: str) -> int:
        number = topic_number(self.topics, topic)
        if number is not None:
            return number
        if topic not in self._unknown_topics:
            self._unknown_topics.add(topic)
            log.warning(
                "spooled messages for topic %s, which is no longer routed to: "
                "publishing them to %s",
                topic,
                self.topics[0],
            )
        return 0
