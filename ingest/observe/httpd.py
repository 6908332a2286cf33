"""The operator's HTTP endpoint: GET /metrics, GET /healthz and, given a
TapHub, GET /tap; nothing else.

Served from the event loop itself (asyncio.start_server), so scrapes read the
counters between callbacks: no thread, no lock, no torn read. Requests are
tiny and bounded: 8 KiB of headers, 5 s for the whole exchange (a client that
never reads its answer is cut off too), and at most MAX_CONNECTIONS at once --
beyond that a connection is closed at once, so idle or slow clients can never
take the file descriptors the spool and the sockets need.

A /tap (see ingest.observe.tap) streams until its client leaves: only its request
head has the 5 s. It counts toward MAX_CONNECTIONS, and at most
tap.MAX_TAPS stream at once (503 beyond). close() ends every tap: each
writes what it holds and closes; one whose client does not take it within
TAP_CLOSE_GRACE_S is cut off, so shutdown never waits on a tap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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
MAX_CONNECTIONS = 64  # a scraper, `ingest top`, a health check: a handful
TAP_CLOSE_GRACE_S = 1.0
TAP_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
)  # no Content-Length: the body ends when the connection does


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
        self._connections = 0
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
            await self._server.wait_closed()
        await self._end_taps()

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
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            self._limiter.log(
                log,
                "connections",
                logging.WARNING,
                "metrics endpoint: %d connections open; closing new ones",
                self._connections,
            )
            return
        self._connections += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S) as deadline:
                head = await reader.readuntil(b"\r\n\r\n")
                answer = self._route(head)
                if isinstance(answer, Tap):
                    deadline.reschedule(None)  # it streams until it ends; the head had 5 s
                    await self._stream(answer, reader, writer)
                    return
                status, content_type, body = answer
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + (b"" if head.startswith(b"HEAD ") else body)
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away, stalled or sent garbage: nothing to answer
        finally:
            self._connections -= 1
            writer.close()

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
