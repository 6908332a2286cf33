"""GET /metrics and /healthz of a real daemon, against the real emulator.

/metrics is parsed with prometheus_client's own parser; the accounting
identity is checked from /metrics alone, during load and after it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import PubSubNames, UnixSender, another_topic, free_udp_port, send_udp, wait_for
from tests.scrape import HalfHeads, get, scrape, start, timed_get, total, unaccounted, value
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator


def test_metrics_exact_counts_after_a_known_load(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    daemon, base = start(daemons, pubsub, "--unix", str(path), "--max-datagram-bytes", "1000")
    listener = f"unix:{path}"
    with UnixSender(path) as sender:
        for i in range(500):
            sender.send(orjson.dumps({"i": i}))
        sender.send(b'{"a":1}\nnot json\n[1,2]\n\n{"b":2}\n\xff\xfe\n')  # 2 ok, 3 bad
        sender.send(b"x" * 1001)  # too_large: one event
        sender.send(b"")  # empty: a datagram, no event
    wait_for(
        lambda: total(scrape(base), "ingest_events_published_total") == 502, 20, "502 published"
    )
    samples = scrape(base)
    assert value(samples, "ingest_datagrams_received_total", listener=listener) == 503
    received = {
        fmt: value(samples, "ingest_events_received_total", listener=listener, format=fmt)
        for fmt in ("json", "gelf", "syslog", "statsd", "unknown")  # every one, from the start
    }
    # the oversized datagram was never looked at: its format is unknown
    assert received == {"json": 505, "gelf": 0, "syslog": 0, "statsd": 0, "unknown": 1}
    assert value(samples, "ingest_events_rejected_total", reason="invalid_json") == 1
    assert value(samples, "ingest_events_rejected_total", reason="not_object") == 1
    assert value(samples, "ingest_events_rejected_total", reason="invalid_utf8") == 1
    assert value(samples, "ingest_events_rejected_total", reason="too_large") == 1
    assert value(samples, "ingest_datagrams_ignored_total", reason="empty") == 1
    assert total(samples, "ingest_events_dropped_total") == 0
    assert value(samples, "ingest_publish_requests_total", code="OK") >= 1
    assert value(samples, "ingest_publish_latency_seconds_count") == value(
        samples, "ingest_publish_requests_total", code="OK"
    )
    assert value(samples, "ingest_event_latency_seconds_count") >= 2
    assert value(samples, "ingest_queue_capacity_events") == 100_000
    assert value(samples, "ingest_build_info", version="0.1.0") == 1
    assert value(samples, "ingest_topic_info", topic=pubsub.topic) == 1
    assert value(samples, "ingest_events_published_total", topic=pubsub.topic_id) == 502
    assert value(samples, "ingest_listener_up", listener=listener) == 1
    assert total(samples, "process_resident_memory_bytes") > 0
    assert unaccounted(samples) == 0
    assert len(emulator.pull_until(pubsub.subscription, 502)) == 502
    assert daemon.stop() == 0


def test_published_events_are_counted_by_topic(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """Every configured topic has its series, at 0 before its first event;
    the series add up to the events published."""
    errors = another_topic(emulator, pubsub, "errors")
    quiet = another_topic(emulator, pubsub, "quiet")
    path = sockdir / "in.sock"
    daemon, base = start(
        daemons, pubsub, "--unix", str(path),
        "--route", f"{errors.topic_id}:level=error",
        "--route", f"{quiet.topic_id}:level=never",
    )  # fmt: skip
    samples = scrape(base)
    for names in (pubsub, errors, quiet):
        assert value(samples, "ingest_topic_info", topic=names.topic) == 1
        assert value(samples, "ingest_events_published_total", topic=names.topic_id) == 0
    assert total(samples, "ingest_topic_info") == 3
    with UnixSender(path) as sender:
        for i in range(50):
            sender.send(orjson.dumps({"level": "error" if i % 5 < 3 else "info", "i": i}))
    wait_for(lambda: total(scrape(base), "ingest_events_published_total") == 50, 20, "50 published")
    samples = scrape(base)
    assert value(samples, "ingest_events_published_total", topic=errors.topic_id) == 30
    assert value(samples, "ingest_events_published_total", topic=pubsub.topic_id) == 20
    assert value(samples, "ingest_events_published_total", topic=quiet.topic_id) == 0
    assert len([key for key in samples if key[0] == "ingest_events_published_total"]) == 3
    assert unaccounted(samples) == 0
    assert len(emulator.pull_until(errors.subscription, 30)) == 30
    assert daemon.stop() == 0


def test_queue_full_drops_are_counted_by_reason(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    _, base = start(daemons, pubsub, "--unix", str(path), "--queue-max-events", "5")
    # One datagram of 8 events meets a queue of 5: the 5 that fit are kept.
    with UnixSender(path) as sender:
        sender.send(b"\n".join(orjson.dumps({"i": i}) for i in range(8)))
    wait_for(lambda: total(scrape(base), "ingest_events_published_total") == 5, 20, "5 published")
    samples = scrape(base)
    assert value(samples, "ingest_events_dropped_total", reason="queue_full") == 3
    assert unaccounted(samples) == 0


def test_accounting_identity_holds_at_every_scrape_under_load(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    path = sockdir / "in.sock"
    daemon, base = start(daemons, pubsub, "--unix", str(path))
    stop = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        with UnixSender(path) as sender:
            while not stop.is_set():
                sender.send(b'{"ok":1}\n[0]\n{"ok":2}')
                sent += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        scrapes = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            scrapes.append(scrape(base))
    finally:
        stop.set()
        thread.join(10)
    assert any(total(s, "ingest_events_received_total") > 0 for s in scrapes)
    assert [unaccounted(s) for s in scrapes] == [0] * len(scrapes)
    wait_for(
        lambda: total(scrape(base), "ingest_events_published_total") == 2 * sent,
        30,
        "all published",
    )
    final = scrape(base)
    assert total(final, "ingest_events_received_total") == 3 * sent
    assert value(final, "ingest_events_rejected_total", reason="not_object") == sent
    assert unaccounted(final) == 0
    assert daemon.stop() == 0


def test_kernel_drops_are_visible(daemons: Daemons, pubsub: PubSubNames) -> None:
    """Freeze the daemon so its small UDP buffer overflows: every datagram
    sent is either received or counted as a kernel drop, none unaccounted."""
    port = free_udp_port()
    daemon, base = start(
        daemons, pubsub, "--udp", f"127.0.0.1:{port}", "--udp-rcvbuf-bytes", "4096"
    )
    listener = f"udp:127.0.0.1:{port}"
    daemon.send_signal(signal.SIGSTOP)
    try:
        for i in range(200):
            send_udp(("127.0.0.1", port), orjson.dumps({"i": i}))
    finally:
        daemon.send_signal(signal.SIGCONT)

    def settled() -> bool:
        samples = scrape(base)
        received = value(samples, "ingest_datagrams_received_total", listener=listener)
        return received + value(samples, "ingest_kernel_drops_total", listener=listener) == 200

    wait_for(settled, 10, "received + kernel drops == sent")
    samples = scrape(base)
    assert value(samples, "ingest_kernel_drops_total", listener=listener) > 0
    assert value(samples, "ingest_udp_rcvbuf_bytes", listener=listener) < 4 << 20


def test_only_two_routes(daemons: Daemons, pubsub: PubSubNames) -> None:
    _, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{free_udp_port()}")
    assert get(base + "/")[0] == 404
    assert get(base + "/metrics/extra")[0] == 404
    assert get(base + "/metrics?x=1")[0] == 200
    status, body = get(base + "/healthz")
    assert status == 200
    assert orjson.loads(body) == {"status": "ok", "reasons": []}
    request = urllib.request.Request(base + "/metrics", method="POST", data=b"")
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("POST accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), 5) as conn:
        conn.sendall(b"garbage\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 400")


def test_idle_connections_cannot_exhaust_the_daemons_descriptors(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    """300 connections that never send a request (a slowloris, a stuck
    scraper): the daemon holds at most MAX_CONNECTIONS of them, closing the
    oldest at once as newer ones come, and /healthz is answered while all 300
    are still open on the client's side."""
    from ingest.observe.httpd import MAX_CONNECTIONS, REQUEST_TIMEOUT_S

    daemon, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{free_udp_port()}")
    port = int(base.rsplit(":", 1)[1])
    fd_dir = f"/proc/{daemon.pid}/fd"
    before = len(os.listdir(fd_dir))
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), 5))
        wait_for(
            lambda: len(os.listdir(fd_dir)) <= before + MAX_CONNECTIONS + 4,
            REQUEST_TIMEOUT_S / 2,  # not by timing them out: at once
            "the daemon to close the connections over its limit",
        )
        assert "connections open (the limit); closing the oldest" in daemon.log
        assert timed_get(base + "/healthz", 2.0)[0] == 200
    finally:
        for conn in idle:
            conn.close()


def test_healthz_is_answered_while_half_heads_hold_every_connection(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    """MAX_CONNECTIONS + 16 connections that each send half a request head
    and wait, renewed as soon as they are closed: every /healthz and /metrics
    is still answered within 2 s, and the daemon never holds more than
    MAX_CONNECTIONS of them (its descriptors, counted in /proc). A request
    whose body never comes is answered at once: bodies are never read."""
    from ingest.observe.httpd import MAX_CONNECTIONS

    daemon, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{free_udp_port()}")
    port = int(base.rsplit(":", 1)[1])
    fd_dir = f"/proc/{daemon.pid}/fd"
    before = len(os.listdir(fd_dir))
    with HalfHeads(port, MAX_CONNECTIONS + 16) as attack:
        wait_for(lambda: attack.renewed >= 16, 5, "the attack to renew what was closed")
        for _ in range(5):
            assert timed_get(base + "/healthz", 2.0) == (200, b'{"status":"ok","reasons":[]}\n')
            assert timed_get(base + "/metrics", 2.0)[0] == 200
            assert len(os.listdir(fd_dir)) <= before + MAX_CONNECTIONS + 4
        with socket.create_connection(("127.0.0.1", port), 2.0) as post:
            post.sendall(b"POST /healthz HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
            assert post.recv(100).startswith(b"HTTP/1.1 405")
    assert daemon.stop() == 0


def test_metrics_address_in_use_is_a_startup_error(daemons: Daemons, pubsub: PubSubNames) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, log = daemons.run_failing(
            "--project", pubsub.project, "--topic", pubsub.topic_id,
            "--udp", f"127.0.0.1:{free_udp_port()}", "--metrics", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert code == 2
    assert log.strip().splitlines()[-1].startswith("ingest: error: --metrics: ")


def test_healthz_follows_a_frozen_emulator(tmp_path: Path, sockdir: Path) -> None:
    """SIGSTOP the emulator under load: 503 within 10 s; SIGCONT: 200 within
    10 s, and every event sent meanwhile is delivered. A dedicated emulator,
    so freezing it cannot disturb other tests."""
    with Emulator() as emu:
        names = PubSubNames(
            "health", "events", "projects/health/topics/events", "projects/health/subscriptions/all"
        )
        emu.create_topic(names.topic)
        emu.create_subscription(names.subscription, names.topic)
        manager = Daemons(tmp_path, emu.host)
        try:
            path = sockdir / "in.sock"
            daemon, base = start(manager, names, "--unix", str(path))
            assert get(base + "/healthz")[0] == 200
            stop = threading.Event()
            sent = 0

            def load() -> None:
                nonlocal sent
                with UnixSender(path) as sender:
                    while not stop.wait(0.01):
                        sender.send(orjson.dumps({"n": sent}))
                        sent += 1

            thread = threading.Thread(target=load)
            thread.start()
            try:
                wait_for(lambda: sent > 10, 5, "load running")
                emu.signal(signal.SIGSTOP)
                try:
                    frozen_at = time.monotonic()
                    wait_for(lambda: get(base + "/healthz")[0] == 503, 15, "503 while frozen")
                    assert time.monotonic() - frozen_at <= 10 + 2  # the rule's 10 s, polling slack
                    status, body = get(base + "/healthz")
                    assert status == 503
                    assert orjson.loads(body)["status"] == "unhealthy"
                    assert orjson.loads(body)["reasons"]
                    assert scrape(base)[("ingest_healthy", ())] == 0
                finally:
                    emu.signal(signal.SIGCONT)
                thawed_at = time.monotonic()
                wait_for(lambda: get(base + "/healthz")[0] == 200, 15, "200 after thaw")
                assert time.monotonic() - thawed_at <= 10 + 2
            finally:
                stop.set()
                thread.join(10)
            assert daemon.stop(30) == 0
            got = {orjson.loads(m)["n"] for m in emu.pull_until(names.subscription, sent, 60)}
            assert got == set(range(sent))
        finally:
            manager.close()


def test_every_family_a_running_daemon_exports_is_in_the_metrics_reference(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    """docs/reference/metrics.md (generated by tools.docs from the collector
    over a stand-in view) names every family a real daemon's scrape holds."""
    spool_dir = sockdir / "spool"
    daemon, base = start(
        daemons, pubsub, "--unix", str(sockdir / "in.sock"), "--spool-dir", str(spool_dir)
    )
    status, body = get(base + "/metrics")
    assert status == 200
    page = (Path(__file__).resolve().parents[2] / "docs/reference/metrics.md").read_text()
    families = list(text_string_to_metric_families(body.decode()))
    assert len(families) > 30
    missing = [
        family.name
        for family in families
        if f"| `{family.name}{'_total' if family.type == 'counter' else ''}` |" not in page
    ]
    assert not missing, f"{missing} not in the metrics reference: `make reference` rewrites it"
    assert daemon.stop() == 0
