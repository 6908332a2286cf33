"""The bounded memory queue between endpoints and publishers.

Items are *chunks*: the list of events one drain wake-up produced (one list
per wake-up rather than one item per event measured +36-40 % throughput).
The bounds are still accounted in events and bytes, never in items.
Overflow policy: new events that do not fit go to ``spill`` (the disk spool,
when configured), else they are dropped and counted as ``queue_full``; what is
already queued is never evicted.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.stats import Stats
from ingest.vocabulary import Drop


@dataclass(slots=True)
class Chunk:
    events: list[bytes]
    nbytes: int  # sum of len(event)
    received_at: float  # loop.time() of the drain wake-up that read it


class Intake(Protocol):
    """What a reader (receive/sources.py) puts into: EventQueue or lanes.LaneQueue."""

    def put(self, items: list[Any], received_at: float) -> None: ...

    def room(self) -> int: ...

    def drop_full(self, count: int) -> None: ...


class Bounded:
    """The bounds, counters and overflow policy every queue shares: in events
    and bytes, never in items. Subclasses hold the chunks (EventQueue: one
    FIFO; lanes.LaneQueue: one FIFO per lane) and set ``spill``: where the
    overflow goes instead of being dropped (the disk spool), or None."""

    spill: Callable[..., None] | None

    def __init__(self, max_events: int, max_bytes: int, stats: Stats) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self.closed = False
        self._stats = stats

    def room(self) -> int:
        """How many more events a ``put`` can keep (queue or spill): what the
        readers check before decoding a datagram. With a spill it is not
        bounded here (the spool has its own bound and counts its own drops)."""
        if self.spill is not None:
            return sys.maxsize
        if self.bytes >= self.max_bytes:
            return 0
        return self.max_events - self.events

    def drop_full(self, count: int) -> None:
        """Count events a reader did not decode because ``room`` was 0."""
        self._stats.dropped[Drop.QUEUE_FULL] += count

    def fits(self, count: int, nbytes: int) -> bool:
        return self.events + count <= self.max_events and self.bytes + nbytes <= self.max_bytes

    def prefix_that_fits(self, events: list[bytes]) -> tuple[list[bytes], int]:
        room_events = self.max_events - self.events
        room_bytes = self.max_bytes - self.bytes
        taken = 0
        nbytes = 0
        for event in events[:room_events]:
            if nbytes + len(event) > room_bytes:
                break
            nbytes += len(event)
            taken += 1
        return events[:taken], nbytes

    def admit(self, events: list[bytes]) -> tuple[list[bytes], int]:
        """The prefix of ``events`` the bounds keep, and its bytes; the
        caller spills or drops the rest."""
        nbytes = sum(map(len, events))
        if self.fits(len(events), nbytes):
            return events, nbytes
        return self.prefix_that_fits(events)

    def count_in(self, chunk: Chunk) -> None:
        self.events += len(chunk.events)
        self.bytes += chunk.nbytes

    def count_out(self, chunk: Chunk) -> None:
        self.events -= len(chunk.events)
        self.bytes -= chunk.nbytes


def take_from(chunks: deque[Chunk], max_count: int, max_bytes: int, overhead: int) -> Chunk | None:
    """Pop the head chunk of ``chunks``, or the prefix of it that fits.

    ``max_bytes`` is compared against sum(len + overhead) so the caller can
    bound the encoded size. None when ``chunks`` is empty or not even the
    first event fits.
    """
    if not chunks:
        return None
    head = chunks[0]
    count = len(head.events)
    if count <= max_count and head.nbytes + overhead * count <= max_bytes:
        return chunks.popleft()
    n = 0
    nbytes = 0
    for event in head.events[:max_count]:
        size = len(event)
        if nbytes + size + overhead * (n + 1) > max_bytes:
            break
        nbytes += size
        n += 1
    if not n:
        return None
    taken = Chunk(head.events[:n], nbytes, head.received_at)
    head.events = head.events[n:]
    head.nbytes -= nbytes
    return taken


class EventQueue(Bounded):
    """One FIFO of chunks. ``put`` never blocks or awaits."""

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        stats: Stats,
        *,
        spill: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        super().__init__(max_events, max_bytes, stats)
        self._chunks: deque[Chunk] = deque()
        self._nonempty = asyncio.Event()
        # A lingering filler's wait (wait_filled): set by the put that makes
        # the queue hold ``_wanted`` (events, bytes counting an overhead per
        # event, the overhead), by close and by give_back; other puts leave
        # it sleeping, as waking it only to find its batch still short costs
        # a wake-up and a new timer each time.
        self._filled = asyncio.Event()
        self._wanted = (sys.maxsize, sys.maxsize, 0)
        # Where the overflow goes instead of being dropped (spool.Spool.append).
        self.spill = spill

    def put(self, events: list[bytes], received_at: float) -> None:
        """Enqueue what fits; spill the rest, or count it dropped (``queue_full``)."""
        kept, nbytes = self.admit(events)
        if len(kept) < len(events):
            if self.spill is not None:
                self.spill(events[len(kept) :])
            else:
                self.drop_full(len(events) - len(kept))
            if not kept:
                return
        chunk = Chunk(kept, nbytes, received_at)
        self._chunks.append(chunk)
        self.count_in(chunk)
        self._nonempty.set()
        count, wanted_bytes, overhead = self._wanted
        if self.events >= count or self.bytes + overhead * self.events >= wanted_bytes:
            self._filled.set()

    def take(self, max_count: int, max_bytes: int, overhead: int) -> Chunk | None:
        """``take_from`` the queue's FIFO."""
        taken = take_from(self._chunks, max_count, max_bytes, overhead)
        if taken is None:
            return None
        self.count_out(taken)
        if not self._chunks and not self.closed:
            self._nonempty.clear()
        return taken

    def give_back(self, events: list[bytes], nbytes: int, received_at: float) -> None:
        """Events a publisher took and could not publish, back in front (they
        are the oldest). Counted against the bounds even past them: they were
        accepted, and held in flight until now."""
        chunk = Chunk(events, nbytes, received_at)
        self._chunks.appendleft(chunk)
        self.count_in(chunk)
        self._nonempty.set()
        self._filled.set()

    def take_all(self) -> list[Chunk]:
        """Remove and return everything queued (shutdown)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self.events = 0
        self.bytes = 0
        if not self.closed:
            self._nonempty.clear()
        return chunks

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    async def wait_filled(self, count: int, nbytes: int, overhead: int) -> None:
        """Until the queue holds ``count`` events or ``nbytes`` bytes
        counting ``overhead`` an event (what fills a lingering batch), or is
        closed; one waiter at a time (the filler holding the fill lock)."""
        if self.closed or self.events >= count or self.bytes + overhead * self.events >= nbytes:
            return
        self._wanted = (count, nbytes, overhead)
        self._filled.clear()
        try:
            await self._filled.wait()
        finally:
            self._wanted = (sys.maxsize, sys.maxsize, 0)

    def close(self) -> None:
        """No more puts are coming: wake waiters so they can see the end."""
        self.closed = True
        self._nonempty.set()
        self._filled.set()
