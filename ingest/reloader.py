"""The reload applier: a reload's plan (reload.py, the pure policy) applied
to the running pipeline -- listeners bound and removed, socket options set,
the pipeline reconfigured, every reader rebuilt around its socket -- all or
nothing, undone on any failure. The Daemon makes one once startup has
started the readers, and calls it from its SIGHUP task."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable

from ingest.config import ConfigError, Listener, Settings
from ingest.receive.sockets import SocketFile, bind_listener, set_rcvbuf
from ingest.receive.sources import REBIND_READ_MAX_S, DatagramSource
from ingest.reload import METADATA, Plan
from ingest.reload import plan as reload_plan
from ingest.wiring import Pipeline

log = logging.getLogger(__name__)


class Reloader:
    """Applies reloads to ``pipeline``, publishing to ``topic_ids`` (fixed at
    startup); refuses once ``stopping`` is set, since the stop closes the
    sockets and nobody would read or remove the ones a reload binds."""

    def __init__(
        self, pipeline: Pipeline, topic_ids: tuple[str, ...], stopping: asyncio.Event
    ) -> None:
        self._pipeline = pipeline
        self._topic_ids = topic_ids
        self._stopping = stopping

    def apply(self, old: Settings, new: Settings) -> Plan:
        """Apply ``new`` to the pipeline running ``old``; returns the plan
        applied: the settings now in force, and the names of those that
        changed. All or nothing: everything that can fail -- binding the
        added listeners, the socket options of the others, the pipeline's
        new metadata and bounds, the new readers -- is done first, and undone
        if any of it raises, whatever the exception; only then are the
        readers swapped. Synchronous, so no stop can begin halfway."""
        pipeline = self._pipeline
        if self._stopping.is_set():
            raise ConfigError("SIGHUP", "the daemon is stopping")
        planned = reload_plan(old, new, self._topic_ids)
        new = planned.settings
        metadata_changed = any(name in planned.changed for name in METADATA)
        wanted = {listener.label: listener for listener in new.listeners}
        current = {source.label for source in pipeline.sources}
        bound: list[tuple[Listener, socket.socket, SocketFile | None]] = []
        undo: list[Callable[[], object]] = []  # the socket options set, last first
        try:
            for label, listener in wanted.items():
                if label not in current:
                    sock = bind_listener(
                        listener,
                        new.udp_rcvbuf_bytes,
                        new.unix_mode,
                        new.unix_gid,
                        unix_credentials=new.unix_credentials,
                    )
                    # Taken now, so that undoing removes only the file bound here.
                    path = SocketFile(listener.path) if listener.kind == "unix" else None
                    bound.append((listener, sock, path))
            for source in pipeline.sources:
                if source.label in wanted:
                    _set_socket_options(source, old, new, undo)
            undo.append(lambda: pipeline.reconfigure(old, metadata_changed))
            pipeline.reconfigure(new, metadata_changed)
            # Rebuilt around the same socket: the new decoding, allow-lists
            # and bounds, nothing dropped (the old reader stops between two
            # wake-ups, once it has read what the socket holds).
            replaced = [
                (
                    source,
                    pipeline.add_reader(
                        source.listener, source.sock, source.adopted, settings=new, previous=source
                    ),
                )
                for source in pipeline.sources
                if source.label in wanted
            ]
            added = [
                pipeline.add_reader(listener, sock, settings=new) for listener, sock, _ in bound
            ]
        except BaseException:
            # add_reader hands a GELF reassembler in progress on, with the new bound.
            for source in pipeline.sources:
                if source.dialects is not None:
                    source.dialects.reassembler.max_message_bytes = old.max_event_bytes
            for step in reversed(undo):
                step()
            for _, sock, path in bound:
                sock.close()
                if path is not None:
                    path.unlink_if_ours()
            raise
        logging.getLogger().setLevel(new.log_level.upper())
        loop = asyncio.get_running_loop()
        removed = [source for source in pipeline.sources if source.label not in wanted]
        for source, fresh in replaced:
            # What the kernel holds arrived under the old configuration: read
            # it so (read pacing may have left a few milliseconds of it there).
            source.read_until_empty(REBIND_READ_MAX_S)
            source.stop()
            fresh.start(loop)
        for source in added:
            source.start(loop)
            log.info("%s: listener added", source.label)
        pipeline.sources[:] = [fresh for _, fresh in replaced] + added
        for source in removed:
            source.read_until_empty(REBIND_READ_MAX_S)
            source.close()
            log.info("%s: listener removed", source.label)
        for line in planned.kept:
            log.warning("reload: not applied until restart: %s", line)
        for line in _adopted_keep(pipeline.sources, old, new):
            log.warning("reload: %s", line)
        return planned


def _set_socket_options(
    source: DatagramSource, old: Settings, new: Settings, undo: list[Callable[[], object]]
) -> None:
    """A reload's --unix-mode and --unix-group, or --udp-rcvbuf-bytes, set on
    a socket the daemon bound, as a fresh bind would set them (systemd's keep
    what ingest.socket set: _adopted_keep); ``undo`` gets how to set them back.
    A unix socket file gone or replaced is left alone: check_path re-creates
    it with the settings then running."""
    if source.adopted:
        return
    if source.kind == "udp":
        if new.udp_rcvbuf_bytes == old.udp_rcvbuf_bytes:
            return
        sock = source.sock
        # Linux reports double the usable size it granted (man 7 socket).
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        undo.append(lambda: set_rcvbuf(sock, before))
        granted = set_rcvbuf(sock, new.udp_rcvbuf_bytes)
        if granted < new.udp_rcvbuf_bytes:
            log.warning(
                "%s: kernel granted SO_RCVBUF %d bytes of the %d asked; bursts may be "
                "dropped by the kernel. Fix: sysctl -w net.core.rmem_max=%d",
                source.label,
                granted,
                new.udp_rcvbuf_bytes,
                new.udp_rcvbuf_bytes,
            )
        return
    file = source.socket_file
    if (new.unix_mode, new.unix_gid) == (old.unix_mode, old.unix_gid):
        return
    if file is None or file.replaced():
        return
    path = file.path
    try:
        st = os.stat(path)
        undo.append(lambda: _restore_file(path, stat.S_IMODE(st.st_mode), st.st_gid))
        os.chmod(path, new.unix_mode)
    except OSError as exc:
        raise ConfigError(
            "--unix-mode", f"{path}: cannot set mode {new.unix_mode:04o}: {exc.strerror}"
        ) from None
    if new.unix_gid == old.unix_gid:
        return
    gid = new.unix_gid if new.unix_gid is not None else _bound_group(path)
    if gid != st.st_gid:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            raise ConfigError(
                "--unix-group", f"{path}: cannot set group {gid}: {exc.strerror}"
            ) from None


def _bound_group(path: str) -> int:
    """The group a socket file bound at ``path`` now gets without
    --unix-group: its directory's if that is set-group-ID, else the daemon's."""
    directory = os.stat(os.path.dirname(path) or ".")
    return directory.st_gid if directory.st_mode & stat.S_ISGID else os.getegid()


def _restore_file(path: str, mode: int, gid: int) -> None:
    # Undoing a failed reload: a file that cannot be set back is said, not fatal.
    try:
        os.chmod(path, mode)
        os.chown(path, -1, gid)
    except OSError as exc:
        log.warning(
            "reload: could not set %s back to mode %04o, group %d: %s",
            path,
            mode,
            gid,
            exc.strerror,
        )


def _adopted_keep(sources: list[DatagramSource], old: Settings, new: Settings) -> list[str]:
    """The socket options a reload changed that sockets passed by systemd do
    not take: ingest.socket set them, at startup as now."""
    lines = []
    unix = [f"--unix-mode ({new.unix_mode:04o})"] if new.unix_mode != old.unix_mode else []
    unix += ["--unix-group"] if new.unix_gid != old.unix_gid else []
    udp = ["--udp-rcvbuf-bytes"] if new.udp_rcvbuf_bytes != old.udp_rcvbuf_bytes else []
    for source in sources:
        options = unix if source.kind == "unix" else udp
        if source.adopted and options:
            lines.append(
                f"{', '.join(options)} not applied to {source.label}: "
                "systemd passed it, and ingest.socket sets its options"
            )
    return lines
