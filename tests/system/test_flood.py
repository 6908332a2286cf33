"""Amplification floods against a real daemon: a sender looping on one
maximum-size UDP datagram packed with the smallest valid events (``{}\\n``,
21,835 events a datagram), or on one statsd line whose 16,000 values each
become an event carrying its 4,000 tags (777 MiB written from 55 KB, before
codec.MAX_DECODED_BYTES). Whatever it sends, the daemon keeps answering
/healthz, keeps its memory within the queue's bounds plus a fixed overhead,
stops on SIGTERM within the documented bound, and accounts for every event.

The flooder is a separate process with a bounded duration, so it competes
for the CPU as a real sender would and can never outlive the test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import PubSubNames, free_udp_port, wait_for
from tests.scrape import get, scrape, unaccounted, value
from tests.scrape import start as start_with_metrics
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.procfs import peak_rss_kib

# The largest UDP payload over IPv4 loopback, as the sender used.
FLOOD_DATAGRAM = b"{}\n" * 21_835
STATSD_FLOOD_DATAGRAM = (
    b"m:" + b":".join([b"1"] * 16_000) + b"|c|#" + b",".join(b"t%d" % i for i in range(4000))
)
QUEUE_MAX_EVENTS = 100_000
QUEUE_MAX_BYTES = 8 << 20
# The memory bound (docs/concepts/memory.md): startup RSS + the queue's bytes + 64 B of object
# overhead per queued event + one wake-up's worth + slack for the allocator.
FIXED_OVERHEAD_MIB = 48
PUBLISHERS = 4  # the default
STATSD_BATCH_MAX_BYTES = (1 << 20) + 1024  # --batch-max-bytes's least
FINAL_READ_MAX_S = 2.0  # sources.FINAL_READ_MAX_S, the documented bound
EXIT_SLACK_S = 3.0  # closing the channel, interpreter exit, a busy CI machine
HEALTHZ_MAX_S = 1.0

FLOODER = """
import socket, sys, time
kind, where, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
payload = open(sys.argv[4], "rb").read() if len(sys.argv) > 4 else b"{}\\n" * 21_835
if kind == "udp":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", int(where)))
else:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    sock.connect(where)
deadline = time.monotonic() + duration
sent = 0
while time.monotonic() < deadline:
    try:
        sock.send(payload)
        sent += 1
    except OSError:
        pass
print(sent)
"""


@contextmanager
def flooding(
    target: tuple[str, str], duration_s: float, payload: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A flooder process aimed at ("udp", port) or ("unix", path), sending
    FLOOD_DATAGRAM or the bytes of ``payload``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FLOODER,
            *target,
            str(duration_s),
            *([str(payload)] * bool(payload)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def start(
    daemons: Daemons, names: PubSubNames, transport: str, *extra: str
) -> tuple[DaemonProcess, str, tuple[str, str]]:
    """A daemon with one listener of ``transport``; (daemon, metrics URL, flood target)."""
    if transport == "udp":
        port = free_udp_port()
        listener = ["--udp", f"127.0.0.1:{port}"]
        target = ("udp", str(port))
    else:
        path = str(daemons.tmp_path / "flood.sock")
        listener = ["--unix", path]
        target = ("unix", path)
    bounds = [
        "--queue-max-events",
        str(QUEUE_MAX_EVENTS),
        "--queue-max-bytes",
        str(QUEUE_MAX_BYTES),
    ]
    daemon, base = start_with_metrics(daemons, names, *listener, *bounds, *extra)
    return daemon, base, target


def flood_asking_health(target: tuple[str, str], base: str, payload: Path | None = None) -> None:
    """Flood ``target`` for 3 s, asking /healthz all the while: it must
    answer each time within HEALTHZ_MAX_S."""
    latencies = []
    with flooding(target, 3.0, payload) as flooder:
        wait_for(
            lambda: total_of(scrape(base), "ingest_events_received_total") > 0,
            10,
            "the flood to arrive",
        )
        while flooder.poll() is None:
            latencies.append(healthz_latency_s(base))
        sent = int((flooder.communicate(timeout=10)[0] or b"0").strip())
    assert sent > 10, "the flooder did not flood"
    assert latencies and max(latencies) < HEALTHZ_MAX_S, latencies


def healthz_latency_s(base: str) -> float:
    started = time.monotonic()
    get(base + "/healthz")  # 200 or 503: it answers, which is what is measured
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("transport", "spool"), [("udp", False), ("udp", True), ("unix", False)])
def test_flood_keeps_healthz_answering_and_memory_bounded(
    daemons: Daemons, pubsub: PubSubNames, transport: str, spool: bool
) -> None:
    """With a spool the overflow goes to disk instead of being dropped; memory
    is bounded the same way."""
    # A small spool: the flood overflows it too (spool_full), and what it
    # holds replays to the emulator in seconds.
    spool_dir = str(daemons.tmp_path / "spool")
    extra = ["--spool-dir", spool_dir, "--spool-max-bytes", str(1 << 20)] if spool else []
    daemon, base, target = start(daemons, pubsub, transport, *extra)
    baseline_kib = rss_kib(daemon.pid)
    flood_asking_health(target, base)
    # Everything settles: published, rejected or dropped by a named reason.
    wait_for(
        lambda: (
            unaccounted(samples := scrape(base)) == 0
            and total_of(samples, "ingest_queue_events") == 0
            and total_of(samples, "ingest_inflight_events") == 0
            and total_of(samples, "ingest_spool_events") == 0
        ),
        90,
        "the flood to be accounted",
    )
    if spool:  # the overflow really went through the spool
        assert total_of(scrape(base), "ingest_events_spooled_total") > 0
    peak_kib = peak_rss_kib(daemon.pid)
    assert peak_kib is not None
    bound_kib = (
        baseline_kib + (QUEUE_MAX_BYTES + 64 * QUEUE_MAX_EVENTS) // 1024 + FIXED_OVERHEAD_MIB * 1024
    )
    assert peak_kib < bound_kib, f"peak RSS {peak_kib} KiB, bound {bound_kib} KiB"
    assert daemon.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("transport", "metadata"), [("udp", False), ("udp", True), ("unix", True)])
def test_a_statsd_flood_writes_at_most_its_bound_a_datagram(
    daemons: Daemons, pubsub: PubSubNames, transport: str, metadata: bool
) -> None:
    """The issue's datagrams, looped on for 3 s: what each writes stops at
    the bound (its further samples rejected decoded_too_large) and counts
    against the wake-up's budget, so memory stays within the documented bound
    and /healthz answers, as for the JSON flood. With metadata every sample
    gets the attributes (and over unix the sender's credentials too)."""
    # Requests of 1 MiB: this flood's events are 48 KB, and the publishers'
    # requests (a term of the memory bound) would be 10 MB each otherwise.
    extra = ["--batch-max-bytes", str(STATSD_BATCH_MAX_BYTES)]
    if metadata:
        extra += ["--attribute", "env=prod", "--attribute-field", "metric=metric"]
    if transport == "unix" and metadata:
        extra.append("--unix-credentials")
    daemon, base, target = start(daemons, pubsub, transport, *extra)
    baseline_kib = rss_kib(daemon.pid)
    payload = daemons.tmp_path / "statsd.bin"
    payload.write_bytes(STATSD_FLOOD_DATAGRAM)
    flood_asking_health(target, base, payload)
    wait_for(
        lambda: (
            unaccounted(samples := scrape(base)) == 0
            and total_of(samples, "ingest_queue_events") == 0
            and total_of(samples, "ingest_inflight_events") == 0
        ),
        90,
        "the flood to be accounted",
    )
    samples = scrape(base)
    assert value(samples, "ingest_events_rejected_total", reason="decoded_too_large") > 0
    assert total_of(samples, "ingest_events_published_total") > 0
    peak_kib = peak_rss_kib(daemon.pid)
    assert peak_kib is not None
    bound_kib = (
        baseline_kib
        + (QUEUE_MAX_BYTES + 64 * QUEUE_MAX_EVENTS + PUBLISHERS * 2 * STATSD_BATCH_MAX_BYTES)
        // 1024
        + FIXED_OVERHEAD_MIB * 1024
    )
    assert peak_kib < bound_kib, f"peak RSS {peak_kib} KiB, bound {bound_kib} KiB"
    assert daemon.stop() == 0


def total_of(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


@pytest.mark.timeout(90)
def test_sigterm_during_a_flood_exits_within_the_drain_bound(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    daemon, base, target = start(daemons, pubsub, "udp", "--drain-timeout", "0")
    with flooding(target, 20.0):
        wait_for(
            lambda: total_of(scrape(base), "ingest_events_received_total") > 100_000,
            10,
            "the flood to arrive",
        )
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        elapsed = time.monotonic() - started
    assert elapsed < FINAL_READ_MAX_S + 0 + EXIT_SLACK_S, elapsed
    # Events still queued at the deadline are dropped (no spool): exit 3, and
    # the stopped line accounts for every event.
    assert code in (0, 3)
    counts = daemon.stopped_counts()
    assert counts["received"] == (
        counts["published"] + counts["unconfirmed"] + counts["rejected"] + counts["dropped"]
    )
