"""``Emitter``: fire-and-forget events from an application to ``ingest serve``.

    from ingest.client import Emitter
    events = Emitter(unix="/run/ingest/ingest.sock")   # or Emitter(udp="127.0.0.1:5140")
    events.emit({"event": "signup", "user": 42})        # ~2-4 µs; never raises, never blocks

Contract: neither the constructor nor ``emit`` ever raises into the
application and nothing blocks. Each event is one datagram on a connected,
non-blocking socket; when it cannot be handed to the kernel it is dropped and
counted by reason (``stats()``). Delivery beyond the kernel is the daemon's job.

Imports nothing beyond orjson and the standard library, so a web worker pays
for neither grpc nor rich: this module must stay importable on its own.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

import orjson

log = logging.getLogger(__name__)

# Same value as ingest.config.DEFAULT_UNIX_PATH, duplicated on purpose:
# importing ingest.config would drag the daemon's settings machinery into
# every web worker. tests/test_client.py checks the two stay equal.
DEFAULT_UNIX_PATH = "/run/ingest/ingest.sock"
# The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP header bytes); it
# is also below the daemon's default --max-datagram-bytes (65535), so a
# datagram the client sends is never rejected whole by the daemon for size.
DEFAULT_MAX_DATAGRAM_BYTES = 65_507
# Reconnect backoff: the first retry comes soon (a restarting daemon is back
# within ~0.1-1 s), later ones are capped so a dead daemon costs at most one
# connect() every few seconds, not one per emit.
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0

# Drop reasons: a fixed vocabulary, like the daemon's metric labels.
QUEUE_FULL = "queue_full"  # EAGAIN: the receiver's queue (or our send buffer) is full
NO_SOCKET = "no_socket"  # ENOENT: no socket file at the path
REFUSED = "refused"  # ECONNREFUSED: nobody reads the socket / UDP port unreachable
NOT_CONNECTED = "not_connected"  # ENOTCONN: the daemon restarted under a connected socket
PERMISSION_DENIED = "permission_denied"  # EACCES/EPERM on the socket file
TOO_LARGE = "too_large"  # over max_datagram_bytes, or EMSGSIZE
UNSERIALIZABLE = "unserializable"  # orjson could not serialise the object
NOT_OBJECT = "not_object"  # not a dict (the daemon would reject it)
BAD_ADDRESS = "bad_address"  # the Emitter was constructed with an unusable address
CLOSED = "closed"  # emit() after close()
DISCONNECTED = "disconnected"  # waiting for the next reconnect attempt (backoff)
OTHER = "other"  # any other OSError from send()

_ERRNO_REASONS = {
    errno.ENOENT: NO_SOCKET,
    errno.ECONNREFUSED: REFUSED,
    errno.ENOTCONN: NOT_CONNECTED,
    errno.EACCES: PERMISSION_DENIED,
    errno.EPERM: PERMISSION_DENIED,
    errno.EMSGSIZE: TOO_LARGE,
}
# Errors that say nothing about the connection: the socket stays as it is.
# EAGAIN in particular means the daemon is alive but behind; reconnecting
# would only add syscalls to a burst that is already being dropped.
_KEEP_SOCKET = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EMSGSIZE, errno.ENOBUFS})

_dumps = orjson.dumps
_monotonic = time.monotonic
_getpid = os.getpid

# Every live Emitter, for the fork and exit hooks; weak so that an Emitter
# the application drops is collected (os.register_at_fork cannot unregister).
_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()


class Emitter:
    """Sends JSON events to ``ingest serve`` as datagrams.

    ``Emitter(unix=PATH)`` (default: the daemon's default path) or
    ``Emitter(udp="HOST:PORT")`` (``[V6]:PORT`` for IPv6; give a numeric
    address: a host name is resolved at connect time, which can block on DNS).

    ``emit(event)`` takes a dict (serialised with orjson) or ready JSON bytes
    (one object on one line). With ``batch=True`` events are packed as NDJSON,
    several per datagram up to ``max_datagram_bytes``; a batch is sent when the
    next event would not fit, on ``flush()``, on ``close()`` and at interpreter
    exit, so a batching web app should call ``flush()`` at the end of each
    request. Counts in ``stats()`` are per event in both modes.

    Thread-safe (one lock around the buffer and the socket) and fork-safe:
    after ``os.fork()`` the child starts with no socket, no pending batch and
    zero counters, and connects on its first emit; it never uses the parent's
    socket (gunicorn --preload creates the Emitter in the master).
    """

    def __init__(
        self,
        unix: str | None = None,
        udp: str | None = None,
        *,
        batch: bool = False,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._target = f"udp:{udp}" if udp is not None else f"unix:{unix or DEFAULT_UNIX_PATH}"
        self._family = socket.AF_UNIX
        self._address: Any = unix or DEFAULT_UNIX_PATH
        self._udp_host = ""
        self._bad_address = False
        if udp is not None:
            self._family = socket.AF_INET
            parsed = _parse_host_port(udp) if unix is None else None
            if parsed is None:
                # Never raise into the application: every emit is counted
                # as a bad_address drop, and this is logged once.
                log.error("ingest Emitter: unusable target unix=%r udp=%r", unix, udp)
                self._bad_address = True
            else:
                self._udp_host, port = parsed
                self._family = socket.AF_INET6 if ":" in self._udp_host else socket.AF_INET
                self._address = (self._udp_host, port)
        self._batch = batch
        self._max_bytes = max(1, max_datagram_bytes)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = max(backoff_initial_s, backoff_max_s)
        self._reset_state()
        _install_process_hooks()
        _emitters.add(self)

    def _reset_state(self) -> None:
        """Fresh per-process state: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._pid = _getpid()
        self._sock: socket.socket | None = None
        self._closed = False
        self._next_connect_at = 0.0  # monotonic; no reconnect before this
        self._backoff_s = self._backoff_initial_s
        self._down_reason = DISCONNECTED
        self._warned = False
        self._sent = 0
        self._datagrams = 0
        self._dropped: dict[str, int] = {}
        self._connects = 0
        self._connect_attempts = 0
        self._buf: list[bytes] = []
        self._buf_bytes = 0

    # ------------------------------------------------------------- hot path
    def emit(self, event: dict[str, Any] | bytes) -> None:
        """Send one event; never raises, never blocks (see the class contract)."""
        if type(event) is bytes:
            data = event
        elif isinstance(event, dict):
            try:
                data = _dumps(event)
            except TypeError:  # orjson.JSONEncodeError is a TypeError
                self._count_drop(UNSERIALIZABLE, 1)
                return
        elif isinstance(event, bytes | bytearray | memoryview):
            data = bytes(event)
        else:
            self._count_drop(NOT_OBJECT, 1)
            return
        if len(data) > self._max_bytes:
            self._count_drop(TOO_LARGE, 1)
            return
        with self._lock:
            if self._pid != _getpid():
                # A fork the at-fork hook did not see (it runs only for
                # os.fork() from Python): never touch the parent's socket.
                self._forked_locked()
            if self._batch:
                if self._closed:
                    self._dropped[CLOSED] = self._dropped.get(CLOSED, 0) + 1
                    return
                # _buf_bytes counts a joining newline per buffered event, so
                # the datagram after appending would be _buf_bytes + len(data).
                if self._buf_bytes + len(data) > self._max_bytes:
                    self._flush_locked()
                self._buf.append(data)
                self._buf_bytes += len(data) + 1
                return
            self._send_locked(data, 1)

    def _send_locked(self, data: bytes, events: int) -> None:
        sock = self._sock
        if sock is None:
            sock = self._connect_locked()
            if sock is None:
                self._dropped[self._down_reason] = self._dropped.get(self._down_reason, 0) + events
                return
        try:
            sock.send(data)
        except OSError as exc:
            self._send_failed_locked(exc, events)
            return
        self._sent += events
        self._datagrams += 1
        if self._backoff_s != self._backoff_initial_s:
            self._backoff_s = self._backoff_initial_s  # a send worked: the link is up

    # ------------------------------------------------------------ slow path
    def _send_failed_locked(self, exc: OSError, events: int) -> None:
        code = exc.errno or 0
        reason = QUEUE_FULL if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS) else None
        reason = reason or _ERRNO_REASONS.get(code, OTHER)
        self._dropped[reason] = self._dropped.get(reason, 0) + events
        if code in _KEEP_SOCKET:
            return
        # The daemon is gone or was restarted under us (a connected unix
        # socket stays ENOTCONN until it connects again): drop the socket and
        # reconnect after the backoff.
        self._disconnect_locked(reason, exc)

    def _connect_locked(self) -> socket.socket | None:
        if self._closed or self._bad_address:
            self._down_reason = CLOSED if self._closed else BAD_ADDRESS
            return None
        now = _monotonic()
        if now < self._next_connect_at:
            return None
        self._connect_attempts += 1
        sock: socket.socket | None = None
        try:
            address = self._address
            if self._family != socket.AF_UNIX and not _is_numeric(self._udp_host):
                info = socket.getaddrinfo(self._udp_host, address[1], type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                address = info[4]
            else:
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(address)
        except OSError as exc:
            if sock is not None:
                sock.close()
            reason = _ERRNO_REASONS.get(exc.errno or 0, OTHER)
            self._disconnect_locked(reason, exc)
            return None
        self._sock = sock
        self._connects += 1
        if self._warned:
            log.info("ingest Emitter: connected to %s again", self._target)
            self._warned = False
        return sock

    def _disconnect_locked(self, reason: str, exc: OSError) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._down_reason = reason
        self._next_connect_at = _monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        if not self._warned:  # once per outage, not once per event
            self._warned = True
            log.warning(
                "ingest Emitter: cannot send to %s (%s); dropping events, retrying with backoff",
                self._target,
                exc.strerror or exc,
            )

    def _flush_locked(self) -> None:
        if not self._buf:
            return
        events = len(self._buf)
        data = self._buf[0] if events == 1 else b"\n".join(self._buf)
        self._buf = []
        self._buf_bytes = 0
        self._send_locked(data, events)

    def _count_drop(self, reason: str, events: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + events

    def _forked_locked(self) -> None:
        # The inherited socket is shared with the parent: forget it (closing
        # our copy of the descriptor does not affect the parent's).
        sock = self._sock
        self._reset_state()
        if sock is not None:
            sock.close()

    def _after_fork_in_child(self) -> None:
        # Runs in the child right after os.fork(): another thread may have
        # held the lock at the moment of the fork, so _reset_state replaces
        # it rather than acquiring it.
        self._forked_locked()

    # ------------------------------------------------------------ public API
    def flush(self) -> None:
        """Send the pending batch now (no-op without ``batch=True``)."""
        with self._lock:
            if self._pid != _getpid():
                self._forked_locked()
            self._flush_locked()

    def close(self) -> None:
        """Flush, close the socket; later emits are dropped as ``closed``."""
        with self._lock:
            if self._pid == _getpid():
                self._flush_locked()
            else:
                self._forked_locked()
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        _emitters.discard(self)

    def stats(self) -> dict[str, Any]:
        """Counters of this process: ``sent`` and ``dropped`` are events,
        ``dropped_by_reason`` maps reason to events, ``pending`` is events in
        the unsent batch; ``datagrams``, ``connects`` (successful) and
        ``connect_attempts`` are for diagnosis."""
        with self._lock:
            if self._pid != _getpid():
                self._forked_locked()
            by_reason = dict(self._dropped)
            return {
                "sent": self._sent,
                "dropped": sum(by_reason.values()),
                "dropped_by_reason": by_reason,
                "pending": len(self._buf),
                "datagrams": self._datagrams,
                "connects": self._connects,
                "connect_attempts": self._connect_attempts,
            }

    def __repr__(self) -> str:
        return f"Emitter({self._target}, batch={self._batch})"


def _parse_host_port(raw: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[V6]:PORT``; None when unusable (never raises)."""
    text = raw.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            return None
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _is_numeric(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def _after_fork_in_child() -> None:
    for emitter in list(_emitters):
        emitter._after_fork_in_child()


def _flush_all_at_exit() -> None:
    for emitter in list(_emitters):
        if emitter._batch:
            emitter.flush()


_hooks_installed: set[int] = set()  # holds os.getpid() once registered (inherited by children)
_hooks_lock = threading.Lock()


def _install_process_hooks() -> None:
    """Register the fork and exit hooks once, with the first Emitter (not at
    import: importing a module must have no side effects)."""
    with _hooks_lock:
        if not _hooks_installed:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(_flush_all_at_exit)
            _hooks_installed.add(_getpid())
