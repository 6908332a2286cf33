"""What watching costs: daemon CPU per /metrics scrape, against its CPU at load.

The daemon runs with Pub/Sub unreachable (it starts anyway and keeps what it
receives), after a short mixed load has created every label series, so a
scrape renders what a busy daemon's would. Its CPU is read from /proc before
and after N back-to-back scrapes, minus its idle CPU over the same time.

The comparison: one scrape every 15 s (Prometheus' default interval) and two a
second (`ingest top`), against the daemon's CPU at 100,000 events/s =
100,000 x its CPU per event (`make bench` measures that; pass --us-per-event).
Target: under 1 %.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from tools.testing.daemon import DaemonProcess
from tools.testing.emulator import free_port
from tools.testing.procfs import process_cpu_s

SCRAPES = 400
IDLE_S = 4.0
TARGET_PCT = 1.0


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench scrape", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--us-per-event", type=float, default=4.5, help="daemon CPU per event")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        port, metrics_port = free_port(socket.AF_INET, socket.SOCK_DGRAM), free_port()
        unix_path = os.path.join(tmp, "in.sock")
        closed = free_port()  # nothing listens: Pub/Sub unreachable
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        daemon = DaemonProcess(
            ["--project", "bench", "--topic", "scrape", "--udp", f"127.0.0.1:{port}",
             "--unix", unix_path, "--metrics", f"127.0.0.1:{metrics_port}"],
            os.path.join(tmp, "serve.log"), emulator_host=f"127.0.0.1:{closed}", metrics_url=url,
        )  # fmt: skip
        try:
            daemon.wait_ready(30)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(2000):
                    sock.sendto(b'{"i": %d}\n[1]\nnot json' % i, ("127.0.0.1", port))
            body = urllib.request.urlopen(url, timeout=5).read()
            idle_before = process_cpu_s(daemon.pid)
            time.sleep(IDLE_S)
            idle_rate = (process_cpu_s(daemon.pid) - idle_before) / IDLE_S
            start_cpu, start = process_cpu_s(daemon.pid), time.monotonic()
            for _ in range(SCRAPES):
                urllib.request.urlopen(url, timeout=5).read()
            elapsed = time.monotonic() - start
            cpu = process_cpu_s(daemon.pid) - start_cpu - idle_rate * elapsed
        finally:
            daemon.shut_down()
    per_scrape_ms = cpu / SCRAPES * 1000
    load_cpu_s_per_s = 100_000 * args.us_per_event / 1e6
    lines = len(body.splitlines())
    print(f"/metrics body: {len(body):,} bytes, {lines:,} lines")
    print(
        f"daemon CPU per scrape: {per_scrape_ms:.2f} ms (idle daemon: {idle_rate * 1000:.2f} ms/s)"
    )
    print(
        f"daemon CPU at 100,000 events/s: {load_cpu_s_per_s:.2f} cores ({args.us_per_event} us/event)"
    )
    shares = {}
    for label, per_s in (("Prometheus, every 15 s", 1 / 15), ("ingest top, 2 per s", 2.0)):
        pct = per_scrape_ms / 1000 * per_s / load_cpu_s_per_s * 100
        verdict = "PASS" if pct < TARGET_PCT else "MISS"
        print(f"{verdict} scrape cost, {label}: {pct:.3f} % of the daemon's CPU at 100k events/s")
        shares[label] = {"pct_of_daemon_cpu": pct, "meets_target": pct < TARGET_PCT}
    return {
        "body_bytes": len(body),
        "body_lines": lines,
        "cpu_ms_per_scrape": per_scrape_ms,
        "idle_cpu_ms_per_s": idle_rate * 1000,
        "us_per_event_assumed": args.us_per_event,
        "share_at_100k_events_per_s": shares,
    }
