"""The spool's segment reader: replay's side of the segment set. It reads the
oldest segment record by record, from the read offset on; hands out the
record at the front (``peek_record``) and takes its events off, all or a
prefix (``consume``); resynchronises on the next valid record after damage;
and retires a segment once it is read to its end.

Its position (segment, offset, events of that record taken) is what the
cursor saves: ``position`` gives it, ``resume`` takes it back at startup,
inside a record when part of it was handed on before the restart. When the
cursor is saved, and what a retired segment means (its file deleted, its
unread events counted lost, the writer letting go of it), is the policy's
(store.Spool): the reader says when, through ``consume``'s result and the
``retired`` callback.

Segments are read with pread on a file opened for each record: the writer may
be appending to the same segment meanwhile, and what it wrote is read as soon
as it is counted in the segment's size.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ingest.spool import records
from ingest.spool.files import explain, open_regular
from ingest.spool.segments import Segment, SegmentSet

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: that makes every peek ~0.3 us slower
class PendingRecord:
    """What is left to replay of the oldest record."""

    events: list[bytes]  # not yet consumed
    kind: int  # records.KIND_DATA or KIND_MESSAGES
    topic: str  # "" is --topic


def _placed_at(offset: int, record: records.Record) -> records.Record:
    """``record``, decoded from a buffer read at ``offset``, at its place in the file."""
    return records.Record(offset, offset + record.end, record.events, record.kind, record.topic)


class SegmentReader:
    """Reads ``segments`` oldest first. ``retired`` is called with each
    segment read to its end, once it is off the set (its file still there)
    and the read offset is at the start of the next one."""

    def __init__(self, segments: SegmentSet, retired: Callable[[Segment], None]) -> None:
        self._segments = segments
        self._retired = retired
        # In the oldest segment. With no segment left it is back at the first
        # record's place, which is where a new first segment's records start.
        self._read_off = records.HEADER_BYTES
        self._pending: records.Record | None = None
        self._pending_taken = 0  # events of the pending record already consumed

    def position(self) -> records.Cursor:
        """Where replay resumes: what the cursor file is to say."""
        oldest = self._segments.oldest()
        seq = oldest.seq if oldest is not None else self._segments.next_seq
        return records.Cursor(seq, self._read_off, self._pending_taken)

    def resume(self, cursor: records.Cursor) -> None:
        """At startup, once the set is loaded: go on from ``cursor`` if it is
        in the oldest segment (else from that segment's first record)."""
        oldest = self._segments.oldest()
        if oldest is None or cursor.seq != oldest.seq:
            return
        self._read_off = max(cursor.offset, records.HEADER_BYTES)
        if cursor.taken:
            self._resume_inside_record(oldest, cursor.taken)

    def _resume_inside_record(self, segment: Segment, taken: int) -> None:
        """The first ``taken`` events of the record at the cursor were handed
        on before the restart: replay resumes after them."""
        record = self._read_record(segment)
        if record is None:  # damaged since: _read_record skipped past it
            return
        taken = min(taken, len(record.events))
        self._segments.took(segment, taken)
        if taken < len(record.events):
            self._pending, self._pending_taken = record, taken
        else:
            self._read_off = record.end

    # ------------------------------------------------------------ replaying
    def peek_record(self) -> PendingRecord | None:
        """The oldest record's events not yet consumed, with their kind and
        topic, or None when nothing is left to replay."""
        while self._pending is None:
            segment = self._segments.oldest()
            if segment is None:
                return None
            if self._read_off >= segment.size:
                self._retire_oldest()
                continue
            self._pending = self._read_record(segment)
        record = self._pending
        return PendingRecord(record.events[self._pending_taken :], record.kind, record.topic)

    def consume(self, count: int | None) -> tuple[int, bool]:
        """Take the first ``count`` (None: all) of the events ``peek_record``
        returned off the spool. Returns how many that was, and whether it
        finished the oldest segment (then retired; else the position moved
        and the cursor is to be saved)."""
        record = self._pending
        segment = self._segments.oldest()
        assert record is not None and segment is not None
        left = len(record.events) - self._pending_taken
        count = left if count is None else min(count, left)
        self._segments.took(segment, count)
        if count < left:
            self._pending_taken += count
            return count, False
        self._pending = None
        self._pending_taken = 0
        self._read_off = record.end
        if self._read_off < segment.size:
            return count, False
        self._retire_oldest()
        return count, True

    def remainder(self) -> list[PendingRecord]:
        """What is left to replay of the oldest segment, oldest first: the
        record at the read position's events not yet consumed, then each
        valid record after it (damage skipped). The position does not move.
        OSError when the segment cannot be read."""
        segment = self._segments.oldest()
        if segment is None:
            return []
        out = []
        off = self._read_off
        if self._pending is not None:
            record = self._pending
            if self._pending_taken < len(record.events):
                out.append(
                    PendingRecord(record.events[self._pending_taken :], record.kind, record.topic)
                )
            off = record.end
        if off < segment.size:
            fd = open_regular(self._segments.dir_fd, segment.name, os.O_RDONLY)
            try:
                parts: list[bytes] = []
                got = 0
                while got < segment.size - off and (
                    part := os.pread(fd, segment.size - off - got, off + got)
                ):
                    parts.append(part)
                    got += len(part)
                data = b"".join(parts)
            finally:
                os.close(fd)
            for item in records.scan(data, 0, version=segment.version):
                if isinstance(item, records.Record):
                    out.append(PendingRecord(item.events, item.kind, item.topic))
        return out

    def rewind(self) -> None:
        """The oldest segment was replaced by one holding only what is left
        to replay (store.Spool.prepend): read it from its first record."""
        self._read_off = records.HEADER_BYTES
        self._pending = None
        self._pending_taken = 0

    def _read_record(self, segment: Segment) -> records.Record | None:
        """The valid record at the read offset of ``segment``; None after
        damage there, with the offset moved to the next valid record (or the
        end: a segment that cannot be read is skipped whole)."""
        off = self._read_off
        try:
            fd = open_regular(self._segments.dir_fd, segment.name, os.O_RDONLY)
            try:
                head = os.pread(fd, records.RECORD_HEAD_BYTES, off)
                if len(head) == records.RECORD_HEAD_BYTES and head[:4] == records.RECORD_MAGIC:
                    (length,) = struct.unpack_from("<I", head, 4)
                    if length <= segment.size - off:
                        data = head + os.pread(fd, length, off + records.RECORD_HEAD_BYTES)
                        record = records.record_at(data, 0, version=segment.version)
                        if record is not None:
                            return _placed_at(off, record)
                rest = os.pread(fd, segment.size - off, off)
            finally:
                os.close(fd)
        except OSError as exc:
            rest = b""
            log.error(
                "spool %s: cannot read: %s; skipping the rest of it",
                self._segments.path(segment.name),
                explain(exc),
            )
        # Damaged: resynchronise on the next valid record (or the end).
        first = next(records.scan(rest, 0, version=segment.version), None)
        if isinstance(first, records.Record):  # valid after all (a short first read)
            return _placed_at(off, first)
        skip_to = first.end if first is not None else len(rest)
        if not segment.damage_counted:
            self._segments.count_damage()
            log.warning(
                "spool %s: %d damaged bytes at offset %d skipped",
                self._segments.path(segment.name),
                skip_to,
                off,
            )
        self._read_off = off + max(skip_to, 1) if rest else segment.size
        return None

    def _retire_oldest(self) -> None:
        """The oldest segment is read to its end: off the set, and the read
        offset to the start of the next one."""
        segment = self._segments.pop_oldest()
        self._read_off = records.HEADER_BYTES
        self._retired(segment)
