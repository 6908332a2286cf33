"""Spool throughput: events/s appended and replayed, per fsync policy, and the
cost of framing each event alone versus one record per batch; and what
startup pays to count the ordering keys of a spool of messages
(``Spool.open(seen=...)``, lanes.SpooledLanes), at B and at 1 message a
record.

    .venv/bin/python -m tools.bench spool [--events N] [--batch B] [--dir DIR]
        [--open-mib M] [--keys K]

The directory defaults to a temporary one under /var/tmp (a real disk, not a
tmpfs, so fsync costs what it costs in production).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ingest.pipeline.lanes import SpooledLanes
from ingest.publish.pubsub import encode_data
from ingest.spool import FSYNC_POLICIES, Spool
from ingest.spool.records import KIND_MESSAGES
from ingest.stats import Stats

EVENT = b'{"ts":1718000000.123,"kind":"page_view","user":12345,"path":"/products/42","ms":12.5}'


def one_run(directory: str, policy: str, events: int, batch: int) -> tuple[float, float]:
    stats = Stats()
    spool = Spool.open(directory, 1 << 40, policy, stats)
    chunk = [EVENT] * batch
    started = time.perf_counter()
    for _ in range(events // batch):
        spool.append(chunk)
    appended = time.perf_counter() - started
    started = time.perf_counter()
    replayed = 0
    while (got := spool.peek()) is not None:
        replayed += len(got)
        spool.consume()
    replay = time.perf_counter() - started
    spool.close()
    assert replayed == events // batch * batch, (replayed, events)
    return replayed / appended, replayed / replay


def opening(directory: str, mib: int, keys: int, batch: int) -> tuple[int, float, float]:
    """Messages of ``keys`` keys, ``batch`` a record, up to ``mib`` MiB:
    how many, and the seconds Spool.open takes without and with counting
    their keys (the faster of two tries each)."""
    spool = Spool.open(directory, 1 << 40, "never", Stats())
    n = 0
    while spool.bytes < mib << 20:
        key = b"user-%d" % (n % keys)
        body = encode_data(EVENT) + b"\x2a" + bytes([len(key)]) + key  # as MessageBuilder makes it
        spool.append([body] * batch, KIND_MESSAGES)
        n += batch
    spool.close()
    times = {False: float("inf"), True: float("inf")}
    for counted in (False, True, False, True):
        spooled = SpooledLanes(("events",))
        started = time.perf_counter()
        spool = Spool.open(
            directory, 1 << 40, "never", Stats(), seen=spooled.seen if counted else None
        )
        times[counted] = min(times[counted], time.perf_counter() - started)
        spool.close()
    return n, times[False], times[True]


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.bench spool", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100, help="events per record")
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--open-mib", type=int, default=64, help="spool size for the open cost")
    parser.add_argument("--keys", type=int, default=10_000, help="ordering keys in it")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    opens: list[dict[str, Any]] = []
    print(f"{len(EVENT)}-byte events, {args.events} per run, directory under {args.dir}")
    print(f"{'policy':8} {'events/record':>13} {'append ev/s':>12} {'replay ev/s':>12}")
    for policy in FSYNC_POLICIES:
        for batch in (args.batch, 1):
            count = args.events if batch > 1 or policy != "always" else args.events // 20
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-spool-") as directory:
                append, replay = one_run(directory, policy, count, batch)
            print(f"{policy:8} {batch:>13} {append:>12,.0f} {replay:>12,.0f}")
            rows.append(
                {
                    "fsync": policy,
                    "events_per_record": batch,
                    "append_events_per_s": append,
                    "replay_events_per_s": replay,
                }
            )
    print(f"open: {args.open_mib} MiB of messages, {args.keys} ordering keys")
    print(f"{'events/record':>13} {'records':>9} {'open s':>7} {'counting keys s':>16}")
    for batch in (args.batch, 1):
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-spool-") as directory:
            n, plain, counted = opening(directory, args.open_mib, args.keys, batch)
        print(f"{batch:>13} {n // batch:>9,} {plain:>7.2f} {counted:>16.2f}")
        opens.append(
            {
                "events_per_record": batch,
                "records": n // batch,
                "open_s": plain,
                "counting_keys_s": counted,
            }
        )
    return {
        "event_bytes": len(EVENT),
        "events": args.events,
        "open_mib": args.open_mib,
        "open_keys": args.keys,
        "rows": rows,
        "open": opens,
    }
