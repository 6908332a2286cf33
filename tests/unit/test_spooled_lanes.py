"""Per-key order through the spool, in process (state only, no Pub/Sub):
which lanes send their new messages to disk behind their spooled ones
(lanes.SpooledLanes, LaneQueue.put), how replay brings them back, and what a
stop puts ahead of the spool's records (MessageLanes.leave / put_back,
spool.Spool.prepend), including when the stop is interrupted.

"Publishing" here takes what the memory queue holds, lane by lane, as the
publishers would (each lane in its order); a key's sequence is the order its
messages left the queue. tests/test_spool_order.py runs the same promises
with daemons against the emulator."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import orjson
import pytest

from ingest.config import PUBSUB_MAX_REQUEST_BYTES, RouteRule, Settings
from ingest.pipeline.lanes import LaneBatcher, LaneQueue, MessageLanes, SpooledLanes
from ingest.pipeline.message import Lane
from ingest.pipeline.replay import replay_step
from ingest.publish.publisher import Batch
from ingest.publish.pubsub import data_of, ordering_key_of
from ingest.spool import Spool, records
from ingest.spool.segments import FRONT_PARTIAL, front_name
from ingest.stats import Stats
from ingest.vocabulary import Drop
from tests.unit.test_spool import segment_files
from tests.unit.test_spool_v2 import v1_segment

TOPICS = ("events",)


def settings(
    queue_max: int, queue_bytes: int = 1 << 30, routes: tuple[RouteRule, ...] = ()
) -> Settings:
    return Settings(
        project="p",
        topic="events",
        listeners=(),
        ordering_key_field="user",
        queue_max_events=queue_max,
        queue_max_bytes=queue_bytes,
        routes=routes,
    )


class Rig:
    """A MessageLanes on a spool in ``path``, opened as the daemon opens it:
    the spool's records counted by lane as they are read."""

    def __init__(
        self,
        path: Path,
        queue_max: int = 10,
        *,
        limit: int = 1000,
        counted: bool = True,
        spool_max: int = 1 << 24,
        queue_bytes: int = 1 << 30,
        routes: tuple[RouteRule, ...] = (),
    ) -> None:
        self.stats = Stats()
        config = settings(queue_max, queue_bytes, routes)
        counts = SpooledLanes(config.topics, limit=limit) if counted else None
        seen = counts.seen if counts else None
        self.spool = Spool.open(str(path), spool_max, "roll", self.stats, seen=seen)
        self.lanes = MessageLanes(config, self.stats, self.spool, counts)
        assert self.lanes.spooled is not None
        self.spooled = self.lanes.spooled
        self.queue: LaneQueue = self.lanes.queue
        self.now = 0.0

    def put(self, key: str, numbers: range) -> None:
        """One wake-up of ``key``'s events numbered ``numbers``."""
        self.put_mixed([(key, n) for n in numbers])

    def put_mixed(self, events: list[tuple[str, int]]) -> None:
        self.now += 1
        self.queue.put([self.message(key, n) for key, n in events], self.now)

    def message(self, key: str, n: int, **fields: str) -> tuple[Lane, bytes]:
        """As a reader builds it: "" is no key."""
        data = orjson.dumps({"user": key, "n": n, **fields} if key else {"n": n, **fields})
        return self.lanes.builder.build(data, orjson.loads(data))

    def replay(self) -> int:
        """One replay step, the pacing rule as in the daemon."""
        return replay_step(self.spool, self.queue, self.now, self.lanes.admit)

    def publish(self, into: dict[str, list[int]]) -> None:
        """Take everything queued, each lane in its order."""
        for _, chunk in self.queue.take_all():
            for body in chunk.events:
                event = json.loads(data_of(body))
                into.setdefault(event.get("user", ""), []).append(event["n"])

    def run_until_empty(self, into: dict[str, list[int]], steps: int = 200) -> None:
        """Publish and replay until memory and spool are empty."""
        for _ in range(steps):
            self.publish(into)
            if not self.replay() and not self.queue.events:
                return
        raise AssertionError("the spool never emptied")

    def diverted(self, key: str) -> bool:
        return self.spooled.holds((0, key.encode()))

    def stop(self) -> None:
        """A graceful stop with Pub/Sub away: everything still in memory is
        left (a publisher's batch of each lane first, then the queue), put
        back, and the spool closed."""
        for lane, chunk in self.queue.take_all():
            half = len(chunk.events) // 2  # the first half "in flight"
            if half:
                self.lanes.leave(chunk.events[:half], lane)
            self.lanes.leave(chunk.events[half:], lane)
        self.lanes.put_back()
        self.spool.close()


def keyed(numbers: range, *keys: str) -> dict[str, list[int]]:
    return {key: list(numbers) for key in keys}


# ------------------------------------------------------------ the routing rule


def test_a_key_with_spooled_messages_sends_its_new_ones_behind_them(tmp_path: Path) -> None:
    rig = Rig(tmp_path, queue_max=10)
    rig.put("a", range(0, 15))  # 10 in memory, 5 overflow to disk
    assert (rig.queue.events, rig.spool.events) == (10, 5)
    assert rig.diverted("a")
    published: dict[str, list[int]] = {}
    rig.publish(published)  # room again
    rig.put_mixed([("a", 15), ("b", 0), ("", 0), ("a", 16), ("b", 1)])
    # a's new messages follow its spooled ones; b has nothing on disk, and
    # messages without a key are never diverted: both go to memory.
    assert (rig.queue.events, rig.spool.events) == (3, 7)
    rig.run_until_empty(published)
    assert published == {"a": list(range(17)), "b": [0, 1], "": [0]}


def test_a_key_without_spooled_messages_is_not_diverted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, queue_max=100)
    _, unkeyed = rig.message("", 0)
    rig.spool.append([unkeyed], records.KIND_MESSAGES)  # a message without a key on disk
    rig.put_mixed([("b", 0), ("a", 0), ("", 1)])
    assert (rig.queue.events, rig.spool.events) == (3, 1)
    assert not rig.diverted("a") and not rig.diverted("b")
    # Only a key with messages on disk is diverted, whatever else is there.
    rig.put("c", range(0, 200))  # overflows
    rig.publish({})
    rig.put_mixed([("c", 200), ("d", 0), ("a", 1)])
    assert rig.diverted("c") and not rig.diverted("d") and not rig.diverted("a")
    queued = [(lane[1], len(chunk.events)) for lane, chunk in rig.queue.take_all()]
    assert queued == [(b"d", 1), (b"a", 1)]
    assert rig.spool.events == 1 + 103 + 1


def test_replay_catches_up_and_the_key_goes_to_memory_again(tmp_path: Path) -> None:
    """Live traffic on the diverted key all along, as much each turn as
    the publishers take: replay gets ahead once the queue has room, and
    then the key's messages go straight to memory."""
    rig = Rig(tmp_path, queue_max=40)
    rig.put("a", range(0, 200))  # 160 on disk
    published: dict[str, list[int]] = {}
    n = 200
    for _ in range(100):
        rig.publish(published)
        rig.replay()
        rig.put_mixed([("a", n), ("a", n + 1), ("b", n)])
        n += 2
        if not rig.diverted("a"):
            break
    assert not rig.diverted("a"), "replay never caught up"
    rig.put("a", range(n, n + 3))
    assert rig.spool.events == 0
    rig.run_until_empty(published)
    assert published["a"] == list(range(n + 3))


def test_replay_into_a_lane_in_flight_waits_behind_its_request(tmp_path: Path) -> None:
    """A key's request is out (its lane held) when replay brings its next
    messages back: they wait behind it, and the next request of the key is
    theirs, in order, once the first is done."""

    async def main() -> None:
        rig = Rig(tmp_path, queue_max=20)
        rig.put("a", range(0, 25))  # a0-a19 in memory, a20-a24 on disk
        lanes = LaneBatcher(rig.queue, 15, PUBSUB_MAX_REQUEST_BYTES, 0, 0.0)
        first = Batch()
        async with asyncio.timeout(5):
            assert await lanes.fill(first)  # a0-a14: the lane is held
        assert rig.replay() == 5  # a20-a24 back in memory, behind a15-a19
        assert rig.queue.ready_lane(rig.now, 0.0, 15, PUBSUB_MAX_REQUEST_BYTES, 0) == (None, None)
        lanes.done(first)
        second = Batch()
        async with asyncio.timeout(5):
            assert await lanes.fill(second)
        numbers = [json.loads(data_of(body))["n"] for body in first.messages + second.messages]
        assert numbers == list(range(25)) and not rig.diverted("a")

    asyncio.run(main())


def test_what_the_spool_refuses_is_not_counted_on_disk(tmp_path: Path) -> None:
    rig = Rig(tmp_path, queue_max=5, spool_max=4096)
    rig.put("a", range(0, 60))  # 55 overflow to disk
    rig.put("a", range(60, 160))  # behind them: refused, the spool is full
    assert rig.stats.dropped[Drop.SPOOL_FULL] == 100
    assert rig.spooled.counts == {(0, b"a"): 55} and rig.spool.events == 55


def test_a_key_the_spool_cannot_take_goes_to_memory_rather_than_be_dropped(
    tmp_path: Path,
) -> None:
    """The spool full, or failing to write: a key's new messages are
    published ahead of its spooled ones rather than lost."""
    rig = Rig(tmp_path, queue_max=5)
    rig.put("a", range(0, 130))  # 125 overflow to disk
    rig.spool.max_bytes = rig.spool.bytes + 64  # and the spool is (about) full
    assert rig.diverted("a")
    rig.publish({})
    rig.put("a", range(130, 133))
    assert (rig.queue.events, rig.spool.events) == (3, 125)
    assert rig.stats.dropped[Drop.SPOOL_FULL] == 0
    rig.publish({})
    rig.spool.problem = "spool write failed: Input/output error"  # as a failed write sets it
    rig.put("a", range(133, 134))
    assert rig.queue.events == 1


def test_past_the_lane_limit_every_key_goes_through_the_spool(tmp_path: Path) -> None:
    """Beyond ``limit`` keys on disk they are no longer told apart: every
    keyed lane, a new one too, follows the spool until what was on disk
    then is replayed. Order holds; messages without a key go on as before."""
    rig = Rig(tmp_path, queue_max=3, limit=2)
    rig.put_mixed([("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("c", 0)])
    assert rig.spooled.counts == {} and rig.spooled.untracked == 3  # a3, b0, c0
    published: dict[str, list[int]] = {}
    rig.publish(published)  # room again
    rig.put_mixed([("d", 0), ("", 0), ("a", 4)])
    assert rig.diverted("d") and (rig.queue.events, rig.spool.events) == (1, 5)
    rig.run_until_empty(published)
    assert published == {"a": [0, 1, 2, 3, 4], "b": [0], "c": [0], "d": [0], "": [0]}
    assert not rig.diverted("d")  # caught up: told apart again
    rig.put_mixed([("d", 1)])
    assert rig.spool.events == 0


def test_a_key_is_a_lane_per_topic_on_disk_too(tmp_path: Path) -> None:
    """A route's topic and --topic are two lanes for one key: only the one
    that overflowed is diverted. After a restart the spooled topic is known
    by its ID; with its route gone, its messages go to --topic, and so the
    key's lane there is the one with messages on disk."""
    errors = (RouteRule("errors", "level", "error"),)
    rig = Rig(tmp_path, queue_max=4, routes=errors)
    rig.queue.put([rig.message("a", n, level="error") for n in range(10)], 1.0)
    assert rig.spooled.counts == {(1, b"a"): 6}
    rig.publish({})
    rig.queue.put([rig.message("a", 10, level="error"), rig.message("a", 0)], 2.0)
    assert (rig.queue.events, rig.spool.events) == (1, 7)
    rig.spool.close()
    again = Rig(tmp_path, routes=errors)
    assert again.spooled.counts == {(1, b"a"): 7}
    again.spool.close()
    moved = Rig(tmp_path)
    assert moved.spooled.counts == {(0, b"a"): 7}
    moved.put("a", range(1, 2))
    assert moved.spool.events == 8


# ------------------------------------------------------------------- startup


def test_startup_counts_each_key_the_spool_holds(tmp_path: Path) -> None:
    rig = Rig(tmp_path, queue_max=4)
    rig.put("a", range(0, 10))
    rig.put("b", range(0, 6))
    rig.publish({})
    assert rig.replay() == 2  # half the queue: a4, a5 (the cursor inside a record)
    rig.spool.close()
    again = Rig(tmp_path, queue_max=4)
    assert again.spooled.counts == {(0, b"a"): 4, (0, b"b"): 6}
    again.put_mixed([("c", 0), ("a", 10)])
    assert not again.diverted("c") and again.queue.events == 1


def test_plain_events_an_earlier_run_spooled_divert_every_key_until_replayed(
    tmp_path: Path,
) -> None:
    """Their key is only known once this run's metadata is given them at
    replay: until then every keyed lane counts as having messages on disk."""
    plain = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    plain.append([b'{"user":"a","n":0}', b'{"user":"b","n":0}'])
    plain.close()
    rig = Rig(tmp_path, queue_max=10)
    assert rig.spooled.untracked == 2
    rig.put_mixed([("a", 1), ("c", 0), ("", 0)])
    assert rig.spool.events == 4
    published: dict[str, list[int]] = {}
    rig.run_until_empty(published)
    assert published == {"a": [0, 1], "b": [0], "c": [0], "": [0]}
    assert not rig.diverted("c")


def test_without_counts_every_key_is_diverted_until_the_spool_empties(tmp_path: Path) -> None:
    first = Rig(tmp_path, queue_max=2)
    first.put("a", range(0, 5))
    first.spool.close()
    rig = Rig(tmp_path, queue_max=10, counted=False)
    rig.put_mixed([("z", 0)])
    assert rig.diverted("z") and rig.spool.events == 4
    published: dict[str, list[int]] = {}
    rig.run_until_empty(published)
    assert published == {"a": [2, 3, 4], "z": [0]}
    assert not rig.diverted("z")


def test_a_count_too_high_clears_once_the_spool_is_empty(tmp_path: Path) -> None:
    """Damage loses messages that were counted: their key goes through the
    spool (slower, still in order) until the spool is empty."""
    rig = Rig(tmp_path, queue_max=2)
    rig.put("a", range(0, 5))
    rig.spooled.added((0, b"a"), 10)  # as if damage had made 10 unreadable
    published: dict[str, list[int]] = {}
    rig.run_until_empty(published)
    assert published == {"a": [0, 1, 2, 3, 4]} and not rig.diverted("a")


def test_replayed_messages_are_never_spilled_again(tmp_path: Path) -> None:
    """Replay's room check leaves out a new lane's own cost (LANE_BYTES):
    what it moves must go to memory all the same, not behind its key's
    later messages on disk."""
    first = Rig(tmp_path, queue_max=1)
    first.put("a", range(0, 21))  # a1..a20: one record
    first.put("a", range(21, 25))  # behind it
    first.spool.close()
    rig = Rig(tmp_path, queue_max=100, queue_bytes=1500)
    published: dict[str, list[int]] = {}
    rig.run_until_empty(published)
    assert published == {"a": list(range(1, 25))}
    assert rig.stats.spooled == 0  # nothing went back to disk


# ---------------------------------------------------------------------- stops


def test_a_stop_puts_what_memory_held_ahead_of_the_keys_spooled_messages(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, queue_max=10)
    rig.put_mixed([(k, n) for n in range(8) for k in ("a", "b", "")])  # 10 in memory
    rig.stop()
    again = Rig(tmp_path, queue_max=10)
    assert again.spool.events == 24
    published: dict[str, list[int]] = {}
    again.run_until_empty(published)
    assert published == keyed(range(8), "a", "b", "")


def test_stops_during_replay_keep_each_keys_order(tmp_path: Path) -> None:
    """A stop with part of the spool replayed into memory, the cursor inside
    a record, new messages on disk behind it; then again on the next run."""
    rig = Rig(tmp_path, queue_max=6)
    rig.put_mixed([(k, n) for n in range(20) for k in ("a", "b")])
    rig.stop()
    n = 20
    for _ in range(3):
        rig = Rig(tmp_path, queue_max=6)
        published: dict[str, list[int]] = {}
        rig.replay()  # part of the first record into memory
        rig.put_mixed([(k, n + i) for i in range(4) for k in ("a", "b")])
        n += 4
        assert rig.diverted("a") and rig.queue.events == 3
        rig.stop()
    last = Rig(tmp_path, queue_max=6)
    published = {}
    last.run_until_empty(published)
    assert published == keyed(range(n), "a", "b")
    assert last.stats.spool_recovered == 2 * n


def test_a_stop_without_keys_on_disk_appends_as_before(tmp_path: Path) -> None:
    rig = Rig(tmp_path, queue_max=10)
    _, unkeyed = rig.message("", 0)
    rig.spool.append([unkeyed], records.KIND_MESSAGES)
    rig.put("a", range(0, 5))
    before = segment_files(tmp_path)
    (seg,) = before
    size = (tmp_path / seg).stat().st_size
    rig.stop()
    assert (tmp_path / seg).stat().st_size > size  # appended: no segment rewritten
    again = Rig(tmp_path, queue_max=10)
    got = []
    while (record := again.spool.peek_record()) is not None:
        got.append([ordering_key_of(body) for body in record.events])
        again.spool.consume()
    assert got == [[b""], [b"a"] * 2, [b"a"] * 3]


# ------------------------------------------------------- Spool.prepend itself


def body(key: str, n: int) -> bytes:
    data = orjson.dumps({"user": key, "n": n})
    return b"\x0a" + bytes([len(data)]) + data + b"\x2a" + bytes([len(key)]) + key.encode()


def replayed(spool: Spool) -> list[bytes]:
    out: list[bytes] = []
    while (record := spool.peek_record()) is not None:
        out += record.events
        spool.consume()
    return out


def test_prepend_goes_ahead_of_whatever_is_left_to_replay(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.append([body("a", 2), body("a", 3), body("a", 4)], records.KIND_MESSAGES)
    spool.append([body("a", 5)], records.KIND_MESSAGES)
    spool.peek()
    spool.consume(1)  # a2 handed on before the stop
    spool.prepend([([body("a", 0), body("a", 1)], records.KIND_MESSAGES, "")])
    assert spool.events == 5
    spool.append([body("a", 6)], records.KIND_MESSAGES)  # after it, in a new segment
    spool.close()
    stats = Stats()
    again = Spool.open(str(tmp_path), 1 << 20, "roll", stats)
    assert stats.spool_recovered == 6
    assert replayed(again) == [body("a", n) for n in (0, 1, 3, 4, 5, 6)]
    again.close()


def test_prepend_to_an_empty_spool_appends(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.prepend([([b"a"], records.KIND_MESSAGES, "t")])
    assert [r.events for r in [spool.peek_record()] if r] == [[b"a"]]
    spool.close()


def test_prepend_rewrites_a_v1_segment_as_v2(tmp_path: Path) -> None:
    seg = "seg-000000000000.spool"
    (tmp_path / seg).write_bytes(v1_segment([b'{"x":1}'], [b'{"x":2}']))
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.prepend([([b"m"], records.KIND_MESSAGES, "t")])
    spool.close()
    assert (tmp_path / seg).read_bytes()[:12] == records.HEADER
    again = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    got = []
    while (record := again.peek_record()) is not None:
        got.append((record.events, record.kind, record.topic))
        again.consume()
    assert got == [
        ([b"m"], records.KIND_MESSAGES, "t"),
        ([b'{"x":1}'], records.KIND_DATA, ""),
        ([b'{"x":2}'], records.KIND_DATA, ""),
    ]
    again.close()


def test_what_does_not_fit_the_spool_bound_is_counted_dropped(tmp_path: Path) -> None:
    stats = Stats()
    spool = Spool.open(str(tmp_path), 4096, "roll", stats)
    spool.append([b"x" * 1000], records.KIND_MESSAGES)
    spool.prepend([([b"y" * 1000] * 2, records.KIND_MESSAGES, ""), ([b"z" * 3000], 1, "")])
    assert stats.dropped[Drop.SPOOL_FULL] == 1 and spool.bytes <= 4096
    assert replayed(spool) == [b"y" * 1000] * 2 + [b"x" * 1000]
    spool.close()


def test_a_replacement_left_complete_by_a_crash_is_installed_at_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the replacement was complete, before it took the old
    segment's name (the cursor saved or not): the next start installs it
    and replays from its start, repeating nothing and losing nothing."""
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.append([b"s1", b"s2", b"s3"], records.KIND_MESSAGES)
    spool.peek()
    spool.consume(1)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(5, "crashed here")

    monkeypatch.setattr(type(spool._segments), "install_front", crash)
    spool.prepend([([b"m1"], records.KIND_MESSAGES, "")])
    monkeypatch.undo()
    spool.close()  # saves the old cursor again: the installation ignores it
    assert (tmp_path / front_name(0)).exists()
    again = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    assert not (tmp_path / front_name(0)).exists()
    assert replayed(again) == [b"m1", b"s2", b"s3"]
    again.close()


def test_a_partial_replacement_is_removed_at_startup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.append([b"s1", b"s2"], records.KIND_MESSAGES)
    spool.peek()
    spool.consume(1)
    spool.close()
    (tmp_path / FRONT_PARTIAL).write_bytes(records.HEADER + b"torn")
    with caplog.at_level(logging.WARNING):
        again = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    assert "left unfinished by an interrupted stop" in caplog.text
    assert not (tmp_path / FRONT_PARTIAL).exists()
    assert replayed(again) == [b"s2"]
    again.close()


def test_a_replacement_that_cannot_be_written_appends_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.open(str(tmp_path), 1 << 20, "roll", Stats())
    spool.append([b"s1"], records.KIND_MESSAGES)

    def full(*args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(spool._segments), "write_front", full)
    spool.prepend([([b"m1"], records.KIND_MESSAGES, "")])
    assert replayed(spool) == [b"s1", b"m1"]  # nothing lost; the order could not be kept
    spool.close()
