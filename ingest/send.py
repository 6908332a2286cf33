"""``ingest send``: one datagram per event, for shell scripts and trying it by hand.

Arguments are all validated before anything is sent; stdin is validated and
sent line by line (a pipe may never end), stopping at the first bad line.
Every failure is one line on stderr saying what happened, and an exit code
that tells a script whether trying again can help (docs/reference/exit-codes.md).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import orjson

from ingest.vocabulary import SendExit
from ingest_client.address import DEFAULT_UNIX_PATH, check_unix_path, parse_host_port

# A connected UDP socket learns of "port unreachable" only from the ICMP reply
# that follows a send; on loopback it arrives within microseconds.
UDP_REFUSAL_WAIT_S = 0.2
# A full receiver queue blocks a unix sender; this long means nobody reads it.
SEND_TIMEOUT_S = 5.0
# The largest UDP payload: 65,535 less the IPv4 header (20) and the UDP header
# (8); IPv6's payload length leaves out its own header, so only the UDP header.
UDP_MAX_PAYLOAD = {socket.AF_INET: 65_507, socket.AF_INET6: 65_527}

# errno -> (exit code, what happened). {address} is the path or HOST:PORT,
# {where} the kind and address. EMSGSIZE, and ECONNREFUSED on a file that is
# not a socket, are told apart in _explain; any errno missing here exits 1.
_ERRNO: dict[int, tuple[int, str]] = {
    errno.ENOENT: (SendExit.UNREACHABLE, "no socket at {address}"),
    errno.ECONNREFUSED: (SendExit.UNREACHABLE, "nothing listens at {where}"),
    errno.ENOTCONN: (SendExit.UNREACHABLE, "the receiver at {where} went away"),
    errno.ECONNRESET: (SendExit.UNREACHABLE, "the receiver at {where} went away"),
    errno.ENOBUFS: (SendExit.UNREACHABLE, "no kernel buffer space to send to {where}"),
    errno.ENETUNREACH: (SendExit.UNREACHABLE, "no route to the network of {where}"),
    errno.EHOSTUNREACH: (SendExit.UNREACHABLE, "no route to the host of {where}"),
    errno.ENETDOWN: (SendExit.UNREACHABLE, "the network of {where} is down"),
    errno.EACCES: (SendExit.DENIED, "permission denied on {address}"),
    errno.EPERM: (SendExit.DENIED, "permission denied on {address}"),
    errno.ENOTSOCK: (SendExit.INVALID, "{address} is not a socket"),
    errno.EPROTOTYPE: (SendExit.INVALID, "{address} is not a datagram socket (a stream socket?)"),
    errno.ENOTDIR: (SendExit.INVALID, "{address}: a component is not a directory"),
    errno.ELOOP: (SendExit.INVALID, "{address}: too many symbolic links"),
    errno.ENAMETOOLONG: (SendExit.INVALID, "{address}: a name in the path is too long"),
    errno.EISDIR: (SendExit.INVALID, "{address} is a directory"),
    errno.EADDRNOTAVAIL: (SendExit.INVALID, "{where} is not an address one can send to"),
    errno.EAFNOSUPPORT: (SendExit.INVALID, "{where}: address family not supported here"),
}
_UDP_DENIED = (
    "permission denied sending to {where} ({name}: a broadcast address, or a firewall rule)"
)


class InvalidEvent(Exception):
    pass


class SendFailed(Exception):
    """One line for stderr and the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def validate(line: str, where: str) -> bytes:
    # argv (and stdin, see _stdin_events) carry undecodable bytes as lone
    # surrogates; surrogateescape restores them, and orjson refuses them.
    data = line.encode("utf-8", "surrogateescape")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"{where}: not a JSON object")
    return data


class Target:
    """Where the datagrams go, and the one-line explanation of a failure there."""

    def __init__(self, unix: str | None, udp: str | None) -> None:
        self.kind = "udp" if udp is not None else "unix"
        if udp is not None:
            self.address = udp
        else:
            self.address = DEFAULT_UNIX_PATH if unix is None else unix
        self.shown = _shown(self.address)
        self.where = f"{self.kind} {self.shown}"

    def open(self) -> socket.socket:
        """A connected datagram socket; SendFailed when there is none to be had."""
        return self._open_udp() if self.kind == "udp" else self._open_unix()

    def _open_unix(self) -> socket.socket:
        if not self.address:
            raise SendFailed(SendExit.INVALID, "--unix: must not be empty")
        try:
            check_unix_path(self.address)
        except ValueError as exc:
            raise SendFailed(SendExit.INVALID, f"--unix: {exc}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(SEND_TIMEOUT_S)  # a full receiver queue blocks; do not hang forever
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise self.explain(exc) from None
        return sock

    def _open_udp(self) -> socket.socket:
        try:
            host, port = parse_host_port(self.address)
        except ValueError as exc:
            raise SendFailed(SendExit.INVALID, f"--udp: {exc}") from None
        if port == 0:
            raise SendFailed(SendExit.INVALID, f"--udp: port 0 is not a destination (got {host}:0)")
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            code = SendExit.UNREACHABLE if exc.errno == socket.EAI_AGAIN else SendExit.INVALID
            raise SendFailed(
                code, f"--udp: cannot resolve {_shown(host)}: {exc.strerror}"
            ) from None
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            sock.connect(info[4])
        except OSError as exc:
            sock.close()
            raise self.explain(exc) from None
        return sock

    def explain(self, exc: OSError, sock: socket.socket | None = None, size: int = 0) -> SendFailed:
        """What ``exc`` means for this target, as a SendFailed."""
        if isinstance(exc, TimeoutError) and exc.errno is None:  # sock.settimeout expired
            return SendFailed(
                SendExit.UNREACHABLE,
                f"{self.where} is not reading: its queue stayed full for {SEND_TIMEOUT_S:g} s",
            )
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if exc.errno == errno.EMSGSIZE and sock is not None:
            return SendFailed(
                SendExit.INVALID,
                f"datagram of {size:,} bytes is too large for the socket "
                f"({self._size_limit(sock)}; {name})",
            )
        if exc.errno == errno.ECONNREFUSED and self.kind == "unix":
            kind = _not_a_socket(self.address)
            if kind:  # connect(2) to a file that is no socket says ECONNREFUSED
                return SendFailed(SendExit.INVALID, f"{self.shown} is not a socket ({kind})")
        if exc.errno in (errno.EACCES, errno.EPERM) and self.kind == "udp":
            return SendFailed(SendExit.DENIED, _UDP_DENIED.format(where=self.where, name=name))
        if exc.errno in _ERRNO:
            code, what = _ERRNO[exc.errno]
            return SendFailed(code, f"{what.format(address=self.shown, where=self.where)} ({name})")
        return SendFailed(
            SendExit.UNREACHABLE, f"cannot send to {self.where}: {exc.strerror or exc} ({name})"
        )

    def _size_limit(self, sock: socket.socket) -> str:
        if self.kind == "udp":
            family = "IPv6" if sock.family == socket.AF_INET6 else "IPv4"
            return f"UDP carries at most {UDP_MAX_PAYLOAD[sock.family]:,} bytes over {family}"
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return f"a unix datagram must fit the {sndbuf:,}-byte send buffer, net.core.wmem_default"


def _shown(text: str) -> str:
    """``text`` on one line: bytes that are not UTF-8 (lone surrogates from
    argv) as \\xNN, control characters escaped."""
    shown = os.fsencode(text).decode("utf-8", "backslashreplace")
    return shown if shown.isprintable() else repr(shown)


def _not_a_socket(path: str) -> str:
    """What is at ``path`` when it is something other than a socket, else ''."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISSOCK(mode):
        return ""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a device"


def _stdin_events(stdin: TextIO | None) -> Iterator[tuple[str, bytes]]:
    if stdin is None:  # started with stdin closed (<&-)
        raise InvalidEvent("stdin: closed, and no EVENT arguments given")
    if isinstance(stdin, io.TextIOWrapper):
        # Invalid UTF-8 on stdin is a bad line (exit 2), not a UnicodeDecodeError.
        stdin.reconfigure(errors="surrogateescape")
    number = 0
    while True:
        try:
            line = stdin.readline()
        except OSError as exc:  # a directory, a device that fails
            raise InvalidEvent(f"stdin: cannot read: {exc.strerror or exc}") from None
        if not line:
            return
        number += 1
        if line.strip():
            label = f"stdin line {number}"
            yield label, validate(line.rstrip("\r\n"), label)


def send_command(unix: str | None, udp: str | None, events: list[str], stdin: TextIO | None) -> int:
    target = Target(unix, udp)
    try:
        payloads: Iterable[tuple[str, bytes]] = (
            [(f"event {i}", validate(e, f"event {i}")) for i, e in enumerate(events, 1)]
            if events
            else _stdin_events(stdin)
        )
        with target.open() as sock:
            _send_all(target, sock, payloads)
    except InvalidEvent as exc:
        print(f"ingest send: {exc}", file=sys.stderr)
        return SendExit.INVALID
    except SendFailed as exc:
        print(f"ingest send: {exc}", file=sys.stderr)
        return exc.code
    return SendExit.OK


def _send_all(target: Target, sock: socket.socket, payloads: Iterable[tuple[str, bytes]]) -> None:
    sent = 0
    label = ""
    payload = b""
    try:
        for label, payload in payloads:  # noqa: B007 (label names the failed one)
            sock.send(payload)
            sent += 1
        if target.kind == "udp" and sent:
            _raise_udp_refusal(sock)
    except OSError as exc:
        failed = target.explain(exc, sock, len(payload))
        message = f"{label}: {failed}" if exc.errno == errno.EMSGSIZE else str(failed)
        # A UDP refusal reports an ICMP reply to an earlier datagram: those
        # "sent" may be lost too, so no count is claimed for them.
        udp_refused = target.kind == "udp" and exc.errno == errno.ECONNREFUSED
        if sent and not udp_refused:
            message += f"; {sent} sent before it"
        raise SendFailed(failed.code, message) from None


def _raise_udp_refusal(sock: socket.socket) -> None:
    """Surface ECONNREFUSED from an ICMP port-unreachable, if one comes."""
    readable, _, _ = select.select([sock], [], [], UDP_REFUSAL_WAIT_S)
    if readable:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.recv(1)
