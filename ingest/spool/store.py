"""The disk spool: where events go when the memory queue is full, and where
shutdown puts what it could not publish. Append-only, segmented, replayed
oldest first. The format is records.py, the cursor ledger.py, safe file
handling files.py; pacing against live traffic is replay.py; this module
ties them: the lock, the segments written and read, and the counts.

Directory layout::

    LOCK                  flock()ed for the daemon's life; holds its pid
    cursor                (segment, offset, taken): where replay resumes
    seg-000000000042.spool ...

Trust: the daemon may run as root, so the directory must be its own (owned by
its euid, writable by nobody else, not a symlink), and every name in it is
opened relative to the directory's fd, never through a symlink and never
unless it is a regular file (``open_regular``). What looks like a segment
but cannot be one is set aside as NAME.corrupt and counted; a LOCK or cursor
that is not a plain file refuses startup.

Accounting: ``events`` are events on disk not yet handed back to the memory
queue. ``append`` adds to it (``stats.spooled``) or counts a drop by reason;
``consume`` moves events to the caller (``stats.replayed``) and writes the
cursor at once: the record being replayed and how many of its events are
taken. The cursor therefore means "handed to the pipeline": a replayed event
in memory is exposed to a crash exactly like a live one, and what a graceful
stop puts back is appended as new records, so a restart repeats nothing.
Every write is a plain os.write/pwrite: it is in the page cache when it
returns, so SIGKILL loses nothing here and repeats nothing; a power cut or
kernel crash loses what was written since the last fsync (``--spool-fsync``):
appended events, and cursor progress, which repeats events (never loses any).

Disk I/O happens on the event loop thread: an append is one write() into the
page cache (microseconds); fsync is paid per policy and measured by
tools/bench_spool.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from ingest.config import ConfigError
from ingest.ratelimit import LogLimiter
from ingest.spool import records as spoolfmt
from ingest.spool.files import (
    SAFE_FLAGS,
    UnsafeFile,
    explain,
    irregular,
    open_directory,
    open_regular,
    probe,
    read_all,
)
from ingest.spool.ledger import Ledger
from ingest.stats import Stats
from ingest.vocabulary import Drop, Fsync

log = logging.getLogger(__name__)

FSYNC_POLICIES = tuple(Fsync)  # the first is the default
SEGMENT_MAX_BYTES = 16 << 20
SEGMENT_MIN_BYTES = 64 << 10
RECORDS_PER_SEGMENT = 4  # a record is at most a quarter of a segment (but one event)
REOPEN_RETRY_S = 1.0  # after a failed segment creation, do not retry on every append
SET_ASIDE_NAMES = 100  # NAME.corrupt, NAME.corrupt.1 ... before leaving it in place
# Drop reasons this module owns.
SPOOL_FULL = Drop.SPOOL_FULL  # --spool-max-bytes reached
SPOOL_ERROR = Drop.SPOOL_ERROR  # a write failed (disk full, I/O error)
SPOOL_UNWRITABLE = Drop.SPOOL_UNWRITABLE  # no segment could be created
SPOOL_CORRUPT = Drop.SPOOL_CORRUPT  # written this run, unreadable at replay
DROP_REASONS = (SPOOL_FULL, SPOOL_ERROR, SPOOL_UNWRITABLE, SPOOL_CORRUPT)

_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.spool$")


def _segment_name(seq: int) -> str:
    return f"seg-{seq:012d}.spool"


def _placed_at(offset: int, record: spoolfmt.Record) -> spoolfmt.Record:
    """``record``, decoded from a buffer read at ``offset``, at its place in the file."""
    return spoolfmt.Record(offset, offset + record.end, record.events, record.kind, record.topic)


@dataclass(slots=True)
class Segment:
    seq: int
    name: str  # in the spool directory
    size: int  # bytes in the file
    events: int  # events in it not yet replayed
    damage_counted: bool = False  # the startup scan already counted its damage
    # Of its header: how its records are read. Only new segments are written
    # (one left by an earlier run is never reopened), so all are VERSION but
    # those found at startup.
    version: int = spoolfmt.VERSION


@dataclass(slots=True)  # not frozen: that makes every peek ~0.3 us slower
class PendingRecord:
    """What is left to replay of the oldest record."""

    events: list[bytes]  # not yet consumed
    kind: int  # spoolfmt.KIND_DATA or KIND_MESSAGES
    topic: str  # "" is --topic


class Spool:
    """One locked spool directory. Never raises after ``open``: runtime I/O
    errors become counted drops and ``problem`` (which makes /healthz 503)."""

    def __init__(
        self,
        directory: str,
        fds: tuple[int, int, int],  # the directory, LOCK (flock()ed), cursor
        max_bytes: int,
        fsync: str,
        stats: Stats,
        *,
        segment_max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_max_bytes = segment_max_bytes or max(
            SEGMENT_MIN_BYTES, min(SEGMENT_MAX_BYTES, max_bytes // 8)
        )
        self.events = 0
        self.bytes = 0
        self.corrupt_records = 0  # damaged records, and files set aside
        self.problem: str | None = None
        self._stats = stats
        self._dir_fd, self._lock_fd, cursor_fd = fds
        self._ledger = Ledger(cursor_fd)  # where replay resumes
        self._clock = clock
        self._segments: list[Segment] = []  # oldest first; the last may be active
        self._active_fd: int | None = None  # write fd of self._segments[-1]
        self._next_seq = 0
        self._read_off = spoolfmt.HEADER_BYTES  # in self._segments[0]
        self._pending: spoolfmt.Record | None = None
        self._pending_taken = 0  # events of the pending record already consumed
        self._failed_at: float | None = None
        self._limiter = LogLimiter()

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, directory: str, max_bytes: int, fsync: str, stats: Stats) -> Spool:
        """Create (0700), check and lock the directory and load what an earlier
        run left. ConfigError (exit 2) names --spool-dir when it cannot be used
        or trusted."""
        dir_fd = open_directory(directory)
        fds = [dir_fd]
        name = "LOCK"
        try:
            fds.append(open_regular(dir_fd, name, os.O_RDWR | os.O_CREAT))
            try:
                fcntl.flock(fds[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fds[1], 32, 0).decode(errors="replace").strip() or "?"
                raise ConfigError(
                    "--spool-dir", f"{directory} is in use by another ingest (pid {holder})"
                ) from None
            os.ftruncate(fds[1], 0)
            os.pwrite(fds[1], f"{os.getpid()}\n".encode(), 0)
            name = "cursor"
            fds.append(open_regular(dir_fd, name, os.O_RDWR | os.O_CREAT))
            name = ""
            probe(dir_fd)
            spool = cls(directory, (fds[0], fds[1], fds[2]), max_bytes, fsync, stats)
            spool._load()
        except (OSError, ConfigError) as exc:
            for fd in reversed(fds):
                os.close(fd)
            if isinstance(exc, ConfigError):
                raise
            if isinstance(exc, UnsafeFile):
                message = f"{directory}/{name} is {exc.reason}"
            elif name:
                message = f"{directory}/{name}: cannot use: {exc.strerror}"
            else:
                message = f"{directory} is not writable: {exc.strerror}"
            raise ConfigError("--spool-dir", message) from None
        return spool

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _load(self) -> None:
        """Scan the segments an earlier run left, from the saved cursor on."""
        seqs = sorted(
            int(m.group(1)) for name in os.listdir(self._dir_fd) if (m := _SEGMENT_RE.match(name))
        )
        self._next_seq = seqs[-1] + 1 if seqs else 0
        cursor = self._ledger.read()
        for seq in seqs:
            if cursor is not None and seq < cursor.seq:
                self._discard(_segment_name(seq))
                continue
            start = cursor.offset if cursor is not None and seq == cursor.seq else 0
            segment = self._scan_existing(seq, max(start, spoolfmt.HEADER_BYTES))
            if segment is not None:
                self._segments.append(segment)
        if self._segments and cursor is not None and cursor.seq == self._segments[0].seq:
            self._read_off = max(cursor.offset, spoolfmt.HEADER_BYTES)
            if cursor.taken:
                self._resume_inside_record(cursor.taken)
        self.events = sum(s.events for s in self._segments)
        self.bytes = sum(s.size for s in self._segments)
        if self._segments:
            self._stats.spool_recovered += self.events
            log.info(
                "spool %s: %d events in %d segments left by an earlier run; replaying them",
                self.directory,
                self.events,
                len(self._segments),
            )
        self._save_cursor()

    def _discard(self, name: str) -> None:
        """Remove a segment with nothing left to replay (the cursor passed it,
        or it holds no valid record); set it aside if it is no regular file."""
        try:
            problem = irregular(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_mode)
            if problem is not None:
                self._set_aside(name, problem.reason)
            else:
                os.unlink(name, dir_fd=self._dir_fd)
        except OSError as exc:
            log.warning("spool %s: cannot remove it: %s", self._path(name), exc.strerror)

    def _scan_existing(self, seq: int, start: int) -> Segment | None:
        name = _segment_name(seq)
        try:
            fd = open_regular(self._dir_fd, name, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                data = read_all(fd, size) if size <= spoolfmt.MAX_SEGMENT_BYTES else b""
            finally:
                os.close(fd)
        except OSError as exc:
            self._set_aside(name, explain(exc))
            return None
        if size > spoolfmt.MAX_SEGMENT_BYTES:
            self._set_aside(name, f"{size} bytes, larger than any segment; not read")
            return None
        if not data:  # a crash between creating it and writing its header
            self._discard(name)
            return None
        try:
            version = spoolfmt.check_header(data)
        except spoolfmt.FormatError as exc:
            self._set_aside(name, str(exc))
            return None
        events = 0
        damage = 0
        for item in spoolfmt.scan(data, start, version=version):
            if isinstance(item, spoolfmt.Record):
                events += len(item.events)
            else:
                damage += 1
                log.warning(
                    "spool %s: %d damaged bytes at offset %d skipped (torn write or corruption)",
                    self._path(name),
                    item.end - item.offset,
                    item.offset,
                )
        self.corrupt_records += damage
        if not events:
            self._discard(name)
            return None
        return Segment(seq, name, len(data), events, bool(damage), version)

    def _set_aside(self, name: str, reason: str) -> None:
        """Keep what cannot be replayed for a look, under a name no segment
        has: NAME.corrupt, or NAME.corrupt.N when that is taken. Counted."""
        self.corrupt_records += 1
        try:
            target = self._unused(f"{name}.corrupt")
            os.rename(name, target, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            log.error("spool %s: %s; left in place (%s)", self._path(name), reason, exc.strerror)
            return
        log.error("spool %s: %s; set aside as %s", self._path(name), reason, target)

    def _unused(self, name: str) -> str:
        """``name``, or ``name``.N for the first N that does not exist (rename()
        would replace what is there)."""
        for n in range(SET_ASIDE_NAMES):
            candidate = f"{name}.{n}" if n else name
            try:
                os.stat(candidate, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return candidate
        raise FileExistsError(errno.EEXIST, f"{name} to {name}.{SET_ASIDE_NAMES - 1} all exist")

    def _resume_inside_record(self, taken: int) -> None:
        """The first ``taken`` events of the record at the cursor were handed
        on before the restart: replay resumes after them."""
        segment = self._segments[0]
        record = self._read_record(segment)
        if record is None:  # damaged since: _read_record skipped past it
            return
        taken = min(taken, len(record.events))
        segment.events -= taken
        if taken < len(record.events):
            self._pending, self._pending_taken = record, taken
        else:
            self._read_off = record.end

    def _save_cursor(self, *, roll: bool = False) -> None:
        """Write the cursor (page cache); fsync it always, or at a roll (a
        segment fully replayed) under the default policy."""
        seq = self._segments[0].seq if self._segments else self._next_seq
        cursor = spoolfmt.Cursor(seq, self._read_off, self._pending_taken)
        try:
            sync = self.fsync == Fsync.ALWAYS or (roll and self.fsync == Fsync.ROLL)
            self._ledger.save(cursor, sync=sync)
        except OSError as exc:
            # A stale cursor replays records again: duplicates, not loss.
            self._limiter.log(log, "cursor", logging.WARNING, "spool cursor not saved: %s", exc)

    # ------------------------------------------------------------ appending
    def append(self, events: list[bytes], kind: int = spoolfmt.KIND_DATA, topic: str = "") -> None:
        """Write ``events`` (of ``kind``, for ``topic``: "" is --topic) as
        records of at most a quarter segment each (an event larger than that
        alone), or count them dropped by reason. ValueError for a kind or
        topic no record can hold (spoolfmt.encode_record): a caller's bug."""
        if not events:
            return
        record_max = self.segment_max_bytes // RECORDS_PER_SEGMENT
        for part in spoolfmt.split(events, record_max, topic):
            self._append_record(part, kind, topic)

    def _append_record(self, events: list[bytes], kind: int, topic: str) -> None:
        record = spoolfmt.encode_record(events, kind, topic)
        if self.bytes + len(record) > self.max_bytes:
            self._drop(SPOOL_FULL, len(events), "spool full (--spool-max-bytes %d)", self.max_bytes)
            return
        try:
            fd, segment = self._writable(len(record))
        except OSError as exc:
            self.problem = f"spool directory not writable: {exc.strerror}"
            self._drop(SPOOL_UNWRITABLE, len(events), "%s", self.problem)
            return
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync == Fsync.ALWAYS:
                os.fdatasync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, segment.size)  # keep the segment's tail clean
            self._close_active()  # the next append starts a new segment
            self.problem = f"spool write failed: {exc.strerror}"
            self._drop(SPOOL_ERROR, len(events), "%s", self.problem)
            return
        segment.size += len(record)
        segment.events += len(events)
        self.bytes += len(record)
        self.events += len(events)
        self._stats.spooled += len(events)
        self.problem = None

    def _drop(self, reason: str, count: int, message: str, *args: object) -> None:
        self._stats.dropped[reason] += count
        self._limiter.log(log, reason, logging.WARNING, message + "; events dropped", *args)

    def recheck(self) -> None:
        """With a problem set and no overflow to try again, nothing would
        clear it: probe the directory (create, write a byte, remove) and clear
        the problem, so /healthz recovers, once the spool can be written."""
        if self.problem is None:
            return
        try:
            probe(self._dir_fd)
        except OSError:
            return
        log.info("spool writable again (%s)", self.problem)
        self.problem = None
        self._failed_at = None

    def _writable(self, size: int) -> tuple[int, Segment]:
        """The active segment's fd, rolling to a new segment when this record
        would take it past the segment bound."""
        if self._active_fd is not None:
            active = self._segments[-1]
            if active.size + size <= self.segment_max_bytes or active.size <= spoolfmt.HEADER_BYTES:
                return self._active_fd, active
            self._close_active()
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < REOPEN_RETRY_S:
            raise OSError(0, self.problem.split(": ", 1)[-1] if self.problem else "retry later")
        seq = self._next_seq
        name = _segment_name(seq)
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | SAFE_FLAGS,
                0o600,
                dir_fd=self._dir_fd,
            )
        except OSError:
            self._failed_at = now
            raise
        self._failed_at = None
        self._next_seq += 1
        try:
            os.write(fd, spoolfmt.HEADER)
            if self.fsync != Fsync.NEVER:
                os.fsync(self._dir_fd)  # the new name survives a power cut
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._dir_fd)
            raise
        self._segments.append(Segment(seq, name, spoolfmt.HEADER_BYTES, 0))
        self.bytes += spoolfmt.HEADER_BYTES
        self._active_fd = fd
        if len(self._segments) == 1:
            self._read_off = spoolfmt.HEADER_BYTES
        return fd, self._segments[-1]

    def _close_active(self) -> None:
        """Roll: the policy's fsync, then close. A segment is never reopened."""
        fd, self._active_fd = self._active_fd, None
        if fd is None:
            return
        try:
            if self.fsync != Fsync.NEVER:
                os.fdatasync(fd)
        except OSError as exc:
            self._limiter.log(log, "fsync", logging.WARNING, "spool fsync failed: %s", exc)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ replaying
    def peek(self) -> list[bytes] | None:
        """The oldest record's events not yet consumed (``peek_record``'s)."""
        record = self.peek_record()
        return None if record is None else record.events

    def peek_record(self) -> PendingRecord | None:
        """The oldest record's events not yet consumed, with their kind and
        topic, or None when nothing is left to replay. They stay counted as
        spooled until ``consume``."""
        while self._pending is None:
            if not self._segments:
                return None
            segment = self._segments[0]
            if self._read_off >= segment.size:
                self._retire_oldest()
                continue
            self._pending = self._read_record(segment)
        record = self._pending
        return PendingRecord(record.events[self._pending_taken :], record.kind, record.topic)

    def consume(self, count: int | None = None) -> None:
        """The first ``count`` (default: all) of the events ``peek`` returned
        were handed to the pipeline. The cursor says so at once, down to the
        event, so a restart resumes right after them."""
        record = self._pending
        assert record is not None
        left = len(record.events) - self._pending_taken
        count = left if count is None else min(count, left)
        segment = self._segments[0]
        segment.events -= count
        self.events -= count
        self._stats.replayed += count
        if count < left:
            self._pending_taken += count
        else:
            self._pending = None
            self._pending_taken = 0
            self._read_off = record.end
            if self._read_off >= segment.size:
                self._retire_oldest()
                return
        self._save_cursor()

    def _read_record(self, segment: Segment) -> spoolfmt.Record | None:
        off = self._read_off
        try:
            fd = open_regular(self._dir_fd, segment.name, os.O_RDONLY)
            try:
                head = os.pread(fd, spoolfmt.RECORD_HEAD_BYTES, off)
                if len(head) == spoolfmt.RECORD_HEAD_BYTES and head[:4] == spoolfmt.RECORD_MAGIC:
                    (length,) = struct.unpack_from("<I", head, 4)
                    if length <= segment.size - off:
                        data = head + os.pread(fd, length, off + spoolfmt.RECORD_HEAD_BYTES)
                        record = spoolfmt.record_at(data, 0, version=segment.version)
                        if record is not None:
                            return _placed_at(off, record)
                rest = os.pread(fd, segment.size - off, off)
            finally:
                os.close(fd)
        except OSError as exc:
            rest = b""
            log.error(
                "spool %s: cannot read: %s; skipping the rest of it",
                self._path(segment.name),
                explain(exc),
            )
        # Damaged: resynchronise on the next valid record (or the end).
        first = next(spoolfmt.scan(rest, 0, version=segment.version), None)
        if isinstance(first, spoolfmt.Record):  # valid after all (a short first read)
            return _placed_at(off, first)
        skip_to = first.end if first is not None else len(rest)
        if not segment.damage_counted:
            self.corrupt_records += 1
            log.warning(
                "spool %s: %d damaged bytes at offset %d skipped",
                self._path(segment.name),
                skip_to,
                off,
            )
        self._read_off = off + max(skip_to, 1) if rest else segment.size
        return None

    def _retire_oldest(self) -> None:
        """The oldest segment is replayed: what it still counts was lost to
        damage; delete it and move the cursor to the next one (fsynced under
        the default policy: a power cut then repeats at most one segment)."""
        segment = self._segments.pop(0)
        if self._active_fd is not None and not self._segments:
            self._close_active()  # read to the end: start afresh rather than grow a read file
        if segment.events:
            self.events -= segment.events
            self._stats.dropped[SPOOL_CORRUPT] += segment.events
        self.bytes -= segment.size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.name, dir_fd=self._dir_fd)
        self._read_off = spoolfmt.HEADER_BYTES
        self._save_cursor(roll=True)

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -------------------------------------------------------------- closing
    def close(self) -> None:
        """Shutdown: the policy's fsync, save the cursor, release the lock."""
        self._close_active()
        self._save_cursor()
        self._ledger.close(sync=self.fsync != Fsync.NEVER)
        os.close(self._lock_fd)  # releases the flock
        os.close(self._dir_fd)
