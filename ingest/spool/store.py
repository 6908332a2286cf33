"""The disk spool: where events go when the memory queue is full, and where
shutdown puts what it could not publish. Append-only, segmented, replayed
oldest first. ``Spool`` is the one entry point, the policy that ties the
parts: the format is records.py, the cursor ledger.py, safe file handling
files.py, the segment files segments.py, appending to them writer.py and
reading them back reader.py; pacing against live traffic is pipeline/replay.py. This
module owns the lock, opening and loading, the bounds, when the cursor is
saved, and the counts.

Directory layout::

    LOCK                  flock()ed for the daemon's life; holds its pid
    cursor                (segment, offset, taken): where replay resumes
    seg-000000000042.spool ...
    front.partial, seg-000000000042.front
                          a stop's replacement of the oldest segment, being
                          written, and complete (``prepend``)

Trust: the daemon may run as root, so the directory must be its own (owned by
its euid, writable by nobody else, not a symlink), and every name in it is
opened relative to the directory's fd, never through a symlink and never
unless it is a regular file (``open_regular``). What looks like a segment
but cannot be one is set aside (segments.py); a LOCK or cursor that is not a
plain file refuses startup.

Accounting: ``events`` are events on disk not yet handed back to the memory
queue. ``append`` adds to it (``stats.spooled``) or counts a drop by reason;
``consume`` moves events to the caller (``stats.replayed``) and writes the
cursor at once: the record being replayed and how many of its events are
taken. The cursor therefore means "handed to the pipeline": a replayed event
in memory is exposed to a crash exactly like a live one, and what a graceful
stop puts back is written as new records (appended, or ``prepend``ed ahead of
what is left to replay), so a restart repeats nothing.
Events that damage found at replay made unreadable are counted dropped
(``spool_corrupt``) once the reader is past their segment.

Durability: every write is a plain os.write/pwrite: it is in the page cache when it
returns, so SIGKILL loses nothing here and repeats nothing; a power cut or
kernel crash loses what was written since the last fsync (``--spool-fsync``;
writer.py): appended events, and cursor progress, which repeats events
(never loses any).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable

from ingest.config import ConfigError
from ingest.ratelimit import LogLimiter
from ingest.spool import records
from ingest.spool.files import UnsafeFile, open_directory, open_regular, probe
from ingest.spool.ledger import Ledger
from ingest.spool.reader import PendingRecord, SegmentReader
from ingest.spool.segments import RecordSeen, Segment, SegmentSet
from ingest.spool.writer import SegmentWriter, Unwritable
from ingest.stats import Stats
from ingest.vocabulary import Drop, Fsync

log = logging.getLogger(__name__)

FSYNC_POLICIES = tuple(Fsync)  # the first is the default
SEGMENT_MAX_BYTES = 16 << 20
SEGMENT_MIN_BYTES = 64 << 10
RECORDS_PER_SEGMENT = 4  # a record is at most a quarter of a segment (but one event)
# Drop reasons this module owns.
DROP_REASONS = (Drop.SPOOL_FULL, Drop.SPOOL_ERROR, Drop.SPOOL_UNWRITABLE, Drop.SPOOL_CORRUPT)


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
        self.problem: str | None = None
        self._stats = stats
        self._limiter = LogLimiter()
        self._dir_fd, self._lock_fd, cursor_fd = fds
        self._ledger = Ledger(cursor_fd)  # where replay resumes
        # The parts: the writer and the reader share the segment set, and the
        # reader hands each segment it is done with back here (_retired).
        self._segments = SegmentSet(self._dir_fd, directory)
        self._writer = SegmentWriter(self._segments, self.segment_max_bytes, fsync, clock)
        self._reader = SegmentReader(self._segments, self._retired)
        # A replacement ``prepend`` wrote but could not install: the next
        # startup does; until then no other may be written.
        self._front_pending = False

    # -------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        directory: str,
        max_bytes: int,
        fsync: str,
        stats: Stats,
        *,
        seen: RecordSeen | None = None,
    ) -> Spool:
        """Create (0700), check and lock the directory and load what an earlier
        run left; ``seen`` is told each record of it still to replay (its
        kind, topic and events, oldest first). ConfigError (exit 2) names
        --spool-dir when it cannot be used or trusted."""
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
            spool._load(seen)
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

    def _load(self, seen: RecordSeen | None = None) -> None:
        """Take in the segments an earlier run left, from the saved cursor on
        (from the first record of one a stop replaced: ``prepend``)."""
        cursor = self._ledger.read()
        front = self._segments.recover_front()
        if front is not None:
            cursor = records.Cursor(front, records.HEADER_BYTES)
        self._segments.load(cursor, seen)
        if cursor is not None:
            self._reader.resume(cursor)
        if self._segments:
            self._stats.spool_recovered += self.events
            log.info(
                "spool %s: %d events in %d segments left by an earlier run; replaying them",
                self.directory,
                self.events,
                len(self._segments),
            )
        self._save_cursor()

    def _save_cursor(self, *, roll: bool = False) -> None:
        """Write the cursor (page cache); fsync it always, or at a roll (a
        segment fully replayed) under the default policy."""
        try:
            sync = self.fsync == Fsync.ALWAYS or (roll and self.fsync == Fsync.ROLL)
            self._ledger.save(self._reader.position(), sync=sync)
        except OSError as exc:
            # A stale cursor replays records again: duplicates, not loss.
            self._limiter.log(log, "cursor", logging.WARNING, "spool cursor not saved: %s", exc)

    # ------------------------------------------------------------ appending
    def append(self, events: list[bytes], kind: int = records.KIND_DATA, topic: str = "") -> None:
        """Write ``events`` (of ``kind``, for ``topic``: "" is --topic) as
        records of at most a quarter segment each (an event larger than that
        alone), or count them dropped by reason. ValueError for a kind or
        topic no record can hold (records.encode_record): a caller's bug."""
        if not events:
            return
        record_max = self.segment_max_bytes // RECORDS_PER_SEGMENT
        for part in records.split(events, record_max, topic):
            self._append_record(part, kind, topic)

    def prepend(self, parts: list[tuple[list[bytes], int, str]]) -> None:
        """At a stop, once replay has ended: put ``parts`` (events, kind,
        topic), in their order, ahead of every event not yet replayed, so a
        restart replays them first (pipeline/lanes.py: a key's messages still in
        memory are older than its messages on disk).

        The oldest segment is replaced by one holding ``parts``, then what is
        left of it to replay (rewritten: at most one segment's records):
        written whole as seg-N.front and synced, the cursor moved to its
        start, then renamed over seg-N.spool. A crash on the way leaves the
        old segment and cursor (or a complete seg-N.front, which the next
        startup installs): never a cursor into the wrong file. What does
        not fit ahead (--spool-max-bytes, or the largest segment a startup
        reads) is appended, or counted dropped, as ``append`` does."""
        oldest = self._segments.oldest()
        late = parts
        if oldest is not None and not self._front_pending:
            self._writer.close()  # never append to a file about to be replaced
            late = self._put_ahead(oldest, parts)
            if late:
                log.warning(
                    "spool %s: %d events could not be put ahead of the spooled ones: "
                    "appended after them",
                    self.directory,
                    sum(len(events) for events, _, _ in late),
                )
        for events, kind, topic in late:
            self.append(events, kind, topic)

    def _put_ahead(
        self, oldest: Segment, parts: list[tuple[list[bytes], int, str]]
    ) -> list[tuple[list[bytes], int, str]]:
        """``prepend``'s work: what of ``parts`` it could not put ahead."""
        try:
            rest = self._reader.remainder()
        except OSError as exc:
            log.error("spool %s: cannot read %s: %s", self.directory, oldest.name, exc.strerror)
            return parts
        # Rewritten, not copied: the oldest segment may be of format version 1.
        tail = [records.encode_record(r.events, r.kind, r.topic) for r in rest]
        room = (
            min(self.max_bytes - (self.bytes - oldest.size), records.MAX_SEGMENT_BYTES)
            - records.HEADER_BYTES
            - sum(map(len, tail))
        )
        record_max = self.segment_max_bytes // RECORDS_PER_SEGMENT
        head: list[bytes] = []
        late: list[tuple[list[bytes], int, str]] = []
        ahead = 0
        for events, kind, topic in parts:
            for part in records.split(events, record_max, topic):
                record = records.encode_record(part, kind, topic)
                if late or len(record) > room:  # and all that follows, to keep their order
                    late.append((part, kind, topic))
                    continue
                head.append(record)
                room -= len(record)
                ahead += len(part)
        if not head:
            return late
        left = sum(len(r.events) for r in rest)
        unreadable = oldest.events - left  # lost to damage: counted as retiring it would
        if not self._replace_oldest(oldest, head + tail, ahead + left):
            return parts
        self._stats.spooled += ahead
        if unreadable > 0:
            self._stats.dropped[Drop.SPOOL_CORRUPT] += unreadable
        return late

    def _replace_oldest(self, oldest: Segment, framed: list[bytes], events: int) -> bool:
        """``prepend``'s replacement of ``oldest`` by ``framed`` (holding
        ``events``); whether it is done. False when it could not be written:
        nothing changed."""
        sync = self.fsync != Fsync.NEVER
        try:
            size = self._segments.write_front(oldest.seq, framed, sync=sync)
        except OSError as exc:
            log.error("spool %s: cannot write a replacement: %s", self.directory, exc.strerror)
            return False
        try:
            self._ledger.save(records.Cursor(oldest.seq, records.HEADER_BYTES), sync=sync)
            self._segments.install_front(oldest, size, events, sync=sync)
        except OSError as exc:
            # The replacement is complete on disk: the next startup installs
            # it and replays from its start, whatever the cursor says.
            log.error(
                "spool %s: replacement of %s left for the next start: %s",
                self.directory,
                oldest.name,
                exc.strerror,
            )
            self._front_pending = True
            return True
        self._reader.rewind()
        return True

    def takes(self, events: list[bytes], topic: str = "") -> bool:
        """Whether ``append`` would keep ``events`` now, as far as can be
        told before writing: no write problem, and room under --spool-max-bytes."""
        return self.problem is None and (
            self.bytes + records.record_bytes(events, topic) <= self.max_bytes
        )

    def _append_record(self, events: list[bytes], kind: int, topic: str) -> None:
        record = records.encode_record(events, kind, topic)
        if self.bytes + len(record) > self.max_bytes:
            self._drop(
                Drop.SPOOL_FULL, len(events), "spool full (--spool-max-bytes %d)", self.max_bytes
            )
            return
        try:
            self._writer.append(record, len(events))
        except Unwritable as exc:
            self.problem = f"spool directory not writable: {exc.strerror}"
            self._drop(Drop.SPOOL_UNWRITABLE, len(events), "%s", self.problem)
            return
        except OSError as exc:
            self.problem = f"spool write failed: {exc.strerror}"
            self._drop(Drop.SPOOL_ERROR, len(events), "%s", self.problem)
            return
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
        self._writer.retry_now()

    def _close_active(self) -> None:
        """Roll now: the next append starts a new segment (as the tests make
        a second segment without writing a first one full)."""
        self._writer.close()

    # ------------------------------------------------------------ replaying
    def peek(self) -> list[bytes] | None:
        """The oldest record's events not yet consumed (``peek_record``'s)."""
        record = self.peek_record()
        return None if record is None else record.events

    def peek_record(self) -> PendingRecord | None:
        """The oldest record's events not yet consumed, with their kind and
        topic, or None when nothing is left to replay. They stay counted as
        spooled until ``consume``."""
        return self._reader.peek_record()

    def consume(self, count: int | None = None) -> None:
        """The first ``count`` (default: all) of the events ``peek`` returned
        were handed to the pipeline. The cursor says so at once, down to the
        event, so a restart resumes right after them."""
        taken, retired = self._reader.consume(count)
        self._stats.replayed += taken
        if not retired:  # retiring the segment saved the cursor already
            self._save_cursor()

    def _retired(self, segment: Segment) -> None:
        """The reader is done with ``segment``: what it still counts was lost
        to damage; delete it, and move the cursor to the next one (fsynced
        under the default policy: a power cut then repeats at most one
        segment)."""
        self._writer.release(segment)
        if segment.events:
            self._stats.dropped[Drop.SPOOL_CORRUPT] += segment.events
        with contextlib.suppress(FileNotFoundError):
            self._segments.delete(segment)
        self._save_cursor(roll=True)

    # --------------------------------------------------------------- counts
    @property
    def events(self) -> int:
        """Events on disk not yet handed back to the memory queue."""
        return self._segments.events

    @property
    def bytes(self) -> int:
        """Bytes of segment files."""
        return self._segments.bytes

    @property
    def corrupt_records(self) -> int:
        """Damaged records, and files set aside."""
        return self._segments.corrupt_records

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -------------------------------------------------------------- closing
    def close(self) -> None:
        """Shutdown: the policy's fsync, save the cursor, release the lock."""
        self._writer.close()
        self._save_cursor()
        self._ledger.close(sync=self.fsync != Fsync.NEVER)
        os.close(self._lock_fd)  # releases the flock
        os.close(self._dir_fd)
