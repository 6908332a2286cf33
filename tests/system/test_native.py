"""Pub/Sub-native messages end to end, against the real emulator: attributes
(static and from fields, Pub/Sub's limits), routes to several topics, and
ordering keys, including across an outage of a frozen emulator.

The emulator keeps attributes and ordering keys and, on a subscription with
message ordering, delivers each key's messages in the order it received
them; it does not apply subscription filters, so none is tested here.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.config import PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES, PUBSUB_MAX_ORDERING_KEY_BYTES
from tests.helpers import PubSubNames, UnixSender, another_topic, serve_args, wait_for
from tests.scrape import scrape, start, total, unaccounted, value
from tests.system.test_credentials import nobody
from tools.testing.daemon import Daemons
from tools.testing.emulator import Emulator, free_port, launcher_path
from tools.testing.tcpproxy import TcpProxy

_names = itertools.count()


def second_topic(emulator: Emulator, names: PubSubNames, *, ordered: bool = False) -> PubSubNames:
    return another_topic(emulator, names, f"routed-{next(_names)}", ordered=ordered)


def send_all(sock: Path, events: list[bytes]) -> None:
    with UnixSender(sock) as sender:
        for event in events:
            sender.send(event)


def by_data(messages: list[Any]) -> dict[bytes, Any]:
    return {m.data: m for m in messages}


def test_attributes_of_each_kind_within_pubsubs_limits(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    sock = sockdir / "in.sock"
    daemon, base = start(
        daemons, pubsub, "--unix", str(sock),
        "--attribute", "host=web-1", "--attribute", "note=a,b",
        "--attribute-field", "kind=kind", "--attribute-field", "user=user.id",
        "--attribute-field", "paid=paid", "--attribute-field", "extra=extra",
    )  # fmt: skip
    long_value = "é" * (PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES // 2 + 1)  # 1026 bytes
    events = [
        b'{"kind":"signup","user":{"id":7},"paid":true}',
        b'{"kind":"click", "user":{"id":"u-8"},"paid":null}',  # spacing kept as sent
        b'{"kind":{"nested":1},"user":[1]}',  # an object, and a path through an array
        orjson.dumps({"kind": "big", "extra": long_value}),
        b'{"extra":"\\u4e16\\u754c","user":{"id":1.5}}',
    ]
    send_all(sock, events)
    got = by_data(emulator.pull_messages_until(pubsub.subscription, len(events)))
    assert set(got) == set(events)  # data byte for byte
    static = {"host": "web-1", "note": "a,b"}
    assert dict(got[events[0]].attributes) == {
        **static,
        "kind": "signup",
        "user": "7",
        "paid": "true",
    }
    assert dict(got[events[1]].attributes) == {**static, "kind": "click", "user": "u-8"}
    assert dict(got[events[2]].attributes) == static  # not_scalar: published without it
    assert dict(got[events[3]].attributes) == {**static, "kind": "big"}  # value_too_long
    assert dict(got[events[4]].attributes) == {**static, "extra": "世界", "user": "1.5"}
    samples = scrape(base)
    assert value(samples, "ingest_attributes_skipped_total", reason="not_scalar") == 1
    assert value(samples, "ingest_attributes_skipped_total", reason="value_too_long") == 1
    assert unaccounted(samples) == 0
    assert daemon.stop() == 0
    assert daemon.stopped_counts()["published"] == len(events)


def test_routes_send_each_event_to_the_first_matching_topic(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    errors = second_topic(emulator, pubsub)
    audit = second_topic(emulator, pubsub)
    sock = sockdir / "in.sock"
    daemon, base = start(
        daemons, pubsub, "--unix", str(sock),
        "--route", f"{errors.topic_id}:level=error",
        "--route", f"{audit.topic_id}:level=error",  # never wins: the first match does
        "--route", f"{audit.topic_id}:http.status=401",
        "--attribute", "host=web-1",
    )  # fmt: skip
    assert f"-> {pubsub.topic} {errors.topic} {audit.topic} " in daemon.log
    to_errors = [b'{"level":"error","i":%d}' % i for i in range(30)]
    to_audit = [b'{"http":{"status":401},"i":%d}' % i for i in range(20)]
    rest = [b'{"level":"info","i":%d}' % i for i in range(25)] + [b'{"http":{"status":"500"}}']
    mixed = [e for trio in itertools.zip_longest(to_errors, to_audit, rest) for e in trio if e]
    # Several events to a datagram too: one datagram's events split by topic.
    send_all(sock, [b"\n".join(mixed[i : i + 7]) for i in range(0, len(mixed), 7)])
    for names, expected in ((errors, to_errors), (audit, to_audit), (pubsub, rest)):
        messages = emulator.pull_messages_until(names.subscription, len(expected))
        assert sorted(m.data for m in messages) == sorted(expected), names.topic_id
        assert all(dict(m.attributes) == {"host": "web-1"} for m in messages)
    samples = scrape(base)
    for names, expected in ((errors, to_errors), (audit, to_audit), (pubsub, rest)):
        published = value(samples, "ingest_events_published_total", topic=names.topic_id)
        assert published == len(expected)
    assert daemon.stop() == 0
    for names in (errors, audit, pubsub):
        assert emulator.pull_quiet(names.subscription, quiet_s=0.3) == []  # once each


def test_every_route_topic_is_checked_or_created_at_startup(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    missing = f"{pubsub.topic_id}-missing-{next(_names)}"
    args = serve_args(pubsub, "--unix", str(sockdir / "in.sock"), "--route", f"{missing}:a=b")
    refused = daemons.start(*args)
    assert refused.wait() == 2
    assert f"--topic: projects/{pubsub.project}/topics/{missing} does not exist" in refused.log
    created = daemons.start(*args, "--create-topic")
    created.wait_ready()
    assert emulator.get_topic(f"projects/{pubsub.project}/topics/{missing}")
    assert created.stop() == 0


def ordered_events(keys: int, per_key: int) -> list[bytes]:
    """Interleaved events of ``keys`` users, each user's numbered 0, 1, ..."""
    return [b'{"user":"u%d","n":%d}' % (user, n) for n in range(per_key) for user in range(keys)]


def assert_each_key_in_order(messages: list[Any], keys: int, per_key: int) -> None:
    """Every key's messages arrived, in the order they were sent. A retried
    request may be delivered twice (Pub/Sub's at-least-once); what counts is
    that a message never precedes an earlier one of its key the first time
    it is seen."""
    seen: dict[str, list[int]] = {}
    for message in messages:
        event = json.loads(message.data)
        assert message.ordering_key == event["user"]
        numbers = seen.setdefault(event["user"], [])
        if event["n"] not in numbers:
            numbers.append(event["n"])
    assert seen == {f"u{user}": list(range(per_key)) for user in range(keys)}


def test_ordering_keys_deliver_each_key_in_order(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    ordered = second_topic(emulator, pubsub, ordered=True)
    sock = sockdir / "in.sock"
    daemon, _ = start(
        daemons, ordered, "--unix", str(sock), "--ordering-key-field", "user",
        "--batch-max-messages", "5", "--publishers", "8",
    )  # fmt: skip
    keys, per_key = 10, 60
    events = ordered_events(keys, per_key)
    send_all(sock, [b"\n".join(events[i : i + 13]) for i in range(0, len(events), 13)])
    messages = emulator.pull_messages_until(ordered.subscription, len(events))
    assert_each_key_in_order(messages, keys, per_key)
    assert daemon.stop() == 0


def test_too_long_or_object_ordering_keys_publish_unordered(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    sock = sockdir / "in.sock"
    daemon, base = start(daemons, pubsub, "--unix", str(sock), "--ordering-key-field", "k")
    events = [
        orjson.dumps({"k": "x" * (PUBSUB_MAX_ORDERING_KEY_BYTES + 1)}),
        b'{"k":{"an":"object"}}',
        b'{"k":12}',
    ]
    send_all(sock, events)
    got = by_data(emulator.pull_messages_until(pubsub.subscription, len(events)))
    assert [got[e].ordering_key for e in events] == ["", "", "12"]
    samples = scrape(base)
    assert value(samples, "ingest_attributes_skipped_total", reason="ordering_key_too_long") == 1
    assert value(samples, "ingest_attributes_skipped_total", reason="not_scalar") == 1
    assert daemon.stop() == 0


# ------------------------------------------ ordering across a frozen emulator


@pytest.fixture
def private_emulator() -> Iterator[tuple[Emulator, TcpProxy]]:
    """An emulator of this test's own (freezing the session's would stall
    every other test), behind a proxy that starts refusing, so its topic
    exists before the daemon can reach it."""
    if launcher_path() is None:
        pytest.skip("the Google Pub/Sub emulator is not installed")
    with Emulator() as emulator, TcpProxy(emulator.port) as proxy:
        yield emulator, proxy


def test_ordering_holds_across_a_frozen_emulator(
    private_emulator: tuple[Emulator, TcpProxy], daemons: Daemons, sockdir: Path
) -> None:
    """Requests time out and are retried while the emulator is frozen; a key
    whose request failed waits, and its later messages do not overtake it."""
    emulator, proxy = private_emulator
    topic, subscription = "projects/ordering/topics/keys", "projects/ordering/subscriptions/keys"
    emulator.create_topic(topic)
    emulator.create_subscription(subscription, topic, ordered=True)
    proxy.refuse = False
    sock = sockdir / "in.sock"
    daemon = daemons.start(
        "--project", "ordering", "--topic", "keys", "--unix", str(sock),
        "--metrics", f"127.0.0.1:{free_port()}", "--batch-linger-ms", "2",
        "--publish-timeout", "1", "--batch-max-messages", "20", "--publishers", "8",
        "--ordering-key-field", "user",
        emulator_host=f"127.0.0.1:{proxy.port}",
    )  # fmt: skip
    daemon.wait_ready()
    keys, per_key = 20, 150
    events = ordered_events(keys, per_key)
    datagrams = [b"\n".join(events[i : i + 20]) for i in range(0, len(events), 20)]

    def traffic() -> None:
        with UnixSender(sock) as sender:
            for datagram in datagrams:
                sender.send(datagram)
                time.sleep(0.01)  # ~1.5 s of traffic, across the freeze's onset

    sender = threading.Thread(target=traffic)
    sender.start()
    time.sleep(0.4)
    emulator.signal(signal.SIGSTOP)
    try:
        sender.join(30)
        time.sleep(3)  # requests in flight time out, are retried, back off
    finally:
        emulator.signal(signal.SIGCONT)
    messages: list[Any] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages += emulator.pull_messages(subscription, max_messages=1000)
        if len({m.data for m in messages}) >= len(events):
            break
        time.sleep(0.05)
    assert_each_key_in_order(messages, keys, per_key)
    assert daemon.stop() == 0


# ------------------------------------------------- the spool keeps metadata


def spooling_args(project: str, sockdir: Path, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A daemon on a unix socket with a spool, which gives up on an
    unreachable Pub/Sub quickly: SIGTERM spools what it holds. Its socket
    and its arguments (topic "main")."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    sock = sockdir / "in.sock"
    return sock, (
        "--project", project, "--topic", "main", "--unix", str(sock),
        "--spool-dir", str(spool), "--publish-timeout", "1", "--drain-timeout", "1",
    )  # fmt: skip


def test_spooled_messages_come_back_with_their_metadata(
    private_emulator: tuple[Emulator, TcpProxy], daemons: Daemons, sockdir: Path, tmp_path: Path
) -> None:
    """Pub/Sub unreachable from the start (the proxy refuses: nothing can be
    delivered twice), so SIGTERM spools everything; a restart with the same
    configuration publishes each message once, with its attributes, its
    ordering key and on its routed topic."""
    emulator, proxy = private_emulator
    project = "spooled"
    main, errors = f"projects/{project}/topics/main", f"projects/{project}/topics/errors"
    for topic in (main, errors):
        emulator.create_topic(topic)
        emulator.create_subscription(topic.replace("/topics/", "/subscriptions/"), topic)
    sock, spooling = spooling_args(project, sockdir, tmp_path)
    args = (
        *spooling,
        "--attribute", "host=web-1", "--attribute-field", "kind=kind",
        "--ordering-key-field", "user", "--route", "errors:kind=error",
    )  # fmt: skip
    events = [b'{"kind":"%s","user":"u%d","n":%d}' % (
        b"error" if n % 5 == 0 else b"click", n % 3, n) for n in range(200)]  # fmt: skip
    port = free_port()
    first = daemons.start(
        *args, "--metrics", f"127.0.0.1:{port}", emulator_host=f"127.0.0.1:{proxy.port}"
    )
    first.wait_ready()
    send_all(sock, [b"\n".join(events[i : i + 10]) for i in range(0, len(events), 10)])
    wait_for(
        lambda: (
            total(scrape(f"http://127.0.0.1:{port}"), "ingest_events_received_total") == len(events)
        ),
        10,
        "the daemon reading every event",
    )
    assert first.stop() == 0
    assert first.stopped_counts()["spooled"] == len(events)

    proxy.refuse = False
    second = daemons.start(*args, "--metrics", "", emulator_host=f"127.0.0.1:{proxy.port}")
    second.wait_ready()
    to_errors = [e for e in events if b'"error"' in e]
    to_main = [e for e in events if b'"error"' not in e]
    for topic, expected in ((errors, to_errors), (main, to_main)):
        subscription = topic.replace("/topics/", "/subscriptions/")
        messages = emulator.pull_messages_until(subscription, len(expected))
        assert sorted(m.data for m in messages) == sorted(expected)
        for message in messages:
            event = json.loads(message.data)
            assert dict(message.attributes) == {"host": "web-1", "kind": event["kind"]}
            assert message.ordering_key == event["user"]
    assert second.stop() == 0
    assert second.stopped_counts()["published"] == len(events)
    for topic in (main, errors):
        assert emulator.pull_quiet(topic.replace("/topics/", "/subscriptions/"), 0.3) == []


@pytest.mark.parametrize("second_run", ["plain", "metadata"])
def test_syslog_attributes_survive_the_spool_on_the_plain_path(
    private_emulator: tuple[Emulator, TcpProxy],
    daemons: Daemons,
    sockdir: Path,
    tmp_path: Path,
    second_run: str,
) -> None:
    """Without metadata configured, a syslog event travels as a whole
    PubsubMessage among raw events and is spooled so: a restart publishes it
    with its syslog attributes, whether the next run is plain too or has
    metadata (which builds on the spooled body and keeps them)."""
    emulator, proxy = private_emulator
    project = "spooled"
    topic = f"projects/{project}/topics/main"
    subscription = f"projects/{project}/subscriptions/main"
    emulator.create_topic(topic)
    emulator.create_subscription(subscription, topic)
    sock, args = spooling_args(project, sockdir, tmp_path)
    sent = [b'<13>Nov 28 03:24:03 app[7]: {"n":%d}' % n for n in range(20)]
    sent += [b'{"n":%d}' % n for n in range(20, 40)]
    port = free_port()
    first = daemons.start(
        *args, "--metrics", f"127.0.0.1:{port}", emulator_host=f"127.0.0.1:{proxy.port}"
    )
    first.wait_ready()
    send_all(sock, sent)
    wait_for(
        lambda: total(scrape(f"http://127.0.0.1:{port}"), "ingest_events_received_total") == 40,
        10,
        "the daemon reading every event",
    )
    assert first.stop() == 0
    assert first.stopped_counts()["spooled"] == 40

    proxy.refuse = False
    more = ("--attribute", "host=web-1") if second_run == "metadata" else ()
    second = daemons.start(*args, *more, emulator_host=f"127.0.0.1:{proxy.port}")
    second.wait_ready()
    got = by_data(emulator.pull_messages_until(subscription, 40))
    static = {"host": "web-1"} if more else {}
    facts = {
        "syslog_severity": "notice",
        "syslog_facility": "user",
        "syslog_timestamp": "Nov 28 03:24:03",
        "syslog_app": "app",
        "syslog_pid": "7",
    }
    assert sorted(got) == sorted(b'{"n":%d}' % n for n in range(40))
    for n in range(40):
        attributes = dict(got[b'{"n":%d}' % n].attributes)
        assert attributes == ({**static, **facts} if n < 20 else static)
    assert second.stop() == 0


# ---------------------------------------------------------- sender identity


def test_unix_senders_are_identified_and_allow_listed_end_to_end(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, shared_dir: Path
) -> None:
    """Through ``ingest serve``: root's datagrams arrive with its pid, uid
    and gid from the kernel (a forged field is just data); user nobody's are
    rejected as sender_denied and never published."""
    as_nobody = nobody()
    sock = shared_dir / "in.sock"
    daemon, base = start(
        daemons, pubsub, "--unix", str(sock), "--unix-mode", "0666",
        "--unix-allow-uid", "root", "--attribute", "host=web-1",
    )  # fmt: skip
    root_events = ['{"i":1}', '{"i":2,"sender_uid":"0"}']
    root = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SENDER_PRINTING_PID, str(sock), *root_events],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    denied = subprocess.run(
        [*as_nobody, "-I", "-S", "-c", SENDER_PRINTING_PID, str(sock), '{"i":3}', '{"i":4}'],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    assert denied.returncode == 0
    messages = emulator.pull_messages_until(pubsub.subscription, len(root_events))
    assert sorted(m.data.decode() for m in messages) == sorted(root_events)
    pid = root.stdout.strip()
    for message in messages:
        attributes = dict(message.attributes)
        assert attributes == {
            "host": "web-1", "sender_pid": pid, "sender_uid": "0", "sender_gid": "0"
        }  # fmt: skip
    wait_for(
        lambda: (
            scrape(base).get(("ingest_events_rejected_total", (("reason", "sender_denied"),))) == 2
        ),
        10,
        "two sender_denied events",
    )
    assert emulator.pull_quiet(pubsub.subscription, quiet_s=0.3) == []
    assert daemon.stop() == 0


# Stdlib only (-I -S): nobody may not reach the virtualenv's packages.
SENDER_PRINTING_PID = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for data in sys.argv[2:]:
    sock.sendto(data.encode(), sys.argv[1])
print(os.getpid())
"""
