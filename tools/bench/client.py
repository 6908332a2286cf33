"""What one ``Emitter.emit`` costs the application, against the naive alternative.

    python -m tools.bench client [--events 50000]

For unix and UDP, a receiver process drains the socket (a blocking recv loop,
so the sender measures sends that succeed rather than EAGAIN drops) while this
process times every call with perf_counter_ns, minus the timer's own cost:

- ``Emitter.emit(dict)`` (orjson.dumps + send), ``Emitter.emit(bytes)``;
- ``naive``: a new socket per event (socket, connect, send, close), as a
  client that does not keep a connection would.

Prints median and p99 in µs per event, and how many events were sent or
dropped (a drop is cheaper than a send, so a run with many drops would
flatter the Emitter: the table shows them). No daemon or emulator is needed:
this measures the sender's side only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ingest.client import Emitter

EVENT: dict[str, Any] = {
    "event": "page_view",
    "path": "/checkout/confirm",
    "user": 123456,
    "ms": 12.5,
    "ok": True,
}
EVENT_BYTES = json.dumps(EVENT, separators=(",", ":")).encode()
WARMUP = 2000


def _receiver(kind: str, address: Any, ready: Any) -> None:
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if kind == "udp":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(address)
    ready.send(sock.getsockname())
    recv = sock.recv
    while True:
        if recv(65536) == b"stop":
            return


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def _measure(call: Callable[[], None], events: int, overhead_ns: int) -> tuple[float, float]:
    clock = time.perf_counter_ns
    for _ in range(WARMUP):
        call()
    samples = [0] * events
    for i in range(events):
        t0 = clock()
        call()
        samples[i] = clock() - t0
    samples.sort()
    median = max(samples[events // 2] - overhead_ns, 0) / 1000
    p99 = max(samples[int(events * 0.99)] - overhead_ns, 0) / 1000
    return median, p99


HOW = {
    "raw": "bare sock.send(bytes)",
    "dict": "Emitter.emit(dict)",
    "bytes": "Emitter.emit(bytes)",
    "naive": "socket per event",
}


def _raw_sender(kind: str, address: Any) -> Callable[[], None]:
    """The floor: a connected non-blocking send, no counting, no lock."""
    sock = socket.socket(proc_family(kind), socket.SOCK_DGRAM)
    sock.connect(address)
    sock.setblocking(False)
    send = sock.send

    def call() -> None:
        # Not contextlib.suppress: its enter/exit would cost more than the send.
        try:  # noqa: SIM105
            send(EVENT_BYTES)
        except BlockingIOError:
            pass

    return call


def _naive_sender(kind: str, address: Any) -> Callable[[], None]:
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET

    def send() -> None:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.send(EVENT_BYTES)

    return send


def bench(kind: str, events: int, overhead_ns: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        address: Any = os.path.join(tmp, "r.sock") if kind == "unix" else ("127.0.0.1", 0)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_receiver, args=(kind, address, child), daemon=True)
        proc.start()
        try:
            address = parent.recv()
            target = {"unix": address} if kind == "unix" else {"udp": f"{address[0]}:{address[1]}"}
            rows = []
            call: Callable[[], None]
            for label in ("raw", "dict", "bytes", "naive"):
                emitter = Emitter(**target)
                if label == "raw":
                    call = _raw_sender(kind, address)
                elif label == "dict":
                    call = lambda e=emitter: e.emit(EVENT)  # noqa: E731
                elif label == "bytes":
                    call = lambda e=emitter: e.emit(EVENT_BYTES)  # noqa: E731
                else:
                    call = _naive_sender(kind, address)
                median, p99 = _measure(call, events, overhead_ns)
                stats = emitter.stats()
                emitter.close()
                measured_emitter = label in ("dict", "bytes")
                rows.append(
                    {
                        "transport": kind,
                        "how": HOW[label],
                        "median_us": round(median, 2),
                        "p99_us": round(p99, 2),
                        "sent": stats["sent"] if measured_emitter else None,
                        "dropped": stats["dropped_by_reason"] if measured_emitter else None,
                    }
                )
            with socket.socket(proc_family(kind), socket.SOCK_DGRAM) as stop:
                stop.sendto(b"stop", address)
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return rows


def proc_family(kind: str) -> socket.AddressFamily:
    return socket.AF_UNIX if kind == "unix" else socket.AF_INET


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=50_000, help="timed events per row")
    args = parser.parse_args(argv)
    overhead = _timer_overhead_ns()
    rows = bench("unix", args.events, overhead) + bench("udp", args.events, overhead)
    print(f"emit cost per event, {args.events} events each (timer overhead {overhead} ns removed)")
    print(f"{'transport':<9} {'how':<22} {'median µs':>9} {'p99 µs':>8}  sent / dropped")
    for row in rows:
        tail = "" if row["sent"] is None else f"  {row['sent']} / {row['dropped'] or 0}"
        print(
            f"{row['transport']:<9} {row['how']:<22} {row['median_us']:>9.2f} "
            f"{row['p99_us']:>8.2f}{tail}"
        )
    return {"events": args.events, "timer_overhead_ns": overhead, "rows": rows}
