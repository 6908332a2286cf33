"""Binding a listener's socket: UDP or unix datagram, its receive buffer, a
unix socket's file (stale ones replaced, ours noticed gone and removed at the
end). Off the hot path: at startup, at a reload, when a removed unix path is
bound anew."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat

from ingest.config import ConfigError, Listener

log = logging.getLogger(__name__)

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # <asm-generic/socket.h>; not in Python


def bind_listener(
    listener: Listener,
    rcvbuf_bytes: int,
    unix_mode: int,
    unix_gid: int | None = None,
    *,
    unix_credentials: bool = False,
) -> socket.socket:
    """Bind ``listener``'s socket: bind_udp or bind_unix, by its kind."""
    if listener.kind == "udp":
        return bind_udp(listener, rcvbuf_bytes)
    return bind_unix(listener, unix_mode, unix_gid, credentials=unix_credentials)


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
    carries its sender's credentials (see receivers.Senders).

    A file that is not a socket, or a socket someone still listens on, is an
    error rather than something to delete.
    """
    path = listener.path
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError("--unix", f"{path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("--unix", f"{path}: directory {directory} is not writable")
    remove_stale_socket(path)
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


def remove_stale_socket(path: str) -> None:
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
