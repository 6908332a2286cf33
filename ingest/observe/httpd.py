"""The operator's HTTP endpoint: GET /metrics, GET /healthz and, given a
TapHub, GET /tap; nothing else.

Served from the event loop itself (asyncio.start_server), so scrapes read the
counters between callbacks: no thread, no lock, no torn read. Requests are
tiny and bounded: 8 KiB of headers, and REQUEST_TIMEOUT_S (5 s) for the whole
exchange: the head, then the answer until the kernel has all of it (a client
that never reads its answer is cut off, its connection aborted, so no unsent
bytes keep a descriptor open after the handler is done). Bodies are never
read: the answer follows the head.

At most MAX_CONNECTIONS are open at once (``Slots``), so idle or slow clients
can never take the file descriptors the spool and the sockets need. A
connection arriving at the limit takes the slot of the oldest one still
sending its head -- else of the oldest whose answer is still being written --
which is aborted: clients that send half a head and wait (a slowloris) can
hold every slot only until the next request comes, so /healthz is answered
under them. A tap is never given up this way; the hub lets at most
tap.MAX_TAPS stream at once (503 beyond), far fewer than the slots.

A /tap (see ingest.observe.tap) streams until its client leaves: only its
request head has the 5 s. close() ends every tap: each writes what it holds
and closes; one whose client does not take it within TAP_CLOSE_GRACE_S is cut
off, so shutdown never waits on a tap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ingest.observe.health import Verdict
from ingest.observe.tap import Tap, TapHub, parse_query
from ingest.ratelimit import LogLimiter

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 64  # a scraper, `ingest top`, a health check, a few taps: a handful
TAP_CLOSE_GRACE_S = 1.0
TAP_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
)  # no Content-Length: the body ends when the connection does


class Phase(StrEnum):
    """Where a connection is in its exchange."""

    HEAD = "head"  # its request head is still arriving
    ANSWER = "answer"  # its answer is being written
    STREAM = "stream"  # a tap, streaming until it ends


class Slots:
    """The open connections, oldest first, each in its phase; the owner of
    MAX_CONNECTIONS. Loop-thread only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Insertion order is age: a phase change keeps a connection's place.
        self._phases: dict[asyncio.StreamWriter, Phase] = {}

    def __len__(self) -> int:
        return len(self._phases)

    @property
    def full(self) -> bool:
        return len(self._phases) >= self.limit

    def open(self, writer: asyncio.StreamWriter) -> None:
        self._phases[writer] = Phase.HEAD

    def enter(self, writer: asyncio.StreamWriter, phase: Phase) -> bool:
        """False when the connection was given up meanwhile (its head
        arrived, but a newcomer took its slot before it was read)."""
        if writer not in self._phases:
            return False
        self._phases[writer] = phase
        return True

    def close(self, writer: asyncio.StreamWriter) -> None:
        self._phases.pop(writer, None)  # given up already, or not

    def give_up(self) -> asyncio.StreamWriter | None:
        """The connection whose slot a newcomer takes, no longer counted: the
        oldest still sending its head (what a slowloris does forever; an
        honest client's head arrives with its connection), else the oldest
        whose client has not yet taken its answer. None when every slot
        streams, which the hub's tap bound keeps from happening."""
        for wanted in (Phase.HEAD, Phase.ANSWER):
            for writer, phase in self._phases.items():
                if phase is wanted:
                    del self._phases[writer]
                    return writer
        return None


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        verdict: Callable[[], Verdict],
        *,
        tap: TapHub | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._verdict = verdict
        self._tap = tap  # None: /tap is a 404, as any unknown path
        self._server: asyncio.Server | None = None
        self._slots = Slots(MAX_CONNECTIONS)
        self._limiter = LogLimiter()
        self._closing = False
        # The open taps' handler tasks and writers, for close() to end them.
        self._streams: dict[Tap, tuple[asyncio.Future[Any], asyncio.StreamWriter]] = {}

    async def start(self) -> None:
        """Bind; raises OSError (address in use, ...) for the caller to report."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_HEADER_BYTES
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        self._closing = True  # a tap whose head is still arriving gets a 503
        if self._server is not None:
            self._server.close()
        # Before wait_closed: from Python 3.12 on it waits for the open
        # connections, which a tap's are until it is ended.
        await self._end_taps()
        if self._server is not None:
            await self._server.wait_closed()

    async def _end_taps(self) -> None:
        """Every open tap writes what it holds and closes, within
        TAP_CLOSE_GRACE_S; the transport of one still stuck after that (its
        client does not read) is aborted, which ends its stream at once."""
        if not self._streams:
            return
        for tap in self._streams:
            tap.end()
        handlers = {handler for handler, _ in self._streams.values()}
        _, stuck = await asyncio.wait(handlers, timeout=TAP_CLOSE_GRACE_S)
        for handler, writer in list(self._streams.values()):
            if handler in stuck:
                writer.transport.abort()
        if stuck:
            await asyncio.wait(stuck, timeout=TAP_CLOSE_GRACE_S)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            return
        clean = False  # the exchange ended as it should: close, else abort
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S) as deadline:
                head = await reader.readuntil(b"\r\n\r\n")
                if not self._slots.enter(writer, Phase.ANSWER):
                    return
                answer = self._route(head)
                if isinstance(answer, Tap):
                    deadline.reschedule(None)  # it streams until it ends; the head had 5 s
                    self._slots.enter(writer, Phase.STREAM)
                    await self._stream(answer, reader, writer)
                    clean = await _flushed(writer, TAP_CLOSE_GRACE_S)
                    return
                status, content_type, body = answer
                # drain() returns only once the kernel has every byte, so the
                # deadline covers the whole answer and close() leaves nothing
                # behind for a client that stopped reading.
                writer.transport.set_write_buffer_limits(high=0)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + (b"" if head.startswith(b"HEAD ") else body)
                )
                await writer.drain()
                clean = True
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away, stalled or sent garbage: nothing to answer
        finally:
            self._slots.close(writer)
            if clean:
                writer.close()
            else:
                writer.transport.abort()  # unsent bytes must not keep the descriptor

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Count the new connection in, at the limit by aborting the one
        Slots gives up; False (it is closed) when none can be."""
        if self._slots.full:
            given_up = self._slots.give_up()
            if given_up is None:
                writer.transport.abort()
                self._limiter.log(
                    log,
                    "connections",
                    logging.WARNING,
                    "metrics endpoint: %d taps hold every connection; closing new ones",
                    len(self._slots),
                )
                return False
            given_up.transport.abort()
            self._limiter.log(
                log,
                "connections",
                logging.WARNING,
                "metrics endpoint: %d connections open (the limit); closing the oldest "
                "still sending its request or not taking its answer",
                self._slots.limit,
            )
        self._slots.open(writer)
        return True

    async def _stream(
        self, tap: Tap, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One tap from its response head to its end; the slot is freed however it ends."""
        assert self._tap is not None
        handler = asyncio.current_task()
        assert handler is not None
        self._streams[tap] = (handler, writer)
        try:
            writer.write(TAP_HEAD)
            await self._tap.stream(tap, reader, writer)
        finally:
            del self._streams[tap]
            self._tap.close(tap)

    def _route(self, head: bytes) -> tuple[str, str, bytes] | Tap:
        """The answer, or an open Tap (already counted by the hub) to stream."""
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1]
        path, _, query = target.partition(b"?")
        if path == b"/tap" and self._tap is not None:
            return self._open_tap(method, query)
        if path not in (b"/metrics", b"/healthz"):
            routes = (
                b"/metrics, /healthz and /tap"
                if self._tap is not None
                else b"/metrics and /healthz"
            )
            return "404 Not Found", "text/plain", b"only " + routes + b"\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        verdict = self._verdict()
        body = orjson.dumps(
            {"status": "ok" if verdict.healthy else "unhealthy", "reasons": list(verdict.reasons)}
        )
        status = "200 OK" if verdict.healthy else "503 Service Unavailable"
        return status, "application/json", body + b"\n"

    def _open_tap(self, method: bytes, query: bytes) -> tuple[str, str, bytes] | Tap:
        assert self._tap is not None
        if method != b"GET":  # a stream has no head-only form
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        try:
            wanted = parse_query(query)
        except ValueError as exc:
            return "400 Bad Request", "text/plain", f"{exc}\n".encode()
        if self._closing:
            return "503 Service Unavailable", "text/plain", b"shutting down\n"
        tap = self._tap.open(wanted)
        if tap is None:
            message = f"{self._tap.max_taps} taps open already; try again later\n"
            return "503 Service Unavailable", "text/plain", message.encode()
        return tap


async def _flushed(writer: asyncio.StreamWriter, timeout_s: float) -> bool:
    """True once the kernel has everything written; False if the client has
    not taken it within timeout_s, or is gone."""
    writer.transport.set_write_buffer_limits(high=0)
    try:
        async with asyncio.timeout(timeout_s):
            await writer.drain()
    except (TimeoutError, OSError):
        return False
    return True
