"""``ingest tap``: the hub's sampling, GET /tap on a real HttpServer, the CLI.

The HTTP tests run the server on its own event loop in a thread, so the test
thread can be the client (raw sockets, http.client, or the CLI as a
subprocess); everything the hub does is called on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from ingest.observe import httpd
from ingest.observe.daemon_url import base_url
from ingest.observe.health import Verdict
from ingest.observe.httpd import HttpServer
from ingest.observe.tap import (
    BURST,
    MAX_BUFFER_RECORDS,
    MAX_TAPS,
    RATE_PER_S,
    Tap,
    TapFilter,
    TapHub,
    parse_query,
    run_tap,
)
from tests.helpers import INGEST, PubSubNames, closed_tcp_port, wait_for
from tests.scrape import HalfHeads, start, timed_get
from tools.testing.daemon import Daemons
from tools.testing.emulator import free_port

T = TypeVar("T")
TIMEOUT_S = 5.0
UDP = "udp:127.0.0.1:8125"
UNIX = "unix:/run/ingest/ingest.sock"


def record(n: int = 0, outcome: str = "accepted", listener: str = UDP) -> dict[str, object]:
    """A record as the sources build it, keys in their order."""
    return {
        "time": 1700000000.25 + n,
        "listener": listener,
        "sender": "127.0.0.1:5555",
        "format": "json",
        "outcome": outcome,
        "reason": "invalid_json" if outcome == "rejected" else None,
        "events": 1,
        "accepted": int(outcome == "accepted"),
        "rejected": {"invalid_json": 1} if outcome == "rejected" else {},
        "text": f"event {n}",
        "truncated": False,
    }


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """make_record that counts its calls."""

    def __init__(self, n: int = 0) -> None:
        self.count = 0
        self.n = n

    def __call__(self) -> dict[str, object]:
        self.count += 1
        return record(self.n)


def lines(tap: Tap) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in tap.take()]


# --- the hub ---


def test_offer_reaches_only_the_taps_whose_filter_matches() -> None:
    hub = TapHub()
    everything = hub.open(TapFilter())
    rejected = hub.open(TapFilter(outcomes=frozenset({"rejected", "dropped"})))
    unix = hub.open(TapFilter(listeners=frozenset({UNIX})))
    gelf = hub.open(TapFilter(formats=frozenset({"gelf"})))
    assert everything and rejected and unix and gelf
    calls = Calls()
    hub.offer(UDP, "json", "accepted", calls)
    hub.offer(UDP, "json", "rejected", calls)
    hub.offer(UNIX, "json", "accepted", calls)
    hub.offer(UDP, "gelf", "dropped", calls)
    assert calls.count == 4  # once per offer, however many taps take it
    assert len(lines(everything)) == 4
    assert len(lines(rejected)) == 2
    assert len(lines(unix)) == 1
    assert len(lines(gelf)) == 1


def test_the_record_is_serialised_once_in_its_key_order_for_every_tap() -> None:
    hub = TapHub()
    taps = [hub.open(TapFilter()) for _ in range(2)]
    hub.offer(UDP, "json", "rejected", lambda: record(7, "rejected"))
    expected = orjson.dumps(record(7, "rejected")) + b"\n"
    for tap in taps:
        assert tap is not None
        assert tap.take() == [expected]
    assert list(orjson.loads(expected)) == list(record())


def test_make_record_is_not_called_when_nothing_matches_or_no_token() -> None:
    hub = TapHub(burst=2, rate_per_s=1.0, clock=Clock())
    calls = Calls()
    hub.offer(UDP, "json", "accepted", calls)  # no tap at all
    tap = hub.open(TapFilter(outcomes=frozenset({"rejected"}), formats=frozenset({"json"})))
    assert tap is not None
    hub.offer(UDP, "json", "accepted", calls)  # outcome
    hub.offer(UDP, "statsd", "rejected", calls)  # format
    assert calls.count == 0
    assert tap.skipped == 0  # not wanted is not skipped
    for _ in range(5):
        hub.offer(UDP, "json", "rejected", calls)
    assert calls.count == 2  # the burst; no token for the other 3
    assert tap.skipped == 3


def test_rate_is_bounded_by_burst_plus_rate_times_elapsed() -> None:
    """10,000 offers over 10 s of a fake clock, the buffer emptied as it
    fills: at most BURST + RATE_PER_S * 10 records, and the rest counted."""
    clock = Clock()
    hub = TapHub(clock=clock)
    tap = hub.open(TapFilter())
    assert tap is not None
    calls = Calls()
    shown = 0
    for _ in range(10_000):
        hub.offer(UDP, "json", "accepted", calls)
        shown += len(tap.take())
        clock.now += 0.001
    assert BURST + RATE_PER_S * 9 <= shown <= BURST + RATE_PER_S * 10
    assert calls.count == shown
    assert tap.skipped == 10_000 - shown


def test_an_idle_tap_never_bursts_more_than_burst() -> None:
    clock = Clock()
    hub = TapHub(clock=clock)
    tap = hub.open(TapFilter())
    assert tap is not None
    clock.now += 3600  # an hour of nothing: still one burst's worth
    for _ in range(3 * BURST):
        hub.offer(UDP, "json", "accepted", Calls())
    assert len(tap.take()) == BURST


def test_a_tap_nobody_reads_holds_at_most_its_buffer() -> None:
    clock = Clock()
    hub = TapHub(clock=clock, max_bytes=1 << 30)
    tap = hub.open(TapFilter())
    assert tap is not None
    for _ in range(3 * MAX_BUFFER_RECORDS):
        hub.offer(UDP, "json", "accepted", Calls())
        clock.now += 1.0  # tokens aplenty: only the buffer bounds it
    assert len(tap.lines) == MAX_BUFFER_RECORDS
    assert tap.skipped == 2 * MAX_BUFFER_RECORDS


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    clock = Clock()
    hub = TapHub(clock=clock, max_bytes=10_000)
    tap = hub.open(TapFilter())
    assert tap is not None
    big = record() | {"text": "x" * 999}
    for _ in range(100):
        hub.offer(UDP, "json", "accepted", lambda: big)
        clock.now += 1.0
    assert 10_000 <= tap.buffered_bytes <= 10_000 + len(orjson.dumps(big)) + 1
    assert tap.skipped == 100 - len(tap.lines)


def test_limit_takes_n_records_and_then_nothing() -> None:
    hub = TapHub()
    tap = hub.open(TapFilter(limit=3))
    assert tap is not None
    calls = Calls()
    for _ in range(10):
        hub.offer(UDP, "json", "accepted", calls)
    assert calls.count == 3
    assert len(tap.take()) == 3
    assert tap.done
    assert tap.skipped == 0


def test_active_follows_the_open_taps_and_there_are_at_most_max_taps() -> None:
    hub = TapHub()
    assert not hub.active
    taps = [hub.open(TapFilter()) for _ in range(MAX_TAPS)]
    assert hub.active
    assert hub.open(TapFilter()) is None
    for tap in taps:
        assert tap is not None
        hub.close(tap)
    assert not hub.active
    assert hub.open(TapFilter()) is not None


def test_offer_never_raises() -> None:
    hub = TapHub()
    tap = hub.open(TapFilter())
    assert tap is not None

    def broken() -> dict[str, object]:
        raise RuntimeError("a bug in the source")

    hub.offer(UDP, "json", "accepted", broken)
    hub.offer(UDP, "json", "accepted", lambda: {"text": object()})  # not serialisable
    hub.offer(UDP, "json", "accepted", Calls())
    assert len(tap.take()) == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", TapFilter()),
        (b"outcome=rejected,dropped", TapFilter(outcomes=frozenset({"rejected", "dropped"}))),
        (b"outcome=rejected&outcome=accepted", TapFilter(outcomes=frozenset({"rejected", "accepted"}))),
        (b"listener=unix%3A%2Frun%2Fa%2Cb.sock", TapFilter(listeners=frozenset({"unix:/run/a,b.sock"}))),
        (b"format=gelf,syslog&limit=5", TapFilter(formats=frozenset({"gelf", "syslog"}), limit=5)),
    ],
)  # fmt: skip
def test_query_parameters(query: bytes, expected: TapFilter) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (b"outcome=lost", "outcome must be one of accepted, rejected, dropped, not 'lost'"),
        (b"format=xml", "format must be one of json, gelf, syslog, statsd, unknown, not 'xml'"),
        (b"limit=0", "limit must be a positive integer, not '0'"),
        (b"limit=-1", "limit must be a positive integer, not '-1'"),
        (b"limit=1&limit=2", "limit given twice"),
        (b"listener=", "listener must not be empty"),
        (b"sample=1", "unknown parameter 'sample' (outcome, listener, format, limit)"),
        (b"outcome", "bad query: bad query field: 'outcome'"),
        (b"listener=%ff", "bad query: not ASCII, or escapes that are not UTF-8"),
    ],
)
def test_bad_query_parameters(query: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_query(query)
    assert str(raised.value) == reason


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("127.0.0.1:9464", "http://127.0.0.1:9464"),
        ("http://127.0.0.1:9464/", "http://127.0.0.1:9464"),
        ("localhost:1/metrics", "http://localhost:1"),
        (" h:2/healthz ", "http://h:2"),
        ("https://h:3/tap/", "https://h:3"),
    ],
)
def test_top_and_tap_take_the_same_daemon_urls(url: str, base: str) -> None:
    """One function for both commands (daemon_url.py): what ``ingest top``
    accepts, ``ingest tap`` accepts, a pasted /tap URL included."""
    assert base_url(url) == base


# --- GET /tap on a real HttpServer ---


class Served:
    """An HttpServer with a TapHub, on its own loop in a thread."""

    def __init__(self, hub: TapHub | None, registry: CollectorRegistry | None = None) -> None:
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tap-server")
        self.server = HttpServer(
            "127.0.0.1", 0, registry or CollectorRegistry(), lambda: Verdict(True, ()), tap=hub
        )

    def run(self, make: Callable[[], Any], timeout_s: float = TIMEOUT_S) -> Any:
        """make() on the loop; a coroutine it returns is awaited there."""

        async def call() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return future.result(timeout_s)

    def offer(self, outcome: str, *numbers: int, listener: str = UDP, fmt: str = "json") -> None:
        hub = self.hub
        assert hub is not None

        def offers() -> None:
            for n in numbers:
                hub.offer(listener, fmt, outcome, lambda n=n: record(n, outcome, listener))

        self.run(offers)

    def active(self) -> bool:
        return bool(self.run(lambda: self.hub is not None and self.hub.active))

    def open_taps(self) -> int:
        return int(self.run(lambda: self.hub.open_taps if self.hub is not None else 0))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """serve(hub=TapHub(), tap=True, registry=None) -> a started Served
    (tap=False: no hub; registry: what /metrics shows, else nothing); every
    one is closed, and its thread joined, at teardown."""
    started: list[Served] = []

    def start(
        hub: TapHub | None = None, *, tap: bool = True, registry: CollectorRegistry | None = None
    ) -> Served:
        served = Served((hub or TapHub()) if tap else None, registry)
        served.thread.start()
        started.append(served)
        served.run(served.server.start)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.run(served.server.close, 3 * TIMEOUT_S)
            served.loop.call_soon_threadsafe(served.loop.stop)
            served.thread.join(TIMEOUT_S)
            served.loop.close()


def connect_tap(served: Served, query: str = "") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=TIMEOUT_S)
    conn.request("GET", "/tap" + ("?" + query if query else ""))
    return conn.getresponse()


def next_record(response: http.client.HTTPResponse) -> Any:
    """The stream's next line that is not a heartbeat, parsed."""
    while (line := response.readline()) == b"\n":
        pass
    return orjson.loads(line)


def server_connections(port: int) -> int:
    """Descriptors this process holds for TCP connections whose local port is
    ``port``: an in-process server's connections, its listener excepted (the
    test's own client sockets have other local ports)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            held += os.readlink(f"/proc/self/fd/{fd}") in inodes
    return held


def non_reader(port: int, request: bytes) -> socket.socket:
    """A client that sends ``request`` and never reads: a tiny receive
    buffer, so the server's answer stalls at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    sock.settimeout(TIMEOUT_S)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def small_send_buffers(served: Served) -> None:
    """The server's connections get a small SO_SNDBUF (accepted sockets
    inherit the listener's), so what a client does not read stays in the
    transport, not the kernel, after a few KiB rather than megabytes."""
    assert served.server._server is not None
    served.server._server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class Huge:
    """A collector whose /metrics is ``size`` bytes, far more than the
    socket buffers of a client that does not read."""

    def __init__(self, size: int) -> None:
        self.size = size

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("huge", "x" * self.size, value=1.0)


def open_tap(served: Served, query: str = "") -> http.client.HTTPResponse:
    """A tap the hub has counted (so offers reach it)."""
    before = served.open_taps()
    response = connect_tap(served, query)
    assert response.status == 200, response.read()
    wait_for(lambda: served.open_taps() > before, TIMEOUT_S, "the tap")
    return response


def test_a_tap_streams_the_matching_records_as_json_lines(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    response = open_tap(served, "outcome=rejected&listener=" + UNIX)
    assert response.getheader("Content-Type") == "application/x-ndjson"
    assert response.getheader("Connection") == "close"
    assert response.getheader("Content-Length") is None
    served.offer("accepted", 1, listener=UNIX)
    served.offer("rejected", 2, listener=UDP)
    served.offer("rejected", 3, 4, listener=UNIX)
    assert orjson.loads(response.readline()) == record(3, "rejected", UNIX)
    assert orjson.loads(response.readline()) == record(4, "rejected", UNIX)


def test_a_fifth_tap_is_refused_with_a_503(serve: Callable[..., Served]) -> None:
    served = serve()
    taps = [open_tap(served) for _ in range(MAX_TAPS)]
    refused = connect_tap(served)
    assert refused.status == 503
    assert refused.read() == b"4 taps open already; try again later\n"
    taps[0].close()
    wait_for(lambda: connect_tap(served).status == 200, TIMEOUT_S, "a slot to free")


@pytest.mark.parametrize(
    ("query", "line"),
    [
        ("outcome=lost", b"outcome must be one of accepted, rejected, dropped, not 'lost'\n"),
        ("limit=x", b"limit must be a positive integer, not 'x'\n"),
        ("follow=1", b"unknown parameter 'follow' (outcome, listener, format, limit)\n"),
    ],
)
def test_bad_parameters_are_a_400_with_one_line(
    serve: Callable[..., Served], query: str, line: bytes
) -> None:
    served = serve()
    response = connect_tap(served, query)
    assert response.status == 400
    assert response.read() == line
    assert not served.active()


def test_without_a_hub_there_is_no_tap(serve: Callable[..., Served]) -> None:
    served = serve(tap=False)
    response = connect_tap(served)
    assert response.status == 404
    assert response.read() == b"only /metrics and /healthz\n"
    with_hub = serve()
    response = connect_tap(with_hub, "x=1")
    assert response.status == 400
    conn = http.client.HTTPConnection("127.0.0.1", with_hub.server.port, timeout=TIMEOUT_S)
    conn.request("GET", "/nothing")
    assert conn.getresponse().read() == b"only /metrics, /healthz and /tap\n"


def test_a_client_that_leaves_frees_its_slot_with_no_records_flowing(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    response = open_tap(served)
    assert served.active()
    response.close()  # and no offer: only its EOF tells
    wait_for(lambda: not served.active(), TIMEOUT_S, "the hub to see the client gone")


def test_limit_closes_the_stream_after_n_records(serve: Callable[..., Served]) -> None:
    served = serve()
    response = open_tap(served, "limit=2")
    served.offer("accepted", 1, 2, 3)
    assert [orjson.loads(response.readline()) for _ in range(2)] == [record(1), record(2)]
    assert response.readline() == b""  # the server closed
    wait_for(lambda: not served.active(), TIMEOUT_S, "the tap to leave")


def test_close_ends_the_taps_promptly(serve: Callable[..., Served]) -> None:
    served = serve()
    responses = [open_tap(served) for _ in range(2)]
    served.offer("accepted", 1)
    started = time.monotonic()
    served.run(served.server.close)
    assert time.monotonic() - started < httpd.TAP_CLOSE_GRACE_S  # the clients read: no grace
    for response in responses:
        assert orjson.loads(response.readline()) == record(1)  # what it held is written
        assert response.readline() == b""
    assert not served.active()


def test_close_cuts_off_a_tap_whose_client_does_not_read(serve: Callable[..., Served]) -> None:
    hub = TapHub(rate_per_s=1e9, burst=10**9, max_records=10**6, max_bytes=1 << 30)
    served = serve(hub)
    stuck = socket.create_connection(("127.0.0.1", served.server.port), TIMEOUT_S)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.sendall(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(served.active, TIMEOUT_S, "the tap")
        # Far more than the socket buffers hold: the stream blocks in drain().
        big = record() | {"text": "x" * 10_000}
        served.run(lambda: [hub.offer(UDP, "json", "accepted", lambda: big) for _ in range(2000)])
        started = time.monotonic()
        served.run(served.server.close)
        assert time.monotonic() - started < httpd.TAP_CLOSE_GRACE_S + 1.0
        assert not served.active()
    finally:
        stuck.close()


def test_the_head_keeps_its_timeout_but_the_stream_does_not(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT_S", 0.2)
    served = serve(TapHub(rate_per_s=1e9, burst=10**9))  # every record shown
    with socket.create_connection(("127.0.0.1", served.server.port), TIMEOUT_S) as slow:
        slow.sendall(b"GET /tap HTTP/1.1\r\n")  # never finishes its head
        slow.settimeout(TIMEOUT_S)
        assert slow.recv(100) == b""  # cut off: the head's timeout
    response = open_tap(served)
    until = time.monotonic() + 3 * httpd.REQUEST_TIMEOUT_S
    n = 0
    while time.monotonic() < until:  # records keep flowing well past the timeout
        served.offer("accepted", n)
        assert orjson.loads(response.readline()) == record(n)
        n += 1
    assert served.active()


def test_skipped_records_are_reported_in_the_stream(serve: Callable[..., Served]) -> None:
    served = serve(TapHub(burst=2, rate_per_s=0.001))
    response = open_tap(served)
    served.offer("accepted", *range(10))
    got = [orjson.loads(response.readline()) for _ in range(3)]  # within ~1 s
    assert got == [record(0), record(1), {"skipped": 8}]


def test_a_quiet_stream_carries_heartbeats_and_records_after_them(
    serve: Callable[..., Served],
) -> None:
    served = serve(TapHub(heartbeat_s=0.1))
    response = open_tap(served, "outcome=rejected")
    assert [response.readline() for _ in range(3)] == [b"\n"] * 3  # nothing matches: heartbeats
    served.offer("rejected", 1)
    assert next_record(response) == record(1, "rejected")


def test_taps_and_half_heads_together_cannot_make_healthz_unanswerable(
    serve: Callable[..., Served],
) -> None:
    """MAX_TAPS taps stream while a renewed slowloris of MAX_CONNECTIONS
    half heads fills every other slot: /healthz is answered within 2 s, no
    tap is given up for the newcomers, and the server holds no more than
    MAX_CONNECTIONS descriptors."""
    served = serve()
    port = served.server.port
    taps = [open_tap(served) for _ in range(MAX_TAPS)]
    with HalfHeads(port, httpd.MAX_CONNECTIONS) as attack:
        wait_for(lambda: attack.renewed >= MAX_TAPS, TIMEOUT_S, "the attack to renew")
        for _ in range(3):
            assert timed_get(served.base + "/healthz", 2.0)[0] == 200
            # + a few: a connection given up closes on the loop's next round
            assert server_connections(port) <= httpd.MAX_CONNECTIONS + 4
        assert served.open_taps() == MAX_TAPS
        served.offer("rejected", 1)
        for tap in taps:
            assert next_record(tap) == record(1, "rejected")


def test_answers_their_clients_do_not_take_hold_neither_slots_nor_descriptors(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slot writing a 1 MiB /metrics to a client that never reads:
    /healthz still takes the oldest one's slot and is answered, and the
    others are aborted at their deadline -- not closed with unsent bytes,
    which would keep their descriptors for as long as their clients live."""
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT_S", 2.0)
    registry = CollectorRegistry()
    registry.register(Huge(1 << 20))
    served = serve(registry=registry)
    small_send_buffers(served)
    port = served.server.port
    stuck = [non_reader(port, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(8)]
    try:
        for sock in stuck:  # each answer has begun: every slot is in its answer
            assert sock.recv(1, socket.MSG_PEEK) == b"H"
        assert timed_get(served.base + "/healthz", 2.0)[0] == 200
        wait_for(
            lambda: server_connections(port) == 0,
            httpd.REQUEST_TIMEOUT_S + TIMEOUT_S,
            "the stalled answers to be aborted",
        )
    finally:
        for sock in stuck:
            sock.close()


def test_a_tap_whose_client_stops_reading_is_cut_off_and_its_slot_freed(
    serve: Callable[..., Served],
) -> None:
    hub = TapHub(rate_per_s=1e9, burst=10**9, max_records=10**6, max_bytes=1 << 30, stall_s=0.3)
    served = serve(hub)
    port = served.server.port
    with non_reader(port, b"GET /tap HTTP/1.1\r\n\r\n"):
        wait_for(served.active, TIMEOUT_S, "the tap")
        big = record() | {"text": "x" * 10_000}
        served.run(lambda: [hub.offer(UDP, "json", "accepted", lambda: big) for _ in range(2000)])
        wait_for(lambda: not served.active(), TIMEOUT_S, "the stalled tap to be cut off")
        wait_for(lambda: server_connections(port) == 0, TIMEOUT_S, "its descriptor")
        open_tap(served)  # its slot is free


def test_a_tap_that_ends_before_its_client_took_it_all_frees_its_descriptor(
    serve: Callable[..., Served],
) -> None:
    """The limit reached, the stream ends with bytes its client has not
    taken (fewer than the transport's high-water mark, so its last drain()
    returned): they get TAP_CLOSE_GRACE_S, then the connection is aborted."""
    hub = TapHub(rate_per_s=1e9, burst=10**9, max_records=10**6, max_bytes=1 << 30)
    served = serve(hub)
    small_send_buffers(served)
    port = served.server.port
    with non_reader(port, b"GET /tap?limit=20 HTTP/1.1\r\n\r\n"):
        wait_for(served.active, TIMEOUT_S, "the tap")
        big = record() | {"text": "x" * 2_000}  # 40 KB in all: more than the kernel takes
        served.run(lambda: [hub.offer(UDP, "json", "accepted", lambda: big) for _ in range(20)])
        wait_for(lambda: not served.active(), TIMEOUT_S, "the tap to end at its limit")
        wait_for(
            lambda: server_connections(port) == 0,
            httpd.TAP_CLOSE_GRACE_S + TIMEOUT_S,
            "its descriptor",
        )


# --- the CLI ---


def tap_command(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "tap", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_prints_the_rejected_records_and_exits_after_the_limit(
    serve: Callable[..., Served],
) -> None:
    clock = Clock()
    served = serve(TapHub(burst=2, clock=clock))
    proc = tap_command("--url", served.base + "/metrics", "--rejected", "--limit", "3")
    try:
        wait_for(served.active, TIMEOUT_S, "the CLI's tap")
        served.offer("accepted", 0)
        served.offer("rejected", 1, 2, 3, 4, 5)  # 2 in the burst, 3 skipped
        clock.now += 2 / RATE_PER_S  # tokens again (two: no float edge)
        served.offer("rejected", 6)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert [orjson.loads(line) for line in out.splitlines()] == [
        record(n, "rejected") for n in (1, 2, 6)
    ]
    assert err == "ingest tap: 3 datagrams not shown (tap rate limit)\n"
    assert proc.returncode == 0


def test_cli_exits_1_with_one_line_when_nothing_listens() -> None:
    port = closed_tcp_port()
    proc = tap_command("--url", f"127.0.0.1:{port}")
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 1
    assert out == ""
    assert err == f"ingest tap: cannot reach http://127.0.0.1:{port}/tap: connection refused\n"


def test_cli_exits_2_with_the_daemons_line_when_it_refuses(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    proc = tap_command("--url", served.base, "--format", "json,xml")
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert (proc.returncode, out) == (2, "")
    assert err == (
        f"ingest tap: {served.base}/tap: "
        "format must be one of json, gelf, syslog, statsd, unknown, not 'xml' (400)\n"
    )


def test_cli_exits_1_when_the_daemon_stops(serve: Callable[..., Served]) -> None:
    served = serve()
    proc = tap_command("--url", served.base, "--listener", UNIX)
    try:
        wait_for(served.active, TIMEOUT_S, "the CLI's tap")
        served.offer("accepted", 1, listener=UNIX)
        served.run(served.server.close)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert orjson.loads(out) == record(1, listener=UNIX)
    assert err == f"ingest tap: {served.base}/tap: the daemon closed the tap (stopped?)\n"
    assert proc.returncode == 1


def test_cli_ctrl_c_exits_0_quietly(serve: Callable[..., Served]) -> None:
    served = serve()
    proc = tap_command("--url", served.base)
    try:
        wait_for(served.active, TIMEOUT_S, "the CLI's tap")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (0, "", "")
    wait_for(lambda: not served.active(), TIMEOUT_S, "the CLI's tap to leave")


def test_cli_waits_out_a_quiet_daemon_and_says_in_one_line_when_it_freezes(
    serve: Callable[..., Served], capfd: pytest.CaptureFixture[str]
) -> None:
    """Heartbeats every 0.1 s keep a tap with nothing to show alive past its
    0.5 s of allowed silence; once the daemon's loop freezes (a blocking
    call on it, as a SIGSTOP would), the CLI says so in one line, exit 1."""
    served = serve(TapHub(heartbeat_s=0.1))
    url = served.base
    codes: list[int] = []
    client = threading.Thread(target=lambda: codes.append(run_tap(url, silent_s=0.5)))
    client.start()
    thawed = threading.Event()
    try:
        wait_for(served.active, TIMEOUT_S, "the CLI's tap")
        client.join(1.5)
        assert client.is_alive()  # three times its silence, kept by heartbeats
        served.loop.call_soon_threadsafe(thawed.wait, TIMEOUT_S)  # the daemon freezes
        client.join(TIMEOUT_S)
        assert codes == [1]
    finally:
        thawed.set()
        client.join(TIMEOUT_S)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == (
        f"ingest tap: {url}/tap: the daemon sent nothing for 0.5 s (frozen, or unreachable?)\n"
    )


# --- against a real daemon --------------------------------------------------------


def test_a_real_daemon_shows_what_arrives_and_why_it_was_rejected(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    """``ingest serve`` and ``ingest tap`` as users run them: a tap asking for
    rejected datagrams of UDP shows the bad ones with their sender, format and
    reason, and the good datagrams sent between them not at all."""
    udp_port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    daemon, base = start(
        daemons, pubsub, "--udp", f"127.0.0.1:{udp_port}", "--unix", str(sockdir / "in.sock")
    )
    tap = subprocess.Popen(
        [INGEST, "tap", "--url", base, "--rejected", "--limit", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(("127.0.0.1", 0))
        sender.connect(("127.0.0.1", udp_port))
        sender_port = sender.getsockname()[1]
        # The tap sees only what arrives after it connected: send until it
        # has shown three, each bad datagram between good ones.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sender.send(b'{"good":1}')
            sender.send(b"a.hits:one|c")  # statsd, with a value that is no number
            sender.send(b'{"good":2}')
            with contextlib.suppress(subprocess.TimeoutExpired):
                tap.wait(timeout=0.05)  # paced by the tap's exit: its limit reached
                break
        out, err = tap.communicate(timeout=10)
    finally:
        if tap.poll() is None:
            tap.kill()
        sender.close()
    assert tap.returncode == 0, err
    records = [orjson.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["listener"] == f"udp:127.0.0.1:{udp_port}"
        assert record["sender"] == f"127.0.0.1:{sender_port}"
        assert record["format"] == "statsd"
        assert record["outcome"] == "rejected"
        assert record["reason"] == "invalid_statsd"
        assert record["text"] == "a.hits:one|c"
    assert daemon.stop() == 0


def test_a_tap_shows_gelf_inflated_and_the_event_ingest_made_of_a_statsd_line(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    udp_port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    _, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{udp_port}")
    tap = subprocess.Popen(
        [INGEST, "tap", "--url", base, "--accepted", "--format", "gelf,statsd", "--limit", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    gelf = b'{"version":"1.1","host":"h","short_message":"hi"}'
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.connect(("127.0.0.1", udp_port))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sender.send(b'{"json":"not asked for"}')
            sender.send(zlib.compress(gelf))
            sender.send(b"a.hits:1|c|#env:prod")
            with contextlib.suppress(subprocess.TimeoutExpired):
                tap.wait(timeout=0.05)
                break
    out, err = tap.communicate(timeout=10)
    assert tap.returncode == 0, err
    first, second = (orjson.loads(line) for line in out.splitlines())
    assert (first["format"], first["outcome"], first["text"]) == ("gelf", "accepted", gelf.decode())
    assert "event" not in first  # what was published is the text itself
    assert (second["format"], second["text"]) == ("statsd", "a.hits:1|c|#env:prod")
    assert orjson.loads(second["event"]) == {
        "metric": "a.hits",
        "value": 1,
        "type": "c",
        "tags": {"env": "prod"},
    }


def test_a_tap_on_a_quiet_daemon_waits_for_a_rare_reject_and_notices_the_daemon_killed(
    daemons: Daemons, pubsub: PubSubNames
) -> None:
    """``ingest tap --rejected`` on a daemon that receives nothing stays for
    7 s (past the 5 s it used to give up after), then shows the first reject
    sent; SIGKILL the daemon and the tap says so in one line, exit 1."""
    udp_port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    daemon, base = start(daemons, pubsub, "--udp", f"127.0.0.1:{udp_port}")
    tap = subprocess.Popen(
        [INGEST, "tap", "--url", base, "--rejected"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            tap.wait(timeout=7.0)  # quiet: the tap stays
        assert tap.stdout is not None
        with (
            selectors.DefaultSelector() as selector,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            selector.register(tap.stdout, selectors.EVENT_READ)
            sender.connect(("127.0.0.1", udp_port))
            deadline = time.monotonic() + 10
            while not selector.select(0.1):  # a reject now and then, until it shows one
                assert time.monotonic() < deadline, "the tap showed no reject"
                sender.send(b"not json")
        shown = orjson.loads(tap.stdout.readline())
        assert (shown["outcome"], shown["reason"], shown["text"]) == (
            "rejected",
            "invalid_json",
            "not json",
        )
        daemon.kill()
        _, err = tap.communicate(timeout=TIMEOUT_S)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait(TIMEOUT_S)
    assert tap.returncode == 1
    assert err.decode() == f"ingest tap: {base}/tap: the daemon closed the tap (stopped?)\n"
