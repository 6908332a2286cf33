"""One failing topic must not starve the others, against the real emulator.

A route's topic is deleted while events flow (the emulator answers its
publishes NOT_FOUND): the topic is parked, probed one request every 5 s, and
--topic's events are all published promptly; /healthz answers 503 naming the
topic, steadily, and /metrics has the publish results per topic. Recreated,
the topic gets the events that waited for it. At SIGTERM only the failing
topic's events are lost (``shutdown``), or spooled with --spool-dir.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.helpers import PubSubNames, UnixSender, another_topic, wait_for
from tests.scrape import get, scrape, start, total, unaccounted, value
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator

_names = itertools.count()
PER_DATAGRAM = 10
PROMPTLY_S = 20.0  # a bound on behaviour: starved, main's events never all arrive
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def send_interleaved(sock: Path, start: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """Send ``count`` events numbered from ``start``, one in ten an error
    (routed), PER_DATAGRAM a datagram; returns (to --topic, to the route's)."""
    events = [
        orjson.dumps({"level": "error" if i % 10 == 0 else "info", "i": i})
        for i in range(start, start + count)
    ]
    with UnixSender(sock) as sender:
        for lo in range(0, len(events), PER_DATAGRAM):
            sender.send(b"\n".join(events[lo : lo + PER_DATAGRAM]))
    routed = [event for event in events if b'"error"' in event]
    return [event for event in events if b'"error"' not in event], routed


def received(base: str) -> float:
    return total(scrape(base), "ingest_events_received_total")


def has_read(base: str, goal: float) -> Callable[[], bool]:
    return lambda: received(base) >= goal


def send_flowing(
    sock: Path, base: str, start: int, count: int, rounds: int
) -> tuple[list[bytes], list[bytes]]:
    """``send_interleaved`` in ``rounds``, each once the daemon has read the
    last: events flow, so the route's lane is new again at every round (as
    traffic does), not one batch taken once."""
    main: list[bytes] = []
    routed: list[bytes] = []
    step = count // rounds
    before = received(base)
    for n in range(rounds):
        more_main, more_routed = send_interleaved(sock, start + n * step, step)
        main += more_main
        routed += more_routed
        wait_for(has_read(base, before + (n + 1) * step), 10, "the round read")
    return main, routed


def requests(samples: Samples, topic: str, code: str) -> float:
    key = ("ingest_topic_publish_requests_total", (("code", code), ("topic", topic)))
    return samples.get(key, 0.0)


def published(base: str, topic: str) -> float:
    return value(scrape(base), "ingest_events_published_total", topic=topic)


def recreate(emulator: Emulator, names: PubSubNames) -> None:
    """The topic again, and a subscription to it (the old one stays detached)."""
    emulator.create_topic(names.topic)
    emulator.delete_subscription(names.subscription)
    emulator.create_subscription(names.subscription, names.topic)


def test_a_deleted_route_topic_is_parked_and_the_other_topic_publishes(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    gone = another_topic(emulator, pubsub, f"gone-{next(_names)}")
    sock = sockdir / "in.sock"
    daemon, base = start(
        daemons, pubsub, "--unix", str(sock), "--route", f"{gone.topic_id}:level=error",
        "--drain-timeout", "2",
    )  # fmt: skip
    main_0, gone_0 = send_interleaved(sock, 0, 100)  # both topics work
    wait_for(lambda: published(base, gone.topic_id) == len(gone_0), 20, "the route's events")
    assert len(emulator.pull_until(gone.subscription, len(gone_0))) == len(gone_0)

    emulator.delete_topic(gone.topic)
    main_1, gone_1 = send_flowing(sock, base, 100, 1300, rounds=13)  # the 1,300
    main_sent = len(main_0) + len(main_1)
    main_more: list[bytes] = []
    wait_for(lambda: published(base, pubsub.topic_id) == main_sent, PROMPTLY_S, "main's events")

    # /healthz: 503 naming the dead topic, and it stays so while --topic
    # publishes and the probe retries (no flapping), over a retry (up to 5 s).
    reason = f"publishing to {gone.topic_id} is failing (NOT_FOUND)"
    wait_for(lambda: get(base + "/healthz")[0] == 503, 10, "503")
    first = requests(scrape(base), gone.topic_id, "NOT_FOUND")
    watched_from = time.monotonic()
    extra = 0
    while requests(scrape(base), gone.topic_id, "NOT_FOUND") < first + 1:
        status, body = get(base + "/healthz")
        assert status == 503, body
        assert reason in orjson.loads(body)["reasons"]
        assert time.monotonic() - watched_from < 30, "the parked topic is not probed"
        more_main, more_gone = send_interleaved(sock, 2000 + extra, 10)  # traffic goes on
        main_more += more_main
        main_sent += len(more_main)
        gone_1 += more_gone
        extra += 10
    watched_s = time.monotonic() - watched_from
    # Back, just after a failed probe (the next is 5 s away), so that nothing
    # is published to the topic before its subscription exists.
    recreate(emulator, gone)
    samples = scrape(base)
    # Probed one request at a time, every 5 s: at most one each 5 s of the window.
    assert requests(samples, gone.topic_id, "NOT_FOUND") - first <= watched_s // 5 + 1
    assert requests(samples, pubsub.topic_id, "OK") >= 1
    assert requests(samples, pubsub.topic_id, "NOT_FOUND") == 0
    assert requests(samples, gone.topic_id, "OK") >= 1  # before it was deleted
    assert value(samples, "ingest_topic_failing", topic=gone.topic_id) == 1
    assert value(samples, "ingest_topic_failing", topic=pubsub.topic_id) == 0
    assert value(samples, "ingest_healthy") == 0
    assert unaccounted(samples) == 0
    wait_for(lambda: published(base, pubsub.topic_id) == main_sent, PROMPTLY_S, "main's events")
    got = emulator.pull_until(pubsub.subscription, main_sent)
    assert sorted(got) == sorted([*main_0, *main_1, *main_more])
    # What waited for the topic, queued, follows.
    arrived = emulator.pull_until(gone.subscription, len(gone_1), timeout_s=PROMPTLY_S)
    assert sorted(arrived) == sorted(gone_1)
    wait_for(lambda: get(base + "/healthz")[0] == 200, 10, "200 again")
    samples = scrape(base)
    assert value(samples, "ingest_topic_failing", topic=gone.topic_id) == 0
    assert value(samples, "ingest_events_published_total", topic=gone.topic_id) == len(
        gone_0
    ) + len(gone_1)

    # Dead again, then SIGTERM with events of both just sent: the drain
    # publishes --topic's; only the dead topic's are lost, as ``shutdown``.
    emulator.delete_topic(gone.topic)
    main_2, gone_2 = send_interleaved(sock, 10_000, 500)
    wait_for(lambda: get(base + "/healthz")[0] == 503, 10, "503")
    main_3, gone_3 = send_interleaved(sock, 20_000, 500)
    assert daemon.stop() == 3  # events were lost at shutdown
    counts = daemon.stopped_counts()
    assert counts["shutdown"] + counts["unconfirmed"] == len(gone_2) + len(gone_3)
    assert counts["published"] == main_sent + len(main_2) + len(main_3) + len(gone_0) + len(gone_1)
    got = emulator.pull_until(pubsub.subscription, len(main_2) + len(main_3))
    assert sorted(got) == sorted([*main_2, *main_3])


def test_with_a_spool_the_failing_topics_events_are_kept_across_a_restart(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, tmp_path: Path
) -> None:
    """Ordering keys too, and one publisher: a dead topic's hundred keys do
    not take it from --topic, and at SIGTERM the dead topic's events go to
    the spool, none of --topic's; a restart, the topic back, publishes them."""
    gone = another_topic(emulator, pubsub, f"gone-{next(_names)}")
    sock = sockdir / "in.sock"
    args = (
        "--unix", str(sock), "--route", f"{gone.topic_id}:level=error",
        "--ordering-key-field", "i", "--spool-dir", str(tmp_path / "spool"),
        "--drain-timeout", "2", "--publishers", "1",
    )  # fmt: skip
    daemon, base = start(daemons, pubsub, *args)
    emulator.delete_topic(gone.topic)
    main, routed = send_flowing(sock, base, 0, 1000, rounds=10)  # 100 keys routed
    wait_for(lambda: published(base, pubsub.topic_id) == len(main), PROMPTLY_S, "main's events")
    assert daemon.stop() == 0  # nothing lost: spooled
    counts = daemon.stopped_counts()
    assert counts["spooled"] == len(routed)
    assert counts["published"] == len(main)
    assert counts["shutdown"] == 0
    got = emulator.pull_until(pubsub.subscription, len(main))
    assert sorted(got) == sorted(main)

    recreate(emulator, gone)
    again, base = start(daemons, pubsub, *args)
    arrived = emulator.pull_until(gone.subscription, len(routed), timeout_s=PROMPTLY_S)
    assert sorted(arrived) == sorted(routed)
    assert again.stop() == 0
