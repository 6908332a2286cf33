"""What one Publish call costs the daemon's process, whatever the batching:
grpc.aio (what ingest uses) and grpcio's synchronous futures, against the
stand-in Publish server (tools/fakepubsub.py), which costs ~0.05 µs a message.

    .venv/bin/python -m tools.bench_publish_call [--calls 20000] [--messages 10]

Each call publishes the same request of ``--messages`` loadgen-sized events,
encoded once (ingest.pubsub.RequestEncoder); ``--concurrency`` callers share
one channel, as the publisher pool does. CPU is this process's user + system
time over the calls, grpc's own threads included. With ordering keys a
request holds one key's messages, so this per-call cost, times the requests
a second, is what many keys cost (README, "Ordering keys").

Not a test (speed never is): it prints numbers for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import threading
import time

import grpc
import uvloop

from ingest.pubsub import PubSubClient, RequestEncoder, create_channel
from tools.fakepubsub import FakePubSub

TOPIC = "projects/bench/topics/events"
EVENT = b'{"seq":0,"sent_us":1700000000000000,"host":"web-01","method":"GET","status":200}'
WARM_UP_CALLS = 200


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def aio_calls(host: str, request: bytes, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU s, wall s) of ``calls`` grpc.aio Publish calls, ``concurrency`` at a time."""
    client = PubSubClient(create_channel("", host), TOPIC)
    for _ in range(WARM_UP_CALLS):
        await client.publish(request, 10.0)

    async def caller(count: int) -> None:
        for _ in range(count):
            await client.publish(request, 10.0)

    cpu, wall = cpu_s(), time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    cpu, wall = cpu_s() - cpu, time.perf_counter() - wall
    await client.close()
    return cpu, wall


def sync_calls(host: str, request: bytes, calls: int, concurrency: int) -> tuple[float, float]:
    """The same with grpcio's synchronous channel, ``future()`` calls."""
    channel = grpc.insecure_channel(host)
    publish = channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
    for _ in range(WARM_UP_CALLS):
        publish(request, timeout=10.0)
    slots = threading.Semaphore(concurrency)
    done = threading.Event()
    left = [calls]
    lock = threading.Lock()

    def finished(_: object) -> None:
        slots.release()
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    cpu, wall = cpu_s(), time.perf_counter()
    for _ in range(calls):
        slots.acquire()
        publish.future(request, timeout=10.0).add_done_callback(finished)
    if not done.wait(timeout=600.0):
        raise RuntimeError("calls did not finish within 600 s")
    cpu, wall = cpu_s() - cpu, time.perf_counter() - wall
    channel.close()
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=10, help="events a request")
    parser.add_argument("--concurrency", default="1,4,16", help="callers at once, each run")
    args = parser.parse_args()
    request = RequestEncoder(TOPIC).encode([EVENT] * args.messages)
    with tempfile.NamedTemporaryFile(prefix="fakepubsub-", suffix=".log") as log:
        fake = FakePubSub(log.name).start()
        try:
            print(f"CPU per Publish call ({args.messages} messages), {fake.engine} stand-in")
            print(f"  {'client':<22} {'callers':>7} {'µs CPU/call':>12} {'calls/s':>9}")
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                runs = {
                    "grpc.aio": uvloop.run(aio_calls(fake.host, request, args.calls, concurrency)),
                    "grpcio sync futures": sync_calls(fake.host, request, args.calls, concurrency),
                }
                for name, (cpu, wall) in runs.items():
                    per_call_us = cpu / args.calls * 1e6
                    print(
                        f"  {name:<22} {concurrency:>7} {per_call_us:>12.1f} "
                        f"{args.calls / wall:>9,.0f}"
                    )
        finally:
            fake.stop()


if __name__ == "__main__":
    main()
