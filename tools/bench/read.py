"""Micro-benchmark of the UDP read loop, the hot path: µs per event for
DatagramSource.read over 4000 datagrams already queued in the kernel, with and without --udp-allow,
and with the dialects every listener has by default (--input-formats): JSON
datagrams through them (the price of recognition: one byte compare), and
GELF (zlib), syslog and statsd datagrams.

    .venv/bin/python -m tools.bench read [--runs 31]

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
import zlib
from collections.abc import Sequence
from typing import Any

from ingest.config import INPUT_FORMATS, Listener
from ingest.pipeline.queue import EventQueue
from ingest.receive.codec import decode_datagram
from ingest.receive.dialects import Dialects
from ingest.receive.gelf import Reassembler
from ingest.receive.sources import DatagramSource
from ingest.stats import Stats

DATAGRAMS = 4000
PAYLOAD = b'{"event":"signup","user":42,"path":"/api/v1/users","ms":12.5,"ok":true}'


GELF_RECORD = (
    b'{"version":"1.1","host":"web-1","short_message":"signup","timestamp":1700000000.5,'
    b'"level":6,"_user":42,"_path":"/api/v1/users","_ms":12.5}'
)
PAYLOADS = {
    "json": PAYLOAD,
    "gelf": zlib.compress(GELF_RECORD),
    "syslog": b"<14>" + PAYLOAD + b"\x00",
    "statsd": b"api.users.signup:1|c|#env:prod,route:/api/v1/users",
}


def one_run(allow: tuple[ipaddress.IPv4Network, ...] | None, fmt: str | None = None) -> float:
    """Seconds per event for reading DATAGRAMS queued datagrams; ``fmt``:
    with the default dialects attached, datagrams of that format."""
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
    kwargs: dict[str, Any] = {}
    if allow is not None:
        kwargs["allow"] = allow
    if fmt is not None:
        kwargs["dialects"] = Dialects(
            listener.label,
            frozenset(INPUT_FORMATS),
            decode_datagram,
            stats,
            Reassembler(1 << 20, 1 << 20),
            max_event_bytes=1 << 20,
        )
    source = DatagramSource(listener, rx, queue, stats, 65535, **kwargs)
    source._loop = loop  # what start() sets, without registering a reader
    payload = PAYLOADS[fmt or "json"]
    for _ in range(DATAGRAMS):
        tx.send(payload)
    start = time.perf_counter()
    while source.read():
        pass
    total = stats.datagrams_received[listener.label]
    elapsed = time.perf_counter() - start
    assert total == DATAGRAMS, f"kernel dropped datagrams: got {total}"
    assert stats.events_received[listener.label] == DATAGRAMS
    tx.close()
    rx.close()
    loop.close()
    return elapsed / DATAGRAMS


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench read", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
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
    runs: list[tuple[str, tuple[ipaddress.IPv4Network, ...] | None, str | None]] = [
        (name, allow, None) for name, allow in variants
    ]
    if "dialects" in inspect.signature(DatagramSource).parameters:
        runs += [(f"default formats, {fmt} datagrams", None, fmt) for fmt in PAYLOADS]
    for name, allow, fmt in runs:
        one_run(allow, fmt)  # warm-up
        samples = [one_run(allow, fmt) for _ in range(args.runs)]
        print(
            f"{name:50s} median {statistics.median(samples) * 1e6:.3f} µs/event "
            f"(min {min(samples) * 1e6:.3f}, {args.runs} runs x {DATAGRAMS} datagrams)"
        )
        rows.append(
            {
                "variant": name,
                "median_us_per_event": statistics.median(samples) * 1e6,
                "min_us_per_event": min(samples) * 1e6,
            }
        )
    return {"runs": args.runs, "datagrams": DATAGRAMS, "rows": rows}
