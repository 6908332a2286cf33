"""What one Publish call costs the daemon's process, whatever the batching:
grpc.aio (what ingest uses) and grpcio's synchronous futures, against the
stand-in Publish server (tools/testing/fakepubsub.py), which costs ~0.05 µs a message;
and the floor under both, the same unary call as raw HTTP/2 frames on an
asyncio connection (``RawH2``: what any client must at least do, not a client:
no flow control, no HPACK decoding, no deadlines, no TLS).

    .venv/bin/python -m tools.bench publish_call [--calls 20000] [--messages 10]

Each call publishes the same request of ``--messages`` loadgen-sized events,
encoded once (ingest.publish.pubsub.RequestEncoder); ``--concurrency`` callers share
one channel, as the publisher pool does. CPU is this process's user + system
time over the calls, grpc's own threads included. With ordering keys a
request holds one key's messages, so this per-call cost, times the requests
a second, is what many keys cost (docs/concepts/metadata.md).

Not a test (speed never is): it prints numbers for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import grpc
import uvloop

from ingest.publish.pubsub import PubSubClient, RequestEncoder, create_channel
from tools.testing.fakepubsub import FakePubSub

TOPIC = "projects/bench/topics/events"
EVENT = b'{"seq":0,"sent_us":1700000000000000,"host":"web-01","method":"GET","status":200}'
WARM_UP_CALLS = 200


PUBLISH_PATH = "/google.pubsub.v1.Publisher/Publish"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_SETTINGS, H2_PING, H2_WINDOW_UPDATE = 0, 1, 4, 6, 8
H2_END_STREAM, H2_ACK, H2_END_HEADERS = 0x1, 0x1, 0x4
H2_MAX_WINDOW = 2**31 - 1


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + struct.pack(">I", stream) + payload
    )


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


class RawH2(asyncio.Protocol):
    """Unary gRPC calls as raw HTTP/2 frames over cleartext (prior knowledge):
    the header block is made once, a call is one write of HEADERS + DATA,
    and its answer ends with the trailers' HEADERS (END_STREAM)."""

    def __init__(self, authority: str) -> None:
        self._buffer = bytearray()
        self._calls: dict[int, asyncio.Future[None]] = {}
        self._stream = -1
        self._transport: asyncio.Transport | None = None
        # :method POST, :scheme http (static table 3 and 6), then literals.
        self._block = b"\x83\x86" + b"".join(
            hpack_literal(name, value)
            for name, value in (
                (b":path", PUBLISH_PATH.encode()),
                (b":authority", authority.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        settings = struct.pack(">HIHIHI", 1, 0, 2, 0, 4, H2_MAX_WINDOW)  # no table, push, window
        self._transport.write(
            H2_PREFACE
            + h2_frame(H2_SETTINGS, 0, 0, settings)
            + h2_frame(H2_WINDOW_UPDATE, 0, 0, struct.pack(">I", H2_MAX_WINDOW - 65535))
        )

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer
        buffer += data
        pos = 0
        while len(buffer) - pos >= 9:
            length = int.from_bytes(buffer[pos : pos + 3], "big")
            if len(buffer) - pos < 9 + length:
                break
            kind, flags = buffer[pos + 3], buffer[pos + 4]
            stream = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if kind == H2_HEADERS and flags & H2_END_STREAM:
                call = self._calls.pop(stream, None)
                if call is not None and not call.done():
                    call.set_result(None)
            elif kind == H2_SETTINGS and not flags & H2_ACK:
                self._transport.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
            elif kind == H2_PING and not flags & H2_ACK:
                self._transport.write(h2_frame(H2_PING, H2_ACK, 0, payload))
        del buffer[:pos]

    def call(self, message: bytes) -> asyncio.Future[None]:
        assert self._transport is not None
        self._stream += 2
        done = self._calls[self._stream] = asyncio.get_running_loop().create_future()
        grpc_message = b"\x00" + struct.pack(">I", len(message)) + message
        self._transport.write(
            h2_frame(H2_HEADERS, H2_END_HEADERS, self._stream, self._block)
            + h2_frame(H2_DATA, H2_END_STREAM, self._stream, grpc_message)
        )
        return done


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


async def raw_h2_calls(
    host: str, request: bytes, calls: int, concurrency: int
) -> tuple[float, float]:
    """The same calls as raw HTTP/2 frames (RawH2)."""
    address, _, port = host.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, connection = await loop.create_connection(lambda: RawH2(host), address, int(port))
    for _ in range(WARM_UP_CALLS):
        await connection.call(request)

    async def caller(count: int) -> None:
        for _ in range(count):
            await connection.call(request)

    cpu, wall = cpu_s(), time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    cpu, wall = cpu_s() - cpu, time.perf_counter() - wall
    transport.close()
    return cpu, wall


def sync_calls(host: str, request: bytes, calls: int, concurrency: int) -> tuple[float, float]:
    """The same with grpcio's synchronous channel, ``future()`` calls."""
    channel = grpc.insecure_channel(host)
    publish = channel.unary_unary(PUBLISH_PATH)
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


def run(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench publish_call", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=10, help="events a request")
    parser.add_argument("--concurrency", default="1,4,16", help="callers at once, each run")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
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
                    "raw HTTP/2 (floor)": uvloop.run(
                        raw_h2_calls(fake.host, request, args.calls, concurrency)
                    ),
                }
                for name, (cpu, wall) in runs.items():
                    per_call_us = cpu / args.calls * 1e6
                    print(
                        f"  {name:<22} {concurrency:>7} {per_call_us:>12.1f} "
                        f"{args.calls / wall:>9,.0f}"
                    )
                    rows.append(
                        {
                            "client": name,
                            "callers": concurrency,
                            "cpu_us_per_call": per_call_us,
                            "calls_per_s": args.calls / wall,
                        }
                    )
            engine = fake.engine
        finally:
            fake.stop()
    return {"calls": args.calls, "messages": args.messages, "standin": engine, "rows": rows}
