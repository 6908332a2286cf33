"""Spill and replay between the memory queue and the spool: state only."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.config import Settings
from ingest.flows import PlainFlow
from ingest.pipeline.queue import EventQueue
from ingest.pipeline.replay import REPLAY_EVENTS_PER_STEP, replay_step
from ingest.spool import Spool
from ingest.stats import Stats
from ingest.vocabulary import Drop


def plain_flow(
    stats: Stats, spool: Spool, max_events: int = 10, max_bytes: int = 1 << 20
) -> PlainFlow:
    """The plain pipeline's queue, spilling to ``spool``, and its replay admit."""
    settings = Settings(
        project="p",
        topic="t",
        listeners=(),
        queue_max_events=max_events,
        queue_max_bytes=max_bytes,
    )
    return PlainFlow(settings, stats, spool)


def accounted(stats: Stats, queue: EventQueue, spool: Spool, received: int) -> bool:
    return received == (stats.published + stats.dropped_total() + queue.events + spool.events)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[PlainFlow, Spool, Stats]:
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    return plain_flow(stats, spool), spool, stats


def test_overflow_spills_instead_of_dropping(parts: tuple[PlainFlow, Spool, Stats]) -> None:
    flow, spool, stats = parts
    queue = flow.queue
    queue.put([b'{"i":%d}' % i for i in range(25)], 0.0)
    assert (queue.events, spool.events, stats.spooled) == (10, 15, 15)
    assert stats.dropped[Drop.QUEUE_FULL] == 0
    assert accounted(stats, queue, spool, 25)
    spool.close()


def test_replay_waits_for_room_and_refills_only_half_oldest_first(
    parts: tuple[PlainFlow, Spool, Stats],
) -> None:
    flow, spool, stats = parts
    queue = flow.queue
    queue.put([b"live"] * 10, 0.0)
    spool.append([b"old-1", b"old-2"])
    spool.append([b"old-3"])
    assert replay_step(spool, queue, 1.0, flow.admit) == 0  # full: live traffic keeps its room
    queue.take(9, 1 << 20, 0)
    assert queue.events == 1
    assert replay_step(spool, queue, 1.0, flow.admit) == 3  # refilled up to half, oldest first
    assert (queue.events, spool.events, stats.replayed) == (4, 0, 3)
    assert [e for c in queue.take_all() for e in c.events] == [
        b"live",
        b"old-1",
        b"old-2",
        b"old-3",
    ]
    assert spool.events == 0
    spool.close()


def test_a_step_is_bounded(tmp_path: Path) -> None:
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 30, "never", stats)
    flow = plain_flow(stats, spool, 10 * REPLAY_EVENTS_PER_STEP, 1 << 30)
    for _ in range(2 * REPLAY_EVENTS_PER_STEP // 100):
        spool.append([b"{}"] * 100)
    assert replay_step(spool, flow.queue, 0.0, flow.admit) == REPLAY_EVENTS_PER_STEP
    assert spool.events == REPLAY_EVENTS_PER_STEP
    spool.close()


def test_a_record_larger_than_the_queue_is_replayed_in_parts(tmp_path: Path) -> None:
    stats = Stats()
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    flow = plain_flow(stats, spool)
    spool.append([b"%d" % i for i in range(25)])  # one record, 2.5 queues long
    out: list[bytes] = []
    for _ in range(10):
        replay_step(spool, flow.queue, 0.0, flow.admit)
        out += [e for c in flow.queue.take_all() for e in c.events]
    assert out == [b"%d" % i for i in range(25)]
    assert (spool.events, stats.replayed) == (0, 25)
    spool.close()


def test_stops_inside_a_record_neither_repeat_nor_lose_events(tmp_path: Path) -> None:
    """Each round is one daemon's life in miniature: replay into the queue,
    publish part of it, and at the stop spool what is still queued (as
    daemon.shutdown does). The record is 2.5 queues long."""
    events = [b"%d" % i for i in range(25)]
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.append(events)
    spool.close()
    published: list[bytes] = []
    for _ in range(30):
        stats = Stats()
        spool = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
        flow = plain_flow(stats, spool)
        replay_step(spool, flow.queue, 0.0, flow.admit)
        chunk = flow.queue.take(2, 1 << 20, 0)
        published += chunk.events if chunk else []
        for lane, rest in flow.take_queued():
            assert flow.spill is not None
            flow.spill(rest.events, lane)
        left = spool.events
        spool.close()
        if not left:
            break
    assert sorted(published, key=int) == events
