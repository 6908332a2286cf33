"""systemd integration, standard library only: socket activation and sd_notify.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets as fds
3, 4, ... with LISTEN_FDS=n and LISTEN_PID=<our pid>. Each fd is identified by
what it is — family, type, bound address, never its LISTEN_FDNAMES name — and
matched to the configured listeners, so the daemon binds only what
systemd did not pass. systemd owns passed sockets across restarts: the daemon
never unlinks or chmods them.

Notification (sd_notify(3)): READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 go
as datagrams to NOTIFY_SOCKET over a NON-BLOCKING socket. A reader whose queue
is full (or that is gone) costs a counted, rate-limited drop, never a stalled
event loop: the watchdog ping comes from the loop itself, and a blocked send
would turn a slow journal into a restart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from ingest.config import ConfigError, Listener
from ingest.ratelimit import LogLimiter

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3  # sd-daemon.h: the first passed fd
SYSTEMD_MARK = "(systemd)"  # appended to adopted listeners in the ready line


@dataclass(frozen=True)
class PassedSocket:
    """One socket systemd passed, identified by its address."""

    fd: int
    sock: socket.socket
    listener: Listener  # what its bound address says


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[PassedSocket]:
    """The sockets systemd passed to this process, or [] when none.

    Reads LISTEN_PID and LISTEN_FDS once and removes them, with LISTEN_FDNAMES,
    from the environment (as sd_listen_fds(unset=1) does), so a child process
    can never mistake them for its own. Raises ConfigError for a passed fd
    that is not a datagram socket.
    """
    env = os.environ if environ is None else environ
    pid_text = env.pop("LISTEN_PID", None)
    fds_text = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)  # unused: an fd is matched by its address
    if pid_text is None or fds_text is None:
        return []
    try:
        pid, count = int(pid_text), int(fds_text)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", pid_text, fds_text)
        return []
    if pid != os.getpid() or count <= 0:
        return []  # meant for another process (our parent), or nothing passed
    passed = []
    for offset in range(count):
        item = identify(SD_LISTEN_FDS_START + offset)
        item.sock.set_inheritable(False)  # sd_listen_fds sets FD_CLOEXEC too
        passed.append(item)
    return passed


def identify(fd: int) -> PassedSocket:
    """Wrap ``fd`` and describe it as a Listener; ConfigError unless it is a
    bound datagram socket of a family ingest serves."""
    try:
        sock = socket.socket(fileno=fd)  # family, type and protocol from the fd
    except OSError as exc:
        raise ConfigError(
            "LISTEN_FDS", f"fd {fd} passed by systemd is not a socket: {exc.strerror}"
        ) from None
    family = sock.family
    if family == socket.AF_UNIX:
        flag, address = "--unix", sock.getsockname()
        # bytes: the abstract namespace (a leading NUL), shown as '@name'.
        abstract = isinstance(address, bytes)
        path = "@" + address[1:].decode(errors="replace") if abstract else address
        listener = Listener("unix", path=path)
    elif family in (socket.AF_INET, socket.AF_INET6):
        flag, (host, port, *_) = "--udp", sock.getsockname()
        listener = Listener("udp", host=host, port=port)
    else:
        sock.detach()  # not ours to close
        raise ConfigError("LISTEN_FDS", f"fd {fd} passed by systemd has address family {family!r}")
    if sock.type != socket.SOCK_DGRAM:
        kind = sock.type.name if isinstance(sock.type, socket.SocketKind) else sock.type
        sock.detach()
        raise ConfigError(
            flag,
            f"systemd passed {listener.label} (fd {fd}) as {kind}; ingest reads datagrams "
            "only: use ListenDatagram= in ingest.socket",
        )
    if listener.kind == "unix" and not listener.path:
        sock.detach()
        raise ConfigError("--unix", f"systemd passed an unbound unix socket (fd {fd})")
    return PassedSocket(fd, sock, listener)


def plan_listeners(
    configured: Sequence[Listener], defaults: bool, passed: Sequence[PassedSocket]
) -> list[tuple[Listener, socket.socket | None]]:
    """Which listener gets which passed socket; ``None``: bind it ourselves.

    ``defaults`` says no listener was configured (the defaults stood in): then
    the passed sockets ARE the listeners, each labelled by its address. With
    listeners configured, every passed socket must match one of them (a unix
    path, or a UDP address, names resolved) — anything else is a startup error,
    since a socket systemd keeps feeding that nobody reads loses events.
    """
    if not passed:
        return [(listener, None) for listener in configured]
    if defaults:
        return [(item.listener, item.sock) for item in passed]
    adopted: dict[Listener, socket.socket] = {}
    for item in passed:
        match = next((c for c in configured if _same_address(c, item.listener)), None)
        if match is None:
            flag = f"--{item.listener.kind}"
            raise ConfigError(
                flag,
                f"systemd passed {item.listener.label} (fd {item.fd}) but no {flag} is "
                f"configured for it; add {flag} {_flag_value(item.listener)} or remove it "
                "from the socket unit",
            )
        if match in adopted:
            raise ConfigError(f"--{match.kind}", f"systemd passed two sockets for {match.label}")
        adopted[match] = item.sock
    return [(listener, adopted.get(listener)) for listener in configured]


def _flag_value(listener: Listener) -> str:
    return listener.label.split(":", 1)[1]


def _same_address(configured: Listener, actual: Listener) -> bool:
    if configured.kind != actual.kind:
        return False
    if configured.kind == "unix":
        return os.path.normpath(configured.path) == os.path.normpath(actual.path)
    if configured.port != actual.port:
        return False
    actual_ip = ipaddress.ip_address(actual.host.split("%", 1)[0])
    try:
        infos = socket.getaddrinfo(
            configured.host, configured.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICSERV
        )
    except socket.gaierror:
        return False
    return any(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) == actual_ip for info in infos
    )


class Notifier:
    """sd_notify over a non-blocking datagram socket; every method is a cheap
    no-op when NOTIFY_SOCKET is unset (not run by systemd's Type=notify).

    ``sent`` and ``dropped`` count messages; a drop (reader's queue full,
    reader gone) is logged at most once per interval.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address = address  # as given: a path, or "@name" (abstract)
        # None unless there is somewhere to send the pings.
        self.watchdog_interval_s = watchdog_usec / 1e6 if watchdog_usec and address else None
        self.sent = 0
        self.dropped = 0
        self._limiter = LogLimiter()
        self._sock: socket.socket | None = None
        self._target = ""
        if address:
            # A leading '@' names the abstract namespace (sd_notify(3)).
            self._target = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once and remove them
        from the environment, so children do not inherit them."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        watchdog_usec = None
        if usec_text:
            try:
                watchdog_usec = int(usec_text)
                if pid_text and int(pid_text) != os.getpid():
                    watchdog_usec = None  # the watchdog is someone else's
            except ValueError:
                log.warning(
                    "ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec_text, pid_text
                )
                watchdog_usec = None
            if watchdog_usec is not None and watchdog_usec <= 0:
                watchdog_usec = None
        if watchdog_usec and not address:
            log.warning("WATCHDOG_USEC is set but NOTIFY_SOCKET is not; no watchdog pings")
            watchdog_usec = None
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one notification; False (counted) when it could not be sent now."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode(), self._target)
        except OSError as exc:  # EAGAIN (queue full), ECONNREFUSED, ENOENT, ...
            self.dropped += 1
            self._limiter.log(
                log,
                "notify",
                logging.WARNING,
                "systemd notification to %s not sent (%s); dropped %d so far",
                self.address,
                exc.strerror or exc,
                self.dropped,
            )
            return False
        self.sent += 1
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # One line: systemd shows STATUS= as is, and a newline would end it.
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def run_watchdog(self) -> None:
        """Ping at half the watchdog interval, from the event loop: if the loop
        stalls, the pings stop and systemd restarts the service. Runs forever
        (a supervised task); start it only when ``watchdog_interval_s`` is set."""
        if self.watchdog_interval_s is None:
            raise RuntimeError("run_watchdog() without a watchdog interval")
        interval = self.watchdog_interval_s / 2
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class RateStatus:
    """The STATUS= text: events/s in and out since the previous call, and the
    queue. Pure: the caller supplies the clock and the counters."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None

    def line(self, now: float, received: int, published: int, queued: int) -> str:
        last, self._last = self._last, (now, received, published)
        if last is None or now <= last[0]:
            rate_in = rate_out = 0.0
        else:
            elapsed = now - last[0]
            rate_in = (received - last[1]) / elapsed
            rate_out = (published - last[2]) / elapsed
        return f"in {rate_in:.0f} events/s, out {rate_out:.0f} events/s, queue {queued} events"
