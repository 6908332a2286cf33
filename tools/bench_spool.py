"""Spool throughput: events/s appended and replayed, per fsync policy, and the
cost of framing each event alone versus one record per batch.

    .venv/bin/python -m tools.bench_spool [--events N] [--batch B] [--dir DIR]

The directory defaults to a temporary one under /var/tmp (a real disk, not a
tmpfs, so fsync costs what it costs in production).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ingest.spool import FSYNC_POLICIES, Spool
from ingest.stats import Stats

EVENT = b'{"ts":1718000000.123,"kind":"page_view","user":12345,"path":"/products/42","ms":12.5}'


def run(directory: str, policy: str, events: int, batch: int) -> tuple[float, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100, help="events per record")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    print(f"{len(EVENT)}-byte events, {args.events} per run, directory under {args.dir}")
    print(f"{'policy':8} {'events/record':>13} {'append ev/s':>12} {'replay ev/s':>12}")
    for policy in FSYNC_POLICIES:
        for batch in (args.batch, 1):
            count = args.events if batch > 1 or policy != "always" else args.events // 20
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-spool-") as directory:
                append, replay = run(directory, policy, count, batch)
            print(f"{policy:8} {batch:>13} {append:>12,.0f} {replay:>12,.0f}")


if __name__ == "__main__":
    main()
