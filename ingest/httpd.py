"""The operator's HTTP endpoint: GET /metrics and GET /healthz, nothing else.

Served from the event loop itself (asyncio.start_server), so scrapes read the
counters between callbacks: no thread, no lock, no torn read. Requests are
tiny and bounded: 8 KiB of headers, 5 s for the whole exchange (a client that
never reads its answer is cut off too), and at most MAX_CONNECTIONS at once --
beyond that a connection is closed at once, so idle or slow clients can never
take the file descriptors the spool and the sockets need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ingest.health import Verdict
from ingest.ratelimit import LogLimiter

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 64  # a scraper, `ingest top`, a health check: a handful


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        verdict: Callable[[], Verdict],
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._verdict = verdict
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._limiter = LogLimiter()

    async def start(self) -> None:
        """Bind; raises OSError (address in use, ...) for the caller to report."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_HEADER_BYTES
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

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
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, content_type, body = self._route(head)
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

    def _route(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/healthz"):
            return "404 Not Found", "text/plain", b"only /metrics and /healthz\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if target == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        verdict = self._verdict()
        body = orjson.dumps(
            {"status": "ok" if verdict.healthy else "unhealthy", "reasons": list(verdict.reasons)}
        )
        status = "200 OK" if verdict.healthy else "503 Service Unavailable"
        return status, "application/json", body + b"\n"
