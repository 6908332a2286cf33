"""Replay: feed the disk spool back into the memory queue, oldest record first.

Pacing, so replay never starves live traffic:
- it runs only while the memory queue is below half of either bound, leaving
  the other half to what the listeners read meanwhile;
- it moves at most REPLAY_EVENTS_PER_STEP events, then yields to the loop (the
  readers run between steps);
- it pauses while Pub/Sub is failing: replayed events would only sit in memory,
  where a crash loses them, instead of on disk -- but not for topics parked on
  their own while others publish (wiring.Pipeline.replay_paused).

Ordering: the spool is replayed in the order it was written, but live events
go straight to the queue while there is room, so live and replayed events
interleave; no global order is promised. Each ordering key's is: a key with
messages on disk sends its live ones there too until replay has caught up
(lanes.SpooledLanes), and what replay moves of messages goes to memory whole
(docs/concepts/metadata.md, "Ordering keys").

What comes back depends on the pipeline's flow (``admit``, flows.Flow.admit):
the plain one takes the events (and syslog bodies) as they are, and the data
of messages an earlier run spooled with metadata; lanes.MessageLanes.admit
takes messages with their metadata, and gives plain events this run's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingest.pipeline.queue import Bounded
from ingest.spool.store import Spool

# Puts one spooled record's events (of its kind, for its topic) in the queue.
Admit = Callable[[list[bytes], int, str, float], None]

REPLAY_EVENTS_PER_STEP = 5_000
REPLAY_IDLE_S = 0.02  # nothing to replay, or no room: look again this often


def has_room(queue: Bounded) -> bool:
    return queue.events * 2 < queue.max_events and queue.bytes * 2 < queue.max_bytes


def replay_step(spool: Spool, queue: Bounded, now: float, admit: Admit) -> int:
    """Move records (or, when one is larger than the queue's room, the prefix
    of it that fits) from the spool to the queue while the pacing rule allows;
    returns the number of events moved. The spool's cursor records a prefix
    too, so a stop between two parts of a record repeats neither. ``admit``
    puts the events in ``queue``, as its pipeline carries them."""
    moved = 0
    while moved < REPLAY_EVENTS_PER_STEP and has_room(queue):
        record = spool.peek_record()
        if record is None:
            break
        # Fill at most to half the event bound: the other half stays for live traffic.
        room = max(1, queue.max_events // 2 - queue.events)
        events, _ = queue.prefix_that_fits(record.events[:room])
        if not events:
            break
        # No await between the two: the events are counted in exactly one place.
        spool.consume(len(events))
        admit(events, record.kind, record.topic, now)
        moved += len(events)
    return moved


async def run_replay(
    spool: Spool, queue: Bounded, paused: Callable[[], bool], admit: Admit
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        moved = 0 if paused() else replay_step(spool, queue, loop.time(), admit)
        await asyncio.sleep(0 if moved >= REPLAY_EVENTS_PER_STEP else REPLAY_IDLE_S)
