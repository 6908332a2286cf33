"""The disk spool: where events go when the memory queue is full, and where
shutdown puts what it could not publish. Append-only, segmented, replayed
oldest first. The format is spoolfmt.py; pacing against live traffic is
replay.py; this module owns the files, the lock, the cursor and the counts.

Directory layout::

    LOCK                  flock()ed for the daemon's life; holds its pid
    cursor                (segment, offset, crc): where replay resumes
    seg-000000000042.spool ...

Accounting: ``events`` are events on disk not yet handed back to the memory
queue. ``append`` adds to it (``stats.spooled``) or counts a drop by reason;
``consume`` moves a record to the caller (``stats.replayed``) and advances the
cursor past it. The cursor therefore means "handed to the pipeline", so a
replayed event in memory is exposed to a crash exactly like a live one, and a
crash before the cursor reaches the disk replays a record again (duplicates,
never loss). Every write is a plain os.write: it is in the page cache when
append returns, so SIGKILL loses nothing here; only a power cut or kernel
crash loses the tail written since the last fsync (``--spool-fsync``).

Disk I/O happens on the event loop thread: an append is one write() into the
page cache (microseconds); fsync is paid per policy and measured by
tools/bench_spool.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ingest import spoolfmt
from ingest.config import ConfigError
from ingest.ratelimit import LogLimiter
from ingest.stats import Stats

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("roll", "always", "never")  # the first is the default
SEGMENT_MAX_BYTES = 16 << 20  # also bounds the memory a damaged segment's scan takes
SEGMENT_MIN_BYTES = 64 << 10
REOPEN_RETRY_S = 1.0  # after a failed segment creation, do not retry on every append
# Drop reasons this module owns.
SPOOL_FULL = "spool_full"  # --spool-max-bytes reached
SPOOL_ERROR = "spool_error"  # a write failed (disk full, I/O error)
SPOOL_UNWRITABLE = "spool_unwritable"  # no segment could be created
SPOOL_CORRUPT = "spool_corrupt"  # written this run, unreadable at replay
DROP_REASONS = (SPOOL_FULL, SPOOL_ERROR, SPOOL_UNWRITABLE, SPOOL_CORRUPT)

_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.spool$")
_CURSOR = struct.Struct("<QQI")


@dataclass(slots=True)
class Segment:
    seq: int
    path: str
    size: int  # bytes in the file
    events: int  # events in it not yet replayed
    damage_counted: bool = False  # the startup scan already counted its damage


class Spool:
    """One locked spool directory. Never raises after ``open``: runtime I/O
    errors become counted drops and ``problem`` (which makes /healthz 503)."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        fsync: str,
        stats: Stats,
        lock_fd: int,
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
        self.corrupt_records = 0
        self.problem: str | None = None
        self._stats = stats
        self._lock_fd = lock_fd
        self._clock = clock
        self._segments: list[Segment] = []  # oldest first; the last may be active
        self._active_fd: int | None = None  # write fd of self._segments[-1]
        self._next_seq = 0
        self._read_off = spoolfmt.HEADER_BYTES  # in self._segments[0]
        self._pending: spoolfmt.Record | None = None
        self._pending_taken = 0  # events of the pending record already consumed
        self._failed_at: float | None = None
        self._limiter = LogLimiter()
        self._cursor_fd = os.open(
            self._path("cursor"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, directory: str, max_bytes: int, fsync: str, stats: Stats) -> Spool:
        """Create (0700) and lock the directory and load what an earlier run
        left. ConfigError (exit 2) names --spool-dir when it cannot be used."""
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            lock_fd = os.open(
                os.path.join(directory, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise ConfigError("--spool-dir", f"{directory}: cannot use: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(lock_fd)
            raise ConfigError(
                "--spool-dir", f"{directory} is in use by another ingest (pid {holder})"
            ) from None
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            probe = os.path.join(directory, ".probe")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            os.unlink(probe)
            spool = cls(directory, max_bytes, fsync, stats, lock_fd)
        except OSError as exc:
            os.close(lock_fd)
            raise ConfigError(
                "--spool-dir", f"{directory} is not writable: {exc.strerror}"
            ) from None
        spool._load()
        return spool

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _load(self) -> None:
        """Scan the segments an earlier run left, from the saved cursor on."""
        seqs = sorted(
            int(m.group(1)) for name in os.listdir(self.directory) if (m := _SEGMENT_RE.match(name))
        )
        self._next_seq = seqs[-1] + 1 if seqs else 0
        cursor = self._read_cursor()
        for seq in seqs:
            path = self._path(f"seg-{seq:012d}.spool")
            if cursor is not None and seq < cursor[0]:
                os.unlink(path)  # fully replayed before the cursor moved on
                continue
            start = cursor[1] if cursor is not None and seq == cursor[0] else 0
            segment = self._scan_existing(seq, path, start)
            if segment is not None:
                self._segments.append(segment)
        self.events = sum(s.events for s in self._segments)
        self.bytes = sum(s.size for s in self._segments)
        if self._segments:
            first = self._segments[0]
            self._read_off = cursor[1] if cursor is not None and cursor[0] == first.seq else 0
            self._read_off = max(self._read_off, spoolfmt.HEADER_BYTES)
            self._stats.spool_recovered += self.events
            log.info(
                "spool %s: %d events in %d segments left by an earlier run; replaying them",
                self.directory,
                self.events,
                len(self._segments),
            )
        self._save_cursor()

    def _scan_existing(self, seq: int, path: str, start: int) -> Segment | None:
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            spoolfmt.check_header(data)
        except spoolfmt.FormatError as exc:
            self.corrupt_records += 1
            os.replace(path, path + ".corrupt")
            log.error("spool %s: %s; set aside as %s.corrupt", path, exc, path)
            return None
        events = 0
        damage = 0
        for item in spoolfmt.scan(data, max(start, spoolfmt.HEADER_BYTES)):
            if isinstance(item, spoolfmt.Record):
                events += len(item.events)
            else:
                damage += 1
                log.warning(
                    "spool %s: %d damaged bytes at offset %d skipped (torn write or corruption)",
                    path,
                    item.end - item.offset,
                    item.offset,
                )
        self.corrupt_records += damage
        if not events:
            os.unlink(path)
            return None
        return Segment(seq, path, len(data), events, damage_counted=bool(damage))

    def _read_cursor(self) -> tuple[int, int] | None:
        raw = os.pread(self._cursor_fd, _CURSOR.size, 0)
        if len(raw) != _CURSOR.size:
            return None
        seq, off, crc = _CURSOR.unpack(raw)
        if zlib.crc32(raw[:16]) != crc:
            log.warning("spool cursor damaged; replaying from the oldest segment (duplicates)")
            return None
        return seq, off

    def _save_cursor(self) -> None:
        seq = self._segments[0].seq if self._segments else self._next_seq
        head = struct.pack("<QQ", seq, self._read_off)
        try:
            os.pwrite(self._cursor_fd, head + struct.pack("<I", zlib.crc32(head)), 0)
            if self.fsync == "always":
                os.fsync(self._cursor_fd)
        except OSError as exc:
            # A stale cursor replays records again: duplicates, not loss.
            self._limiter.log(log, "cursor", logging.WARNING, "spool cursor not saved: %s", exc)

    # ------------------------------------------------------------ appending
    def append(self, events: list[bytes]) -> None:
        """Write ``events`` as one record, or count them dropped by reason."""
        if not events:
            return
        record = spoolfmt.encode_record(events)
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
            if self.fsync == "always":
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
        probe = self._path(f".probe-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(probe)
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
        path = self._path(f"seg-{seq:012d}.spool")
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError:
            self._failed_at = now
            raise
        self._failed_at = None
        self._next_seq += 1
        try:
            os.write(fd, spoolfmt.HEADER)
            if self.fsync != "never":
                self._fsync_dir()  # the new name survives a power cut
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._segments.append(Segment(seq, path, spoolfmt.HEADER_BYTES, 0))
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
            if self.fsync != "never":
                os.fdatasync(fd)
        except OSError as exc:
            self._limiter.log(log, "fsync", logging.WARNING, "spool fsync failed: %s", exc)
        finally:
            os.close(fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ replaying
    def peek(self) -> list[bytes] | None:
        """The oldest record's events, or None when nothing is left to replay.
        They stay counted as spooled until ``consume``."""
        while self._pending is None:
            if not self._segments:
                return None
            segment = self._segments[0]
            if self._read_off >= segment.size:
                if self._active_fd is not None and segment is self._segments[-1]:
                    self._close_active()  # read to the end: start afresh on the next append
                self._retire_oldest()
                self._save_cursor()
                continue
            self._pending = self._read_record(segment)
        return self._pending.events[self._pending_taken :]

    def consume(self, count: int | None = None) -> None:
        """The first ``count`` (default: all) of the events ``peek`` returned
        were handed to the pipeline. The cursor passes a record only once all
        of it is consumed: a crash in between replays its prefix again."""
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
            return
        self._pending = None
        self._pending_taken = 0
        self._read_off = record.end
        if self._read_off >= segment.size:
            if self._active_fd is not None and segment is self._segments[-1]:
                self._close_active()  # drained: start afresh rather than grow a read file
            self._retire_oldest()
        self._save_cursor()

    def _read_record(self, segment: Segment) -> spoolfmt.Record | None:
        off = self._read_off
        try:
            with open(segment.path, "rb") as fh:
                fh.seek(off)
                head = fh.read(spoolfmt.RECORD_HEAD_BYTES)
                if len(head) == spoolfmt.RECORD_HEAD_BYTES and head[:4] == spoolfmt.RECORD_MAGIC:
                    (length,) = struct.unpack_from("<I", head, 4)
                    if length <= segment.size - off:
                        data = head + fh.read(length)
                        record = spoolfmt.record_at(data, 0)
                        if record is not None:
                            return spoolfmt.Record(off, off + record.end, record.events)
                fh.seek(off)
                rest = fh.read(segment.size - off)
        except OSError as exc:
            rest = b""
            log.error("spool %s: cannot read: %s; skipping the rest of it", segment.path, exc)
        # Damaged: resynchronise on the next valid record (or the end).
        first = next(spoolfmt.scan(rest, 0), None)
        if isinstance(first, spoolfmt.Record):  # valid after all (a short first read)
            return spoolfmt.Record(off, off + first.end, first.events)
        skip_to = first.end if first is not None else len(rest)
        if not segment.damage_counted:
            self.corrupt_records += 1
            log.warning(
                "spool %s: %d damaged bytes at offset %d skipped", segment.path, skip_to, off
            )
        self._read_off = off + max(skip_to, 1) if rest else segment.size
        return None

    def _retire_oldest(self) -> None:
        """The oldest segment is replayed: what it still counts was lost to
        damage; delete it and move the cursor to the next one."""
        segment = self._segments.pop(0)
        if segment.events:
            self.events -= segment.events
            self._stats.dropped[SPOOL_CORRUPT] += segment.events
        self.bytes -= segment.size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        self._read_off = spoolfmt.HEADER_BYTES

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -------------------------------------------------------------- closing
    def close(self) -> None:
        """Shutdown: the policy's fsync, save the cursor, release the lock."""
        self._close_active()
        self._save_cursor()
        with contextlib.suppress(OSError):
            if self.fsync != "never":
                os.fsync(self._cursor_fd)
        os.close(self._cursor_fd)
        os.close(self._lock_fd)  # releases the flock
