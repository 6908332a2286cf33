"""How a reader receives its datagrams: the receive call of its read loop
(sources.DatagramSource.read), one strategy per socket, chosen once by
``receiver_for``:

* plain: the socket's own ``recv``, so the common path pays nothing;
* allow-list (--udp-allow): ``recvfrom``, the sender checked (AllowList);
* credentials (--unix-credentials): ``recvmsg``, the sender learned from
  its SCM_CREDENTIALS record (Senders).

A strategy becomes a wake-up's receive call when given the wake-up
(wakeup.WakeUp): a credentials receiver hands each datagram's sender
attributes to the decoders through it, and a datagram of a denied sender is
counted there (``denied``), never decoded. While a tap is connected, the
wake-up's receive call is given the tapped wake-up too, and also notes each
datagram's sender for it (a plain UDP socket is then read with
``recvfrom``).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from ingest.config import SENDER_ATTRIBUTES, IPNetwork
from ingest.publish.pubsub import encode_attribute
from ingest.ratelimit import LogLimiter
from ingest.receive.tapped import TappedWakeUp
from ingest.receive.wakeup import WAKEUP_MAX_DATAGRAMS, WakeUp

log = logging.getLogger(__name__)

# struct ucred (man 7 unix): pid_t pid; uid_t uid; gid_t gid, native ints.
UCRED = struct.Struct("iII")
# Room for the credentials and nothing more: file descriptors a sender
# attaches (SCM_RIGHTS) find none, and the kernel closes them instead of
# installing them in the daemon.
CREDENTIALS_SPACE = socket.CMSG_SPACE(UCRED.size)
PID_KEY, UID_KEY, GID_KEY = (key.encode() for key in SENDER_ATTRIBUTES)
# A control message as recvmsg returns it: (level, type, data).
Cmsg = tuple[int, int, bytes]

# The read loop's receive call: (one byte over the largest datagram kept) ->
# the next datagram. It raises what the socket's receive raises (BlockingIOError
# at EAGAIN), and DeniedBurst.
Receive = Callable[[int], bytes]
# A socket's receive strategy: (the wake-up, the tapped wake-up or None) ->
# that wake-up's receive call.
Receiver = Callable[[WakeUp, TappedWakeUp | None], Receive]


class DeniedBurst(Exception):
    """A wake-up's worth of datagrams from senders outside the allow-list."""


def receiver_for(
    sock: socket.socket,
    *,
    addressed: bool,
    allow: AllowList | None = None,
    senders: Senders | None = None,
    label: str,
    limiter: LogLimiter,
) -> Receiver:
    """The receive strategy of ``sock``, chosen once per socket (again when
    a removed unix path is bound anew): ``allow`` and ``senders`` are fixed
    for a reader's life (a reload builds new readers). ``addressed``: a UDP
    socket, whose senders a tap learns with recvfrom. ``label`` and
    ``limiter``: for the log line of a denied sender."""
    if allow is not None:
        return functools.partial(allowed_receiver, sock, allow)
    if senders is not None:
        return functools.partial(credentials_receiver, sock, senders, label=label, limiter=limiter)
    return functools.partial(plain_receiver, sock, addressed)


def plain_receiver(
    sock: socket.socket, addressed: bool, wake: WakeUp, tapped: TappedWakeUp | None
) -> Receive:
    """The socket's own ``recv``; while tapped, a UDP socket's ``recvfrom``
    noting each sender."""
    if tapped is not None and addressed:
        return addressed_receiver(sock, tapped)
    return sock.recv


def addressed_receiver(sock: socket.socket, tapped: TappedWakeUp) -> Receive:
    """``recv`` for a tapped UDP socket: recvfrom, noting the sender."""
    recvfrom = sock.recvfrom

    def receive(limit: int) -> bytes:
        data, address = recvfrom(limit)
        tapped.sender = f"{address[0]}:{address[1]}"
        return data

    return receive


def allowed_receiver(
    sock: socket.socket, allow: AllowList, wake: WakeUp, tapped: TappedWakeUp | None
) -> Receive:
    """``recv`` for a source with an allow-list: it returns the next datagram
    from an allowed sender. One from outside the list counts as one event
    received and rejected (``source_denied``, added up by the reader at the
    end of the wake-up) and is never decoded; WAKEUP_MAX_DATAGRAMS of them
    end the wake-up (DeniedBurst) like any other budget. ``tapped``: it also
    notes each sender for a tap."""
    verdicts = allow.verdicts.get
    decide = allow.decide
    recvfrom = sock.recvfrom

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
            _deny(wake)

    return receive


def credentials_receiver(
    sock: socket.socket,
    senders: Senders,
    wake: WakeUp,
    tapped: TappedWakeUp | None,
    *,
    label: str,
    limiter: LogLimiter,
) -> Receive:
    """``recv`` for a unix source with credentials: it returns the next
    datagram of an allowed sender, having set ``wake.sender`` to that
    sender's attribute entries, which the decoders give its messages. One
    denied is logged (rate-limited) and counted like ``allowed_receiver``'s,
    as ``sender_denied``.

    MSG_CTRUNC is no cause for doubt: with room for the credentials only,
    it means the sender attached more (file descriptors, which the kernel
    closes). The credentials, written first, are whole; a record cut
    short would be unknown (Senders)."""
    verdicts = senders.verdicts.get
    learn = senders.learn
    recvmsg = sock.recvmsg

    def receive(limit: int) -> bytes:
        while True:
            data, ancdata, _, _ = recvmsg(limit, CREDENTIALS_SPACE)
            cmsg = ancdata[0] if ancdata else None
            entries, allowed = verdicts(cmsg) or learn(cmsg)
            if allowed:
                wake.sender = entries
                if tapped is not None:
                    tapped.sender = senders.describe(cmsg)
                return data
            limiter.log(
                log,
                "sender-denied",
                logging.WARNING,
                "%s: denied a datagram from %s: not in --unix-allow-uid",
                label,
                senders.describe(cmsg),
            )
            _deny(wake)

    return receive


def _deny(wake: WakeUp) -> None:
    """One more datagram of a denied sender; WAKEUP_MAX_DATAGRAMS of them end
    the wake-up (DeniedBurst), since reading them is work too."""
    wake.denied += 1
    if wake.denied >= WAKEUP_MAX_DATAGRAMS:
        raise DeniedBurst


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
