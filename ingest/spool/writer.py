"""The spool's segment writer: the one segment open for appending, and the
roll to a new one when a record would take it past the segment bound. It
appends one encoded record at a time (store.Spool has already cut, encoded
and checked it against --spool-max-bytes) and adds it to the segment set.

Durability: every write is a plain os.write into the page cache, so SIGKILL
loses nothing written; a power cut or kernel crash loses what was written
since the last fsync. When that is, is ``--spool-fsync``: ``always`` syncs
each record; ``roll`` (the default) syncs a segment's data when it is closed
(at a roll, when the reader has read all there is, and at shutdown) and the
directory when a segment is created, so its name survives too; ``never``
leaves it to the kernel. A segment is never reopened once closed: a failed
write closes it (its torn tail cut off) and the next append starts another.

Disk I/O happens on the event loop thread: an append is one write() into the
page cache (microseconds); fsync is paid per policy and measured by
tools/bench/spool.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from ingest.ratelimit import LogLimiter
from ingest.spool import records
from ingest.spool.segments import Segment, SegmentSet
from ingest.vocabulary import Fsync

log = logging.getLogger(__name__)

REOPEN_RETRY_S = 1.0  # after a failed segment creation, do not retry on every append


class Unwritable(OSError):
    """No segment to write in: none could be created, or the last attempt
    failed less than REOPEN_RETRY_S ago. ``strerror`` says why."""


class SegmentWriter:
    """Appends to the newest of ``segments``, rolling past
    ``segment_max_bytes``; fsyncs per the ``fsync`` policy (a vocabulary.Fsync
    value); ``clock`` paces the retries after a failed creation."""

    def __init__(
        self,
        segments: SegmentSet,
        segment_max_bytes: int,
        fsync: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._segments = segments
        self._segment_max_bytes = segment_max_bytes
        self._fsync = fsync
        self._clock = clock
        # The newest segment, while it is written, and its write fd.
        self._active: tuple[int, Segment] | None = None
        self._failed_at: float | None = None  # when a segment could not be created
        self._failure = ""  # and why: what the retries until REOPEN_RETRY_S say
        self._limiter = LogLimiter()

    def append(self, record: bytes, events: int) -> None:
        """Write ``record`` (encoded, holding ``events``) to the active segment.
        Unwritable when no segment could be had for it; OSError when the
        write failed (the segment is then closed: the next append starts a
        new one). Either way nothing of it is counted."""
        try:
            fd, segment = self._writable(len(record))
        except OSError as exc:
            raise Unwritable(exc.errno, exc.strerror) from exc
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync == Fsync.ALWAYS:
                os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, segment.size)  # keep the segment's tail clean
            self.close()  # the next append starts a new segment
            raise
        self._segments.wrote(segment, len(record), events)

    def retry_now(self) -> None:
        """The directory was found writable again: the next append may try
        to create a segment at once."""
        self._failed_at = None

    def release(self, segment: Segment) -> None:
        """``segment`` is read to its end: if it is the one being written,
        close it, to start afresh rather than grow a file already read."""
        if self._active is not None and self._active[1] is segment:
            self.close()

    def close(self) -> None:
        """Roll: the policy's fsync, then close. A segment is never reopened."""
        if self._active is None:
            return
        fd = self._active[0]
        self._active = None
        try:
            if self._fsync != Fsync.NEVER:
                os.fdatasync(fd)
        except OSError as exc:
            self._limiter.log(log, "fsync", logging.WARNING, "spool fsync failed: %s", exc)
        finally:
            os.close(fd)

    def _writable(self, size: int) -> tuple[int, Segment]:
        """The active segment's fd, rolling to a new segment when this record
        would take it past the segment bound."""
        if self._active is not None:
            active = self._active[1]
            if active.size + size <= self._segment_max_bytes or active.size <= records.HEADER_BYTES:
                return self._active
            self.close()
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < REOPEN_RETRY_S:
            raise OSError(0, self._failure)
        try:
            fd, segment = self._segments.create_next()
        except OSError as exc:
            self._failed_at = now
            self._failure = exc.strerror or "retry later"
            raise
        self._failed_at = None
        try:
            os.write(fd, records.HEADER)
            if self._fsync != Fsync.NEVER:
                self._segments.sync()  # the new name survives a power cut
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                self._segments.delete(segment)
            raise
        segment.size = records.HEADER_BYTES
        self._segments.add(segment)
        self._active = fd, segment
        return self._active
