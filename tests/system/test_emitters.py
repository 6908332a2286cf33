"""Real, unmodified emitters against a real daemon and the real Pub/Sub
emulator: graypy (GELF, zlib and chunked), Python's SysLogHandler,
util-linux ``logger`` (RFC 3164 and RFC 5424), pystatsd and DogStatsD, the
access logs of nginx and HAProxy, and rsyslog forwarding (those three skipped
where they are not installed).

Each client is configured as its own documentation says, with only its
address pointing at ingest; what it sent is checked by what the emulator's
subscription receives (data, attributes) and by /metrics (events by format,
rejects by reason, the accounting identity). Where the exact bytes a client
sent matter, the same client is also pointed at a capturing socket (a
second handler on the same logger: the same record, the same bytes).

The Python clients' versions are pinned in pyproject.toml's ``dev`` list.
The clients are built, and nginx and HAProxy configured, by the files under
examples/ (emitters/, nginx/, haproxy/, rsyslog/), which the guides of docs/guides/
show verbatim (tests/unit/test_docs_examples.py holds them identical), so
what an operator copies is what runs here.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import json
import logging
import logging.handlers
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from datadog.dogstatsd.base import DogStatsd  # datadog re-exports it implicitly

from examples.emitters.gelf_logging import gelf_handler
from examples.emitters.statsd_clients import (
    dogstatsd_client,
    dogstatsd_unix_client,
    statsd_client,
)
from examples.emitters.syslog_logging import syslog_handler
from tests.helpers import REPO, PubSubNames, free_udp_port, send_udp, wait_for
from tests.scrape import scrape, start, total, unaccounted, value
from tools.testing.daemon import DaemonProcess, Daemons
from tools.testing.emulator import Emulator, free_port

FORMATS = ("json", "gelf", "syslog", "statsd", "unknown")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_loggers = itertools.count()


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Ingest:
    """A running daemon listening on one UDP port and one unix socket."""

    daemon: DaemonProcess
    base: str  # the /metrics server
    port: int
    sock: Path

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def udp(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    @property
    def unix(self) -> str:
        return f"unix:{self.sock}"


def serve(daemons: Daemons, pubsub: PubSubNames, sockdir: Path, *extra: str) -> Ingest:
    port = free_udp_port()
    sock = sockdir / f"in-{port}.sock"
    daemon, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{port}", "--unix", str(sock), *extra)
    return Ingest(daemon, base, port, sock)


def by_format(samples: Samples, listener: str) -> dict[str, float]:
    """Events received at ``listener``, by format (every format, zeros too)."""
    return {
        fmt: value(samples, "ingest_events_received_total", listener=listener, format=fmt)
        for fmt in FORMATS
    }


def only(fmt: str, count: int) -> dict[str, float]:
    return {other: count if other == fmt else 0 for other in FORMATS}


def settled(ingest: Ingest, *, published: int, rejected: int | None = 0) -> Samples:
    """/metrics once ``published`` (and ``rejected``, unless None) are
    reached and every event received is accounted for (nothing queued or in
    flight)."""

    def done() -> bool:
        samples = scrape(ingest.base)
        return (
            total(samples, "ingest_events_published_total") == published
            and rejected in (None, total(samples, "ingest_events_rejected_total"))
            and unaccounted(samples) == 0
            and total(samples, "ingest_inflight_events") == 0
        )

    wait_for(done, 20, f"{published} published and {rejected} rejected")
    return scrape(ingest.base)


def rejects(samples: Samples) -> dict[str, float]:
    """Events rejected, by reason (the reasons with any)."""
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in samples.items()
        if name == "ingest_events_rejected_total" and count
    }


def pull(emulator: Emulator, pubsub: PubSubNames, count: int) -> list[Any]:
    """Exactly ``count`` messages (a bounded wait for them, a short one for
    any more)."""
    messages = emulator.pull_messages_until(pubsub.subscription, count, timeout_s=20)
    assert len(messages) == count, [m.data for m in messages]
    assert emulator.pull_quiet(pubsub.subscription, quiet_s=0.3, timeout_s=5) == []
    return messages


def attributes(message: Any) -> dict[str, str]:
    return dict(message.attributes)


class Capture:
    """A socket standing in for ingest, to see what a client sends."""

    def __init__(self, path: Path | None = None) -> None:
        family = socket.AF_INET if path is None else socket.AF_UNIX
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0) if path is None else str(path))
        self.sock.settimeout(5)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def path(self) -> str:
        return str(self.sock.getsockname())

    def take(self, count: int) -> list[bytes]:
        """The next ``count`` datagrams (bounded: 5 s each)."""
        return [self.sock.recv(65536) for _ in range(count)]

    def take_all(self) -> list[bytes]:
        """Every datagram waiting (at least one)."""
        out = self.take(1)
        self.sock.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            while True:
                out.append(self.sock.recv(65536))
        self.sock.settimeout(5)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def python_logger(*handlers: logging.Handler) -> Iterator[logging.Logger]:
    """A logger of its own with ``handlers``, closed afterwards."""
    log = logging.getLogger(f"emitters.app{next(_loggers)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    for handler in handlers:
        log.addHandler(handler)
    try:
        yield log
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def reassemble(chunks: list[bytes]) -> bytes:
    """A GELF message from its chunks (header: magic, id, sequence, count)."""
    assert all(c[:2] == b"\x1e\x0f" and c[2:10] == chunks[0][2:10] for c in chunks)
    assert sorted(c[10] for c in chunks) == list(range(chunks[0][11]))
    return b"".join(c[12:] for c in sorted(chunks, key=lambda c: c[10]))


def logger_command() -> str:
    path = shutil.which("logger")
    if path is None:
        pytest.skip("util-linux logger is not installed")
    return path


def run_logger(*args: str) -> int:
    """Run ``logger ARGS`` to completion; its pid."""
    proc = subprocess.Popen(
        [logger_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, (out, err)
    return proc.pid


RFC3164_HEADER = re.compile(rb"<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) ([^ \[:]+)(?:\[(\d+)\])?: ")
RFC5424_HEADER = re.compile(rb"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def header_of(pattern: re.Pattern[bytes], datagram: bytes) -> list[str | None]:
    match = pattern.match(datagram)
    assert match, datagram
    return [None if g is None else g.decode() for g in match.groups()]


def assert_recent_rfc3164(stamp: str) -> None:
    """An RFC 3164 timestamp (local time, no year) within a minute of now."""
    now = datetime.now()
    parsed = datetime.strptime(stamp, "%b %d %H:%M:%S")
    nearest = min(
        (abs(parsed.replace(year=year) - now) for year in (now.year - 1, now.year)),
    )
    assert nearest < timedelta(minutes=1), stamp


def assert_recent_rfc3339(stamp: str) -> None:
    parsed = datetime.fromisoformat(stamp)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1), stamp


# ------------------------------------------------------------------- graypy


def test_graypy_udp_handler_publishes_the_gelf_object_it_sent(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """graypy's default: zlib, one datagram. The data is the inflated GELF
    object byte for byte, extra= fields as GELF additional fields."""
    ingest = serve(daemons, pubsub, sockdir)
    with Capture() as capture:
        handlers = (
            gelf_handler("127.0.0.1", ingest.port),
            gelf_handler("127.0.0.1", capture.port),
        )
        with python_logger(*handlers) as log:
            log.warning("user %s signed up", "ann", extra={"user_id": 7, "plan": "pró"})
        (sent,) = capture.take(1)
    assert sent[:2] in (b"\x78\x9c", b"\x78\xda", b"\x78\x01", b"\x78\x5e")  # zlib
    (message,) = pull(emulator, pubsub, 1)
    assert message.data == zlib.decompress(sent)  # byte for byte
    assert attributes(message) == {}
    gelf = json.loads(message.data)
    assert gelf["version"] == "1.0"
    assert gelf["short_message"] == "user ann signed up"
    assert gelf["host"] == socket.gethostname()
    assert gelf["level"] == 4  # syslog's warning
    assert gelf["facility"] == log.name
    assert gelf["_user_id"] == 7
    assert gelf["_plan"] == "pró"
    samples = settled(ingest, published=1)
    assert by_format(samples, ingest.udp) == only("gelf", 1)
    assert value(samples, "ingest_datagrams_received_total", listener=ingest.udp) == 1


def test_graypy_chunked_record_is_published_once_intact(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """A record that compresses to more than graypy's 1420-byte chunks goes
    as several chunk datagrams: one event, published once, whole."""
    ingest = serve(daemons, pubsub, sockdir)
    blob = base64.b64encode(os.urandom(15_000)).decode()  # 20 KB, barely compressible
    with Capture() as capture:
        handlers = (
            gelf_handler("127.0.0.1", ingest.port),
            gelf_handler("127.0.0.1", capture.port),
        )
        with python_logger(*handlers) as log:
            log.error("a big one", extra={"blob": blob})
        sent = capture.take_all()
    assert len(sent) > 5
    assert all(len(chunk) <= 1420 + 12 for chunk in sent)
    (message,) = pull(emulator, pubsub, 1)
    assert message.data == zlib.decompress(reassemble(sent))
    gelf = json.loads(message.data)
    assert gelf["short_message"] == "a big one"
    assert gelf["_blob"] == blob
    samples = settled(ingest, published=1)
    assert by_format(samples, ingest.udp) == only("gelf", 1)
    assert value(samples, "ingest_datagrams_received_total", listener=ingest.udp) == len(sent)
    assert value(samples, "ingest_gelf_pending_messages", listener=ingest.udp) == 0
    assert total(samples, "ingest_datagrams_ignored_total") == 0


# ------------------------------------------------------------------- syslog


def test_python_syslog_handler_with_a_json_formatter_over_udp_and_unix(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """SysLogHandler sends ``<PRI>[ident]MSG\\0``: the data is the JSON the
    formatter wrote, byte for byte; PRI and ident are attributes."""
    ingest = serve(daemons, pubsub, sockdir)
    over_udp = syslog_handler(ingest.addr)
    over_udp.ident = "app: "
    over_unix = syslog_handler(str(ingest.sock), facility=logging.handlers.SysLogHandler.LOG_LOCAL3)
    with Capture() as capture:
        tee = syslog_handler(("127.0.0.1", capture.port))
        tee.ident = over_udp.ident
        with python_logger(over_udp, tee) as log:
            log.warning("disk full", extra={"ctx": {"where": "udp", "city": "Zürich"}})
        with python_logger(over_unix) as log:
            log.error("db down", extra={"ctx": {"where": "unix"}})
        (teed,) = capture.take(1)
    udp_json = '{"level": "WARNING", "msg": "disk full", "where": "udp", "city": "Zürich"}'
    unix_json = '{"level": "ERROR", "msg": "db down", "where": "unix"}'
    assert teed == b"<12>app: " + udp_json.encode() + b"\x00"  # what went on the wire
    got = {m.data: attributes(m) for m in pull(emulator, pubsub, 2)}
    assert got == {
        udp_json.encode(): {
            "syslog_severity": "warning",
            "syslog_facility": "user",
            "syslog_app": "app",
        },
        unix_json.encode(): {"syslog_severity": "err", "syslog_facility": "local3"},
    }
    samples = settled(ingest, published=2)
    assert by_format(samples, ingest.udp) == only("syslog", 1)
    assert by_format(samples, ingest.unix) == only("syslog", 1)


def test_util_linux_logger_rfc3164_on_unix_and_rfc5424_on_udp(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """``logger``'s headers become attributes, as its datagrams carry them
    (learnt by pointing the same command at a capturing socket first)."""
    ingest = serve(daemons, pubsub, sockdir)
    with Capture(sockdir / "probe.sock") as unix_probe, Capture() as udp_probe:
        run_logger("-u", unix_probe.path, "--socket-errors=on", '{"k":1}')
        rfc5424 = ("--rfc5424", "-d", "-n", "127.0.0.1", "-P")
        run_logger(*rfc5424, str(udp_probe.port), '{"k":2}')
        (probe_3164,) = unix_probe.take(1)
        (probe_5424,) = udp_probe.take(1)
    # <13>Nov 28 13:55:53 root: {"k":1}  (a local logger names no host)
    pri, _, tag, pid = header_of(RFC3164_HEADER, probe_3164)
    assert (pri, pid) == ("13", None)
    assert probe_3164.endswith(b' {"k":1}')
    # <13>1 2026-11-28T13:55:53.985017+00:00 vm root - - [timeQuality ...] {"k":2}
    pri, _, host, app, procid, msgid = header_of(RFC5424_HEADER, probe_5424)
    assert (pri, procid, msgid) == ("13", "-", "-")
    assert b"[timeQuality " in probe_5424

    run_logger("-u", str(ingest.sock), "--socket-errors=on", '{"k":1}')
    run_logger(*rfc5424, str(ingest.port), '{"k":2}')
    logger_pid = run_logger("-u", str(ingest.sock), "-i", "-t", "web", '{"k":3}')
    got = {m.data: attributes(m) for m in pull(emulator, pubsub, 3)}
    assert set(got) == {b'{"k":1}', b'{"k":2}', b'{"k":3}'}
    facts_3164, facts_5424, facts_pid = got[b'{"k":1}'], got[b'{"k":2}'], got[b'{"k":3}']
    for facts in (facts_3164, facts_5424, facts_pid):
        assert facts.pop("syslog_severity") == "notice"
        assert facts.pop("syslog_facility") == "user"
    assert_recent_rfc3164(facts_3164.pop("syslog_timestamp"))
    assert facts_3164 == {"syslog_app": tag}
    assert_recent_rfc3339(facts_5424.pop("syslog_timestamp"))
    assert facts_5424 == {"syslog_host": host, "syslog_app": app}
    assert_recent_rfc3164(facts_pid.pop("syslog_timestamp"))
    assert facts_pid == {"syslog_app": "web", "syslog_pid": str(logger_pid)}
    samples = settled(ingest, published=3)
    assert by_format(samples, ingest.unix) == only("syslog", 2)
    assert by_format(samples, ingest.udp) == only("syslog", 1)


def test_syslog_wrap_text_publishes_a_plain_logger_message_in_an_object(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """Plain text from ``logger``: rejected as invalid_json by default,
    ``{"message": TEXT}`` with --syslog-wrap-text (the header still the
    attributes)."""
    plain = serve(daemons, pubsub, sockdir)
    wrapping = serve(daemons, pubsub, sockdir, "--syslog-wrap-text")
    for ingest in (plain, wrapping):
        run_logger(
            "-u", str(ingest.sock), "--socket-errors=on", "-t", "cron", "backup done: 3 files"
        )
    (message,) = pull(emulator, pubsub, 1)
    assert message.data == b'{"message":"backup done: 3 files"}'
    facts = attributes(message)
    assert_recent_rfc3164(facts.pop("syslog_timestamp"))
    assert facts == {"syslog_severity": "notice", "syslog_facility": "user", "syslog_app": "cron"}
    samples = settled(wrapping, published=1)
    assert by_format(samples, wrapping.unix) == only("syslog", 1)
    samples = settled(plain, published=0, rejected=1)
    assert rejects(samples) == {"invalid_json": 1}
    assert by_format(samples, plain.unix) == only("syslog", 1)


# ------------------------------------------------------------------- statsd


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The global ``random`` seeded (clients draw their sampling dice from
    it), restored afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def test_pystatsd_every_sample_is_one_event(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    ingest = serve(daemons, pubsub, sockdir)
    client = statsd_client("127.0.0.1", ingest.port)
    try:
        client.incr("a.hits")  # a.hits:1|c
        client.incr("a.hits", 3)
        client.decr("a.left")  # a.left:-1|c
        client.gauge("g.temp", 21.5)
        client.gauge("g.temp", 2, delta=True)  # g.temp:+2|g
        client.gauge("g.temp", -3, delta=True)  # g.temp:-3|g
        client.gauge("g.neg", -5)  # one datagram: g.neg:0|g, g.neg:-5|g
        client.timing("t.db", 12.5)  # t.db:12.500000|ms
        client.timing("t.db", timedelta(milliseconds=3))
        client.set("s.users", "u-1")
        with seeded(1):  # random.random() is 0.134 < 0.5: sent, with its rate
            client.incr("r.sampled", rate=0.5)  # r.sampled:1|c|@0.5
        with client.pipeline() as pipe:  # one datagram of three lines
            pipe.incr("p.a")
            pipe.gauge("p.b", 7)
            pipe.timing("p.c", 1)
    finally:
        client.close()
    expected = [
        b'{"metric":"a.hits","value":1,"type":"c"}',
        b'{"metric":"a.hits","value":3,"type":"c"}',
        b'{"metric":"a.left","value":-1,"type":"c"}',
        b'{"metric":"g.temp","value":21.5,"type":"g"}',
        b'{"metric":"g.temp","value":2,"type":"g","delta":true}',
        b'{"metric":"g.temp","value":-3,"type":"g","delta":true}',
        b'{"metric":"g.neg","value":0,"type":"g"}',
        b'{"metric":"g.neg","value":-5,"type":"g","delta":true}',
        b'{"metric":"t.db","value":12.5,"type":"ms"}',
        b'{"metric":"t.db","value":3.0,"type":"ms"}',
        b'{"metric":"s.users","value":"u-1","type":"s"}',
        b'{"metric":"r.sampled","value":1,"type":"c","sample_rate":0.5}',
        b'{"metric":"p.a","value":1,"type":"c"}',
        b'{"metric":"p.b","value":7,"type":"g"}',
        b'{"metric":"p.c","value":1.0,"type":"ms"}',
    ]
    messages = pull(emulator, pubsub, len(expected))
    assert sorted(m.data for m in messages) == sorted(expected)
    assert all(attributes(m) == {} for m in messages)
    samples = settled(ingest, published=len(expected))
    assert by_format(samples, ingest.udp) == only("statsd", len(expected))
    # A datagram a call: g.neg's two lines in one, the pipeline's three in one.
    assert value(samples, "ingest_datagrams_received_total", listener=ingest.udp) == 12


@pytest.fixture
def clean_dd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DD_* setting of the machine's changes what the client sends."""
    for name in list(os.environ):
        if name.startswith(("DD_", "DATADOG_")):
            monkeypatch.delenv(name)


def dogstatsd_lines(client: DogStatsd, tags: list[str]) -> None:
    """The same calls for each transport."""
    client.increment("page.views", tags=tags, sample_rate=1)
    client.histogram("req.size", 3.5, tags=["env:prod"])
    client.distribution("req.latency", 0.25)
    client.gauge("queue.depth", 12)
    client.gauge_with_timestamp("queue.depth", 10, 1_700_000_000)
    client.set("visitors", "u-9")
    client.timing("db.query", 7)
    client.event(
        "Man down! | web1",
        "This server needs assistance.\nNow: café | ok",
        alert_type="error",
        aggregation_key="k1",
        source_type_name="my_apps",
        date_happened=1_700_000_000,
        priority="low",
        tags=["env:prod"],
        hostname="web1",
    )
    client.service_check(
        "my.check",
        DogStatsd.WARNING,
        tags=["env:prod"],
        timestamp=1_700_000_001,
        hostname="web1",
        message="disk at 91%\nm: /dev/sda1",
    )
    with client:  # the documented batch: buffered, sent as one datagram on exit
        client.increment("batch.a")
        client.decrement("batch.b", 2)
    client.flush()


def dogstatsd_expected(origin: dict[str, str]) -> list[dict[str, Any]]:
    tags = {"env": "prod", "role": ["web", "db"], "canary": None}
    prod = {"env": "prod"}
    metrics: list[dict[str, Any]] = [
        {"metric": "page.views", "value": 1, "type": "c", "tags": tags},
        {"metric": "req.size", "value": 3.5, "type": "h", "tags": prod},
        {"metric": "req.latency", "value": 0.25, "type": "d"},
        {"metric": "queue.depth", "value": 12, "type": "g"},
        {"metric": "queue.depth", "value": 10, "type": "g", "timestamp": 1_700_000_000},
        {"metric": "visitors", "value": "u-9", "type": "s"},
        {"metric": "db.query", "value": 7, "type": "ms"},
        {"metric": "batch.a", "value": 1, "type": "c"},
        {"metric": "batch.b", "value": -2, "type": "c"},
    ]
    event = {
        "title": "Man down! | web1",
        "text": "This server needs assistance.\nNow: café | ok",
        "timestamp": 1_700_000_000,
        "hostname": "web1",
        "aggregation_key": "k1",
        "priority": "low",
        "source_type": "my_apps",
        "alert_type": "error",
        "tags": prod,
    }
    check = {
        "name": "my.check",
        "status": 1,
        "timestamp": 1_700_000_001,
        "hostname": "web1",
        "tags": prod,
        "message": "disk at 91%\nm: /dev/sda1",
    }
    return [
        *({**m, **origin} for m in metrics),
        {"event": {**event, **origin}},
        {"service_check": {**check, **origin}},
    ]


def canonical(events: list[Any]) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in events)


@pytest.mark.usefixtures("clean_dd_env")
def test_dogstatsd_metrics_events_and_service_checks_over_udp_and_unix(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    ingest = serve(daemons, pubsub, sockdir)
    tags = ["env:prod", "role:web", "role:db", "canary"]
    over_udp = dogstatsd_client("127.0.0.1", ingest.port)
    over_unix = dogstatsd_unix_client(str(ingest.sock))
    origin: dict[str, str] = {}
    for client in (over_udp, over_unix):
        try:
            dogstatsd_lines(client, tags)
        finally:
            client.close_socket()
        # Origin detection: in a container, every line carries |c:ID.
        container = client._container_id
        origin = {"container_id": container} if container else {}
    expected = dogstatsd_expected(origin)
    messages = pull(emulator, pubsub, 2 * len(expected))
    assert canonical([json.loads(m.data) for m in messages]) == canonical(expected * 2)
    samples = settled(ingest, published=2 * len(expected))
    for listener in (ingest.udp, ingest.unix):
        assert by_format(samples, listener) == only("statsd", len(expected))
        # One datagram a call, but the batch of two lines.
        datagrams = value(samples, "ingest_datagrams_received_total", listener=listener)
        assert datagrams == len(expected) - 1


@pytest.mark.usefixtures("clean_dd_env")
def test_dogstatsd_client_telemetry_is_published_as_samples_too(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """Telemetry is on by default: every 10 s at the most, the client adds a
    datagram of 11 counters about itself after a send. ingest is not an
    aggregator, so each is an event; a flush interval of 0 shows it now."""
    ingest = serve(daemons, pubsub, sockdir)
    client = DogStatsd(host="127.0.0.1", port=ingest.port, telemetry_min_flush_interval=0)
    # Due once time.time() is past the client's creation (strictly).
    wait_for(lambda: time.time() > client._last_flush_time, 1, "the clock to move")
    try:
        client.increment("page.views")
    finally:
        client.close_socket()
    messages = pull(emulator, pubsub, 12)
    events = [json.loads(m.data) for m in messages]
    names = sorted(e["metric"] for e in events)
    assert names[-1] == "page.views"
    assert len({n for n in names if n.startswith("datadog.dogstatsd.client.")}) == 11
    telemetry = next(e for e in events if e["metric"] == "datadog.dogstatsd.client.metrics")
    assert telemetry["value"] == 1
    assert telemetry["tags"]["client"] == "py"
    assert telemetry["tags"]["client_transport"] == "udp"
    samples = settled(ingest, published=12)
    assert by_format(samples, ingest.udp) == only("statsd", 12)


# ------------------------------------------------------------ formats off


def test_with_only_json_the_dialect_clients_are_format_disabled(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path
) -> None:
    """``--input-formats json``: each client's datagram is rejected as
    format_disabled and counted under its format, nothing published; JSON
    still goes through."""
    ingest = serve(daemons, pubsub, sockdir, "--input-formats", "json")
    gelf = gelf_handler("127.0.0.1", ingest.port)
    syslog = syslog_handler(ingest.addr)
    with python_logger(gelf) as log:
        log.warning("user %s signed up", "ann", extra={"user_id": 7})
    with python_logger(syslog) as log:
        log.warning("disk full")
    client = statsd_client("127.0.0.1", ingest.port)
    try:
        with client.pipeline() as pipe:  # one datagram, two lines: two events
            pipe.incr("a.hits")
            pipe.incr("a.misses")
    finally:
        client.close()
    send_udp(ingest.addr, b'{"still":"json"}')  # after them on the same socket
    (message,) = pull(emulator, pubsub, 1)
    assert message.data == b'{"still":"json"}'
    # The JSON datagram came last on the same socket: once it is published,
    # the others have been counted.
    samples = settled(ingest, published=1, rejected=None)
    assert rejects(samples) == {"format_disabled": 4}
    assert by_format(samples, ingest.udp) == {
        "json": 1,
        "gelf": 1,
        "syslog": 1,
        "statsd": 2,
        "unknown": 0,
    }


# ------------------------------------------------------------ access logs

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
PROCESS_TIMEOUT_S = 10


def server_command(name: str) -> str:
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[None]:
    """``command`` in the foreground until it listens on ``port``; stopped
    (SIGTERM, then SIGKILL) afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            return accepts_connections(port)

        wait_for(ready, PROCESS_TIMEOUT_S, f"{command[0]} to listen on {port}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(PROCESS_TIMEOUT_S)


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=PROCESS_TIMEOUT_S) as answer:
        return bytes(answer.read())


def test_nginx_access_log_is_published_as_json_through_syslog(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, tmp_path: Path
) -> None:
    """examples/nginx/ingest.conf inside a minimal nginx: each request is one
    event, its JSON as nginx wrote it (escape=json keeps quotes in a header
    valid), the syslog header as attributes."""
    nginx = server_command("nginx")
    ingest = serve(daemons, pubsub, sockdir)
    snippet = (REPO / "examples/nginx/ingest.conf").read_text()
    assert "127.0.0.1:5140" in snippet
    (tmp_path / "ingest.conf").write_text(
        snippet.replace("127.0.0.1:5140", f"127.0.0.1:{ingest.port}")
    )
    port = free_port()
    temp = "".join(
        f"{kind}_temp_path tmp; " for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(
        "daemon off; master_process off; pid nginx.pid; error_log error.log;\n"
        "events {}\n"
        f"http {{ {temp}include ingest.conf;\n"
        f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}\n'
    )
    command = [nginx, "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", "nginx.conf"]
    agent = 'probe "quoted" \\ agent'
    with running(command, port, tmp_path / "nginx.out"):
        assert http_get(port, "/orders/1?x=1", {"User-Agent": agent}) == b"ok"
        (message,) = pull(emulator, pubsub, 1)
    event = json.loads(message.data)
    assert {k: event[k] for k in ("method", "uri", "status", "bytes", "user_agent")} == {
        "method": "GET",
        "uri": "/orders/1?x=1",
        "status": 200,
        "bytes": 2,
        "user_agent": agent,
    }
    assert_recent_rfc3339(event["time"])
    facts = attributes(message)
    assert_recent_rfc3164(facts.pop("syslog_timestamp"))
    assert facts == {
        "syslog_severity": "info",
        "syslog_facility": "local7",
        "syslog_app": "nginx",
        "syslog_host": socket.gethostname().split(".")[0],
    }
    samples = settled(ingest, published=1)
    assert by_format(samples, ingest.udp) == only("syslog", 1)


class Answer200(http.server.BaseHTTPRequestHandler):
    """The proxied application: 200 and two bytes."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads HAProxy's log, not this one's."""


def test_haproxy_access_log_is_published_as_json_through_syslog(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, tmp_path: Path
) -> None:
    """examples/haproxy/haproxy.cfg proxying to a local app: each request is
    one event, the log-format's JSON, HAProxy's syslog header as attributes."""
    haproxy = server_command("haproxy")
    ingest = serve(daemons, pubsub, sockdir)
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer200)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port = free_port()
    config = (REPO / "examples/haproxy/haproxy.cfg").read_text()
    for shipped in ("127.0.0.1:5140", "127.0.0.1:8080", "127.0.0.1:8000"):
        assert shipped in config
    config = (
        config.replace("127.0.0.1:5140", f"127.0.0.1:{ingest.port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{app.server_address[1]}")
    )
    (tmp_path / "haproxy.cfg").write_text(config)
    try:
        with running([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], port, tmp_path / "out"):
            assert http_get(port, "/orders/1") == b"ok"
            (message,) = pull(emulator, pubsub, 1)
    finally:
        app.shutdown()
        app.server_close()
    event = json.loads(message.data)
    assert {k: v for k, v in event.items() if k not in ("time", "bytes", "ms_total")} == {
        "client": "127.0.0.1",
        "frontend": "web",
        "backend": "app",
        "server": "app1",
        "method": "GET",
        "status": 200,
    }
    assert isinstance(event["bytes"], int) and isinstance(event["ms_total"], int)
    facts = attributes(message)
    assert_recent_rfc3164(facts.pop("syslog_timestamp"))
    assert facts.pop("syslog_pid").isdigit()
    assert facts == {
        "syslog_severity": "info",
        "syslog_facility": "local0",
        "syslog_app": "haproxy",
    }
    samples = settled(ingest, published=1)
    assert by_format(samples, ingest.udp) == only("syslog", 1)


# ---------------------------------------------------------------- relays


def test_rsyslog_forwards_json_and_plain_text_with_its_header(
    daemons: Daemons, emulator: Emulator, pubsub: PubSubNames, sockdir: Path, tmp_path: Path
) -> None:
    """examples/rsyslog/60-ingest.conf in an rsyslogd that takes messages on a
    unix socket of its own (as it takes /dev/log): a JSON message is
    published byte for byte, a text one wrapped (--syslog-wrap-text), both
    with the RFC 3164 header rsyslog forwards, its host name included."""
    rsyslogd = server_command("rsyslogd")
    ingest = serve(daemons, pubsub, sockdir, "--syslog-wrap-text")
    forward = (REPO / "examples/rsyslog/60-ingest.conf").read_text()
    assert 'port="5140"' in forward
    log_socket = sockdir / "relay.sock"
    (tmp_path / "rsyslog.conf").write_text(
        f'global(workDirectory="{tmp_path}")\n'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{log_socket}")\n'
        + forward.replace('port="5140"', f'port="{ingest.port}"')
    )
    command = [rsyslogd, "-n", "-i", str(tmp_path / "pid"), "-f", str(tmp_path / "rsyslog.conf")]
    with open(tmp_path / "rsyslogd.out", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(log_socket.exists, PROCESS_TIMEOUT_S, "rsyslogd to create its socket")
        run_logger("-u", str(log_socket), "--socket-errors=on", "-t", "app", '{"k":1}')
        pid = run_logger("-u", str(log_socket), "--socket-errors=on", "-t", "cron", "-i", "done")
        got = {m.data: attributes(m) for m in pull(emulator, pubsub, 2)}
    finally:
        proc.terminate()
        proc.wait(PROCESS_TIMEOUT_S)
    assert set(got) == {b'{"k":1}', b'{"message":"done"}'}
    host = socket.gethostname().split(".")[0]
    for facts in got.values():
        assert_recent_rfc3164(facts.pop("syslog_timestamp"))
        assert facts.pop("syslog_host") == host
        assert facts.pop("syslog_severity") == "notice"
        assert facts.pop("syslog_facility") == "user"
    assert got == {
        b'{"k":1}': {"syslog_app": "app"},
        b'{"message":"done"}': {"syslog_app": "cron", "syslog_pid": str(pid)},
    }
    samples = settled(ingest, published=2)
    assert by_format(samples, ingest.udp) == only("syslog", 2)
