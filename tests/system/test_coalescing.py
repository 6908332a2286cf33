"""Coalescing and the request budget in a running daemon: a lone event is
still published quickly, many ordering keys cost requests by the budget
rather than by the number of keys, the maximum latency holds, a flood loses
nothing the kernel delivered, and a stop publishes what was queued without
waiting out the maximum latency.

The request count and the arrival time of each request are the stand-in's
(tools/testing/fakepubsub.py): the emulator reports neither. The rest runs
against the emulator.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.config import Settings
from ingest.pipeline.batch import PARTIAL_REQUESTS_PER_S
from ingest.receive.pacing import READ_PAUSE_MAX_S
from tests.helpers import PubSubNames, free_udp_port, pull_distinct, serve_args
from tests.scrape import scrape, total
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator, free_port
from tools.testing.fakepubsub import FakePubSub
from tools.testing.loadgen import event_bytes
from tools.testing.verify import Metadata

DEFAULT_LINGER_S = 0.005  # --batch-linger-ms's default
# What a lone event may wait with the defaults: the read pause, the linger,
# and slack for a busy machine; far below the budget's maximum latency (1 s),
# which a lone event must not wait for.
LONE_EVENT_BOUND_S = READ_PAUSE_MAX_S + DEFAULT_LINGER_S + 0.4
# --batch-max-latency-ms's default, which the keyed test runs with.
MAX_LATENCY_MS = Settings.__dataclass_fields__["batch_max_latency_ms"].default
LATENCY_SLACK_S = 0.5  # the read pause, a publisher's turn, a busy machine
KEYS = 100
ROUNDS = 10
ROUND_GAP_S = 0.1  # longer than the linger: without a budget, a request a key a round
DEADLINE_S = 30.0


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[FakePubSub]:
    sink = FakePubSub(str(tmp_path / "fakepubsub.log")).start()
    try:
        yield sink
    finally:
        sink.stop()


def udp_sender(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_lone_event_is_published_within_the_stated_bound(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames
) -> None:
    """Each event sent alone (the defaults: read pacing, linger, budget) is
    pulled within LONE_EVENT_BOUND_S of its send."""
    port = free_udp_port()
    daemon = daemons.start(
        *serve_args(pubsub, "--udp", f"127.0.0.1:{port}", "--batch-linger-ms", "5")
    )
    daemon.wait_ready()
    sender = udp_sender(port)
    try:
        for n in range(5):
            event = b'{"lone":%d}' % n
            sent = time.monotonic()
            sender.send(event)
            got: list[bytes] = []
            while event not in got and time.monotonic() - sent < DEADLINE_S:
                got += emulator.pull(pubsub.subscription)
            assert event in got
            assert time.monotonic() - sent <= LONE_EVENT_BOUND_S
    finally:
        sender.close()
    assert daemon.shut_down() == 0


def test_many_ordering_keys_cost_requests_by_the_budget_within_the_maximum_latency(
    offline_daemons: Daemons, standin: FakePubSub
) -> None:
    """100 keys, an event each every 100 ms, with the defaults: a request a
    key a round without the budget (1,000); with it, about a request a key a
    maximum latency plus the budget's own, and every event arrives within
    the maximum latency of its send."""
    port = free_udp_port()
    daemon = offline_daemons.start(
        "--project",
        "ingest-coalesce",
        "--topic",
        "events-keyed",
        "--metrics",
        "",
        "--udp",
        f"127.0.0.1:{port}",
        "--ordering-key-field",
        "user",
        emulator_host=standin.host,
    )
    daemon.wait_ready()
    total_events = KEYS * ROUNDS
    standin.report(0, total_events, Metadata(KEYS, (), "nobody"))
    sender = udp_sender(port)
    started = time.monotonic()
    try:
        for round_ in range(ROUNDS):
            sent_us = time.time_ns() // 1000
            for key in range(KEYS):
                seq = round_ * KEYS + key
                sender.send(event_bytes(seq, sent_us, KEYS))
            time.sleep(ROUND_GAP_S)
    finally:
        sender.close()
    assert daemon.shut_down() == 0  # publishes what is left
    elapsed_s = time.monotonic() - started
    report = standin.report(total_events, 0)
    assert report["distinct"] == total_events
    assert report["wrong_metadata"] == report["duplicates"] == 0
    latency_budget = KEYS * elapsed_s / (MAX_LATENCY_MS / 1000)
    assert report["requests"] <= latency_budget + PARTIAL_REQUESTS_PER_S * elapsed_s + KEYS
    assert report["requests"] < total_events / 2
    worst_s = report["latency_quantiles_us"][-1] / 1e6
    assert worst_s <= MAX_LATENCY_MS / 1000 + LATENCY_SLACK_S


def test_a_flood_loses_nothing_the_kernel_delivered(
    offline_daemons: Daemons, standin: FakePubSub
) -> None:
    """Paced reads at a rate that swings from idle to a flood and back:
    every event the kernel did not drop (ingest_kernel_drops) is
    published, once."""
    port, metrics = free_udp_port(), free_port()
    daemon = offline_daemons.start(
        "--project",
        "ingest-coalesce",
        "--topic",
        "events-flood",
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--udp",
        f"127.0.0.1:{port}",
        emulator_host=standin.host,
    )
    daemon.wait_ready()
    phases = [(2_000, 0.5), (100_000, 1.0), (2_000, 0.5)]
    expected = sum(int(rate * seconds) for rate, seconds in phases)
    standin.report(0, expected)
    first = 0
    sent = 0
    for rate, seconds in phases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tools.testing.loadgen",
                "--udp",
                f"127.0.0.1:{port}",
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--first-seq",
                str(first),
            ],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=True,
        )
        sent += int(json.loads(result.stdout)["ok"])
        first += int(rate * seconds)
    base = f"http://127.0.0.1:{metrics}"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        samples = scrape(base)
        arrived = total(samples, "ingest_events_received_total")
        if arrived + total(samples, "ingest_kernel_drops_total") >= sent:
            break
        time.sleep(0.05)
    samples = scrape(base)
    received = total(samples, "ingest_events_received_total")
    assert received + total(samples, "ingest_kernel_drops_total") == sent
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    report = standin.report(expected, 0)
    assert report["distinct"] == received
    assert report["duplicates"] == report["foreign"] == 0


def test_a_stop_publishes_what_waits_for_the_budget_at_once(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames
) -> None:
    """With a maximum latency of a minute, many keys' events wait for the
    budget; SIGTERM cuts the wait short: all are published, and the daemon
    stops long before the minute."""
    port, metrics = free_udp_port(), free_port()
    daemon = daemons.start(
        *serve_args(
            pubsub,
            "--udp",
            f"127.0.0.1:{port}",
            "--metrics",
            f"127.0.0.1:{metrics}",
            "--ordering-key-field",
            "user",
            "--batch-max-latency-ms",
            "60000",
        )
    )
    daemon.wait_ready()
    sender = udp_sender(port)
    events = [b'{"user":"u%d","n":%d}' % (n % 50, n) for n in range(500)]
    try:
        for event in events:
            sender.send(event)
    finally:
        sender.close()
    base = f"http://127.0.0.1:{metrics}"
    deadline = time.monotonic() + DEADLINE_S
    while total(scrape(base), "ingest_events_received_total") < len(events):
        assert time.monotonic() < deadline, "the daemon did not read every event"
        time.sleep(0.05)
    samples = scrape(base)
    assert total(samples, "ingest_events_published_total") < len(events)  # some wait
    stopping = time.monotonic()
    assert daemon.shut_down() == 0
    assert time.monotonic() - stopping < 20.0
    assert pull_distinct(emulator, pubsub.subscription, len(events)) == set(events)
