"""Datagram endpoints: binding sockets and the drain callback (the hot path).

asyncio's stdlib DatagramProtocol manages ~20k datagrams/s here (it
recvfrom()s 256 KiB per datagram); an ``add_reader`` callback that drains a
non-blocking socket until EAGAIN measured 290-300k/s with validation and
queueing, on the 2-core development machine. Per wake-up: one list of events, one queue put,
counters updated once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence

from ingest.config import INPUT_FORMATS, SENDER_ATTRIBUTES, ConfigError, IPNetwork, Listener
from ingest.pipeline.message import MessageBuilder
from ingest.pipeline.queue import Intake
from ingest.publish.pubsub import encode_attribute
from ingest.ratelimit import LogLimiter
from ingest.receive.codec import (
    Decoder,
    count_events,
    decode_datagram,
)
from ingest.receive.dialects import GELF, JSON, UNKNOWN, Dialects
from ingest.receive.pacing import PacedWatch
from ingest.receive.tapped import Hub, TappedWakeUp
from ingest.stats import Stats
from ingest.vocabulary import Ignore, Reject

log = logging.getLogger(__name__)

# One wake-up's budget, checked as each datagram is handled, so that one busy
# socket cannot starve the others, the publishers or /healthz: at most
# DRAIN_BATCH datagrams, WAKEUP_MAX_EVENTS events, WAKEUP_MAX_BYTES bytes
# received and WAKEUP_MAX_BYTES bytes the decoders wrote (codec.Built), plus
# the one datagram that crosses a bound (which writes at most
# codec.MAX_DECODED_BYTES). A budget in datagrams alone would let one wake-up
# hold 256 x 21,835 events (a 64 KiB datagram of "{}\n" lines): seconds of
# work and hundreds of MiB before the queue's bounds are even consulted; one
# in bytes received alone would let three statsd datagrams write a GiB.
DRAIN_BATCH = 256
WAKEUP_MAX_EVENTS = 8192
WAKEUP_MAX_BYTES = 1 << 20
# Only datagrams above this size count against WAKEUP_MAX_BYTES (and only
# datagrams of several lines against WAKEUP_MAX_EVENTS), which keeps the
# common small single-event datagram free of bookkeeping: DRAIN_BATCH of these
# stay under 512 KiB, so the byte bound still holds, at worst doubled.
SMALL_DATAGRAM_BYTES = 2048
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # <asm-generic/socket.h>; not in Python
FINAL_DRAIN_MAX_S = 2.0  # the final drain at shutdown, all sockets together
REBIND_DRAIN_MAX_S = 0.05  # what a replaced socket still holds: a stall must stay short
# struct ucred (man 7 unix): pid_t pid; uid_t uid; gid_t gid, native ints.
UCRED = struct.Struct("iII")
# Room for the credentials and nothing more: file descriptors a sender
# attaches (SCM_RIGHTS) find none, and the kernel closes them instead of
# installing them in the daemon.
CREDENTIALS_SPACE = socket.CMSG_SPACE(UCRED.size)
PID_KEY, UID_KEY, GID_KEY = (key.encode() for key in SENDER_ATTRIBUTES)
# A control message as recvmsg returns it: (level, type, data).
Cmsg = tuple[int, int, bytes]


class _DeniedBurst(Exception):
    """A wake-up's worth of datagrams from senders outside the allow-list."""


def bind_udp(listener: Listener, rcvbuf_bytes: int) -> socket.socket:
    """Bind a non-blocking UDP socket; ConfigError names --udp on failure."""
    try:
        infos = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError("--udp", f"{listener.label}: cannot resolve: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        granted = set_rcvbuf(sock, rcvbuf_bytes)
        if granted < rcvbuf_bytes:
            log.warning(
                "%s: kernel granted SO_RCVBUF %d bytes of the %d asked; bursts may be "
                "dropped by the kernel. Fix: sysctl -w net.core.rmem_max=%d",
                listener.label,
                granted,
                rcvbuf_bytes,
                rcvbuf_bytes,
            )
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("--udp", f"{listener.label}: cannot bind: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer; returns what the kernel granted.

    SO_RCVBUF is capped at net.core.rmem_max; with CAP_NET_ADMIN (root, or
    AmbientCapabilities= under systemd) SO_RCVBUFFORCE is not, as systemd's own
    ReceiveBuffer= does. Without the capability it fails and the cap stands."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    # Linux reports double the usable size it granted (man 7 socket).
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < size:
        with contextlib.suppress(PermissionError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    return int(granted)


def bind_unix(
    listener: Listener, mode: int, gid: int | None = None, *, credentials: bool = False
) -> socket.socket:
    """Bind a unix datagram socket, replacing a stale socket file; its mode
    (and group, when ``gid`` is given) decide who may send. ``credentials``:
    SO_PASSCRED is set before the socket can receive, so that every datagram
    carries its sender's credentials (see Senders).

    A file that is not a socket, or a socket someone still listens on, is an
    error rather than something to delete.
    """
    path = listener.path
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError("--unix", f"{path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("--unix", f"{path}: directory {directory} is not writable")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if credentials:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:
        sock.bind(path)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise ConfigError("--unix", f"{path}: cannot bind: {exc.strerror}") from None
    if gid is not None:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            sock.close()
            os.unlink(path)
            raise ConfigError(
                "--unix-group", f"{path}: cannot set group {gid}: {exc.strerror}"
            ) from None
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError("--unix", f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: nobody is reading it
        log.info("removed stale socket file %s", path)
        return
    except OSError as exc:
        raise ConfigError(
            "--unix", f"{path}: cannot probe existing socket: {exc.strerror}"
        ) from None
    finally:
        probe.close()
    raise ConfigError("--unix", f"{path} is in use by another process")


class AllowList:
    """Which UDP senders may send (--udp-allow). An IPv4 network also admits
    its IPv4-mapped IPv6 senders (::ffff:a.b.c.d on a dual-stack socket).
    Verdicts are cached per sender address; the cache is bounded, since
    denied senders choose their own addresses."""

    MAX_CACHED = 4096

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        nets: list[IPNetwork] = list(networks)
        for net in networks:
            if isinstance(net, ipaddress.IPv4Network):
                mapped = f"::ffff:{net.network_address}/{96 + net.prefixlen}"
                nets.append(ipaddress.IPv6Network(mapped))
        self.networks = tuple(nets)
        self.verdicts: dict[str, bool] = {}

    def decide(self, host: str) -> bool:
        """Whether ``host`` (as recvfrom reports it) is allowed; cached."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])  # no IPv6 scope
        except ValueError:
            allowed = False
        else:
            allowed = any(address in net for net in self.networks)
        if len(self.verdicts) >= self.MAX_CACHED:
            self.verdicts.clear()
        self.verdicts[host] = allowed
        return allowed


def _overflow_id(name: str) -> int:
    """The id the kernel reports for one it cannot map (overflowuid,
    overflowgid): what it gives for a sender it never recorded."""
    try:
        with open(f"/proc/sys/kernel/{name}") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 65534  # the kernel's default


class Senders:
    """Who sent each unix datagram (--unix-credentials), as the kernel says.

    With SO_PASSCRED set, each datagram comes with an SCM_CREDENTIALS record
    the kernel took from the sending process at send time: its pid, uid and
    gid (the effective ones; not its supplementary groups). A sender cannot
    forge it: one that attaches a record of its own is checked by the kernel
    (its own pid; its real, effective or saved uid and gid), unless it holds
    CAP_SYS_ADMIN, CAP_SETUID or CAP_SETGID, which could become whoever it
    claims anyway. Nor can the JSON it sends: these attributes come from the
    record, and the configuration lets no other attribute use their keys.

    A record maps to a verdict, cached per record (pid, uid, gid), so that a
    datagram costs one dict lookup: the attribute entries its messages get
    (pubsub.encode_attribute, decimal text) and whether ``allow_uids``
    admits the sender (empty: everyone). The cache is bounded, since every
    new process is a new pid.

    A datagram whose sender the kernel cannot tell is *unknown*: published
    without sender attributes, rather than with the overflow ids it reports
    (they would read as user nobody), and denied by an allow-list. That is a
    datagram queued before SO_PASSCRED was set -- the kernel reports pid 0
    and the overflow uid and gid, e.g. for senders that wrote to a socket
    systemd created without PassCredentials=yes before the daemon started --
    or a record missing or cut short. A sender outside the daemon's pid
    namespace has a uid but reads as pid 0: its messages get no sender_pid.
    """

    MAX_CACHED = 4096

    def __init__(self, allow_uids: Sequence[int]) -> None:
        self.allow_uids = frozenset(allow_uids)
        self.verdicts: dict[Cmsg | None, tuple[bytes, bool]] = {}
        self._unrecorded = (0, _overflow_id("overflowuid"), _overflow_id("overflowgid"))

    def ids(self, cmsg: Cmsg | None) -> tuple[int, int, int] | None:
        """(pid, uid, gid) of a datagram's first control message, or None
        when the kernel could not tell who sent it."""
        if cmsg is None:
            return None
        level, kind, record = cmsg
        if level != socket.SOL_SOCKET or kind != socket.SCM_CREDENTIALS:
            return None
        if len(record) != UCRED.size:
            return None
        pid, uid, gid = UCRED.unpack(record)
        if (pid, uid, gid) == self._unrecorded:
            return None
        return pid, uid, gid

    def learn(self, cmsg: Cmsg | None) -> tuple[bytes, bool]:
        """The verdict on a record not in the cache: (attribute entries,
        allowed); cached."""
        if len(self.verdicts) >= self.MAX_CACHED:
            self.verdicts.clear()
        ids = self.ids(cmsg)
        if ids is None:
            verdict = (b"", not self.allow_uids)
        else:
            pid, uid, gid = ids
            named = [(UID_KEY, uid), (GID_KEY, gid)]
            if pid:  # 0: not a process the daemon's pid namespace can see
                named.insert(0, (PID_KEY, pid))
            entries = b"".join(encode_attribute(key, b"%d" % value) for key, value in named)
            verdict = (entries, not self.allow_uids or uid in self.allow_uids)
        self.verdicts[cmsg] = verdict
        return verdict

    def describe(self, cmsg: Cmsg | None) -> str:
        """The sender, for a log line."""
        ids = self.ids(cmsg)
        if ids is None:
            return "an unknown sender (the kernel recorded no credentials)"
        pid, uid, gid = ids
        return f"uid {uid} (pid {pid}, gid {gid})"


class SocketFile:
    """A unix listener's socket file, as the daemon bound it: its identity
    (device, inode), to notice the file removed or replaced while we run,
    and to remove at the end only a file that is still ours."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity = self.current()

    def current(self) -> tuple[int, int] | None:
        """The (device, inode) at the path now; None: nothing there."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def replaced(self) -> bool:
        """The file at the path is not the one we bound (or is gone)."""
        return self.current() != self.identity

    def rebound(self) -> None:
        """A fresh socket was bound at the path: it is ours now."""
        self.identity = self.current()

    def unlink_if_ours(self) -> None:
        # Another daemon may have replaced the file since; remove only ours.
        try:
            if self.current() == self.identity and self.identity is not None:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", self.path, exc.strerror)


class DatagramSource:
    """One bound socket and its drain callback. Never blocks, never awaits.

    One drain loop serves every source; only its receive call differs: with
    an allow-list a UDP source reads with recvfrom and checks the sender
    (``_allowed_receiver``); with ``credentials`` a unix source reads with
    recvmsg and learns the sender (``_credentials_receiver``); otherwise it
    calls the socket's plain recv, so the common path pays nothing for
    either. ``adopted``: the socket was passed by systemd, which owns it —
    never unlinked, chmodded or re-created here.

    ``credentials`` (unix sources): the builder that ``decode`` builds with,
    whose ``sender`` is set to each datagram's sender attributes before the
    datagram is decoded (Senders); None: off. ``allow_uids``: only these
    uids' datagrams are decoded, the others rejected (``sender_denied``);
    empty: every sender. It needs ``credentials``.
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
        credentials: MessageBuilder | None = None,
        allow_uids: Sequence[int] = (),
        tap: Hub | None = None,
    ) -> None:
        if allow_uids and credentials is None:
            # Ignoring it would silently admit every uid.
            raise ValueError("allow_uids needs credentials: the uid comes with them")
        self.listener = listener
        self.label = listener.label
        self.sock = sock
        self.adopted = adopted
        self.allow = AllowList(allow) if allow and listener.kind == "udp" else None
        self._credentials = credentials if listener.kind == "unix" else None
        self.senders = Senders(allow_uids) if self._credentials is not None else None
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
        self._count: Callable[[bytes], int] = (
            dialects.count if dialects is not None else count_events
        )
        # With dialects, theirs decodes JSON too: with metadata it counts what
        # it builds (Dialects.built), which ``decode`` does not.
        if dialects is not None:
            self._decode = dialects.decode_json if JSON in dialects.formats else dialects.decode
        self.tap = tap
        self._limiter = LogLimiter()
        self._denied = 0  # this wake-up's datagrams from senders outside the allow-list
        self._denied_reason = (
            Reject.SENDER_DENIED if self.senders is not None else Reject.SOURCE_DENIED
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: PacedWatch | None = None  # the loop's watch of the socket, once started
        self.last_datagrams = 0  # what the last drain read (read pacing)
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
        # unix path is bound anew): allow-list and credentials are fixed for
        # a source's life (a reload builds new readers). Only a tap, which
        # attaches at any moment, picks its own per wake-up.
        self._receive = self._receiver()

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
        self._watch = PacedWatch(loop, self.sock.fileno(), self._paced_drain)

    def _paced_drain(self) -> tuple[int, bool]:
        """The loop's callback: a drain, and what pacing.PacedWatch needs of it."""
        more = self.drain()
        return self.last_datagrams, more

    def drain(self) -> bool:
        """Read until EAGAIN or the wake-up budget; True when the budget
        stopped it (the socket may hold more). The loop's callback.

        The queue's room is read before decoding: once a wake-up has produced
        as many events as the queue can keep, further datagrams are counted
        (``queue_full``, one per non-blank line) without being decoded, so
        overload costs the least work exactly when the daemon is behind."""
        events: list[bytes] = []
        stats = self._stats
        rejected = stats.rejected
        # The receive strategy chosen for this socket (_receiver). While a
        # tap is connected: a sample of each datagram's outcome (tapped.py),
        # with receivers of its own that also note each sender.
        tap = self.tap
        tapped = TappedWakeUp(tap, self.label, self.dialects) if tap and tap.active else None
        recv = self._receive if tapped is None else self._receiver(tapped)
        limit = self._max_bytes + 1  # one byte more than allowed reveals oversize
        max_bytes = self._max_bytes
        decode, other, count_full = self._decode, self._other, self._count
        built = self.dialects.built if self.dialects is not None else None
        if tapped is not None:
            decode, other, count_full = tapped.decoders(decode, other, count_full)
        room = self._queue.room()
        # A wake-up ends with at most WAKEUP_MAX_EVENTS + DRAIN_BATCH + limit
        # events (no datagram holds more than ``limit``): with this much room
        # the budget stops it first, and the per-datagram check is moot.
        roomy = room >= WAKEUP_MAX_EVENTS + DRAIN_BATCH + limit
        max_events, max_read = WAKEUP_MAX_EVENTS, WAKEUP_MAX_BYTES
        small = min(SMALL_DATAGRAM_BYTES, max_bytes)  # oversize is checked on this path
        more = False
        datagrams = received = empty = full = nread = unknown = 0
        for _ in range(DRAIN_BATCH):
            try:
                data = recv(limit)
            except (BlockingIOError, InterruptedError):
                break
            except _DeniedBurst:
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
                    count = decode(data, events, rejected)
                else:
                    count = other(data, events, rejected)
                    if built is not None and built.bytes >= max_read:
                        more = True  # what the dialects wrote counts as read
            else:
                count = count_full(data)
                full += count
            received += count
            if count != 1:  # blank, or several lines: the rare paths
                if not count:
                    empty += 1
                elif received >= max_events or (built is not None and built.bytes >= max_read):
                    more = True  # with metadata, messages of many JSON lines count too
            if more:
                break
        else:
            more = True
        self.last_datagrams = datagrams
        if datagrams or self._denied:
            self._settle(datagrams, received, events, empty=empty, full=full, unknown=unknown)
        return more

    def _receiver(self, tapped: TappedWakeUp | None = None) -> Callable[[int], bytes]:
        """The drain loop's receive call: the plain ``recv``, the
        allow-list's, which skips and counts denied senders, or the
        credentials', which also sets each datagram's sender. ``tapped``:
        its receivers also note each sender for a tap."""
        if self.allow is not None:
            return self._allowed_receiver(tapped)
        if self.senders is not None:
            return self._credentials_receiver(tapped)
        if tapped is not None and self.kind == "udp":
            return tapped.addressed_receiver(self.sock)
        return self.sock.recv

    def _allowed_receiver(self, tapped: TappedWakeUp | None = None) -> Callable[[int], bytes]:
        """``recv`` for a source with an allow-list, built once per socket:
        it returns the next datagram from an allowed sender. One from outside
        the list counts as one event received and rejected (``source_denied``,
        added up in ``_settle``) and is never decoded; DRAIN_BATCH of them end
        the wake-up (_DeniedBurst) like any other budget. ``tapped``: it also
        notes each sender for a tap."""
        assert self.allow is not None
        verdicts = self.allow.verdicts.get
        decide = self.allow.decide
        recvfrom = self.sock.recvfrom

        def receive(limit: int) -> bytes:
            while True:
                data, address = recvfrom(limit)
                allowed = verdicts(address[0])
                if allowed is None:
                    allowed = decide(address[0])
                if allowed:
                    if tapped is not None:
                        tapped.sender = f"{address[0]}:{address[1]}"
                    return data
                self._count_denied()

        return receive

    def _credentials_receiver(self, tapped: TappedWakeUp | None = None) -> Callable[[int], bytes]:
        """``recv`` for a unix source with credentials, built once per
        socket: it returns the next datagram of an allowed sender, having set
        the builder's ``sender`` to that sender's attributes. One denied is
        logged (rate-limited) and counted like ``_allowed_receiver``'s, as
        ``sender_denied``.

        MSG_CTRUNC is no cause for doubt: with room for the credentials only,
        it means the sender attached more (file descriptors, which the kernel
        closes). The credentials, written first, are whole; a record cut
        short would be unknown (Senders)."""
        assert self.senders is not None and self._credentials is not None
        senders = self.senders
        builder = self._credentials
        verdicts = senders.verdicts.get
        learn = senders.learn
        recvmsg = self.sock.recvmsg

        def receive(limit: int) -> bytes:
            while True:
                data, ancdata, _, _ = recvmsg(limit, CREDENTIALS_SPACE)
                cmsg = ancdata[0] if ancdata else None
                entries, allowed = verdicts(cmsg) or learn(cmsg)
                if allowed:
                    builder.sender = entries
                    if tapped is not None:
                        tapped.sender = senders.describe(cmsg)
                    return data
                self._limiter.log(
                    log,
                    "sender-denied",
                    logging.WARNING,
                    "%s: denied a datagram from %s: not in --unix-allow-uid",
                    self.label,
                    senders.describe(cmsg),
                )
                self._count_denied()

        return receive

    def _count_denied(self) -> None:
        """One more datagram of a denied sender; DRAIN_BATCH of them end the
        wake-up (_DeniedBurst), since reading them is work too."""
        self._denied += 1
        if self._denied >= DRAIN_BATCH:
            raise _DeniedBurst

    def _receive_failed(self, exc: OSError) -> None:
        self._stats.receive_errors += 1
        self._limiter.log(log, "recv", logging.WARNING, "%s: receive failed: %s", self.label, exc)

    def _settle(
        self,
        datagrams: int,
        received: int,
        events: list[bytes],
        *,
        empty: int,
        full: int,
        unknown: int,
    ) -> None:
        """Once per wake-up: the counters, and one queue put for all events."""
        stats = self._stats
        if self._denied:  # each a datagram and an event, received and rejected
            stats.rejected[self._denied_reason] += self._denied
            datagrams += self._denied
            received += self._denied
            unknown += self._denied
            self._denied = 0
        if unknown:
            stats.events_by_format[(self.label, UNKNOWN)] += unknown
        if self.dialects is not None:
            empty -= self.dialects.absorbed  # chunks: part of a message, not empty
            self.dialects.take_counts()
        stats.datagrams_received[self.label] += datagrams
        stats.events_received[self.label] += received
        if empty:
            stats.datagrams_ignored[Ignore.EMPTY] += empty
        if full:
            self._queue.drop_full(full)
        if events:
            assert self._loop is not None
            self._queue.put(events, self._loop.time())

    def drain_until_empty(self, max_s: float = FINAL_DRAIN_MAX_S) -> None:
        """Read what the kernel already queued (shutdown, socket re-creation):
        until EAGAIN, or for at most ``max_s`` -- senders flooding faster than
        we read must not hold a shutdown hostage."""
        deadline = time.monotonic() + max_s
        while self.drain() and time.monotonic() < deadline:
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
        self.drain_until_empty(REBIND_DRAIN_MAX_S)  # what the old socket still holds
        try:
            _remove_stale_socket(self.listener.path)
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
        self._receive = self._receiver()
        self.socket_file.rebound()
        self.problem = None
        if self._loop is not None:
            self._watch = PacedWatch(self._loop, self.sock.fileno(), self._paced_drain)
        log.info("%s: socket file re-created", self.label)


def bind_listener(
    listener: Listener,
    rcvbuf_bytes: int,
    unix_mode: int,
    unix_gid: int | None = None,
    *,
    unix_credentials: bool = False,
) -> socket.socket:
    if listener.kind == "udp":
        return bind_udp(listener, rcvbuf_bytes)
    return bind_unix(listener, unix_mode, unix_gid, credentials=unix_credentials)
