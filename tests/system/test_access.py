"""Access control: --udp-allow (source_denied) and --unix-group / --unix-mode.

Denied senders are real: loopback accepts any 127.0.0.0/8 source address, so
a sender bound to 127.0.0.2 is "another host" to an allow-list of 127.0.0.1.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import socket
import stat
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.receive.receivers import AllowList
from tests.helpers import PubSubNames, free_udp_port, ipv6_loopback_available, send_unix, serve_args
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator, free_port

EXIT_OK = 0
EXIT_CONFIG = 2


def send_from(source: str, target: tuple[str, int], data: bytes) -> None:
    """One UDP datagram from the given source address."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(data, target)


def metric(base: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        body = response.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in /metrics")


# ------------------------------------------------------------------ unit


def test_allow_list_matches_v4_v6_and_ipv4_mapped_senders() -> None:
    allow = AllowList([ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/32")])
    assert allow.decide("10.1.2.3")
    assert allow.decide("::ffff:10.1.2.3")  # an IPv4 sender on a dual-stack socket
    assert allow.decide("2001:db8::1")
    assert allow.decide("fe80::1%lo") is False  # scoped, outside
    assert not allow.decide("10.2.0.1")
    assert not allow.decide("::ffff:10.2.0.1")
    assert not allow.decide("2001:db9::1")
    assert not allow.decide("not an address")
    assert allow.verdicts["10.1.2.3"] is True  # cached per sender
    assert allow.verdicts["10.2.0.1"] is False


def test_allow_list_cache_is_bounded() -> None:
    allow = AllowList([ipaddress.ip_network("10.0.0.0/8")])
    for n in range(AllowList.MAX_CACHED * 2 + 5):
        allow.decide(str(ipaddress.ip_address("11.0.0.0") + n))
    assert len(allow.verdicts) <= AllowList.MAX_CACHED


# -------------------------------------------------------------- --udp-allow


def test_udp_allow_delivers_allowed_and_counts_denied_senders(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames
) -> None:
    port = free_udp_port()
    listeners = ["--udp", f"127.0.0.1:{port}"]
    port6 = None
    if ipv6_loopback_available():
        # Dual-stack [::]: IPv4 senders arrive as ::ffff:a.b.c.d, and the IPv4
        # CIDR must still admit (and refuse) them.
        port6 = free_udp_port("::")
        listeners += ["--udp", f"[::]:{port6}"]
    metrics_port = free_port()
    daemon = daemons.start(
        *serve_args(pubsub, *listeners, "--udp-allow", "127.0.0.1/32"),
        f"--metrics=127.0.0.1:{metrics_port}",  # the last --metrics wins
    )
    daemon.wait_ready()
    base = f"http://127.0.0.1:{metrics_port}"
    assert metric(base, "ingest_events_rejected_total", reason="source_denied") == 0
    allowed, denied = [], []
    for n in range(10):
        payload = b'{"n":%d,"from":"127.0.0.1"}' % n
        send_from("127.0.0.1", ("127.0.0.1", port), payload)
        allowed.append(payload)
        # Valid JSON from outside the allow-list: never forwarded.
        send_from("127.0.0.2", ("127.0.0.1", port), b'{"n":%d,"from":"127.0.0.2"}' % n)
        denied.append(n)
        if port6 is not None:
            payload = b'{"n":%d,"from":"::ffff:127.0.0.1"}' % n
            send_from("127.0.0.1", ("127.0.0.1", port6), payload)
            allowed.append(payload)
            send_from("127.0.0.2", ("127.0.0.1", port6), b'{"n":%d,"v6":"denied"}' % n)
            denied.append(n)
    got = emulator.pull_until(pubsub.subscription, len(allowed), timeout_s=30)
    assert sorted(got) == sorted(allowed)
    assert metric(base, "ingest_events_rejected_total", reason="source_denied") == len(denied)
    assert daemon.stop() == EXIT_OK
    assert emulator.pull_quiet(pubsub.subscription, quiet_s=0.5) == []
    counts = daemon.stopped_counts()
    # Each denied datagram is one event received and rejected: the identity holds.
    assert counts["received"] == len(allowed) + len(denied)
    assert counts["rejected"] == len(denied)
    assert counts["published"] == len(allowed)


def test_without_udp_allow_every_sender_is_accepted(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames
) -> None:
    port = free_udp_port()
    daemon = daemons.start(*serve_args(pubsub, "--udp", f"127.0.0.1:{port}"))
    daemon.wait_ready()
    send_from("127.0.0.2", ("127.0.0.1", port), b'{"from":"127.0.0.2"}')
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"from":"127.0.0.2"}']
    assert daemon.stop() == EXIT_OK


# ------------------------------------------------------------- --unix-group


def _some_other_group() -> grp.struct_group:
    for name in ("www-data", "nogroup", "daemon"):
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid != os.getgid():
            return group
    pytest.skip("no group other than the test's own to hand the socket to")


def test_unix_group_and_mode_set_who_may_send(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    group = _some_other_group()
    path = sockdir / "in.sock"
    daemon = daemons.start(
        *serve_args(pubsub, "--unix", str(path), "--unix-group", group.gr_name),
        "--unix-mode=0620",
    )
    daemon.wait_ready()
    st = path.stat()
    assert st.st_gid == group.gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o620
    send_unix(path, b'{"group":"ok"}')
    assert emulator.pull_until(pubsub.subscription, 1) == [b'{"group":"ok"}']
    assert daemon.stop() == EXIT_OK


def test_unknown_unix_group_is_a_startup_error(offline_daemons: Daemons) -> None:
    code, log = offline_daemons.run_failing(
        "--project", "p", "--topic", "events", "--unix-group", "no-such-group-for-ingest"
    )
    assert code == EXIT_CONFIG
    assert log.strip().splitlines() == [
        "ingest: error: --unix-group: group 'no-such-group-for-ingest' does not exist"
    ]
