"""The read callback on real sockets, without a daemon: counting per wake-up,
the wake-up budget, the queue's room checked before decoding, the final read
at shutdown and its bound."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

import pytest

from ingest.config import Listener
from ingest.pipeline.queue import EventQueue
from ingest.receive import kernel
from ingest.receive.sockets import bind_udp, bind_unix
from ingest.receive.sources import DatagramSource
from ingest.receive.wakeup import WAKEUP_MAX_BYTES, WAKEUP_MAX_DATAGRAMS, WAKEUP_MAX_EVENTS
from ingest.stats import Stats
from ingest.vocabulary import Drop


def udp_source(
    stats: Stats, *, max_events: int = 1_000_000, max_datagram_bytes: int = 1000
) -> tuple[DatagramSource, socket.socket, EventQueue]:
    listener = Listener("udp", host="127.0.0.1", port=0)
    sock = bind_udp(listener, 16 << 20)
    queue = EventQueue(max_events, 1 << 30, stats)
    source = DatagramSource(listener, sock, queue, stats, max_datagram_bytes)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(sock.getsockname())
    return source, sender, queue


def test_final_read_takes_everything_queued() -> None:
    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats)
        source.start(asyncio.get_running_loop())
        for i in range(1000):
            sender.send(b'{"i":%d}\n[1]' % i)
        source.read_until_empty()
        label = source.label
        assert stats.datagrams_received[label] == 1000
        assert stats.events_received[label] == 2000  # every line is an event
        assert stats.rejected["not_object"] == 1000
        assert queue.events == 1000
        source.close()
        sender.close()

    asyncio.run(main())


def test_final_read_is_bounded_in_time() -> None:
    """A sender flooding faster than we read must not hold shutdown hostage:
    past the bound, the read stops after the batch in hand."""

    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats)
        source.start(asyncio.get_running_loop())
        for i in range(3 * WAKEUP_MAX_DATAGRAMS):
            sender.send(b'{"i":%d}' % i)
        source.read_until_empty(max_s=0.0)
        assert queue.events == WAKEUP_MAX_DATAGRAMS  # one batch, then the deadline
        source.read_until_empty()
        assert queue.events == 3 * WAKEUP_MAX_DATAGRAMS
        source.close()
        sender.close()

    asyncio.run(main())


AMPLIFIED = b"{}\n" * 21_835  # the largest IPv4 UDP payload of the smallest events


def test_one_wake_up_is_bounded_in_events() -> None:
    """256 datagrams of 21,835 events each once made one wake-up of 5.6M
    events: the budget stops after the datagram that crosses it."""

    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats, max_datagram_bytes=65_535)
        source.start(asyncio.get_running_loop())
        for _ in range(8):
            sender.send(AMPLIFIED)
        assert source.read() is True  # stopped by the budget: more is waiting
        per_datagram = AMPLIFIED.count(b"\n")
        taken = stats.events_received[source.label]
        assert WAKEUP_MAX_EVENTS <= taken < WAKEUP_MAX_EVENTS + per_datagram
        source.read_until_empty()
        assert stats.events_received[source.label] == 8 * per_datagram
        assert queue.events == 8 * per_datagram
        source.close()
        sender.close()

    asyncio.run(main())


def test_one_wake_up_is_bounded_in_bytes() -> None:
    async def main() -> None:
        stats = Stats()
        source, sender, _ = udp_source(stats, max_datagram_bytes=65_535)
        source.start(asyncio.get_running_loop())
        big = b'{"pad":"' + b"x" * 60_000 + b'"}'
        for _ in range(40):
            sender.send(big)
        assert source.read() is True
        read = stats.datagrams_received[source.label] * len(big)
        assert WAKEUP_MAX_BYTES <= read < WAKEUP_MAX_BYTES + len(big)
        source.read_until_empty()
        assert stats.datagrams_received[source.label] == 40
        source.close()
        sender.close()

    asyncio.run(main())


def test_a_full_queue_is_checked_before_decoding() -> None:
    """Without a spool, datagrams that the queue cannot keep are counted as
    queue_full per non-blank line and never decoded: their bad lines are not
    counted rejected, and the identity holds."""

    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats, max_events=10)
        source.start(asyncio.get_running_loop())
        sender.send(b"{}\n" * 8)
        sender.send(b"{}\n" * 8)  # 2 fit, 6 do not (dropped by the queue's put)
        sender.send(b"{}\nnot json\n\n \n{}")  # no room left: not decoded
        source.read_until_empty()
        received = stats.events_received[source.label]
        assert received == 8 + 8 + 3
        assert queue.events == 10
        assert stats.dropped[Drop.QUEUE_FULL] == 6 + 3
        assert sum(stats.rejected.values()) == 0  # "not json" was never decoded
        assert received == queue.events + stats.dropped[Drop.QUEUE_FULL]
        source.close()
        sender.close()

    asyncio.run(main())


def test_denied_senders_are_counted_and_bounded_per_wake_up() -> None:
    """With --udp-allow, datagrams from elsewhere are never decoded; each is
    one event received and rejected (source_denied), and a burst of them ends
    a wake-up like any other budget."""

    async def main() -> None:
        stats = Stats()
        listener = Listener("udp", host="127.0.0.1", port=0)
        sock = bind_udp(listener, 16 << 20)
        queue = EventQueue(1_000_000, 1 << 30, stats)
        allow = (ipaddress.IPv4Network("10.0.0.0/8"),)
        source = DatagramSource(listener, sock, queue, stats, 1000, allow=allow)
        source.start(asyncio.get_running_loop())
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.connect(sock.getsockname())
        for i in range(3 * WAKEUP_MAX_DATAGRAMS):
            sender.send(b'{"i":%d}' % i)
        assert source.read() is True  # one burst's worth, then the loop's turn
        assert stats.rejected["source_denied"] == WAKEUP_MAX_DATAGRAMS
        source.read_until_empty()
        label = source.label
        assert stats.rejected["source_denied"] == 3 * WAKEUP_MAX_DATAGRAMS
        assert (
            stats.events_received[label]
            == stats.datagrams_received[label]
            == 3 * WAKEUP_MAX_DATAGRAMS
        )
        assert queue.events == 0
        source.close()
        sender.close()

    asyncio.run(main())


def test_a_paced_unix_source_leaves_its_senders_room_in_a_short_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unix socket holds net.unix.max_dgram_qlen datagrams (10 unless the
    host raised it) before a non-blocking sender gets EAGAIN: read pacing
    must not leave that many waiting. A sender at 2,000 datagrams a second
    (4 every 2 ms, on the same loop) never finds the queue full, and every
    datagram is read. Pacing sized for UDP's buffer (5 ms pauses) leaves 10
    or more there."""
    monkeypatch.setattr(kernel, "unix_max_dgram_qlen", lambda: 10)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        listener = Listener("unix", path=str(tmp_path / "paced.sock"))
        sock = bind_unix(listener, 0o600)
        queue = EventQueue(1_000_000, 1 << 30, stats)
        source = DatagramSource(listener, sock, queue, stats, 1000)
        source.start(loop)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.connect(listener.path)
        sender.setblocking(False)
        sent = full = 0
        for _ in range(250):  # 0.5 s
            for _ in range(4):
                try:
                    sender.send(b"{}")
                    sent += 1
                except BlockingIOError:
                    full += 1
            await asyncio.sleep(0.002)
        source.read_until_empty()  # the last pause's few
        source.close()
        sender.close()
        assert full == 0, f"{full} sends found the queue full"
        assert stats.datagrams_received[listener.label] == sent == 1000

    asyncio.run(main())
