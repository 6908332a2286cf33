"""Per-key order through the spool, with real daemons against the emulator:
a key's events reach Pub/Sub in the order ingest received them across
graceful stops and restarts on the same spool, and across overflow to the
spool. The emulator sits behind a proxy (tools/testing/tcpproxy.py) that refuses
connections while a test wants Pub/Sub unreachable: a refused connection
delivers nothing, so no request can reach Pub/Sub twice and each key's
sequence must arrive exactly, with no duplicates.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import UnixSender, wait_for
from tests.scrape import scrape, total, unaccounted
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import Emulator, free_port, launcher_path
from tools.testing.tcpproxy import TcpProxy

PROJECT = "ingest-order"
KEYS = 6
_names = itertools.count()


@dataclass
class Rig:
    emulator: Emulator
    proxy: TcpProxy
    topic_id: str = ""
    subscription: str = ""

    def fresh_topic(self) -> None:
        """A topic with an ordered subscription (each key delivered in the
        order Pub/Sub received it)."""
        n = next(_names)
        self.topic_id = f"order-{n}"
        self.subscription = f"projects/{PROJECT}/subscriptions/order-{n}"
        topic = f"projects/{PROJECT}/topics/{self.topic_id}"
        self.emulator.create_topic(topic)
        self.emulator.create_subscription(self.subscription, topic, ordered=True)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    if launcher_path() is None:
        pytest.skip("the Google Pub/Sub emulator is not installed")
    with Emulator() as emulator, TcpProxy(emulator.port) as proxy:
        yield Rig(emulator, proxy)


@pytest.fixture
def case(rig: Rig) -> Rig:
    rig.proxy.refuse = True  # Pub/Sub unreachable until the test says otherwise
    rig.fresh_topic()
    return rig


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


def start(
    offline_daemons: Daemons, rig: Rig, sock: Path, spool_dir: Path, *extra: str
) -> tuple[DaemonProcess, str]:
    """A daemon with ordering keys (field "user") and the spool, which gives
    up on an unreachable Pub/Sub quickly at SIGTERM; its metrics URL."""
    port = free_port()
    daemon = offline_daemons.start(
        "--project", PROJECT, "--topic", rig.topic_id, "--unix", str(sock),
        "--metrics", f"127.0.0.1:{port}", "--batch-linger-ms", "2",
        "--publish-timeout", "1", "--drain-timeout", "1",
        "--batch-max-messages", "20", "--publishers", "4",
        "--ordering-key-field", "user", "--spool-dir", str(spool_dir), *extra,
        emulator_host=f"127.0.0.1:{rig.proxy.port}",
    )  # fmt: skip
    daemon.wait_ready()
    return daemon, f"http://127.0.0.1:{port}"


def events(numbers: range, keys: int = KEYS) -> list[bytes]:
    """Each key's events numbered in ``numbers``, the keys interleaved."""
    return [b'{"user":"u%d","n":%d}' % (key, n) for n in numbers for key in range(keys)]


def send(sock: Path, batch: list[bytes], per_datagram: int = 10) -> None:
    with UnixSender(sock) as sender:
        for lo in range(0, len(batch), per_datagram):
            sender.send(b"\n".join(batch[lo : lo + per_datagram]))


def read_all(base: str, expected: int) -> None:
    wait_for(
        lambda: total(scrape(base), "ingest_events_received_total") == expected,
        10,
        f"the daemon reading {expected} events",
    )


def pull_in_order(rig: Rig, expected: int, timeout_s: float = 60.0) -> dict[str, list[int]]:
    """Each key's numbers in the order the ordered subscription delivered
    them, once ``expected`` messages arrived and nothing more comes."""
    seen: dict[str, list[int]] = {}
    count = 0
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        batch: list[Any] = rig.emulator.pull_messages(rig.subscription, max_messages=1000)
        for message in batch:
            event = json.loads(message.data)
            assert message.ordering_key == event["user"]
            seen.setdefault(event["user"], []).append(event["n"])
        count += len(batch)
        if batch:
            quiet_since = None
        elif count >= expected:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.5:
                break
        else:
            time.sleep(0.05)
    return seen


def exactly(numbers: range, keys: int = KEYS) -> dict[str, list[int]]:
    return {f"u{key}": list(numbers) for key in range(keys)}


def identity_holds(base: str) -> None:
    wait_for(lambda: unaccounted(scrape(base)) == 0, 10, "the accounting identity")


def test_a_restart_on_the_spool_keeps_each_keys_order(
    case: Rig, offline_daemons: Daemons, sockdir: Path, spool_dir: Path
) -> None:
    """The issue's case: Pub/Sub unreachable, SIGTERM spools what was
    queued, a restart on the same spool takes new events while Pub/Sub is
    still away, Pub/Sub comes back: each key's new events wait behind its
    spooled ones."""
    sock = sockdir / "in.sock"
    first, base = start(offline_daemons, case, sock, spool_dir)
    send(sock, events(range(0, 200)))
    read_all(base, 200 * KEYS)
    assert first.stop() == 0
    assert first.stopped_counts()["spooled"] == 200 * KEYS

    second, base = start(offline_daemons, case, sock, spool_dir)
    send(sock, events(range(200, 400)))
    read_all(base, 200 * KEYS)
    case.proxy.refuse = False
    assert pull_in_order(case, 400 * KEYS) == exactly(range(400))
    identity_holds(base)
    assert second.stop() == 0


def test_overflow_to_the_spool_keeps_each_keys_order(
    case: Rig, offline_daemons: Daemons, sockdir: Path, spool_dir: Path
) -> None:
    """A small memory queue while Pub/Sub is away: most events overflow to
    disk. Events that arrive after Pub/Sub is back, while the spool is still
    being replayed, follow their key's spooled events."""
    sock = sockdir / "in.sock"
    daemon, base = start(offline_daemons, case, sock, spool_dir, "--queue-max-events", "60")
    send(sock, events(range(0, 150)))
    read_all(base, 150 * KEYS)
    assert total(scrape(base), "ingest_spool_events") > 0
    case.proxy.refuse = False
    send(sock, events(range(150, 300)))
    assert pull_in_order(case, 300 * KEYS) == exactly(range(300))
    identity_holds(base)
    assert daemon.stop() == 0


def test_a_stop_while_keys_have_overflowed_keeps_their_order(
    case: Rig, offline_daemons: Daemons, sockdir: Path, spool_dir: Path
) -> None:
    """At SIGTERM each key's oldest events are in memory and its later ones
    on disk (overflow): what memory held is put back ahead of them, not
    behind, and a restart publishes every key in order, each event once."""
    sock = sockdir / "in.sock"
    first, base = start(offline_daemons, case, sock, spool_dir, "--queue-max-events", "60")
    send(sock, events(range(0, 150)))
    read_all(base, 150 * KEYS)
    assert total(scrape(base), "ingest_spool_events") > 0
    assert first.stop() == 0
    assert first.stopped_counts()["spooled"] == 150 * KEYS

    second, base = start(offline_daemons, case, sock, spool_dir, "--queue-max-events", "60")
    send(sock, events(range(150, 250)))
    read_all(base, 100 * KEYS)
    case.proxy.refuse = False
    assert pull_in_order(case, 250 * KEYS) == exactly(range(250))
    identity_holds(base)
    assert second.stop() == 0


def test_a_stop_during_replay_keeps_each_keys_order(
    case: Rig, offline_daemons: Daemons, sockdir: Path, spool_dir: Path
) -> None:
    """A restart replays the spool into a slow Pub/Sub while new events
    arrive; Pub/Sub goes away mid-replay (the proxy's black hole: what was
    sent is never delivered, so nothing can arrive twice) and the daemon is
    stopped with part of the spool in memory. What memory held is older
    than what is left on disk, and goes ahead of it: a third run publishes
    every key in order, each event once."""
    sock = sockdir / "in.sock"
    first, base = start(offline_daemons, case, sock, spool_dir)
    send(sock, events(range(0, 300)))
    read_all(base, 300 * KEYS)
    assert first.stop() == 0

    case.proxy.refuse = False
    case.proxy.latency_s = 0.05
    try:
        # Replay moves at most half of 60 events at a time: the stop finds
        # some of the spool in memory, the rest on disk.
        second, base = start(offline_daemons, case, sock, spool_dir, "--queue-max-events", "60")
        wait_for(
            lambda: total(scrape(base), "ingest_events_published_total") > 0,
            20,
            "publishing under way",
        )
        send(sock, events(range(300, 350)))
        read_all(base, 50 * KEYS)
        case.proxy.blackhole = True
        assert total(scrape(base), "ingest_spool_events") > 0  # the stop is mid-replay
        assert second.stop() == 0
    finally:
        case.proxy.latency_s = 0.0
    case.proxy.blackhole = False
    third, base = start(offline_daemons, case, sock, spool_dir)
    assert pull_in_order(case, 350 * KEYS) == exactly(range(350))
    identity_holds(base)
    assert third.stop() == 0
