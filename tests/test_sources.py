"""The drain callback on real sockets, without a daemon: counting per wake-up,
the final drain at shutdown and its bound."""

from __future__ import annotations

import asyncio
import socket

from ingest.config import Listener
from ingest.queue import EventQueue
from ingest.sources import DRAIN_BATCH, DatagramSource, bind_udp
from ingest.stats import Stats


def udp_source(stats: Stats) -> tuple[DatagramSource, socket.socket, EventQueue]:
    listener = Listener("udp", host="127.0.0.1", port=0)
    sock = bind_udp(listener, 4 << 20)
    queue = EventQueue(1_000_000, 1 << 30, stats)
    source = DatagramSource(listener, sock, queue, stats, 1000)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(sock.getsockname())
    return source, sender, queue


def test_final_drain_reads_everything_queued() -> None:
    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats)
        source.start(asyncio.get_running_loop())
        for i in range(1000):
            sender.send(b'{"i":%d}\n[1]' % i)
        source.drain_until_empty()
        label = source.label
        assert stats.datagrams_received[label] == 1000
        assert stats.events_received[label] == 2000  # every line is an event
        assert stats.rejected["not_object"] == 1000
        assert queue.events == 1000
        source.close()
        sender.close()

    asyncio.run(main())


def test_final_drain_is_bounded_in_time() -> None:
    """A sender flooding faster than we read must not hold shutdown hostage:
    past the bound, the drain stops after the batch in hand."""

    async def main() -> None:
        stats = Stats()
        source, sender, queue = udp_source(stats)
        source.start(asyncio.get_running_loop())
        for i in range(3 * DRAIN_BATCH):
            sender.send(b'{"i":%d}' % i)
        source.drain_until_empty(max_s=0.0)
        assert queue.events == DRAIN_BATCH  # one batch, then the deadline
        source.drain_until_empty()
        assert queue.events == 3 * DRAIN_BATCH
        source.close()
        sender.close()

    asyncio.run(main())
