"""Replay: feed the disk spool back into the memory queue, oldest record first.

Pacing, so replay never starves live traffic:
- it runs only while the memory queue is below half of either bound, leaving
  the other half to what the listeners read meanwhile;
- it moves at most REPLAY_EVENTS_PER_STEP events, then yields to the loop (the
  readers run between steps);
- it pauses while Pub/Sub is failing: replayed events would only sit in memory,
  where a crash loses them, instead of on disk.

Ordering: the spool is replayed in the order it was written, but live events
go straight to the queue while there is room, so live and replayed events
interleave; no global order is promised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingest.queue import EventQueue
from ingest.spool import Spool

REPLAY_EVENTS_PER_STEP = 5_000
REPLAY_IDLE_S = 0.02  # nothing to replay, or no room: look again this often


def has_room(queue: EventQueue) -> bool:
    return queue.events * 2 < queue.max_events and queue.bytes * 2 < queue.max_bytes


def replay_step(spool: Spool, queue: EventQueue, now: float) -> int:
    """Move records (or, when one is larger than the queue's room, the prefix
    of it that fits) from the spool to the queue while the pacing rule allows;
    returns the number of events moved. The spool's cursor records a prefix
    too, so a stop between two parts of a record repeats neither."""
    moved = 0
    while moved < REPLAY_EVENTS_PER_STEP and has_room(queue):
        events = spool.peek()
        if events is None:
            break
        # Fill at most to half the event bound: the other half stays for live traffic.
        events, _ = queue.prefix_that_fits(events[: max(1, queue.max_events // 2 - queue.events)])
        if not events:
            break
        # No await between the two: the events are counted in exactly one place.
        spool.consume(len(events))
        queue.put(events, now)
        moved += len(events)
    return moved


async def run_replay(spool: Spool, queue: EventQueue, paused: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        moved = 0 if paused() else replay_step(spool, queue, loop.time())
        await asyncio.sleep(0 if moved >= REPLAY_EVENTS_PER_STEP else REPLAY_IDLE_S)
