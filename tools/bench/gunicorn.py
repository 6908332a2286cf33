"""The comparison the project exists for: a web request that records an event.

    python -m tools.bench gunicorn [--requests 2000] [--threads 8] [--host-namespace]

Runs examples/wsgi_app.py under gunicorn (4 sync workers, --preload) against
the real Pub/Sub emulator, with the same load for each mode — REQUESTS HTTP
GETs from THREADS client threads, a new connection per request (the sync
worker closes it anyway) — and reports requests/s and request latency:

- ``ingest``: the handler emits through ``ingest.client.Emitter`` to a local
  ``ingest serve`` (unix socket), which publishes in batches;
- ``direct``: the handler calls ``PublisherClient.publish(...).result()`` with
  the client's default batch settings (max_latency 10 ms), waiting to know;
- ``direct, max_latency=0``: the same with batching latency turned off, the
  fastest a synchronous publish gets.

Delivery is verified for every mode by pulling the subscription (events
counted distinct by request id); ``dropped`` counts the events the Emitter
dropped (the app's X-Ingest-Sent header). Like a production host should (see
docs/guides/kernel.md), the run raises net.unix.max_dgram_qlen to 512 —
inside a private network namespace (``unshare --net``, with its own loopback,
emulator and all), never on the host; ``--host-namespace`` runs with the
host's setting instead (default 10: bursts then overflow and are dropped). The load generator shares the 2 cores with
gunicorn, the daemon and the emulator, equally for every mode.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from tools.bench.suites import figures_from
from tools.testing import netns
from tools.testing.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "bench"
WORKERS = 4
WARMUP_REQUESTS = 100
READY_TIMEOUT_S = 30.0
NETNS_QLEN = 512
IN_NETNS_ENV = "INGEST_BENCH_IN_NETNS"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM by PID; SIGKILL to the session it leads if it does not exit."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def start_daemon(
    tmp: Path, topic_id: str, emulator_host: str
) -> tuple[subprocess.Popen[bytes], Path]:
    sock_path = tmp / "ingest.sock"
    log_path = tmp / "ingest.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env["PUBSUB_EMULATOR_HOST"] = emulator_host
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "ingest"),
                "serve",
                "--project",
                PROJECT,
                "--topic",
                topic_id,
                "--unix",
                str(sock_path),
                "--metrics",
                "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            start_new_session=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ingest serve exited: {log_path.read_text()}")
        return re.search(r"ready: ", log_path.read_text(errors="replace")) is not None

    wait_until(ready, READY_TIMEOUT_S, "ingest serve")
    return proc, sock_path


def start_gunicorn(app_env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_tcp_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--workers",
                str(WORKERS),
                "--preload",
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(ROOT / "examples"),
                "wsgi_app:app",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **app_env},
            start_new_session=True,
        )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log_path.read_text()}")
        try:
            get(port, "/_stats", None)
        except OSError:
            return False
        return True

    wait_until(up, READY_TIMEOUT_S, "gunicorn")
    return proc, port


def get(port: int, path: str, request_id: str | None) -> tuple[bytes, Any]:
    """(body, response headers) of one GET on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Request-Id": request_id} if request_id else {})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body, response.headers
    finally:
        conn.close()


def drive(
    port: int, requests: int, threads: int, tag: str
) -> tuple[list[float], float, set[str], int, list[float]]:
    """``requests`` GETs from ``threads`` threads; (latencies s, wall s, ids,
    events the Emitter dropped, in-handler recording times µs)."""
    ids = [f"{tag}-{uuid.uuid4().hex}" for _ in range(requests)]
    latencies: list[float] = []
    record_us: list[float] = []
    dropped = 0
    lock = threading.Lock()

    def one(request_id: str) -> None:
        nonlocal dropped
        t0 = time.perf_counter()
        _, headers = get(port, f"/bench/{request_id}", request_id)
        elapsed = time.perf_counter() - t0
        with lock:
            latencies.append(elapsed)
            record_us.append(float(headers["X-Record-Us"]))
            dropped += headers.get("X-Ingest-Sent") == "0"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, ids))
    return latencies, time.perf_counter() - t0, set(ids), dropped, record_us


def delivered(emulator: Emulator, subscription: str, ids: set[str], timeout_s: float) -> int:
    """Distinct request ids of ``ids`` found in the subscription."""
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < deadline:
            with lock:
                if found >= ids:
                    return
            batch = emulator.pull(subscription)
            with lock:
                for data in batch:
                    request_id = orjson.loads(data).get("request_id")
                    if request_id in ids:
                        found.add(request_id)
            if not batch:
                time.sleep(0.05)

    pullers = [threading.Thread(target=loop) for _ in range(4)]
    for puller in pullers:
        puller.start()
    for puller in pullers:
        puller.join(timeout_s + 10)
    return len(found)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(requests: int, threads: int) -> list[dict[str, Any]]:
    rows = []
    with Emulator() as emulator, tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmpdir:
        tmp = Path(tmpdir)
        topic_id = "gunicorn"
        topic = f"projects/{PROJECT}/topics/{topic_id}"
        subscription = f"projects/{PROJECT}/subscriptions/gunicorn"
        emulator.create_topic(topic)
        emulator.create_subscription(subscription, topic)
        daemon, sock_path = start_daemon(tmp, topic_id, emulator.host)
        modes = [
            ("ingest (Emitter -> ingest serve)", {"INGEST_EXAMPLE_MODE": "emit"}),
            ("direct publish().result()", {"INGEST_EXAMPLE_MODE": "direct"}),
            (
                "direct, max_latency=0",
                {"INGEST_EXAMPLE_MODE": "direct", "INGEST_EXAMPLE_MAX_LATENCY_S": "0"},
            ),
        ]
        try:
            for index, (label, mode_env) in enumerate(modes):
                app_env = {
                    **mode_env,
                    "INGEST_EXAMPLE_UNIX": str(sock_path),
                    "INGEST_EXAMPLE_TOPIC": topic,
                    "PUBSUB_EMULATOR_HOST": emulator.host,
                }
                server, port = start_gunicorn(app_env, tmp / f"gunicorn-{index}.log")
                try:
                    # Warm every worker (imports, first connect / gRPC channel).
                    drive(port, WARMUP_REQUESTS, threads, f"warm{index}")
                    latencies, wall, ids, dropped, record_us = drive(
                        port, requests, threads, f"m{index}"
                    )
                finally:
                    stop_process(server)
                got = delivered(emulator, subscription, ids, timeout_s=60)
                rows.append(
                    {
                        "mode": label,
                        "requests": requests,
                        "threads": threads,
                        "requests_per_s": round(requests / wall, 1),
                        "p50_ms": round(statistics.median(latencies) * 1000, 2),
                        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                        "record_p50_us": round(statistics.median(record_us), 1),
                        "record_p99_us": round(percentile(record_us, 0.99), 1),
                        "delivered": got,
                        "dropped": dropped,
                    }
                )
        finally:
            stop_process(daemon)
    return rows


def reexec_in_netns(argv: Sequence[str]) -> dict[str, Any] | None:
    """Run this benchmark again inside ``unshare --net`` with the qlen raised
    and return its figures; None (run here) when that is not possible. The pid
    namespace makes every process of the run (the emulator included) die with
    it."""
    reason = netns.unavailable()
    if reason:
        print(f"({reason}: running with the host's settings)", file=sys.stderr)
        return None
    command = netns.python_command(NETNS_QLEN, ["-m", "tools.bench", "gunicorn", *argv])
    env = {**os.environ, IN_NETNS_ENV: "1"}
    return figures_from("gunicorn", command, cwd=ROOT, env=env)


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench gunicorn", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--host-namespace",
        action="store_true",
        help="run in the host's network namespace with its net.unix.max_dgram_qlen",
    )
    args = parser.parse_args(argv)
    if not args.host_namespace and os.environ.get(IN_NETNS_ENV) != "1":
        figures = reexec_in_netns(argv)
        if figures is not None:
            return figures
    rows = measure(args.requests, args.threads)
    qlen = Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    print(
        f"gunicorn {WORKERS} sync workers --preload, {args.requests} requests "
        f"from {args.threads} threads, one event per request, real emulator, "
        f"net.unix.max_dgram_qlen={qlen}"
    )
    print("request = client-measured HTTP latency; record = time inside the handler")
    print(
        f"{'mode':<34} {'req/s':>7} {'req p50 ms':>10} {'req p99 ms':>10} "
        f"{'record p50 µs':>13} {'record p99 µs':>13} {'delivered':>11} {'dropped':>7}"
    )
    for row in rows:
        print(
            f"{row['mode']:<34} {row['requests_per_s']:>7.1f} {row['p50_ms']:>10.2f} "
            f"{row['p99_ms']:>10.2f} {row['record_p50_us']:>13.1f} {row['record_p99_us']:>13.1f} "
            f"{row['delivered']:>5}/{row['requests']:<5} {row['dropped']:>7}"
        )
    return {
        "workers": WORKERS,
        "requests": args.requests,
        "threads": args.threads,
        "unix_qlen": int(qlen),
        "modes": rows,
    }
