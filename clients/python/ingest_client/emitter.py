"""``Emitter``: fire-and-forget events from an application to ``ingest serve``.

    from ingest_client import Emitter
    events = Emitter(unix="/run/ingest/ingest.sock")   # or Emitter(udp="127.0.0.1:5140")
    events.emit({"event": "signup", "user": 42})        # ~2-4 µs; never raises, never blocks

Contract: the constructor checks the address without any I/O and raises
``ValueError`` (``TypeError`` for one that is not a str) when it can never
work, so a wrong setting fails at startup; after that, ``emit``, ``flush``
and ``close`` never raise into the application and nothing blocks. Each event
is one datagram on a connected, non-blocking socket; when it cannot be handed
to the kernel it is dropped and counted by reason (``stats()``). Delivery
beyond the kernel is the daemon's job. Nothing the Emitter calls under its
lock can call back into it (it logs after releasing it), and a signal handler
or finalizer that calls it from inside one of its calls never waits (see
the class).

Imports nothing beyond the standard library, and orjson when it is
installed (the ``fast`` extra); without it, events are serialised with the
standard json module (see ``_json_dumps`` for how the two differ). The daemon
imports this module as ``ingest.client``, never the other way round.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import enum
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from ingest_client.address import (
    DEFAULT_UNIX_PATH,
    HOST_NAME_MAX_BYTES,
    UNIX_PATH_MAX_BYTES,
    check_unix_path,
    parse_host_port,
)

__all__ = [
    "BAD_ADDRESS",
    "CLOSED",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_UNIX_PATH",
    "DISCONNECTED",
    "HOST_NAME_MAX_BYTES",
    "JSON_LIBRARY",
    "NOT_CONNECTED",
    "NOT_OBJECT",
    "NO_SOCKET",
    "OTHER",
    "PERMISSION_DENIED",
    "QUEUE_FULL",
    "REENTRANT",
    "REFUSED",
    "TOO_LARGE",
    "UNIX_PATH_MAX_BYTES",
    "UNSERIALIZABLE",
    "Emitter",
]

# The name it has always logged under (as ingest.client), so a logging
# configuration written for it keeps matching.
log = logging.getLogger("ingest.client")

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
UNSERIALIZABLE = "unserializable"  # the dict could not be serialised as JSON
NOT_OBJECT = "not_object"  # not a dict (the daemon would reject it)
BAD_ADDRESS = "bad_address"  # the host name does not resolve (getaddrinfo failed)
CLOSED = "closed"  # emit() after close()
DISCONNECTED = "disconnected"  # waiting for the next reconnect attempt (backoff)
OTHER = "other"  # any other OSError from send()
# emit from a signal handler or a finalizer that ran inside one of this
# thread's Emitter calls, with no connected socket to send on at once:
# connecting would change what the interrupted call is changing, and waiting
# for it would wait for this very thread.
REENTRANT = "reentrant"

# What a re-entrant flush() or close() leaves for the call it interrupted.
FLUSH_REQUEST = "flush"
CLOSE_REQUEST = "close"
# At interpreter exit, the longest the exit flush waits for another thread's
# call to release the lock (a send takes microseconds; a host name lookup can
# take seconds): the exit must not hang on a thread that never returns.
EXIT_LOCK_WAIT_S = 1.0

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


def _json_default(obj: Any) -> Any:
    """The types orjson serialises natively and json does not, as orjson
    writes them; anything else is a TypeError (unserializable)."""
    kind = type(obj)  # never obj.__class__ (see Emitter.emit)
    if issubclass(kind, datetime.time) and obj.tzinfo is not None:
        raise TypeError("a time with a tzinfo is not serialisable (orjson refuses it too)")
    if issubclass(kind, datetime.date | datetime.time):  # datetime is a date
        return obj.isoformat()
    if issubclass(kind, enum.Enum):
        return obj.value
    # A UUID or a dataclass exists only where its module was imported: look
    # there rather than import uuid (~2 ms) and dataclasses (~7 ms) into
    # every web worker for events that may never hold one.
    uuid = sys.modules.get("uuid")
    if uuid is not None and issubclass(kind, uuid.UUID):
        return str(obj)
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None and dataclasses.is_dataclass(kind):
        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    raise TypeError(f"Type is not JSON serializable: {kind.__name__}")


_json_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
).encode


def _json_dumps(event: Any) -> bytes:
    """orjson.dumps's stand-in without orjson: compact UTF-8 JSON, and a
    TypeError for anything it cannot serialise, as orjson raises.

    The same bytes as orjson for str keys and str, int, bool, None, list,
    tuple, dict, datetime, date, time, UUID, Enum and dataclass values, in
    the same order; the same value, not always the same text, for floats
    (json writes 1e-07 where orjson writes 1e-7). Where the two differ, the
    event is still either valid JSON or counted as unserializable: json
    writes int, float, bool and None keys as strings (orjson refuses any key
    that is not a str), integers beyond 64 bits (orjson refuses them),
    nesting deeper than 254 (orjson refuses it) and a UTC offset's seconds
    (orjson rounds to minutes); it refuses NaN and Infinity, which orjson
    writes as null. clients/python/README.md has the table.
    """
    try:
        return _json_encode(event).encode()  # strict UTF-8: a lone surrogate fails here
    # Not only TypeError and ValueError: json calls application code orjson
    # never runs (a dict subclass's items(), a dataclass field's property),
    # and emit must not raise whatever that raises.
    except Exception as exc:  # noqa: BLE001 -- counted as unserializable, never raised
        raise TypeError(f"not serialisable as JSON: {exc!r}") from None


_dumps: Callable[[Any], bytes]
try:
    import orjson
except ImportError:
    JSON_LIBRARY = "json"
    _dumps = _json_dumps
else:
    JSON_LIBRARY = "orjson"
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
    address: a host name is resolved at connect time, which can block on DNS,
    and one that does not resolve is counted as ``bad_address``).

    The constructor raises ``ValueError`` for both ``unix`` and ``udp``, a NUL
    in either, a unix path that cannot be encoded as a file name or is over
    ``UNIX_PATH_MAX_BYTES`` encoded, a port outside 1-65535, a host the idna
    codec refuses (an empty label, one over 63 characters, a character IDNA
    does not allow), a name over ``HOST_NAME_MAX_BYTES`` or anything but an
    IPv6 address in brackets; ``TypeError`` for an address that is not a str.
    The rules are ``ingest_client.address``'s, which the daemon applies to
    its own settings too.

    ``emit(event)`` takes a dict (serialised with orjson, or with the json
    module where orjson is not installed: ``JSON_LIBRARY``) or ready JSON bytes
    (one object on one line). With ``batch=True`` events are packed as NDJSON,
    several per datagram up to ``max_datagram_bytes``; a batch is sent when the
    next event would not fit, on ``flush()``, on ``close()`` and at interpreter
    exit, so a batching web app should call ``flush()`` at the end of each
    request. Counts in ``stats()`` are per event in both modes.

    Thread-safe (one lock around the buffer and the socket, held for a
    non-blocking send, a connect, and a host name lookup where ``udp=``
    names one) and fork-safe: after ``os.fork()`` the child starts with no
    socket, no pending batch and zero counters, and connects on its first
    emit; it never uses the parent's socket (gunicorn --preload creates the
    Emitter in the master).

    Re-entrant: the Emitter calls nothing that can call back into it (its
    own warnings are logged after the lock is released, so a logging handler
    that ships records through this same Emitter works), and a call that
    re-enters it anyway from a signal handler or a finalizer (``__del__``, a
    weakref callback) running inside one of its calls on the same thread
    never waits: ``emit`` sends the event at once on the connected socket
    (a failed send is counted by its reason) or, with none, counts it as
    ``reentrant``; ``flush`` and ``close`` run when the interrupted call
    returns; ``stats`` answers.
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
        # Everything the socket module would refuse with something other
        # than OSError is refused here, once, so connect() meets only OSError.
        if unix is not None and udp is not None:
            raise ValueError("Emitter: give unix= or udp=, not both")
        self._family = socket.AF_UNIX
        self._resolve = False  # the host is a name: getaddrinfo at connect time
        self._address: str | tuple[str, int]
        if udp is None:
            self._address = _unix_path(unix)
            self._target = f"unix:{self._address}"
        else:
            host, port = _host_port(udp)
            self._resolve = not _is_numeric(host)
            self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._address = (host, port)
            self._target = f"udp:{udp}"
        self._batch = batch
        self._max_bytes = max(1, max_datagram_bytes)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = max(backoff_initial_s, backoff_max_s)
        self._new_lock()
        self._reset_state()
        _install_process_hooks()
        _emitters.add(self)

    def _new_lock(self) -> None:
        # An RLock, so that a signal handler or a finalizer that runs on the
        # thread holding it gets in without waiting (a Lock would deadlock
        # that thread). Getting in is not permission to change state: _busy,
        # set and cleared only under the lock, says a call is between its
        # first and last change, and a call that finds it set touches none of
        # the state that call is changing (see _emit_reentered). The RLock
        # records its owner inside acquire(), atomically; an owner field kept
        # beside a Lock would be unset for a moment after acquire() returns,
        # which is exactly where a signal handler runs.
        self._lock = threading.RLock()
        self._busy = False

    def _reset_state(self) -> None:
        """Fresh per-process state: at construction and in a forked child."""
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
        # Work for after the lock is released (_follow_up): log records
        # (logging runs application handlers, which may emit) and the flush
        # or close a re-entrant call asked for. _followup says there is some,
        # so the hot path tests one attribute.
        self._notes: list[tuple[int, str, tuple[object, ...]]] = []
        self._requests: list[str] = []
        self._followup = False
        # Written only by re-entrant calls, never by the call they
        # interrupted, whose read-modify-write of _sent or _dropped they
        # would otherwise undo: a count (+= on an int runs no code between
        # its read and its write, so no handler can split it) and the drops,
        # by reason, which _follow_up adds to _dropped.
        self._reentered_sent = 0
        self._reentered_drops: list[str] = []

    # ------------------------------------------------------------- hot path
    def emit(self, event: dict[str, Any] | bytes) -> None:
        """Send one event; never raises, never blocks (see the class contract)."""
        # Types are tested on type(event), never with isinstance: that falls
        # back to the object's __class__, which a proxy (Django's
        # SimpleLazyObject) computes by running application code.
        if type(event) is bytes:
            data = event
        elif type(event) is dict or issubclass(type(event), dict):
            try:
                data = _dumps(event)
            except TypeError:  # orjson.JSONEncodeError is one; _json_dumps raises one
                self._count_drop(UNSERIALIZABLE)
                return
        elif issubclass(type(event), bytes | bytearray | memoryview):
            try:
                # The buffer, not bytes(event): that would run a subclass's
                # __bytes__. A released memoryview has none (ValueError).
                data = memoryview(cast(bytes, event)).tobytes()
            except ValueError:
                self._count_drop(UNSERIALIZABLE)
                return
        else:
            self._count_drop(NOT_OBJECT)
            return
        if len(data) > self._max_bytes:
            self._count_drop(TOO_LARGE)
            return
        with self._lock:
            if self._busy:
                self._emit_reentered(data)
                return
            self._busy = True
            try:
                if self._pid != _getpid():
                    # A fork the at-fork hook did not see (it runs only for
                    # os.fork() from Python): never touch the parent's socket.
                    self._forked_locked()
                if not self._batch:
                    self._send_locked(data, 1)
                elif self._closed:
                    self._dropped[CLOSED] = self._dropped.get(CLOSED, 0) + 1
                else:
                    # _buf_bytes counts a joining newline per buffered event, so
                    # the datagram after appending would be _buf_bytes + len(data).
                    if self._buf_bytes + len(data) > self._max_bytes:
                        self._flush_locked()
                    self._buf.append(data)
                    self._buf_bytes += len(data) + 1
            finally:
                self._busy = False
        if self._followup:
            self._follow_up()

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
    def _emit_reentered(self, data: bytes) -> None:
        """emit from a signal handler or finalizer that runs inside one of
        this thread's calls, between its first and last change of state: it
        must not wait (the lock is this thread's) and must not write what
        the interrupted call may be half-way through writing. A datagram on
        the connected socket is safe: the kernel takes each send whole, even
        one made between the interrupted call's own send and its retry after
        EINTR (where CPython runs signal handlers). Connecting is not: it
        changes the socket and backoff state the interrupted call may be
        changing, so without a socket the event is dropped."""
        if self._closed:
            self._drop_reentered(CLOSED)
            return
        sock = self._sock
        if sock is None or self._pid != _getpid():
            self._drop_reentered(REENTRANT)
            return
        try:
            sock.send(data)
        # The socket is left as it is (the interrupted call may be using
        # it); the next ordinary call meets the same error and acts on it.
        except OSError as exc:
            self._drop_reentered(_send_error_reason(exc))
            return
        self._reentered_sent += 1

    def _drop_reentered(self, reason: str) -> None:
        self._reentered_drops.append(reason)  # one C call: no handler can split it
        self._followup = True  # _follow_up adds it to _dropped

    def _send_failed_locked(self, exc: OSError, events: int) -> None:
        reason = _send_error_reason(exc)
        self._dropped[reason] = self._dropped.get(reason, 0) + events
        if (exc.errno or 0) in _KEEP_SOCKET:
            return
        # The daemon is gone or was restarted under us (a connected unix
        # socket stays ENOTCONN until it connects again): drop the socket and
        # reconnect after the backoff.
        self._disconnect_locked(reason, exc)

    def _connect_locked(self) -> socket.socket | None:
        if self._closed:
            self._down_reason = CLOSED
            return None
        now = _monotonic()
        if now < self._next_connect_at:
            return None
        self._connect_attempts += 1
        sock: socket.socket | None = None
        try:
            address: Any = self._address
            if self._resolve:
                host, port = address
                info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                address = info[4]
            else:
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(address)
        # ValueError (UnicodeError): the constructor's checks mirror what
        # this Python's socket module refuses; should another encode names
        # more strictly, the event is still counted, never raised.
        except (OSError, ValueError) as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, socket.gaierror) or not isinstance(exc, OSError):
                reason = BAD_ADDRESS
            else:
                reason = _ERRNO_REASONS.get(exc.errno or 0, OTHER)
            self._disconnect_locked(reason, exc)
            return None
        self._sock = sock
        self._connects += 1
        if self._warned:
            self._note(logging.INFO, "ingest Emitter: connected to %s again", self._target)
            self._warned = False
        return sock

    def _disconnect_locked(self, reason: str, exc: OSError | ValueError) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._down_reason = reason
        self._next_connect_at = _monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        if not self._warned:  # once per outage, not once per event
            self._warned = True
            self._note(
                logging.WARNING,
                "ingest Emitter: cannot send to %s (%s); dropping events, retrying with backoff",
                self._target,
                (exc.strerror if isinstance(exc, OSError) else None) or exc,
            )

    def _note(self, level: int, msg: str, *args: object) -> None:
        """A log record for _follow_up to log once the lock is released: a
        handler may emit through this Emitter (log shipping), and logging
        under the lock would make that emit find it taken."""
        self._notes.append((level, msg, args))
        self._followup = True

    def _request(self, what: str) -> None:
        """flush or close from a re-entrant call: done by _follow_up when
        the interrupted call returns, since the batch or socket they would
        touch is the one that call is in the middle of changing."""
        self._requests.append(what)  # one C call: safe even if re-entered again
        self._followup = True

    def _follow_up(self, timeout_s: float = -1) -> None:
        """Log the notes and run the requests, outside the lock."""
        if not self._lock.acquire(timeout=timeout_s):
            return  # at exit only (see _flush_all_at_exit); the work is dropped with the process
        try:
            if self._busy:
                return  # a re-entrant call: the interrupted one follows up when it returns
            self._busy = True  # _dropped changes: a re-entrant call keeps off it
            try:
                # Each list is swapped, not cleared: a re-entrant call that
                # appends in between appends to the list taken here.
                self._followup = False
                notes, self._notes = self._notes, []
                requests, self._requests = self._requests, []
                drops, self._reentered_drops = self._reentered_drops, []
                for reason in drops:
                    self._dropped[reason] = self._dropped.get(reason, 0) + 1
            finally:
                self._busy = False
        finally:
            self._lock.release()
        for level, msg, args in notes:
            # A filter or handler of the application's that raises: emit
            # never raises, and this logger is where it would be reported.
            with contextlib.suppress(Exception):
                log.log(level, msg, *args)
        if CLOSE_REQUEST in requests:
            self._close(timeout_s)
        elif requests:
            self._flush(timeout_s)

    def _flush_locked(self) -> None:
        if not self._buf:
            return
        events = len(self._buf)
        data = self._buf[0] if events == 1 else b"\n".join(self._buf)
        self._buf = []
        self._buf_bytes = 0
        self._send_locked(data, events)

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            if self._busy:
                self._drop_reentered(reason)
                return
            self._busy = True
            try:
                self._dropped[reason] = self._dropped.get(reason, 0) + 1
            finally:
                self._busy = False
        if self._followup:  # a flush or close a re-entrant call asked for meanwhile
            self._follow_up()

    def _forked_locked(self) -> None:
        # The inherited socket is shared with the parent: forget it (closing
        # our copy of the descriptor does not affect the parent's).
        sock = self._sock
        self._reset_state()
        if sock is not None:
            sock.close()

    def _after_fork_in_child(self) -> None:
        # Runs in the child right after os.fork(): another thread may have
        # held the lock at the moment of the fork, so it is replaced rather
        # than acquired.
        self._new_lock()
        self._forked_locked()

    # ------------------------------------------------------------ public API
    def flush(self) -> None:
        """Send the pending batch now (no-op without ``batch=True``)."""
        self._flush()

    def _flush(self, timeout_s: float = -1) -> bool:
        """flush(); False when the lock was not had within timeout_s (at
        exit only: see _flush_all_at_exit)."""
        if not self._lock.acquire(timeout=timeout_s):
            return False
        try:
            if self._busy:
                self._request(FLUSH_REQUEST)
                return True
            self._busy = True
            try:
                if self._pid != _getpid():
                    self._forked_locked()
                self._flush_locked()
            finally:
                self._busy = False
        finally:
            self._lock.release()
        if self._followup:
            self._follow_up(timeout_s)
        return True

    def close(self) -> None:
        """Flush, close the socket; later emits are dropped as ``closed``."""
        self._close()

    def _close(self, timeout_s: float = -1) -> None:
        if not self._lock.acquire(timeout=timeout_s):
            return  # at exit only (see _flush_all_at_exit)
        try:
            if self._busy:
                self._request(CLOSE_REQUEST)
                return
            self._busy = True
            try:
                if self._pid == _getpid():
                    self._flush_locked()
                else:
                    self._forked_locked()
                self._closed = True
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            finally:
                self._busy = False
        finally:
            self._lock.release()
        _emitters.discard(self)
        if self._followup:
            self._follow_up(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters of this process: ``sent`` and ``dropped`` are events,
        ``dropped_by_reason`` maps reason to events, ``pending`` is events in
        the unsent batch; ``datagrams``, ``connects`` (successful) and
        ``connect_attempts`` are for diagnosis."""
        with self._lock:
            if self._pid != _getpid() and not self._busy:
                self._busy = True
                try:
                    self._forked_locked()
                finally:
                    self._busy = False
            # Read only: a re-entrant call may read while the call it
            # interrupted is mid-change (each read is of a whole value).
            by_reason = dict(self._dropped)
            for reason in list(self._reentered_drops):  # not yet added by _follow_up
                by_reason[reason] = by_reason.get(reason, 0) + 1
            return {
                "sent": self._sent + self._reentered_sent,
                "dropped": sum(by_reason.values()),
                "dropped_by_reason": by_reason,
                "pending": len(self._buf),
                "datagrams": self._datagrams + self._reentered_sent,
                "connects": self._connects,
                "connect_attempts": self._connect_attempts,
            }

    def __repr__(self) -> str:
        return f"Emitter({self._target}, batch={self._batch})"


def _send_error_reason(exc: OSError) -> str:
    code = exc.errno or 0
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
        return QUEUE_FULL
    return _ERRNO_REASONS.get(code, OTHER)


def _unix_path(path: str | None) -> str:
    """The socket path to connect to (None or "" is the daemon's default);
    ValueError/TypeError when no socket can ever be at it."""
    if path is None:
        return DEFAULT_UNIX_PATH
    if not isinstance(path, str):
        raise TypeError(f"Emitter: unix= takes a str path, not {type(path).__name__}")
    if not path:
        return DEFAULT_UNIX_PATH
    try:
        check_unix_path(path)
    except ValueError as exc:
        raise ValueError(f"Emitter: bad unix= path: {exc}") from None
    return path


def _host_port(raw: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; ValueError/TypeError when the socket
    module would refuse it (it would raise UnicodeError or ValueError from
    connect() rather than OSError), or it can never be a destination."""
    if not isinstance(raw, str):
        raise TypeError(f"Emitter: udp= takes a str HOST:PORT, not {type(raw).__name__}")
    try:
        return parse_host_port(raw, min_port=1)
    except ValueError as exc:
        raise ValueError(f"Emitter: bad udp= address: {exc}") from None


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
        # Twice: the first flush may log (an outage, a reconnection), and a
        # handler that ships records through this Emitter batches them. Not
        # again after a wait that timed out: one wait per Emitter.
        if emitter._batch and emitter._flush(EXIT_LOCK_WAIT_S):
            emitter._flush(EXIT_LOCK_WAIT_S)


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
