"""A listener's reader: the read loop (the hot path) and its accounting.

asyncio's stdlib DatagramProtocol manages ~20k datagrams/s here (it
recvfrom()s 256 KiB per datagram); an ``add_reader`` callback that reads a
non-blocking socket until EAGAIN measured 290-300k/s with validation and
queueing, on the 2-core development machine. Per wake-up: one list of events,
one queue put, counters updated once. Binding sockets is sockets.py's; how a
socket is received from (plain, allow-list, credentials), receivers.py's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence

from ingest.config import INPUT_FORMATS, ConfigError, IPNetwork, Listener
from ingest.pipeline.queue import Intake
from ingest.ratelimit import LogLimiter
from ingest.receive import kernel
from ingest.receive.codec import Decoder, count_events, decode_datagram
from ingest.receive.dialects import GELF, JSON, UNKNOWN, Dialects
from ingest.receive.pacing import FEW_DATAGRAMS, PacedWatch, ReadPacing
from ingest.receive.receivers import AllowList, DeniedBurst, Receiver, Senders, receiver_for
from ingest.receive.sockets import SocketFile, bind_unix, remove_stale_socket
from ingest.receive.tapped import Hub, TappedWakeUp
from ingest.receive.wakeup import (
    WAKEUP_MAX_BYTES,
    WAKEUP_MAX_DATAGRAMS,
    WAKEUP_MAX_EVENTS,
    WakeUp,
)
from ingest.stats import Stats
from ingest.vocabulary import Ignore, Reject

log = logging.getLogger(__name__)

# Only datagrams above this size count against WAKEUP_MAX_BYTES (and only
# datagrams of several lines against WAKEUP_MAX_EVENTS), which keeps the
# common small single-event datagram free of bookkeeping: WAKEUP_MAX_DATAGRAMS
# of these stay under 512 KiB, so the byte bound still holds, at worst doubled.
SMALL_DATAGRAM_BYTES = 2048
FINAL_READ_MAX_S = 2.0  # the final read at shutdown, all sockets together
REBIND_READ_MAX_S = 0.05  # what a replaced socket still holds: a stall must stay short


def _count_lines(data: bytes, wake: WakeUp) -> int:
    """``codec.count_events`` with the full-queue counter's signature."""
    return count_events(data)


class DatagramSource:
    """One bound socket and its read callback. Never blocks, never awaits.

    One read loop serves every source; only its receive call differs
    (receivers.py): with an allow-list a UDP source reads with recvfrom and
    checks the sender; with ``credentials`` a unix source reads with recvmsg
    and learns the sender; otherwise it calls the socket's plain recv, so
    the common path pays nothing for either. ``adopted``: the socket was
    passed by systemd, which owns it — never unlinked, chmodded or
    re-created here.

    ``credentials`` (unix sources): each datagram's sender attributes
    (receivers.Senders) reach the decoders through the wake-up
    (wakeup.WakeUp.sender), for ``decode`` to give its messages.
    ``allow_uids``: only these uids' datagrams are decoded, the others
    rejected (``sender_denied``); empty: every sender. It needs
    ``credentials``.
    """

    def __init__(
        self,
        listener: Listener,
        sock: socket.socket,
        queue: Intake,
        stats: Stats,
        max_datagram_bytes: int,
        *,
        allow: Sequence[IPNetwork] = (),
        adopted: bool = False,
        decode: Decoder = decode_datagram,
        dialects: Dialects | None = None,
        credentials: bool = False,
        allow_uids: Sequence[int] = (),
        tap: Hub | None = None,
    ) -> None:
        if allow_uids and not credentials:
            # Ignoring it would silently admit every uid.
            raise ValueError("allow_uids needs credentials: the uid comes with them")
        self.listener = listener
        self.label = listener.label
        self.sock = sock
        self.adopted = adopted
        self.allow = AllowList(allow) if allow and listener.kind == "udp" else None
        self.senders = Senders(allow_uids) if credentials and listener.kind == "unix" else None
        if self.senders is not None:  # adopted sockets too: systemd may not have set it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._queue = queue
        self._stats = stats
        self._max_bytes = max_datagram_bytes
        self._decode = decode  # codec.decode_datagram, or attributes' decode_messages
        # What decodes a datagram that does not start with "{" (dialects.py),
        # and counts one the queue has no room for; without dialects, the
        # JSON decoder takes them all. Without JSON among the formats, the
        # dialects take "{" too (they reject it as format_disabled).
        self.dialects = dialects
        self._other: Decoder = dialects.decode if dialects is not None else decode
        self._count: Callable[[bytes, WakeUp], int] = (
            dialects.count if dialects is not None else _count_lines
        )
        # With dialects, theirs decodes JSON too: with metadata it counts what
        # it builds (WakeUp.written), which ``decode`` does not.
        if dialects is not None:
            self._decode = dialects.decode_json if JSON in dialects.formats else dialects.decode
        self.tap = tap
        self._limiter = LogLimiter()
        self._denied_reason = (
            Reject.SENDER_DENIED if self.senders is not None else Reject.SOURCE_DENIED
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: PacedWatch | None = None  # the loop's watch of the socket, once started
        self.last_datagrams = 0  # what the last read took (read pacing)
        self.kind = listener.kind
        self.problem: str | None = None  # shown in /healthz and on the dashboard
        self.udp_inode: int | None = None
        self.rcvbuf_granted: int | None = None
        if listener.kind == "udp":
            self.udp_inode = os.fstat(sock.fileno()).st_ino
            # Linux reports double the usable size it granted (man 7 socket).
            self.rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        self.socket_file = SocketFile(listener.path) if listener.kind == "unix" else None
        # The receive strategy, chosen once per socket (again when a removed
        # unix path is bound anew). Only a tap, which attaches at any moment,
        # gets variants of its own, per wake-up.
        self._receiver = self._receiver_for(sock)

    @property
    def input_formats(self) -> tuple[str, ...]:
        """The formats this listener takes (--input-formats), in config's order."""
        formats = self.dialects.formats if self.dialects is not None else {JSON}
        return tuple(fmt for fmt in INPUT_FORMATS if fmt in formats)

    @property
    def gelf_pending(self) -> tuple[int, int] | None:
        """Chunked GELF messages awaiting chunks: (messages, bytes held)."""
        if self.dialects is None or GELF not in self.dialects.formats:
            return None
        reassembler = self.dialects.reassembler
        return reassembler.pending_messages, reassembler.pending_bytes

    @property
    def bound_label(self) -> str:
        """The label with the port the kernel chose for ``--udp HOST:0``."""
        if self.kind != "udp" or self.listener.port:
            return self.label
        port = self.sock.getsockname()[1]
        return Listener("udp", host=self.listener.host, port=port).label

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watch = self._paced_watch(loop)

    def _paced_watch(self, loop: asyncio.AbstractEventLoop) -> PacedWatch:
        """The loop's watch of the socket, paced (pacing.py). A unix
        socket holds only net.unix.max_dgram_qlen datagrams (10 unless the
        host raised it) before its senders get EAGAIN, so its pauses are
        sized to leave at most half of that waiting; UDP's buffer holds
        megabytes."""
        few = FEW_DATAGRAMS
        if self.kind == "unix":
            qlen = kernel.unix_max_dgram_qlen()
            few = min(few, qlen if qlen is not None else kernel.UNIX_QLEN_DEFAULT)
        return PacedWatch(
            loop, self.sock.fileno(), self._paced_read, ReadPacing(loop.time(), few=few)
        )

    def _paced_read(self) -> tuple[int, bool]:
        """The loop's callback: a read, and what pacing.PacedWatch needs of it."""
        more = self.read()
        return self.last_datagrams, more

    def read(self) -> bool:
        """Read until EAGAIN or the wake-up budget; True when the budget
        stopped it (the socket may hold more). The loop's callback.

        The queue's room is read before decoding: once a wake-up has produced
        as many events as the queue can keep, further datagrams are counted
        (``queue_full``, one per non-blank line) without being decoded, so
        overload costs the least work exactly when the daemon is behind."""
        events: list[bytes] = []
        stats = self._stats
        rejected = stats.rejected
        # What this wake-up's receive call and decoders learn and write
        # (wakeup.py): the sender, the bytes written, the counts by format.
        wake = WakeUp()
        # The receive call of this socket's strategy (receivers.py). While a
        # tap is connected: a sample of each datagram's outcome (tapped.py),
        # and the receive call also notes each sender.
        tap = self.tap
        tapped = TappedWakeUp(tap, self.label) if tap and tap.active else None
        recv = self._receiver(wake, tapped)
        limit = self._max_bytes + 1  # one byte more than allowed reveals oversize
        max_bytes = self._max_bytes
        decode, other, count_full = self._decode, self._other, self._count
        if tapped is not None:
            decode, other, count_full = tapped.decoders(decode, other, count_full)
        room = self._queue.room()
        # A wake-up ends with at most WAKEUP_MAX_EVENTS + WAKEUP_MAX_DATAGRAMS + limit
        # events (no datagram holds more than ``limit``): with this much room
        # the budget stops it first, and the per-datagram check is moot.
        roomy = room >= WAKEUP_MAX_EVENTS + WAKEUP_MAX_DATAGRAMS + limit
        max_events, max_read = WAKEUP_MAX_EVENTS, WAKEUP_MAX_BYTES
        small = min(SMALL_DATAGRAM_BYTES, max_bytes)  # oversize is checked on this path
        more = False
        datagrams = received = empty = full = nread = unknown = 0
        for _ in range(WAKEUP_MAX_DATAGRAMS):
            try:
                data = recv(limit)
            except (BlockingIOError, InterruptedError):
                break
            except DeniedBurst:
                more = True
                break
            except OSError as exc:
                self._receive_failed(exc)
                break
            datagrams += 1
            size = len(data)
            if size > small:  # the rare path: the bytes budget, oversize
                nread += size
                more = nread >= max_read  # this datagram is still handled below
                if size > max_bytes:  # rejected whole, never forwarded truncated
                    rejected[Reject.TOO_LARGE] += 1
                    received += 1
                    unknown += 1
                    if tapped is not None:
                        tapped.oversize(data)
                    if more:
                        break
                    continue
            if roomy or len(events) < room:
                try:  # JSON, the common case, pays one compare for the dialects
                    plain = data[0] == 0x7B  # {
                except IndexError:  # an empty datagram: the JSON decoder counts it
                    plain = True
                if plain:
                    count = decode(data, events, rejected, wake)
                else:
                    count = other(data, events, rejected, wake)
                    if wake.written >= max_read:
                        more = True  # what the dialects wrote counts as read
            else:
                count = count_full(data, wake)
                full += count
            received += count
            if count != 1:  # blank, or several lines: the rare paths
                if not count:
                    empty += 1
                elif received >= max_events or wake.written >= max_read:
                    more = True  # with metadata, messages of many JSON lines count too
            if more:
                break
        else:
            more = True
        self.last_datagrams = datagrams
        if datagrams or wake.denied:
            self._count_and_put(
                wake, datagrams, received, events, empty=empty, full=full, unknown=unknown
            )
        return more

    def _receiver_for(self, sock: socket.socket) -> Receiver:
        """The receive strategy of ``sock`` (receivers.receiver_for)."""
        return receiver_for(
            sock,
            addressed=self.kind == "udp",
            allow=self.allow,
            senders=self.senders,
            label=self.label,
            limiter=self._limiter,
        )

    def _receive_failed(self, exc: OSError) -> None:
        self._stats.receive_errors += 1
        self._limiter.log(log, "recv", logging.WARNING, "%s: receive failed: %s", self.label, exc)

    def _count_and_put(
        self,
        wake: WakeUp,
        datagrams: int,
        received: int,
        events: list[bytes],
        *,
        empty: int,
        full: int,
        unknown: int,
    ) -> None:
        """The end of a wake-up: its counters into the stats, and one queue
        put for all its events."""
        stats = self._stats
        denied = wake.denied
        if denied:  # each a datagram and an event, received and rejected
            stats.rejected[self._denied_reason] += denied
            datagrams += denied
            received += denied
            unknown += denied
        by_format = stats.events_by_format
        if unknown:
            by_format[(self.label, UNKNOWN)] += unknown
        for fmt, n in wake.counts.items():  # the dialects'; JSON's are what remains
            by_format[(self.label, fmt)] += n
        empty -= wake.absorbed  # chunks: part of a message, not empty
        stats.datagrams_received[self.label] += datagrams
        stats.events_received[self.label] += received
        if empty:
            stats.datagrams_ignored[Ignore.EMPTY] += empty
        if full:
            self._queue.drop_full(full)
        if events:
            assert self._loop is not None
            self._queue.put(events, self._loop.time())

    def read_until_empty(self, max_s: float = FINAL_READ_MAX_S) -> None:
        """Read what the kernel already queued (shutdown, socket re-creation):
        until EAGAIN, or for at most ``max_s`` -- senders flooding faster than
        we read must not hold a shutdown hostage."""
        deadline = time.monotonic() + max_s
        while self.read() and time.monotonic() < deadline:
            pass

    def take_over(self, previous: DatagramSource) -> None:
        """Become ``previous``'s successor on the same socket (a reload): its
        socket file's identity and problem, as the file may have changed
        since it was bound."""
        self.socket_file = previous.socket_file
        self.problem = previous.problem

    def stop(self) -> None:
        """Stop reading, leaving the socket open (a reload's new reader takes it)."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self._loop = None

    def close(self) -> None:
        self.stop()
        self.sock.close()
        if self.dialects is not None:  # no more chunks can come: incomplete messages end
            self.dialects.expire(math.inf)
        if self.socket_file is not None and not self.adopted:  # systemd owns adopted files
            self.socket_file.unlink_if_ours()

    def check_path(self, mode: int, gid: int | None = None) -> None:
        """A unix socket file removed while we run (tmpfiles clean-up, a stray
        rm) makes every sender fail with ENOENT forever: notice it and bind a
        fresh socket at the path. Called periodically, off the hot path. An
        adopted socket's file belongs to systemd: report, do not re-create."""
        if self.socket_file is None or not self.socket_file.replaced():
            if self.adopted:
                self.problem = None
            return
        if self.adopted:
            self.problem = (
                f"socket file {self.listener.path} (passed by systemd) is gone or replaced; "
                "senders cannot reach it: systemctl restart ingest.socket ingest.service"
            )
            self._limiter.log(
                log, "adopted-path", logging.ERROR, "%s: %s", self.label, self.problem
            )
            return
        self._limiter.log(
            log,
            "vanished",
            logging.WARNING,
            "%s: socket file disappeared or was replaced; re-creating it",
            self.label,
        )
        self.read_until_empty(REBIND_READ_MAX_S)  # what the old socket still holds
        try:
            remove_stale_socket(self.listener.path)
            fresh = bind_unix(self.listener, mode, gid, credentials=self.senders is not None)
        except ConfigError as exc:
            self.problem = f"socket file {self.listener.path} is gone: {exc}"
            self._limiter.log(
                log, "rebind", logging.ERROR, "%s: cannot re-create: %s", self.label, exc
            )
            return
        if self._watch is not None:
            self._watch.stop()
        self.sock.close()
        self.sock = fresh
        self._receiver = self._receiver_for(fresh)
        self.socket_file.rebound()
        self.problem = None
        if self._loop is not None:
            self._watch = self._paced_watch(self._loop)
        log.info("%s: socket file re-created", self.label)
