"""`make bench`: what ``--publish-compression gzip`` saves on the wire and costs in CPU.

    .venv/bin/python -m tools.bench compression [--events 100000] [--rate 10000]

For each batch size (``--batch-messages``) and each setting (none, gzip), a
fresh ``ingest serve --unix ...`` publishes to the real emulator through
tools.testing.tcpproxy, whose counters give the bytes a link would carry (TCP payload:
HTTP/2 frames, headers, pings; TLS, IP and TCP add a few percent to both
settings alike). The same ``--events`` typical web events (``web_events``:
100-300 bytes of JSON, one per datagram) are sent at a fixed ``--rate``; a
long linger lets every batch fill to its size. Measured between ready and
drained, so startup is not counted:

- bytes up per event: daemon -> Pub/Sub, what a link billed by the byte bills;
- bytes down per event: the answers (message IDs), never compressed;
- CPU per event: the daemon's utime + stime (tools.testing.procfs) over the events.

Every run is verified: the subscription is pulled to the end and must hold
exactly the events sent, byte for byte. The emulator is started unless
PUBSUB_EMULATOR_HOST names one on this host. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from ingest.publish.pubsub import PUBLISH_COMPRESSIONS
from tools.testing.daemon import DaemonProcess
from tools.testing.emulator import Emulator, free_port
from tools.testing.procfs import process_cpu_s
from tools.testing.tcpproxy import TcpProxy

PROJECT = "ingest-bench"
SLOT_S = 0.001  # the sender's schedule: every event due by now, each slot
DRAIN_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 300.0

_EVENTS = ("page_view", "click", "search", "add_to_cart", "checkout", "signup", "login", "logout")
_PATHS = (
    "/",
    "/api/v1/users",
    "/api/v1/orders",
    "/api/v1/cart/items",
    "/api/v1/search",
    "/products/%d",
    "/checkout/confirm",
    "/account/settings",
)
_STATUSES = (200,) * 16 + (201, 204, 301, 304, 400, 401, 404, 500)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "okhttp/4.12.0",
)


def web_events(count: int, seed: int = 1) -> list[bytes]:
    """``count`` distinct JSON web events of 100-300 bytes, as an app would
    send them: a few names, paths and user agents repeat; ids, timings and
    session tokens (random hex, incompressible) do not. Seeded: reproducible."""
    rng = random.Random(seed)
    start_ms = 1_717_000_000_000
    out = []
    for seq in range(count):
        status = rng.choice(_STATUSES)
        path = rng.choice(_PATHS)
        event: dict[str, object] = {
            "event": rng.choice(_EVENTS),
            "seq": seq,
            "ts": start_ms + seq * 7 + rng.randrange(7),
            "user": rng.randrange(1, 2_000_000),
            "session": rng.randbytes(8).hex(),
            "path": path % rng.randrange(1, 100_000) if "%d" in path else path,
            "status": status,
            "ms": round(rng.lognormvariate(2.5, 0.9), 1),
            "ok": status < 400,
        }
        if rng.random() < 0.75:  # server-side events carry no browser
            event["ua"] = rng.choice(_USER_AGENTS)
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


@dataclass
class Result:
    compression: str
    batch_messages: int
    events: int
    payload_bytes: int
    bytes_up: int
    bytes_down: int
    cpu_s: float
    requests: int
    verified: bool

    @property
    def up_per_event(self) -> float:
        return self.bytes_up / self.events

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6


def send_paced(path: str, events: list[bytes], rate: float) -> float:
    """One event per datagram at a fixed rate; blocking sends, so none is
    lost to a full unix receive queue. Returns the seconds it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        start = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                sock.send(events[sent])
                sent += 1
            time.sleep(SLOT_S)
        return time.monotonic() - start


def verify(emulator: Emulator, subscription: str, events: list[bytes]) -> bool:
    """The subscription holds exactly ``events``: each once, byte for byte."""
    expected = Counter(events)
    got: Counter[bytes] = Counter()
    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    empty = 0
    while empty < 3 and time.monotonic() < deadline:
        batch = emulator.pull(subscription)
        got.update(batch)
        empty = 0 if batch else empty + 1
        if not batch:
            time.sleep(0.1)
    return got == expected


def one_run(
    emulator: Emulator,
    workdir: str,
    events: list[bytes],
    *,
    compression: str,
    batch_messages: int,
    args: argparse.Namespace,
    n: int,
) -> Result:
    topic_id = f"compression-{os.getpid()}-{n}"
    topic = f"projects/{PROJECT}/topics/{topic_id}"
    subscription = f"projects/{PROJECT}/subscriptions/{topic_id}"
    emulator.create_topic(topic)
    emulator.create_subscription(subscription, topic)
    sock = os.path.join(workdir, f"ingest-{n}.sock")
    port = free_port()
    with TcpProxy(emulator.port, refuse=False) as proxy:
        emulator_host = f"127.0.0.1:{proxy.port}"
        serve = [
            "--project", PROJECT, "--topic", topic_id, "--unix", sock,
            "--metrics", f"127.0.0.1:{port}",
            "--batch-max-messages", str(batch_messages),
            "--batch-linger-ms", str(args.linger_ms),
            "--publish-compression", compression,
        ]  # fmt: skip
        daemon = DaemonProcess(
            serve,
            os.path.join(workdir, f"ingest-{n}.log"),
            emulator_host=emulator_host,
            metrics_url=f"http://127.0.0.1:{port}/metrics",
        )
        try:
            daemon.wait_ready(30)
            before = daemon.scrape()
            up0, down0, cpu0 = proxy.bytes_up, proxy.bytes_down, process_cpu_s(daemon.pid)
            send_paced(sock, events, args.rate)
            drained, after = daemon.wait_drained(DRAIN_TIMEOUT_S)
            cpu = process_cpu_s(daemon.pid) - cpu0
            up, down = proxy.bytes_up - up0, proxy.bytes_down - down0
        finally:
            daemon.shut_down()
    published = after.total("ingest_events_published_total")
    requests = after.total("ingest_publish_requests_total") - before.total(
        "ingest_publish_requests_total"
    )
    ok = drained and published == len(events) and verify(emulator, subscription, events)
    emulator.delete_subscription(subscription)
    return Result(
        compression,
        batch_messages,
        len(events),
        sum(map(len, events)),
        up,
        down,
        cpu,
        requests,
        ok,
    )


def print_table(results: list[Result]) -> None:
    """One row per batch size and setting: the median of its runs."""
    print(
        "| events / request | compression | bytes up / event | vs none "
        "| bytes down / event | daemon CPU µs / event | runs verified |"
    )
    print("|---|---|---|---|---|---|---|")
    rows: dict[tuple[int, str], list[Result]] = {}
    for r in results:
        rows.setdefault((r.batch_messages, r.compression), []).append(r)
    for (batch, compression), runs in rows.items():
        base = median([r.up_per_event for r in rows[batch, "none"]])
        up = median([r.up_per_event for r in runs])
        print(
            f"| {median([r.events / max(r.requests, 1) for r in runs]):.0f} | {compression} "
            f"| {up:.1f} | {up / base:.0%} "
            f"| {median([r.bytes_down / r.events for r in runs]):.1f} "
            f"| {median([r.cpu_us_per_event for r in runs]):.1f} "
            f"| {sum(r.verified for r in runs)}/{len(runs)} |"
        )


@contextlib.contextmanager
def emulator_for_bench() -> Iterator[Emulator]:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:  # the proxy needs its port; it must be on this host
        name, _, port = host.rpartition(":")
        if name not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"PUBSUB_EMULATOR_HOST={host}: the proxy needs 127.0.0.1:PORT")
        yield Emulator(int(port))
        return
    with Emulator() as emulator:
        yield emulator


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench compression",
        description="Bytes on the wire and daemon CPU per event, --publish-compression none/gzip.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="events per run (100000)")
    parser.add_argument("--rate", type=float, default=10_000, help="events per second (10000)")
    parser.add_argument(
        "--batch-messages",
        default="1000,100",
        help="batch sizes, comma-separated (1000,100)",
    )
    parser.add_argument(
        "--linger-ms", type=float, default=1000, help="long, so every batch fills (1000)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (1)")
    return parser.parse_args(argv)


def run(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    events = web_events(args.events)
    sizes = sorted(map(len, events))
    print(
        f"{len(events)} web events, {sizes[0]}-{sizes[-1]} bytes "
        f"(median {sizes[len(sizes) // 2]}, mean {sum(sizes) / len(sizes):.0f}), "
        f"one per datagram at {args.rate:.0f}/s",
        flush=True,
    )
    results: list[Result] = []
    with emulator_for_bench() as emulator, tempfile.TemporaryDirectory() as workdir:
        n = 0
        for batch_messages in (int(b) for b in args.batch_messages.split(",")):
            for repeat in range(args.repeat):
                names = list(PUBLISH_COMPRESSIONS)
                for compression in names[repeat % 2 :] + names[: repeat % 2]:
                    result = one_run(
                        emulator,
                        workdir,
                        events,
                        compression=compression,
                        batch_messages=batch_messages,
                        args=args,
                        n=n,
                    )
                    n += 1
                    print(
                        f"  batch {batch_messages} {compression}: "
                        f"{result.up_per_event:.1f} B/event up, "
                        f"{result.cpu_us_per_event:.1f} µs/event CPU, "
                        f"{result.requests} requests, verified={result.verified}",
                        flush=True,
                    )
                    results.append(result)
    print()
    print_table(results)
    return {
        "events": len(events),
        "event_bytes": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]},
        "rate": args.rate,
        "runs": [
            {
                **dataclasses.asdict(r),
                "up_bytes_per_event": r.up_per_event,
                "cpu_us_per_event": r.cpu_us_per_event,
            }
            for r in results
        ],
        "ok": all(r.verified for r in results),
    }
