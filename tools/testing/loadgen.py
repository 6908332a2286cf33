"""Paced datagram sender for `make bench`: a FIXED offered rate, never blocking.

    python -m tools.testing.loadgen --udp 127.0.0.1:5140 --rate 150000 --seconds 5
    python -m tools.testing.loadgen --unix /run/ingest/ingest.sock --rate 150000 --seconds 5

Time is cut into slots (1 ms by default); at each wake-up the sender sends
every event due by now, so a late wake-up is caught up rather than lost, and
the schedule never drifts. Sends are non-blocking: EAGAIN (a full unix
receive queue, see net.unix.max_dgram_qlen) and ENOBUFS are counted as
sender-side failures, as a web worker would see them, and never retried.

Each event is one ~120-byte JSON object carrying a unique sequence number and
the slot's send time in microseconds (for latency): ``event_bytes`` is the
exact payload, so the verifier can check delivery byte for byte. With several
sender processes, sender ``index`` of ``count`` sends the sequence numbers
``first + index + count * k``.

``--keys N`` (the bench's metadata run) adds one field with N distinct values
to every event, ``"user":"u<seq % N>"``, last, so that an ordering key, an
attribute or a route can be read from it; without it the events are byte for
byte the plain ones, and ``parse_event`` reads both.

``--format`` picks the wire format, one event per datagram in each (the JSON
events are one per datagram too); ``event_bytes`` is what the daemon
publishes for it, ``datagram`` what is sent:

- ``json`` (default): the event above;
- ``gelf``: the GELF object a client such as graypy builds (``version``,
  ``host``, ``short_message``, ``timestamp`` = the send time in seconds with 6
  decimals, ``level``, ``_seq``, ``_logger``, ``_dur_ms``; 165-170 bytes),
  zlib-compressed (graypy's default, header ``78 9c``); the daemon publishes
  the inflated object, so the checks see it as they see a JSON event.
  ``zlib.compress`` costs 5-6 us an event (C or Python), as much as the
  daemon's whole path, so the C sender writes the stream itself: one
  *dynamic*-Huffman block of literals (code lengths from the template's byte
  frequencies, the block header made once), ~0.5 us. Inflating it costs the
  daemon what graypy's stream costs within ~0.1 us (a fixed-Huffman stream
  inflates ~1.1 us cheaper, so that shortcut would flatter GELF); the Python
  engine calls ``zlib.compress`` (~5 us, once glibc is told to keep freed
  memory: otherwise each call's 256 KiB of state is returned to the kernel
  and faulted back in, ~60 us);
- ``statsd``: the DogStatsD line ``bench.requests:<seq>|c|#env:prod,route:/api``
  (no newline), the sequence number carried as the counter's value; the
  daemon publishes ``{"metric":"bench.requests","value":<seq>,"type":"c",
  "tags":{"env":"prod","route":"/api"}}`` (ingest/receive/statsd.py). It carries no
  send time, so a statsd run has no latency.

Prints one JSON object with the counts on stdout when done.

The same sender in C (tools/native/loadgen.c: same events, schedule, arguments and
report) is built with the machine's C compiler on first use and run instead:
it costs ~2.8 us per event (mostly the kernel's loopback path, which is
charged to the sender) against ~4 us here, CPU the daemon under test gets
back on a 2-core machine. ``--engine python`` forces this one; without a C
compiler it is used anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import socket
import sys
import time
import zlib
from collections import Counter
from typing import Protocol

from tools.native import cbuild

C_SOURCE = cbuild.source("loadgen.c")

# A typical event (7-digit seq, 16-digit time) is 124 bytes.
EVENT_TEMPLATE = (
    b'{"seq":%d,"sent_us":%d,"host":"web-01","method":"GET",'
    b'"path":"/api/v1/orders","status":200,"dur_ms":12.5}'
)
SEQ_OFFSET = len(b'{"seq":')
# --keys N: the same event with "user":"u<seq % N>" before the closing brace.
KEYED_TEMPLATE = EVENT_TEMPLATE[:-1] + b',"user":"u%d"}'


FORMATS = ("json", "gelf", "statsd")
# --format gelf: the GELF object (seconds, microseconds of the send time, seq).
GELF_HEAD = (
    b'{"version":"1.1","host":"web-01","short_message":"GET /api/v1/orders 200","timestamp":'
)
GELF_SEQ = b',"level":6,"_seq":'
GELF_TEMPLATE = GELF_HEAD + b"%d.%06d" + GELF_SEQ + b'%d,"_logger":"app.access","_dur_ms":12.5}'
# --format statsd: the line sent, and the event ingest makes of it.
STATSD_LINE = b"bench.requests:%d|c|#env:prod,route:/api"
STATSD_HEAD = b'{"metric":"bench.requests","value":'
STATSD_EVENT = STATSD_HEAD + b'%d,"type":"c","tags":{"env":"prod","route":"/api"}}'


def user_of(seq: int, keys: int) -> str:
    """The ``user`` field of event ``seq`` sent with ``--keys keys``."""
    return f"u{seq % keys}"


def event_bytes(seq: int, sent_us: int | None, keys: int = 0, fmt: str = "json") -> bytes:
    """What the daemon publishes for event ``seq`` sent as ``fmt`` (with
    ``keys``: the ``--keys`` variant; ``sent_us`` is None for statsd)."""
    if fmt == "statsd":
        return STATSD_EVENT % seq
    assert sent_us is not None
    if fmt == "gelf":
        return GELF_TEMPLATE % (sent_us // 1_000_000, sent_us % 1_000_000, seq)
    if keys:
        return KEYED_TEMPLATE % (seq, sent_us, seq % keys)
    return EVENT_TEMPLATE % (seq, sent_us)


def datagram(seq: int, sent_us: int, keys: int = 0, fmt: str = "json") -> bytes:
    """What is sent for event ``seq`` as ``fmt`` (the Python engine's bytes;
    the C engine's GELF stream differs, and inflates to the same)."""
    if fmt == "statsd":
        return STATSD_LINE % seq
    if fmt == "gelf":
        return zlib.compress(event_bytes(seq, sent_us, fmt=fmt))
    return event_bytes(seq, sent_us, keys)


def parse_event(data: bytes, fmt: str = "json") -> tuple[int, int | None]:
    """(seq, sent_us) of an event made by ``event_bytes`` for ``fmt`` (sent_us
    None for statsd, which has no send time); ValueError otherwise. Only
    finds the numbers: comparing ``data`` with ``event_bytes`` checks the rest."""
    if fmt == "gelf":
        if not data.startswith(GELF_HEAD):
            raise ValueError("not a bench GELF event")
        dot = data.index(b".", len(GELF_HEAD))
        end = data.index(b",", dot)
        sent_us = int(data[len(GELF_HEAD) : dot]) * 1_000_000 + int(data[dot + 1 : end])
        start = end + len(GELF_SEQ)
        return int(data[start : data.index(b",", start)]), sent_us
    if fmt == "statsd":
        if not data.startswith(STATSD_HEAD):
            raise ValueError("not a bench statsd event")
        return int(data[len(STATSD_HEAD) : data.index(b",", len(STATSD_HEAD))]), None
    comma = data.index(b",", SEQ_OFFSET)
    seq = int(data[SEQ_OFFSET:comma])
    start = comma + len(b',"sent_us":')
    sent_us = int(data[start : data.index(b",", start)])
    return seq, sent_us


def keep_freed_memory() -> None:
    """glibc: keep freed memory for reuse (mallopt M_TRIM_THRESHOLD and
    M_MMAP_THRESHOLD, 64 MiB), so that zlib.compress's state is not unmapped
    and faulted back in on every call. A no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD


def connect(udp: str | None, unix: str | None) -> socket.socket:
    if unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(unix)
    else:
        assert udp is not None
        host, _, port = udp.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host.strip("[]"), int(port)))
    sock.setblocking(False)
    return sock


class Sender(Protocol):
    """What ``run`` sends through: a socket, or anything that takes one
    event's bytes a call (a publisher client paced by the same schedule)."""

    def send(self, data: bytes, /) -> object: ...


def run(
    sock: Sender,
    *,
    rate: float,
    total: int,
    first: int,
    step: int,
    slot_s: float,
    start_at: float,
    give_up_s: float,
    keys: int = 0,
    fmt: str = "json",
) -> dict[str, object]:
    """Send ``total`` events at ``rate``/s from ``start_at`` (time.monotonic)
    as ``fmt``; with ``keys``, each carries ``"user":"u<seq % keys>"``."""
    send = sock.send
    template = EVENT_TEMPLATE
    keyed = KEYED_TEMPLATE
    gelf_template, compress, statsd_line = GELF_TEMPLATE, zlib.compress, STATSD_LINE
    gelf, statsd = fmt == "gelf", fmt == "statsd"
    monotonic = time.monotonic
    attempted = ok = eagain = 0
    errors: Counter[str] = Counter()
    max_lag_s = 0.0
    seq = first
    delay = start_at - monotonic()
    if delay > 0:
        time.sleep(delay)
    t0 = monotonic()
    wall_t0 = time.time()
    cpu0 = time.process_time()
    deadline = t0 + give_up_s
    while attempted < total:
        now = monotonic()
        if now > deadline:
            break
        due = min(total, int((now - t0) * rate) + 1) - attempted
        if due <= 0:
            time.sleep(max(0.0, t0 + (attempted + 1) / rate - now))
            continue
        # How far behind schedule this slot starts (first due event's time).
        max_lag_s = max(max_lag_s, now - (t0 + attempted / rate))
        sent_us = int((wall_t0 + (now - t0)) * 1e6)
        seconds, micros = divmod(sent_us, 1_000_000)
        for _ in range(due):
            try:
                if gelf:
                    send(compress(gelf_template % (seconds, micros, seq)))
                elif statsd:
                    send(statsd_line % seq)
                elif keys:
                    send(keyed % (seq, sent_us, seq % keys))
                else:
                    send(template % (seq, sent_us))
                ok += 1
            except BlockingIOError:
                eagain += 1
            except OSError as exc:
                errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
            seq += step
        attempted += due
        sleep_s = t0 + attempted / rate + slot_s - monotonic()
        if sleep_s > 0:
            time.sleep(sleep_s)
    elapsed = monotonic() - t0
    return {
        "attempted": attempted,
        "ok": ok,
        "eagain": eagain,
        "errors": dict(errors),
        "elapsed_s": elapsed,
        "start_wall": wall_t0,
        "max_lag_ms": max_lag_s * 1000,
        "cpu_s": time.process_time() - cpu0,
        "completed": attempted == total,
    }


def c_sender() -> str | None:
    """Path of the compiled C sender (built once per source version), or None."""
    return cbuild.build(C_SOURCE, "loadgen")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--engine" in argv:
        at = argv.index("--engine")
        engine, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    else:
        engine = "c"
    binary = c_sender() if engine == "c" else None
    if binary is not None:
        os.execv(binary, [binary, *argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--udp", metavar="HOST:PORT")
    target.add_argument("--unix", metavar="PATH")
    parser.add_argument("--rate", type=float, required=True, help="events/s of this sender")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--first-seq", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="this sender's index")
    parser.add_argument("--count", type=int, default=1, help="number of senders")
    parser.add_argument("--slot-ms", type=float, default=1.0)
    parser.add_argument(
        "--keys",
        type=int,
        default=0,
        help='events also carry "user":"u<seq %% N>" (N distinct values; 0: plain events)',
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json events, zlib GELF messages or DogStatsD lines (see the top)",
    )
    parser.add_argument(
        "--start-at", type=float, default=0.0, help="time.monotonic() to start at (sync)"
    )
    args = parser.parse_args(argv)
    if args.keys < 0:
        parser.error("--keys: must be >= 0")
    if args.keys and args.format != "json":
        parser.error("--keys: json events only")
    if args.format == "gelf":
        keep_freed_memory()
    total = int(args.rate * args.seconds)
    sock = connect(args.udp, args.unix)
    try:
        result = run(
            sock,
            rate=args.rate,
            total=total,
            first=args.first_seq + args.index,
            step=args.count,
            slot_s=args.slot_ms / 1000,
            start_at=args.start_at or time.monotonic(),
            give_up_s=args.seconds * 2 + 5,
            keys=args.keys,
            fmt=args.format,
        )
    finally:
        sock.close()
    result["pid"] = os.getpid()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
