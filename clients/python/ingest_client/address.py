"""Addresses: the one parser of ``HOST:PORT`` and the one check of a unix
socket path, shared by the ``Emitter`` and the daemon (``ingest.config``,
``ingest send``), which imports them from here.

Standard library only, and nothing here imports the daemon: this package is
also its own light distribution (``ingest-client``).
"""

from __future__ import annotations

import ipaddress
import os

# Where ``ingest serve`` listens by default, and where an Emitter with no
# address sends.
DEFAULT_UNIX_PATH = "/run/ingest/ingest.sock"
# sun_path in <sys/un.h> is 108 bytes on Linux, the terminating NUL included;
# CPython refuses a 108-byte path outright ("AF_UNIX path too long").
UNIX_PATH_MAX_BYTES = 107
# RFC 1035 2.3.4: a name is at most 255 octets on the wire, 253 as dotted
# text. The idna codec checks each label (1-63) but not the whole name.
HOST_NAME_MAX_BYTES = 253
PORT_MAX = 65535


def parse_host_port(raw: str, *, min_port: int = 0) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; raises ValueError with a reason.

    Refuses whatever the socket module would refuse with something other
    than OSError (a NUL, a host the idna codec cannot encode, such as an
    empty label or one over 63 characters), a name over
    ``HOST_NAME_MAX_BYTES``, anything but an IPv6 address in brackets, and a
    port that is not ASCII digits in ``min_port``-65535 (a listener may bind
    port 0; a destination cannot be port 0).
    """
    text = raw.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"must be HOST:PORT or [IPV6]:PORT (got {raw!r})")
        port_text = rest[1:]
        _check_host(host)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"must be HOST:PORT or [IPV6]:PORT (got {raw!r})")
        _check_host(host)
    # int() also takes " 80", "+80" and non-ASCII digits ("²" passes
    # str.isdigit()); a port is ASCII digits.
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port must be a number (got {raw!r})")
    port = int(port_text) if len(port_text) <= 5 else PORT_MAX + 1  # int() refuses 4301 digits
    if not min_port <= port <= PORT_MAX:
        raise ValueError(f"port must be between {min_port} and {PORT_MAX} (got {raw!r})")
    return host, port


def _check_host(host: str) -> None:
    """What the socket module does with a str host is encode it with the idna
    codec, which raises UnicodeError, not OSError (and getaddrinfo() would
    raise ValueError for a NUL): refuse those here, with a reason."""
    if "\0" in host:
        raise ValueError(f"{host!r} contains a NUL")
    try:
        name = host.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is not a valid host name (IDNA: {exc})") from None
    size = len(name.rstrip(b"."))
    if size > HOST_NAME_MAX_BYTES:
        raise ValueError(f"the host is {size} bytes; a host name has at most {HOST_NAME_MAX_BYTES}")


def check_unix_path(path: str) -> None:
    """Raise ValueError for a path no unix socket can have: one that cannot be
    encoded as a file name, one with a NUL (the kernel would end it there; a
    leading NUL would mean the abstract namespace), one over
    ``UNIX_PATH_MAX_BYTES`` encoded."""
    try:
        # As connect() and bind() encode it: undecodable bytes come back
        # from surrogateescape; other surrogates cannot be a file name.
        encoded = os.fsencode(path)
    except UnicodeError:
        raise ValueError(f"{path!r} cannot be encoded as a file name") from None
    if b"\0" in encoded:
        raise ValueError(f"{path!r} contains a NUL")
    size = len(encoded)
    if size > UNIX_PATH_MAX_BYTES:
        raise ValueError(
            f"{path!r} is {size} bytes; a unix socket path holds at most "
            f"{UNIX_PATH_MAX_BYTES} bytes (sun_path)"
        )
