"""Soak: steady UDP load with the emulator frozen for a few seconds every 15 s.

    .venv/bin/python -m tools.dev.soak [--seconds 60] [--rate 50000] [--freeze 3]

Starts a private emulator and ``ingest serve`` (with a disk spool), sends
``--rate`` events/s (10 per datagram) for ``--seconds``, pulls everything back
concurrently, and prints: sent, delivered (distinct), duplicates, kernel
drops, the daemon's counters, and its RSS every 5 s. Exit 1 on any loss.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tools.testing.emulator import Emulator, free_port

INGEST = str(Path(sys.executable).with_name("ingest"))
PER_DATAGRAM = 10
TICK_S = 0.01


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                base = name.split("{")[0]
                out[base] = out.get(base, 0.0) + float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=50_000, help="events/s")
    parser.add_argument("--freeze", type=float, default=3.0, help="seconds frozen every 15 s")
    args = parser.parse_args()
    topic, sub = "projects/soak/topics/events", "projects/soak/subscriptions/events"
    udp, mport = free_port(socket.AF_INET, socket.SOCK_DGRAM), free_port()
    with Emulator() as emu, tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        emu.create_topic(topic)
        emu.create_subscription(sub, topic)
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": emu.host}
        log = open(os.path.join(tmp, "ingest.log"), "wb")  # noqa: SIM115
        daemon = subprocess.Popen(
            [INGEST, "serve", "--project", "soak", "--topic", "events",
             "--udp", f"127.0.0.1:{udp}", "--metrics", f"127.0.0.1:{mport}",
             "--publish-timeout", "2", "--spool-dir", os.path.join(tmp, "spool")],
            env=env, stderr=log, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while b"ready:" not in Path(log.name).read_bytes():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("ingest did not start; see " + log.name)
                time.sleep(0.05)
            seen = bytearray(int(args.rate * args.seconds) + 1)
            pulled = [0]
            stop_pull = threading.Event()

            def pull() -> None:
                while not stop_pull.is_set():
                    batch = emu.pull(sub, 1000)
                    for data in batch:
                        seen[json.loads(data)["i"]] = 1
                    pulled[0] += len(batch)
                    if not batch:
                        time.sleep(0.05)

            puller = threading.Thread(target=pull, daemon=True)
            puller.start()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            started = time.monotonic()
            sent = 0
            rss: list[tuple[float, float]] = []
            frozen_until = 0.0
            next_freeze = started + 15
            while (now := time.monotonic()) - started < args.seconds:
                due = int((now - started) * args.rate)
                while sent < due:
                    n = min(PER_DATAGRAM, len(seen) - 1 - sent)
                    sock.sendto(
                        b"\n".join(b'{"i":%d,"soak":true}' % i for i in range(sent, sent + n)),
                        ("127.0.0.1", udp),
                    )
                    sent += n
                if now >= next_freeze:
                    emu.signal(signal.SIGSTOP)
                    frozen_until, next_freeze = now + args.freeze, now + 15
                if frozen_until and now >= frozen_until:
                    emu.signal(signal.SIGCONT)
                    frozen_until = 0.0
                if not rss or now - started - rss[-1][0] >= 5:
                    rss.append((now - started, rss_mib(daemon.pid)))
                time.sleep(TICK_S)
            if frozen_until:
                emu.signal(signal.SIGCONT)
            deadline = time.monotonic() + 120
            while sum(seen[:sent]) < sent and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2)  # late duplicates
            stop_pull.set()
            puller.join(10)
            m = metrics(mport)
            delivered = sum(seen[:sent])
            print(f"sent {sent} events in {args.seconds:.0f} s ({args.rate}/s over UDP), "
                  f"emulator frozen {args.freeze:.0f} s every 15 s")  # fmt: skip
            print(f"delivered {delivered} distinct, {pulled[0] - delivered} duplicates, "
                  f"lost {sent - delivered}")  # fmt: skip
            print(
                "daemon: received {:.0f} published {:.0f} dropped {:.0f} spooled {:.0f} "
                "replayed {:.0f} retries {:.0f} kernel drops {:.0f}".format(
                    m.get("ingest_events_received_total", 0),
                    m.get("ingest_events_published_total", 0),
                    m.get("ingest_events_dropped_total", 0),
                    m.get("ingest_events_spooled_total", 0),
                    m.get("ingest_events_replayed_total", 0),
                    m.get("ingest_publish_retries_total", 0),
                    m.get("ingest_kernel_drops_total", 0),
                )
            )
            print("RSS MiB: " + ", ".join(f"{t:.0f}s={v:.1f}" for t, v in rss))
            return 0 if delivered == sent else 1
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
            log.close()


if __name__ == "__main__":
    sys.exit(main())
