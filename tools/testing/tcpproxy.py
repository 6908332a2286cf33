"""A small TCP proxy for fault injection: latency, cut every connection,
refuse new ones, black-hole one direction. Runs an asyncio loop in a
background thread so a synchronous test can control it::

    with TcpProxy(upstream_port) as proxy:      # listening on proxy.port
        proxy.refuse = True                     # new connections closed at once
        proxy.latency_s = 0.2                   # each forwarded chunk waits
        proxy.cut()                             # reset every open connection
        proxy.blackhole = True                  # what clients send is discarded
        proxy.bytes_up, proxy.bytes_down        # TCP payload forwarded each way

The black hole is a one-way outage: what clients send is read and discarded
(for good, on that connection: a stream missing a chunk is broken), while
answers to what reached the upstream before still come back. So no request is
ever delivered with its answer lost -- which refusing or cutting can do to a
request in flight -- and a test can tell loss from duplicates exactly. A
network can fail this way; only the proxy lets a test choose the moment.

The byte counters are what a link between the two would carry as TCP payload
(HTTP/2 frames, headers and pings included; IP and TCP headers not): the
measure of ``--publish-compression`` (tools/bench/compression.py). They are
written by the proxy's thread; reading a Python int from another is safe.

It starts refusing (``refuse=True``) unless told otherwise, so a test can
prepare the upstream (topic, subscription) before the daemon gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

CHUNK = 64 << 10


class TcpProxy:
    def __init__(self, upstream_port: int, *, refuse: bool = True) -> None:
        self.upstream_port = upstream_port
        self.refuse = refuse
        self.latency_s = 0.0
        self.blackhole = False
        self.accepted = 0
        self.bytes_up = 0  # client -> upstream, forwarded
        self.bytes_down = 0  # upstream -> client
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _call(self, coro: object) -> object:  # type: ignore[misc]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def cut(self) -> int:
        """Reset every open connection (RST, as a crashed peer or middlebox)."""
        return int(self._call(self._cut()))  # type: ignore[call-overload]

    async def _cut(self) -> int:
        writers = list(self._writers)
        for writer in writers:
            _reset(writer)
        self._writers.clear()
        return len(writers)

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        await self._cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        self.accepted += 1
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True),
                self._pipe(up_reader, writer, upstream=False),
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        holed = False
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                holed = holed or (upstream and self.blackhole)
                if holed:
                    continue
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                writer.write(data)
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def stop(self) -> None:
        if self._server is not None:
            # On the proxy's loop: asyncio.Server is not thread-safe, and a
            # handler ending there at the same moment can make close() raise.
            self._call(self._close(self._server))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
