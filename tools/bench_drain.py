"""Micro-benchmark of the UDP drain hot path: µs per event for DatagramSource.drain
over 4000 datagrams already queued in the kernel, with and without --udp-allow.

    .venv/bin/python -m tools.bench_drain [--runs 31]

Not a test (speed never is): it prints medians for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import socket
import statistics
import time

from ingest.config import Listener
from ingest.queue import EventQueue
from ingest.sources import DatagramSource
from ingest.stats import Stats

DATAGRAMS = 4000
PAYLOAD = b'{"event":"signup","user":42,"path":"/api/v1/users","ms":12.5,"ok":true}'


def one_run(allow: tuple[ipaddress.IPv4Network, ...] | None) -> float:
    """Seconds per event for draining DATAGRAMS queued datagrams."""
    loop = asyncio.new_event_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    stats = Stats()
    queue = EventQueue(10 * DATAGRAMS, 1 << 30, stats)
    listener = Listener("udp", host="127.0.0.1", port=rx.getsockname()[1])
    kwargs = {}
    if allow is not None:
        kwargs["allow"] = allow
    source = DatagramSource(listener, rx, queue, stats, 65535, **kwargs)  # type: ignore[arg-type]
    source._loop = loop  # what start() sets, without registering a reader
    for _ in range(DATAGRAMS):
        tx.send(PAYLOAD)
    start = time.perf_counter()
    while source.drain():
        pass
    total = stats.datagrams_received[listener.label]
    elapsed = time.perf_counter() - start
    assert total == DATAGRAMS, f"kernel dropped datagrams: got {total}"
    assert stats.events_received[listener.label] == DATAGRAMS
    tx.close()
    rx.close()
    loop.close()
    return elapsed / DATAGRAMS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    variants: list[tuple[str, tuple[ipaddress.IPv4Network, ...] | None]] = [("no allow-list", None)]
    if "allow" in inspect.signature(DatagramSource).parameters:
        variants += [
            ("allow-list (1 CIDR, sender allowed)", (ipaddress.IPv4Network("127.0.0.0/8"),)),
            (
                "allow-list (8 CIDRs, sender allowed by the last)",
                (
                    *(ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(7)),
                    ipaddress.IPv4Network("127.0.0.1/32"),
                ),
            ),
        ]
    for name, allow in variants:
        one_run(allow)  # warm-up
        samples = [one_run(allow) for _ in range(args.runs)]
        print(
            f"{name:50s} median {statistics.median(samples) * 1e6:.3f} µs/event "
            f"(min {min(samples) * 1e6:.3f}, {args.runs} runs x {DATAGRAMS} datagrams)"
        )


if __name__ == "__main__":
    main()
