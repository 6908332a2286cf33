"""A bounded fuzz run against a live daemon: hostile datagrams over unix
(random bytes, deep nesting, huge numbers, invalid UTF-8, NUL bytes, 64 KiB
lines, floods of empty datagrams; GELF, syslog and statsd shapes: bombs,
broken and endless chunks, bad headers, huge lines). The daemon stays up and responsive, every
datagram is counted, and the events identity holds. Seeded: reproducible."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import PubSubNames, UnixSender, wait_for
from tests.scrape import get, scrape, start, total, unaccounted
from tools.testing.daemon import Daemons


def hostile(rng: random.Random) -> Iterator[bytes]:
    for _ in range(300):
        yield rng.randbytes(rng.randint(1, 2000))
    # Deep nesting, kept under 64 KiB so it is parsed (orjson's depth limit),
    # and once far beyond it (rejected whole as too_large).
    yield b"[" * 32_000 + b"]" * 32_000
    yield b"[" * 100_000 + b"]" * 100_000
    for depth in (10, 1000, 10_000):
        yield b"[" * depth + b"]" * depth
        yield b'{"a":' * depth + b"1" + b"}" * depth
        yield b"[" * depth  # unterminated
    yield b'{"n":' + b"9" * 60_000 + b"}"
    yield b'{"n":1e999999}'
    yield b'{"n":-' + b"1" * 5000 + b".5e-99999}"
    yield b'{"s":"\xff\xfe\xed"}'
    yield b'{"s":"\xed\xa0\x80"}'  # a UTF-8 encoded surrogate
    yield b'{"s":"a\x00b"}'
    yield b"\x00" * 1000
    yield b'{"a":1}\x00\n{"b":2}'
    yield b'{"big":"' + b"x" * (64 * 1024 - 10) + b'"}'  # a 64 KiB line: too large
    yield b'{"ok":"' + b"x" * 60_000 + b'"}'  # large but allowed
    yield b"\n" * 5000
    for _ in range(2000):
        yield b""
    for _ in range(200):
        line = bytes(rng.choice(b'{}[]":,0123456789.eE-+ \\nutrfals\x00\xff') for _ in range(50))
        yield b"\n".join([line, b'{"valid":true}', line])
    yield from dialects(rng)


def dialects(rng: random.Random) -> Iterator[bytes]:
    """The other formats' leading bytes with hostile bodies: each must be
    decoded or rejected, never crash a reader or leak a chunk forever."""
    magic = (b"x\x9c", b"x\xda", b"\x1f\x8b", b"\x1e\x0f", b"<13>", b"<191>1 ", b"a.b:")
    for _ in range(400):
        yield rng.choice(magic) + rng.randbytes(rng.randint(0, 300))
    yield zlib.compress(b"{" + b" " * (4 << 20) + b"}")  # a bomb: too_large
    yield zlib.compress(b'{"gelf":"ok"}')
    yield gzip.compress(b"[1,2,3]")  # inflates to a non-object
    for seq in range(130):  # 130 chunks claiming a count of 200: too many chunks
        yield b"\x1e\x0f" + b"A" * 8 + bytes((seq, 200)) + b"z"
    chunks = [b"\x1e\x0f" + b"B" * 8 + bytes((seq, 3)) + b'{"c":1}'[seq::3] for seq in range(3)]
    yield from [chunks[2], chunks[0], chunks[0], chunks[1]]  # out of order, a duplicate
    yield b"\x1e\x0f" + b"C" * 8 + bytes((0, 2)) + b"{"  # never completed
    yield b"<13>" + b"\xff" * 100  # syslog with a body that is not UTF-8
    yield b"<13>1 " + b"-" * 5000  # a header of nil values
    yield b"_e{999999999,1}:x|y"  # event lengths beyond the datagram
    yield b"_sc|" + b"|" * 1000
    yield b"a:" + b"1:" * 20_000 + b"1|h"  # 20,001 values on one line
    yield b"a:1|c|#" + b"k:v," * 10_000


def test_hostile_datagrams_are_counted_and_survived(
    daemons: Daemons, pubsub: PubSubNames, sockdir: Path
) -> None:
    sock = sockdir / "in.sock"
    daemon, base = start(daemons, pubsub, "--unix", str(sock))
    sent = 0
    with UnixSender(sock) as sender:
        for datagram in hostile(random.Random(4)):
            sender.send(datagram)
            sent += 1
            if sent % 500 == 0:
                assert get(base + "/healthz")[0] in (200, 503)  # it answers
    wait_for(
        lambda: total(scrape(base), "ingest_datagrams_received_total") == sent,
        20,
        "every datagram counted",
    )
    wait_for(
        lambda: (
            sum(
                total(scrape(base), name)
                for name in ("ingest_queue_events", "ingest_inflight_events")
            )
            == 0
        ),
        20,
        "queue and in-flight empty",
    )
    samples = scrape(base)
    assert unaccounted(samples) == 0
    assert total(samples, "ingest_events_rejected_total") > 300, samples
    assert total(samples, "ingest_events_published_total") >= 200  # the valid lines
    assert get(base + "/healthz")[0] == 200
    assert daemon.running()
    assert daemon.stop() == 0
    # Chunked messages still incomplete at the stop ended as events too.
    counts = daemon.stopped_counts()
    assert counts["received"] == counts["published"] + counts["rejected"] + counts["dropped"]
    assert counts["received"] > total(samples, "ingest_events_received_total")
