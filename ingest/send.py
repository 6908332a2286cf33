"""``ingest send``: one datagram per event, for shell scripts and trying it by hand.

Arguments are all validated before anything is sent; stdin is validated and
sent line by line (a pipe may never end), stopping at the first bad line.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import orjson

from ingest.config import DEFAULT_UNIX_PATH, parse_host_port

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_INVALID = 2
# A connected UDP socket learns of "port unreachable" only from the ICMP reply
# that follows a send; on loopback it arrives within microseconds.
UDP_REFUSAL_WAIT_S = 0.2


class InvalidEvent(Exception):
    pass


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


def _open(unix: str | None, udp: str | None) -> tuple[socket.socket, str]:
    if udp is not None:
        host, port = parse_host_port(udp)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        sock.connect(info[4])
        return sock, f"udp {udp}"
    path = unix or DEFAULT_UNIX_PATH
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5.0)  # a full receiver queue blocks; do not hang forever
    sock.connect(path)
    return sock, f"unix {path}"


def _stdin_events(stdin: TextIO) -> Iterator[bytes]:
    if isinstance(stdin, io.TextIOWrapper):
        # Invalid UTF-8 on stdin is a bad line (exit 2), not a UnicodeDecodeError.
        stdin.reconfigure(errors="surrogateescape")
    for number, line in enumerate(stdin, 1):
        if line.strip():
            yield validate(line.rstrip("\r\n"), f"stdin line {number}")


def send_command(unix: str | None, udp: str | None, events: list[str], stdin: TextIO) -> int:
    try:
        payloads: Iterable[bytes] = (
            [validate(e, f"event {i}") for i, e in enumerate(events, 1)]
            if events
            else _stdin_events(stdin)
        )
        try:
            sock, where = _open(unix, udp)
        except ValueError as exc:
            print(f"ingest send: --udp: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except OSError as exc:
            print(
                f"ingest send: nothing listens at {unix or udp or DEFAULT_UNIX_PATH}: {exc.strerror}",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        with sock:
            sent = 0
            try:
                for payload in payloads:
                    sock.send(payload)
                    sent += 1
                if udp is not None and sent:
                    _raise_udp_refusal(sock)
            except InvalidEvent:
                raise
            except OSError as exc:
                print(
                    f"ingest send: {where}: {exc.strerror or exc} after {sent} events",
                    file=sys.stderr,
                )
                return EXIT_UNREACHABLE
    except InvalidEvent as exc:
        print(f"ingest send: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _raise_udp_refusal(sock: socket.socket) -> None:
    """Surface ECONNREFUSED from an ICMP port-unreachable, if one comes."""
    readable, _, _ = select.select([sock], [], [], UDP_REFUSAL_WAIT_S)
    if readable:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.recv(1)
